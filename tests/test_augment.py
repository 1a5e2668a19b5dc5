"""Tests of the augmentations (simclr_tf.data.ops, color, kernel, views): references computed another
way, statistics, invariants, and values pinned from before the modules were split."""

import colorsys
import itertools
import math

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.config import AugmentConfig
from simclr_tf.data import color, kernel, ops, views

SIZE = 16  # side of most test images: small, and one XLA compilation shared by many tests


def _image(height=SIZE, width=SIZE, seed=0, dtype=tf.uint8):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    if dtype == tf.uint8:
        return tf.constant(pixels)
    return tf.constant(pixels.astype(np.float32) / 255.0)


def _seed(a, b=7):
    return tf.constant([a, b], tf.int64)


def _over_seeds(fn, n, image=None):
    """Stacks fn(seed) or fn(image, seed) over n seeds, computed inside one tf.data pipeline."""
    seeds = tf.data.Dataset.range(n).map(lambda i: tf.stack([i, tf.constant(12345, tf.int64)]))
    if image is None:
        ds = seeds.map(fn, num_parallel_calls=2)
    else:
        ds = seeds.map(lambda s: fn(image, s), num_parallel_calls=2)
    return tf.nest.map_structure(lambda t: t.numpy(), next(iter(ds.batch(n))))


def _in_tf_data(fn, image, seed):
    ds = tf.data.Dataset.from_tensors((image, seed)).map(fn)
    return next(iter(ds))


# --- all random ops: shape, dtype, range, reproducibility -------------------------------------------

RANDOM_OPS = {
    "random_resized_crop": lambda x, s: ops.random_resized_crop(x, s, output_size=12),
    "random_flip": ops.random_flip,
    "color_jitter": lambda x, s: color.color_jitter(x, s, strength=1.0),
    "color_jitter_v1": lambda x, s: color.color_jitter(x, s, strength=0.5, impl="v1"),
    "random_color_jitter": lambda x, s: color.random_color_jitter(x, s, strength=1.0),
    "random_gaussian_blur": lambda x, s: ops.random_gaussian_blur(x, s, image_size=SIZE, p=1.0),
    "augment_view": lambda x, s: views.augment_view(
        x, s, image_size=12, augment=AugmentConfig(color_jitter_strength=1.0, use_blur=True)
    ),
    "augment_view_cifar": lambda x, s: views.augment_view(
        x, s, image_size=12, augment=AugmentConfig(color_jitter_strength=0.5, use_blur=False,
                                                   color_jitter_impl="v1")
    ),
    "finetune_preprocess": lambda x, s: views.finetune_preprocess(x, s, image_size=12),
}
OUTPUT_SIDE = {"random_resized_crop": 12, "augment_view": 12, "augment_view_cifar": 12,
               "finetune_preprocess": 12}


@pytest.mark.parametrize("name", sorted(RANDOM_OPS))
@pytest.mark.parametrize("dtype", [tf.uint8, tf.float32])
def test_random_op_shape_dtype_range_and_seeding(name, dtype):
    op = RANDOM_OPS[name]
    image = _image(dtype=dtype)
    out = op(image, _seed(1))
    side = OUTPUT_SIDE.get(name, SIZE)
    assert out.shape == (side, side, 3)
    assert out.dtype == tf.float32
    assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 1.0
    # Same seed, same output: eagerly and inside tf.data.map.
    np.testing.assert_array_equal(op(image, _seed(1)).numpy(), out.numpy())
    np.testing.assert_allclose(_in_tf_data(op, image, _seed(1)).numpy(), out.numpy(), atol=1e-6)
    # Different seeds, different outputs (a flip alone can coincide: try a few seeds).
    others = [op(image, _seed(k)).numpy() for k in range(2, 6)]
    assert any(np.abs(other - out.numpy()).max() > 1e-3 for other in others)


def test_image_of_unknown_shape_in_tf_data_matches_eager():
    """Images of unknown static shape take the uncompiled path; results agree to rounding."""
    image = _image(20, 24, dtype=tf.float32)
    functions = {
        "jitter": lambda x, s: color.random_color_jitter(x, s, strength=1.0),
        "blur": lambda x, s: ops.random_gaussian_blur(x, s, image_size=24, p=1.0),
        "crop": lambda x, s: ops.random_resized_crop(x, s, output_size=8),
    }
    signature = (tf.TensorSpec((None, None, 3), tf.float32), tf.TensorSpec((2,), tf.int64))
    for name, op in functions.items():
        ds = tf.data.Dataset.from_generator(lambda: iter([(image, _seed(3))]), output_signature=signature)
        dynamic = next(iter(ds.map(op)))
        np.testing.assert_allclose(dynamic.numpy(), op(image, _seed(3)).numpy(), atol=1e-5, err_msg=name)


