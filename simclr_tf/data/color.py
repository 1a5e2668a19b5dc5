"""SimCLR's colour distortion as pure, seeded TensorFlow functions: colour jitter and colour drop.

With probability 0.8 the colour jitter changes brightness, contrast, saturation and hue, in a random
order, by random factors whose ranges grow with the strength `s` (`color_jitter_ranges`); then with
probability 0.2 the colour drop turns the view grayscale. The operations run in the fused per-view
kernel (`simclr_tf.data.kernel`), computed with elementwise ops that XLA fuses; they equal
`tf.image.adjust_contrast`, `adjust_saturation` and `adjust_hue` to float rounding.

Seeds, dtypes and ranges follow `simclr_tf.data.ops`: stateless, `(2,)` int seeds; uint8 or float
images of shape `(height, width, 3)` in, float32 in `[0, 1]` out.

Example:

>>> random_color_jitter(tf.fill((4, 4, 3), 0.5), tf.constant([0, 1]), strength=0.5).dtype
tf.float32

References:
    - Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
      2020. https://arxiv.org/abs/2002.05709 (appendix A: the colour distortion).
    - Chen et al., "Big Self-Supervised Models are Strong Semi-Supervised Learners", 2020.
      https://arxiv.org/abs/2006.10029 (SimCLRv2; its code's multiplicative brightness).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from simclr_tf.config import COLOR_JITTER_IMPLS
from simclr_tf.data.kernel import apply_view_ops, check_seed, split_seed
from simclr_tf.data.ops import check_probability
from simclr_tf.validation import check_number, check_one_of

# --- argument checks (run in Python, once per trace) ------------------------------------------------


def check_strength(strength) -> float:
    return check_number("color_jitter_strength", strength, low=0,
                        hint="The paper uses 1.0 for ImageNet, 0.5 for CIFAR.")


def check_impl(impl) -> str:
    return check_one_of("color_jitter_impl", impl, COLOR_JITTER_IMPLS,
                        hint="'v2': multiplicative brightness of the SimCLRv2 code, 'v1': additive "
                             "brightness.")


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
    s = check_strength(strength)
    impl = check_impl(impl)
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
    seed = check_seed(seed)
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
    impl = check_impl(impl)
    params = {
        "jitter": tf.constant(True),
        "order": tf.cast(order, tf.int32),
        "factors": tf.cast(factors, tf.float32),
    }
    return apply_view_ops(image, params, impl=impl)


def sample_color(seed: tf.Tensor, strength: float, impl: str, jitter_probability: float,
                  drop_probability: float) -> dict:
    seeds = split_seed(seed, 2)  # (2, 2): coins, jitter parameters
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
    strength = check_strength(strength)
    impl = check_impl(impl)
    if strength == 0.0:
        return apply_view_ops(image, {})
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
    return apply_view_ops(image, {"drop": tf.constant(True)})


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
    strength = check_strength(strength)
    impl = check_impl(impl)
    jitter_probability = check_probability(jitter_probability, "jitter_probability")
    drop_probability = check_probability(drop_probability, "drop_probability")
    params = sample_color(check_seed(seed), strength, impl, jitter_probability, drop_probability)
    return apply_view_ops(image, params, impl=impl)

