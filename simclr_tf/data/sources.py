"""Where images come from: TFDS, image folders, scikit-learn's digits and synthetic shapes.

Every source is a `Source`: a `tf.data.Dataset` of `(image, label)` pairs, the image a `uint8` tensor of
shape `(height, width, 3)` at its native size (the pipeline crops and resizes), the label an `int32`
scalar, `-1` for unlabelled images. The dataset yields the examples in a fixed order, so an example's
position is a stable index: the pipeline seeds each example's augmentation with it, and `label_subset`
/ `subset_source` select examples by it.

Sources:
- `digits` (the default): scikit-learn's 1,797 real 8x8 scans of handwritten digits, upsampled to
  32x32 RGB. Built in, no download, so the whole program runs offline.
- `synthetic`: coloured shapes, one shape per class, drawn from a seed. For smoke tests and benchmarks.
- `folder`: your own images, one sub-folder per class (or all at the top level, unlabelled). Decoded
  with Pillow one image at a time, so memory stays bounded by the few images in flight.
- any TFDS name (`cifar10`, `stl10`, `imagenet2012`, `imagenet2012_subset/1pct`, ...).

This module imports nothing of simclr_tf except `simclr_tf.config`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import os
import threading
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from simclr_tf.config import KNOWN_DATASETS

log = logging.getLogger(__name__)

BUILTIN_DATASETS = ("digits", "synthetic", "folder")

DIGITS_TEST_EXAMPLES = 360  # 1797 = 1437 train + 360 test, stratified
DIGITS_IMAGE_SIZE = 32
SYNTHETIC_NUM_CLASSES = 10

# File name endings read from image folders (case-insensitive). Anything else is ignored and counted.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

# Images with more pixels than this are decoded at reduced size (JPEG) or skipped (other formats):
# 80 MP is 240 MB as RGB, and several images are decoded in parallel. Pillow itself refuses images
# above 2 * Image.MAX_IMAGE_PIXELS (about 179 MP) with a DecompressionBombError, which we catch.
MAX_PIXELS = 80_000_000

_LABEL_BATCH = 4096  # labels read per step when `source_labels` has to iterate a dataset


class SplitNotFoundError(ValueError):
    """The requested split does not exist in the data set. The message lists the splits that do."""


class DatasetNotFoundError(FileNotFoundError):
    """A TFDS data set is not downloaded and prepared, and downloading was not allowed."""


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
    """

    image_files: int = 0
    ignored_files: int = 0
    skipped_files: int = 0
    skipped_while_decoding: int = 0
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    def record_decode_failure(self, path: str, reason: str) -> None:
        with self._lock:
            self.skipped_while_decoding += 1
            count = self.skipped_while_decoding
        log.warning("Skipping unreadable image %s (%s). %d image(s) skipped while decoding so far.",
                    path, reason, count)


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
    """

    dataset: tf.data.Dataset
    num_examples: int
    num_classes: int
    image_size: int | None
    name: str
    labels: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    stats: FolderStats | None = dataclasses.field(default=None, compare=False)
    # Builds the dataset of the examples at the given (sorted) indices without reading the others.
    _select: Callable[[np.ndarray], tf.data.Dataset] | None = dataclasses.field(
        default=None, repr=False, compare=False)
    # Reads all labels cheaply (e.g. TFDS without decoding the images).
    _read_labels: Callable[[], np.ndarray] | None = dataclasses.field(default=None, repr=False, compare=False)


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
        return load_image_folder(image_dir, image_size=image_size)
    return load_tfds(dataset, split, data_dir=data_dir, download=download)


def _unknown_split(dataset: str, split: str, available: dict[str, int]) -> SplitNotFoundError:
    listing = ", ".join(f"{name!r} ({count} images)" for name, count in available.items())
    return SplitNotFoundError(
        f"Split {split!r} does not exist in {dataset}. Available splits: {listing}. "
        "Pass one of them as --train_split / --eval_split."
    )


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
        raise _unknown_split("digits", split, {name: len(idx) for name, idx in splits.items()})
    digits = sklearn_digits()
    indices = splits[split]
    images = upsample_digits(digits.images[indices])
    labels = digits.target[indices].astype(np.int32)
    return from_arrays(images, labels, num_classes=10, name=f"digits:{split}")


# --- synthetic -------------------------------------------------------------------------------------

_SYNTHETIC_SPLITS = ("train", "test")


def _shape_masks(shape_ids: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Foreground masks of the ten class shapes; dx, dy are pixel offsets from the centre / radius."""
    dist = np.sqrt(dx**2 + dy**2)
    box = np.maximum(np.abs(dx), np.abs(dy))
    shapes = [
        dist <= 1.0,  # 0 disk
        box <= 0.8,  # 1 square
        (np.abs(dy) <= 0.8) & (np.abs(dx) <= (dy + 0.8) * 0.6),  # 2 triangle, apex up
        (dist >= 0.55) & (dist <= 1.0),  # 3 ring
        ((np.abs(dx) <= 0.25) | (np.abs(dy) <= 0.25)) & (box <= 1.0),  # 4 plus
        ((np.abs(dx - dy) <= 0.3) | (np.abs(dx + dy) <= 0.3)) & (box <= 0.85),  # 5 X
        np.abs(dx) + np.abs(dy) <= 1.0,  # 6 diamond
        (box >= 0.5) & (box <= 0.85),  # 7 hollow square
        (box <= 0.9) & (np.floor((dy + 1.0) * 2.5) % 2 == 0),  # 8 stripes
        (dist <= 1.0) & ((dx - 0.45) ** 2 + dy**2 > 0.36),  # 9 crescent
    ]
    masks = np.zeros(dx.shape, bool)
    for k, mask in enumerate(shapes):
        masks |= mask & (shape_ids == k)[:, None, None]
    return masks


