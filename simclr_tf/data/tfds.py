"""TensorFlow Datasets (`cifar10`, `stl10`, `imagenet2012`, ...) as a source.

This module imports nothing of simclr_tf except `simclr_tf.config` and `simclr_tf.data.base`.
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from simclr_tf.config import KNOWN_DATASETS
from simclr_tf.data.base import (
    BUILTIN_DATASETS,
    LABEL_BATCH,
    DatasetNotFoundError,
    Source,
    unknown_split_error,
)

log = logging.getLogger(__name__)


def _unknown_dataset(name: str, detail: str = "") -> ValueError:
    tfds_names = [n for n in KNOWN_DATASETS if n not in BUILTIN_DATASETS]
    return ValueError(
        f"Unknown `dataset` {name!r}{': ' + detail if detail else ''}. Use one of "
        f"{', '.join(BUILTIN_DATASETS)} (built in), a TFDS name such as {', '.join(tfds_names)}, "
        "or any name listed by `tfds.list_builders()` (with a config: 'imagenet2012_subset/1pct')."
    )


def _tfds_keys(builder) -> tuple[str, str | None]:
    """The image and label feature names of a TFDS data set."""
    features = builder.info.features
    supervised = builder.info.supervised_keys or (None, None)
    image_key = "image" if "image" in features else supervised[0]
    label_key = "label" if "label" in features else supervised[1]
    if image_key is None or image_key not in features:
        raise ValueError(
            f"TFDS data set {builder.name!r} has no 'image' feature (features: {list(features)}); "
            "simclr_tf needs an image data set."
        )
    if label_key is not None and label_key not in features:
        label_key = None
    return image_key, label_key


def _to_rgb_uint8(image: tf.Tensor) -> tf.Tensor:
    """A TFDS image (grey, RGB or RGBA; uint8 or uint16) as uint8 RGB."""
    if image.dtype != tf.uint8:
        image = tf.image.convert_image_dtype(image, tf.uint8, saturate=True)
    channels = image.shape[-1]
    if channels == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif channels == 4:
        image = image[..., :3]  # drop alpha
    elif channels != 3:
        raise ValueError(f"TFDS images must have 1, 3 or 4 channels. Received shape {image.shape}.")
    return image


def load_tfds(name: str, split: str, *, data_dir: str | None = None, download: bool = False) -> Source:
    """One split of a TensorFlow Datasets data set as a source.

    Args:
        name: str. TFDS name, optionally with a config (`"imagenet2012_subset/1pct"`).
        split: str. Split, with TFDS slicing syntax (`"train[:10%]"`).
        data_dir: str or None. TFDS data directory; `None` uses TFDS' default (`~/tensorflow_datasets`).
        download: bool. Download and prepare the data set if it is missing.

    Returns:
        The `Source`, examples in the stored order (files are not shuffled).

    Raises:
        ValueError: TFDS does not know `name`.
        DatasetNotFoundError: the data set is not prepared and `download` is False.
        SplitNotFoundError: `split` does not exist.
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        raise _unknown_dataset(name) from None
    except (ValueError, KeyError) as error:
        raise _unknown_dataset(name, str(error).splitlines()[0]) from error

    if not builder.is_prepared():
        if not download:
            raise DatasetNotFoundError(
                f"TFDS data set {name!r} is not prepared in {builder.data_dir!r}. Pass --download to let "
                "TFDS download and prepare it, or --data_dir=<dir> pointing at a TFDS data directory that "
                "holds it."
            )
        log.info("Downloading and preparing %s into %s.", name, builder.data_dir)
        builder.download_and_prepare()

    splits = builder.info.splits
    num_examples = None
    if len(splits):  # empty only for builders without metadata (e.g. under tfds.testing.mock_data)
        try:
            num_examples = int(splits[split].num_examples)
        except (KeyError, ValueError, AssertionError) as error:
            available = {s: int(info.num_examples) for s, info in splits.items()}
            raise unknown_split_error(name, split, available) from error

    image_key, label_key = _tfds_keys(builder)
    label_feature = builder.info.features[label_key] if label_key else None
    num_classes = int(getattr(label_feature, "num_classes", 0) or 0)
    image_shape = builder.info.features[image_key].shape
    native = image_shape[0] if image_shape[0] is not None and image_shape[0] == image_shape[1] else None

    def to_pair(example):
        label = tf.cast(example[label_key], tf.int32) if label_key else tf.constant(-1, tf.int32)
        return _to_rgb_uint8(example[image_key]), label

    dataset = builder.as_dataset(split=split, shuffle_files=False)
    dataset = dataset.map(to_pair, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if num_examples is None:
        cardinality = int(dataset.cardinality())
        num_examples = cardinality if cardinality >= 0 else int(dataset.reduce(0, lambda n, _: n + 1))

    def read_labels() -> np.ndarray:
        if not label_key:
            return np.full(num_examples, -1, np.int32)
        raw = builder.as_dataset(split=split, shuffle_files=False,
                                 decoders={image_key: tfds.decode.SkipDecoding()})
        batches = raw.map(lambda ex: tf.cast(ex[label_key], tf.int32)).batch(LABEL_BATCH)
        return np.concatenate([b.numpy() for b in batches] or [np.zeros(0, np.int32)])

    return Source(
        dataset=dataset,
        num_examples=num_examples,
        num_classes=num_classes,
        image_size=native,
        name=f"{name}:{split}",
        _read_labels=read_labels,
    )

