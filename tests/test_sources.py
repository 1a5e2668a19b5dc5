"""Tests of the sources (simclr_tf.data.sources, synthetic, folder, tfds): digits, synthetic shapes,
image folders, TFDS, label subsets."""

import collections
import hashlib
import io
import json
import logging
import os
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from simclr_tf.data import folder, sources, synthetic
from simclr_tf.data.sources import (
    DatasetNotFoundError,
    Source,
    SplitNotFoundError,
    held_out_split,
    label_subset,
    load_source,
    source_labels,
    subset_source,
)


def _materialise(dataset):
    images, labels = [], []
    for image, label in dataset:
        images.append(image.numpy())
        labels.append(int(label))
    return images, np.array(labels)


# --- digits ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_train():
    return load_source("digits", "train")


@pytest.fixture(scope="module")
def digits_test():
    return load_source("digits", "test")


def _bilinear_x4_reference(image_8x8):
    """Bilinear 8 -> 32 upsampling with half-pixel centres, written out in NumPy."""
    src = np.clip((np.arange(32) + 0.5) / 4.0 - 0.5, 0, 7)
    low = np.floor(src).astype(int)
    high = np.minimum(low + 1, 7)
    w = src - low
    rows = image_8x8[low] * (1 - w)[:, None] + image_8x8[high] * w[:, None]  # (32, 8)
    return rows[:, low] * (1 - w)[None, :] + rows[:, high] * w[None, :]  # (32, 32)


def test_digits_split_sizes_stratified_and_a_partition(digits_train, digits_test):
    from sklearn.datasets import load_digits

    full = load_digits()
    assert digits_train.num_examples == 1437 and digits_test.num_examples == 360
    assert digits_train.num_classes == digits_test.num_classes == 10
    assert digits_train.image_size == 32
    train_images, train_labels = _materialise(digits_train.dataset)
    test_images, test_labels = _materialise(digits_test.dataset)
    assert len(train_labels) == 1437 and len(test_labels) == 360
    np.testing.assert_array_equal(train_labels, digits_train.labels)

    class_counts = np.bincount(full.target, minlength=10)
    train_counts = np.bincount(train_labels, minlength=10)
    test_counts = np.bincount(test_labels, minlength=10)
    np.testing.assert_array_equal(train_counts + test_counts, class_counts)
    # Stratified: each class's share of the test split matches its share of the data (within 1 image).
    assert np.all(np.abs(test_counts - 360 * class_counts / class_counts.sum()) <= 1.0)

    # Train and test partition the 1797 scans: the multisets of (image, label) add up exactly.
    def key(image, label):
        return hashlib.sha1(image.tobytes() + bytes([label])).hexdigest()

    everything = sources.upsample_digits(full.images)
    all_keys = collections.Counter(key(im, lab) for im, lab in zip(everything, full.target, strict=True))
    split_keys = collections.Counter(key(im, lab) for im, lab in zip(train_images, train_labels, strict=True))
    split_keys.update(key(im, lab) for im, lab in zip(test_images, test_labels, strict=True))
    assert split_keys == all_keys


def test_digits_images_are_upsampled_scans(digits_train):
    from sklearn.datasets import load_digits

    images, _ = _materialise(digits_train.dataset.take(3))
    for image in images:
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(image[..., 0], image[..., 1])
        np.testing.assert_array_equal(image[..., 0], image[..., 2])
    full = load_digits()
    for k in (0, 5, 100):
        expected = np.round(_bilinear_x4_reference(full.images[k] * 255.0 / 16.0))
        got = sources.upsample_digits(full.images[k:k + 1])[0, ..., 0].astype(float)
        np.testing.assert_allclose(got, expected, atol=1.0)
    # The darkest ink (16) becomes 255.
    assert sources.upsample_digits(np.full((1, 8, 8), 16.0)).min() == 255


def test_digits_is_deterministic_and_ignores_the_seed(digits_test):
    again = load_source("digits", "test", seed=123)
    a, la = _materialise(digits_test.dataset.take(20))
    b, lb = _materialise(again.dataset.take(20))
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    np.testing.assert_array_equal(la, lb)


def test_digits_unknown_split():
    with pytest.raises(SplitNotFoundError, match=r"'validation' does not exist in digits.*'train' \(1437"):
        load_source("digits", "validation")
    assert issubclass(SplitNotFoundError, ValueError)


# --- synthetic -------------------------------------------------------------------------------------


