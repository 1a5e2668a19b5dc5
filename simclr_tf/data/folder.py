"""Your own images as a source: an image folder, decoded by TensorFlow in parallel, Pillow as fallback.

Layout: `image_dir/<class name>/**/<image>` gives labelled images; images directly in `image_dir`
(and no class folders) are unlabelled. The folder is scanned once, reading only each file's header,
so empty, corrupt and oversized files are skipped up front and logged; files that fail while
decoding are skipped while the dataset runs. Memory stays bounded by the few images in flight.

The header scan also decides how each file is decoded. Ordinary JPEG, PNG, GIF and BMP files (8-bit
grey, RGB, palette or RGBA) are decoded by `tf.io` ops inside the `tf.data` graph, many at a time
without Python's lock; the rest (16-bit, CMYK, palettes with transparency, animations, WebP, TIFF,
...) by Pillow (`read_image`) in a `tf.py_function`. A file TensorFlow fails on at run time is given
to Pillow too, so no image is lost that Pillow can read: a parallel map decodes and drops the
elements that fail (`ignore_errors`), a `scan` sees the gap in the file indices at the next element,
which then comes with Pillow's images of the missed files as one padded batch (`unbatch`), in
place. The usual element costs only a cheap `cond` there, not a dataset of its own.

This module imports nothing of simclr_tf except `simclr_tf.data.base` (for `Source`).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os

import numpy as np
import tensorflow as tf

from simclr_tf.data.base import FolderStats, Source

log = logging.getLogger(__name__)

# File name endings read from image folders (case-insensitive). Anything else is ignored and counted.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

# Images with more pixels than this are decoded at reduced size (JPEG) or skipped (other formats):
# 80 MP is 240 MB as RGB, and several images are decoded in parallel. Pillow itself refuses images
# above 2 * Image.MAX_IMAGE_PIXELS (about 179 MP) with a DecompressionBombError, which we catch.
MAX_PIXELS = 80_000_000

# --- image folders ---------------------------------------------------------------------------------


class _TooLargeError(ValueError):
    pass


def _is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def shown_path(path) -> str:
    """A path as text that always prints: bytes of a file name that are not UTF-8 (kept by Python as
    surrogates) appear as `\\xNN` escapes instead of failing an encoder."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _walk_files(root: str) -> tuple[list[str], list[tuple[str, str]]]:
    """All non-hidden files under root, recursively, sorted by path (a stable order), and the
    folders that could not be listed with why (`os.walk` would skip them without a word)."""
    found, unreadable = [], []

    def note(error: OSError) -> None:
        unreadable.append((error.filename or root, error.strerror or type(error).__name__))

    for directory, subdirs, files in os.walk(root, onerror=note):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        found.extend(os.path.join(directory, f) for f in files if not f.startswith("."))
    return sorted(found), sorted(unreadable)


def _check_unreadable(root: str, unreadable: list[tuple[str, str]], stats: FolderStats) -> None:
    """An unreadable class folder is an error (its class would vanish and the labels shift); any
    other unreadable folder leaves its images out, with a warning naming it."""
    if not unreadable:
        return
    if any(os.path.abspath(path) == root for path, _ in unreadable):
        raise PermissionError(
            f"Cannot list the image folder {shown_path(root)!r} ({unreadable[0][1]}). Give yourself read "
            "access to it (chmod -R u+rX), or pass another --image_dir."
        )
    subfolders = [d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith(".")]
    classes = [(path, why) for path, why in unreadable
               if len(subfolders) >= 2 and os.path.dirname(os.path.abspath(path)) == root]
    if classes:
        names = ", ".join(f"{shown_path(os.path.basename(p))!r} ({why})" for p, why in classes)
        raise PermissionError(
            f"Cannot read the class folder(s) {names} of {shown_path(root)!r}: their images, and so "
            "their classes, would be left out and the other classes' labels would shift. Give "
            "yourself read access (chmod -R u+rX <folder>), or move them out of the image folder."
        )
    stats.unreadable_folders = len(unreadable)
    shown = "; ".join(f"{shown_path(path)} ({why})" for path, why in unreadable[:5])
    more = f"; and {len(unreadable) - 5} more" if len(unreadable) > 5 else ""
    log.warning("Left out %d folder(s) of %s that could not be read, with the images in them: %s%s.",
                len(unreadable), shown_path(root), shown, more)


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


