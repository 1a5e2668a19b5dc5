"""SimCLR's data augmentations as pure, seeded TensorFlow functions.

One view of an image is: random resized crop (the Inception crop) and horizontal flip, then colour
distortion (colour jitter with p = 0.8, then colour drop to grayscale with p = 0.2), then Gaussian
blur (p = 0.5, ImageNet recipe only). `two_views` draws two independent views of one image.

Every random function is *stateless*: it takes `seed`, a shape `(2,)` int32/int64 tensor, and splits
it for its sub-operations, so the same seed gives the same output eagerly, inside `tf.function` and
inside `tf.data.Dataset.map`, and different seeds give different outputs. Images enter as `uint8`
(0-255) or float (0-1) of shape `(height, width, 3)` and leave as float32 in `[0, 1]`.

Defaults of the papers (resolved by `simclr_tf.config.Config.resolved`):

- ImageNet (images larger than 32 px): `color_jitter_strength=1.0`, `use_blur=True`.
- CIFAR recipe (images of 32 px or less): `color_jitter_strength=0.5`, `use_blur=False`
  (SimCLR, appendix B.9).

The ops are chosen for throughput in a CPU input pipeline: one bounding-box sampler and one bicubic
resize per crop; then flip, colour jitter, colour drop and blur (two separable 1-D convolutions)
run as one XLA-compiled function on the fixed-size view (see `_view_ops`).

Example:

>>> image = tf.zeros((64, 64, 3), tf.uint8)
>>> view_1, view_2 = two_views(
...     image, tf.constant([0, 42]), image_size=32, color_jitter_strength=0.5, use_blur=False)
>>> view_1.shape, view_1.dtype
(TensorShape([32, 32, 3]), tf.float32)

References:
    - Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
      2020. https://arxiv.org/abs/2002.05709 (appendix A: the augmentations).
    - Chen et al., "Big Self-Supervised Models are Strong Semi-Supervised Learners", 2020.
      https://arxiv.org/abs/2006.10029 (SimCLRv2; its code's multiplicative brightness).
    - Szegedy et al., "Going Deeper with Convolutions", 2015. https://arxiv.org/abs/1409.4842
      (the Inception crop).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import tensorflow as tf

COLOR_JITTER_IMPLS = ("v1", "v2")

# Centre-crop proportion of evaluation images (Inception / SimCLR evaluation preprocessing).
EVAL_CROP_PROPORTION = 0.875

# At or below this output size evaluation images are only resized, never centre-cropped, as in
# the original code for CIFAR (mirrors `simclr_tf.config.SMALL_IMAGE_SIZE`).
SMALL_IMAGE_SIZE = 32

BLUR_SIGMA_RANGE = (0.1, 2.0)

# Indices of the colour-jitter operations in `order` / `factors` (see `adjust_color`).
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3


# --- argument checks (run in Python, once per trace) ------------------------------------------------


def _check_image_size(image_size, name: str = "image_size") -> int:
    if (
        isinstance(image_size, bool)
        or not isinstance(image_size, numbers.Integral)
        or image_size <= 0
    ):
        raise ValueError(
            f"`{name}` must be a positive integer number of pixels, e.g. 32 or 224. "
            f"Received: {image_size!r}."
        )
    return int(image_size)


def _check_strength(strength) -> float:
    if (
        isinstance(strength, bool)
        or not isinstance(strength, numbers.Real)
        or not math.isfinite(strength)
        or strength < 0
    ):
        raise ValueError(
            "`color_jitter_strength` must be a non-negative number (1.0 for ImageNet, 0.5 for "
            f"CIFAR in the paper). Received: {strength!r}."
        )
    return float(strength)


def _check_impl(impl) -> str:
    if impl not in COLOR_JITTER_IMPLS:
        raise ValueError(
            f"`color_jitter_impl` must be one of {COLOR_JITTER_IMPLS} ('v2': multiplicative "
            f"brightness of the SimCLRv2 code, 'v1': additive brightness). Received: {impl!r}."
        )
    return impl


def _check_probability(p, name: str) -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
        raise ValueError(f"`{name}` must be a probability in [0, 1]. Received: {p!r}.")
    return float(p)


def _check_range(value, name: str, upper: float | None) -> tuple[float, float]:
    ok = (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)
        and 0.0 < value[0] <= value[1]
        and (upper is None or value[1] <= upper)
    )
    if not ok:
        bound = f"0 < low <= high <= {upper}" if upper is not None else "0 < low <= high"
        raise ValueError(f"`{name}` must be a pair (low, high) with {bound}. Received: {value!r}.")
    return float(value[0]), float(value[1])


def _check_crop_min_area(crop_min_area) -> float:
    if (
        isinstance(crop_min_area, bool)
        or not isinstance(crop_min_area, numbers.Real)
        or not 0.0 < crop_min_area <= 1.0
    ):
        raise ValueError(
            "`crop_min_area` must be an area fraction in (0, 1] (the paper uses 0.08). "
            f"Received: {crop_min_area!r}."
        )
    return float(crop_min_area)


def _check_image(image) -> tf.Tensor:
    image = tf.convert_to_tensor(image)
    if image.shape.rank is not None and image.shape.rank != 3:
        raise ValueError(
            "`image` must be a single image of shape (height, width, 3); map the function over a "
            f"batch with tf.data or tf.map_fn. Received shape: {image.shape}."
        )
    if image.shape.rank == 3 and image.shape[-1] is not None and image.shape[-1] != 3:
        raise ValueError(
            f"`image` must have 3 (RGB) channels; convert grayscale with tf.image.grayscale_to_rgb. "
            f"Received shape: {image.shape}."
        )
    return image


def _check_seed(seed) -> tf.Tensor:
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64):
        raise ValueError(
            f"`seed` must be an int32 or int64 tensor of shape (2,), e.g. tf.constant([0, 1]). "
            f"Received dtype: {seed.dtype.name}."
        )
    if seed.shape.rank is not None and (seed.shape.rank != 1 or seed.shape[0] not in (None, 2)):
        raise ValueError(
            "`seed` must be an int32 or int64 tensor of shape (2,), e.g. tf.constant([0, 1]). "
            f"Received shape: {seed.shape}."
        )
    return seed


def _split(seed: tf.Tensor, num: int) -> tf.Tensor:
    return tf.random.experimental.stateless_split(seed, num=num)  # (num, 2)


def _to_float(image: tf.Tensor) -> tf.Tensor:
    """uint8 0-255 (or other integers at their full range) -> float32 0-1; floats are cast."""
    return tf.image.convert_image_dtype(image, tf.float32)


def _resize_bicubic(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Bicubic resize to a square, returned as float32 in [0, 1] (uint8 input is rescaled)."""
    scale = 1.0 / 255.0 if image.dtype == tf.uint8 else None
    if image.dtype not in (tf.uint8, tf.float32):
        image, scale = _to_float(image), None
    resized = tf.image.resize(image, (image_size, image_size), method="bicubic")  # (S, S, 3) float32
    if scale is not None:
        resized = resized * scale
    # Bicubic interpolation overshoots near edges; clip back into the valid range. A static
    # shape lets the colour and blur ops that follow run XLA-compiled.
    return tf.ensure_shape(tf.clip_by_value(resized, 0.0, 1.0), (image_size, image_size, 3))


