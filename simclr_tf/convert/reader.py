"""Reading a file of the original SimCLR TF2 code: where its checkpoint is, and its object graph.

The original code (google-research/simclr, `tf2/`) writes two kinds of files:

- a training checkpoint, `tf.train.Checkpoint(model=..., global_step=..., optimizer=...)`, as
  `<model_dir>/ckpt-<step>` with a `checkpoint` state file;
- a SavedModel (the released models), whose `variables/variables` is a checkpoint of a
  `tf.Module` with the attributes `model` and `trainable_variables_list`.

The two key the same variable differently (`model/_projection_head/linear_layers/0/dense/kernel`
in the first, `trainable_variables_list/231` in the second), so a variable is never found by its
key or its position: `OriginalCheckpoint.root` follows the checkpoint's object graph
(`_CHECKPOINTABLE_OBJECT_GRAPH`) from the root through the attribute names of the original's
layers (`model` -> `resnet_model` -> `block_groups` -> `0` -> `layers` -> ...), which both formats
share.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_VALUE = "VARIABLE_VALUE"
# What TensorFlow raises for a file that ends early or does not parse (a short read of the data
# file is an IndexError).
_READ_ERRORS = (tf.errors.OpError, IndexError, RuntimeError)


class ConversionError(ValueError):
    """A source cannot be converted: not an original file, damaged, or impossible contents."""


class Node:
    """One object of the checkpoint's object graph: its children by name, its variable if any."""

    def __init__(self, checkpoint: OriginalCheckpoint, node_id: int, path: str):
        self._checkpoint = checkpoint
        self.node_id = node_id
        self.path = path
        proto = checkpoint.graph.nodes[node_id]
        self._children = {c.local_name: c.node_id for c in proto.children}
        self._key = next((a.checkpoint_key for a in proto.attributes if a.name == _VALUE), None)

    def child(self, name: str) -> Node | None:
        """The child object named `name`, or None."""
        node_id = self._children.get(name)
        return None if node_id is None else Node(self._checkpoint, node_id, f"{self.path}/{name}")

    def items(self) -> list[Node]:
        """The elements of a Python list the original kept (children `0`, `1`, ...), in order."""
        indices = sorted(int(name) for name in self._children if name.isdigit())
        return [self.child(str(i)) for i in indices]

    def has(self, *names: str) -> bool:
        return all(name in self._children for name in names)

    @property
    def is_variable(self) -> bool:
        return self._key is not None

    def shape(self, name: str) -> tuple | None:
        """Shape of the variable child `name`, or None if there is none."""
        node = self.child(name)
        if node is None or node._key is None:
            return None
        return tuple(self._checkpoint.shapes[node._key])

    def value(self, name: str | None = None) -> np.ndarray:
        """The value of the variable child `name` (of this node itself if `name` is None)."""
        node = self if name is None else self.child(name)
        if node is None or node._key is None:
            raise ConversionError(f"{self._checkpoint.source}: no variable `{self.path}/{name}`.")
        return self._checkpoint.read(node._key)