def make_synthetic_images(
    num_examples: int, image_size: int, seed: int | Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Draws coloured shapes, one shape per class, on plain noisy backgrounds.

    The class lives in the shape only (random position, size, colours and noise), so the classes
    survive SimCLR's colour distortion and are learnable from a few hundred images.

    Args:
        num_examples: int. Number of images; labels are balanced (`i % 10`, then shuffled).
        image_size: int. Side of the square images.
        seed: int or sequence of ints (NumPy `SeedSequence` entropy). The images are a pure function
            of `(num_examples, image_size, seed)`.

    Returns:
        `(images, labels)`: uint8 `(num_examples, image_size, image_size, 3)`, int32 `(num_examples,)`.
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(num_examples) % SYNTHETIC_NUM_CLASSES).astype(np.int32)
    radius = rng.uniform(0.22, 0.4, num_examples) * image_size
    centre = rng.uniform(0.0, 1.0, (num_examples, 2)) * (image_size - 2 * radius[:, None]) + radius[:, None]
    background = rng.uniform(0.0, 1.0, (num_examples, 3))
    # Foreground: a random colour pushed away from the background so the shape stays visible.
    foreground = rng.uniform(0.0, 1.0, (num_examples, 3))
    too_close = np.abs(foreground - background).max(axis=1) < 0.35
    foreground[too_close] = 1.0 - background[too_close]
    noise_seed = rng.integers(0, 2**31)

    images = np.empty((num_examples, image_size, image_size, 3), np.uint8)
    grid = np.arange(image_size, dtype=np.float32) + 0.5
    noise_rng = np.random.default_rng(noise_seed)
    for start in range(0, num_examples, 256):  # chunks bound the memory of large images
        stop = min(start + 256, num_examples)
        r = radius[start:stop, None, None]
        dx = (grid[None, None, :] - centre[start:stop, 0, None, None]) / r  # (n, 1, S)
        dy = (grid[None, :, None] - centre[start:stop, 1, None, None]) / r  # (n, S, 1)
        dx, dy = np.broadcast_arrays(dx, dy)  # (n, S, S)
        mask = _shape_masks(labels[start:stop], dx, dy)[..., None]  # (n, S, S, 1)
        colour = np.where(mask, foreground[start:stop, None, None], background[start:stop, None, None])
        colour = colour + noise_rng.normal(0.0, 0.03, colour.shape)
        images[start:stop] = np.clip(np.round(colour * 255.0), 0, 255).astype(np.uint8)
    return images, labels


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
        raise _unknown_split("synthetic", split, dict.fromkeys(_SYNTHETIC_SPLITS, num_examples))
    if not isinstance(num_examples, int) or num_examples <= 0:
        raise ValueError(f"`synthetic_examples` must be a positive integer. Received: {num_examples!r}.")
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(
            f"`image_size` of synthetic images must be an integer >= 8. Received: {image_size!r}."
        )
    # Train and test are independent draws: the split's position joins the seed.
    images, labels = make_synthetic_images(
        num_examples, image_size, seed=(seed & 0xFFFFFFFF, _SYNTHETIC_SPLITS.index(split))
    )
    return from_arrays(images, labels, num_classes=SYNTHETIC_NUM_CLASSES, name=f"synthetic:{split}")