# --- crop ------------------------------------------------------------------------------------------


def random_crop_box(
    image_shape,
    seed,
    *,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3),
    max_attempts: int = 100,
) -> tf.Tensor:
    """Samples the box of an Inception crop.

    The box covers a fraction of the image area in `area_range` and has a width / height ratio (in
    pixels) in `aspect_ratio_range`, up to rounding to whole pixels. Up to `max_attempts` boxes
    are drawn; if none fits, the box is the whole image. Sampling is TensorFlow's
    `stateless_sample_distorted_bounding_box` (height uniform for a uniform aspect ratio).

    Args:
        image_shape: int tensor or sequence `(height, width, channels)`, e.g. `tf.shape(image)`.
        seed: int32/int64 tensor of shape `(2,)`.
        area_range: pair of floats. Allowed fraction of the image area, `0 < low <= high <= 1`.
            Defaults to `(0.08, 1.0)`.
        aspect_ratio_range: pair of floats. Allowed width / height of the box. Defaults to
            `(3/4, 4/3)`.
        max_attempts: int. Boxes tried before falling back to the whole image. Defaults to `100`.

    Returns:
        int32 tensor of shape `(4,)`: `(offset_height, offset_width, height, width)`.

    Raises:
        ValueError: if a range, `max_attempts` or `seed` is invalid.

    Example:

    >>> box = random_crop_box((32, 32, 3), tf.constant([1, 2]))
    >>> box.shape
    TensorShape([4])

    Note:
        The original SimCLR code passes `min_object_covered=0.1` with the whole image as the
        object, which silently raises the smallest area to 0.1; here `area_range` is what you get.
        It also scales the aspect-ratio range by the image's own aspect ratio; here the range is in
        pixels, as in the Inception paper and torchvision.
    """
    area_range = _check_range(area_range, "area_range", upper=1.0)
    aspect_ratio_range = _check_range(aspect_ratio_range, "aspect_ratio_range", upper=None)
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, numbers.Integral) or max_attempts < 1:
        raise ValueError(f"`max_attempts` must be a positive integer. Received: {max_attempts!r}.")
    seed = _check_seed(seed)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.cast(image_shape, tf.int32),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),  # the whole image is "the object"
        seed=seed,
        min_object_covered=0.0,  # area_range alone bounds the crop
        aspect_ratio_range=aspect_ratio_range,
        area_range=area_range,
        max_attempts=int(max_attempts),
        use_image_if_no_bounding_boxes=True,
    )
    return tf.concat([begin[:2], size[:2]], axis=0)


