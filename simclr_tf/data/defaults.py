"""Defaults that come from the data: an image folder's training size, and whether a cache fits.

A folder of 60,000 Fashion-MNIST PNGs (28x28) trained at the generic default of 224 px took 64x the
pixels of its images (7 s a step, 21 hours) and cached 6 GB of decoded images, without a word. Now:

- `folder_image_size`: without `--image_size`, an image folder trains at the median shorter side of
  its images (read from the headers of up to `SAMPLE_FILES` files spread over the sorted listing),
  rounded to a multiple of 8 and kept within `MIN_FOLDER_SIZE`..`MAX_FOLDER_SIZE`; said in one line.
- `cache_fits`: the decoded-image cache (`cache_dataset` unset) is used when its estimated size fits a
  quarter of the memory available; said in one line either way.

Imports no TensorFlow (the command line decides the image size before TensorFlow starts); Pillow only.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from simclr_tf.config import Config

log = logging.getLogger(__name__)

SAMPLE_FILES = 1000  # image headers read to choose a folder's size
MIN_FOLDER_SIZE = 32  # the CIFAR stem's size: smaller images are upscaled to it
MAX_FOLDER_SIZE = 224  # ImageNet's: larger images are downscaled to it
CACHE_MEMORY_SHARE = 0.25  # of the available memory, at most, for the decoded-image cache
# File name endings of images; the same list as `simclr_tf.data.folder.IMAGE_EXTENSIONS` (which
# imports TensorFlow; tests/test_data_defaults.py checks the two agree).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def sample_image_files(image_dir: str, count: int = SAMPLE_FILES) -> list[str]:
    """Up to `count` image files of `image_dir` (recursively, hidden ones left out), evenly spread over
    the sorted listing, so that every class folder is represented."""
    files = []
    for folder, subfolders, names in os.walk(image_dir):
        subfolders[:] = [s for s in subfolders if not s.startswith(".")]
        files.extend(os.path.join(folder, n) for n in names
                     if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS))
    files.sort()
    if len(files) <= count:
        return files
    return [files[i * len(files) // count] for i in range(count)]


def median_shorter_side(paths) -> int | None:
    """The median shorter side, in pixels, of the images whose header Pillow reads; None if none."""
    from PIL import Image

    sides = []
    for path in paths:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except Exception:  # an unreadable file: the folder's own scan reports it
            continue
    if not sides:
        return None
    sides.sort()
    return sides[len(sides) // 2]


def image_size_for_side(side: int) -> int:
    """A training size for images of shorter side `side`: the nearest multiple of 8, within 32..224."""
    return int(min(MAX_FOLDER_SIZE, max(MIN_FOLDER_SIZE, 8 * round(side / 8))))


def folder_image_size(config: Config) -> Config:
    """The config with an image folder's `image_size` taken from its images, where it is unset.

    Other data sets, a set `image_size` and a folder that does not exist (its loader says so) are
    returned unchanged.
    """
    data = config.data
    if data.dataset != "folder" or data.image_size is not None or not data.image_dir:
        return config
    if not os.path.isdir(data.image_dir):
        return config
    paths = sample_image_files(data.image_dir)
    side = median_shorter_side(paths)
    if side is None:
        return config
    size = image_size_for_side(side)
    log.info(f"Image size: {size} px, from the images of {data.image_dir} (median shorter side {side} "
             f"px of {len(paths)} image headers, to a multiple of 8 within {MIN_FOLDER_SIZE}.."
             f"{MAX_FOLDER_SIZE}); pass --image_size to choose another.")
    return dataclasses.replace(config, data=dataclasses.replace(data, image_size=size))


def available_memory() -> int:
    """Bytes of memory available to a new allocation (Linux' MemAvailable, else the free pages)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def cache_bytes(num_images: int, image_size: int) -> int:
    """The decoded-image cache's estimated size: uint8 RGB images of `image_size` px a side (a
    folder's images are downscaled to it; smaller ones are cached smaller)."""
    return int(num_images) * int(image_size) ** 2 * 3


def cache_fits(config: Config, num_images: int, available: int | None = None) -> Config:
    """The config with `cache_dataset` decided: an unset one is on when the cache of `num_images` images
    fits `CACHE_MEMORY_SHARE` of the available memory; said in one line either way.

    Args:
        config: Config. The run, its `image_size` resolved.
        num_images: int. Images the run caches (training and evaluation).
        available: int or None. Bytes of memory available; None reads them (`available_memory`).
    """
    estimate = cache_bytes(num_images, config.image_size)
    gigabytes = f"{estimate / 1e9:.2g} GB for {num_images} images at {config.image_size} px"
    if config.data.cache_dataset is not None:
        log.info(f"Decoded-image cache {'on' if config.data.cache_dataset else 'off'} "
                 f"(--cache_dataset={config.data.cache_dataset}; about {gigabytes}).")
        return config
    available = available_memory() if available is None else available
    budget = CACHE_MEMORY_SHARE * available
    use = estimate <= budget
    log.info(f"Decoded-image cache {'on' if use else 'off'}: about {gigabytes}, "
             f"{'within' if use else 'more than'} a quarter of the {available / 1e9:.3g} GB of memory "
             f"available{'' if use else ' (images are decoded again each epoch)'}; --cache_dataset or "
             "--nocache_dataset decides instead.")
    return dataclasses.replace(config, data=dataclasses.replace(config.data, cache_dataset=use))