# How a file is decoded: a branch of `_tf_decode` (JPEG at DCT scale 1/1, 1/2, 1/4, 1/8; PNG, GIF or BMP
# as RGB; PNG with an alpha channel, composited on white), or Pillow.
_PILLOW = -1
_JPEG_RATIOS = (1, 2, 4, 8)
_TF_IMAGE = len(_JPEG_RATIOS)
_TF_ALPHA = _TF_IMAGE + 1

_TF_PNG_RAWMODES = {"RGB": _TF_IMAGE, "L": _TF_IMAGE, "P": _TF_IMAGE, "RGBA": _TF_ALPHA, "LA": _TF_ALPHA}


def _tile_rawmode(image) -> str | None:
    if len(image.tile) != 1:
        return None
    args = image.tile[0][3]
    return args if isinstance(args, str) else args[0] if args else None


def _decoder(image, scale: int) -> int:
    """The branch of `_tf_decode` that decodes this file like `read_image` would, or `_PILLOW`.

    TensorFlow is given only what it decodes to the same pixels as Pillow: 8-bit files without a
    transparent colour (which Pillow composites on white), GIFs of one frame covering the whole
    picture, BMPs only if uncompressed 24 or 32 bits.
    """
    fmt = image.format
    if "transparency" in image.info:
        return _PILLOW
    if fmt == "JPEG":
        return _JPEG_RATIOS.index(scale) if image.mode in ("RGB", "L") else _PILLOW
    rawmode = _tile_rawmode(image)
    if fmt == "PNG" and not getattr(image, "is_animated", False):  # APNG: Pillow reads its first frame
        return _TF_PNG_RAWMODES.get(rawmode, _PILLOW)
    if (fmt == "GIF" and image.mode in ("P", "L") and tuple(image.tile[0][1]) == (0, 0, *image.size)
            and not image.is_animated):  # TensorFlow would decode every frame to keep the first
        return _TF_IMAGE
    if fmt == "BMP" and image.tile[0][0] == "raw" and rawmode in ("BGR", "BGRX"):
        return _TF_IMAGE
    return _PILLOW


def _decoded_size(width: int, height: int, scale: int, image_size: int | None) -> tuple[int, int]:
    """`(height, width)` of `read_image`'s result: after DCT scaling (rounded up) and downscaling."""
    width, height = -(-width // scale), -(-height // scale)
    if image_size and min(height, width) > image_size:
        factor = image_size / min(height, width)
        return max(image_size, round(height * factor)), max(image_size, round(width * factor))
    return height, width


def _probe(path: str, max_pixels: int, image_size: int | None = None) -> tuple[str | None, tuple]:
    """Why the file cannot be used (cheap: reads the header only), or None if it looks fine; and how
    to decode it: `(branch, height, width, resize)`, the `_tf_decode` branch (or `_PILLOW`), the size
    of the decoded image and whether it is resized to it after decoding."""
    from PIL import Image

    unused = (_PILLOW, 0, 0, False)
    try:
        with Image.open(path) as image:
            width, height = image.size
            fmt = image.format
            if width <= 0 or height <= 0:
                return f"image has no pixels ({width}x{height})", unused
            scale = 1
            if fmt == "JPEG":
                scale = _draft_scale(width, height, image_size, max_pixels)
                if scale is None:
                    return f"{width}x{height} JPEG is too large even at 1/8 scale", unused
            elif width * height > max_pixels:
                return (f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} and "
                        f"{fmt} cannot be decoded at reduced size"), unused
            branch = _decoder(image, scale)
        size = _decoded_size(width, height, scale, image_size)
        return None, (branch, *size, size != _decoded_size(width, height, scale, None))
    except Image.DecompressionBombError as error:
        return f"too large to decode safely ({error})", unused
    except Exception as error:  # any unreadable file is skipped, never fatal
        return (f"{type(error).__name__}: {error}" if str(error) else type(error).__name__), unused


