"""TFDS data sets through TFDS' real `download_and_prepare`, offline, and the messages when it fails;
fashion_mnist prepared from the files of the Debian package dataset-fashion-mnist.

`tfds.testing.mock_data` (tests/test_sources.py) skips `download_and_prepare`, so it never saw that
TFDS imports `importlib_resources` while it prepares a data set, which broke every download of a
fresh install (issue 21). Here tiny builders run the whole path: `tfds.builder(name)` finds them by
name, `download_and_prepare` writes their records into a temporary `data_dir`, and
`simclr_tf.data.sources.load_source` reads them back. They live in a package written at test time,
as every real TFDS builder does: TFDS reads a builder's metadata and checksums next to its module in
its package (`code_path`), and that is where it imports `importlib_resources`; a builder defined in
a test module without a package would skip it.
"""

import dataclasses
import importlib
import os
import socket
import sys

import numpy as np
import pytest

from simclr_tf.data import installed
from simclr_tf.data.sources import DatasetNotFoundError, load_source, source_labels

_PACKAGE = "simclr_tf_tiny_tfds"

_BUILDERS = '''
"""Tiny TFDS builders for simclr_tf's tests (written by tests/test_tfds.py)."""

import numpy as np
import tensorflow_datasets as tfds

SPLITS = {"train": 6, "test": 4}


def tiny_image(split, index):
    """8x8 RGB image `index` of `split`: a flat colour that differs per image, split and channel."""
    base = 20 * index + (120 if split == "test" else 0)
    return np.broadcast_to(np.array([base, base + 1, base + 2], np.uint8), (8, 8, 3)).copy()


class SimclrTinyImages(tfds.core.GeneratorBasedBuilder):
    """Six training and four test images, two classes (`index % 2`), no download."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 3)),
                "label": tfds.features.ClassLabel(num_classes=2),
            }),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split, count) for split, count in SPLITS.items()}

    def _generate_examples(self, split, count):
        for index in range(count):
            yield index, {"image": tiny_image(split, index), "label": index % 2}


class SimclrTinyUnreachable(SimclrTinyImages):
    """Its files are on a server that does not answer (port 9 of this machine)."""

    def _split_generators(self, dl_manager):
        dl_manager.download("http://127.0.0.1:9/tiny.tar.gz")
        return super()._split_generators(dl_manager)


class SimclrTinyManual(SimclrTinyImages):
    """Its archive has to be put in `manual_dir` by hand, like ImageNet's."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = "manual_dir should contain tiny.tar, from the tiny publisher."

    def _split_generators(self, dl_manager):
        if not (dl_manager.manual_dir / "tiny.tar").exists():
            raise FileNotFoundError(f"tiny.tar is not in {dl_manager.manual_dir}")
        return super()._split_generators(dl_manager)
'''


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The module of the tiny builders, imported (and so registered with TFDS) once."""
    if f"{_PACKAGE}.builders" not in sys.modules:
        root = tmp_path_factory.mktemp("builders")
        (root / _PACKAGE).mkdir()
        (root / _PACKAGE / "__init__.py").write_text("")
        (root / _PACKAGE / "builders.py").write_text(_BUILDERS)
        sys.path.insert(0, str(root))
        try:
            importlib.import_module(f"{_PACKAGE}.builders")
        finally:
            sys.path.remove(str(root))  # imported: TFDS finds the package through sys.modules
    return sys.modules[f"{_PACKAGE}.builders"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No connection leaves this machine: the tests must pass without network."""
    connect = socket.socket.connect

    def loopback_only(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1"):
            raise ConnectionRefusedError(f"test_tfds runs offline: no connection to {address}")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)


def _materialise(dataset):
    pairs = [(image.numpy(), int(label)) for image, label in dataset]
    return np.stack([image for image, _ in pairs]), np.array([label for _, label in pairs])


