"""View policies (simclr_tf.data.policy): parsing, the default policy is SimCLR's view bit for bit,
spelled-out policies equal the single ops, and a transformation on one branch only."""

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.config import VIEW_TRANSFORMS, AugmentConfig, Config, ConfigError
from simclr_tf.data import color, ops, policy, transforms, views


def _image(height=20, width=24, seed=0):
    return tf.constant(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _seed(a, b=7):
    return tf.constant([a, b], tf.int64)


def test_one_vocabulary():
    assert set(policy.PARAMETERS) == set(VIEW_TRANSFORMS)


def test_parse_names_and_parameters():
    assert policy.parse_policy("crop, color(strength=0.5,p=1) ,rotate") == (
        ("crop", {}), ("color", {"strength": 0.5, "p": 1.0}), ("rotate", {}))
    assert policy.parse_policy("identity") == policy.parse_policy("") == ()
    assert [n for n, _ in policy.parse_policy("default")] == ["crop", "flip", "color", "blur"]


def test_resolve_fills_parameters_from_the_augment_config():
    augment = AugmentConfig(color_jitter_strength=0.5, use_blur=False, crop_min_area=0.2, random_flip=False)
    assert policy.resolve_policy("default", augment) == (
        ("crop", {"area": 0.2}), ("color", {"strength": 0.5, "p": 0.8, "drop_p": 0.2}))
    assert policy.resolve_policy("crop,flip,blur", augment) == (  # spelled out: as written
        ("crop", {"area": 0.2}), ("flip", {"p": 0.5}), ("blur", {"p": 0.5}))
    assert policy.describe_policy(policy.resolve_policy("crop(area=0.5),noise", augment)) == \
        "crop(area=0.5),noise(std=0.1,p=1)"


@pytest.mark.parametrize(
    "spec, match",
    [
        ("crop,rotat", r"`view_b`: unknown transformation 'rotat'. Use names of crop, flip"),
        ("noise(sigma=0.1)",
         r"`view_b`: `noise` takes the parameters std, p as key=value. Received: 'sigma=0.1'"),
        ("noise(std=big)", r"parameter `std` of `noise` must be a number"),
        ("noise(std=-1)", r"`view_b`: noise\(std\)` must be a number >= 0"),
        ("cutout(low=0.5,high=0.2)", r"cutout needs low <= high"),
        ("flip(p=2)", r"flip\(p\)` must be a number in \[0, 1\]"),
    ],
)
def test_bad_policies_name_the_flag_and_the_fix(spec, match):
    augment = AugmentConfig().for_image_size(32)
    with pytest.raises(ValueError, match=match):
        policy.resolve_policy(spec, augment, "view_b")


def test_config_validation_checks_the_names():
    Config(augment=AugmentConfig(view_a="crop", view_b="crop,noise(std=0.2),rotate")).validate()
    with pytest.raises(ConfigError,
                       match=r"`view_b` must be a named policy \(default, identity\).*'crop,spin'"):
        Config(augment=AugmentConfig(view_b="crop,spin")).validate()


def _two(spec_a, spec_b, image, seed, image_size=12, **fields):
    augment = AugmentConfig(view_a=spec_a, view_b=spec_b, **fields)
    return views.two_views(image, seed, image_size=image_size, augment=augment)


@pytest.mark.parametrize("image_size, fields", [
    (12, {}),  # strength 0.5, no blur, flips
    (40, {}),  # strength 1.0, blur, flips
    (12, {"random_flip": False, "crop_min_area": 0.2}),  # digits
])
def test_default_is_its_spelled_out_form_bit_for_bit(image_size, fields):
    image = _image(48, 40, seed=1)
    augment = AugmentConfig(**fields).for_image_size(image_size)
    spelled = ("crop," + ("flip," if augment.random_flip else "") + "color"
               + (",blur" if augment.use_blur else ""))
    seed = _seed(7)
    default = _two("default", "default", image, seed, image_size, **fields)
    explicit = _two(spelled, spelled, image, seed, image_size, **fields)
    for a, b in zip(default, explicit, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # and `color` is `jitter` then `drop` with the same seed
    split = _two(spelled.replace("color", "jitter,drop"), "default", image, seed, image_size, **fields)
    np.testing.assert_array_equal(split[0].numpy(), default[0].numpy())


def test_one_branch_only():
    """view_a = crop, view_b = crop then rotate: the crops are the default view's crops."""
    image, seed = _image(), _seed(3)
    view_1, view_2 = _two("crop", "crop,rotate", image, seed, crop_min_area=0.08)
    seeds = tf.random.experimental.stateless_split(seed, 2)
    for view_seed, view, rotated in ((seeds[0], view_1, False), (seeds[1], view_2, True)):
        crop_seed = tf.random.experimental.stateless_split(view_seed, 4)[0]
        expected = ops.random_resized_crop(image, crop_seed, output_size=12, area_range=(0.08, 1.0))
        if rotated:
            rotate_seed = tf.random.experimental.stateless_fold_in(view_seed, 1001)
            expected = transforms.random_rotate(expected, rotate_seed)
        np.testing.assert_array_equal(view.numpy(), expected.numpy())


def test_a_policy_equals_the_single_ops_one_after_another():
    image, seed = _image(), _seed(5)
    spec = "crop(area=0.3),color(strength=1),cutout(low=0.2,high=0.4),flip,noise(std=0.05),sobel(p=0.5)"
    view = views.augment_view(image, seed, image_size=12, policy=spec)
    seeds = tf.random.experimental.stateless_split(seed, 4)
    fold = lambda k: tf.random.experimental.stateless_fold_in(seed, 1000 + k)
    expected = ops.random_resized_crop(image, seeds[0], output_size=12, area_range=(0.3, 1.0))
    expected = color.random_color_jitter(expected, seeds[2], strength=1.0)
    expected = transforms.random_cutout(expected, fold(2), side_range=(0.2, 0.4))
    expected = ops.random_flip(expected, seeds[1])  # a standard op keeps its slot wherever it is
    expected = transforms.random_gaussian_noise(expected, fold(4), std=0.05)
    expected = transforms.random_sobel(expected, fold(5), p=0.5)
    np.testing.assert_allclose(view.numpy(), expected.numpy(), atol=1e-6)


def test_identity_only_resizes_and_a_late_crop_crops_the_resized_image():
    image = _image()
    np.testing.assert_allclose(views.augment_view(image, _seed(0), image_size=12, policy="identity"),
                               ops.resize_bicubic(image, 12), atol=0)
    seed = _seed(2)
    view = views.augment_view(image, seed, image_size=12, policy="rotate,crop")
    rotated = transforms.random_rotate(ops.resize_bicubic(image, 12),
                                       tf.random.experimental.stateless_fold_in(seed, 1000))
    crop_seed = tf.random.experimental.stateless_split(seed, 4)[0]
    expected = ops.random_resized_crop(rotated, crop_seed, output_size=12, area_range=(0.08, 1.0))
    np.testing.assert_allclose(view.numpy(), expected.numpy(), atol=1e-6)


def test_every_transformation_in_a_tf_data_pipeline():
    spec = ",".join(VIEW_TRANSFORMS)
    augment = AugmentConfig(view_a=spec, view_b="crop,sobel")
    image = _image()

    def fn(seed):
        return views.two_views(image, seed, image_size=12, augment=augment)

    eager = fn(_seed(4))
    in_data = next(iter(tf.data.Dataset.from_tensors(_seed(4)).map(fn)))
    for a, b in zip(eager, in_data, strict=True):
        assert a.shape == (12, 12, 3)
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