class OriginalCheckpoint:
    """A checkpoint written by the original code, opened for reading.

    Args:
        source: str. A SavedModel directory, a checkpoint prefix (`.../ckpt-1`), or a model_dir
            holding a `checkpoint` state file (its latest checkpoint).

    Attributes:
        source: str. As given.
        kind: str. `"SavedModel"` or `"training checkpoint"`.
        prefix: str. The checkpoint prefix that is read.
        root: Node. The root object (`model` is its child in both formats).
        model: Node. The original `Model` (children `resnet_model`, `_projection_head`,
            `supervised_head`).

    Raises:
        ConversionError: if `source` is none of the three, has no object graph, is truncated, or
            is not a model of the original code (e.g. a simclr_tf checkpoint).
    """

    def __init__(self, source: str):
        self.source = source
        self.kind, self.prefix = locate(source)
        try:
            self._reader = tf.train.load_checkpoint(self.prefix)
            self.shapes = self._reader.get_variable_to_shape_map()
            serialized = self._reader.get_tensor(OBJECT_GRAPH_KEY)
        except (tf.errors.NotFoundError, ValueError) as error:
            if OBJECT_GRAPH_KEY in str(error):
                raise ConversionError(
                    f"{source} is a TensorFlow 1 checkpoint (no object graph): this converter reads "
                    "the TF2 files of the original code (the `tf2/` folder, bucket "
                    "gs://simclr-checkpoints-tf2). Take the TF2 version of the model."
                ) from None
            raise damaged(source, error) from None
        except _READ_ERRORS as error:
            raise damaged(source, error) from None
        self.graph = trackable_object_graph_pb2.TrackableObjectGraph()
        try:
            self.graph.ParseFromString(serialized)
        except Exception as error:
            raise damaged(source, error) from None
        self.root = Node(self, 0, "")
        model = self.root.child("model")
        if model is None or model.child("resnet_model") is None:
            found = sorted(self.root._children)
            hint = ""
            if model is not None and model.has("encoder"):
                hint = (" It is a simclr_tf checkpoint already: pass it to --checkpoint as it is, "
                        "or to `python -m simclr_tf.export`.")
            raise ConversionError(
                f"{source} is not a model of the original SimCLR TF2 code: its object graph has no "
                f"`model/resnet_model` (top-level objects: {found}).{hint}"
            )
        self.model = model
        self._slots = None

    def read(self, key: str) -> np.ndarray:
        try:
            return np.asarray(self._reader.get_tensor(key))
        except _READ_ERRORS as error:
            raise damaged(self.source, error) from None

    def global_step(self) -> int:
        """The training step stored with a training checkpoint (0 for a SavedModel)."""
        for holder, name in ((self.root, "global_step"), (self.root.child("optimizer"), "iter")):
            if holder is not None and holder.shape(name) is not None:
                return int(holder.value(name))
        return 0

    def slot(self, variable: Node, slot_name: str = "Momentum") -> np.ndarray | None:
        """The optimizer slot (LARS momentum) of an original variable, if the file holds one."""
        if self._slots is None:
            self._slots = {
                (slot.original_variable_node_id, slot.slot_name): slot.slot_variable_node_id
                for node in self.graph.nodes for slot in node.slot_variables
            }
        slot_id = self._slots.get((variable.node_id, slot_name))
        return None if slot_id is None else Node(self, slot_id, f"{variable.path}:{slot_name}").value()


def damaged(source: str, error: Exception) -> ConversionError:
    first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
    return ConversionError(
        f"{source} cannot be read: the checkpoint is truncated or damaged ({first}). Download or "
        "copy it again (all of `*.index` and `*.data-*`; for a SavedModel the whole `variables/` "
        "folder)."
    )


def locate(source: str) -> tuple[str, str]:
    """`(kind, checkpoint prefix)` of a SavedModel dir, a checkpoint prefix or a model_dir."""
    source = os.fspath(source)
    if tf.io.gfile.isdir(source):
        if tf.io.gfile.exists(os.path.join(source, "saved_model.pb")):
            prefix = os.path.join(source, "variables", "variables")
            if not tf.io.gfile.exists(prefix + ".index"):
                raise ConversionError(
                    f"{source} has a saved_model.pb but no variables/variables.index: the SavedModel "
                    "is incomplete. Copy its whole `variables/` folder too."
                )
            return "SavedModel", prefix
        if tf.io.gfile.exists(os.path.join(source, "checkpoint")):
            try:
                prefix = tf.train.latest_checkpoint(source)
            except _READ_ERRORS as error:
                raise damaged(source, error) from None
            if prefix is None or not tf.io.gfile.exists(prefix + ".index"):
                raise ConversionError(
                    f"{source} has a `checkpoint` file, but the checkpoint it names ({prefix}) is "
                    "missing. Copy the `ckpt-<step>.index` and `.data-*` files too."
                )
            return "training checkpoint", prefix
        raise ConversionError(
            f"{source} is not an original SimCLR SavedModel or checkpoint: the directory has no "
            "saved_model.pb and no `checkpoint` file. Pass a SavedModel directory (e.g. "
            ".../r50_1x_sk1/saved_model), a checkpoint prefix (.../ckpt-1) or the model_dir of an "
            "original training run."
        )
    if tf.io.gfile.exists(source + ".index"):
        return "training checkpoint", source
    raise ConversionError(
        f"{source} is not an original SimCLR SavedModel or checkpoint: no such directory and no "
        f"{source}.index. Pass a SavedModel directory, a checkpoint prefix (.../ckpt-1) or a "
        "model_dir with a `checkpoint` file."
    )


def is_original(source: str) -> bool:
    """True if `source` is a SavedModel or checkpoint of the original code (not simclr_tf's)."""
    try:
        OriginalCheckpoint(source)
    except ConversionError:
        return False
    return True
