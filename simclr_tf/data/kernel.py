"""The per-view kernel: everything after the crop, fused into one XLA-compiled function.

Flip, colour jitter, colour drop and Gaussian blur are elementwise or separable, so they run as one
XLA-compiled function on a planar `(3, H, W)` copy of the view: the dozens of small ops fuse into a
few loops over the pixels, two to three times faster on CPU than the same ops one by one (or than
`tf.image.adjust_hue` / `adjust_saturation`, which are per-pixel scalar kernels, and a 3-channel
depthwise convolution). The random parameters are drawn outside (the `sample_*` functions of
`ops` and `color`), so the fused view equals the public functions applied one after another with the
same seeds.

This module also holds the tensor checks every op shares (`check_image`, `check_seed`). It is the
bottom of the augmentation modules: `ops`, `color` and `views` import it, it imports none of them.
"""

from __future__ import annotations

import tensorflow as tf

# Indices of the colour-jitter operations in `order` / `factors` (see `color.adjust_color`).
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3

# --- tensor checks and conversions (run in Python, once per trace) -----------------------------------


def check_image(image) -> tf.Tensor:
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


def check_seed(seed) -> tf.Tensor:
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


def split_seed(seed: tf.Tensor, num: int) -> tf.Tensor:
    return tf.random.experimental.stateless_split(seed, num=num)  # (num, 2)


def to_float(image: tf.Tensor) -> tf.Tensor:
    """uint8 0-255 (or other integers at their full range) -> float32 0-1; floats are cast."""
    return tf.image.convert_image_dtype(image, tf.float32)

# --- planar colour operations -----------------------------------------------------------------------


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

# --- planar blur ------------------------------------------------------------------------------------


def _gaussian_weights(sigma: tf.Tensor, kernel_size: int) -> tf.Tensor:
    radius = kernel_size // 2
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)  # (k,)
    weights = tf.exp(-tf.square(offsets) / (2.0 * tf.square(sigma)))
    return weights / tf.reduce_sum(weights)  # (k,)


def blur_planar(p: tf.Tensor, sigma: tf.Tensor, kernel_size: int) -> tf.Tensor:
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
    """`blur_planar` as two 1-D convolutions of the padded (..., H+2r, W+2r) planes."""
    shape = tf.shape(x)
    planes = tf.reshape(x, tf.concat([[-1], shape[-2:], [1]], axis=0))  # (P, H+2r, W+2r, 1)
    planes = tf.nn.conv2d(planes, tf.reshape(weights, (kernel_size, 1, 1, 1)), 1, "VALID")  # (P, H, W+2r, 1)
    planes = tf.nn.conv2d(planes, tf.reshape(weights, (1, kernel_size, 1, 1)), 1, "VALID")  # (P, H, W, 1)
    radius = kernel_size // 2
    return tf.reshape(planes, tf.concat([shape[:-2], shape[-2:] - 2 * radius], axis=0))

# --- the fused kernel -------------------------------------------------------------------------------


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
        p = tf.cond(params["blur"], lambda: blur_planar(p, params["sigma"], kernel_size), lambda: p)
    return tf.transpose(tf.clip_by_value(p, 0.0, 1.0), (1, 2, 0))  # (H, W, 3)


# One trace (and XLA compilation) per image shape: the blur needs static shapes to unroll its taps.
_view_ops_xla = tf.function(_view_ops, jit_compile=True, autograph=False)


def apply_view_ops(image: tf.Tensor, params: dict, impl: str = "v2", kernel_size: int = 0) -> tf.Tensor:
    """Runs `_view_ops` XLA-compiled when the image shape is static, else as plain TF ops.

    Inside `tf.data` a view has a static shape after the crop; an image of unknown shape (e.g.
    decoded JPEGs of varying size) would cost one compilation per shape, so it runs uncompiled.
    """
    image = to_float(check_image(image))
    if image.shape.is_fully_defined():
        return _view_ops_xla(image, params, impl=impl, kernel_size=kernel_size)
    return _view_ops(image, params, impl=impl, kernel_size=kernel_size)
