"""Tests of simclr_tf.data.pipeline: batches, labels, determinism, resume, sharding, evaluation."""

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.config import AugmentConfig
from simclr_tf.data import pipeline
from simclr_tf.data.sources import Source, from_arrays, load_source, permuted_source

SIZE = 32
TRAIN_KWARGS = dict(image_size=SIZE)  # the default AugmentConfig: strength 0.5, no blur at 32 px


def indexed_source(num_examples, *, random_access=True, classes=None):
    """Image i is filled with the value i and labelled i (or i // block when `classes` is given).

    Crops, flips and resizes keep a constant image constant, so the fine-tuning and evaluation
    pipelines must return images whose value (x 255) equals the index: that ties every image to
    its label and lets the tests follow each example through shuffling, sharding and batching.
    """
    images = np.broadcast_to(np.arange(num_examples, dtype=np.uint8)[:, None, None, None],
                             (num_examples, SIZE, SIZE, 3)).copy()
    labels = np.arange(num_examples) if classes is None else np.arange(num_examples) * classes // num_examples
    source = from_arrays(images, labels, name="indexed")
    if random_access:
        return source
    return Source(dataset=source.dataset, num_examples=num_examples, num_classes=source.num_classes,
                  image_size=SIZE, name="indexed-stream")


def image_index(images):
    """The index encoded in each constant image of a batch (N, H, W, 3) float in [0, 1]."""
    values = images.numpy() * 255.0
    assert np.allclose(values, values[:, :1, :1, :1], atol=0.01)  # still constant
    return np.round(values[:, 0, 0, 0]).astype(int)


def take(dataset, count):
    return list(dataset.take(count).as_numpy_iterator())


def assert_same_batches(a, b):
    flat_a, flat_b = tf.nest.flatten(a), tf.nest.flatten(b)
    assert len(flat_a) == len(flat_b)
    for x, y in zip(flat_a, flat_b, strict=True):
        np.testing.assert_array_equal(x, y)


# --- training batches ------------------------------------------------------------------------------


def test_train_batches_shapes_range_and_distinct_views():
    source = load_source("digits", "test")
    dataset = pipeline.build_train_dataset(source, global_batch_size=4, seed=0, **TRAIN_KWARGS)
    assert dataset.element_spec[0][0].shape.as_list() == [4, SIZE, SIZE, 3]
    (view_1, view_2), labels = next(iter(dataset))
    for view in (view_1, view_2):
        assert view.shape == (4, SIZE, SIZE, 3) and view.dtype == tf.float32
        assert float(tf.reduce_min(view)) >= 0.0 and float(tf.reduce_max(view)) <= 1.0
    assert labels.shape == (4,) and labels.dtype == tf.int32
    assert np.all((labels.numpy() >= 0) & (labels.numpy() < 10))
    # The two views of each image are different augmentations.
    per_image_difference = tf.reduce_mean(tf.abs(view_1 - view_2), axis=[1, 2, 3]).numpy()
    assert np.all(per_image_difference > 1e-3)


def test_finetune_labels_follow_their_images_and_each_epoch_is_a_permutation():
    source = indexed_source(24)
    dataset = pipeline.build_finetune_dataset(source, global_batch_size=8, image_size=SIZE, seed=3)
    batches = take(dataset, 6)  # two epochs of 3 batches
    for images, labels in batches:
        assert images.shape == (8, SIZE, SIZE, 3) and labels.dtype == np.int32
        np.testing.assert_array_equal(image_index(tf.constant(images)), labels)
    first = np.concatenate([labels for _, labels in batches[:3]])
    second = np.concatenate([labels for _, labels in batches[3:]])
    np.testing.assert_array_equal(np.sort(first), np.arange(24))
    np.testing.assert_array_equal(np.sort(second), np.arange(24))
    assert not np.array_equal(first, np.arange(24))  # shuffled
    assert not np.array_equal(first, second)  # reshuffled each epoch


def test_train_epoch_is_a_permutation_too():
    dataset = pipeline.build_train_dataset(indexed_source(12), global_batch_size=4, seed=1, **TRAIN_KWARGS)
    labels = np.concatenate([labels for _, labels in take(dataset, 3)])
    np.testing.assert_array_equal(np.sort(labels), np.arange(12))


