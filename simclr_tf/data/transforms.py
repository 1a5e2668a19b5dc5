"""The other transformations of SimCLR's augmentation study: cutout, Sobel, Gaussian noise, rotation.

The paper's Figure 4 and 5 study these next to crop, colour distortion and blur (`ops`, `color`):
none is in SimCLR's own view, each can be put in a view policy (`simclr_tf.data.policy`), e.g.
`--view_b=crop,rotate`. Like the other ops they are stateless and seeded (a `(2,)` int seed): the
same seed gives the same output eagerly and inside `tf.data`. They also compile with XLA
(`jit_compile=True`), where TensorFlow's stateless generators may pick another algorithm, so a
compiled call draws other (equally distributed, equally reproducible) numbers. They take uint8
(0-255) or float (0-1) images of shape `(height, width, 3)` to float32 in `[0, 1]`.

- `random_cutout`: one square of zeros (black), its side a uniform fraction of the image's shorter
  side, wholly inside the image (DeVries & Taylor's cutout; the paper's Figure 4 (f)).
- `sobel_filter`: the gradient magnitude of the luma by the 3x3 Sobel kernels, borders replicated,
  scaled so its largest value is 1, in all three channels (Figure 4 (i)).
- `random_gaussian_noise`: adds independent N(0, std^2) noise to every pixel and channel, then clips
  (Figure 4 (h)).
- `random_rotate`: rotates by 90, 180 or 270 degrees, uniformly (Figure 4 (j): "Rotate {90, 180,
  270}"), counter-clockwise as `np.rot90`. Views are square, so the shape is kept.

References:
    - Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
      2020. https://arxiv.org/abs/2002.05709 (section 3, Figures 4 and 5).
    - DeVries & Taylor, "Improved Regularization of Convolutional Neural Networks with Cutout",
      2017. https://arxiv.org/abs/1708.04552
"""

from __future__ import annotations

import tensorflow as tf

from simclr_tf.data.kernel import check_image, check_seed, split_seed, to_float
from simclr_tf.validation import check_number

CUTOUT_SIDE_RANGE = (0.1, 0.5)  # side of the cutout square, as a fraction of the shorter side
NOISE_STD = 0.1  # standard deviation of the Gaussian noise, in units of the [0, 1] pixel range

# The 3x3 Sobel kernels: d/dx (along the width) and d/dy (along the height).
SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
SOBEL_Y = ((-1.0, -2.0, -1.0), (0.0, 0.0, 0.0), (1.0, 2.0, 1.0))


def _coin(seed: tf.Tensor, p: float) -> tf.Tensor:
    return tf.random.stateless_uniform((), seed) < p


def _float_image(image) -> tf.Tensor:
    return to_float(check_image(image))


def check_side_range(side_range) -> tuple[float, float]:
    ok = (isinstance(side_range, (tuple, list)) and len(side_range) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in side_range)
          and 0.0 <= side_range[0] <= side_range[1] <= 1.0)
    if not ok:
        raise ValueError("`side_range` of cutout must be a pair (low, high) with 0 <= low <= high <= 1, "
                         f"fractions of the image side, e.g. (0.1, 0.5). Received: {side_range!r}.")
    return float(side_range[0]), float(side_range[1])


def random_cutout(image, seed, *, side_range=CUTOUT_SIDE_RANGE, p: float = 1.0) -> tf.Tensor:
    """With probability `p`, sets one random square of the image to zero (black).

    The side is `round(u * min(height, width))` pixels with `u` uniform in `side_range`; the square
    lies wholly inside the image, its top-left corner uniform over the places it fits.

    Args:
        image: uint8 (0-255) or float (0-1) tensor of shape `(height, width, 3)`.
        seed: int32/int64 tensor of shape `(2,)`.
        side_range: pair of floats in `[0, 1]`. Side of the square as a fraction of the shorter
            image side. Defaults to `(0.1, 0.5)`.
        p: float. Probability of the cutout. Defaults to `1.0`.

    Returns:
        float32 tensor of shape `(height, width, 3)` in `[0, 1]`.

    Raises:
        ValueError: if an argument is invalid.

    Example:

    >>> random_cutout(tf.ones((8, 8, 3)), tf.constant([0, 1])).shape
    TensorShape([8, 8, 3])
    """
    low, high = check_side_range(side_range)
    p = check_number("p", p, low=0, high=1)
    image = _float_image(image)
    seeds = split_seed(check_seed(seed), 3)  # (3, 2): coin, side, corner
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    short = tf.cast(tf.minimum(height, width), tf.float32)
    fraction = tf.random.stateless_uniform((), seeds[1], minval=low, maxval=high)
    side = tf.cast(tf.math.rint(fraction * short), tf.int32)  # (), pixels
    corner = tf.random.stateless_uniform((2,), seeds[2])  # top, left: uniform over the free room
    top = tf.cast(tf.floor(corner[0] * tf.cast(height - side + 1, tf.float32)), tf.int32)
    left = tf.cast(tf.floor(corner[1] * tf.cast(width - side + 1, tf.float32)), tf.int32)
    rows = tf.range(height)[:, None]  # (H, 1)
    cols = tf.range(width)[None, :]  # (1, W)
    inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)  # (H, W)
    inside = inside & _coin(seeds[0], p)
    return tf.where(inside[:, :, None], tf.zeros_like(image), image)