def test_synthetic_shapes_balance_and_determinism():
    source = load_source("synthetic", "train", synthetic_examples=50, image_size=24, seed=3)
    assert (source.num_examples, source.num_classes, source.image_size) == (50, 10, 24)
    images, labels = _materialise(source.dataset)
    assert images[0].shape == (24, 24, 3) and images[0].dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, 5))

    def draw(split, seed):
        source = load_source("synthetic", split, synthetic_examples=50, image_size=24, seed=seed)
        return _materialise(source.dataset)[0]

    again = draw("train", 3)
    np.testing.assert_array_equal(np.stack(images), np.stack(again))
    other_seed = draw("train", 4)
    test_split = draw("test", 3)
    assert not np.array_equal(np.stack(images), np.stack(other_seed))
    assert not np.array_equal(np.stack(images), np.stack(test_split))
    # Each image is a shape on a background: two dominant colours plus a little noise.
    spread = np.stack(images).reshape(50, -1, 3).astype(float).std(axis=1).max(axis=1)
    assert np.all(spread > 5)


def test_synthetic_shapes_match_their_masks():
    # A disk (class 0) covers ~pi r^2 pixels; a square of half-side 0.8 r covers (1.6 r)^2 pixels.
    size = 64
    grid = np.arange(size) + 0.5
    dy, dx = np.meshgrid((grid - 32) / 20, (grid - 32) / 20, indexing="ij")
    masks = synthetic._shape_masks(np.array([0, 1]), np.stack([dx, dx]), np.stack([dy, dy]))
    assert abs(masks[0].sum() - np.pi * 20**2) < 0.03 * np.pi * 20**2
    assert masks[1].sum() == 32**2


def test_synthetic_unknown_split():
    with pytest.raises(SplitNotFoundError, match="Available splits: 'train'"):
        load_source("synthetic", "validation")


# --- image folders ---------------------------------------------------------------------------------


def _save(image, path, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, **kwargs)