# --- image folders ---------------------------------------------------------------------------------


class _TooLargeError(ValueError):
    pass


def _is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _walk_files(root: str) -> list[str]:
    """All non-hidden files under root, recursively, sorted by path (a stable order)."""
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        found.extend(os.path.join(directory, f) for f in files if not f.startswith("."))
    return sorted(found)


def _draft_scale(width: int, height: int, image_size: int | None, max_pixels: int) -> int | None:
    """JPEG DCT downscale factor (1, 2, 4 or 8) to decode with, or None if even 1/8 is too large."""
    for scale in (1, 2, 4, 8):
        if width * height / scale**2 <= max_pixels:
            break
    else:
        return None
    if image_size:  # decode smaller still while the shorter side stays >= image_size
        while scale < 8 and min(width, height) / (scale * 2) >= image_size:
            scale *= 2
    return scale


def _to_rgb(image) -> np.ndarray:
    """Any Pillow image (L, P, RGBA, CMYK, I;16, F, ...) as a uint8 RGB array (H, W, 3)."""
    from PIL import Image

    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image).astype(np.int64)
        if mode == "I" and values.max(initial=0) <= 255:  # 32-bit container holding 8-bit values
            grey = np.clip(values, 0, 255)
        else:  # 16-bit: 0..65535 -> 0..255, rounded
            grey = (np.clip(values, 0, 65535) * 255 + 32767) // 65535
        return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=-1)
    if mode == "F":
        values = np.asarray(image, np.float64)
        values = values * 255.0 if np.nanmax(values, initial=0.0) <= 1.0 else values
        grey = np.clip(np.nan_to_num(np.round(values)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:  # composite on white: transparent regions look like paper, not black
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, np.uint8)


def read_image(path: str, *, image_size: int | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decodes one image file with Pillow into a uint8 RGB array `(height, width, 3)`.

    Grayscale, palette, RGBA / LA (composited on white), CMYK and 16-bit images are converted; of an
    animated GIF the first frame is used. JPEGs are decoded at reduced size (DCT scaling) when they
    exceed `max_pixels` or are much larger than `image_size`, which keeps big photos cheap.

    Args:
        path: str. The image file.
        image_size: int or None. If given, images whose shorter side is longer are downscaled so the
            shorter side equals `image_size` (aspect ratio kept). Never upscales.
        max_pixels: int. Largest number of pixels decoded at full size.

    Returns:
        uint8 array `(height, width, 3)`.

    Raises:
        OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError: the file is not a readable
            image (e.g. zero bytes, truncated, corrupt) or is too large to decode safely.
    """
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise ValueError(f"image has no pixels ({width}x{height})")
        if image.format == "JPEG":
            scale = _draft_scale(width, height, image_size, max_pixels)
            if scale is None:
                raise _TooLargeError(f"{width}x{height} is too large even at 1/8 scale")
            if scale > 1:
                image.draft(image.mode, (width // scale, height // scale))
        elif width * height > max_pixels:
            raise _TooLargeError(
                f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} "
                f"({image.format} cannot be decoded at reduced size); downscale it or convert it to JPEG"
            )
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        image.load()
        if width * height > max_pixels and image.size[0] * image.size[1] > max_pixels:
            raise _TooLargeError(f"{width}x{height} is still too large after reduced-size decoding")
        rgb = _to_rgb(image)  # (H, W, 3)
    height, width = rgb.shape[:2]
    if image_size and min(height, width) > image_size:
        factor = image_size / min(height, width)
        new_size = (max(image_size, round(width * factor)), max(image_size, round(height * factor)))
        rgb = np.asarray(Image.fromarray(rgb).resize(new_size, Image.Resampling.BILINEAR, reducing_gap=2.0))
    return rgb


def _probe(path: str, max_pixels: int) -> str | None:
    """Why the file cannot be used (cheap: reads the header only), or None if it looks fine."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
            fmt = image.format
        if width <= 0 or height <= 0:
            return f"image has no pixels ({width}x{height})"
        if fmt == "JPEG":
            if _draft_scale(width, height, None, max_pixels) is None:
                return f"{width}x{height} JPEG is too large even at 1/8 scale"
        elif width * height > max_pixels:
            return (f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} and {fmt} "
                    "cannot be decoded at reduced size")
        return None
    except Image.DecompressionBombError as error:
        return f"too large to decode safely ({error})"
    except Exception as error:  # any unreadable file is skipped, never fatal
        return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _log_skipped(kind: str, skipped: list[tuple[str, str]], total: int) -> None:
    if not skipped:
        return
    shown = "; ".join(f"{path} ({reason})" for path, reason in skipped[:5])
    more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    log.warning("Skipped %d of %d %s: %s%s.", len(skipped), total, kind, shown, more)


def _folder_dataset(
    paths: np.ndarray, labels: np.ndarray, *, image_size: int | None, max_pixels: int, stats: FolderStats
) -> tf.data.Dataset:
    """Streams (image, label), decoding in parallel with Pillow; files that fail to decode are skipped."""

    def decode(path: tf.Tensor):
        name = path.numpy().decode("utf-8")
        try:
            return read_image(name, image_size=image_size, max_pixels=max_pixels), True
        except Exception as error:  # never crash mid-training on one bad file
            stats.record_decode_failure(name, f"{type(error).__name__}: {error}")
            return np.zeros((1, 1, 3), np.uint8), False

    def load(path, label):
        image, ok = tf.py_function(decode, [path], [tf.uint8, tf.bool])
        image.set_shape([None, None, 3])
        ok.set_shape([])
        return image, label, ok

    dataset = tf.data.Dataset.from_tensor_slices((paths, labels))
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.filter(lambda image, label, ok: ok)
    return dataset.map(lambda image, label, ok: (image, label))


def load_image_folder(
    image_dir: str, *, image_size: int | None = None, max_pixels: int = MAX_PIXELS
) -> Source:
    """Your own images as a source.

    Layout: `image_dir/<class name>/**/<image>` gives labelled images, classes numbered in sorted
    order of their folder names; images directly in `image_dir` (and no class folders) are
    unlabelled (label -1, `num_classes` 0). If both exist, the top-level images are ignored with a
    warning. Files are found recursively; hidden files and folders (`.name`) are ignored, as are files
    without an image extension (counted in `stats.ignored_files`).

    The folder is scanned once, reading only each file's header, so files that are empty, corrupt or
    too large are skipped up front (`stats.skipped_files`) and `num_examples` is exact. Files whose
    header is fine but whose data is broken (truncated) are skipped while the dataset runs, with a
    warning (`stats.skipped_while_decoding`). Training never stops on a bad file.

    Args:
        image_dir: str. Root folder.
        image_size: int or None. Downscale images so their shorter side is `image_size` (see
            `read_image`); `None` keeps the native size.
        max_pixels: int. Images above this are decoded at reduced size (JPEG) or skipped.

    Returns:
        The `Source` (`image_size` None: images vary in size).

    Raises:
        FileNotFoundError: `image_dir` does not exist or is not a folder.
        ValueError: the folder holds no readable image.
    """
    if not os.path.exists(image_dir):
        raise FileNotFoundError(
            f"Image folder {image_dir!r} does not exist. Pass --image_dir=<folder> pointing at your images "
            "(one sub-folder per class, or all images at the top level for unlabelled data)."
        )
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"`image_dir` {image_dir!r} is a file, not a folder. Pass the folder holding "
                                "your images.")
    root = os.path.abspath(image_dir)
    files = _walk_files(root)
    images = [f for f in files if _is_image_file(f)]
    stats = FolderStats(image_files=len(images), ignored_files=len(files) - len(images))
    if stats.ignored_files:
        log.info("Ignoring %d file(s) in %s without an image extension (%s).", stats.ignored_files, root,
                 ", ".join(IMAGE_EXTENSIONS))
    if not images:
        raise ValueError(
            f"Image folder {root!r} holds no images: found {len(files)} file(s), none ending in "
            f"{', '.join(IMAGE_EXTENSIONS)}. Put your images there (one sub-folder per class, or at the "
            "top level)."
        )

    top_level = [f for f in images if os.path.dirname(f) == root]
    in_classes = [f for f in images if os.path.dirname(f) != root]
    if in_classes:
        class_names = sorted({os.path.relpath(f, root).split(os.sep)[0] for f in in_classes})
        if top_level:
            log.warning("Ignoring %d image(s) directly in %s: the images are labelled by their class "
                        "sub-folders (%d classes).", len(top_level), root, len(class_names))
        class_index = {name: i for i, name in enumerate(class_names)}
        candidates = in_classes
        labels = [class_index[os.path.relpath(f, root).split(os.sep)[0]] for f in in_classes]
        num_classes = len(class_names)
        if num_classes == 1:
            log.warning("Image folder %s has a single class folder (%s): every label is 0.", root,
                        class_names[0])
    else:
        class_names = []
        candidates, labels, num_classes = top_level, [-1] * len(top_level), 0

    workers = min(16, 4 * (os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        reasons = list(pool.map(lambda p: _probe(p, max_pixels), candidates))
    skipped = [(p, r) for p, r in zip(candidates, reasons, strict=True) if r is not None]
    keep = [i for i, r in enumerate(reasons) if r is None]

    # Decode the first readable files fully, so an epoch can never be empty (a header alone can lie).
    while keep:
        try:
            read_image(candidates[keep[0]], image_size=image_size, max_pixels=max_pixels)
            break
        except Exception as error:
            skipped.append((candidates[keep[0]], f"{type(error).__name__}: {error}"))
            keep.pop(0)
    stats.skipped_files = len(skipped)
    _log_skipped("image file(s) that could not be read", skipped, len(candidates))
    if not keep:
        raise ValueError(
            f"Image folder {root!r} holds no readable image: all {len(candidates)} image file(s) failed to "
            f"open (first: {skipped[0][0]}: {skipped[0][1]}). Check the files are valid JPEG/PNG/BMP/GIF "
            "images."
        )

    paths = np.array([candidates[i] for i in keep])
    label_array = np.array([labels[i] for i in keep], np.int32)
    log.info("Image folder %s: %d images, %s.", root, len(paths),
             f"{num_classes} classes" if num_classes else "unlabelled")

    def select(indices: np.ndarray) -> tf.data.Dataset:
        return _folder_dataset(paths[indices], label_array[indices], image_size=image_size,
                               max_pixels=max_pixels, stats=stats)

    return Source(
        dataset=select(np.arange(len(paths))),
        num_examples=len(paths),
        num_classes=num_classes,
        image_size=None,
        name=f"folder:{root}",
        labels=label_array,
        stats=stats,
        _select=select,
    )


# --- TFDS ------------------------------------------------------------------------------------------


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
            raise _unknown_split(name, split, available) from error

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
        batches = raw.map(lambda ex: tf.cast(ex[label_key], tf.int32)).batch(_LABEL_BATCH)
        return np.concatenate([b.numpy() for b in batches] or [np.zeros(0, np.int32)])

    return Source(
        dataset=dataset,
        num_examples=num_examples,
        num_classes=num_classes,
        image_size=native,
        name=f"{name}:{split}",
        _read_labels=read_labels,
    )


# --- labels and subsets ----------------------------------------------------------------------------


def source_labels(source: Source) -> np.ndarray:
    """All labels of a source, in dataset order, as int32 `(num_examples,)`.

    Cheap for built-in and folder sources (stored), and for TFDS (images are not decoded).
    """
    if source.labels is not None:
        return np.array(source.labels, np.int32)
    if source._read_labels is not None:
        return np.asarray(source._read_labels(), np.int32)
    labels = source.dataset.map(lambda image, label: label).batch(_LABEL_BATCH)
    return np.concatenate([b.numpy() for b in labels] or [np.zeros(0, np.int32)]).astype(np.int32)


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def label_subset(
    labels: Sequence[int] | np.ndarray, *, fraction: float | None = None, per_class: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Indices of a class-balanced labelled subset (SimCLR's 1% / 10% label fractions).

    Each class contributes `round(fraction * class_count)` examples (at least 1; halves round up), or
    `per_class` examples (all of a class that has fewer, with a warning). Which examples is drawn per
    class from `(seed, class)`, so the subset is a pure function of the labels and the seed.

    Args:
        labels: int array `(num_examples,)`, values >= 0.
        fraction: float in (0, 1]. Fraction of each class to keep.
        per_class: int > 0. Number of examples to keep per class.
        seed: int. Selection seed.

    Returns:
        Sorted int64 indices into `labels`.

    Raises:
        ValueError: not exactly one of `fraction` / `per_class`, a value out of range, or unlabelled
            examples (label < 0).

    Example:
    >>> label_subset([0, 0, 0, 0, 1, 1, 1, 1], per_class=1, seed=0).shape
    (2,)
    """
    if (fraction is None) == (per_class is None):
        raise ValueError(
            "Pass exactly one of `fraction` (e.g. 0.1) or `per_class` (e.g. 10) to `label_subset`. "
            f"Received: fraction={fraction!r}, per_class={per_class!r}."
        )
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise ValueError(f"`fraction` must be in (0, 1]. Received: {fraction!r}.")
    if per_class is not None and (int(per_class) != per_class or per_class <= 0):
        raise ValueError(f"`per_class` must be a positive integer. Received: {per_class!r}.")
    labels = np.asarray(labels)
    if labels.size and labels.min() < 0:
        raise ValueError(
            "`label_subset` needs labelled examples, but some labels are negative (-1 means unlabelled). "
            "Use a labelled data set (class sub-folders for image folders)."
        )
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if fraction is not None:
            count = max(1, _round_half_up(fraction * len(members)))
        else:
            count = int(per_class)
            if count > len(members):
                log.warning("Class %d has only %d examples, fewer than per_class=%d: using all of them.",
                            cls, len(members), count)
                count = len(members)
        rng = np.random.default_rng([seed & 0xFFFFFFFF, int(cls)])
        chosen.append(rng.choice(members, size=count, replace=False))
    if not chosen:
        return np.zeros(0, np.int64)
    return np.sort(np.concatenate(chosen)).astype(np.int64)


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
    return dataclasses.replace(
        source,
        dataset=dataset,
        num_examples=int(indices.size),
        name=f"{source.name}[subset {indices.size}]",
        labels=labels,
        _read_labels=read_labels,
    )