def _files(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def test_download_and_prepare_then_load(tiny, tmp_path):
    data_dir = str(tmp_path / "tfds")
    for split, count in tiny.SPLITS.items():
        source = load_source("simclr_tiny_images", split, data_dir=data_dir, download=True)
        assert (source.num_examples, source.num_classes, source.image_size) == (count, 2, 8)
        assert source.name == f"simclr_tiny_images:{split}"
        images, labels = _materialise(source.dataset)
        assert images.dtype == np.uint8 and images.shape == (count, 8, 8, 3)
        # TFDS shuffles the examples when it writes them: compare as a set of (image, label).
        expected = {(tiny.tiny_image(split, i).tobytes(), i % 2) for i in range(count)}
        found = {(image.tobytes(), int(label)) for image, label in zip(images, labels, strict=True)}
        assert found == expected
        np.testing.assert_array_equal(source_labels(source), labels)
    assert os.path.isfile(os.path.join(data_dir, "simclr_tiny_images", "1.0.0", "dataset_info.json"))


def test_failed_download_is_one_message_and_leaves_no_half_made_folder(tiny, tmp_path, monkeypatch):
    from tensorflow_datasets.core.download import downloader

    # TFDS retries a failed connection 10 times with back-off (3.5 minutes); one attempt fails the same way.
    monkeypatch.setattr(downloader, "MAX_RETRIES", 0)
    data_dir = tmp_path / "tfds"
    load_source("simclr_tiny_images", "train", data_dir=str(data_dir), download=True)
    other_version = data_dir / "simclr_tiny_unreachable" / "0.9.0"
    other_version.mkdir(parents=True)
    (other_version / "keep.txt").write_text("not simclr_tf's")
    before = [f for f in _files(data_dir) if not f.startswith("downloads")]

    for _ in range(2):  # the second run gets the same message, not a trip over a leftover
        with pytest.raises(DatasetNotFoundError) as raised:
            load_source("simclr_tiny_unreachable", "train", data_dir=str(data_dir), download=True)
        message = str(raised.value)
        assert "Could not download and prepare TFDS data set 'simclr_tiny_unreachable'" in message
        assert "the files could not be fetched or read (ConnectionError: " in message
        assert "127.0.0.1" in message and "Traceback" not in message and "\n" not in message
        assert "Prepare it on a machine with network access" in message
        assert "--data_dir=DIR" in message and "--nodownload" in message
        assert not (data_dir / "simclr_tiny_unreachable" / "1.0.0").exists()
        assert not [p for p in os.listdir(data_dir / "simclr_tiny_unreachable") if "incomplete" in p]
        assert [f for f in _files(data_dir) if not f.startswith("downloads")] == before

    # Where no folder of the data set existed, none is left, not even an empty `<data_dir>/<name>`.
    fresh = tmp_path / "fresh"
    with pytest.raises(DatasetNotFoundError, match="could not be fetched or read"):
        load_source("simclr_tiny_unreachable", "train", data_dir=str(fresh), download=True)
    assert sorted(os.listdir(fresh)) == ["downloads"]


def test_a_version_folder_left_by_a_failed_preparation_is_removed_and_only_it(tiny, tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    def fail_halfway(builder, **kwargs):
        # What issue 21 saw for cifar10: `<data_dir>/cifar10/3.0.2` with no dataset_info.json.
        os.makedirs(builder.data_path)
        (builder.data_path / "simclr_tiny_images-train.tfrecord-00000-of-00001").write_bytes(b"half")
        raise OSError("No space left on device")

    other_version = tmp_path / "simclr_tiny_images" / "0.9.0"
    other_version.mkdir(parents=True)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", fail_halfway)
    version_dir = tmp_path / "simclr_tiny_images" / "1.0.0"
    with pytest.raises(DatasetNotFoundError, match=(
        r"could not be fetched or read \(OSError: No space left on device\)\. "
        rf"The incomplete {version_dir} was removed\. Prepare it on a machine")):
        load_source("simclr_tiny_images", "train", data_dir=str(tmp_path), download=True)
    assert not version_dir.exists() and other_version.is_dir()


def test_a_leftover_folder_is_named_not_reused(tiny, tmp_path):
    leftover = tmp_path / "simclr_tiny_images" / "1.0.0"
    leftover.mkdir(parents=True)  # an interrupted preparation: no dataset_info.json
    with pytest.raises(DatasetNotFoundError, match=r"1.0.0' exists but holds no prepared data set .*Delete"):
        load_source("simclr_tiny_images", "train", data_dir=str(tmp_path), download=True)
    assert leftover.is_dir()  # not simclr_tf's to delete


def test_manual_download_says_where_the_files_go_before_anything_else(tiny, tmp_path):
    manual_dir = tmp_path / "downloads" / "manual"
    for download in (True, False):
        with pytest.raises(DatasetNotFoundError) as raised:
            load_source("simclr_tiny_manual", "train", data_dir=str(tmp_path), download=download)
        message = str(raised.value)
        assert f"its files have to be downloaded by hand into {manual_dir} (missing or empty now)" in message
        assert "TFDS' instructions: manual_dir should contain tiny.tar, from the tiny publisher." in message
        assert os.listdir(tmp_path) == []  # nothing made, nothing downloaded

    manual_dir.mkdir(parents=True)
    (manual_dir / "tiny.tar").write_bytes(b"")
    source = load_source("simclr_tiny_manual", "test", data_dir=str(tmp_path), download=True)
    assert source.num_examples == tiny.SPLITS["test"]


@pytest.mark.parametrize("name", ["imagenet2012", "imagenet2012_subset/1pct"])
def test_imagenet_names_its_archives_and_their_sizes(tmp_path, name):
    with pytest.raises(DatasetNotFoundError) as raised:
        load_source(name, "train", data_dir=str(tmp_path), download=True)
    message = str(raised.value)
    assert f"TFDS data set {name!r} is not prepared" in message
    assert "ILSVRC2012_img_train.tar (138 GB) and ILSVRC2012_img_val.tar (6.3 GB)" in message
    assert f"by hand into {tmp_path / 'downloads' / 'manual'} (missing or empty now): " in message
    assert "You need to register on https://image-net.org/download-images" in message
    assert f"Then run again with the same --data_dir={str(tmp_path)!r}" in message
    assert os.listdir(tmp_path) == []


# --- fashion_mnist from the Debian package dataset-fashion-mnist -------------------------------------

_FASHION = installed.INSTALLED_DOWNLOADS["fashion_mnist"]
_needs_package = pytest.mark.skipif(
    bool(installed.missing_files(_FASHION)),
    reason=f"the Debian package {_FASHION.package} is not installed in {_FASHION.folder} (CI installs it: "
           f"`{_FASHION.install_command}`)",
)


@pytest.fixture
def no_dns(monkeypatch):
    """Host names do not resolve (a machine without network), so a download fails at once."""
    resolve = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):
        if host not in ("localhost", "127.0.0.1", "::1"):
            raise socket.gaierror(socket.EAI_NONAME, f"test_tfds runs offline: {host} does not resolve")
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    from tensorflow_datasets.core.download import downloader

    monkeypatch.setattr(downloader, "MAX_RETRIES", 0)  # one attempt fails the same way as eleven


def _sha256(path):
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@_needs_package
def test_the_debian_files_rebuild_exactly_the_files_tfds_downloads(tmp_path):
    import tensorflow_datasets as tfds

    registered = {info.filename: info for info in tfds.builder("fashion_mnist").url_infos.values()}
    assert sorted(registered) == sorted(_FASHION.gzip_mtimes)
    for name in registered:  # as installed, the gzip headers differ (no file name): TFDS would refuse them
        assert _sha256(os.path.join(_FASHION.folder, name)) != registered[name].checksum
    written = installed.restore_downloads(_FASHION, str(tmp_path))
    assert sorted(os.path.basename(p) for p in written) == sorted(registered)
    for path in written:
        info = registered[os.path.basename(path)]
        assert os.path.getsize(path) == info.size
        assert _sha256(path) == info.checksum


@pytest.mark.slow
@_needs_package
def test_fashion_mnist_is_prepared_offline_from_the_debian_files_by_tfds(tmp_path, no_dns, caplog):
    import logging

    data_dir = tmp_path / "tfds"
    with caplog.at_level(logging.INFO, logger="simclr_tf"):
        train = load_source("fashion_mnist", "train", data_dir=str(data_dir), download=True)
    assert f"from the files of the Debian package dataset-fashion-mnist in {_FASHION.folder}" in caplog.text
    test = load_source("fashion_mnist", "test", data_dir=str(data_dir), download=True)
    assert (train.num_examples, test.num_examples) == (60_000, 10_000)
    assert (train.num_classes, train.image_size) == (10, 28)
    assert os.path.isfile(data_dir / "fashion_mnist" / "3.0.1" / "dataset_info.json")
    assert [f for f in _files(data_dir) if f.startswith("downloads")] == []  # nothing fetched, nothing left

    images = np.concatenate([batch.numpy() for batch, _ in train.dataset.batch(10_000)])
    assert images.shape == (60_000, 28, 28, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[..., 0], images[..., 2])  # grey, on three channels
    grey = images[..., 0].astype(np.int64)
    assert grey.sum() == 3_431_114_169  # the training set's mean 0.2860 and std 0.3530 (of [0, 1]), exactly
    assert round(grey.mean() / 255, 4) == 0.2860 and round((grey / 255).std(), 4) == 0.3530
    assert np.bincount(source_labels(train)).tolist() == [6000] * 10
    assert np.bincount(source_labels(test)).tolist() == [1000] * 10


def test_without_the_debian_package_an_offline_download_names_it(tmp_path, no_dns, monkeypatch):
    absent = dataclasses.replace(_FASHION, folder=str(tmp_path / "not_installed"))
    monkeypatch.setitem(installed.INSTALLED_DOWNLOADS, "fashion_mnist", absent)
    data_dir = tmp_path / "tfds"
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist") as raised:
        load_source("fashion_mnist", "train", data_dir=str(data_dir), download=True)
    message = str(raised.value)
    assert "Could not download and prepare TFDS data set 'fashion_mnist'" in message
    assert f"simclr_tf finds them in {absent.folder} without any flag" in message
    assert "Traceback" not in message and "\n" not in message
    assert not (data_dir / "fashion_mnist").exists()

    # Some of its files gone: reinstall, and which are missing.
    os.makedirs(absent.folder)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        os.symlink(os.path.join(_FASHION.folder, name), os.path.join(absent.folder, name))
    with pytest.raises(DatasetNotFoundError, match=(
            r"dataset-fashion-mnist that holds its files is incomplete \(t10k-images-idx3-ubyte.gz, "
            r"t10k-labels-idx1-ubyte.gz missing in .*`apt-get install dataset-fashion-mnist --reinstall`")):
        load_source("fashion_mnist", "train", data_dir=str(data_dir), download=True)


@_needs_package
def test_a_damaged_debian_file_is_refused_by_tfds_checksums_then_downloaded(tmp_path, no_dns, monkeypatch,
                                                                             caplog):
    import logging

    damaged = dataclasses.replace(_FASHION, folder=str(tmp_path / "package"))
    os.makedirs(damaged.folder)
    for name in _FASHION.gzip_mtimes:
        os.symlink(os.path.join(_FASHION.folder, name), os.path.join(damaged.folder, name))
    labels = os.path.join(damaged.folder, "t10k-labels-idx1-ubyte.gz")
    data = bytearray(open(os.path.realpath(labels), "rb").read())
    data[100] ^= 1
    os.remove(labels)
    open(labels, "wb").write(bytes(data))
    monkeypatch.setitem(installed.INSTALLED_DOWNLOADS, "fashion_mnist", damaged)
    data_dir = tmp_path / "tfds"
    with caplog.at_level(logging.WARNING, logger="simclr_tf"), \
            pytest.raises(DatasetNotFoundError, match="could not be fetched or read"):
        load_source("fashion_mnist", "test", data_dir=str(data_dir), download=True)
    assert "Could not prepare fashion_mnist from the files of the Debian package" in caplog.text
    assert "NonMatchingChecksumError" in caplog.text and "downloading them instead" in caplog.text
    assert not (data_dir / "fashion_mnist").exists()


@_needs_package
def test_nodownload_says_the_debian_files_need_no_network(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=(
            r"Pass --download to let TFDS download and prepare it \(from the files of the installed Debian "
            r"package dataset-fashion-mnist, without network\)")):
        load_source("fashion_mnist", "train", data_dir=str(tmp_path), download=False)
