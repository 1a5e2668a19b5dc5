"""Where images come from: the `Source` type, `load_source`, digits, synthetic shapes, label subsets.

Every source is a `Source`: a `tf.data.Dataset` of `(image, label)` pairs, the image a `uint8` tensor of
shape `(height, width, 3)` at its native size (the pipeline crops and resizes), the label an `int32`
scalar, `-1` for unlabelled images. The dataset yields the examples in a fixed order, so an example's
position is a stable index: the pipeline seeds each example's augmentation with it, and `label_subset`
/ `subset_source` select examples by it.

Sources (`load_source` picks one by name):
- `digits` (the default): scikit-learn's 1,797 real 8x8 scans of handwritten digits, upsampled to
  32x32 RGB. Built in, no download, so the whole program runs offline.
- `synthetic`: coloured shapes, one shape per class, drawn from a seed (`simclr_tf.data.synthetic`).
  For smoke tests and benchmarks.
- `folder`: your own images, one sub-folder per class (or all at the top level, unlabelled); see
  `simclr_tf.data.folder`.
- any TFDS name (`cifar10`, `stl10`, `imagenet2012`, `imagenet2012_subset/1pct`, ...); see
  `simclr_tf.data.tfds`.

This module imports nothing of simclr_tf except `simclr_tf.config` and the other `simclr_tf.data`
modules.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from simclr_tf.data.base import (
    BUILTIN_DATASETS,
    LABEL_BATCH,
    DatasetNotFoundError,
    Source,
    SplitNotFoundError,
    unknown_split_error,
)
from simclr_tf.data.folder import load_image_folder
from simclr_tf.data.labels import held_out_split, label_subset
from simclr_tf.data.synthetic import SYNTHETIC_NUM_CLASSES, make_synthetic_images
from simclr_tf.data.tfds import load_tfds
from simclr_tf.validation import check_positive_int

# The names the rest of simclr_tf uses; `Source` and the errors are defined in `base`.
__all__ = [
    "BUILTIN_DATASETS",
    "DatasetNotFoundError",
    "Source",
    "SplitNotFoundError",
    "from_arrays",
    "held_out_split",
    "label_subset",
    "load_digits",
    "load_source",
    "load_synthetic",
    "permuted_source",
    "source_labels",
    "subset_source",
    "upsample_digits",
]

log = logging.getLogger(__name__)

DIGITS_TEST_EXAMPLES = 360  # 1797 = 1437 train + 360 test, stratified
DIGITS_IMAGE_SIZE = 32

# --- entry point -----------------------------------------------------------------------------------


def load_source(
    dataset: str,
    split: str,
    *,
    data_dir: str | None = None,
    download: bool = False,
    image_dir: str | None = None,
    synthetic_examples: int = 1024,
    image_size: int | None = None,
    seed: int = 0,
    class_names=None,
) -> Source:
    """Loads one split of a data set as a `Source`.

    Args:
        dataset: str. `"digits"`, `"synthetic"`, `"folder"` or a TFDS name such as `"cifar10"` or
            `"imagenet2012_subset/1pct"`.
        split: str. `"train"` or `"test"` for digits and synthetic; any TFDS split (slicing syntax
            such as `"train[:10%]"` included) for TFDS; ignored for folders (pass the evaluation
            folder as its own `image_dir`).
        data_dir: str or None. TFDS data directory; `None` uses TFDS' default.
        download: bool. Let TFDS download and prepare a missing data set. Defaults to `False`.
        image_dir: str or None. Root of the image folder when `dataset == "folder"`.
        synthetic_examples: int. Number of images of the synthetic data set.
        image_size: int or None. Synthetic images are drawn at this size (default 32); folder images
            larger than this are downscaled so their shorter side equals it (which bounds the memory
            of a cache; the pipeline crops and resizes afterwards). TFDS and digits images keep their
            native size.
        seed: int. Seed of the synthetic images. Splits of the other sources do not depend on it.
        class_names: sequence of str or None. For folders: the training folder's classes, which
            label this one by name (see `load_image_folder`).

    Returns:
        The `Source`.

    Raises:
        ValueError: an unknown data set, or a folder without readable images.
        SplitNotFoundError: `split` does not exist in the data set.
        FileNotFoundError: the image folder does not exist.
        DatasetNotFoundError: a TFDS data set is not prepared in `data_dir` and `download` is off.

    Example:
    >>> source = load_source("digits", "train")
    >>> source.num_examples, source.num_classes, source.image_size
    (1437, 10, 32)
    """
    if not isinstance(dataset, str) or not dataset:
        raise ValueError(
            f"`dataset` must be a data set name such as 'digits' or 'cifar10'. Received: {dataset!r}."
        )
    if dataset == "digits":
        return load_digits(split)
    if dataset == "synthetic":
        return load_synthetic(split, num_examples=synthetic_examples, image_size=image_size or 32, seed=seed)
    if dataset == "folder":
        if not image_dir:
            raise ValueError(
                "`dataset='folder'` needs `image_dir`: the root folder of your images (one sub-folder per "
                "class, or images at the top level). Pass e.g. --image_dir=/data/my_images."
            )
        return load_image_folder(image_dir, image_size=image_size, class_names=class_names)
    return load_tfds(dataset, split, data_dir=data_dir, download=download)


def from_arrays(
    images: np.ndarray, labels: np.ndarray | None = None, *, num_classes: int | None = None,
    name: str = "arrays",
) -> Source:
    """A source over images already in memory (NumPy arrays), with random access.

    Args:
        images: uint8 array `(N, height, width, 3)`.
        labels: int array `(N,)`, or None for unlabelled images (labels -1).
        num_classes: int or None. Number of classes; `None` uses `max(labels) + 1` (0 if unlabelled).
        name: str. Name of the source.

    Returns:
        The `Source`.

    Raises:
        ValueError: `images` is not uint8 `(N, H, W, 3)`, or `labels` does not match it.

    Example:
    >>> source = from_arrays(np.zeros((4, 8, 8, 3), np.uint8), np.array([0, 1, 0, 1]))
    >>> source.num_examples, source.num_classes
    (4, 2)
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or not len(images):
        raise ValueError(
            "`images` must be a non-empty uint8 array of shape (N, height, width, 3). "
            f"Received dtype {images.dtype} and shape {images.shape}."
        )
    if labels is None:
        labels = np.full(len(images), -1, np.int32)
    labels = np.asarray(labels)
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"`labels` must be an integer array of shape ({len(images)},), one per image. "
            f"Received dtype {labels.dtype} and shape {labels.shape}."
        )
    labels = labels.astype(np.int32)
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.min() >= 0 else 0

    def select(indices: np.ndarray) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices((images[indices], labels[indices]))

    return Source(
        dataset=tf.data.Dataset.from_tensor_slices((images, labels)),
        num_examples=len(labels),
        num_classes=num_classes,
        image_size=images.shape[1] if images.shape[1] == images.shape[2] else None,
        name=name,
        labels=labels,
        _select=select,
    )