def test_class_sorted_sources_are_mixed_even_without_a_shuffle_buffer():
    source = indexed_source(24, classes=3)  # labels 0 x 8, 1 x 8, 2 x 8, sorted like an image folder
    dataset = pipeline.build_finetune_dataset(source, global_batch_size=8, image_size=SIZE, shuffle_buffer=1,
                                              seed=4)
    epoch = take(dataset, 3)
    indices = np.concatenate([image_index(tf.constant(images)) for images, _ in epoch])
    labels = np.concatenate([batch_labels for _, batch_labels in epoch])
    # A buffer of one shuffles nothing: the epoch is the source's seeded permutation, which is the
    # same for any 24 examples (here read off a source labelled by index), and each label its image's.
    order = permuted_source(indexed_source(24), 4).labels
    np.testing.assert_array_equal(indices, order)
    np.testing.assert_array_equal(np.sort(indices), np.arange(24))
    np.testing.assert_array_equal(labels, indices * 3 // 24)
    assert sorted(set(labels[:8].tolist())) == [0, 1, 2]  # the first batch holds every class


# --- augmentation settings -------------------------------------------------------------------------

# First batch of each pipeline, computed by the code before the augmentation settings became one
# AugmentConfig (commit f4d4947; train: strength 0.5 and no blur spelled out): the labels, then the
# per-channel means and the RGB pixel at (1, 2) of view_1 of example 0 and view_2 of example 3 (train),
# of images 0 and 3 (fine-tune).
PINNED_TRAIN = ([0, 1, 6, 3], [0.502885, 0.486842, 0.520681, 0.911805, 0.816699, 0.606229],
                [0.459271, 0.521349, 0.499731, 0.265101, 0.770412, 0.465862])
PINNED_FINETUNE = ([0, 1, 6, 3], [0.538837, 0.508521, 0.481939, 0.721039, 0.442232, 0.272099],
                   [0.472479, 0.528709, 0.509204, 0.833319, 0.665881, 0.501466])


def _summary(image):
    image = np.asarray(image, np.float64)
    return list(image.reshape(-1, 3).mean(axis=0)) + list(image[1, 2])


def test_default_augment_config_reproduces_the_pinned_batches():
    images = np.random.default_rng(2).integers(0, 256, (10, 20, 20, 3), dtype=np.uint8)
    source = from_arrays(images, np.arange(10), name="pinned")
    kwargs = dict(global_batch_size=4, image_size=16, seed=1)  # the default AugmentConfig
    (view_1, view_2), labels = take(pipeline.build_train_dataset(source, **kwargs), 1)[0]
    assert labels.tolist() == PINNED_TRAIN[0]
    np.testing.assert_allclose(_summary(view_1[0]), PINNED_TRAIN[1], atol=2e-6)
    np.testing.assert_allclose(_summary(view_2[3]), PINNED_TRAIN[2], atol=2e-6)
    images, labels = take(pipeline.build_finetune_dataset(source, **kwargs), 1)[0]
    assert labels.tolist() == PINNED_FINETUNE[0]
    np.testing.assert_allclose(_summary(images[0]), PINNED_FINETUNE[1], atol=2e-6)
    np.testing.assert_allclose(_summary(images[3]), PINNED_FINETUNE[2], atol=2e-6)


def test_train_views_follow_the_augment_config():
    # Gray constant images stay themselves without colour jitter (strength 0; the colour drop keeps
    # gray), without flips and with whole-image crops; the default strength 0.5 changes them.
    source = indexed_source(8)
    identity = AugmentConfig(color_jitter_strength=0.0, use_blur=False, crop_min_area=1.0, random_flip=False)
    dataset = pipeline.build_train_dataset(source, global_batch_size=8, image_size=SIZE, augment=identity)
    (view_1, view_2), labels = take(dataset, 1)[0]
    np.testing.assert_array_equal(image_index(tf.constant(view_1)), labels)
    np.testing.assert_array_equal(image_index(tf.constant(view_2)), labels)
    default = pipeline.build_train_dataset(source, global_batch_size=8, image_size=SIZE)
    (view_1, _), labels = take(default, 1)[0]
    assert np.abs(view_1[:, 0, 0, 0] * 255.0 - labels).max() > 1.0


def test_finetune_images_follow_the_augment_config():
    # Images with a left-right ramp: whole-image crops without flips give the images back exactly.
    ramp = np.broadcast_to(np.linspace(0, 255, SIZE).astype(np.uint8)[None, :, None], (SIZE, SIZE, 3))
    images = np.stack([ramp] * 6)
    source = from_arrays(images, np.arange(6))
    kwargs = dict(global_batch_size=6, image_size=SIZE, seed=0)
    whole = AugmentConfig(crop_min_area=1.0, random_flip=False)
    out, _ = take(pipeline.build_finetune_dataset(source, augment=whole, **kwargs), 1)[0]
    np.testing.assert_allclose(out, np.broadcast_to(ramp / 255.0, out.shape), atol=1e-5)
    # With flips (and whole-image crops) some come back mirrored.
    flips = AugmentConfig(crop_min_area=1.0)
    out, _ = take(pipeline.build_finetune_dataset(source, augment=flips, **kwargs), 2)[1]
    mirrored = [np.allclose(image, ramp[:, ::-1] / 255.0, atol=1e-5) for image in out]
    kept = [np.allclose(image, ramp / 255.0, atol=1e-5) for image in out]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True)) and any(mirrored)


