"""The data a config describes: its training and held-out splits, and their (distributed) datasets.

Evaluation is always on images the run never trained on: the data set's evaluation split
(`eval_split`, or `eval_image_dir` for folders) when it has labels, else a seeded, stratified
held-out part of the labelled training images (`eval_fraction`), which is then removed from every
training phase, pretraining included. Unlabelled data has no evaluation and says so.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import numpy as np

from simclr_tf.config import Config, DataConfig
from simclr_tf.data import pipeline, sources
from simclr_tf.distribute import distribute_dataset

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DataSplits:
    """The images of a run.

    Attributes:
        train: every training image (pretraining uses all of them; labelled phases the labelled
            ones), the held-out part excluded.
        eval: labelled evaluation images, or None when there are no labels to evaluate with.
        eval_name: what `eval` is, for every printed and stored number (e.g. `digits:test`, or
            `folder:/data held-out 10% (36 images)`).
        num_classes: classes of the labelled images (0: unlabelled data).
    """

    train: sources.Source
    eval: sources.Source | None
    eval_name: str
    num_classes: int

    @property
    def labelled_train(self) -> sources.Source:
        """The training images that have a label."""
        labels = sources.source_labels(self.train)
        if (labels >= 0).all():
            return self.train
        return sources.subset_source(self.train, np.flatnonzero(labels >= 0))


NO_LABELS = ("no labels: evaluation, linear evaluation and the kNN monitor are skipped (the images have "
             "no class sub-folders, at least two, and no labelled --eval_image_dir); add class sub-folders "
             "or --eval_image_dir to measure accuracy")


def data_splits(config: Config) -> DataSplits:
    """The training and evaluation images of a run (cached: phases share one scan of a folder)."""
    # Whether the pipelines cache the images is no property of the splits: one scan either way.
    return _data_splits(dataclasses.replace(config.data, cache_dataset=None), config.image_size,
                        config.train.seed)


@functools.lru_cache(maxsize=4)
def _data_splits(data: DataConfig, image_size: int, seed: int) -> DataSplits:
    # Said before the work: a long preparation (a TFDS download, a scan of a big folder) shows what
    # the run is doing, and tests know when a signal arrives during it.
    log.info("Preparing the data: %s.",
             f"folder {data.image_dir}" if data.dataset == "folder" else data.dataset)

    def load(split, image_dir=None, class_names=None):
        return sources.load_source(
            data.dataset, split, data_dir=data.data_dir, download=data.download,
            image_dir=image_dir or data.image_dir, synthetic_examples=data.synthetic_examples,
            image_size=image_size, seed=seed, class_names=class_names,
        )

    train = load(data.train_split)
    evaluation, eval_name = None, ""
    if data.dataset == "folder":
        if data.eval_image_dir:
            # Labelled by the training classes' names: the model's label indices are theirs.
            evaluation = load("test", data.eval_image_dir, class_names=train.class_names or None)
            eval_name = f"folder:{data.eval_image_dir}"
    else:
        try:
            evaluation, eval_name = load(data.eval_split), f"{data.dataset}:{data.eval_split}"
        except sources.SplitNotFoundError as error:
            log.info(f"No evaluation split: {error}")
    if evaluation is not None and evaluation.num_classes <= 0:
        log.warning(f"The evaluation images {eval_name} have no labels.")
        evaluation = None
    if evaluation is None and train.num_classes > 0:
        rest, held_out = sources.held_out_split(sources.source_labels(train), fraction=data.eval_fraction,
                                                seed=seed)
        if len(held_out):
            evaluation = sources.subset_source(train, held_out)
            eval_name = f"{train.name} held-out {data.eval_fraction:.0%} (per class, seed {seed})"
            train = sources.subset_source(train, rest)
            log.info(f"No evaluation split: evaluating on {len(held_out)} images of {eval_name}, which no "
                     "phase trains on.")
    if evaluation is None:
        log.info(NO_LABELS)
    return DataSplits(train=train, eval=evaluation, eval_name=eval_name,
                      num_classes=max(train.num_classes, 0))


def labelled_subset(config: Config, source: sources.Source) -> sources.Source:
    """The labelled images, or the class-balanced fraction of them that supervised training uses."""
    data = config.data
    if data.train_label_fraction >= 1.0 and data.train_labels_per_class <= 0:
        return source
    labels = sources.source_labels(source)
    indices = sources.label_subset(
        labels,
        fraction=None if data.train_labels_per_class > 0 else data.train_label_fraction,
        per_class=data.train_labels_per_class or None,
        seed=config.train.seed,
    )
    how = (f"{data.train_labels_per_class} per class" if data.train_labels_per_class
           else f"fraction {data.train_label_fraction}")
    log.info(f"Using {len(indices)} labelled training images ({how}).")
    return sources.subset_source(source, indices)


def num_classes_for(config: Config, splits: DataSplits) -> int:
    """Classes of the supervised head: the config's, the data's when labels are wanted, else 0."""
    if config.model.num_classes:
        return config.model.num_classes
    train = config.train
    wants_labels = train.train_mode in ("finetune", "distill") or train.lineareval_while_pretraining
    return splits.num_classes if wants_labels else 0


def train_dataset(config: Config, source: sources.Source, strategy, start_step: int):
    """Endless training batches from `start_step` on: two views when pretraining, else one (a
    distillation whose teacher sees the un-augmented image: the student's and the teacher's)."""
    build = (pipeline.build_train_dataset if config.train.train_mode == "pretrain"
             else pipeline.build_finetune_dataset)
    if config.train.train_mode == "distill" and config.train.distill_augment != "same":
        build = functools.partial(pipeline.build_distill_pair_dataset,
                                  student_view=config.train.distill_augment.removeprefix("student_"))

    def make(input_context):
        return build(
            source,
            global_batch_size=config.train.train_batch_size,
            image_size=config.image_size,
            augment=config.augment,
            seed=config.train.seed,
            cache=config.data.cache_dataset,
            input_context=input_context,
            start_step=start_step,
        )

    return distribute_dataset(make, strategy)


def eval_dataset(config: Config, source: sources.Source, strategy=None):
    """One pass over `source`, centre-cropped (distributed when a strategy is given)."""
    def make(input_context):
        return pipeline.build_eval_dataset(
            source,
            global_batch_size=config.train.eval_batch_size,
            image_size=config.image_size,
            input_context=input_context,
            cache=config.data.cache_dataset,
        )

    return make(None) if strategy is None else distribute_dataset(make, strategy)
