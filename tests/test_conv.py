"""`simclr_tf.models.conv`: the input gradient by forward convolutions against TensorFlow's own."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.models.conv import (
    Conv2D,
    conv2d,
    default_forward_input_gradient,
    input_gradient,
    resolve_input_gradient,
)


def _forward(layer: Conv2D) -> Conv2D:
    """The layer with the forward-convolution path on, whatever this machine's default."""
    layer.forward_input_gradient = True
    return layer


def _gradients(fn, x, w):
    with tf.GradientTape() as tape:
        tape.watch([x, w])
        y = fn(x, w)
        loss = tf.reduce_sum(y * tf.sin(y))  # a gradient that differs per output position
    return y, tape.gradient(loss, [x, w])


def _strided_pointwise_reference(x, w, stride):
    """NumPy's output and gradients (of `sum(y sin y)`) for a 1x1 convolution of a stride.

    TensorFlow 2.21's own CPU gradient is no reference here: for few input channels it corrupts
    memory and aborts the process on an AVX-512 CPU (see `simclr_tf.models.conv`). A 1x1 convolution
    of stride s reads every s-th position in both padding modes: y = x[::s, ::s] @ w, so
    dx[::s, ::s] = dy @ w^T (zero elsewhere) and dw = x[::s, ::s]^T dy.
    """
    picked = x[:, ::stride, ::stride, :]
    y = picked @ w[0, 0]
    dy = np.sin(y) + y * np.cos(y)
    dx = np.zeros_like(x)
    dx[:, ::stride, ::stride, :] = dy @ w[0, 0].T
    dw = np.einsum("nhwc,nhwd->cd", picked, dy)[None, None]
    return y, dx, dw


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
    if k == 1 and stride > 1:
        y_ref, dx_ref, dw_ref = _strided_pointwise_reference(x.numpy(), w.numpy(), stride)
    else:
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
    ours = _forward(Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="conv"))
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
    assert _forward(Conv2D(2, 3))._forward_gradient(x)
    assert not _forward(Conv2D(2, 3, dilation_rate=2))._forward_gradient(x)
    assert not _forward(Conv2D(4, 3, groups=2))._forward_gradient(x)
    assert not _forward(Conv2D(2, 3))._forward_gradient(keras.KerasTensor([None, None, None, 2]))
    # Strided: only to a small output map (4x4 = 16 positions at most).
    assert _forward(Conv2D(2, 3, strides=2, padding="same"))._forward_gradient(x)  # 8x8 -> 4x4
    nine = tf.zeros([1, 9, 9, 2])
    assert not _forward(Conv2D(2, 3, strides=2, padding="same"))._forward_gradient(nine)  # 5x5
    assert _forward(Conv2D(2, 3, strides=2))._forward_gradient(tf.zeros([1, 10, 10, 2]))  # valid: 10 -> 4
    assert not _forward(Conv2D(2, 3, strides=2))._forward_gradient(tf.zeros([1, 18, 18, 2]))  # valid: 18 -> 8
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


def test_default_path_follows_the_machine():
    """Forward convolutions on CPU-only machines without AVX-512; TensorFlow's kernel elsewhere."""
    avx2 = frozenset({"sse4_2", "avx", "avx2", "fma"})
    avx512 = avx2 | {"avx512f", "avx512bw", "avx512_bf16"}
    assert default_forward_input_gradient(avx2, gpus=False)
    assert not default_forward_input_gradient(avx512, gpus=False)
    assert not default_forward_input_gradient(avx2, gpus=True)
    assert not default_forward_input_gradient(None, gpus=False)  # flags unreadable: TensorFlow's own
    # A new layer takes this machine's default, and forward convolutions for a strided 1x1 always.
    x = tf.zeros([1, 8, 8, 2])
    assert Conv2D(2, 3).forward_input_gradient is None
    assert Conv2D(2, 3)._forward_gradient(x) is default_forward_input_gradient()
    assert Conv2D(2, 3, strides=2)._forward_gradient(x) is default_forward_input_gradient()
    assert Conv2D(2, 1, strides=2)._forward_gradient(x)
    assert Conv2D(2, 1)._forward_gradient(x) is default_forward_input_gradient()
    assert [resolve_input_gradient(c) for c in ("auto", "forward", "native")] == [None, True, False]
    with pytest.raises(ValueError, match="auto"):
        resolve_input_gradient("fast")
