"""Distillation's wiring (`--train_mode=distill`): the teacher `--teacher` names, loaded and frozen,
the images the student learns from, and the `DistillationModel` around the run's own student.

The student is the model the run's flags describe (built and compiled by `phases`), so it can be
any size: the teacher's (self-distillation) or smaller (big-to-small). Checkpoints hold the student
alone as `model`, the layout of a fine-tuned run: `--checkpoint=<a distill run>` fine-tunes or
evaluates it like one, and a resumed distillation loads the teacher again from `--teacher`.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import tensorflow as tf

from simclr_tf import checkpoints, convert
from simclr_tf.config import Config, ConfigError, load_config
from simclr_tf.convert.mapping import config_for
from simclr_tf.data import sources
from simclr_tf.distribute import is_multi_worker, work_around_keras_multi_worker
from simclr_tf.models.build import build_model
from simclr_tf.models.distill import DistillationModel

log = logging.getLogger(__name__)

__all__ = ["distillation_model", "distillation_source", "load_teacher", "teacher_config"]


def _is_original(path: str) -> bool:
    return tf.io.gfile.exists(os.path.join(path, "saved_model.pb")) or convert.is_original(path)


def teacher_config(path: str) -> tuple[Config, int]:
    """The `Config` that builds the teacher at `path`, and its number of classes.

    A simclr_tf run directory or checkpoint prefix: the run's `config.json` (beside the checkpoint)
    and the classes of the checkpoint's supervised head. An original SimCLR SavedModel or
    checkpoint: the architecture read from the file.

    Raises:
        FileNotFoundError: nothing at `path`, or a checkpoint without its run's `config.json`.
        ValueError: the teacher has no supervised head.
    """
    if _is_original(path):
        arch, _ = convert.read_architecture(convert.OriginalCheckpoint(path))
        config, num_classes = config_for(arch, model_dir=path), arch.num_classes
        for note in arch.notes:  # e.g. which projection layer a fine-tuned head reads is ambiguous
            log.warning(f"Teacher {path}: {note} (to choose, convert it first: python -m simclr_tf.convert "
                        f"{path} --model_dir=<dir> --ft_proj_selector=1, and pass --teacher=<dir>).")
    else:
        prefix = checkpoints.resolve_checkpoint(path)
        run_dir = path if os.path.isdir(path) else os.path.dirname(prefix)
        if not os.path.exists(os.path.join(run_dir, "config.json")):
            raise FileNotFoundError(
                f"The teacher {path!r} has no config.json beside its checkpoint, so its architecture is "
                "unknown. Pass the model_dir of a simclr_tf run (or a ckpt-<step> inside one), or an "
                "original SimCLR SavedModel or checkpoint."
            )
        config, num_classes = load_config(run_dir).resolved(), checkpoints.checkpoint_num_classes(prefix)
    if num_classes <= 0:
        raise ValueError(
            f"The teacher {path!r} has no supervised head, so it predicts no classes to distil. Use a "
            "fine-tuned run (--train_mode=finetune --checkpoint=<pretrained run>) as the teacher."
        )
    return config, num_classes


def load_teacher(config: Config, strategy, data_num_classes: int):
    """The teacher `config.train.teacher` names, built in the strategy's scope and restored.

    Args:
        config: Config. The distillation run (resolved); the teacher is built for its image size.
        strategy: tf.distribute.Strategy.
        data_num_classes: int. Classes of the run's labelled images (0: unlabelled images).

    Returns:
        The teacher `SimCLRModel`, every weight (supervised head included) loaded.

    Raises:
        ConfigError: the teacher predicts other classes than the data or `--num_classes` has.
    """
    path = config.train.teacher
    teacher_cfg, num_classes = teacher_config(path)
    for what, wanted in (("the data's labels", data_num_classes),
                         ("--num_classes", config.model.num_classes)):
        if wanted and wanted != num_classes:
            raise ConfigError(
                f"The teacher {path!r} predicts {num_classes} classes, but {what} have {wanted}. "
                "Distil a teacher fine-tuned on this data set (same classes), or drop --num_classes."
            )
    with strategy.scope():
        teacher = build_model(teacher_cfg, num_classes, image_size=config.image_size)
    convert.restore_pretrained(teacher, path, train_mode="eval")
    log.info(f"Teacher: {path} (ResNet-{teacher_cfg.model.resnet_depth} "
             f"{teacher_cfg.model.width_multiplier}x, {num_classes} classes), frozen.")
    return teacher


def distillation_model(config: Config, strategy, student, optimizer, teacher) -> DistillationModel:
    """The compiled `DistillationModel` of a built, compiled student and its optimizer."""
    with strategy.scope():
        model = DistillationModel(student, teacher, temperature=config.train.distill_temperature,
                    alpha=config.train.distill_alpha, name="distillation")
        model.build((None, config.image_size, config.image_size, 3))
        model.compile(optimizer=optimizer, jit_compile=config.train.jit_compile,
                      steps_per_execution=config.train.steps_per_execution)
    if is_multi_worker(strategy):
        work_around_keras_multi_worker(model)
    return model


def distillation_source(config: Config, splits) -> sources.Source:
    """Every training image; only the labelled fraction the run may use keeps its label (others -1).

    The labels matter only to `--distill_alpha` (the cross-entropy on labelled images) and to the
    training top-1; the distillation loss uses every image.
    """
    source = splits.train
    data = config.data
    if splits.num_classes <= 0 or (data.train_label_fraction >= 1.0 and data.train_labels_per_class <= 0):
        return source
    labels = sources.source_labels(source)
    labelled = np.flatnonzero(labels >= 0)
    kept = labelled[sources.label_subset(
        labels[labelled],
        fraction=None if data.train_labels_per_class > 0 else data.train_label_fraction,
        per_class=data.train_labels_per_class or None,
        seed=config.train.seed,
    )]
    masked = np.full_like(labels, -1)
    masked[kept] = labels[kept]
    log.info(f"Distilling on {source.num_examples} images, {len(kept)} of them labelled.")

    def relabelled(dataset, new_labels):
        pairs = tf.data.Dataset.zip(dataset, tf.data.Dataset.from_tensor_slices(new_labels))
        return pairs.map(lambda example, label: (example[0], label))

    select = None
    if source._select is not None:
        def select(indices):
            return relabelled(source._select(indices), masked[indices])
    return dataclasses.replace(source, dataset=relabelled(source.dataset, masked), labels=masked,
                               _select=select)
