"""Checkpoints: `ckpt-<step>` files in model_dir, written by the chief, resumed from on rerun.

TensorFlow writes a checkpoint's data and index files first and only then rewrites the small
`checkpoint` state file (itself replaced atomically), so a process killed mid-save leaves the
previous checkpoint as the latest one: a rerun resumes from it. A newest checkpoint that is missing
or unreadable (a truncated data file, a copy cut short) is reported and the newest intact one is
used instead. A save that fails (a full disk) removes its partial files.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import logging
import os
import re
import shutil

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "ckpt"


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model (another architecture, or not a SimCLR checkpoint)."""


class CheckpointSaver:
    """Saves and restores model + optimizer state as `model_dir/ckpt-<global step>`.

    Args:
        model: the SimCLRModel (built).
        optimizer: its optimizer (built), or None to handle the model alone.
        directory: str. The model_dir.
        max_to_keep: int. Checkpoints kept.
        chief: bool. Only the chief writes into `directory`; other workers write to a scratch
            directory that is deleted (multi-worker saving needs every worker to take part).
    """

    def __init__(self, model, optimizer, directory, *, max_to_keep=5, chief=True):
        self.model = model
        self.optimizer = optimizer
        self.directory = directory
        self.chief = chief
        objects = {"model": model}
        if optimizer is not None:
            objects["optimizer"] = optimizer
        self.checkpoint = tf.train.Checkpoint(**objects)
        target = directory if chief else os.path.join(directory, ".worker_scratch", str(os.getpid()))
        self._scratch = None if chief else target
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, target, max_to_keep=max_to_keep, checkpoint_name=CHECKPOINT_NAME
        )

    @property
    def latest(self):
        """The newest intact checkpoint in the directory, or None."""
        return latest_checkpoint(self.directory)

    def save(self, step: int) -> str | None:
        """Writes `ckpt-<step>`, unless the weights are not finite (then the last good one stays)."""
        if not all(np.isfinite(v.numpy()).all() for v in self.model.weights):
            raise FloatingPointError(
                f"Not saving step {step}: the model's weights contain NaN or Inf. The last good "
                f"checkpoint {self.latest} is kept. Lower the learning rate or raise the temperature."
            )
        try:
            path = self.manager.save(checkpoint_number=step)
        except (tf.errors.OpError, OSError) as error:
            self._remove_partial(step)
            if "No space left on device" not in str(error) and getattr(error, "errno", 0) != errno.ENOSPC:
                raise
            raise OSError(
                f"No space left on device while saving the checkpoint of step {step} in "
                f"{self.manager.directory}: its partial files were removed, and the last complete "
                f"checkpoint {self.latest} is kept. Free some space (old exports, other runs) and "
                "rerun the same command to resume from it."
            ) from None
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            try:  # `.worker_scratch` too, unless another worker of this machine is saving into it
                os.rmdir(os.path.dirname(self._scratch))
            except OSError:
                pass
            return None
        return path

    def _remove_partial(self, step: int) -> None:
        """Files of a failed save of `step`: not referenced by the `checkpoint` file, so unused."""
        prefix = os.path.join(self.manager.directory, f"{CHECKPOINT_NAME}-{int(step)}")
        shutil.rmtree(prefix + "_temp", ignore_errors=True)
        for path in glob.glob(glob.escape(prefix) + ".*"):
            if re.fullmatch(r"\.(index|data-\d+-of-\d+)(\.tempstate\d+)?", path[len(prefix):]):
                try:
                    os.remove(path)
                except OSError:
                    pass

    def restore_latest(self, *, model_only: bool = False) -> int:
        """Restores the newest intact checkpoint in the directory; returns its step (0 if none).

        A newer checkpoint that is missing or unreadable is reported (one line) and skipped.
        """
        for latest in intact_checkpoints(self.directory, report=log.warning):
            try:
                return self._restore(latest, model_only=model_only)
            except (tf.errors.DataLossError, tf.errors.NotFoundError, tf.errors.OutOfRangeError,
                    IndexError) as error:  # corrupt data the size check could not see
                log.warning(f"The checkpoint {latest} is unreadable ({_first_line(error)}): trying an "
                            "older one.")
        return 0

    def _restore(self, latest: str, *, model_only: bool) -> int:
        if model_only or self.optimizer is None:
            # The layers only: a model compiled for evaluation tracks another optimizer.
            status = _parts_checkpoint(self.model, with_supervised_head=True).restore(latest)
            status = status.expect_partial()
        else:
            try:
                status = self.checkpoint.restore(latest)
            except (ValueError, tf.errors.InvalidArgumentError) as error:  # a shape differs
                raise CheckpointMismatchError(
                    f"The checkpoint {latest} does not fit this model and optimizer "
                    f"({str(error).splitlines()[0][:300]}). It was written with other model or "
                    "optimizer flags (resnet_depth, width_multiplier, sk_ratio, proj_head_mode, "
                    "num_proj_layers, optimizer, the data's classes). Use the flags of the run "
                    "that wrote it, or another --model_dir."
                ) from None
        _check_matched(status, latest)
        step = step_of(latest)
        if self.optimizer is not None and not model_only:
            iterations = int(self.optimizer.iterations.numpy())
            if iterations != step:  # a checkpoint saved under another step number
                step = iterations
        return step


