"""The tf.data input pipelines: shuffle, augment, batch per replica, prefetch.

Three pipelines over a `simclr_tf.data.sources.Source`:

- `build_train_dataset`: endless batches of `((view_1, view_2), label)` for contrastive pretraining.
- `build_finetune_dataset`: endless batches of `(image, label)` with the light fine-tuning
  augmentation (crop + flip), for fine-tuning and linear evaluation.
- `build_eval_dataset`: one pass of `(image, label)`, centre crop, every example exactly once.

The training streams are a pure function of `seed`. Epoch `e` is the source (put once into a fixed
seeded order, see `sources.permuted_source`), shuffled with a seed drawn from `(seed, e)`, and the
example at position `i` is augmented with the stateless seed `fold_in(fold_in((seed, e), 1), i)`.
Nothing depends on TensorFlow's global seed or on how often an iterator was created, so a run
resumed at step `k` (`start_step=k`) sees exactly the batches the uninterrupted run saw from step
`k` on: whole epochs are skipped arithmetically (nothing is read for them) and only the remainder
of the current epoch is read and dropped, before augmentation.

Batches span epoch boundaries (the stream is the concatenation of the epochs, batched), as with
`repeat().batch()` in the original SimCLR code; every batch is full (`drop_remainder=True`), so
all replicas see the same batch shape.

Under a `tf.distribute` strategy, pass the `tf.distribute.InputContext` that
`strategy.distribute_datasets_from_function` hands to its dataset function: each input pipeline
(worker) then reads a disjoint shard (every `num_input_pipelines`-th example) and yields batches of
the per-replica batch size. Sharding is by element, so each worker reads, but drops, the others'
examples; it does not decode them again when the source is cached.

The augmentation settings travel as one `simclr_tf.config.AugmentConfig`, resolved for the image
size and checked when the pipeline is built (`views.resolve_augment`), before any tracing.

This module imports nothing of simclr_tf except the `simclr_tf.data` modules, `simclr_tf.config` and
`simclr_tf.validation`.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from simclr_tf.config import AugmentConfig
from simclr_tf.data import views
from simclr_tf.data.sources import Source, permuted_source
from simclr_tf.validation import check_positive_int

# A constant graph-level seed for the per-epoch shuffle (see `_epoch_stream`); any value but 0.
_GRAPH_SEED = 0x5EED5


def _pipelines(input_context: tf.distribute.InputContext | None) -> tuple[int, int, int]:
    """(num_input_pipelines, input_pipeline_id, replicas fed by this pipeline)."""
    if input_context is None:
        return 1, 0, 1
    pipelines = int(input_context.num_input_pipelines)
    replicas = int(input_context.num_replicas_in_sync)
    return pipelines, int(input_context.input_pipeline_id), max(1, replicas // pipelines)


def per_replica_batch_size(global_batch_size: int, input_context: tf.distribute.InputContext | None) -> int:
    """The batch size each replica receives.

    Args:
        global_batch_size: int. Batch size summed over all replicas.
        input_context: `tf.distribute.InputContext` or None (one replica).

    Returns:
        `global_batch_size // num_replicas_in_sync`.

    Raises:
        ValueError: `global_batch_size` is not a positive multiple of the number of replicas.
    """
    global_batch_size = check_positive_int("global_batch_size", global_batch_size)
    if input_context is None:
        return global_batch_size
    replicas = int(input_context.num_replicas_in_sync)
    if global_batch_size % replicas:
        raise ValueError(
            f"`global_batch_size` ({global_batch_size}) must be divisible by the number of replicas "
            f"({replicas}). Use a batch size that is a multiple of {replicas}, e.g. "
            f"{max(replicas, global_batch_size // replicas * replicas)}."
        )
    return global_batch_size // replicas


def _check_source(source) -> None:
    if not isinstance(source, Source):
        raise TypeError(
            f"`source` must be a simclr_tf.data.sources.Source (see `load_source`). "
            f"Received: {type(source).__name__}."
        )


def _shard_size(num_examples: int, num_shards: int, shard_id: int) -> int:
    """Examples in shard `shard_id` of `Dataset.shard(num_shards, shard_id)`: positions id, id + n, ..."""
    return len(range(shard_id, num_examples, num_shards))


def _options(input_context) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True  # parallel maps keep the order: the stream is reproducible
    options.autotune.enabled = True
    options.experimental_optimization.map_parallelization = True
    if input_context is not None:  # we shard ourselves; the strategy must not shard again
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def _epoch_stream(
    base: tf.data.Dataset, *, seed: int, start_epoch: int, shuffle_buffer: int
) -> tf.data.Dataset:
    """Endless `(element_seed, (image, label))` from `base` of `(index, (image, label))`, epoch by epoch."""
    root = tf.constant([seed, 0], tf.int64)

    def one_epoch(epoch):
        # tf.data combines an op seed with the graph-level seed, which inside this traced function is
        # TensorFlow's global seed (and a tensor op seed fails when that is 0). Pinning the seed of
        # this function's own graph makes the order depend on `seed` and `epoch` only; it does not
        # touch the global seed.
        if not tf.executing_eagerly():
            tf.random.set_seed(_GRAPH_SEED)
        epoch_seed = tf.random.experimental.stateless_fold_in(root, epoch)  # (2,)
        shuffle_seed = tf.random.stateless_uniform(
            [], tf.random.experimental.stateless_fold_in(epoch_seed, 0), minval=None, maxval=None,
            dtype=tf.int64,
        )
        element_root = tf.random.experimental.stateless_fold_in(epoch_seed, 1)  # (2,)
        shuffled = base.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
        return shuffled.map(
            lambda index, example: (tf.random.experimental.stateless_fold_in(element_root, index), example)
        )

    return tf.data.Dataset.counter(start_epoch, dtype=tf.int64).flat_map(one_epoch)


def _training_stream(
    source: Source,
    preprocess: Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tuple],
    *,
    global_batch_size: int,
    seed: int,
    cache: bool,
    input_context: tf.distribute.InputContext | None,
    start_step: int,
    shuffle_buffer: int,
) -> tf.data.Dataset:
    """Shared body of the train and fine-tune pipelines; `preprocess(image, label, seed)` -> element."""
    _check_source(source)
    batch_size = per_replica_batch_size(global_batch_size, input_context)
    seed = check_positive_int("seed", seed, minimum=0)
    start_step = check_positive_int("start_step", start_step, minimum=0)
    shuffle_buffer = check_positive_int("shuffle_buffer", shuffle_buffer)
    num_pipelines, pipeline_id, replicas_here = _pipelines(input_context)
    examples_here = _shard_size(source.num_examples, num_pipelines, pipeline_id)
    if examples_here == 0:
        raise ValueError(
            f"{source.name} has {source.num_examples} examples, too few for {num_pipelines} input pipelines: "
            f"pipeline {pipeline_id} would get none. Use more data or fewer workers."
        )

    base = permuted_source(source, seed).dataset.enumerate()  # (index, (image, label))
    if num_pipelines > 1:
        base = base.shard(num_pipelines, pipeline_id)
    if cache:
        base = base.cache()

    # Each global step takes one batch per replica of this pipeline: skip that many examples.
    skip_examples = start_step * replicas_here * batch_size
    start_epoch, offset = divmod(skip_examples, examples_here)
    stream = _epoch_stream(base, seed=seed, start_epoch=start_epoch,
                           shuffle_buffer=min(shuffle_buffer, examples_here))
    if offset:
        stream = stream.skip(offset)
    stream = stream.map(
        lambda element_seed, example: preprocess(example[0], example[1], element_seed),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    stream = stream.batch(batch_size, drop_remainder=True)
    return stream.prefetch(tf.data.AUTOTUNE).with_options(_options(input_context))


def build_train_dataset(
    source: Source,
    *,
    global_batch_size: int,
    image_size: int,
    augment: AugmentConfig = AugmentConfig(),  # noqa: B008 (frozen, so immutable)
    seed: int = 0,
    cache: bool = False,
    input_context: tf.distribute.InputContext | None = None,
    start_step: int = 0,
    shuffle_buffer: int = 10000,
) -> tf.data.Dataset:
    """Endless batches of two augmented views per image, for contrastive pretraining.

    Args:
        source: `Source` of uint8 images and labels.
        global_batch_size: int. Batch size over all replicas; each batch holds the per-replica share.
        image_size: int. Side of the square views.
        augment: `AugmentConfig`. Colour distortion strength, blur, colour-jitter implementation,
            smallest crop area and flips; `None` fields take the paper's default for `image_size`
            (strength 0.5 without blur at 32 px and below, 1.0 with blur above). Defaults to
            `AugmentConfig()`.
        seed: int. Seed of the shuffle and the augmentations: the stream is a pure function of it.
        cache: bool. Cache the decoded source images (before augmentation) in memory.
        input_context: `tf.distribute.InputContext` or None. Shards the source across input
            pipelines and sets the per-replica batch size.
        start_step: int. Global training steps already taken: the first batch is the one the
            uninterrupted stream would yield at that step.
        shuffle_buffer: int. Shuffle buffer size (capped at the examples per pipeline).

    Returns:
        `tf.data.Dataset` of `((view_1, view_2), label)`: views float32
        `(batch, image_size, image_size, 3)` in [0, 1], labels int32 `(batch,)` (-1 if unlabelled).

    Raises:
        TypeError: `source` is not a `Source` or `augment` not an `AugmentConfig`.
        ValueError: an invalid argument (batch size not divisible by the replicas, negative
            `start_step`, an augmentation setting out of range, too few examples to shard).

    Example:
    >>> from simclr_tf.data.sources import load_source
    >>> dataset = build_train_dataset(load_source("digits", "train"), global_batch_size=8, image_size=32)
    >>> (view_1, view_2), label = next(iter(dataset))
    >>> view_1.shape, label.shape
    (TensorShape([8, 32, 32, 3]), TensorShape([8]))

    References:
        Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", 2020.
        https://arxiv.org/abs/2002.05709
    """
    augment = views.resolve_augment(augment, image_size)

    def preprocess(image, label, element_seed):
        return views.two_views(image, element_seed, image_size=image_size, augment=augment), label

    return _training_stream(
        source, preprocess, global_batch_size=global_batch_size, seed=seed, cache=cache,
        input_context=input_context, start_step=start_step, shuffle_buffer=shuffle_buffer,
    )


def build_finetune_dataset(
    source: Source,
    *,
    global_batch_size: int,
    image_size: int,
    augment: AugmentConfig = AugmentConfig(),  # noqa: B008 (frozen, so immutable)
    seed: int = 0,
    cache: bool = False,
    input_context: tf.distribute.InputContext | None = None,
    start_step: int = 0,
    shuffle_buffer: int = 10000,
) -> tf.data.Dataset:
    """Endless batches of `(image, label)` with the fine-tuning augmentation (crop and flip).

    Same shuffling, seeding, sharding and resume behaviour as `build_train_dataset`.

    Args:
        source: `Source` of uint8 images and labels.
        global_batch_size: int. Batch size over all replicas.
        image_size: int. Side of the square images.
        augment: `AugmentConfig`. Of it only `crop_min_area` and `random_flip` apply (see
            `views.finetune_preprocess`). Defaults to `AugmentConfig()`.
        seed: int. Seed of the shuffle and the augmentation.
        cache: bool. Cache the decoded source images in memory.
        input_context: `tf.distribute.InputContext` or None.
        start_step: int. Global steps already taken.
        shuffle_buffer: int. Shuffle buffer size.

    Returns:
        `tf.data.Dataset` of `(image, label)`: float32 `(batch, image_size, image_size, 3)` in [0, 1],
        int32 `(batch,)`.

    Raises:
        TypeError: `source` is not a `Source` or `augment` not an `AugmentConfig`.
        ValueError: an invalid argument.
    """
    augment = views.resolve_augment(augment, image_size)

    def preprocess(image, label, element_seed):
        return views.finetune_preprocess(image, element_seed, image_size=image_size, augment=augment), label

    return _training_stream(
        source, preprocess, global_batch_size=global_batch_size, seed=seed, cache=cache,
        input_context=input_context, start_step=start_step, shuffle_buffer=shuffle_buffer,
    )


def build_eval_dataset(
    source: Source,
    *,
    global_batch_size: int,
    image_size: int,
    input_context: tf.distribute.InputContext | None = None,
    cache: bool = False,
) -> tf.data.Dataset:
    """One pass over the source, centre-cropped, every example exactly once.

    The last batch may be smaller (`drop_remainder=False`), so no example is left out.

    Args:
        source: `Source` of uint8 images and labels.
        global_batch_size: int. Batch size over all replicas.
        image_size: int. Side of the square images.
        input_context: `tf.distribute.InputContext` or None. Each input pipeline evaluates a
            disjoint shard; together they cover the source once.
        cache: bool. Cache the decoded source images in memory (for repeated evaluations).

    Returns:
        `tf.data.Dataset` of `(image, label)`: float32 `(batch, image_size, image_size, 3)` in [0, 1],
        int32 `(batch,)`, in source order.

    Raises:
        ValueError: an invalid argument.
    """
    _check_source(source)
    batch_size = per_replica_batch_size(global_batch_size, input_context)
    num_pipelines, pipeline_id, _ = _pipelines(input_context)
    dataset = source.dataset
    if num_pipelines > 1:
        dataset = dataset.shard(num_pipelines, pipeline_id)
    if cache:
        dataset = dataset.cache()
    dataset = dataset.map(
        lambda image, label: (views.eval_preprocess(image, image_size=image_size), label),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    dataset = dataset.batch(batch_size, drop_remainder=False)
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(_options(input_context))


def build_distill_pair_dataset(source: Source, *, global_batch_size: int, image_size: int,
                               augment, student_view: str, seed: int = 0, cache: bool = False,
                               input_context=None, start_step: int = 0):
    """Endless batches of `((student_images, teacher_images), labels)` for a distillation.

    The teacher's image is the un-augmented one (`views.eval_preprocess`); the student's is the
    fine-tuning crop and flip (`student_view="crop"`) or a pretraining view (`"simclr"`: the policy
    `augment.view_a`, crop, colour, ...). Order, seeds and resume as `build_finetune_dataset`.
    """
    if student_view not in ("crop", "simclr"):
        raise ValueError(f"`student_view` must be 'crop' or 'simclr'. Received: {student_view!r}.")
    augment = views.resolve_augment(augment, image_size)
    view = views.finetune_preprocess if student_view == "crop" else views.augment_view

    def preprocess(image, label, element_seed):
        student = view(image, element_seed, image_size=image_size, augment=augment)
        return (student, views.eval_preprocess(image, image_size=image_size)), label

    return _training_stream(
        source, preprocess, global_batch_size=global_batch_size, seed=seed, cache=cache,
        input_context=input_context, start_step=start_step, shuffle_buffer=10000,
    )
