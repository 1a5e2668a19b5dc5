"""TensorFlow Datasets (`cifar10`, `stl10`, `imagenet2012`, ...) as a source.

A data set whose downloads a system package installs (`fashion_mnist`: Debian's
dataset-fashion-mnist, see `simclr_tf.data.installed`) is prepared from those files when they are
there, checked by TFDS against its registered checksums, without network; otherwise TFDS downloads it.

This module imports nothing of simclr_tf except `simclr_tf.config`, `simclr_tf.data.base` and
`simclr_tf.data.installed`.
"""

from __future__ import annotations

import logging
import os
import textwrap

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
from simclr_tf.data.installed import InstalledDownloads, installed_downloads, missing_files, restore_downloads

log = logging.getLogger(__name__)

# The archives of the data sets TFDS cannot download (they need a registration), with their sizes,
# so that the message says what to fetch before the user finds out after a 138 GB download.
MANUAL_ARCHIVES = {
    "imagenet2012": (("ILSVRC2012_img_train.tar", "138 GB"), ("ILSVRC2012_img_val.tar", "6.3 GB")),
    "imagenet2012_subset": (("ILSVRC2012_img_train.tar", "138 GB"), ("ILSVRC2012_img_val.tar", "6.3 GB")),
}

_REASON_CHARS = 300  # of the underlying error, in the message; a `requests` error can run to 1,000


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


def _manual_dir(builder) -> str:
    """Where TFDS looks for the files of a data set that must be downloaded by hand."""
    return os.path.join(os.fspath(builder.data_dir_root), "downloads", "manual")


def _is_empty_or_missing(folder: str) -> bool:
    # tf.io.gfile, not os: `data_dir` is often a bucket (gs://...) on TPUs.
    return not tf.io.gfile.isdir(folder) or not tf.io.gfile.listdir(folder)


def _instructions(builder) -> str:
    return " ".join(textwrap.dedent(builder.MANUAL_DOWNLOAD_INSTRUCTIONS).split())


def _manual_download_error(name: str, builder, manual_dir: str) -> DatasetNotFoundError:
    archives = MANUAL_ARCHIVES.get(builder.name)
    files = f": {' and '.join(f'{file} ({size})' for file, size in archives)}" if archives else ""
    return DatasetNotFoundError(
        f"TFDS data set {name!r} is not prepared in {builder.data_dir!r}, and TFDS cannot download it: "
        f"its files have to be downloaded by hand into {manual_dir} (missing or empty now){files}. "
        f"TFDS' instructions: {_instructions(builder)} Then run again with the same "
        f"--data_dir={os.fspath(builder.data_dir_root)!r}: TFDS prepares it from there. Or pass "
        f"--data_dir pointing at a TFDS data directory where {name!r} is already prepared."
    )


def _download_error(name: str, builder, error: Exception, removed: str | None) -> DatasetNotFoundError:
    reason = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
    if len(reason) > _REASON_CHARS:
        reason = reason[:_REASON_CHARS] + "..."
    cleaned = f" The incomplete {removed} was removed." if removed else ""
    if isinstance(error, ImportError):
        what = f"a package TFDS needs is missing ({reason})"
        fix = ("Reinstall simclr_tf's dependencies (`pip install -r requirements.txt`, or "
               "`pip install -e .`) and run again.")
    elif builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
        what = f"the files in {_manual_dir(builder)} could not be read ({reason})"
        fix = f"Check them against TFDS' instructions: {_instructions(builder)}"
    else:
        what = f"the files could not be fetched or read ({reason})"
        fix = (f"Prepare it on a machine with network access (`python -c \"import tensorflow_datasets as "
               f"tfds; tfds.builder('{name}', data_dir='DIR').download_and_prepare()\"`) and pass "
               "--data_dir=DIR (a copy of that folder), or pass --nodownload to use only the data sets "
               "already prepared in --data_dir.")
        installed = installed_downloads(builder.name)
        missing = missing_files(installed) if installed is not None else []
        if len(missing) == len(installed.gzip_mtimes if installed else ()) and missing:
            fix = (f"Install the Debian package that holds its files, offline from a local mirror too: "
                   f"`{installed.install_command}` (as root); simclr_tf finds them in {installed.folder} "
                   f"without any flag. Or: {fix[0].lower()}{fix[1:]}")
        elif missing:
            fix = (f"The Debian package {installed.package} that holds its files is incomplete "
                   f"({', '.join(missing)} missing in {installed.folder}): reinstall it with "
                   f"`{installed.install_command} --reinstall` (as root). Or: {fix[0].lower()}{fix[1:]}")
    return DatasetNotFoundError(
        f"Could not download and prepare TFDS data set {name!r} into "
        f"{os.fspath(builder.data_dir_root)!r}: {what}.{cleaned} {fix}"
    )