def _png_header_only(width, height):
    """A tiny PNG file whose header claims width x height pixels (a decompression bomb)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


@pytest.fixture
def image_folder(tmp_path):
    """Two classes ('ants', 'bees') of images in every mode, plus broken and non-image files."""
    root = tmp_path / "images"
    ants, bees = root / "ants", root / "bees"
    expected = {}  # relative path -> (label, expected RGB of the top-left pixel, tolerance)

    _save(Image.new("RGB", (40, 30), (200, 30, 40)), str(ants / "a_rgb.jpg"), quality=95)
    expected["ants/a_rgb.jpg"] = (0, (200, 30, 40), 6)
    _save(Image.new("RGB", (33, 20), (10, 220, 90)), str(ants / "b_rgb.png"))
    expected["ants/b_rgb.png"] = (0, (10, 220, 90), 0)
    _save(Image.new("RGB", (16, 16), (70, 80, 250)), str(ants / "nested" / "c.bmp"))
    expected["ants/nested/c.bmp"] = (0, (70, 80, 250), 0)
    first, second = Image.new("P", (12, 12), 0), Image.new("P", (12, 12), 1)
    palette = [255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6)
    first.putpalette(palette)
    second.putpalette(palette)
    first.save(str(ants / "d_anim.gif"), save_all=True, append_images=[second])
    expected["ants/d_anim.gif"] = (0, (255, 0, 0), 0)  # first frame
    _save(Image.new("L", (20, 20), 100), str(ants / "e_grey.png"))
    expected["ants/e_grey.png"] = (0, (100, 100, 100), 0)

    palette_image = Image.new("P", (10, 10), 1)
    palette_image.putpalette([0, 0, 0, 12, 34, 56] + [0] * (256 * 3 - 6))
    _save(palette_image, str(bees / "f_palette.png"))
    expected["bees/f_palette.png"] = (1, (12, 34, 56), 0)
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., :3] = (0, 0, 200)
    rgba[:, :5, 3] = 0  # transparent: white after compositing
    rgba[:, 5:, 3] = 255
    _save(Image.fromarray(rgba, "RGBA"), str(bees / "g_rgba.png"))
    expected["bees/g_rgba.png"] = (1, (255, 255, 255), 0)
    _save(Image.new("CMYK", (24, 24), (0, 255, 255, 0)), str(bees / "h_cmyk.jpg"), quality=95)
    expected["bees/h_cmyk.jpg"] = (1, (255, 0, 0), 8)
    sixteen = np.full((8, 12), 51400, np.uint16)  # 51400 / 65535 * 255 = 200.0
    _save(Image.fromarray(sixteen), str(bees / "i_16bit.png"))
    assert Image.open(str(bees / "i_16bit.png")).mode.startswith("I")
    expected["bees/i_16bit.png"] = (1, (200, 200, 200), 0)

    # Broken files, all skipped when the folder is scanned.
    (bees / "zero_bytes.png").write_bytes(b"")
    (bees / "random_bytes.jpg").write_bytes(np.random.default_rng(0).bytes(2000))
    (bees / "huge.png").write_bytes(_png_header_only(30000, 30000))
    # Header fine, data cut short: skipped while decoding.
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8)).save(buffer, "JPEG")
    (bees / "z_truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    # Not images: ignored.
    (root / "README.txt").write_text("not an image")
    (bees / "notes.txt").write_text("not an image")
    return str(root), expected


def test_folder_reads_every_mode_with_labels_and_skips_bad_files(image_folder, caplog):
    root, expected = image_folder
    with caplog.at_level(logging.WARNING, logger="simclr_tf"):
        source = load_source("folder", "train", image_dir=root)
    assert source.num_classes == 2 and source.image_size is None
    assert source.num_examples == len(expected) + 1  # the truncated JPEG passes the header scan
    assert source.stats.image_files == len(expected) + 4
    assert source.stats.ignored_files == 2
    assert source.stats.skipped_files == 3
    assert "Skipped 3 of" in caplog.text and "huge.png" in caplog.text and "zero_bytes.png" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="simclr_tf"):
        images, labels = _materialise(source.dataset)
    assert source.stats.skipped_while_decoding == 1
    assert "z_truncated.jpg" in caplog.text
    assert len(images) == len(expected)
    names = sorted(expected)  # dataset order: sorted relative paths, so class by class
    for name, image, label in zip(names, images, labels, strict=True):
        want_label, want_rgb, tolerance = expected[name]
        assert label == want_label, name
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, name
        np.testing.assert_allclose(image[0, 0].astype(int), want_rgb, atol=tolerance, err_msg=name)
    assert images[names.index("ants/b_rgb.png")].shape == (20, 33, 3)
    rgba = images[names.index("bees/g_rgba.png")]
    np.testing.assert_array_equal(rgba[0, 9], (0, 0, 200))  # the opaque half keeps its colour
    np.testing.assert_array_equal(labels, source.labels[: len(labels)])


def test_folder_downscales_large_jpegs_and_skips_other_large_images(tmp_path):
    root = tmp_path / "big"
    _save(Image.new("RGB", (200, 160), (50, 100, 150)), str(root / "photo.jpg"))
    _save(Image.new("RGB", (200, 160), (50, 100, 150)), str(root / "scan.png"))
    _save(Image.new("RGB", (60, 50), (50, 100, 150)), str(root / "small.png"))
    source = folder.load_image_folder(str(root), max_pixels=10_000)
    assert source.num_examples == 2 and source.stats.skipped_files == 1  # the PNG cannot be decoded smaller
    images, labels = _materialise(source.dataset)
    assert images[0].shape == (80, 100, 3)  # 200x160 JPEG decoded at 1/2 scale: 8000 pixels <= 10000
    assert images[1].shape == (50, 60, 3)
    np.testing.assert_array_equal(labels, [-1, -1])


def test_folder_resizes_the_shorter_side_to_image_size(tmp_path):
    root = tmp_path / "resize"
    _save(Image.new("RGB", (64, 48), (1, 2, 3)), str(root / "wide.png"))
    _save(Image.new("RGB", (10, 12), (1, 2, 3)), str(root / "tiny.png"))
    images, _ = _materialise(load_source("folder", "train", image_dir=str(root), image_size=24).dataset)
    assert images[0].shape == (12, 10, 3)  # never upscaled
    assert images[1].shape == (24, 32, 3)
    np.testing.assert_array_equal(images[1][5, 5], (1, 2, 3))


def test_unlabelled_folder(tmp_path):
    for k in range(3):
        _save(Image.new("RGB", (8, 8), (k, k, k)), str(tmp_path / f"img{k}.png"))
    source = load_source("folder", "train", image_dir=str(tmp_path))
    assert source.num_classes == 0 and source.num_examples == 3
    _, labels = _materialise(source.dataset)
    np.testing.assert_array_equal(labels, [-1, -1, -1])
    np.testing.assert_array_equal(source_labels(source), [-1, -1, -1])


def test_every_readable_image_is_used_whatever_the_layout(tmp_path):
    """11 images at the top and 5 in one sub-folder (plus broken and non-image files): all 16
    pretrain, unlabelled, since one sub-folder is not classes."""
    for k in range(11):
        _save(Image.new("RGB", (8, 8), (k, 0, 0)), str(tmp_path / f"top{k}.png"))
    for k in range(5):
        _save(Image.new("RGB", (8, 8), (0, k, 0)), str(tmp_path / "only" / f"in{k}.png"))
    (tmp_path / "empty.png").write_bytes(b"")
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(buffer, "JPEG")
    (tmp_path / "only" / "cut.jpg").write_bytes(buffer.getvalue()[:40])
    (tmp_path / "notes.txt").write_text("not an image")
    source = load_source("folder", "train", image_dir=str(tmp_path))
    assert source.num_examples == 16 and source.num_classes == 0
    assert source_labels(source).tolist() == [-1] * 16


def test_top_level_images_join_two_classes_unlabelled(tmp_path):
    for k in range(3):
        _save(Image.new("RGB", (8, 8), (k, 0, 0)), str(tmp_path / f"loose{k}.png"))
    for name in ("cats", "dogs"):
        for k in range(2):
            _save(Image.new("RGB", (8, 8), (0, k, 0)), str(tmp_path / name / "deep" / f"{k}.png"))
    source = load_source("folder", "train", image_dir=str(tmp_path))
    assert source.num_examples == 7 and source.num_classes == 2
    assert sorted(source_labels(source).tolist()) == [-1, -1, -1, 0, 0, 1, 1]


def test_held_out_split_is_stratified_seeded_and_a_partition():
    labels = np.array([0] * 20 + [1] * 9 + [2] * 1 + [-1] * 5)
    rest, held = held_out_split(labels, fraction=0.1, seed=3)
    assert sorted(np.concatenate([rest, held]).tolist()) == list(range(len(labels)))
    assert np.bincount(labels[held], minlength=3).tolist() == [2, 1, 0]  # round(2.0), round(0.9), none of 1
    assert (labels[rest] == -1).sum() == 5  # unlabelled images are never held out
    again, _ = held_out_split(labels, fraction=0.1, seed=3)
    other, _ = held_out_split(labels, fraction=0.1, seed=4)
    assert again.tolist() == rest.tolist() and other.tolist() != rest.tolist()
    _, most = held_out_split([0, 0], fraction=0.9)
    assert most.tolist() in ([0], [1])  # a class always keeps one training example
    with pytest.raises(ValueError, match=r"`fraction` must be in \(0, 1\)"):
        held_out_split(labels, fraction=1.0)


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist\. Pass --image_dir"):
        load_source("folder", "train", image_dir=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="needs `image_dir`"):
        load_source("folder", "train")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"holds no images: found 1 file\(s\)"):
        load_source("folder", "train", image_dir=str(empty))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"")
    (broken / "b.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="no readable image: all 2 image file"):
        load_source("folder", "train", image_dir=str(broken))


# --- TFDS ------------------------------------------------------------------------------------------


def _prepare_fake_tfds(data_dir, name, split_sizes):
    """Writes the metadata TFDS needs to consider `name` prepared, with the given split sizes."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    os.makedirs(builder.data_dir, exist_ok=True)
    info = {
        "name": name,
        "version": str(builder.version),
        "splits": [
            {"name": split, "shardLengths": [str(n)], "numBytes": "0"} for split, n in split_sizes.items()
        ],
    }
    with open(os.path.join(builder.data_dir, "dataset_info.json"), "w") as f:
        json.dump(info, f)


