"""Tests of the augmentation preview CLI (simclr_tf.preview)."""

import numpy as np
import pytest
from PIL import Image

from simclr_tf import preview


def _write_png(path, height=40, width=50):
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 60)], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def test_grid_from_an_image_file(tmp_path):
    source = tmp_path / "scene.png"
    _write_png(source)
    out = tmp_path / "grid" / "views.png"
    code = preview.main(["--image", str(source), "--out", str(out), "--pairs", "2", "--image_size", "16"])
    assert code == 0
    with Image.open(out) as grid:
        # 3 columns and 2 rows of 16 px tiles with 6 px margins: 3 * 22 + 6 by 2 * 22 + 6.
        assert grid.size == (72, 50)
        assert grid.mode == "RGB"


def test_grid_from_digits_shows_the_original_on_the_left(tmp_path):
    out = tmp_path / "digits.png"
    args = ["--digits", "--digit_index", "3", "--out", str(out), "--pairs", "3", "--seed", "1"]
    assert preview.main(args) == 0
    grid = np.asarray(Image.open(out))
    assert grid.shape == (3 * 38 + 6, 3 * 38 + 6, 3)  # 32 px tiles, 6 px margins
    # 32 px evaluation preprocessing of a 32 px image is the identity: the digit itself, in the
    # middle row of the left column.
    top = 6 + 38  # (rows - 1) * step // 2 below the top margin
    tile = grid[top : top + 32, 6 : 6 + 32].astype(int)
    assert np.abs(tile - preview.digits_image(3).astype(int)).max() <= 1
    assert (grid[:6] == preview.BACKGROUND).all()  # the top margin


def test_digits_image_is_an_upsampled_scan():
    from sklearn.datasets import load_digits

    scan = load_digits().images[7]
    image = preview.digits_image(7)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
    # Each scan value v in 0-16 fills a 4 x 4 block with round(v * 255 / 16).
    np.testing.assert_array_equal(image[::4, ::4, 0], np.round(scan * 255 / 16).astype(np.uint8))
    np.testing.assert_array_equal(image[3::4, 3::4, 0], image[::4, ::4, 0])


def test_make_grid_places_the_tiles():
    side, margin = 4, 2
    original = np.zeros((side, side, 3))
    pairs = [(np.full((side, side, 3), 1.0), np.full((side, side, 3), 0.5))] * 2
    grid = preview.make_grid(original, pairs, margin=margin)
    assert grid.shape == (2 * 6 + 2, 3 * 6 + 2, 3)
    # The original is centred in the left column: top = margin + (rows - 1) * step // 2 = 2 + 3.
    assert (grid[5:9, 2:6] == 0).all()
    assert (grid[2:5, 2:6] == preview.BACKGROUND).all()
    np.testing.assert_array_equal(grid[2:6, 8:12], 255)  # view_1 of the first pair
    np.testing.assert_array_equal(grid[8:12, 14:18], 128)  # view_2 of the second pair: round(127.5)
    assert (grid[:, :2] == preview.BACKGROUND).all()


def test_missing_image_exits_with_code_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as error:
        preview.main(["--image", str(tmp_path / "nope.png"), "--out", str(tmp_path / "grid.png")])
    assert error.value.code == 2
    assert "no such image file" in capsys.readouterr().err
    assert not (tmp_path / "grid.png").exists()


def test_unreadable_image_exits_with_code_2(tmp_path, capsys):
    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello")
    with pytest.raises(SystemExit) as error:
        preview.main(["--image", str(bad), "--out", str(tmp_path / "grid.png")])
    assert error.value.code == 2
    assert "cannot read the image" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--digits", "--pairs", "0"], "--pairs must be at least 1"),
        (["--digits", "--color_jitter_strength", "-1"], "`color_jitter_strength` must be a number >= 0"),
        (["--digits", "--digit_index", "5000"], "`digit_index` must be in"),
        ([], "one of the arguments --image --digits is required"),
    ],
)
def test_bad_arguments_exit_with_code_2(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as error:
        preview.main([*args, "--out", str(tmp_path / "grid.png")])
    assert error.value.code == 2
    assert message in capsys.readouterr().err


def test_named_and_per_view_policies_are_shown(tmp_path, capsys):
    out = tmp_path / "policy.png"
    args = ["--digits", "--out", str(out), "--pairs", "2", "--view_a", "identity", "--view_b", "rotate"]
    assert preview.main(args) == 0
    printed = capsys.readouterr().out
    assert "view_a: identity" in printed and "view_b: rotate(p=1)" in printed
    grid = np.asarray(Image.open(out)).astype(int)
    for row in range(2):
        top = 6 + row * 38
        view_1 = grid[top : top + 32, 6 + 38 : 6 + 38 + 32]
        view_2 = grid[top : top + 32, 6 + 76 : 6 + 76 + 32]
        assert np.abs(view_1 - preview.digits_image(0)).max() <= 1  # identity: the digit itself
        assert any(np.array_equal(view_2, np.rot90(view_1, k)) for k in (1, 2, 3))
    with pytest.raises(SystemExit):
        preview.main(["--digits", "--out", str(out), "--policy", "crop,spin"])
    assert "unknown transformation 'spin'" in capsys.readouterr().err
