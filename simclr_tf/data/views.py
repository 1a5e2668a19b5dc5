"""Whole views: SimCLR's two augmented views, and the fine-tuning and evaluation preprocessing.

One SimCLR view of an image is: random resized crop (the Inception crop) and horizontal flip, then
colour distortion (colour jitter with p = 0.8, then colour drop to grayscale with p = 0.2), then
Gaussian blur (p = 0.5, ImageNet recipe only). `two_views` draws two independent views of one image.

The augmentation settings travel as one value, a `simclr_tf.config.AugmentConfig`. Its `None`
fields mean "the paper's default for this image size" and are filled by
`AugmentConfig.for_image_size` (see `resolve_augment`):

- ImageNet (images larger than 32 px): `color_jitter_strength=1.0`, `use_blur=True`.
- CIFAR recipe (images of 32 px or less): `color_jitter_strength=0.5`, `use_blur=False`
  (SimCLR, appendix B.9).

Seeds are stateless `(2,)` int tensors, split for the sub-operations, so the same seed gives the
same view eagerly, inside `tf.function` and inside `tf.data.Dataset.map`. Images enter as `uint8`
(0-255) or float (0-1) of shape `(height, width, 3)` and leave as float32 in `[0, 1]`.

Example:

>>> image = tf.zeros((64, 64, 3), tf.uint8)
>>> view_1, view_2 = two_views(image, tf.constant([0, 42]), image_size=32)
>>> view_1.shape, view_1.dtype
(TensorShape([32, 32, 3]), tf.float32)

References:
    - Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
      2020. https://arxiv.org/abs/2002.05709 (appendix A: the augmentations).
"""

from __future__ import annotations

import tensorflow as tf

from simclr_tf.config import SMALL_IMAGE_SIZE, AugmentConfig
from simclr_tf.data.color import check_impl, check_strength
from simclr_tf.data.kernel import apply_view_ops, check_image, check_seed, split_seed
from simclr_tf.data.ops import (
    center_crop_box,
    check_crop_min_area,
    check_image_size,
    random_resized_crop,
    resize_bicubic,
    sample_flip,
)
from simclr_tf.data.policy import apply_policy, resolve_policy
from simclr_tf.validation import check_one_of


def resolve_augment(augment: AugmentConfig, image_size: int) -> AugmentConfig:
    """`augment` with its `None` fields filled for `image_size`, every field checked.

    Runs in Python, so the pipelines call it when they are built, before any `tf.data` tracing.

    Args:
        augment: `AugmentConfig`. The augmentation settings.
        image_size: int. Side of the square views; picks the defaults of `None` fields.

    Returns:
        The resolved `AugmentConfig`: no field is `None`.

    Raises:
        TypeError: `augment` is not an `AugmentConfig`.
        ValueError: `image_size` or a field is invalid (the message names it).

    Example:

    >>> resolve_augment(AugmentConfig(), 32).color_jitter_strength
    0.5
    """
    if not isinstance(augment, AugmentConfig):
        raise TypeError(
            "`augment` must be a simclr_tf.config.AugmentConfig, e.g. "
            f"AugmentConfig(color_jitter_strength=0.5). Received: {type(augment).__name__}."
        )
    image_size = check_image_size(image_size)
    augment = augment.for_image_size(image_size)
    check_strength(augment.color_jitter_strength)
    check_one_of("use_blur", augment.use_blur, (True, False))
    check_impl(augment.color_jitter_impl)
    check_crop_min_area(augment.crop_min_area)
    check_one_of("random_flip", augment.random_flip, (True, False))
    for flag in ("view_a", "view_b"):
        resolve_policy(getattr(augment, flag), augment, flag)
    return augment