def test_tfds_cifar10_with_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    data_dir = str(tmp_path / "tfds")
    _prepare_fake_tfds(data_dir, "cifar10", {"train": 6, "test": 6})
    with tfds.testing.mock_data(num_examples=6, data_dir=data_dir):
        train = load_source("cifar10", "train", data_dir=data_dir)
        test = load_source("cifar10", "test", data_dir=data_dir)
        for source in (train, test):
            assert (source.num_examples, source.num_classes, source.image_size) == (6, 10, 32)
            images, labels = _materialise(source.dataset)
            assert len(images) == 6
            assert all(im.shape == (32, 32, 3) and im.dtype == np.uint8 for im in images)
            assert np.all((labels >= 0) & (labels < 10))
            np.testing.assert_array_equal(source_labels(source), labels)
        with pytest.raises(SplitNotFoundError, match=r"'validation' does not exist in cifar10.*'train' \(6"):
            load_source("cifar10", "validation", data_dir=data_dir)


def test_tfds_grayscale_becomes_rgb(tmp_path):
    import tensorflow_datasets as tfds

    data_dir = str(tmp_path / "tfds")
    _prepare_fake_tfds(data_dir, "mnist", {"train": 4, "test": 4})
    with tfds.testing.mock_data(num_examples=4, data_dir=data_dir):
        source = load_source("mnist", "test", data_dir=data_dir)
        images, _ = _materialise(source.dataset)
    assert source.image_size == 28 and images[0].shape == (28, 28, 3)
    np.testing.assert_array_equal(images[0][..., 0], images[0][..., 2])