# --- determinism and resume ------------------------------------------------------------------------


def test_same_seed_same_stream_different_seed_different_stream():
    source = indexed_source(16)

    def first_batches(seed, global_seed=None):
        if global_seed is not None:
            tf.random.set_seed(global_seed)
        dataset = pipeline.build_train_dataset(source, global_batch_size=4, seed=seed, **TRAIN_KWARGS)
        return take(dataset, 2)

    reference = first_batches(5)
    assert_same_batches(reference, first_batches(5))
    # TensorFlow's global seed (0 included) does not change the stream: only `seed` does.
    assert_same_batches(reference, first_batches(5, global_seed=0))
    assert_same_batches(reference, first_batches(5, global_seed=777))
    other = first_batches(6)
    assert not np.array_equal(reference[0][0][0], other[0][0][0])


def test_cache_does_not_change_the_stream():
    source = indexed_source(10)
    plain = pipeline.build_finetune_dataset(source, global_batch_size=4, image_size=SIZE, seed=2)
    cached = pipeline.build_finetune_dataset(source, global_batch_size=4, image_size=SIZE, seed=2, cache=True)
    assert_same_batches(take(plain, 6), take(cached, 6))


@pytest.mark.parametrize("num_examples", [12, 10])  # 3 batches per epoch exactly; batches across epochs
@pytest.mark.parametrize("random_access", [True, False])
def test_start_step_resumes_exactly(num_examples, random_access):
    source = indexed_source(num_examples, random_access=random_access)
    kwargs = dict(global_batch_size=4, seed=9, **TRAIN_KWARGS)
    reference = take(pipeline.build_train_dataset(source, **kwargs), 8)
    for start_step in (1, 3, 5, 7):  # mid-epoch, at and across epoch boundaries
        resumed = take(pipeline.build_train_dataset(source, start_step=start_step, **kwargs), 1)[0]
        assert_same_batches(resumed, reference[start_step])


def test_finetune_start_step_resumes_exactly():
    source = indexed_source(10)
    kwargs = dict(global_batch_size=4, image_size=SIZE, seed=4)
    reference = take(pipeline.build_finetune_dataset(source, **kwargs), 7)
    resumed = take(pipeline.build_finetune_dataset(source, start_step=4, **kwargs), 3)
    assert_same_batches(resumed, reference[4:7])


# --- distribution ----------------------------------------------------------------------------------


def contexts(pipelines=2, replicas=2):
    return [tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=i,
                                       num_replicas_in_sync=replicas) for i in range(pipelines)]


def test_sharding_gives_disjoint_halves_of_per_replica_batches():
    source = indexed_source(24)
    seen = []
    for context in contexts():
        dataset = pipeline.build_finetune_dataset(source, global_batch_size=8, image_size=SIZE,
                                                  input_context=context)
        batches = take(dataset, 3)  # one epoch of this shard: 12 examples in batches of 8 / 2 replicas
        assert all(images.shape == (4, SIZE, SIZE, 3) for images, _ in batches)
        labels = np.concatenate([labels for _, labels in batches])
        assert len(set(labels.tolist())) == 12
        seen.append(set(labels.tolist()))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(24))


def test_start_step_with_several_replicas_per_pipeline():
    # One pipeline feeding 2 replicas: each global step takes two batches from the pipeline.
    source = indexed_source(12)
    (context,) = contexts(pipelines=1, replicas=2)
    kwargs = dict(global_batch_size=4, seed=1, input_context=context, **TRAIN_KWARGS)
    reference = take(pipeline.build_train_dataset(source, **kwargs), 6)
    resumed = take(pipeline.build_train_dataset(source, start_step=2, **kwargs), 2)
    assert_same_batches(resumed, reference[4:6])