def test_two_views_are_independent_views():
    image = _image()
    kwargs = dict(image_size=12, augment=AugmentConfig(color_jitter_strength=1.0, use_blur=True))
    view_1, view_2 = views.two_views(image, _seed(4), **kwargs)
    assert view_1.shape == view_2.shape == (12, 12, 3)
    assert np.abs(view_1.numpy() - view_2.numpy()).max() > 1e-3
    seeds = tf.random.experimental.stateless_split(_seed(4), 2)
    np.testing.assert_array_equal(view_1, views.augment_view(image, seeds[0], **kwargs))
    np.testing.assert_array_equal(view_2, views.augment_view(image, seeds[1], **kwargs))
    again = views.two_views(image, _seed(4), **kwargs)
    np.testing.assert_array_equal(again[0], view_1)
    data_1, data_2 = _in_tf_data(lambda x, s: views.two_views(x, s, **kwargs), image, _seed(4))
    np.testing.assert_allclose(data_1, view_1, atol=1e-6)
    np.testing.assert_allclose(data_2, view_2, atol=1e-6)


@pytest.mark.parametrize("use_blur", [True, False])
def test_augment_view_equals_the_ops_one_after_another(use_blur):
    """The fused view = crop, flip, colour distortion, blur applied with the split seeds."""
    image = _image(20, 24)
    for k in range(4):
        seed = _seed(k)
        view = views.augment_view(
            image, seed, image_size=12, augment=AugmentConfig(color_jitter_strength=1.0, use_blur=use_blur)
        )
        seeds = tf.random.experimental.stateless_split(seed, 4)
        expected = ops.random_resized_crop(image, seeds[0], output_size=12)
        expected = ops.random_flip(expected, seeds[1])
        expected = color.random_color_jitter(expected, seeds[2], strength=1.0)
        if use_blur:
            expected = ops.random_gaussian_blur(expected, seeds[3], image_size=12)
        np.testing.assert_allclose(view.numpy(), expected.numpy(), atol=1e-6)


# --- the default AugmentConfig keeps the random stream and pixels of before ---------------------------

# Per-channel means and the RGB pixel at (1, 2) of views computed by the code before the augmentation
# settings became one AugmentConfig (simclr_tf/data/augment.py at commit f4d4947), called with the
# papers' settings spelled out: 12 px with strength 0.5 and no blur, 40 px with strength 1.0 and blur.
PINNED = {
    "small": ([0.519415, 0.482373, 0.492716, 0.479752, 0.724594, 0.554639],
              [0.492836, 0.474873, 0.46647, 0.481062, 0.858331, 0.087982]),
    "large": ([0.504966, 0.507496, 0.504393, 0.575712, 0.570813, 0.58328],
              [0.134368, 0.134324, 0.125755, 0.078953, 0.123448, 0.110372]),
    "finetune": [0.501706, 0.460824, 0.492729, 0.764109, 0.499798, 0.236627],
}


def _summary(view):
    view = np.asarray(view, np.float64)
    return list(view.reshape(-1, 3).mean(axis=0)) + list(view[1, 2])


def _pinned_inputs():
    small = _image(20, 24, seed=0)
    large = _image(48, 40, seed=1)
    return small, large


def test_default_augment_config_reproduces_the_pinned_views():
    small, large = _pinned_inputs()
    views_small = views.two_views(small, tf.constant([3, 7], tf.int64), image_size=12)
    views_large = views.two_views(large, tf.constant([7, 7], tf.int64), image_size=40)
    finetune = views.finetune_preprocess(small, tf.constant([3, 7], tf.int64), image_size=12)
    for got, expected in [*zip(views_small, PINNED["small"], strict=True),
                          *zip(views_large, PINNED["large"], strict=True), (finetune, PINNED["finetune"])]:
        np.testing.assert_allclose(_summary(got), expected, atol=2e-6)


