"""SimCLR's single augmentations as pure, seeded TensorFlow functions: crop, flip, blur, resize.

Every random function is *stateless*: it takes `seed`, a shape `(2,)` int32/int64 tensor, and splits
it for its sub-operations, so the same seed gives the same output eagerly, inside `tf.function` and
inside `tf.data.Dataset.map`, and different seeds give different outputs. Images enter as `uint8`
(0-255) or float (0-1) of shape `(height, width, 3)` and leave as float32 in `[0, 1]`.

The ops are chosen for throughput in a CPU input pipeline: one bounding-box sampler and one bicubic
resize per crop; flip and blur (two separable 1-D convolutions) run in the fused, XLA-compiled
per-view kernel (`simclr_tf.data.kernel`). Colour jitter and colour drop are in
`simclr_tf.data.color`, whole views in `simclr_tf.data.views`.

Example:

>>> view = random_resized_crop(tf.zeros((64, 48, 3), tf.uint8), tf.constant([0, 42]), output_size=32)
>>> view.shape, view.dtype
(TensorShape([32, 32, 3]), tf.float32)

References:
    - Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
      2020. https://arxiv.org/abs/2002.05709 (appendix A: the augmentations).
    - Szegedy et al., "Going Deeper with Convolutions", 2015. https://arxiv.org/abs/1409.4842
      (the Inception crop).
"""

from __future__ import annotations

import numbers

import tensorflow as tf

from simclr_tf.data.kernel import apply_view_ops, blur_planar, check_image, check_seed, split_seed, to_float
from simclr_tf.validation import check_number, check_positive_int

# Centre-crop proportion of evaluation images (Inception / SimCLR evaluation preprocessing).
EVAL_CROP_PROPORTION = 0.875

BLUR_SIGMA_RANGE = (0.1, 2.0)

# --- argument checks (run in Python, once per trace) ------------------------------------------------


def check_image_size(image_size, name: str = "image_size") -> int:
    return check_positive_int(name, image_size, hint="It is a number of pixels, e.g. 32 or 224.")


def check_probability(p, name: str) -> float:
    return check_number(name, p, low=0, high=1)


def check_crop_min_area(crop_min_area) -> float:
    return check_number("crop_min_area", crop_min_area, low=0, low_inclusive=False, high=1,
                        hint="It is an area fraction; the paper uses 0.08.")


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


def resize_bicubic(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Bicubic resize to a square, returned as float32 in [0, 1] (uint8 input is rescaled)."""
    scale = 1.0 / 255.0 if image.dtype == tf.uint8 else None
    if image.dtype not in (tf.uint8, tf.float32):
        image, scale = to_float(image), None
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
    min_object_covered: float = 0.1,
) -> tf.Tensor:
    """Samples the box of an Inception crop.

    The box covers a fraction of the image area in `area_range`, and at least `min_object_covered`
    of it, and has a width / height ratio (in pixels) in `aspect_ratio_range`, up to rounding to
    whole pixels. Up to `max_attempts` boxes are drawn; if none fits, the box is the whole image.
    Sampling is TensorFlow's `stateless_sample_distorted_bounding_box` (height uniform for a
    uniform aspect ratio).

    Args:
        image_shape: int tensor or sequence `(height, width, channels)`, e.g. `tf.shape(image)`.
        seed: int32/int64 tensor of shape `(2,)`.
        area_range: pair of floats. Allowed fraction of the image area, `0 < low <= high <= 1`.
            Defaults to `(0.08, 1.0)`.
        aspect_ratio_range: pair of floats. Allowed width / height of the box. Defaults to
            `(3/4, 4/3)`.
        max_attempts: int. Boxes tried before falling back to the whole image. Defaults to `100`.
        min_object_covered: float in [0, 1]. Smallest fraction of the image the box covers. The
            original SimCLR code passes 0.1 with the whole image as the object, which raises the
            default `area_range` floor of 0.08 to 0.1 (without it, 5.5% of the crops are smaller);
            its published numbers were made so, hence the default. Defaults to `0.1`.

    Returns:
        int32 tensor of shape `(4,)`: `(offset_height, offset_width, height, width)`.

    Raises:
        ValueError: if a range, `max_attempts` or `seed` is invalid.

    Example:

    >>> box = random_crop_box((32, 32, 3), tf.constant([1, 2]))
    >>> box.shape
    TensorShape([4])

    Note:
        The original SimCLR code also scales the aspect-ratio range by the image's own aspect
        ratio; here the range is in pixels, as in the Inception paper and torchvision.
    """
    area_range = _check_range(area_range, "area_range", upper=1.0)
    aspect_ratio_range = _check_range(aspect_ratio_range, "aspect_ratio_range", upper=None)
    max_attempts = check_positive_int("max_attempts", max_attempts)
    min_object_covered = check_number("min_object_covered", min_object_covered, low=0.0, high=1.0,
                                      hint="The original uses 0.1.")
    seed = check_seed(seed)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.cast(image_shape, tf.int32),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),  # the whole image is "the object"
        seed=seed,
        min_object_covered=min_object_covered,  # of the whole image: a floor on the area
        aspect_ratio_range=aspect_ratio_range,
        area_range=area_range,
        max_attempts=max_attempts,
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
    output_size = check_image_size(output_size, "output_size")
    image = check_image(image)
    box = random_crop_box(
        tf.shape(image),
        seed,
        area_range=area_range,
        aspect_ratio_range=aspect_ratio_range,
        max_attempts=max_attempts,
    )
    crop = tf.slice(image, [box[0], box[1], 0], [box[2], box[3], -1])  # (h, w, 3)
    return resize_bicubic(crop, output_size)

# --- flip -------------------------------------------------------------------------------------------


def sample_flip(seed: tf.Tensor) -> dict:
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
    return apply_view_ops(image, sample_flip(check_seed(seed)))

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
    image_size = check_image_size(image_size)
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
    kernel_size = check_positive_int("kernel_size", kernel_size, hint="See `blur_kernel_size`.")
    if kernel_size % 2 == 0:
        raise ValueError(
            "`kernel_size` must be a positive odd integer (see `blur_kernel_size`). "
            f"Received: kernel_size={kernel_size!r}."
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
    blur = _blur_xla if image.shape.is_fully_defined() else blur_planar
    planes = blur(tf.transpose(image, to_planar), tf.cast(sigma, tf.float32), kernel_size=kernel_size)
    return tf.transpose(planes, to_image)


_blur_xla = tf.function(blur_planar, jit_compile=True, autograph=False)


def random_blur_sigma(seed) -> tf.Tensor:
    """Draws the blur's standard deviation, uniform in `[0.1, 2.0]` pixels (float32 scalar).

    Args:
        seed: int32/int64 tensor of shape `(2,)`.

    Returns:
        float32 scalar tensor.
    """
    low, high = BLUR_SIGMA_RANGE
    return tf.random.stateless_uniform((), check_seed(seed), minval=low, maxval=high)


def sample_blur(seed: tf.Tensor, p: float) -> dict:
    seeds = split_seed(seed, 2)  # (2, 2): coin, sigma
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
    p = check_probability(p, "p")
    params = sample_blur(check_seed(seed), p)
    return apply_view_ops(image, params, kernel_size=kernel_size)

# --- evaluation ------------------------------------------------------------------------------------


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
