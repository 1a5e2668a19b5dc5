"""Issue 18, item 8: the exported encoder takes images as users have them (uint8, float64,
grayscale, RGBA, one image without a batch), in the SavedModel and in `encoder.keras`, with the
features of the float32 [0, 1] RGB batch; other ranks and channel counts are a clear error; loading
the SavedModel logs no warning and gradients flow through it."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from model_factory import simclr_model

from simclr_tf import export
from simclr_tf.models.images import ImageEncoder, standardize_images


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(3)
    # global_bn as the command line builds it: its all-reduce was what made loading warn.
    model = simclr_model(resnet_depth=18, cifar_stem=True, num_proj_layers=2, num_classes=3, global_bn=True)
    model(tf.zeros([1, 16, 16, 3]))
    for variable in model.weights:  # batch-norm statistics that make inference differ from training
        if "moving_variance" in variable.path:
            variable.assign(np.full(variable.shape, 1.5, np.float32))
    written = export.export_model(model, str(tmp_path_factory.mktemp("export")), step=3, image_size=16)
    return model, written


def _uint8(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


def _forms(pixels):
    """Each accepted form of the images `pixels` (uint8, (B, H, W, 3)), and the float32 [0, 1] RGB
    batch (or image) it stands for."""
    rgb = pixels.astype(np.float32) / 255.0
    grey = rgb[..., :1]
    return {
        "uint8": (pixels, rgb),
        "uint16": (pixels.astype(np.uint16) * 257, rgb),
        "float64": (rgb.astype(np.float64), rgb),
        "grayscale": (grey, np.repeat(grey, 3, axis=-1)),
        "grayscale uint8": (pixels[..., :1], np.repeat(rgb[..., :1], 3, axis=-1)),
        "rgba": (np.concatenate([rgb, np.full_like(rgb[..., :1], 0.25)], axis=-1), rgb),
        "one image": (rgb[1], rgb[1]),
        "one uint8 grayscale image": (pixels[0, ..., :1], np.repeat(rgb[0, ..., :1], 3, axis=-1)),
    }


FORMS = sorted(_forms(_uint8((2, 4, 4, 3))))


def test_standardize_images_by_hand():
    pixels = np.array([[[[0, 51, 255]]]], np.uint8)  # one pixel
    batch, single = standardize_images(pixels)
    np.testing.assert_allclose(batch, [[[[0.0, 0.2, 1.0]]]], atol=1e-7)
    assert batch.dtype == "float32" and single is False
    grey, single = standardize_images(np.array([[[0.5]]]))  # (H, W, 1) float64
    np.testing.assert_array_equal(grey, [[[[0.5, 0.5, 0.5]]]])
    assert single is True
    rgba, _ = standardize_images(np.array([[[[0.1, 0.2, 0.3, 0.9]]]], np.float32))
    np.testing.assert_allclose(rgba, [[[[0.1, 0.2, 0.3]]]])


@pytest.mark.parametrize("images, match", [
    (np.zeros((2, 4, 4, 2), np.float32), r"2 channels are none of these.*shape \(2, 4, 4, 2\)"),
    (np.zeros((4, 3), np.float32), r"rank 2 is neither.*shape \(4, 3\)"),
    (np.zeros((1, 2, 4, 4, 3), np.float32), r"rank 5 is neither"),
    (np.zeros((1, 4, 4, 3), np.int32), r"the dtype int32 is none of these"),
])
def test_standardize_images_says_what_is_accepted(images, match):
    with pytest.raises(ValueError, match=match):
        standardize_images(images)


@pytest.mark.parametrize("form", FORMS)
def test_saved_model_takes_each_form_with_the_same_features(exported, form):
    _, exported = exported
    loaded = tf.saved_model.load(exported["saved_model"])
    images, reference = _forms(_uint8((2, 16, 16, 3)))[form]
    for training in (False, True):
        if training and reference.ndim == 3:
            continue  # batch statistics of one image: the reference path would need the same batch
        got = loaded(tf.constant(images), training=training)
        expected = loaded(tf.constant(reference), training=training)
        assert set(got) == set(expected)
        # In training mode the projection head normalises a batch of two by its own statistics,
        # which turns rounding differences of 1e-7 into 1e-4: the encoder's features are compared.
        names = sorted(expected) if not training else ["block_group4", "final_avg_pool"]
        for name in names:
            value = expected[name]
            assert got[name].shape == value.shape, name
            np.testing.assert_allclose(got[name], value, atol=1e-5, rtol=1e-5, err_msg=name)
    if reference.ndim == 3:  # one image: the batch of one's features, without the batch dimension
        batch = loaded(tf.constant(reference[None]))["final_avg_pool"]
        np.testing.assert_allclose(loaded(tf.constant(images))["final_avg_pool"], batch[0], atol=1e-5)


@pytest.mark.parametrize("form", FORMS)
def test_keras_file_takes_each_form_with_the_same_features(exported, form):
    _, exported = exported
    encoder = keras.saving.load_model(exported["keras_file"])  # safe mode stays on
    assert isinstance(encoder, ImageEncoder)
    loaded = tf.saved_model.load(exported["saved_model"])
    images, reference = _forms(_uint8((2, 16, 16, 3), seed=1))[form]
    got = encoder(images, training=False)
    expected = loaded(tf.constant(reference))  # the SavedModel on the float32 RGB batch
    for name in ("block_group2", "final_avg_pool"):
        assert tuple(got[name].shape) == tuple(expected[name].shape), name
        np.testing.assert_allclose(got[name], expected[name], atol=1e-5, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("shape", [(2, 16, 16, 2), (16, 3), (1, 1, 16, 16, 3)])
def test_saved_model_refuses_other_ranks_and_channel_counts_clearly(exported, shape):
    _, exported = exported
    loaded = tf.saved_model.load(exported["saved_model"])
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"takes images of shape \(batch_size, height, width, channels\) or "
                             r"\(height, width, channels\), with 1 \(grayscale\), 3 \(RGB\) or 4"):
        loaded(tf.zeros(shape))


@pytest.mark.slow
def test_loading_the_saved_model_logs_no_warning_and_gradients_flow(exported, caplog):
    model, written = exported
    with caplog.at_level("WARNING"):
        loaded = tf.saved_model.load(written["saved_model"])
    assert "Will likely fail if a gradient is requested" not in caplog.text
    assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text
    pixels = _uint8((2, 16, 16, 3), seed=2)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(loaded(tf.constant(pixels), training=True)["final_avg_pool"] ** 2)
    got = tape.gradient(loss, loaded.trainable_variables)
    encoder_weights = model.encoder.trainable_weights
    with tf.GradientTape() as tape:
        features = model.encoder(tf.constant(pixels / 255.0, tf.float32), training=True)
        loss = tf.reduce_sum(features["final_avg_pool"] ** 2)
    expected = tape.gradient(loss, encoder_weights)
    heads = got[len(expected):]  # not on the way to final_avg_pool
    assert heads and all(g is None or not np.any(g) for g in heads)
    for weight, g, e in zip(encoder_weights, got, expected, strict=False):
        np.testing.assert_allclose(g, e, atol=1e-4, rtol=1e-3, err_msg=weight.path)