@pytest.mark.parametrize("image_size, strength, blur", [(12, 0.5, False), (40, 1.0, True)])
def test_default_augment_config_is_the_old_seed_layout_of_the_single_ops(image_size, strength, blur):
    """Bit for bit: the views of `AugmentConfig()` are the single ops with the old seed splits.

    `two_views` splits the seed in 2 (one per view), each view in 4: crop, flip, colour, blur.
    """
    image = _pinned_inputs()[1]
    seed = tf.constant([7, 7], tf.int64)
    got = views.two_views(image, seed, image_size=image_size)
    for view_seed, view in zip(tf.random.experimental.stateless_split(seed, 2), got, strict=True):
        seeds = tf.random.experimental.stateless_split(view_seed, 4)
        expected = ops.random_resized_crop(image, seeds[0], output_size=image_size, area_range=(0.08, 1.0))
        expected = ops.random_flip(expected, seeds[1])
        expected = color.random_color_jitter(expected, seeds[2], strength=strength, impl="v2")
        if blur:
            expected = ops.random_gaussian_blur(expected, seeds[3], image_size=image_size)
        np.testing.assert_allclose(view.numpy(), expected.numpy(), atol=1e-6)
    # The resolved config spelled out gives the very same pixels.
    explicit = AugmentConfig(color_jitter_strength=strength, use_blur=blur, color_jitter_impl="v2",
                             crop_min_area=0.08, random_flip=True)
    for a, b in zip(got, views.two_views(image, seed, image_size=image_size, augment=explicit), strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize(
    "image_size, given, expected",
    [
        (32, AugmentConfig(), (0.5, False)),  # CIFAR recipe at 32 px and below
        (33, AugmentConfig(), (1.0, True)),  # ImageNet recipe above
        (224, AugmentConfig(color_jitter_strength=0.3), (0.3, True)),  # given values are kept
        (16, AugmentConfig(use_blur=True), (0.5, True)),
    ],
)
def test_resolve_augment_fills_only_the_nones(image_size, given, expected):
    resolved = views.resolve_augment(given, image_size)
    assert (resolved.color_jitter_strength, resolved.use_blur) == expected
    # Crop and flip left None take the generic defaults (a data set's own come from Config.resolved).
    assert (resolved.color_jitter_impl, resolved.crop_min_area, resolved.random_flip) == (
        given.color_jitter_impl, 0.08 if given.crop_min_area is None else given.crop_min_area,
        True if given.random_flip is None else given.random_flip)


def test_augment_must_be_an_augment_config():
    with pytest.raises(TypeError, match=r"`augment` must be a simclr_tf.config.AugmentConfig.*Received: dic"):
        views.two_views(IMAGE, SEED, image_size=8, augment={"color_jitter_strength": 0.5})


# --- crop -------------------------------------------------------------------------------------------


def test_crop_box_area_and_aspect_within_bounds():
    height, width = 60, 80
    boxes = _over_seeds(lambda s: ops.random_crop_box((height, width, 3), s), 3000)
    top, left, h, w = boxes.T.astype(np.float64)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    area = h * w / (height * width)
    assert area.min() >= 0.08 and area.max() <= 1.0
    assert area.min() < 0.12 and area.max() > 0.9  # the whole range is used
    # The width is rounded to whole pixels: the ratio may miss the range by 0.5 / h.
    aspect = w / h
    assert (aspect >= 3 / 4 - 0.5 / h).all() and (aspect <= 4 / 3 + 0.5 / h).all()
    assert aspect.min() < 0.8 and aspect.max() > 1.25


def test_no_crop_box_is_below_a_tenth_of_the_image_as_in_the_original():
    """`min_object_covered=0.1` (the original's): with `area_range=(0.08, 1)` alone, 5.5% would be."""
    height, width = 60, 80
    boxes = _over_seeds(lambda s: ops.random_crop_box((height, width, 3), s), 3000)
    _, _, h, w = boxes.T.astype(np.float64)
    assert (h * w / (height * width)).min() >= 0.1
    unfloored = _over_seeds(
        lambda s: ops.random_crop_box((height, width, 3), s, min_object_covered=0.0), 3000)
    _, _, h, w = unfloored.T.astype(np.float64)
    assert 0.03 < np.mean(h * w / (height * width) < 0.1) < 0.08


def test_crop_box_honours_custom_ranges():
    boxes = _over_seeds(
        lambda s: ops.random_crop_box(
            (100, 100, 3), s, area_range=(0.25, 0.5), aspect_ratio_range=(1.0, 1.0)
        ),
        500,
    )
    _, _, h, w = boxes.T.astype(np.float64)
    assert (h * w >= 2500).all() and (h * w <= 5000).all()
    assert (np.abs(w - h) <= 1).all()


def test_crop_box_falls_back_to_the_whole_image():
    """No box of a 10 x 1 image has an aspect ratio near 1 and half its area: whole image."""
    box = ops.random_crop_box((10, 1, 3), _seed(0), area_range=(0.5, 1.0), max_attempts=5)
    np.testing.assert_array_equal(box, [0, 0, 10, 1])


def test_random_resized_crop_is_a_bicubic_resize_of_the_box():
    image = _image(30, 40)
    for k in range(3):
        seed = _seed(k)
        top, left, h, w = ops.random_crop_box(tf.shape(image), seed).numpy()
        crop = image.numpy()[top : top + h, left : left + w].astype(np.float32) / 255.0
        expected = np.clip(tf.image.resize(crop, (12, 12), method="bicubic").numpy(), 0.0, 1.0)
        out = ops.random_resized_crop(image, seed, output_size=12)
        np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


# --- flip -------------------------------------------------------------------------------------------


def test_flip_rate_is_one_half_and_flips_are_mirror_images():
    image = tf.constant(np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3) / 24.0)
    outs = _over_seeds(ops.random_flip, 4000, image)  # (4000, 2, 4, 3)
    original = image.numpy()
    same = np.all(outs == original, axis=(1, 2, 3))
    mirrored = np.all(outs == original[:, ::-1], axis=(1, 2, 3))
    assert np.all(same | mirrored)
    assert abs(mirrored.mean() - 0.5) < 0.04  # 5 standard deviations of a binomial(4000, 0.5)