def sobel_filter(image) -> tf.Tensor:
    """The Sobel gradient magnitude of the luma, scaled to a maximum of 1, in three channels.

    Luma as `tf.image.rgb_to_grayscale` (ITU-R 601); the 3x3 kernels `SOBEL_X`, `SOBEL_Y` are
    correlated with the luma padded by one replicated edge pixel; the magnitude
    `sqrt(gx^2 + gy^2)` is divided by its largest value (a flat image gives zeros).

    Args:
        image: uint8 (0-255) or float (0-1) tensor of shape `(height, width, 3)`.

    Returns:
        float32 tensor of shape `(height, width, 3)` in `[0, 1]`, three equal channels.

    Example:

    >>> float(tf.reduce_max(sobel_filter(tf.ones((6, 6, 3)))))
    0.0
    """
    image = _float_image(image)
    gray = 0.2989 * image[:, :, 0] + 0.5870 * image[:, :, 1] + 0.1140 * image[:, :, 2]  # (H, W)
    padded = tf.pad(gray, [[1, 1], [1, 1]], mode="SYMMETRIC")  # (H+2, W+2): edge pixel repeated
    height, width = tf.shape(gray)[0], tf.shape(gray)[1]
    gx = tf.zeros_like(gray)
    gy = tf.zeros_like(gray)
    for i in range(3):
        for j in range(3):
            tap = tf.slice(padded, [i, j], [height, width])
            if SOBEL_X[i][j]:
                gx += SOBEL_X[i][j] * tap
            if SOBEL_Y[i][j]:
                gy += SOBEL_Y[i][j] * tap
    magnitude = tf.sqrt(gx * gx + gy * gy)  # (H, W)
    magnitude = tf.math.divide_no_nan(magnitude, tf.reduce_max(magnitude))
    return tf.tile(tf.clip_by_value(magnitude, 0.0, 1.0)[:, :, None], [1, 1, 3])


def random_sobel(image, seed, *, p: float = 1.0) -> tf.Tensor:
    """`sobel_filter` with probability `p` (else the image as float32).

    Args:
        image: uint8 (0-255) or float (0-1) tensor of shape `(height, width, 3)`.
        seed: int32/int64 tensor of shape `(2,)`.
        p: float. Probability of the filter. Defaults to `1.0`.

    Returns:
        float32 tensor of shape `(height, width, 3)` in `[0, 1]`.
    """
    p = check_number("p", p, low=0, high=1)
    image = _float_image(image)
    return tf.cond(_coin(check_seed(seed), p), lambda: sobel_filter(image), lambda: image)


def random_gaussian_noise(image, seed, *, std: float = NOISE_STD, p: float = 1.0) -> tf.Tensor:
    """With probability `p`, adds N(0, std^2) noise to every pixel and channel, then clips to [0, 1].

    Args:
        image: uint8 (0-255) or float (0-1) tensor of shape `(height, width, 3)`.
        seed: int32/int64 tensor of shape `(2,)`.
        std: float >= 0. Standard deviation, in units of the [0, 1] range. Defaults to `0.1`.
        p: float. Probability of the noise. Defaults to `1.0`.

    Returns:
        float32 tensor of shape `(height, width, 3)` in `[0, 1]`.

    Example:

    >>> random_gaussian_noise(tf.fill((4, 4, 3), 0.5), tf.constant([0, 1]), std=0.05).shape
    TensorShape([4, 4, 3])
    """
    std = check_number("std", std, low=0, hint="It is in units of the [0, 1] pixel range, e.g. 0.1.")
    p = check_number("p", p, low=0, high=1)
    image = _float_image(image)
    seeds = split_seed(check_seed(seed), 2)  # (2, 2): coin, noise
    noise = std * tf.random.stateless_normal(tf.shape(image), seeds[1])  # (H, W, 3)
    noisy = tf.clip_by_value(image + noise, 0.0, 1.0)
    return tf.where(_coin(seeds[0], p), noisy, image)


def rotate90(image, k) -> tf.Tensor:
    """Rotates a square image by `k` quarter turns counter-clockwise (as `np.rot90(image, k)`).

    Args:
        image: float tensor of shape `(side, side, channels)`.
        k: int or int32 scalar tensor; taken modulo 4.

    Returns:
        The rotated tensor, of the same shape and dtype.
    """
    def once(x):  # np.rot90: transpose, then reverse the rows
        return tf.reverse(tf.transpose(x, (1, 0, 2)), axis=[0])

    image = tf.convert_to_tensor(image)
    k = tf.math.floormod(tf.cast(k, tf.int32), 4)
    return tf.switch_case(k, [lambda: image, lambda: once(image), lambda: once(once(image)),
                              lambda: once(once(once(image)))])


def random_rotate(image, seed, *, p: float = 1.0) -> tf.Tensor:
    """With probability `p`, rotates a square image by 90, 180 or 270 degrees (uniformly).

    Args:
        image: uint8 (0-255) or float (0-1) tensor of shape `(side, side, 3)`.
        seed: int32/int64 tensor of shape `(2,)`.
        p: float. Probability of a rotation. Defaults to `1.0`.

    Returns:
        float32 tensor of shape `(side, side, 3)` in `[0, 1]`.

    Raises:
        ValueError: if the image is not square (where the shape is known) or `p` is invalid.

    Example:

    >>> random_rotate(tf.zeros((4, 4, 3)), tf.constant([0, 1])).shape
    TensorShape([4, 4, 3])
    """
    p = check_number("p", p, low=0, high=1)
    image = _float_image(image)
    if image.shape[0] is not None and image.shape[1] is not None and image.shape[0] != image.shape[1]:
        raise ValueError("`random_rotate` needs a square image (a view after crop or resize). "
                         f"Received shape: {image.shape}.")
    seeds = split_seed(check_seed(seed), 2)  # (2, 2): coin, quarter turns
    turns = tf.random.stateless_uniform((), seeds[1], minval=1, maxval=4, dtype=tf.int32)  # 1..3
    turns = tf.where(_coin(seeds[0], p), turns, 0)
    return rotate90(image, turns)
