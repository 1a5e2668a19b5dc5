"""Image folders decoded in the `tf.data` graph (`tf.io`), Pillow only for what TensorFlow does not decode
the same way: both paths give the same pixels, each odd kind of file is read right, no image is lost."""

import io
import logging
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from simclr_tf.data import decode, folder


def _photo(height, width, seed=0):
    """Smooth colours with noise: JPEG compresses it as a photo (unlike a flat or random image)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 / width, y * 255 / height, 128 + 60 * np.sin(x / 7 + y / 11)], -1)
    return np.clip(pixels + rng.normal(0, 6, pixels.shape), 0, 255).astype(np.uint8)


def _tf(path, image_size=None):
    reason, plan = decode.probe(str(path), decode.MAX_PIXELS, image_size)
    assert reason is None, reason
    assert plan[0] != decode.PILLOW, f"{path.name} goes to Pillow"
    return decode.tf_decode(tf.constant(str(path)), tf.constant(plan[0]), tf.constant(plan[1:3]),
                            tf.constant(bool(plan[3]))).numpy()


def _decoder_of(path):
    return decode.probe(str(path), decode.MAX_PIXELS)[1][0]


def _ordinary(tmp_path):
    """Ordinary files, each one TensorFlow decodes: name -> path."""
    photo = _photo(48, 64)
    rng = np.random.default_rng(1)
    files = {
        "rgb.png": Image.fromarray(photo),
        "grey.png": Image.fromarray(photo[..., 0]),
        "palette.png": Image.fromarray(photo).convert("P"),
        "rgba.png": Image.fromarray(np.dstack([photo, rng.integers(0, 256, (48, 64), np.uint8)]), "RGBA"),
        "grey_alpha.png": Image.fromarray(np.dstack([photo[..., 1], photo[..., 2]]), "LA"),
        "rgb.jpg": Image.fromarray(photo),
        "grey.jpg": Image.fromarray(photo[..., 0]),
        "palette.gif": Image.fromarray(photo).convert("P"),
        "rgb.bmp": Image.fromarray(photo),
    }
    paths = {}
    for name, image in files.items():
        image.save(tmp_path / name, **({"quality": 90} if name.endswith(".jpg") else {}))
        paths[name] = tmp_path / name
    Image.fromarray(photo).save(tmp_path / "progressive.jpg", quality=90, progressive=True)
    paths["progressive.jpg"] = tmp_path / "progressive.jpg"
    opaque = np.dstack([photo, np.full((48, 64), 255, np.uint8)])
    Image.fromarray(opaque, "RGBA").save(tmp_path / "rgbx.bmp")
    paths["rgbx.bmp"] = tmp_path / "rgbx.bmp"  # 32 bits
    return paths


def test_tf_and_pillow_give_the_same_pixels(tmp_path):
    for name, path in _ordinary(tmp_path).items():
        want = decode.read_image(str(path))
        got = _tf(path)
        assert got.dtype == np.uint8 and got.shape == want.shape == (48, 64, 3), name
        # JPEG: both run libjpeg with the accurate integer DCT; allow a level for another libjpeg build.
        tolerance = 1 if name.endswith(".jpg") else 0
        assert np.abs(got.astype(int) - want.astype(int)).max() <= tolerance, name
    assert np.abs(_tf(tmp_path / "rgb.png").astype(int) - _photo(48, 64)).max() == 0


def test_downscaled_decoding_matches_pillow_closely(tmp_path):
    photo = _photo(768, 1024)
    Image.fromarray(photo).save(tmp_path / "big.jpg", quality=90)
    Image.fromarray(photo).save(tmp_path / "big.png")
    cases = (("big.jpg", 32, 3), ("big.jpg", 100, 2), ("big.png", 32, decode._TF_IMAGE))
    for name, image_size, branch in cases:
        path = tmp_path / name
        assert decode.probe(str(path), decode.MAX_PIXELS, image_size)[1][0] == branch  # JPEG: 1/8, 1/4 scale
        want = decode.read_image(str(path), image_size=image_size)
        got = _tf(path, image_size)
        assert got.shape == want.shape == (image_size, round(1024 * image_size / 768), 3), name
        # Pillow reduces by a box filter first (reducing_gap=2), TensorFlow filters in one pass.
        difference = np.abs(got.astype(int) - want.astype(int))
        assert difference.mean() < 1.0, (name, image_size, difference.mean())


def _odd_files(root):
    """Files Pillow decodes (TensorFlow would not, or not the same): name -> expected top-left RGB."""
    expected = {}
    Image.fromarray(np.full((8, 12), 13107, np.uint16)).save(root / "grey_16bit.png")  # 13107/65535 = 0.2
    expected["grey_16bit.png"] = (51, 51, 51)
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(root / "cmyk.jpg", quality=95)
    expected["cmyk.jpg"] = (255, 0, 0)
    palette = Image.new("P", (10, 10), 1)
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.save(root / "palette_transparent.png", transparency=1)
    expected["palette_transparent.png"] = (255, 255, 255)  # transparent: white, as RGBA files
    palette.save(root / "transparent.gif", transparency=1)
    expected["transparent.gif"] = (255, 255, 255)
    grey = Image.new("L", (10, 10), 90)
    grey.save(root / "grey_transparent.png", transparency=90)
    expected["grey_transparent.png"] = (255, 255, 255)
    Image.new("1", (9, 9), 1).save(root / "bilevel.png")
    expected["bilevel.png"] = (255, 255, 255)
    palette.save(root / "palette.bmp")
    expected["palette.bmp"] = (200, 100, 50)
    Image.new("RGB", (10, 10), (1, 2, 3)).save(root / "image.tif")
    expected["image.tif"] = (1, 2, 3)
    Image.new("RGB", (10, 10), (40, 80, 120)).save(root / "image.webp", lossless=True)
    expected["image.webp"] = (40, 80, 120)
    first, second = Image.new("RGB", (10, 10), (0, 0, 255)), Image.new("RGB", (10, 10), (255, 0, 0))
    first.save(root / "animated.png", save_all=True, append_images=[second])
    expected["animated.png"] = (0, 0, 255)
    first.save(root / "animated.gif", save_all=True, append_images=[second])
    expected["animated.gif"] = (0, 0, 255)  # the first frame
    return expected


def test_odd_files_go_to_pillow_and_decode_right(tmp_path):
    expected = _odd_files(tmp_path)
    for name in expected:
        assert _decoder_of(tmp_path / name) == decode.PILLOW, name
    source = folder.load_image_folder(str(tmp_path))
    assert source.num_examples == len(expected) and source.stats.skipped_files == 0
    images = [image.numpy() for image, _ in source.dataset]
    assert len(images) == len(expected)
    for name, image in zip(sorted(expected), images, strict=True):  # dataset order: sorted paths
        np.testing.assert_allclose(image[0, 0].astype(int), expected[name], atol=6 if "jpg" in name else 0,
                                   err_msg=name)


def test_ordinary_files_never_reach_pillow_while_the_dataset_runs(tmp_path, monkeypatch):
    paths = _ordinary(tmp_path)
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "zz_cmyk.jpg")
    source = folder.load_image_folder(str(tmp_path), image_size=32)
    calls = []
    read_image = folder.read_image
    monkeypatch.setattr(folder, "read_image", lambda path, **kw: calls.append(path) or read_image(path, **kw))
    images = [image.numpy() for image, _ in source.dataset]
    assert len(images) == len(paths) + 1
    assert [os.path.basename(p) for p in calls] == ["zz_cmyk.jpg"]
    assert all(min(image.shape[:2]) == 32 for image in images[:-1])  # 48x64 downscaled to 32x43
    assert images[-1].shape == (16, 16, 3)  # never upscaled


def test_files_tensorflow_fails_on_are_read_by_pillow_in_place_and_broken_ones_skipped(tmp_path, caplog):
    for k in range(5):
        Image.new("RGB", (8, 8), (k * 10, 0, 0)).save(tmp_path / f"{k}.png")
    buffer = io.BytesIO()
    Image.fromarray(_photo(64, 64)).save(buffer, "PNG")
    (tmp_path / "5_truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    source = folder.load_image_folder(str(tmp_path))
    assert source.num_examples == 6  # the truncated PNG's header is fine
    # Replaced after the scan, the first two and the last good one: the header said PNG, TensorFlow
    # cannot decode TIFF, Pillow can. Two in a row of two sizes come back as one padded batch.
    for k, size in ((0, (8, 8)), (1, (6, 4)), (4, (8, 8))):
        Image.new("RGB", size, (k * 10, 200, 0)).save(tmp_path / f"{k}.png", format="TIFF")
    with caplog.at_level(logging.WARNING, logger="simclr_tf"):
        images = [image.numpy() for image, _ in source.dataset]
    assert [tuple(image[0, 0]) for image in images] == [(0, 200, 0), (10, 200, 0), (20, 0, 0), (30, 0, 0),
                                                        (40, 200, 0)]
    assert [image.shape for image in images] == [(8, 8, 3), (4, 6, 3), (8, 8, 3), (8, 8, 3), (8, 8, 3)]
    assert source.stats.skipped_while_decoding == 1
    assert "5_truncated.png" in caplog.text
    # The next epoch the same: nothing crashes, nothing else is lost.
    assert len(list(source.dataset)) == 5 and source.stats.skipped_while_decoding == 2