# --- colour -----------------------------------------------------------------------------------------


def _numpy_adjust_color(image, order, factors, impl):
    """The colour jitter from its definition, pixel by pixel with colorsys (HSV)."""
    x = image.astype(np.float64)
    for op in order:
        f = float(factors[op])
        if op == kernel.BRIGHTNESS:
            x = x * f if impl == "v2" else x + f
        elif op == kernel.CONTRAST:
            mean = x.mean(axis=(0, 1), keepdims=True)
            x = (x - mean) * f + mean
        else:
            out = np.empty_like(x)
            for i, j in itertools.product(range(x.shape[0]), range(x.shape[1])):
                h, s, v = colorsys.rgb_to_hsv(*x[i, j])
                if op == kernel.SATURATION:
                    s = min(max(s * f, 0.0), 1.0)
                else:
                    h = (h + f) % 1.0
                out[i, j] = colorsys.hsv_to_rgb(h, s, v)
            x = out
        x = np.clip(x, 0.0, 1.0)
    return x


@pytest.mark.parametrize("impl", ["v1", "v2"])
def test_adjust_color_matches_a_numpy_colorsys_reference(impl):
    rng = np.random.default_rng(1)
    image = rng.uniform(size=(5, 6, 3)).astype(np.float32)
    image[0, 0] = [0.5, 0.5, 0.5]  # gray: hue undefined, must stay gray
    image[0, 1] = [0.0, 0.0, 0.0]  # black
    image[0, 2] = [1.0, 0.2, 0.2]  # red: the hue wraps around 0
    cases = [
        ((0, 1, 2, 3), (0.3 if impl == "v1" else 1.7, 0.4, 1.8, 0.15)),
        ((3, 2, 1, 0), (-0.3 if impl == "v1" else 0.5, 1.6, 0.2, -0.2)),
        ((2, 0, 3, 1), (0.05 if impl == "v1" else 1.1, 1.3, 3.0, 0.5)),
        ((1, 3, 0, 2), (0.0 if impl == "v1" else 1.0, 0.0, 0.0, -0.45)),
    ]
    for order, factors in cases:
        out = color.adjust_color(image, order, factors, impl=impl)
        expected = _numpy_adjust_color(image, order, np.array(factors), impl)
        np.testing.assert_allclose(out.numpy(), expected, atol=2e-5, err_msg=f"{order} {factors}")


def test_adjust_color_hand_worked_pixel():
    # Saturation 0 gives gray at the HSV value (max channel); brightness x2 then clips at 1.
    pixel = tf.constant([[[0.8, 0.4, 0.2]]])
    out = color.adjust_color(pixel, (2, 0, 1, 3), (2.0, 1.0, 0.0, 0.0))
    np.testing.assert_allclose(out.numpy(), [[[1.0, 1.0, 1.0]]], atol=1e-6)
    # A hue shift of 1/3 turn maps red to green, of 2/3 to blue.
    red = tf.constant([[[1.0, 0.0, 0.0]]])
    np.testing.assert_allclose(color.adjust_color(red, (3, 0, 1, 2), (1.0, 1.0, 1.0, 1 / 3)),
                               [[[0.0, 1.0, 0.0]]], atol=1e-5)
    np.testing.assert_allclose(color.adjust_color(red, (3, 0, 1, 2), (1.0, 1.0, 1.0, -1 / 3)),
                               [[[0.0, 0.0, 1.0]]], atol=1e-5)