def _log_skipped(kind: str, skipped: list[tuple[str, str]], total: int) -> None:
    if not skipped:
        return
    shown = "; ".join(f"{shown_path(path)} ({reason})" for path, reason in skipped[:5])
    more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    log.warning("Skipped %d of %d %s: %s%s.", len(skipped), total, kind, shown, more)


def _tf_decode(path: tf.Tensor, branch: tf.Tensor, size: tf.Tensor, resize: tf.Tensor) -> tf.Tensor:
    """Decodes one file with `tf.io` as `read_image` does with Pillow: uint8 RGB `(height, width, 3)`.

    Args:
        path: string scalar. The file.
        branch: int32 scalar. How (see `_decoder`): a JPEG DCT scale, RGB, or RGBA composited on white.
        size: int32 `(2,)`. Height and width of the result.
        resize: bool scalar. Downscale to `size` (antialiased bilinear, as Pillow's BILINEAR).
    """
    data = tf.io.read_file(path)

    def jpeg(ratio):  # Pillow's libjpeg defaults: accurate integer DCT, fancy upsampling
        return lambda: tf.io.decode_jpeg(data, channels=3, ratio=ratio, dct_method="INTEGER_ACCURATE")

    def rgb():  # PNG, GIF (first frame) or BMP
        return tf.ensure_shape(tf.io.decode_image(data, channels=3, expand_animations=False), [None, None, 3])

    def on_white():  # as Pillow's alpha_composite on an opaque white picture
        rgba = tf.cast(tf.io.decode_png(data, channels=4), tf.float32)
        alpha = rgba[..., 3:] / 255.0
        return tf.cast(tf.round(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)), tf.uint8)

    image = tf.switch_case(branch, [*(jpeg(r) for r in _JPEG_RATIOS), rgb, on_white])

    def downscale():
        small = tf.image.resize(image, size, method="bilinear", antialias=True)
        return tf.cast(tf.round(tf.clip_by_value(small, 0.0, 255.0)), tf.uint8)

    return tf.cond(resize, downscale, lambda: image)