def test_eval_covers_every_example_exactly_once():
    source = indexed_source(23)
    dataset = pipeline.build_eval_dataset(source, global_batch_size=8, image_size=SIZE)
    batches = list(dataset.as_numpy_iterator())
    assert [len(labels) for _, labels in batches] == [8, 8, 7]
    labels = np.concatenate([labels for _, labels in batches])
    np.testing.assert_array_equal(labels, np.arange(23))
    for images, labels in batches:
        assert images.dtype == np.float32 and images.shape[1:] == (SIZE, SIZE, 3)
        np.testing.assert_array_equal(image_index(tf.constant(images)), labels)

    sharded = []
    for context in contexts():
        shard = pipeline.build_eval_dataset(source, global_batch_size=8, image_size=SIZE,
                                            input_context=context, cache=True)
        sharded.append(np.concatenate([labels for _, labels in shard.as_numpy_iterator()]))
    assert sum(len(s) for s in sharded) == 23
    np.testing.assert_array_equal(np.sort(np.concatenate(sharded)), np.arange(23))


# --- errors ----------------------------------------------------------------------------------------


def test_argument_errors():
    source = indexed_source(4)
    (context,) = contexts(pipelines=1, replicas=2)
    with pytest.raises(ValueError, match=r"`global_batch_size` \(7\) must be divisible by the number of rep"):
        pipeline.build_train_dataset(source, global_batch_size=7, input_context=context, **TRAIN_KWARGS)
    with pytest.raises(ValueError, match="`global_batch_size` must be a positive integer. Received: global_"):
        pipeline.build_eval_dataset(source, global_batch_size=0, image_size=SIZE)
    with pytest.raises(ValueError, match="`start_step` must be an integer >= 0. Received: start_step=-1"):
        pipeline.build_finetune_dataset(source, global_batch_size=2, image_size=SIZE, start_step=-1)
    with pytest.raises(ValueError, match="too few for 8 input pipelines"):
        pipeline.build_finetune_dataset(source, global_batch_size=8, image_size=SIZE,
                                        input_context=contexts(pipelines=8, replicas=8)[5])
    with pytest.raises(TypeError, match="must be a simclr_tf.data.sources.Source"):
        pipeline.build_eval_dataset(tf.data.Dataset.range(3), global_batch_size=2, image_size=SIZE)
    # The augmentation settings are checked when the pipeline is built.
    with pytest.raises(ValueError, match="`color_jitter_impl` must be one of 'v1', 'v2'. Received: color_"):
        pipeline.build_train_dataset(source, global_batch_size=2, image_size=SIZE,
                                     augment=AugmentConfig(color_jitter_impl="v3"))
    with pytest.raises(ValueError, match=r"`crop_min_area` must be a number in \(0, 1\]. Received: crop_min"):
        pipeline.build_finetune_dataset(source, global_batch_size=2, image_size=SIZE,
                                        augment=AugmentConfig(crop_min_area=0.0))
    with pytest.raises(ValueError, match="`image_size` must be a positive integer. Received: image_size=0"):
        pipeline.build_finetune_dataset(source, global_batch_size=2, image_size=0)
    with pytest.raises(TypeError, match="`augment` must be a simclr_tf.config.AugmentConfig"):
        pipeline.build_train_dataset(source, global_batch_size=2, image_size=SIZE,
                                     augment=dict(color_jitter_strength=0.5))


def test_image_folder_of_mixed_sizes_through_all_pipelines(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, (width, height) in enumerate([(40, 30), (20, 50), (64, 64), (33, 17)]):
        folder = tmp_path / ("cats" if k % 2 else "dogs")
        folder.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (height, width, 3), np.uint8)).save(folder / f"{k}.png")
    source = load_source("folder", "train", image_dir=str(tmp_path))
    train = pipeline.build_train_dataset(source, global_batch_size=4, **TRAIN_KWARGS)
    (view_1, view_2), labels = take(train, 1)[0]
    assert view_1.shape == view_2.shape == (4, SIZE, SIZE, 3)
    assert sorted(labels.tolist()) == [0, 0, 1, 1]
    images, labels = take(pipeline.build_finetune_dataset(source, global_batch_size=2, image_size=SIZE), 1)[0]
    assert images.shape == (2, SIZE, SIZE, 3)
    evaluation = pipeline.build_eval_dataset(source, global_batch_size=3, image_size=SIZE)
    eval_batches = list(evaluation.as_numpy_iterator())
    np.testing.assert_array_equal(np.concatenate([labels for _, labels in eval_batches]), source.labels)