def test_tfds_without_metadata_counts_examples():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=5):
        source = load_source("cifar10", "train", download=True)
        assert source.num_examples == 5
        assert len(_materialise(source.dataset)[1]) == 5


def test_tfds_missing_without_download(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"'cifar10' is not prepared in .*Pass --download"):
        load_source("cifar10", "train", data_dir=str(tmp_path), download=False)
    assert issubclass(DatasetNotFoundError, FileNotFoundError)


def test_unknown_dataset():
    with pytest.raises(ValueError, match=r"Unknown `dataset` 'no_such_dataset_xyz'.*digits, synthetic, "):
        load_source("no_such_dataset_xyz", "train")
    with pytest.raises(ValueError, match=r"Unknown `dataset` 'cifar10/nonexistent_config'"):
        load_source("cifar10/nonexistent_config", "train")


# --- labels and subsets ----------------------------------------------------------------------------


def test_label_subset_fraction_and_per_class(digits_train):
    labels = source_labels(digits_train)
    counts = np.bincount(labels)
    subset = label_subset(labels, fraction=0.1, seed=0)
    expected = np.floor(0.1 * counts + 0.5).astype(int)
    np.testing.assert_array_equal(np.bincount(labels[subset], minlength=10), expected)
    assert np.all(np.diff(subset) > 0)  # sorted, no duplicates

    two = label_subset(labels, per_class=2, seed=0)
    assert len(two) == 20
    np.testing.assert_array_equal(np.bincount(labels[two]), np.full(10, 2))


def test_label_subset_is_deterministic_and_seeded(digits_train):
    labels = source_labels(digits_train)
    a = label_subset(labels, fraction=0.1, seed=7)
    np.testing.assert_array_equal(a, label_subset(labels, fraction=0.1, seed=7))
    assert not np.array_equal(a, label_subset(labels, fraction=0.1, seed=8))
    np.testing.assert_array_equal(label_subset(labels, fraction=1.0), np.arange(len(labels)))


def test_label_subset_edge_cases(caplog):
    labels = np.array([0] * 10 + [1] * 3 + [2])
    assert np.bincount(labels[label_subset(labels, fraction=0.01)]).tolist() == [1, 1, 1]  # at least one
    assert np.bincount(labels[label_subset(labels, fraction=0.25)]).tolist() == [3, 1, 1]  # 2.5 -> 3
    with caplog.at_level(logging.WARNING, logger="simclr_tf"):
        subset = label_subset(labels, per_class=5)
    assert np.bincount(labels[subset]).tolist() == [5, 3, 1]
    assert "fewer than per_class=5" in caplog.text
    with pytest.raises(ValueError, match="exactly one of `fraction`"):
        label_subset(labels, fraction=0.1, per_class=2)
    with pytest.raises(ValueError, match="exactly one of `fraction`"):
        label_subset(labels)
    with pytest.raises(ValueError, match=r"`fraction` must be in \(0, 1\]. Received: 1.5"):
        label_subset(labels, fraction=1.5)
    with pytest.raises(ValueError, match="`per_class` must be a positive integer. Received: 0"):
        label_subset(labels, per_class=0)
    with pytest.raises(ValueError, match="needs labelled examples"):
        label_subset(np.array([-1, -1]), fraction=0.5)


