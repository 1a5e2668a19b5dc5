"""The data a config describes: sources of its splits and their (distributed) datasets."""

from __future__ import annotations

from simclr_tf.config import Config
from simclr_tf.data import pipeline, sources
from simclr_tf.distribute import distribute_dataset


def load_split(config: Config, split: str, *, for_eval: bool = False) -> sources.Source:
    """The source of one split, as the data config describes it."""
    data = config.data
    image_dir = data.image_dir
    if for_eval and data.eval_image_dir:
        image_dir = data.eval_image_dir
    return sources.load_source(
        data.dataset,
        split,
        data_dir=data.data_dir,
        download=data.download,
        image_dir=image_dir,
        synthetic_examples=data.synthetic_examples,
        image_size=config.image_size,
        seed=config.train.seed,
    )


def labelled_subset(config: Config, source: sources.Source) -> sources.Source:
    """The class-balanced label fraction used for supervised training (all labels by default)."""
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
    print(f"Using {len(indices)} labelled training images ({how}).", flush=True)
    return sources.subset_source(source, indices)


def num_classes_for(config: Config, source: sources.Source) -> int:
    """Classes of the supervised head: the config's, the data's when labels are wanted, else 0."""
    if config.model.num_classes:
        return config.model.num_classes
    wants_labels = config.train.train_mode == "finetune" or config.train.lineareval_while_pretraining
    if not wants_labels or not source.num_classes or source.num_classes <= 0:
        return 0
    return source.num_classes


def train_dataset(config: Config, source: sources.Source, strategy, start_step: int):
    """Endless training batches from `start_step` on: two views when pretraining, else one."""
    build = (pipeline.build_train_dataset if config.train.train_mode == "pretrain"
             else pipeline.build_finetune_dataset)

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