# --- digits ----------------------------------------------------------------------------------------


def _digits_split_indices() -> dict[str, np.ndarray]:
    """Fixed stratified split of the 1797 digits: 360 test images, class proportions kept."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    targets = load_digits().target
    train, test = train_test_split(
        np.arange(len(targets)), test_size=DIGITS_TEST_EXAMPLES, stratify=targets, random_state=0
    )
    return {"train": np.sort(train), "test": np.sort(test)}


def upsample_digits(images: np.ndarray) -> np.ndarray:
    """Turns 8x8 digit scans (values 0-16) into 32x32 RGB uint8 images.

    Values are scaled to 0-255 (x * 255 / 16) and upsampled 4x with bilinear interpolation (half-pixel
    centres, edges clamped), which gives smooth strokes, closer to natural images than blocky pixels.

    Args:
        images: float array `(N, 8, 8)` with values in [0, 16].

    Returns:
        uint8 array `(N, 32, 32, 3)`, the grey value repeated on the three channels.
    """
    grey = tf.constant(np.asarray(images, np.float32)[..., None] * (255.0 / 16.0))  # (N, 8, 8, 1)
    big = tf.image.resize(grey, (DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE), method="bilinear")  # (N, 32, 32, 1)
    big = np.clip(np.round(big.numpy()), 0, 255).astype(np.uint8)
    return np.repeat(big, 3, axis=-1)  # (N, 32, 32, 3)


def load_digits(split: str) -> Source:
    """scikit-learn's handwritten digits as a 32x32 RGB source with a fixed stratified split.

    Args:
        split: str. `"train"` (1437 images) or `"test"` (360 images). The split does not depend on
            any seed, so test images never leak into training.

    Returns:
        The `Source`, 10 classes, labels 0-9.

    Raises:
        SplitNotFoundError: `split` is neither `"train"` nor `"test"`.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    splits = _digits_split_indices()
    if split not in splits:
        raise unknown_split_error("digits", split, {name: len(idx) for name, idx in splits.items()})
    digits = sklearn_digits()
    indices = splits[split]
    images = upsample_digits(digits.images[indices])
    labels = digits.target[indices].astype(np.int32)
    return from_arrays(images, labels, num_classes=10, name=f"digits:{split}")

# --- synthetic -------------------------------------------------------------------------------------