def test_subset_source_in_memory_and_streamed(digits_test):
    indices = np.array([3, 0, 17, 200, 17])
    picked = subset_source(digits_test, indices)
    assert picked.num_examples == 4
    all_images, all_labels = _materialise(digits_test.dataset)
    images, labels = _materialise(picked.dataset)
    for k, index in enumerate([0, 3, 17, 200]):
        np.testing.assert_array_equal(images[k], all_images[index])
        assert labels[k] == all_labels[index]
    np.testing.assert_array_equal(source_labels(picked), labels)

    # A source without random access (like TFDS): filtered by position, labels read from the stream.
    streamed = Source(dataset=digits_test.dataset, num_examples=360, num_classes=10, image_size=32, name="s")
    np.testing.assert_array_equal(source_labels(streamed), all_labels)
    picked = subset_source(streamed, indices)
    images, labels = _materialise(picked.dataset)
    np.testing.assert_array_equal(np.stack(images), np.stack([all_images[i] for i in (0, 3, 17, 200)]))
    np.testing.assert_array_equal(source_labels(picked), all_labels[[0, 3, 17, 200]])

    with pytest.raises(ValueError, match=r"must lie in \[0, 360\).*Received values from 0 to 360"):
        subset_source(digits_test, [0, 360])


def test_a_subset_permuted_or_subset_again_holds_its_own_examples(digits_test):
    # Training reads every source through `permuted_source`, and a subset of a subset is a label
    # draw of a held-out part: both must read the subset's examples, not the parent's first ones.
    all_images, all_labels = _materialise(digits_test.dataset)
    indices = [5, 7, 100, 250]
    picked = subset_source(digits_test, indices)
    shuffled = sources.permuted_source(picked, seed=3)
    images, labels = _materialise(shuffled.dataset)
    expected = {all_images[i].tobytes(): all_labels[i] for i in indices}
    assert sorted(im.tobytes() for im in images) == sorted(expected)
    for image, label in zip(images, labels, strict=True):
        assert label == expected[image.tobytes()]
    np.testing.assert_array_equal(shuffled.labels, labels)  # the `labels` field matches the stream

    inner = subset_source(picked, [1, 3])  # picked's 2nd and 4th: digits 7 and 250
    images, labels = _materialise(sources.permuted_source(inner, seed=0).dataset)
    assert sorted(im.tobytes() for im in images) == sorted(all_images[i].tobytes() for i in (7, 250))
    assert sorted(labels) == sorted(all_labels[[7, 250]])


def test_subset_of_a_folder_reads_only_the_selected_files(tmp_path):
    for k in range(6):
        _save(Image.new("RGB", (8, 8), (k * 10, 0, 0)), str(tmp_path / ("a" if k < 3 else "b") / f"{k}.png"))
    source = load_source("folder", "train", image_dir=str(tmp_path))
    picked = subset_source(source, [1, 4])
    images, labels = _materialise(picked.dataset)
    assert [int(im[0, 0, 0]) for im in images] == [10, 40]
    np.testing.assert_array_equal(labels, [0, 1])
    assert isinstance(picked.dataset.element_spec, tuple)
    assert picked.dataset.element_spec[0].dtype == tf.uint8


def test_from_arrays_and_permuted_source():
    images = np.arange(5, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    source = sources.from_arrays(images, np.array([0, 1, 2, 1, 0]))
    assert (source.num_examples, source.num_classes, source.image_size) == (5, 3, 4)
    unlabelled = sources.from_arrays(images)
    assert unlabelled.num_classes == 0 and source_labels(unlabelled).tolist() == [-1] * 5

    permuted = sources.permuted_source(source, seed=0)
    got, labels = _materialise(permuted.dataset)
    order = [int(im[0, 0, 0]) for im in got]
    assert sorted(order) == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(labels, source.labels[order])  # labels travel with their images
    np.testing.assert_array_equal(permuted.labels, labels)

    def order_of(seed):
        permuted_images = _materialise(sources.permuted_source(source, seed=seed).dataset)[0]
        return tuple(int(im[0, 0, 0]) for im in permuted_images)

    assert list(order_of(0)) == order
    orders = {order_of(s) for s in range(6)}
    assert len(orders) > 1
    # Subsets of a permuted source select by position in the new order.
    picked, _ = _materialise(subset_source(permuted, [0, 1]).dataset)
    assert [int(im[0, 0, 0]) for im in picked] == order[:2]
    # Sources without random access are returned as they are.
    stream = Source(dataset=source.dataset, num_examples=5, num_classes=3, image_size=4, name="s")
    assert sources.permuted_source(stream, seed=1) is stream

    with pytest.raises(ValueError, match=r"`images` must be a non-empty uint8 array.*float64"):
        sources.from_arrays(images.astype(float))
    with pytest.raises(ValueError, match=r"`labels` must be an integer array of shape \(5,\)"):
        sources.from_arrays(images, np.zeros(4, int))
