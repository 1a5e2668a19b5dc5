"""One run's directory: checked writable before any work, one writer at a time (a lock), the leftovers
of an interrupted save removed, results written atomically."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import json
import logging
import os
import shutil
import socket
import sys
import time

from simclr_tf import checkpoints
from simclr_tf.config import ConfigError, load_config

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
CONFIG_FILE = "config.json"
LOCK_FILE = ".run.lock"


class ModelDirBusy(RuntimeError):
    """Another process is running in this model_dir; the message names it."""


def prepare_model_dir(model_dir: str) -> None:
    """Creates model_dir and checks it is writable, before any work.

    Raises:
        PermissionError: naming the directory and what to do.
    """
    try:
        os.makedirs(model_dir, exist_ok=True)
        probe = os.path.join(model_dir, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise OSError(
                f"No space left on the device of `model_dir` {model_dir!r}. Free some "
                "space (old checkpoints, exports) or choose another --model_dir."
            ) from None
        raise PermissionError(
            f"`model_dir` {model_dir!r} is not writable ({error.strerror}). Choose another "
            "--model_dir or fix its permissions."
        ) from None


def write_json(path: str, values: dict) -> None:
    """Writes `values` as JSON to `path` atomically (a temporary file renamed into place)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(values, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    os.replace(tmp, path)


def write_result(model_dir: str, values: dict) -> str:
    """Writes `<model_dir>/result.json`; returns its path."""
    path = os.path.join(model_dir, RESULT_FILE)
    write_json(path, values)
    return path


# What an interrupted save leaves (TensorFlow's sharded-save folder and temporary files, our
# temporary JSON and export folders). Removed only while holding the model_dir's lock.
_LEFTOVERS = ("ckpt-*_temp", "ckpt-*.tempstate*", "checkpoint.tmp*", "*.json.tmp-*",
              os.path.join("saved_model", ".tmp-*"))


def clean_leftovers(model_dir: str) -> list[str]:
    """Removes the temporary files of an interrupted save or export; says so; returns them."""
    found = sorted({p for pattern in _LEFTOVERS
                    for p in glob.glob(os.path.join(glob.escape(model_dir), pattern))})
    size = 0
    for path in found:
        if os.path.isdir(path):
            walked = os.walk(path)
        else:
            walked = [(os.path.dirname(path), [], [os.path.basename(path)])]
        size += sum(os.path.getsize(os.path.join(root, f)) for root, _, files in walked for f in files)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.remove(path)
            except OSError:
                pass
    if found:
        names = ", ".join(os.path.relpath(p, model_dir) for p in found[:5])
        log.info(f"Removed {size / 2**20:.1f} MB left in {model_dir} by an interrupted save: {names}"
                 + (" ..." if len(found) > 5 else "") + ".")
    return found


# The flags that shape a checkpoint's variables: a run with other values cannot resume from it.
_WEIGHT_FLAGS = {
    "model": ("resnet_depth", "width_multiplier", "sk_ratio", "se_ratio", "cifar_stem",
              "proj_head_mode", "proj_out_dim", "num_proj_layers", "num_classes"),
    "optimizer": ("optimizer",),
    "loss": ("memory_buffer_size",),  # the queue's shape, and the momentum network
}
# The flags a resumed run must keep: with others the data order, the augmentation and the
# schedule would change mid-run without a word.
_RESUME_FLAGS = {"data": ("image_size",), "train": ("train_batch_size",)}
# The flags that decide the supervised head's classes.
_CLASS_FLAGS = {
    "data": ("dataset", "image_dir", "data_dir", "train_split"),
    "train": ("train_mode", "lineareval_while_pretraining"),
    "model": ("num_classes",),
}


def _differences(old, new, fields) -> list[str]:
    return [f"--{name} is {getattr(getattr(old, section), name)!r} there and "
            f"{getattr(getattr(new, section), name)!r} now"
            for section, names in fields.items() for name in names
            if getattr(getattr(old, section), name) != getattr(getattr(new, section), name)]


def _check_fine_tuning_start(config, model_dir: str) -> None:
    """Fine-tuning that would start from random weights by accident stops here, saying what to do."""
    train = config.train
    if train.train_mode != "finetune" or train.mode == "eval" or train.checkpoint:
        return  # a checkpoint to start from, or `none`: from random weights on purpose
    raise ConfigError(
        f"`train_mode=finetune` needs weights to start from, and there are none: no --checkpoint, "
        f"and `model_dir` {model_dir!r} holds no checkpoint to resume. Pass --checkpoint=<a "
        "pretraining run's model_dir or checkpoint, or an original SimCLR SavedModel or "
        "checkpoint>, or --checkpoint=none to train from random weights on purpose (a supervised "
        "baseline trained from scratch on the labels only). Nothing was written."
    )


def check_resumable(config, model_dir: str, num_classes=None) -> None:
    """Stops a run that cannot resume the checkpoints in model_dir, before it writes anything.

    Compares the config with the model_dir's `config.json` on the flags that shape the weights,
    and the supervised head's classes (`num_classes()`, called only when there is a checkpoint)
    with the newest checkpoint's. Without a checkpoint to resume, fine-tuning needs `--checkpoint`
    (`none`: from random weights on purpose).

    Raises:
        ConfigError: naming each differing flag with its value in the run and now, and what to do.
    """
    latest = checkpoints.latest_checkpoint(model_dir)
    if latest is None:
        _check_fine_tuning_start(config, model_dir)
        return
    what_to_do = (f"Use the flags of the run that wrote them, or pass another --model_dir (with "
                  f"--checkpoint={model_dir} to start from its weights).")
    old = None
    if os.path.exists(os.path.join(model_dir, CONFIG_FILE)):
        try:
            old = load_config(model_dir).resolved()
        except (ValueError, TypeError, OSError):
            old = None  # an unreadable config.json: the checkpoint's own shapes decide
    if old is not None:
        differ = _differences(old, config, _WEIGHT_FLAGS)
        if differ:
            raise ConfigError(
                f"`model_dir` {model_dir!r} holds checkpoints of another model: "
                f"{'; '.join(differ)}. They cannot be resumed with these flags, and nothing was "
                f"written. {what_to_do}"
            )
        differ = _differences(old, config, _RESUME_FLAGS)
        if differ:
            raise ConfigError(
                f"`model_dir` {model_dir!r} holds a run to resume, and {'; '.join(differ)}: the "
                f"rest of the run would differ from its start. Nothing was written. {what_to_do}"
            )
        if config.train.checkpoint and config.train.checkpoint != old.train.checkpoint:
            raise ConfigError(
                f"--checkpoint={config.train.checkpoint} would be ignored: `model_dir` {model_dir!r} "
                f"already holds checkpoints (the newest: {latest}), and a run resumes from its own. "
                "Drop --checkpoint to resume, or pass another --model_dir to start from "
                f"{config.train.checkpoint}. Nothing was written."
            )
    if num_classes is None:
        return
    stored, wanted = checkpoints.checkpoint_num_classes(latest), num_classes()
    if stored != wanted:
        differ = _differences(old, config, _CLASS_FLAGS) if old is not None else []
        raise ConfigError(
            f"The checkpoint {latest} has a supervised head of {stored} classes (0: none), and this "
            f"run's would have {wanted}" + (f": {'; '.join(differ)}" if differ else "") +
            f". It cannot be resumed with these flags, and nothing was written. {what_to_do}"
        )


@contextlib.contextmanager
def model_dir_lock(model_dir: str):
    """Holds `<model_dir>/.run.lock` while the run lasts: one writer per model_dir.

    The lock is an `flock` on the file, which the system releases when the process ends however it
    ends, so a crashed run's lock is never in the way: the next run takes it over (and says so,
    since the file still names the crashed process). The file itself stays, emptied on a clean end.

    Raises:
        ModelDirBusy: another live process holds the lock; the message names it.
    """
    path = os.path.join(model_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _read_holder(fd)
        os.close(fd)
        raise ModelDirBusy(
            f"Another run is using `model_dir` {model_dir!r}: {holder}. Two runs in one model_dir "
            "overwrite each other's checkpoints, config.json and results. Wait for it to end (or "
            "stop it), or pass another --model_dir."
        ) from None
    previous = _read_holder(fd, default="")
    if previous:
        log.warning(f"Taking over {path}: {previous} ended without releasing it.")
    holder = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:500]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    try:
        yield path
    finally:
        os.ftruncate(fd, 0)  # empty: a clean end (a non-empty file means the holder crashed)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read_holder(fd: int, default: str = "a process that did not say which") -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "null")
    except (ValueError, OSError):
        return default
    if not isinstance(holder, dict):
        return default
    return (f"process {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')} "
            f"({holder.get('command', '')})")
