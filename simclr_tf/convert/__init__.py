"""Reading the original SimCLR TF2 code's SavedModels and checkpoints into simclr_tf.

The original authors released SimCLRv1 and SimCLRv2 as SavedModels of their `tf2/` code; their
`run.py` writes training checkpoints. Both convert into a simclr_tf run directory, output for
output, by the structure of the file (never the order of its variables):

- `reader.py`: where the checkpoint is (SavedModel, prefix, model_dir) and its object graph;
  `ConversionError` for everything that cannot be converted.
- `architecture.py`: depth, width, stem, selective kernels, squeeze-excitation, heads and classes
  from that structure, and the `Piece`s that map each original layer onto ours.
- `mapping.py`: copying the pieces into a `SimCLRModel` (all read before any is written), the
  LARS momentum, the `Config` of a converted run, and the check that a run's flags fit a file.
- `writer.py`: `convert(source, model_dir)`, the run directory (`config.json`, `ckpt-<step>`, the
  export), written to a temporary directory and renamed into place.
- `__main__.py`: the command line, `python -m simclr_tf.convert SOURCE --model_dir OUT`.

`restore_pretrained` here is what training calls for `--checkpoint`: an original file is converted
on the fly through the same pieces, a simclr_tf checkpoint restored as before.
"""

from __future__ import annotations

import os

import tensorflow as tf

from simclr_tf import checkpoints
from simclr_tf.convert.architecture import OriginalArchitecture, read_architecture
from simclr_tf.convert.mapping import assign, check_fits, planned_assignments
from simclr_tf.convert.reader import ConversionError, OriginalCheckpoint, is_original
from simclr_tf.convert.writer import convert

__all__ = ["ConversionError", "OriginalArchitecture", "OriginalCheckpoint", "convert", "is_original",
           "read_architecture", "restore_original", "restore_pretrained"]


def restore_original(model, source: str, *, train_mode: str, log=print) -> str:
    """Initialises a built `SimCLRModel` from an original SavedModel or checkpoint.

    The encoder and the projection head are taken from the file (a file without a projection head,
    such as a SimCLRv1 release, leaves the model's head as it is); the supervised head too when
    evaluating (`train_mode="eval"`), while fine-tuning starts it fresh, as for simclr_tf
    checkpoints.

    Returns:
        str. The checkpoint prefix that was read.

    Raises:
        ConversionError: the file cannot be read, or the model is another architecture (the
            message lists the flags that describe the file).
    """
    ckpt = OriginalCheckpoint(source)
    arch, pieces = read_architecture(ckpt)
    fields = arch.model_fields()
    if arch.proj_head_mode == "none":
        fields.pop("proj_head_mode")  # nothing to load into the head: any head will do
    parts = ["encoder"] + (["projection_head"] if arch.proj_head_mode != "none" else [])
    filled = tuple(parts)  # the parts the file must fill completely
    if train_mode == "eval":
        parts.append("supervised_head")
    try:  # a user's encoder or another ResNet has no place for some piece, or one of another shape
        plan = planned_assignments(model, pieces, parts=tuple(parts))
    except ConversionError as error:
        check_fits(model, None, filled, fields, source, problem=str(error))
    check_fits(model, plan, filled, fields, source)
    assign(plan)
    what = " and ".join(part.replace("_", " ") for part in parts)
    log(f"Initialised the {what} from the original {ckpt.kind} {source} "
        f"(ResNet-{arch.resnet_depth} {arch.width_multiplier}x, converted on the fly)."
        + "".join(f"\n  missing: {m}" for m in arch.missing if "supervised" not in m or train_mode == "eval"))
    return ckpt.prefix


def restore_pretrained(model, path: str, *, train_mode: str) -> str:
    """`checkpoints.restore_pretrained`, also for files of the original code (converted on the fly)."""
    if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")) or is_original(path):
        return restore_original(model, path, train_mode=train_mode)
    return checkpoints.restore_pretrained(model, path, train_mode=train_mode)