_SYNTHETIC_SPLITS = ("train", "test")


def load_synthetic(split: str, *, num_examples: int = 1024, image_size: int = 32, seed: int = 0) -> Source:
    """Synthetic coloured shapes (10 classes) as a source.

    Args:
        split: str. `"train"` or `"test"`: two independent draws from the same seed.
        num_examples: int. Number of images of the split.
        image_size: int. Side of the square images.
        seed: int. Seed of the images.

    Returns:
        The `Source`.

    Raises:
        SplitNotFoundError: `split` is neither `"train"` nor `"test"`.
        ValueError: `num_examples` or `image_size` is not positive.
    """
    if split not in _SYNTHETIC_SPLITS:
        raise unknown_split_error("synthetic", split, dict.fromkeys(_SYNTHETIC_SPLITS, num_examples))
    num_examples = check_positive_int("synthetic_examples", num_examples)
    image_size = check_positive_int("image_size", image_size, minimum=8, hint="(synthetic images)")
    # Train and test are independent draws: the split's position joins the seed.
    images, labels = make_synthetic_images(
        num_examples, image_size, seed=(seed & 0xFFFFFFFF, _SYNTHETIC_SPLITS.index(split))
    )
    return from_arrays(images, labels, num_classes=SYNTHETIC_NUM_CLASSES, name=f"synthetic:{split}")

# --- labels and subsets ----------------------------------------------------------------------------


def source_labels(source: Source) -> np.ndarray:
    """All labels of a source, in dataset order, as int32 `(num_examples,)`.

    Cheap for built-in and folder sources (stored), and for TFDS (images are not decoded).
    """
    if source.labels is not None:
        return np.array(source.labels, np.int32)
    if source._read_labels is not None:
        return np.asarray(source._read_labels(), np.int32)
    labels = source.dataset.map(lambda image, label: label).batch(LABEL_BATCH)
    return np.concatenate([b.numpy() for b in labels] or [np.zeros(0, np.int32)]).astype(np.int32)


def permuted_source(source: Source, seed: int) -> Source:
    """The same examples in a fixed pseudo-random order drawn from `seed`.

    Sources with random access (digits, synthetic, folders) are reordered without reading anything;
    an image folder is listed class by class, and a shuffle buffer smaller than the folder would
    otherwise give batches of one or two classes. Other sources (TFDS, whose prepared files are
    already shuffled) are returned unchanged.

    Args:
        source: the `Source`.
        seed: int. Seed of the permutation.

    Returns:
        A `Source` with the same examples (and `labels`, if known) in the new order.
    """
    if source._select is None:
        return source
    order = np.random.default_rng([seed & 0xFFFFFFFF, 0x5EED]).permutation(source.num_examples)
    return dataclasses.replace(
        source,
        dataset=source._select(order),
        labels=source.labels[order] if source.labels is not None else None,
        _select=lambda indices: source._select(order[indices]),
    )


def subset_source(source: Source, indices: Sequence[int] | np.ndarray) -> Source:
    """The examples of `source` at `indices` (kept in dataset order), as a new `Source`.

    Args:
        source: the `Source`.
        indices: int indices in `[0, source.num_examples)`; duplicates are dropped.

    Returns:
        A `Source` with `len(unique(indices))` examples. In-memory and folder sources read only the
        selected examples; others filter the stream by position.

    Raises:
        ValueError: an index is out of range.
    """
    indices = np.unique(np.asarray(indices, np.int64))
    if indices.size and (indices[0] < 0 or indices[-1] >= source.num_examples):
        raise ValueError(
            f"`indices` must lie in [0, {source.num_examples}) for {source.name}. "
            f"Received values from {indices[0]} to {indices[-1]}."
        )
    if source._select is not None:
        dataset = source._select(indices)
    else:
        keep = np.zeros(source.num_examples, bool)
        keep[indices] = True
        keep = tf.constant(keep)
        dataset = source.dataset.enumerate().filter(lambda i, example: tf.gather(keep, i))
        dataset = dataset.map(lambda i, example: example)
    labels = source.labels[indices] if source.labels is not None else None
    read_labels = None
    if labels is None and source._read_labels is not None:
        parent_read_labels = source._read_labels
        read_labels = lambda: np.asarray(parent_read_labels())[indices]
    select = None
    if source._select is not None:  # random access into the subset: positions within `indices`
        parent_select = source._select
        select = lambda positions: parent_select(indices[np.asarray(positions, np.int64)])
    return dataclasses.replace(
        source,
        dataset=dataset,
        num_examples=int(indices.size),
        name=f"{source.name}[subset {indices.size}]",
        labels=labels,
        _read_labels=read_labels,
        _select=select,
    )
