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

Decoding one file (Pillow's `read_image`, TensorFlow's `tf_decode`, the header `probe`) is in
`simclr_tf.data.decode`. This module imports nothing of simclr_tf except that and
`simclr_tf.data.base` (for `Source`).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os

import numpy as np
import tensorflow as tf

from simclr_tf.data.base import FolderStats, Source
from simclr_tf.data.decode import MAX_PIXELS, PILLOW, probe, read_image, tf_decode

log = logging.getLogger(__name__)

# File name endings read from image folders (case-insensitive). Anything else is ignored and counted.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


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


def _log_skipped(kind: str, skipped: list[tuple[str, str]], total: int) -> None:
    if not skipped:
        return
    shown = "; ".join(f"{shown_path(path)} ({reason})" for path, reason in skipped[:5])
    more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    log.warning("Skipped %d of %d %s: %s%s.", len(skipped), total, kind, shown, more)


def _folder_dataset(
    paths: np.ndarray, labels: np.ndarray, plans: np.ndarray, *, image_size: int | None, max_pixels: int,
    stats: FolderStats,
) -> tf.data.Dataset:
    """Streams (image, label), decoding in parallel, in order; files that fail to decode are skipped.

    Args:
        paths: object array of bytes `(N,)`. The files.
        labels: int32 `(N,)`.
        plans: int32 `(N, 4)`. Per file, from the header scan: the `tf_decode` branch or `PILLOW`,
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
        return tf_decode(path, plan[0], plan[1:3], tf.cast(plan[3], tf.bool)), tf.constant(True)

    some_by_pillow = bool((plans[:, 0] == PILLOW).any()) if len(plans) else False

    def first_try(index, path, label, plan):
        """TensorFlow's decoding (an error drops the element), Pillow's for the files it was given."""
        if some_by_pillow:
            image, ok = tf.cond(plan[0] == PILLOW, lambda: with_pillow(path), lambda: with_tf(path, plan))
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
        probes = list(pool.map(lambda p: probe(p, max_pixels, image_size), candidates))
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
    by_pillow = int((plans[:, 0] == PILLOW).sum())
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