def test_color_jitter_ranges_by_hand():
    np.testing.assert_allclose(
        color.color_jitter_ranges(1.0, "v2"), [[0.2, 1.8], [0.2, 1.8], [0.2, 1.8], [-0.2, 0.2]], atol=1e-6
    )
    np.testing.assert_allclose(
        color.color_jitter_ranges(0.5, "v1"), [[-0.4, 0.4], [0.6, 1.4], [0.6, 1.4], [-0.1, 0.1]], atol=1e-6
    )
    # Strong jitter: factors floor at 0, hue caps at half a turn.
    np.testing.assert_allclose(
        color.color_jitter_ranges(3.0, "v2"), [[0.0, 3.4], [0.0, 3.4], [0.0, 3.4], [-0.5, 0.5]], atol=1e-6
    )


def test_color_jitter_params_cover_their_ranges_and_all_orders():
    n = 4800
    orders, factors = _over_seeds(
        lambda s: color.random_color_jitter_params(s, strength=1.0, impl="v2"), n
    )
    assert (np.sort(orders, axis=1) == np.arange(4)).all()  # permutations
    counts = {}
    for order in map(tuple, orders):
        counts[order] = counts.get(order, 0) + 1
    assert len(counts) == 24
    assert min(counts.values()) > 120 and max(counts.values()) < 290  # mean 200, sd ~14
    ranges = color.color_jitter_ranges(1.0, "v2")
    assert (factors >= ranges[:, 0]).all() and (factors <= ranges[:, 1]).all()
    width = ranges[:, 1] - ranges[:, 0]
    assert (factors.min(axis=0) < ranges[:, 0] + 0.02 * width).all()
    assert (factors.max(axis=0) > ranges[:, 1] - 0.02 * width).all()
    # Uniform: the mean is the middle of the range (sd of the mean ~0.004 of the width).
    np.testing.assert_allclose(factors.mean(axis=0), ranges.mean(axis=1), atol=0.02 * width.max())


def test_color_jitter_uses_the_drawn_params():
    image = _image(dtype=tf.float32)
    for k in range(3):
        order, factors = color.random_color_jitter_params(_seed(k), strength=0.5, impl="v1")
        np.testing.assert_array_equal(
            color.color_jitter(image, _seed(k), strength=0.5, impl="v1"),
            color.adjust_color(image, order, factors, impl="v1"),
        )


def test_color_jitter_strength_zero_is_identity():
    image = _image()
    out = color.color_jitter(image, _seed(0), strength=0.0)
    np.testing.assert_allclose(out.numpy(), image.numpy() / 255.0, atol=1e-7)


def test_color_drop_is_luma_in_three_equal_channels():
    image = _image(dtype=tf.float32)
    gray = color.color_drop(image).numpy()
    expected = image.numpy() @ np.array([0.2989, 0.5870, 0.1140], np.float32)
    for c in range(3):
        np.testing.assert_allclose(gray[..., c], expected, atol=1e-6)


def test_random_color_jitter_rates():
    image = _image(4, 4, seed=3, dtype=tf.float32)
    outs = _over_seeds(lambda x, s: color.random_color_jitter(x, s, strength=1.0), 4000, image)
    original = image.numpy()
    dropped = color.color_drop(image).numpy()
    is_gray = np.all(outs == outs[..., :1], axis=(1, 2, 3))
    unjittered = np.all(np.abs(outs - original) < 1e-6, axis=(1, 2, 3)) | np.all(
        np.abs(outs - dropped) < 1e-6, axis=(1, 2, 3)
    )
    # Binomial(4000, p): standard deviation <= 0.0079; allow 5 of them.
    assert abs(is_gray.mean() - 0.2) < 0.04
    assert abs((1.0 - unjittered.mean()) - 0.8) < 0.04
    # Both decisions are independent: drop rate among unjittered draws is 0.2 as well.
    assert abs(is_gray[unjittered].mean() - 0.2) < 0.08