def _remove_new_folders(builder, existed: set[str]) -> str | None:
    """Removes the `<data_dir>/<name>[/<config>]/<version>` folder a failed preparation left behind.

    Only the version folder, if it did not exist before, and the folders above it up to `data_dir`
    that did not exist before and are now empty. Downloads (`<data_dir>/downloads`) stay: TFDS
    resumes and reuses them.

    Returns:
        The version folder if it was removed, for the message; otherwise `None`.
    """
    removed = None
    version_dir = os.fspath(builder.data_path)
    if version_dir not in existed and tf.io.gfile.isdir(version_dir):
        tf.io.gfile.rmtree(version_dir)
        removed = version_dir
    root = os.fspath(builder.data_dir_root)
    parent = os.path.dirname(version_dir)
    while parent not in existed and parent.startswith(root + "/") and _is_empty_or_missing(parent):
        if tf.io.gfile.isdir(parent):
            tf.io.gfile.rmtree(parent)  # empty
        parent = os.path.dirname(parent)
    return removed


def _existing_folders(builder) -> set[str]:
    """The version folder and its parents up to `data_dir` that exist now."""
    folders, path = set(), os.fspath(builder.data_path)
    root = os.fspath(builder.data_dir_root)
    while path.startswith(root + "/"):
        if tf.io.gfile.isdir(path):
            folders.add(path)
        path = os.path.dirname(path)
    return folders


def _is_mocked(builder) -> bool:
    """Whether `tfds.testing.mock_data` has replaced `download_and_prepare` (which checks nothing)."""
    prepare = getattr(type(builder), "download_and_prepare", None)
    return getattr(prepare, "__name__", "") == "mock_download_and_prepare"


def _prepare_from_installed(builder, installed: InstalledDownloads) -> None:
    """Prepares a data set with TFDS' own builder from the files a system package installed.

    The files TFDS downloads are rebuilt in a temporary folder that TFDS takes as `manual_dir`, where
    its download manager looks before downloading and checks them against its registered checksums.
    The gzip files are extracted there too, so `data_dir` gets the prepared records only.
    """
    import tempfile

    import tensorflow_datasets as tfds

    with tempfile.TemporaryDirectory(prefix=f"simclr_tf_{builder.name}_") as folder:
        restore_downloads(installed, folder)
        log.info("Preparing %s into %s from the files of the Debian package %s in %s (no download).",
                 builder.name, builder.data_dir, installed.package, installed.folder)
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=folder, extract_dir=os.path.join(folder, "extracted")))


def _prepare(name: str, builder, download: bool) -> None:
    """Downloads and prepares a missing TFDS data set, or says in one message why it cannot.

    Raises:
        DatasetNotFoundError: `download` is off, the data set needs archives fetched by hand that are
            not in `manual_dir`, a folder of an interrupted preparation is in the way, or the
            download or preparation failed (the folder it left is removed).
    """
    import tensorflow_datasets as tfds

    manual_dir = _manual_dir(builder)
    if _is_mocked(builder):  # tfds.testing.mock_data: preparing is a no-op, the data are generated
        builder.download_and_prepare()
        return
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS and _is_empty_or_missing(manual_dir):
        raise _manual_download_error(name, builder, manual_dir)
    installed = installed_downloads(builder.name)
    if not download:
        local = (f" (from the files of the installed Debian package {installed.package}, without network)"
                 if installed is not None and not missing_files(installed) else "")
        raise DatasetNotFoundError(
            f"TFDS data set {name!r} is not prepared in {builder.data_dir!r}. Pass --download to let "
            f"TFDS download and prepare it{local}, or --data_dir=<dir> pointing at a TFDS data directory "
            "that holds it."
        )
    version_dir = os.fspath(builder.data_path)
    if tf.io.gfile.isdir(version_dir):
        # TFDS would take it for the prepared data ("Reusing dataset") and find no examples in it.
        raise DatasetNotFoundError(
            f"TFDS data set {name!r}: {version_dir!r} exists but holds no prepared data set (no "
            "dataset_info.json; an interrupted preparation?). Delete that folder and run again, or pass "
            "--data_dir pointing at a TFDS data directory where it is prepared."
        )
    existed = _existing_folders(builder)
    if installed is not None and not missing_files(installed):
        try:
            _prepare_from_installed(builder, installed)
            return
        except Exception as error:  # e.g. TFDS' checksum check refused a file: download them instead
            _remove_new_folders(builder, existed)
            log.warning("Could not prepare %s from the files of the Debian package %s in %s (%s: %s); "
                        "downloading them instead.", name, installed.package, installed.folder,
                        type(error).__name__, (str(error).strip().splitlines() or [""])[0][:_REASON_CHARS])
    log.info("Downloading and preparing %s into %s.", name, builder.data_dir)
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    except Exception as error:  # any failure to fetch, extract or write ends the same way
        removed = _remove_new_folders(builder, existed)
        raise _download_error(name, builder, error, removed) from error
    except BaseException:  # interrupted (Ctrl-C): no half-made folder either
        _remove_new_folders(builder, existed)
        raise


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
        DatasetNotFoundError: the data set is not prepared and `download` is False, its archives
            must be downloaded by hand and are not in `<data_dir>/downloads/manual` (the message says
            which and how big), or downloading or preparing it failed (the message says why and
            what to do; no half-made data-set folder is left).
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
        _prepare(name, builder, download)

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

