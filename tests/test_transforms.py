"""The study's transformations (simclr_tf.data.transforms) against NumPy and hand-worked references:
Sobel against a direct convolution, rotation by exact quarter turns, cutout's area within bounds,
the noise's statistics; each seeded, eager = tf.data = XLA."""

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.data import transforms


def _image(side=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)


def _seed(a, b=11):
    return tf.constant([a, b], tf.int64)


RANDOM = {
    "cutout": lambda x, s: transforms.random_cutout(x, s),
    "sobel": lambda x, s: transforms.random_sobel(x, s, p=0.5),
    "noise": lambda x, s: transforms.random_gaussian_noise(x, s, std=0.1),
    "rotate": lambda x, s: transforms.random_rotate(x, s),
}


@pytest.mark.parametrize("name", sorted(RANDOM))
def test_seeded_in_range_and_the_same_eagerly_in_tf_data_and_under_xla(name):
    op, image = RANDOM[name], tf.constant(_image())
    out = op(image, _seed(1))
    assert out.shape == (16, 16, 3) and out.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 1.0
    np.testing.assert_array_equal(op(image, _seed(1)), out)
    in_data = next(iter(tf.data.Dataset.from_tensors((image, _seed(1))).map(op)))
    np.testing.assert_allclose(in_data, out, atol=1e-6)
    # XLA compiles it; its stateless generator may differ from the CPU kernels' (TensorFlow's
    # "auto_select"), so a compiled call is checked for range and reproducibility.
    compiled_op = tf.function(op, jit_compile=True)
    compiled = compiled_op(image, _seed(1))
    assert compiled.shape == (16, 16, 3)
    assert 0.0 <= float(tf.reduce_min(compiled)) and float(tf.reduce_max(compiled)) <= 1.0
    np.testing.assert_array_equal(compiled_op(image, _seed(1)), compiled)
    if name == "rotate":  # whatever the draw, a quarter turn of the input
        as_float = tf.image.convert_image_dtype(image, tf.float32).numpy()
        assert any(np.array_equal(compiled.numpy(), np.rot90(as_float, k)) for k in (1, 2, 3))
    if name == "sobel":
        np.testing.assert_allclose(compiled, out, atol=1e-5)
    outputs = [op(image, _seed(k)).numpy() for k in range(2, 8)]
    assert any(np.abs(o - out.numpy()).max() > 1e-3 for o in outputs)