def _folder_dataset(
    paths: np.ndarray, labels: np.ndarray, plans: np.ndarray, *, image_size: int | None, max_pixels: int,
    stats: FolderStats,
) -> tf.data.Dataset:
    """Streams (image, label), decoding in parallel, in order; files that fail to decode are skipped.

    Args:
        paths: object array of bytes `(N,)`. The files.
        labels: int32 `(N,)`.
        plans: int32 `(N, 4)`. Per file, from the header scan: the `_tf_decode` branch or `_PILLOW`,
            the decoded height and width, and whether to resize to them.
        image_size, max_pixels: as `read_image`'s, for the files Pillow decodes.
        stats: where files that fail to decode are counted.
    """

    def pillow(path) -> tuple[np.ndarray, bool]:
        name = os.fsdecode(path)  # the file system's bytes, whatever their encoding
        try:
            return read_image(name, image_size=image_size, max_pixels=max_pixels), True
        except Exception as error:  # never crash mid-training on one bad file
            stats.record_decode_failure(shown_path(name), f"{type(error).__name__}: {error}")
            return np.zeros((1, 1, 3), np.uint8), False

    def with_pillow(path):
        image, ok = tf.py_function(lambda path: pillow(path.numpy()), [path], [tf.uint8, tf.bool])
        return tf.ensure_shape(image, [None, None, 3]), tf.ensure_shape(ok, [])

    def with_tf(path, plan):
        return _tf_decode(path, plan[0], plan[1:3], tf.cast(plan[3], tf.bool)), tf.constant(True)

    some_by_pillow = bool((plans[:, 0] == _PILLOW).any()) if len(plans) else False

    def first_try(index, path, label, plan):
        """TensorFlow's decoding (an error drops the element), Pillow's for the files it was given."""
        if some_by_pillow:
            image, ok = tf.cond(plan[0] == _PILLOW, lambda: with_pillow(path), lambda: with_tf(path, plan))
        else:  # no `cond` for every image of the usual folder
            image, ok = with_tf(path, plan)
        return index, image, label, ok

    def with_missed(start, index, image, label, ok):
        """The files from `start` to `index` (excluded), which TensorFlow failed on, decoded by Pillow,
        then this element: padded to one batch, with each image's size."""
        items = [(*pillow(paths[i]), labels[i]) for i in range(int(start), int(index))]
        log.info("TensorFlow failed to decode %d file(s) from %s on: decoding with Pillow instead.",
                 len(items), shown_path(os.fsdecode(paths[int(start)])))
        items.append((image.numpy(), bool(ok), int(label)))
        sizes = np.array([i[0].shape[:2] for i in items], np.int32)
        batch = np.zeros((len(items), *sizes.max(axis=0), 3), np.uint8)
        for row, (picture, _, _) in enumerate(items):
            batch[row, : picture.shape[0], : picture.shape[1]] = picture
        return batch, sizes, np.array([i[2] for i in items], np.int32), np.array([i[1] for i in items], bool)

    def recover(start, element):
        index, image, label, ok = element

        def missed():
            outputs = tf.py_function(with_missed, [start, index, image, label, ok],
                                     [tf.uint8, tf.int32, tf.int32, tf.bool])
            return tuple(tf.ensure_shape(t, s) for t, s in
                         zip(outputs, ([None, None, None, 3], [None, 2], [None], [None]), strict=True))

        def alone():
            return image[None], tf.shape(image)[None, :2], label[None], ok[None]

        return tf.cond(index > start, missed, alone)

    dataset = tf.data.Dataset.from_tensor_slices((
        np.arange(len(paths), dtype=np.int64), tf.constant(paths, tf.string, shape=[len(paths)]),
        np.asarray(labels, np.int32), np.asarray(plans, np.int32).reshape(-1, 4),
    ))
    dataset = dataset.map(first_try, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
    # An element after the last file (index N, no image), so that a failure among the last files is seen.
    end = (tf.constant(len(paths), tf.int64), tf.zeros([1, 1, 3], tf.uint8), tf.constant(-1, tf.int32),
           tf.constant(False))
    dataset = dataset.concatenate(tf.data.Dataset.from_tensors(end))
    # `start`: the first index not seen yet. An element past it follows files TensorFlow failed on.
    dataset = dataset.scan(tf.constant(0, tf.int64),
                           lambda start, element: (element[0] + 1, (start, element)))
    dataset = dataset.map(recover, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()
    dataset = dataset.filter(lambda image, size, label, ok: ok)
    return dataset.map(lambda image, size, label, ok: (image[: size[0], : size[1]], label))


def load_image_folder(
    image_dir: str, *, image_size: int | None = None, max_pixels: int = MAX_PIXELS, class_names=None
) -> Source:
    """Your own images as a source.

    Every readable image under `image_dir`, whatever the layout, is in the source. Labels come
    from class sub-folders where there are at least two: `image_dir/<class name>/**/<image>`,
    classes numbered in sorted order of their folder names; images directly in `image_dir` are
    then unlabelled (label -1), used for pretraining only. With no or a single sub-folder every
    image is unlabelled (`num_classes` 0). Files are found recursively; hidden files and folders
    (`.name`) are ignored, as are files
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
        class_names: sequence of str or None. The classes of another folder (the training images'),
            whose label indices this folder's class sub-folders take by name (an evaluation folder
            may hold only some of them, even one); a sub-folder of another name is an error.
            `None`: this folder's own sub-folders, in sorted order.

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
    files, unreadable = _walk_files(root)
    images = [f for f in files if _is_image_file(f)]
    stats = FolderStats(image_files=len(images), ignored_files=len(files) - len(images))
    _check_unreadable(root, unreadable, stats)
    if stats.ignored_files:
        log.info("Ignoring %d file(s) in %s without an image extension (%s).", stats.ignored_files, root,
                 ", ".join(IMAGE_EXTENSIONS))
    if not images:
        raise ValueError(
            f"Image folder {root!r} holds no images: found {len(files)} file(s), none ending in "
            f"{', '.join(IMAGE_EXTENSIONS)}. Put your images there (one sub-folder per class, or at the "
            "top level)."
        )

    # Every readable image is used (pretraining needs no labels). Labels come from the first-level
    # sub-folders when there are at least two; images outside them (at the top) are unlabelled (-1)
    # and serve pretraining only.
    candidates = images
    found = sorted({os.path.relpath(f, root).split(os.sep)[0] for f in images
                    if os.path.dirname(f) != root})
    if class_names:  # another folder's classes (the training images'): labels by name
        unknown = [name for name in found if name not in class_names]
        if unknown:
            raise ValueError(
                f"The class folder(s) {unknown} of {root!r} are not classes of the training images "
                f"({list(class_names)}), so the model has no label for them. Rename them to a "
                "training class, or remove them from the evaluation folder."
            )
    class_names = list(class_names) if class_names else found
    if len(class_names) >= 2:
        class_index = {name: i for i, name in enumerate(class_names)}
        labels = [class_index.get(os.path.relpath(f, root).split(os.sep)[0], -1)
                  if os.path.dirname(f) != root else -1 for f in images]
        num_classes = len(class_names)
        unlabelled = labels.count(-1)
        if unlabelled:
            log.warning("%d image(s) directly in %s have no class folder: used for pretraining only "
                        "(%d classes from the sub-folders label the others).", unlabelled, root, num_classes)
    else:
        if class_names:
            log.warning("Image folder %s has a single sub-folder (%s): one class is no labels, so the "
                        "images are unlabelled.", root, class_names[0])
        class_names = []
        labels, num_classes = [-1] * len(images), 0

    workers = min(16, 4 * (os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        probes = list(pool.map(lambda p: _probe(p, max_pixels, image_size), candidates))
    reasons = [reason for reason, _ in probes]
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
            f"open (first: {shown_path(skipped[0][0])}: {skipped[0][1]}). Check the files are valid "
            "JPEG/PNG/BMP/GIF images."
        )

    # File names as the file system's bytes: a name that is not UTF-8 is a file like any other
    # (TensorFlow's strings are bytes; Python's str of such a name would not convert).
    paths = np.array([os.fsencode(candidates[i]) for i in keep], dtype=object)
    label_array = np.array([labels[i] for i in keep], np.int32)
    plans = np.array([probes[i][1] for i in keep], np.int32).reshape(-1, 4)
    by_pillow = int((plans[:, 0] == _PILLOW).sum())
    if by_pillow:
        log.info("Image folder %s: %d of %d images decoded by Pillow (formats or modes TensorFlow does not "
                 "decode the same), the others by TensorFlow.", root, by_pillow, len(plans))
    log.info("Image folder %s: %d images, %s.", root, len(paths),
             f"{num_classes} classes" if num_classes else "unlabelled")

    def select(indices: np.ndarray) -> tf.data.Dataset:
        return _folder_dataset(paths[indices], label_array[indices], plans[indices], image_size=image_size,
                               max_pixels=max_pixels, stats=stats)

    return Source(
        dataset=select(np.arange(len(paths))),
        num_examples=len(paths),
        num_classes=num_classes,
        image_size=None,
        name=f"folder:{root}",
        labels=label_array,
        stats=stats,
        class_names=tuple(class_names),
        _select=select,
    )

