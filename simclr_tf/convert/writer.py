"""`convert(source, model_dir)`: an original SimCLR model as a simclr_tf run directory.

The run directory holds what a simclr_tf run writes: `config.json`, a checkpoint `ckpt-<step>`
(model and optimizer, as `CheckpointSaver` writes them, so `--checkpoint` and resuming take it),
the export `saved_model/<step>/` (TF-Hub-style SavedModel and `encoder.keras`), and
`converted_from.json` (the source and what was found in it). Everything is written into a
temporary sibling directory that is renamed into place at the end: a failed conversion leaves no
half-written `model_dir`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

from simclr_tf.checkpoints import CheckpointSaver
from simclr_tf.config import save_config
from simclr_tf.convert.architecture import read_architecture
from simclr_tf.convert.mapping import assign, assign_momentum, config_for, planned_assignments
from simclr_tf.convert.reader import ConversionError, OriginalCheckpoint
from simclr_tf.export import export_model
from simclr_tf.models.build import build_model
from simclr_tf.optimizers import build_optimizer

SOURCE_FILE = "converted_from.json"


def _check_target(model_dir: str) -> None:
    if os.path.isfile(model_dir) or (os.path.isdir(model_dir) and os.listdir(model_dir)):
        raise ConversionError(
            f"`model_dir` {model_dir!r} exists and is not empty: the converter writes a new run "
            "directory and never mixes it with another run. Choose a new --model_dir."
        )


def convert(source: str, model_dir: str, *, dataset: str | None = None, image_size: int | None = None,
            ft_proj_selector: int | None = None, export: bool = True, log=print) -> dict:
    """Converts a SavedModel or checkpoint of the original SimCLR TF2 code into a simclr_tf run.

    Args:
        source: str. An original SavedModel directory (e.g. a release's `.../saved_model`), a
            training-checkpoint prefix (`.../ckpt-1`), or an original model_dir (its latest
            checkpoint).
        model_dir: str. The new run directory; must not exist or be empty.
        dataset: str or None. Data set recorded in `config.json`; None guesses from the stem and
            the classes (ImageNet, CIFAR-10/100). Fine-tuning runs set their own anyway.
        image_size: int or None. Image size recorded in `config.json` (224 / 32 by default).
        ft_proj_selector: int or None. The projection layer the supervised head reads, where the
            shapes cannot tell (see `read_architecture`).
        export: bool. Also write the export under `saved_model/<step>`. Defaults to `True`.
        log: callable. Where the report goes. Defaults to `print`.

    Returns:
        dict: `model_dir`, `checkpoint` (prefix), `step`, `config` (the `Config`),
        `architecture` (`OriginalArchitecture`), `exported` (paths, or None).

    Raises:
        ConversionError: the source is no original model, is damaged, or holds a structure the
            original code cannot have written; or `model_dir` is not empty.

    Example:
        ```python
        convert("r50_1x_sk1/saved_model", "runs/r50_1x_sk1")
        # then: python -m simclr_tf.run --checkpoint=runs/r50_1x_sk1 --train_mode=finetune ...
        ```
    """
    model_dir = os.path.abspath(os.fspath(model_dir))
    _check_target(model_dir)
    ckpt = OriginalCheckpoint(source)
    arch, pieces = read_architecture(ckpt, ft_proj_selector=ft_proj_selector)
    step = ckpt.global_step()
    log(f"Read {ckpt.kind} {source} (step {step}):\n{arch.describe()}")
    config = config_for(arch, model_dir, dataset=dataset, image_size=image_size).validate()

    model = build_model(config, arch.num_classes)
    optimizer = build_optimizer(config.optimizer.optimizer, 0.0, momentum=config.optimizer.momentum,
                                weight_decay=config.optimizer.weight_decay,
                                lars_eta=config.optimizer.lars_eta)
    model.compile(optimizer=optimizer)  # as training builds it, so resuming finds the same objects
    optimizer.build(model.trainable_variables)
    plan = planned_assignments(model, pieces)  # reads every value before anything is written
    copied = assign(plan)
    momentum = assign_momentum(ckpt, optimizer, plan) if ckpt.kind == "training checkpoint" else 0
    optimizer.iterations.assign(step)
    log(f"Copied {len(plan)} tensors ({copied:,} numbers)"
        + (f" and the LARS momentum of {momentum} variables." if momentum else "."))

    parent = os.path.dirname(model_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(model_dir)}.converting-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_config(config, tmp)
        prefix = CheckpointSaver(model, optimizer, tmp, max_to_keep=1).save(step)
        exported = None
        if export:
            exported = export_model(model, os.path.join(tmp, "saved_model"), step=step, keep=1,
                                    image_size=config.image_size)
        with open(os.path.join(tmp, SOURCE_FILE), "w", encoding="utf-8") as f:
            json.dump({"source": os.fspath(source), "kind": ckpt.kind, "step": step,
                       "architecture": dataclasses.asdict(arch)}, f, indent=2, sort_keys=True)
            f.write("\n")
        _check_target(model_dir)
        if os.path.isdir(model_dir):
            os.rmdir(model_dir)  # empty, checked above
        os.replace(tmp, model_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    def moved(path):  # where a file written into the temporary directory is now
        return os.path.join(model_dir, os.path.relpath(path, tmp))

    if exported is not None:
        exported = {k: moved(v) for k, v in exported.items()}
    log(f"Wrote {model_dir}: config.json, {os.path.basename(prefix)}"
        + (", saved_model/" if export else "") + ".")
    return {"model_dir": model_dir, "checkpoint": moved(prefix), "step": step, "config": config,
            "architecture": arch, "exported": exported}