def reference_sobel(image):
    """Sobel by a direct 3x3 correlation loop in float64, edges replicated, max scaled to 1."""
    x = image.astype(np.float64) / 255.0
    gray = 0.2989 * x[..., 0] + 0.5870 * x[..., 1] + 0.1140 * x[..., 2]
    padded = np.pad(gray, 1, mode="edge")
    kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float64)
    ky = kx.T
    h, w = gray.shape
    gx, gy = np.zeros((h, w)), np.zeros((h, w))
    for r in range(h):
        for c in range(w):
            window = padded[r:r + 3, c:c + 3]
            gx[r, c] = np.sum(window * kx)
            gy[r, c] = np.sum(window * ky)
    magnitude = np.hypot(gx, gy)
    return np.repeat((magnitude / magnitude.max())[..., None], 3, axis=2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sobel_matches_a_direct_convolution(seed):
    image = _image(13, seed)
    np.testing.assert_allclose(transforms.sobel_filter(image).numpy(), reference_sobel(image), atol=2e-6)


def test_sobel_of_a_vertical_step_by_hand():
    # Columns 0-2 black, 3-5 white: gx = 4 on the two columns beside the step, 0 elsewhere.
    image = np.zeros((6, 6, 3), np.float32)
    image[:, 3:] = 1.0
    out = transforms.sobel_filter(image).numpy()[..., 0]
    expected = np.zeros((6, 6))
    expected[:, 2:4] = 1.0  # 4 / max(4)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert float(tf.reduce_max(transforms.sobel_filter(tf.fill((5, 5, 3), 0.3)))) == 0.0  # flat: zeros


@pytest.mark.parametrize("k", [0, 1, 2, 3, 5, -1])
def test_rotate90_is_numpy_rot90_exactly(k):
    image = _image(9).astype(np.float32) / 255.0
    np.testing.assert_array_equal(transforms.rotate90(image, k).numpy(), np.rot90(image, k))


def test_random_rotate_turns_90_180_or_270_degrees_uniformly():
    image = _image(8).astype(np.float32) / 255.0
    counts = {0: 0, 1: 0, 2: 0, 3: 0}
    for s in range(300):
        out = transforms.random_rotate(image, _seed(s)).numpy()
        matches = [k for k in range(4) if np.array_equal(out, np.rot90(image, k))]
        assert len(matches) == 1
        counts[matches[0]] += 1
    assert counts[0] == 0
    for k in (1, 2, 3):
        assert 70 <= counts[k] <= 130, counts  # 100 expected, about 8 standard deviations wide
    never = transforms.random_rotate(image, _seed(3), p=0.0).numpy()
    np.testing.assert_array_equal(never, image)


def test_random_rotate_needs_a_square_image():
    with pytest.raises(ValueError, match="needs a square image"):
        transforms.random_rotate(tf.zeros((4, 6, 3)), _seed(0))


@pytest.mark.parametrize("side_range", [(0.1, 0.5), (0.25, 0.25), (0.0, 1.0)])
def test_cutout_is_one_square_of_zeros_of_the_allowed_size_inside_the_image(side_range):
    height, width = 20, 30
    ones = tf.ones((height, width, 3))
    low, high = side_range
    sides = []
    for s in range(60):
        out = transforms.random_cutout(ones, _seed(s), side_range=side_range).numpy()
        zero = out[..., 0] == 0.0
        assert np.array_equal(zero, out[..., 1] == 0.0) and np.array_equal(zero, out[..., 2] == 0.0)
        area = int(zero.sum())
        if area:
            rows, cols = np.nonzero(zero)
            side = rows.max() - rows.min() + 1
            assert cols.max() - cols.min() + 1 == side and area == side * side  # a full square
        else:
            side = 0
        # side = round(u * 20) with u in [low, high]: within the bounds up to the rounding.
        assert round(low * height) <= side <= round(high * height)
        sides.append(side)
    if high > low:
        assert len(set(sides)) > 3
    np.testing.assert_array_equal(transforms.random_cutout(ones, _seed(0), p=0.0), ones)


def test_cutout_corner_covers_every_place():
    ones = tf.ones((6, 6, 3))
    covered = np.zeros((6, 6), bool)
    for s in range(200):
        covered |= transforms.random_cutout(ones, _seed(s), side_range=(1 / 6, 1 / 6)).numpy()[..., 0] == 0
    assert covered.all()  # 1-pixel squares reach every pixel, corners and borders included


def test_noise_statistics():
    gray = tf.fill((64, 64, 3), 0.5)
    out = transforms.random_gaussian_noise(gray, _seed(0), std=0.05).numpy() - 0.5  # (64, 64, 3)
    # 12,288 draws of N(0, 0.05^2), none clipped (10 standard deviations from the bounds).
    assert abs(out.mean()) < 4 * 0.05 / np.sqrt(out.size)
    assert abs(out.std() / 0.05 - 1.0) < 0.03
    channels = out.reshape(-1, 3)
    assert np.abs(np.corrcoef(channels.T) - np.eye(3)).max() < 0.05  # independent channels
    other = transforms.random_gaussian_noise(gray, _seed(1), std=0.05).numpy() - 0.5
    assert abs(np.corrcoef(out.ravel(), other.ravel())[0, 1]) < 0.05  # independent seeds
    np.testing.assert_array_equal(transforms.random_gaussian_noise(gray, _seed(0), std=0.0), gray)
    np.testing.assert_array_equal(transforms.random_gaussian_noise(gray, _seed(0), p=0.0), gray)
    clipped = transforms.random_gaussian_noise(tf.ones((8, 8, 3)), _seed(0), std=0.5).numpy()
    assert clipped.max() <= 1.0 and clipped.min() >= 0.0


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: transforms.random_cutout(tf.ones((4, 4, 3)), _seed(0), side_range=(0.6, 0.2)),
         r"`side_range` of cutout must be a pair \(low, high\).*Received: \(0.6, 0.2\)"),
        (lambda: transforms.random_gaussian_noise(tf.ones((4, 4, 3)), _seed(0), std=-1.0),
         r"`std` must be a number >= 0. Received: std=-1.0"),
        (lambda: transforms.random_sobel(tf.ones((4, 4, 3)), _seed(0), p=2.0), r"`p` must be a number in"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