def weights_fingerprint(model) -> str:
    """The SHA-256 of a model's weights: their shapes, dtypes and values, in the model's order.

    Two models of one architecture hold bit-identical weights exactly when their fingerprints
    are equal (layer names, which Keras numbers per process, do not count). `train` reports it as
    `weights_sha256`, to compare two runs with `--deterministic`, a resumed run with an
    uninterrupted one, or the workers of one multi-worker run.

    Args:
        model: a built Keras model (or layer).

    Returns:
        str. 64 hexadecimal digits.

    Example:
        ```python
        weights_fingerprint(model_a) == weights_fingerprint(model_b)  # same weights, bit for bit
        ```
    """
    digest = hashlib.sha256()
    for variable in model.weights:
        value = np.ascontiguousarray(variable.numpy())
        digest.update(f"{value.dtype}{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def latest_checkpoint(directory: str, report=None) -> str | None:
    """The newest intact checkpoint prefix in `directory`, or None (see `intact_checkpoints`)."""
    return next(iter(intact_checkpoints(directory, report=report)), None)


def intact_checkpoints(directory: str, report=None):
    """The checkpoints in `directory` that look complete, newest first.

    The `checkpoint` file's latest comes first, then every `ckpt-<step>.index` by step. A
    checkpoint counts as intact when its index reads and its data files exist and are at least as
    large as the tensors they hold (a truncated copy or an interrupted write is not); `report`
    (e.g. `print`) is told about each one skipped.
    """
    state = tf.train.get_checkpoint_state(directory)
    named = [state.model_checkpoint_path] if state and state.model_checkpoint_path else []
    # TensorFlow already joins a relative path of the `checkpoint` file onto `directory`; join
    # only a path that does not name a checkpoint as it stands.
    named = [p if os.path.isabs(p) or os.path.exists(p + ".index") else os.path.join(directory, p)
             for p in named]
    found = sorted((path[: -len(".index")] for path in
                    glob.glob(os.path.join(glob.escape(directory), f"{CHECKPOINT_NAME}-*.index"))),
                   key=step_of, reverse=True)
    seen = set()
    for prefix in named + found:
        if prefix in seen:
            continue
        seen.add(prefix)
        problem = _problem(prefix)
        if problem is None:
            yield prefix
        elif report is not None:
            report(f"Skipping the checkpoint {prefix}: {problem}.")


def _problem(prefix: str):
    """Why a checkpoint cannot be read (a short reason), or None when it looks complete."""
    if not os.path.exists(prefix + ".index"):
        return "its index file is missing"
    try:
        reader = tf.train.load_checkpoint(prefix)
        shapes = reader.get_variable_to_shape_map()
        dtypes = reader.get_variable_to_dtype_map()
    except (tf.errors.OpError, ValueError, IndexError, RuntimeError) as error:
        return f"its index is unreadable ({_first_line(error)})"
    shards = glob.glob(glob.escape(prefix) + ".data-*-of-*")
    shards = [p for p in shards if re.fullmatch(r"\.data-\d+-of-\d+", p[len(prefix):])]
    if not shards:
        return "its data file is missing"
    expected = sum(int(np.prod(shape)) * dtypes[name].size for name, shape in shapes.items()
                   if dtypes[name] != tf.string)
    held = sum(os.path.getsize(p) for p in shards)
    if held < expected:
        return f"its data holds {held} bytes of the {expected} its index lists (truncated)"
    return None


def _first_line(error) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[-1][:300]


def step_of(path: str) -> int:
    """The global step in a checkpoint prefix `.../ckpt-<step>` (0 if it has none)."""
    try:
        return int(path.rsplit("-", 1)[-1])
    except ValueError:
        return 0


def _check_matched(status, path: str) -> None:
    try:
        status.assert_existing_objects_matched()
    except AssertionError as error:
        raise CheckpointMismatchError(
            f"The checkpoint {path} does not fit this model: {str(error).splitlines()[0][:300]} "
            "It was probably written by another architecture (resnet_depth, width_multiplier, "
            "sk_ratio, proj_head_mode, num_proj_layers). Use the same model flags as the run that "
            "wrote it, or another --model_dir."
        ) from None


def _parts_checkpoint(model, *, with_supervised_head):
    """A checkpoint view of the model's layers (encoder, heads), without its optimizer."""
    parts = {"encoder": model.encoder, "projection_head": model.projection_head}
    if with_supervised_head and model.supervised_head is not None:
        parts["supervised_head"] = model.supervised_head
    return tf.train.Checkpoint(model=tf.train.Checkpoint(**parts))


def resolve_checkpoint(path: str) -> str:
    """A checkpoint prefix from a prefix or a directory (its latest checkpoint)."""
    if os.path.isdir(path):
        latest = latest_checkpoint(path, report=log.warning)
        if latest is None:
            raise FileNotFoundError(
                f"No checkpoint found in the directory {path!r}: it should hold `ckpt-<step>.index` "
                "files and a `checkpoint` file written by a simclr_tf run."
            )
        return latest
    if not tf.io.gfile.exists(path + ".index"):
        raise FileNotFoundError(
            f"Checkpoint {path!r} not found (no {path}.index). Pass a checkpoint prefix such as "
            "model_dir/ckpt-1000, or a model_dir to take its latest checkpoint."
        )
    return path


def restore_pretrained(model, path: str, *, train_mode: str) -> str:
    """Initialises a model from a checkpoint of another run (e.g. pretraining, for fine-tuning).

    The encoder and the projection head are taken from the checkpoint; the supervised head too
    when evaluating (`train_mode="eval"`), while fine-tuning starts it fresh as the original does.
    A checkpoint of another architecture is a `CheckpointMismatchError` naming the likely flags.
    """
    prefix = resolve_checkpoint(path)
    partial = _parts_checkpoint(model, with_supervised_head=train_mode == "eval")
    try:
        status = partial.restore(prefix).expect_partial()
    except (ValueError, tf.errors.InvalidArgumentError) as error:
        raise CheckpointMismatchError(
            f"The checkpoint {prefix} does not fit this model ({str(error).splitlines()[0][:300]}). "
            "It was probably written with other model flags (resnet_depth, width_multiplier, "
            "sk_ratio, proj_head_mode, num_proj_layers)."
        ) from None
    _check_matched(status, prefix)
    return prefix


def checkpoint_num_classes(path: str) -> int:
    """Classes of the supervised head stored in a checkpoint (0 if it has none).

    Found through the checkpoint's object graph (`model` -> `supervised_head` -> its kernel): the
    variable names do not tell, since a variable that the optimizer tracks too is stored under
    the optimizer's shorter path (`optimizer/_trainable_variables/<i>`).
    """
    reader = tf.train.load_checkpoint(resolve_checkpoint(path))
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    shapes = reader.get_variable_to_shape_map()

    def child(node_id, name):
        return next((c.node_id for c in graph.nodes[node_id].children if c.local_name == name), None)

    model = child(0, "model")
    head = None if model is None else child(model, "supervised_head")
    pending, seen = [] if head is None else [head], set()
    while pending:
        node = pending.pop()
        if node in seen:
            continue
        seen.add(node)
        for attribute in graph.nodes[node].attributes:
            shape = shapes.get(attribute.checkpoint_key)
            if shape is not None and len(shape) == 2:  # the logits kernel, (D, num_classes)
                return int(shape[-1])
        pending.extend(c.node_id for c in graph.nodes[node].children)
    return 0
