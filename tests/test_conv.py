"""`simclr_tf.models.conv`: the input gradient by forward convolutions against TensorFlow's own."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.models.conv import Conv2D, conv2d, input_gradient


def _gradients(fn, x, w):
    with tf.GradientTape() as tape:
        tape.watch([x, w])
        y = fn(x, w)
        loss = tf.reduce_sum(y * tf.sin(y))  # a gradient that differs per output position
    return y, tape.gradient(loss, [x, w])


@pytest.mark.parametrize(
    "height, width, k, stride, padding",
    [
        (16, 16, 3, 1, "SAME"),   # the ResNet's stride-1 3x3
        (2, 2, 3, 1, "SAME"),     # the quickstart's last stage (2x2 maps)
        (18, 18, 3, 2, "VALID"),  # fixed padding, then a stride-2 3x3
        (17, 17, 3, 2, "VALID"),  # odd size: the last row of the input gets no gradient
        (16, 16, 1, 2, "VALID"),  # the projection shortcut: odd positions get no gradient
        (38, 38, 7, 2, "VALID"),  # the ImageNet stem after its fixed padding
        (9, 7, 7, 2, "VALID"),    # non-square input, kernel larger than the stride
        (8, 8, 3, 2, "SAME"),     # 'same' with a stride: asymmetric padding
        (11, 11, 7, 2, "SAME"),
        (5, 6, 3, 1, "VALID"),
        (4, 4, 1, 1, "SAME"),
        (7, 7, 3, 3, "VALID"),    # stride 3: nine phases
    ],
)
def test_gradients_match_tensorflow(height, width, k, stride, padding):
    rng = np.random.default_rng(height * 100 + k * 10 + stride)
    x = tf.constant(rng.normal(size=(3, height, width, 4)), tf.float32)
    w = tf.constant(rng.normal(size=(k, k, 4, 5)), tf.float32)
    y_ref, (dx_ref, dw_ref) = _gradients(lambda a, b: tf.nn.conv2d(a, b, stride, padding), x, w)
    y, (dx, dw) = _gradients(lambda a, b: conv2d(a, b, (stride, stride), padding), x, w)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    scale = float(tf.reduce_max(tf.abs(dx_ref)))
    np.testing.assert_allclose(dx / scale, dx_ref / scale, atol=2e-6)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-4)


def test_input_gradient_hand_worked():
    """1-D in effect: a 1x3 kernel (1, 2, 3) of stride 2 over 5 inputs, dy = (1, 10).

    y[0] = x0 + 2 x1 + 3 x2, y[1] = x2 + 2 x3 + 3 x4, so dx = (1, 2, 3 + 10, 20, 30).
    """
    kernel = tf.reshape(tf.constant([1.0, 2.0, 3.0]), [1, 3, 1, 1])
    dy = tf.reshape(tf.constant([1.0, 10.0]), [1, 1, 2, 1])
    dx = input_gradient(dy, kernel, (1, 5), (1, 2))
    np.testing.assert_array_equal(tf.reshape(dx, [-1]), [1.0, 2.0, 13.0, 20.0, 30.0])


def test_layer_is_keras_conv2d_with_the_same_gradients():
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(2, 4, 4, 8)), tf.float32)
    ours = Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="conv")
    plain = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="conv")
    ours.build(x.shape)
    plain.build(x.shape)
    plain.set_weights(ours.get_weights())
    assert ours.get_config() == plain.get_config()
    grads = []
    for layer in (ours, plain):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.square(layer(x)))
        grads.append(tape.gradient(loss, [x, layer.kernel]))
    np.testing.assert_allclose(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-5)


def test_layer_takes_the_parent_path_where_it_does_not_apply():
    x = tf.zeros([1, 8, 8, 2])
    assert Conv2D(2, 3)._forward_gradient(x)
    assert not Conv2D(2, 3, dilation_rate=2)._forward_gradient(x)
    assert not Conv2D(4, 3, groups=2)._forward_gradient(x)
    assert not Conv2D(2, 3)._forward_gradient(keras.KerasTensor([None, None, None, 2]))
    # Strided: only to a small output map (4x4 = 16 positions at most).
    assert Conv2D(2, 3, strides=2, padding="same")._forward_gradient(x)  # 8x8 -> 4x4
    assert not Conv2D(2, 3, strides=2, padding="same")._forward_gradient(tf.zeros([1, 9, 9, 2]))  # 5x5
    assert Conv2D(2, 3, strides=2)._forward_gradient(tf.zeros([1, 10, 10, 2]))  # valid: 10 -> 4
    assert not Conv2D(2, 3, strides=2)._forward_gradient(tf.zeros([1, 18, 18, 2]))  # valid: 18 -> 8
    layer = Conv2D(2, 3)
    layer.forward_input_gradient = False
    assert not layer._forward_gradient(x)
    # The dilated one still computes what Keras' layer computes.
    dilated = Conv2D(3, 3, dilation_rate=2, padding="same")
    reference = keras.layers.Conv2D(3, 3, dilation_rate=2, padding="same")
    x = tf.constant(np.random.default_rng(1).normal(size=(1, 8, 8, 2)), tf.float32)
    dilated.build(x.shape)
    reference.build(x.shape)
    reference.set_weights(dilated.get_weights())
    np.testing.assert_allclose(dilated(x), reference(x), rtol=1e-5, atol=1e-5)


def test_keras_file_round_trip(tmp_path):
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, Conv2D(4, 3, strides=2, name="conv")(inputs))
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.get_layer("conv")) is Conv2D
    x = np.random.default_rng(2).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6, atol=1e-6)