# --- blur -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image_size, kernel_size",
    [(224, 23), (96, 11), (32, 5), (31, 5), (30, 3), (21, 3), (20, 3), (10, 1), (1, 1)],
)
def test_blur_kernel_size_rule(image_size, kernel_size):
    # Smallest odd integer >= image_size / 10, worked by hand: 22.4 -> 23, 9.6 -> 11, 3.2 -> 5,
    # 3.1 -> 5, 3.0 -> 3, 2.1 -> 3, 2.0 -> 3, 1.0 -> 1, 0.1 -> 1.
    assert ops.blur_kernel_size(image_size) == kernel_size


def _numpy_blur(image, sigma, kernel_size):
    """Direct 2-D convolution with the normalised kernel outer(w, w) and mirrored borders."""
    r = kernel_size // 2
    t = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-(t**2) / (2 * sigma**2))
    w /= w.sum()
    kernel = np.outer(w, w)
    padded = np.pad(image.astype(np.float64), [(r, r), (r, r), (0, 0)], mode="symmetric")
    out = np.zeros(image.shape, np.float64)
    for i, j in itertools.product(range(kernel_size), range(kernel_size)):
        out += kernel[i, j] * padded[i : i + image.shape[0], j : j + image.shape[1]]
    return out


@pytest.mark.parametrize("sigma, kernel_size", [(1.3, 5), (0.5, 3), (2.0, 9), (0.1, 7)])
def test_gaussian_blur_matches_a_direct_convolution(sigma, kernel_size):
    image = _image(11, 13, dtype=tf.float32).numpy()
    expected = _numpy_blur(image, sigma, kernel_size)
    out = ops.gaussian_blur(image, sigma, kernel_size=kernel_size)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)
    batch = ops.gaussian_blur(np.stack([image, image[::-1]]), sigma, kernel_size=kernel_size)
    np.testing.assert_allclose(batch.numpy()[1], _numpy_blur(image[::-1], sigma, kernel_size), atol=1e-5)

    @tf.function(input_signature=[tf.TensorSpec((None, None, 3), tf.float32)])
    def unknown_shape(x):
        return ops.gaussian_blur(x, sigma, kernel_size=kernel_size)

    np.testing.assert_allclose(unknown_shape(image).numpy(), expected, atol=1e-5)


def test_blur_keeps_a_constant_image_constant():
    constant = tf.fill((SIZE, SIZE, 3), 0.37)
    np.testing.assert_allclose(ops.gaussian_blur(constant, 2.0, kernel_size=23), constant, atol=1e-6)
    for k in range(4):
        out = ops.random_gaussian_blur(constant, _seed(k), image_size=SIZE, p=1.0)
        np.testing.assert_allclose(out.numpy(), 0.37, atol=1e-6)


def test_random_blur_rate_and_sigma_range():
    # Blurring a single bright pixel gives the kernel itself: outer(w, w). The ratio of the
    # centre's neighbour to the centre is w1 / w0 = exp(-1 / (2 sigma^2)), which gives sigma back.
    delta = np.zeros((SIZE, SIZE, 3), np.float32)
    c = SIZE // 2
    delta[c, c] = 1.0
    outs = _over_seeds(lambda x, s: ops.random_gaussian_blur(x, s, image_size=SIZE), 2000, delta)
    blurred = outs[:, c, c + 1, 0] > 0
    assert abs(blurred.mean() - 0.5) < 0.06  # 5 sd of binomial(2000, 0.5)
    assert np.all(outs[~blurred] == delta)
    ratio = outs[blurred, c, c + 1, 0].astype(np.float64) / outs[blurred, c, c, 0]
    sigma = np.sqrt(-1.0 / (2.0 * np.log(ratio)))
    assert sigma.min() >= 0.1 - 1e-3 and sigma.max() <= 2.0 + 1e-3
    assert sigma.min() < 0.2 and sigma.max() > 1.9
    assert abs(sigma.mean() - 1.05) < 0.05  # uniform on [0.1, 2.0]: mean 1.05, sd of mean ~0.01


# --- evaluation and fine-tuning preprocessing --------------------------------------------------------


def test_center_crop_box_by_hand():
    # 40 x 48: side round(0.875 * 40) = 35; margins 5 and 13 put the odd pixel first: 3 and 7.
    np.testing.assert_array_equal(ops.center_crop_box(40, 48), [3, 7, 35, 35])
    # 224 x 224: round(196.0) = 196, margin 28 -> 14.
    np.testing.assert_array_equal(ops.center_crop_box(224, 224), [14, 14, 196, 196])