def augment_view(
    image, seed, *, image_size: int, augment: AugmentConfig = AugmentConfig(),  # noqa: B008 (frozen)
    policy: str | None = None,
) -> tf.Tensor:
    """One SimCLR view: crop + flip, colour jitter / drop, then (optionally) blur; or any policy.

    Args:
        image: uint8 (0-255) or float (0-1) tensor of shape `(height, width, 3)`.
        seed: int32/int64 tensor of shape `(2,)`.
        image_size: int. Side of the square output.
        augment: `AugmentConfig`. Colour strength, blur, colour-jitter implementation, smallest
            crop area and flips; `None` fields take the paper's default for `image_size`.
            Defaults to `AugmentConfig()`.
        policy: str or None. The view policy (`simclr_tf.data.policy`), e.g. `"crop,rotate"`;
            None: `augment.view_a`, which is `default`, SimCLR's view, unless set.

    Returns:
        float32 tensor of shape `(image_size, image_size, 3)` in `[0, 1]`.

    Raises:
        TypeError: `augment` is not an `AugmentConfig`.
        ValueError: if an argument is invalid (the message names it).

    Example:

    >>> view = augment_view(tf.zeros((40, 40, 3), tf.uint8), tf.constant([3, 4]), image_size=32,
    ...                     augment=AugmentConfig(color_jitter_strength=0.5, use_blur=False))
    >>> view.shape
    TensorShape([32, 32, 3])

    References:
        Chen et al., 2020, appendix A. https://arxiv.org/abs/2002.05709
    """
    image_size = check_image_size(image_size)
    augment = resolve_augment(augment, image_size)
    flag = "view_a" if policy is None else "policy"
    transforms = resolve_policy(augment.view_a if policy is None else policy, augment, flag)
    # `default` is crop, then flip, colour and blur with the seeds split in four (crop, flip,
    # colour, blur), the last three in one fused kernel call: SimCLR's view as it always was.
    return apply_policy(image, check_seed(seed), transforms, image_size=image_size,
                        impl=augment.color_jitter_impl)


def two_views(
    image, seed, *, image_size: int, augment: AugmentConfig = AugmentConfig()  # noqa: B008 (frozen)
) -> tuple[tf.Tensor, tf.Tensor]:
    """Two independent SimCLR views of one image (see `augment_view` for the arguments).

    The first view follows the policy `augment.view_a`, the second `augment.view_b` (both
    `default`, SimCLR's view, unless set): a transformation on one branch only is
    `AugmentConfig(view_a="crop", view_b="crop,rotate")`.

    Returns:
        `(view_1, view_2)`, each float32 of shape `(image_size, image_size, 3)` in `[0, 1]`.

    Example:

    >>> v1, v2 = two_views(tf.zeros((32, 32, 3), tf.uint8), tf.constant([0, 7]), image_size=32)
    """
    augment = resolve_augment(augment, image_size)
    seeds = split_seed(check_seed(seed), 2)  # (2, 2)
    return (
        augment_view(image, seeds[0], image_size=image_size, augment=augment, policy=augment.view_a),
        augment_view(image, seeds[1], image_size=image_size, augment=augment, policy=augment.view_b),
    )


def finetune_preprocess(
    image, seed, *, image_size: int, augment: AugmentConfig = AugmentConfig()  # noqa: B008 (frozen)
) -> tf.Tensor:
    """Training augmentation of linear evaluation and fine-tuning: Inception crop + flip only.

    Used at every image size, CIFAR included, as in the original code. Of `augment` only
    `crop_min_area` and `random_flip` apply (no colour distortion, no blur), so fine-tuning
    crops and flips like pretraining did (no flips for digits-like data).

    Args:
        image: uint8 (0-255) or float (0-1) tensor of shape `(height, width, 3)`.
        seed: int32/int64 tensor of shape `(2,)`.
        image_size: int. Side of the square output.
        augment: `AugmentConfig`. Smallest crop area and flips. Defaults to `AugmentConfig()`
            (area 0.08 to 1, flips on).

    Returns:
        float32 tensor of shape `(image_size, image_size, 3)` in `[0, 1]`.

    Raises:
        TypeError: `augment` is not an `AugmentConfig`.
        ValueError: if an argument is invalid.

    Example:

    >>> finetune_preprocess(tf.zeros((40, 48, 3), tf.uint8), tf.constant([0, 1]), image_size=32).shape
    TensorShape([32, 32, 3])
    """
    image_size = check_image_size(image_size)
    augment = resolve_augment(augment, image_size)
    seeds = split_seed(check_seed(seed), 2)  # (2, 2): crop, flip
    view = random_resized_crop(
        image, seeds[0], output_size=image_size, area_range=(augment.crop_min_area, 1.0)
    )
    params = sample_flip(seeds[1]) if augment.random_flip else {}
    return tf.ensure_shape(apply_view_ops(view, params), (image_size, image_size, 3))


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
    image_size = check_image_size(image_size)
    image = check_image(image)
    if image_size > SMALL_IMAGE_SIZE:
        shape = tf.shape(image)
        box = center_crop_box(shape[0], shape[1])
        image = tf.slice(image, [box[0], box[1], 0], [box[2], box[3], -1])
    return tf.ensure_shape(resize_bicubic(image, image_size), (image_size, image_size, 3))
