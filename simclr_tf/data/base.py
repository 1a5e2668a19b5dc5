"""The `Source` type shared by every data source, with the errors and records the sources share.

A `Source` is a `tf.data.Dataset` of `(image, label)` pairs, the image a `uint8` tensor of shape
`(height, width, 3)` at its native size (the pipeline crops and resizes), the label an `int32`
scalar, `-1` for unlabelled images, in a fixed order. `simclr_tf.data.sources` builds them
(`load_source`); `folder` and `tfds` build the image-folder and TFDS ones.

This module imports nothing of simclr_tf.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable

import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)

BUILTIN_DATASETS = ("digits", "synthetic", "folder")

LABEL_BATCH = 4096  # labels read per step when the labels have to be read from a dataset


class SplitNotFoundError(ValueError):
    """The requested split does not exist in the data set. The message lists the splits that do."""


class DatasetNotFoundError(FileNotFoundError):
    """A TFDS data set is not prepared and could not be prepared.

    Downloading was not allowed, its archives have to be downloaded by hand, or the download or the
    preparation failed. The message says which and what to do.
    """


@dataclasses.dataclass(frozen=True)
class Source:
    """A data set split, as a stream of decoded images with labels.

    Attributes:
        dataset: `tf.data.Dataset` of `(image, label)`: `image` uint8 `(height, width, 3)`, `label`
            int32 scalar (`-1` when unlabelled). Same order on every iteration.
        num_examples: number of examples the dataset yields.
        num_classes: number of classes, `0` when unlabelled.
        image_size: native side of the (square) images, e.g. `32` for CIFAR-10 and digits; `None`
            when images vary in size.
        name: readable name, e.g. `"cifar10:train"`.
        labels: all labels in dataset order, when known without reading the data (built-in and
            folder sources). `None` otherwise; `source_labels` reads them.
        stats: what an image-folder source found and skipped; `None` for other sources.
        class_names: the class of each label index, where the source names them (image folders).
    """

    dataset: tf.data.Dataset
    num_examples: int
    num_classes: int
    image_size: int | None
    name: str
    labels: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    stats: FolderStats | None = dataclasses.field(default=None, compare=False)
    class_names: tuple[str, ...] = dataclasses.field(default=(), compare=False)
    # Builds the dataset of the examples at the given (sorted) indices without reading the others.
    _select: Callable[[np.ndarray], tf.data.Dataset] | None = dataclasses.field(
        default=None, repr=False, compare=False)
    # Reads all labels cheaply (e.g. TFDS without decoding the images).
    _read_labels: Callable[[], np.ndarray] | None = dataclasses.field(default=None, repr=False, compare=False)


def unknown_split_error(dataset: str, split: str, available: dict[str, int]) -> SplitNotFoundError:
    listing = ", ".join(f"{name!r} ({count} images)" for name, count in available.items())
    return SplitNotFoundError(
        f"Split {split!r} does not exist in {dataset}. Available splits: {listing}. "
        "Pass one of them as --train_split / --eval_split."
    )


@dataclasses.dataclass
class FolderStats:
    """What an image-folder source found and skipped.

    Attributes:
        image_files: files with an image extension (see `IMAGE_EXTENSIONS`).
        ignored_files: other files (not images by their extension), ignored.
        skipped_files: image files that could not be read when the folder was scanned (zero-byte,
            corrupt, too large), not part of the source.
        skipped_while_decoding: image files whose header was fine but whose pixels failed to decode
            while the dataset ran (e.g. truncated files); updated live, the dataset skips them.
        unreadable_folders: folders below the root that could not be listed (permission denied),
            their images left out with a warning naming them (a class folder is an error).
    """

    image_files: int = 0
    ignored_files: int = 0
    skipped_files: int = 0
    skipped_while_decoding: int = 0
    unreadable_folders: int = 0
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    def record_decode_failure(self, path: str, reason: str) -> None:
        with self._lock:
            self.skipped_while_decoding += 1
            count = self.skipped_while_decoding
        log.warning("Skipping unreadable image %s (%s). %d image(s) skipped while decoding so far.",
                    path, reason, count)