def test_eval_preprocess_crops_the_centre():
    # A black 35 x 35 centre framed in white: exactly the centre crop of a 40 x 48 image.
    image = np.full((40, 48, 3), 255, np.uint8)
    image[3:38, 7:42] = 0
    out = views.eval_preprocess(tf.constant(image), image_size=35)
    assert out.shape == (35, 35, 3) and out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), 0.0, atol=1e-6)
    # Resized, the crop is the bicubic resize of that centre.
    image = _image(40, 48).numpy()
    out = views.eval_preprocess(tf.constant(image), image_size=64)
    centre = image[3:38, 7:42].astype(np.float32) / 255.0
    expected = np.clip(tf.image.resize(centre, (64, 64), method="bicubic").numpy(), 0.0, 1.0)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(
        _in_tf_data(lambda x, s: views.eval_preprocess(x, image_size=64), image, _seed(0)), out, atol=1e-6
    )


def test_eval_preprocess_small_images_are_only_resized():
    image = _image(32, 32)
    out = views.eval_preprocess(image, image_size=32)  # same size: no crop, identity
    np.testing.assert_allclose(out.numpy(), image.numpy() / 255.0, atol=1e-5)
    wide = _image(24, 40)
    out = views.eval_preprocess(wide, image_size=16)
    expected = tf.image.resize(wide.numpy().astype(np.float32) / 255.0, (16, 16), method="bicubic")
    np.testing.assert_allclose(out.numpy(), np.clip(expected.numpy(), 0.0, 1.0), atol=1e-5)


def test_finetune_preprocess_honours_crop_min_area_and_random_flip():
    # A left-right ramp, square: with crop_min_area=1 every crop is the whole image, so the view is
    # the bicubic resize of the image, mirrored or not.
    ramp = tf.tile(tf.linspace(0.0, 1.0, 24)[None, :, None], [24, 1, 3])
    resized = np.clip(tf.image.resize(ramp, (12, 12), method="bicubic").numpy(), 0.0, 1.0)
    whole = AugmentConfig(crop_min_area=1.0)
    no_flip = AugmentConfig(crop_min_area=1.0, random_flip=False)
    mirrored = 0
    for k in range(24):
        out = views.finetune_preprocess(ramp, _seed(k), image_size=12, augment=whole).numpy()
        is_mirror = np.allclose(out, resized[:, ::-1], atol=1e-6)
        assert is_mirror or np.allclose(out, resized, atol=1e-6)
        mirrored += is_mirror
        kept = views.finetune_preprocess(ramp, _seed(k), image_size=12, augment=no_flip).numpy()
        np.testing.assert_allclose(kept, resized, atol=1e-6)
    assert 4 <= mirrored <= 20  # flips on by default, about half the time
    # The default crops down to 8% of the area: some crops are far smaller than the image, which
    # shows as a narrower range of the ramp inside the view.
    spans = [np.ptp(views.finetune_preprocess(ramp, _seed(k), image_size=12).numpy()[6, :, 0])
             for k in range(24)]
    assert min(spans) < 0.6
    small_area = AugmentConfig(crop_min_area=0.9)
    spans = [
        np.ptp(views.finetune_preprocess(ramp, _seed(k), image_size=12, augment=small_area).numpy()[6, :, 0])
        for k in range(24)
    ]
    assert min(spans) > 0.8  # at least 90% of the area: at least ~0.9 * 3/4 of the width


def test_finetune_preprocess_changes_geometry_not_colour():
    constant = tf.fill((20, 24, 3), tf.constant(77, tf.uint8))
    for k in range(3):
        out = views.finetune_preprocess(constant, _seed(k), image_size=12)
        np.testing.assert_allclose(out.numpy(), 77 / 255, atol=1e-6)
    image = _image(20, 24)
    seeds = tf.random.experimental.stateless_split(_seed(5), 2)
    expected = ops.random_flip(ops.random_resized_crop(image, seeds[0], output_size=12), seeds[1])
    np.testing.assert_array_equal(views.finetune_preprocess(image, _seed(5), image_size=12), expected)


# --- argument errors --------------------------------------------------------------------------------