def random_resized_crop(
    image,
    seed,
    *,
    output_size: int,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3),
    max_attempts: int = 100,
) -> tf.Tensor:
    """Inception crop: a random box (see `random_crop_box`) resized bicubically to a square.

    Args:
        image: uint8 (0-255) or float (0-1) tensor of shape `(height, width, 3)`.
        seed: int32/int64 tensor of shape `(2,)`.
        output_size: int. Side of the square output.
        area_range: pair of floats. Allowed fraction of the image area. Defaults to `(0.08, 1.0)`.
        aspect_ratio_range: pair of floats. Allowed width / height of the box. Defaults to
            `(3/4, 4/3)`.
        max_attempts: int. Boxes tried before falling back to the whole image. Defaults to `100`.

    Returns:
        float32 tensor of shape `(output_size, output_size, 3)` in `[0, 1]`.

    Raises:
        ValueError: if an argument is invalid (the message names it).

    Example:

    >>> random_resized_crop(tf.zeros((48, 64, 3), tf.uint8), tf.constant([0, 1]), output_size=32).shape
    TensorShape([32, 32, 3])

    References:
        Szegedy et al., 2015. https://arxiv.org/abs/1409.4842
    """
    output_size = _check_image_size(output_size, "output_size")
    image = _check_image(image)
    box = random_crop_box(
        tf.shape(image),
        seed,
        area_range=area_range,
        aspect_ratio_range=aspect_ratio_range,
        max_attempts=max_attempts,
    )
    crop = tf.slice(image, [box[0], box[1], 0], [box[2], box[3], -1])  # (h, w, 3)
    return _resize_bicubic(crop, output_size)


# --- the fused per-view kernel ----------------------------------------------------------------------
#
# Everything after the crop is elementwise or separable, so it runs as one XLA-compiled function on a
# planar (3, H, W) copy of the view: the dozens of small ops fuse into a few loops over the pixels,
# two to three times faster on CPU than the same ops one by one (or than `tf.image.adjust_hue` /
# `adjust_saturation`, which are per-pixel scalar kernels, and a 3-channel depthwise convolution).
# The random parameters are drawn outside (`_sample_*`), so the fused view equals the public
# functions applied one after another with the same seeds.


def _brightness(p: tf.Tensor, factor: tf.Tensor, impl: str) -> tf.Tensor:
    if impl == "v2":
        return tf.minimum(p * factor, 1.0)  # factor >= 0 keeps p * factor >= 0
    return tf.clip_by_value(p + factor, 0.0, 1.0)


def _contrast(p: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    mean = tf.reduce_mean(p, axis=(-2, -1), keepdims=True)  # (3, 1, 1): one mean per channel
    return tf.clip_by_value((p - mean) * factor + mean, 0.0, 1.0)


def _value_and_chroma(p: tf.Tensor) -> tuple[tf.Tensor, ...]:
    r, g, b = p[0], p[1], p[2]  # (H, W) each
    gb = tf.maximum(g, b)
    value = tf.maximum(r, gb)  # HSV value V = max(r, g, b)
    chroma = value - tf.minimum(tf.minimum(r, g), b)  # C = V - min(r, g, b) = V * S
    return r, g, b, gb, value, chroma


def _saturation(p: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    # Every channel is V - C * t with t in [0, 1] fixed by the hue, so scaling the HSV saturation
    # S = C / V by `factor` (then clipping it to 1) scales V - channel by min(factor, V / C) and
    # keeps V and the hue. Gray pixels (C = 0) keep their value. The result stays in [0, 1].
    *_, value, chroma = _value_and_chroma(p)
    scale = tf.minimum(factor, tf.math.divide_no_nan(value, chroma))  # (H, W)
    return value - (value - p) * scale


def _hue(p: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
    r, g, b, gb, value, chroma = _value_and_chroma(p)
    # The hue in sextants (red 0, green 2, blue 4), read off the largest channel; masks instead of
    # selects keep the loop branch-free.
    is_r = tf.cast(r >= gb, p.dtype)
    is_g = (1.0 - is_r) * tf.cast(g >= b, p.dtype)
    is_b = 1.0 - is_r - is_g
    hue = is_r * (g - b) + is_g * (b - r + 2.0 * chroma) + is_b * (r - g + 4.0 * chroma)
    hue = tf.math.divide_no_nan(hue, chroma) + 6.0 * delta  # (H, W), shifted by delta turns
    # HSV -> RGB: channel n (r: 5, g: 3, b: 1) is V - C * clip(min(k, 4 - k), 0, 1) with
    # k = (n + hue) mod 6. V and C are kept, so the result stays in [0, 1].
    k = hue + tf.constant([5.0, 3.0, 1.0], p.dtype)[:, None, None]  # (3, H, W)
    k = k - 6.0 * tf.floor(k * (1.0 / 6.0))
    return value - chroma * tf.clip_by_value(tf.minimum(k, 4.0 - k), 0.0, 1.0)


def _adjust_color_planar(p: tf.Tensor, order: tf.Tensor, factors: tf.Tensor, impl: str) -> tf.Tensor:
    def step(i, p):
        p = tf.switch_case(
            order[i],
            [
                lambda: _brightness(p, factors[BRIGHTNESS], impl),
                lambda: _contrast(p, factors[CONTRAST]),
                lambda: _saturation(p, factors[SATURATION]),
                lambda: _hue(p, factors[HUE]),
            ],
        )
        return i + 1, p

    # A loop, not 4 unrolled switches: XLA compiles the body once (unrolled, the compile time
    # grows with every switch, to over 10 s at 224 px).
    _, p = tf.while_loop(lambda i, p: i < 4, step, (tf.constant(0), p), maximum_iterations=4)
    return p


def _grayscale_planar(p: tf.Tensor) -> tf.Tensor:
    # ITU-R 601 luma, the weights of tf.image.rgb_to_grayscale.
    gray = 0.2989 * p[0] + 0.5870 * p[1] + 0.1140 * p[2]  # (H, W)
    return tf.broadcast_to(gray, tf.shape(p))


def _gaussian_weights(sigma: tf.Tensor, kernel_size: int) -> tf.Tensor:
    radius = kernel_size // 2
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)  # (k,)
    weights = tf.exp(-tf.square(offsets) / (2.0 * tf.square(sigma)))
    return weights / tf.reduce_sum(weights)  # (k,)


def _blur_planar(p: tf.Tensor, sigma: tf.Tensor, kernel_size: int) -> tf.Tensor:
    """Separable Gaussian blur over the last two axes of `p` (..., H, W), mirrored borders."""
    radius = kernel_size // 2
    rank = p.shape.rank
    weights = _gaussian_weights(sigma, kernel_size)
    x = tf.pad(p, [[0, 0]] * (rank - 2) + [[radius, radius]] * 2, mode="SYMMETRIC")  # (..., H+2r, W+2r)
    if not x.shape.is_fully_defined():  # uncompiled: convolution ops are faster than 2k slices
        return _blur_conv(x, weights, kernel_size)
    for axis in (rank - 2, rank - 1):  # height, then width: a 1-D convolution each
        size = x.shape[axis] - 2 * radius
        taps = []
        for start in range(kernel_size):
            begin, shape = [0] * rank, [-1] * rank
            begin[axis], shape[axis] = start, size
            taps.append(tf.slice(x, begin, shape))
        out = weights[radius] * taps[radius]
        for t in range(1, radius + 1):  # a symmetric kernel: mirrored taps share one product
            out = out + weights[radius + t] * (taps[radius - t] + taps[radius + t])
        x = out
    return x


def _blur_conv(x: tf.Tensor, weights: tf.Tensor, kernel_size: int) -> tf.Tensor:
    """`_blur_planar` as two 1-D convolutions of the padded (..., H+2r, W+2r) planes."""
    shape = tf.shape(x)
    planes = tf.reshape(x, tf.concat([[-1], shape[-2:], [1]], axis=0))  # (P, H+2r, W+2r, 1)
    planes = tf.nn.conv2d(planes, tf.reshape(weights, (kernel_size, 1, 1, 1)), 1, "VALID")  # (P, H, W+2r, 1)
    planes = tf.nn.conv2d(planes, tf.reshape(weights, (1, kernel_size, 1, 1)), 1, "VALID")  # (P, H, W, 1)
    radius = kernel_size // 2
    return tf.reshape(planes, tf.concat([shape[:-2], shape[-2:] - 2 * radius], axis=0))


def _view_ops(image: tf.Tensor, params: dict, impl: str = "v2", kernel_size: int = 0) -> tf.Tensor:
    """Applies the post-crop ops whose parameters are in `params`, in the SimCLR order.

    `params` may hold `flip` (bool), `jitter` (bool) with `order` and `factors`, `drop` (bool),
    `blur` (bool) with `sigma`. `image` is float32 (H, W, 3) in [0, 1].
    """
    p = tf.transpose(image, (2, 0, 1))  # (3, H, W)
    if "flip" in params:
        p = tf.cond(params["flip"], lambda: tf.reverse(p, axis=[2]), lambda: p)
    if "order" in params:
        p = tf.cond(
            params["jitter"],
            lambda: _adjust_color_planar(p, params["order"], params["factors"], impl),
            lambda: p,
        )
    if "drop" in params:
        p = tf.cond(params["drop"], lambda: _grayscale_planar(p), lambda: p)
    if "sigma" in params:
        p = tf.cond(params["blur"], lambda: _blur_planar(p, params["sigma"], kernel_size), lambda: p)
    return tf.transpose(tf.clip_by_value(p, 0.0, 1.0), (1, 2, 0))  # (H, W, 3)


# One trace (and XLA compilation) per image shape: the blur needs static shapes to unroll its taps.
_view_ops_xla = tf.function(_view_ops, jit_compile=True, autograph=False)


def _apply_view_ops(image: tf.Tensor, params: dict, impl: str = "v2", kernel_size: int = 0) -> tf.Tensor:
    """Runs `_view_ops` XLA-compiled when the image shape is static, else as plain TF ops.

    Inside `tf.data` a view has a static shape after the crop; an image of unknown shape (e.g.
    decoded JPEGs of varying size) would cost one compilation per shape, so it runs uncompiled.
    """
    image = _to_float(_check_image(image))
    if image.shape.is_fully_defined():
        return _view_ops_xla(image, params, impl=impl, kernel_size=kernel_size)
    return _view_ops(image, params, impl=impl, kernel_size=kernel_size)


# --- flip -------------------------------------------------------------------------------------------


def _sample_flip(seed: tf.Tensor) -> dict:
    return {"flip": tf.random.stateless_uniform((), seed) < 0.5}


def random_flip(image, seed) -> tf.Tensor:
    """Flips an image left-right with probability 0.5.

    Args:
        image: uint8 (0-255) or float (0-1) tensor of shape `(height, width, 3)`.
        seed: int32/int64 tensor of shape `(2,)`.

    Returns:
        float32 tensor of shape `(height, width, 3)` in `[0, 1]`, flipped or not.

    Raises:
        ValueError: if `image` or `seed` is invalid.

    Example:

    >>> random_flip(tf.zeros((4, 4, 3)), tf.constant([0, 1])).shape
    TensorShape([4, 4, 3])
    """
    return _apply_view_ops(image, _sample_flip(_check_seed(seed)))


# --- colour -----------------------------------------------------------------------------------------


def color_jitter_ranges(strength: float, impl: str = "v2") -> np.ndarray:
    """The sampling ranges of the four colour-jitter parameters for a strength `s`.

    Brightness: `v2` a factor in `[max(0, 1 - 0.8 s), 1 + 0.8 s]`, `v1` an additive delta in
    `[-0.8 s, 0.8 s]`. Contrast and saturation: a factor in `[max(0, 1 - 0.8 s), 1 + 0.8 s]`.
    Hue: a delta (fraction of the colour circle) in `[-0.2 s, 0.2 s]`, capped at +-0.5 (half the
    circle already reaches every hue). The lower bounds at 0 only matter for `s > 1.25`, where
    the original code fails.

    Args:
        strength: float. Colour-jitter strength `s >= 0`.
        impl: str. `"v2"` (SimCLRv2 code) or `"v1"` (SimCLRv1 code). Defaults to `"v2"`.

    Returns:
        float32 array of shape `(4, 2)`: `(low, high)` for brightness, contrast, saturation, hue.

    Raises:
        ValueError: if `strength` or `impl` is invalid.

    Example:

    >>> color_jitter_ranges(0.5).tolist()[0]
    [0.6000000238418579, 1.399999976158142]
    """
    s = _check_strength(strength)
    impl = _check_impl(impl)
    b = c = 0.8 * s
    h = min(0.2 * s, 0.5)
    brightness = (max(0.0, 1.0 - b), 1.0 + b) if impl == "v2" else (-b, b)
    return np.array(
        [brightness, (max(0.0, 1.0 - c), 1.0 + c), (max(0.0, 1.0 - c), 1.0 + c), (-h, h)],
        dtype=np.float32,
    )


def random_color_jitter_params(seed, *, strength: float, impl: str = "v2") -> tuple[tf.Tensor, tf.Tensor]:
    """Draws the parameters of one colour jitter: a random order and four factors.

    Args:
        seed: int32/int64 tensor of shape `(2,)`.
        strength: float. Colour-jitter strength `s >= 0`.
        impl: str. `"v2"` or `"v1"`; see `color_jitter_ranges`. Defaults to `"v2"`.

    Returns:
        A pair `(order, factors)`: `order` is an int32 permutation of `(0, 1, 2, 3)` (brightness,
        contrast, saturation, hue), uniform over the 24 orders; `factors` is float32 of shape
        `(4,)`, each uniform in its range from `color_jitter_ranges`.

    Raises:
        ValueError: if an argument is invalid.
    """
    ranges = color_jitter_ranges(strength, impl)
    seed = _check_seed(seed)
    u = tf.random.stateless_uniform((8,), seed)  # 4 for the factors, 4 to shuffle the order
    factors = ranges[:, 0] + (ranges[:, 1] - ranges[:, 0]) * u[:4]  # (4,)
    order = tf.argsort(u[4:], stable=True)  # (4,): a uniform random permutation
    return order, factors


def adjust_color(image, order, factors, *, impl: str = "v2") -> tf.Tensor:
    """Applies brightness, contrast, saturation and hue in the given order (deterministic).

    Operation `k` of `(brightness, contrast, saturation, hue)` uses `factors[k]`: brightness
    `x * f` (`v2`) or `x + f` (`v1`); contrast `(x - mean) * f + mean` with the mean of each
    channel; saturation scales the HSV saturation by `f` (clipped to `[0, 1]`); hue shifts the
    HSV hue by `f` turns. The image is clipped to `[0, 1]` after every operation, as in the
    original code. The results equal `tf.image.adjust_contrast`, `adjust_saturation` and
    `adjust_hue` to float rounding (about 1e-6), computed with elementwise ops that XLA fuses.

    Args:
        image: uint8 (0-255) or float (0-1) tensor of shape `(height, width, 3)`.
        order: int tensor of shape `(4,)`, a permutation of `(0, 1, 2, 3)`.
        factors: float tensor of shape `(4,)`.
        impl: str. `"v2"` (multiplicative brightness) or `"v1"` (additive). Defaults to `"v2"`.

    Returns:
        float32 tensor of shape `(height, width, 3)` in `[0, 1]`.

    Raises:
        ValueError: if `impl` or `image` is invalid.

    Example:

    >>> image = tf.constant([[[0.8, 0.4, 0.2]]])
    >>> adjust_color(image, [0, 1, 2, 3], [1.0, 1.0, 0.0, 0.0]).numpy().tolist()  # saturation 0: gray
    [[[0.800000011920929, 0.800000011920929, 0.800000011920929]]]
    """
    impl = _check_impl(impl)
    params = {
        "jitter": tf.constant(True),
        "order": tf.cast(order, tf.int32),
        "factors": tf.cast(factors, tf.float32),
    }
    return _apply_view_ops(image, params, impl=impl)


def _sample_color(seed: tf.Tensor, strength: float, impl: str, jitter_probability: float,
                  drop_probability: float) -> dict:
    seeds = _split(seed, 2)  # (2, 2): coins, jitter parameters
    coins = tf.random.stateless_uniform((2,), seeds[0])
    params = {"drop": coins[1] < drop_probability}
    if strength > 0:
        order, factors = random_color_jitter_params(seeds[1], strength=strength, impl=impl)
        params.update(jitter=coins[0] < jitter_probability, order=order, factors=factors)
    return params


def color_jitter(image, seed, *, strength: float, impl: str = "v2") -> tf.Tensor:
    """Random brightness, contrast, saturation and hue, applied in a random order.

    With strength `s`: brightness 0.8 s, contrast 0.8 s, saturation 0.8 s, hue 0.2 s; the exact
    ranges are in `color_jitter_ranges`, the operations in `adjust_color`.

    Args:
        image: uint8 (0-255) or float (0-1) tensor of shape `(height, width, 3)`.
        seed: int32/int64 tensor of shape `(2,)`.
        strength: float. Colour-jitter strength `s >= 0` (1.0 ImageNet, 0.5 CIFAR). `0` returns
            the image unchanged (as float).
        impl: str. `"v2"` (SimCLRv2 code: brightness factor) or `"v1"` (SimCLRv1 code: additive
            brightness). Defaults to `"v2"`.

    Returns:
        float32 tensor of shape `(height, width, 3)` in `[0, 1]`.

    Raises:
        ValueError: if an argument is invalid (the message names it).

    Example:

    >>> color_jitter(tf.fill((4, 4, 3), 0.5), tf.constant([0, 1]), strength=1.0).shape
    TensorShape([4, 4, 3])

    References:
        Chen et al., 2020, appendix A. https://arxiv.org/abs/2002.05709
    """
    strength = _check_strength(strength)
    impl = _check_impl(impl)
    if strength == 0.0:
        return _apply_view_ops(image, {})
    order, factors = random_color_jitter_params(seed, strength=strength, impl=impl)
    return adjust_color(image, order, factors, impl=impl)


def color_drop(image) -> tf.Tensor:
    """Converts to grayscale (ITU-R 601 luma, as `tf.image.rgb_to_grayscale`) kept as 3 channels.

    Args:
        image: uint8 (0-255) or float (0-1) tensor of shape `(height, width, 3)`.

    Returns:
        float32 tensor of shape `(height, width, 3)` in `[0, 1]` whose channels are equal.

    Example:

    >>> color_drop(tf.constant([[[1.0, 0.0, 0.0]]])).numpy().tolist()
    [[[0.2989000082015991, 0.2989000082015991, 0.2989000082015991]]]
    """
    return _apply_view_ops(image, {"drop": tf.constant(True)})


def random_color_jitter(
    image,
    seed,
    *,
    strength: float,
    impl: str = "v2",
    jitter_probability: float = 0.8,
    drop_probability: float = 0.2,
) -> tf.Tensor:
    """SimCLR's colour distortion: colour jitter with p = 0.8, then colour drop with p = 0.2.

    Args:
        image: uint8 (0-255) or float (0-1) tensor of shape `(height, width, 3)`.
        seed: int32/int64 tensor of shape `(2,)`.
        strength: float. Colour-jitter strength `s >= 0`.
        impl: str. `"v2"` or `"v1"`; see `color_jitter`. Defaults to `"v2"`.
        jitter_probability: float. Probability of the colour jitter. Defaults to `0.8`.
        drop_probability: float. Probability of the grayscale conversion. Defaults to `0.2`.

    Returns:
        float32 tensor of shape `(height, width, 3)` in `[0, 1]`.

    Raises:
        ValueError: if an argument is invalid (the message names it).

    Example:

    >>> random_color_jitter(tf.fill((4, 4, 3), 0.5), tf.constant([0, 1]), strength=0.5).dtype
    tf.float32

    References:
        Chen et al., 2020, appendix A. https://arxiv.org/abs/2002.05709
    """
    strength = _check_strength(strength)
    impl = _check_impl(impl)
    jitter_probability = _check_probability(jitter_probability, "jitter_probability")
    drop_probability = _check_probability(drop_probability, "drop_probability")
    params = _sample_color(_check_seed(seed), strength, impl, jitter_probability, drop_probability)
    return _apply_view_ops(image, params, impl=impl)


# --- blur -------------------------------------------------------------------------------------------


def blur_kernel_size(image_size: int) -> int:
    """Side of the Gaussian-blur kernel: 10% of the image side, rounded up to an odd integer.

    That is the smallest odd integer `>= image_size / 10`: 224 -> 23 (22.4 -> 23), 96 -> 11,
    32 -> 5 (3.2 -> 4 -> 5), 10 -> 1 (no blur). The original code's
    `2 * ((image_size // 10) // 2) + 1` also gives 23 at 224, but 9 at 96 and 3 at 32.

    Args:
        image_size: int. Side of the (square) image.

    Returns:
        The odd kernel side.

    Raises:
        ValueError: if `image_size` is not a positive integer.

    Example:

    >>> blur_kernel_size(224)
    23
    """
    image_size = _check_image_size(image_size)
    size = -(-image_size // 10)  # ceil(image_size / 10) in exact integer arithmetic
    return size if size % 2 == 1 else size + 1


def gaussian_blur(image, sigma, *, kernel_size: int) -> tf.Tensor:
    """Blurs with a normalised Gaussian kernel of side `kernel_size` (deterministic).

    Separable: a 1-D convolution along the height, then one along the width, on each channel.
    The borders are padded symmetrically (mirrored, edge pixel repeated), so a constant image
    stays constant and edges do not darken, unlike the original code's zero padding.

    Args:
        image: float tensor of shape `(height, width, channels)` or
            `(batch, height, width, channels)`, with height and width `>= kernel_size // 2`.
        sigma: float or scalar tensor. Standard deviation of the Gaussian, in pixels.
        kernel_size: int. Odd side of the kernel.

    Returns:
        float32 tensor of the shape of `image` (not clipped).

    Raises:
        ValueError: if `kernel_size` is not a positive odd integer or `image` has a wrong rank.

    Example:

    >>> float(gaussian_blur(tf.ones((8, 8, 3)), 1.0, kernel_size=3).numpy().min())
    1.0
    """
    if (
        isinstance(kernel_size, bool)
        or not isinstance(kernel_size, numbers.Integral)
        or kernel_size < 1
        or kernel_size % 2 == 0
    ):
        raise ValueError(
            "`kernel_size` must be a positive odd integer (see `blur_kernel_size`). "
            f"Received: {kernel_size!r}."
        )
    image = tf.cast(tf.convert_to_tensor(image), tf.float32)
    rank = image.shape.rank
    if rank not in (3, 4):
        raise ValueError(
            "`image` must have shape (height, width, channels) or (batch, height, width, channels). "
            f"Received shape: {image.shape}."
        )
    if kernel_size == 1:
        return image
    to_planar = (2, 0, 1) if rank == 3 else (0, 3, 1, 2)
    to_image = (1, 2, 0) if rank == 3 else (0, 2, 3, 1)
    blur = _blur_xla if image.shape.is_fully_defined() else _blur_planar
    planes = blur(tf.transpose(image, to_planar), tf.cast(sigma, tf.float32), kernel_size=int(kernel_size))
    return tf.transpose(planes, to_image)


_blur_xla = tf.function(_blur_planar, jit_compile=True, autograph=False)


def random_blur_sigma(seed) -> tf.Tensor:
    """Draws the blur's standard deviation, uniform in `[0.1, 2.0]` pixels (float32 scalar).

    Args:
        seed: int32/int64 tensor of shape `(2,)`.

    Returns:
        float32 scalar tensor.
    """
    low, high = BLUR_SIGMA_RANGE
    return tf.random.stateless_uniform((), _check_seed(seed), minval=low, maxval=high)


def _sample_blur(seed: tf.Tensor, p: float) -> dict:
    seeds = _split(seed, 2)  # (2, 2): coin, sigma
    return {"blur": tf.random.stateless_uniform((), seeds[0]) < p, "sigma": random_blur_sigma(seeds[1])}


def random_gaussian_blur(image, seed, *, image_size: int, p: float = 0.5) -> tf.Tensor:
    """Gaussian blur with probability `p`, sigma uniform in `[0.1, 2.0]` pixels.

    The kernel side is `blur_kernel_size(image_size)` (23 at 224 px).

    Args:
        image: uint8 (0-255) or float (0-1) tensor of shape `(height, width, 3)`.
        seed: int32/int64 tensor of shape `(2,)`.
        image_size: int. Side of the image; sets the kernel size.
        p: float. Probability of blurring. Defaults to `0.5`.

    Returns:
        float32 tensor of shape `(height, width, 3)` in `[0, 1]`.

    Raises:
        ValueError: if an argument is invalid (the message names it).

    Example:

    >>> random_gaussian_blur(tf.ones((32, 32, 3)), tf.constant([0, 1]), image_size=32).shape
    TensorShape([32, 32, 3])

    References:
        Chen et al., 2020, appendix A. https://arxiv.org/abs/2002.05709
    """
    kernel_size = blur_kernel_size(image_size)
    p = _check_probability(p, "p")
    params = _sample_blur(_check_seed(seed), p)
    return _apply_view_ops(image, params, kernel_size=kernel_size)


# --- whole views ------------------------------------------------------------------------------------


def augment_view(
    image,
    seed,
    *,
    image_size: int,
    color_jitter_strength: float,
    use_blur: bool,
    color_jitter_impl: str = "v2",
    crop_min_area: float = 0.08,
    random_flip: bool = True,
) -> tf.Tensor:
    """One SimCLR view: crop + flip, colour jitter / drop, then (optionally) blur.

    Args:
        image: uint8 (0-255) or float (0-1) tensor of shape `(height, width, 3)`.
        seed: int32/int64 tensor of shape `(2,)`.
        image_size: int. Side of the square output.
        color_jitter_strength: float. Strength `s >= 0` (1.0 ImageNet, 0.5 CIFAR).
        use_blur: bool. Blur with p = 0.5 (ImageNet recipe; off for CIFAR).
        color_jitter_impl: str. `"v2"` or `"v1"`. Defaults to `"v2"`.
        crop_min_area: float. Smallest area fraction of the crop, in `(0, 1]`. Defaults to `0.08`.
        random_flip: bool. Flip left-right with p = 0.5; off for data where a mirror image
            changes the class (digits). Defaults to `True`.

    Returns:
        float32 tensor of shape `(image_size, image_size, 3)` in `[0, 1]`.

    Raises:
        ValueError: if an argument is invalid (the message names it).

    Example:

    >>> view = augment_view(tf.zeros((40, 40, 3), tf.uint8), tf.constant([3, 4]), image_size=32,
    ...                     color_jitter_strength=0.5, use_blur=False)
    >>> view.shape
    TensorShape([32, 32, 3])

    References:
        Chen et al., 2020, appendix A. https://arxiv.org/abs/2002.05709
    """
    image_size = _check_image_size(image_size)
    strength = _check_strength(color_jitter_strength)
    impl = _check_impl(color_jitter_impl)
    crop_min_area = _check_crop_min_area(crop_min_area)
    seeds = _split(_check_seed(seed), 4)  # (4, 2): crop, flip, colour, blur
    view = random_resized_crop(image, seeds[0], output_size=image_size, area_range=(crop_min_area, 1.0))
    # The same parameters as random_flip, random_color_jitter and random_gaussian_blur with these
    # seeds, applied in one fused call.
    params = {**_sample_flip(seeds[1]), **_sample_color(seeds[2], strength, impl, 0.8, 0.2)}
    if not random_flip:
        params["flip"] = tf.constant(False)
    if use_blur:
        params.update(_sample_blur(seeds[3], 0.5))
    view = _apply_view_ops(view, params, impl=impl, kernel_size=blur_kernel_size(image_size))
    return tf.ensure_shape(view, (image_size, image_size, 3))


def two_views(
    image,
    seed,
    *,
    image_size: int,
    color_jitter_strength: float,
    use_blur: bool,
    color_jitter_impl: str = "v2",
    crop_min_area: float = 0.08,
    random_flip: bool = True,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Two independent SimCLR views of one image (see `augment_view` for the arguments).

    Returns:
        `(view_1, view_2)`, each float32 of shape `(image_size, image_size, 3)` in `[0, 1]`.

    Example:

    >>> v1, v2 = two_views(tf.zeros((32, 32, 3), tf.uint8), tf.constant([0, 7]), image_size=32,
    ...                    color_jitter_strength=0.5, use_blur=False)
    """
    seeds = _split(_check_seed(seed), 2)  # (2, 2)
    kwargs = dict(
        image_size=image_size,
        color_jitter_strength=color_jitter_strength,
        use_blur=use_blur,
        color_jitter_impl=color_jitter_impl,
        crop_min_area=crop_min_area,
        random_flip=random_flip,
    )
    return augment_view(image, seeds[0], **kwargs), augment_view(image, seeds[1], **kwargs)


def finetune_preprocess(image, seed, *, image_size: int) -> tf.Tensor:
    """Training augmentation of linear evaluation and fine-tuning: Inception crop + flip only.

    Used at every image size, CIFAR included, as in the original code.

    Args:
        image: uint8 (0-255) or float (0-1) tensor of shape `(height, width, 3)`.
        seed: int32/int64 tensor of shape `(2,)`.
        image_size: int. Side of the square output.

    Returns:
        float32 tensor of shape `(image_size, image_size, 3)` in `[0, 1]`.

    Raises:
        ValueError: if an argument is invalid.
    """
    image_size = _check_image_size(image_size)
    seeds = _split(_check_seed(seed), 2)  # (2, 2): crop, flip
    view = random_resized_crop(image, seeds[0], output_size=image_size)
    return tf.ensure_shape(_apply_view_ops(view, _sample_flip(seeds[1])), (image_size, image_size, 3))


def center_crop_box(height, width, crop_proportion: float = EVAL_CROP_PROPORTION) -> tf.Tensor:
    """The centred square box of side `round(crop_proportion * min(height, width))`.

    Args:
        height: int or int scalar tensor. Image height.
        width: int or int scalar tensor. Image width.
        crop_proportion: float. Side of the box relative to the shorter image side. Defaults to
            `0.875`.

    Returns:
        int32 tensor of shape `(4,)`: `(offset_height, offset_width, side, side)`; an odd leftover
        margin puts the extra pixel before the box.
    """
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    short = tf.cast(tf.minimum(height, width), tf.float32)
    side = tf.maximum(tf.cast(tf.math.rint(crop_proportion * short), tf.int32), 1)
    return tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])


def eval_preprocess(image, *, image_size: int) -> tf.Tensor:
    """Evaluation preprocessing: centre crop of 87.5% of the shorter side, bicubic resize.

    For `image_size <= 32` (CIFAR) the image is only resized, as in the original code.

    Args:
        image: uint8 (0-255) or float (0-1) tensor of shape `(height, width, 3)`.
        image_size: int. Side of the square output.

    Returns:
        float32 tensor of shape `(image_size, image_size, 3)` in `[0, 1]`.

    Raises:
        ValueError: if an argument is invalid.

    Example:

    >>> eval_preprocess(tf.zeros((256, 320, 3), tf.uint8), image_size=224).shape
    TensorShape([224, 224, 3])
    """
    image_size = _check_image_size(image_size)
    image = _check_image(image)
    if image_size > SMALL_IMAGE_SIZE:
        shape = tf.shape(image)
        box = center_crop_box(shape[0], shape[1])
        image = tf.slice(image, [box[0], box[1], 0], [box[2], box[3], -1])
    return tf.ensure_shape(_resize_bicubic(image, image_size), (image_size, image_size, 3))