IMAGE = tf.zeros((8, 8, 3))
SEED = tf.constant([0, 1])
Aug = AugmentConfig


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: views.augment_view(IMAGE, SEED, image_size=0),
         r"`image_size` must be a positive integer. Received: image_size=0. It is a number of pixels"),
        (lambda: views.eval_preprocess(IMAGE, image_size=3.5), r"`image_size`.*Received: image_size=3.5"),
        (lambda: views.finetune_preprocess(IMAGE, SEED, image_size=True),
         r"`image_size`.*Received: image_size=True"),
        (lambda: ops.random_resized_crop(IMAGE, SEED, output_size=-4),
         r"`output_size`.*Received: output_size=-4"),
        (lambda: color.color_jitter(IMAGE, SEED, strength=-0.5),
         r"`color_jitter_strength` must be a number >= 0. Received: color_jitter_strength=-0.5"),
        (lambda: color.color_jitter(IMAGE, SEED, strength=math.nan), r"`color_jitter_strength`.*nan"),
        (lambda: color.random_color_jitter(IMAGE, SEED, strength=1.0, impl="v3"),
         r"`color_jitter_impl` must be one of 'v1', 'v2'. Received: color_jitter_impl='v3'"),
        (lambda: views.augment_view(IMAGE, SEED, image_size=8, augment=Aug(crop_min_area=0.0)),
         r"`crop_min_area` must be a number in \(0, 1\]. Received: crop_min_area=0.0. It is an area"),
        (lambda: views.finetune_preprocess(IMAGE, SEED, image_size=8, augment=Aug(crop_min_area=1.5)),
         r"`crop_min_area` must be a number in \(0, 1\]. Received: crop_min_area=1.5"),
        (lambda: views.two_views(IMAGE, SEED, image_size=8, augment=Aug(color_jitter_strength=-1.0)),
         r"`color_jitter_strength` must be a number >= 0. Received: color_jitter_strength=-1.0"),
        (lambda: views.augment_view(IMAGE, SEED, image_size=8, augment=Aug(use_blur="yes")),
         r"`use_blur` must be one of True, False. Received: use_blur='yes'"),
        (lambda: views.finetune_preprocess(IMAGE, SEED, image_size=8, augment=Aug(random_flip="no")),
         r"`random_flip` must be one of True, False. Received: random_flip='no'"),
        (lambda: ops.random_crop_box((8, 8, 3), SEED, area_range=(0.5, 0.2)),
         r"`area_range` must be a pair \(low, high\) with 0 < low <= high <= 1.0"),
        (lambda: ops.random_crop_box((8, 8, 3), SEED, aspect_ratio_range=(0.0, 1.0)),
         r"`aspect_ratio_range`.*Received: \(0.0, 1.0\)"),
        (lambda: ops.random_crop_box((8, 8, 3), SEED, max_attempts=0),
         r"`max_attempts` must be a positive integer. Received: max_attempts=0"),
        (lambda: ops.random_crop_box((8, 8, 3), SEED, min_object_covered=1.5),
         r"`min_object_covered`.*Received: .*1.5"),
        (lambda: ops.random_gaussian_blur(IMAGE, SEED, image_size=8, p=1.5),
         r"`p` must be a number in \[0, 1\]. Received: p=1.5"),
        (lambda: color.random_color_jitter(IMAGE, SEED, strength=1.0, drop_probability=-0.1),
         r"`drop_probability`"),
        (lambda: ops.gaussian_blur(IMAGE, 1.0, kernel_size=4),
         r"`kernel_size` must be a positive odd integer.*Received: kernel_size=4"),
        (lambda: ops.gaussian_blur(tf.zeros((8, 8)), 1.0, kernel_size=3), r"`image` must have shape"),
        (lambda: ops.random_flip(IMAGE, tf.constant([1, 2, 3])), r"`seed` must be.*shape \(2,\)"),
        (lambda: ops.random_flip(IMAGE, tf.constant([1.0, 2.0])), r"`seed`.*Received dtype: float32"),
        (lambda: ops.random_flip(tf.zeros((8, 8)), SEED), r"`image` must be a single image"),
        (lambda: color.color_drop(tf.zeros((8, 8, 4))), r"`image` must have 3 \(RGB\) channels"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_views_without_random_flip_are_never_mirrored():
    # A left-right ramp: after a full-image crop, a flipped view would decrease along the width.
    ramp = tf.tile(tf.linspace(0.0, 1.0, 32)[None, :, None], [32, 1, 3])
    for i in range(40):
        view = views.augment_view(ramp, tf.constant([i, 1]), image_size=32, augment=AugmentConfig(
            color_jitter_strength=0.0, use_blur=False, crop_min_area=1.0, random_flip=False))
        row = view.numpy()[16, :, 0]
        assert row[-1] > row[0]
    flipped = [
        views.augment_view(ramp, tf.constant([i, 1]), image_size=32, augment=AugmentConfig(
            color_jitter_strength=0.0, use_blur=False, crop_min_area=1.0)).numpy()[16, -1, 0] < 0.5
        for i in range(40)
    ]
    assert 5 < sum(flipped) < 35  # the default does flip, about half the time
