"""`simclr_tf.models.conv`: its gradients against a NumPy reference, and which path each layer takes."""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.models.conv import (
    Conv2D,
    conv2d,
    default_forward_input_gradient,
    filter_gradient,
    input_gradient,
    resolve_filter_gradient,
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


def _reference(x, w, stride, padding):
    """NumPy's output and gradients (of `sum(y sin y)`) of a convolution, tap by tap, in float64.

    Not TensorFlow's gradient: on AVX-512 CPUs its CPU input gradient corrupts the heap for few
    channels, as these tests use (see `simclr_tf.models.conv`). Tap (i, j) reads the padded input
    at every s-th position from (i, j): y = sum_ij x_ij @ w[i, j], dx_ij += dy @ w[i, j]^T,
    dw[i, j] = x_ij^T dy. 'SAME' pads as TensorFlow: ceil(size / s) outputs, the odd pixel after.
    """
    x, w = x.astype(np.float64), w.astype(np.float64)
    k, pads = w.shape[0], []
    for size in x.shape[1:3]:
        total = max((-(-size // stride) - 1) * stride + k - size, 0) if padding == "SAME" else 0
        pads.append((total // 2, total - total // 2))
    xp = np.pad(x, [(0, 0), *pads, (0, 0)])
    out_h, out_w = (xp.shape[1] - k) // stride + 1, (xp.shape[2] - k) // stride + 1

    def tap(i, j):
        return (slice(None), slice(i, i + (out_h - 1) * stride + 1, stride),
                slice(j, j + (out_w - 1) * stride + 1, stride), slice(None))

    y = sum(xp[tap(i, j)] @ w[i, j] for i in range(k) for j in range(k))
    dy = np.sin(y) + y * np.cos(y)
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for i in range(k):
        for j in range(k):
            dxp[tap(i, j)] += dy @ w[i, j].T
            dw[i, j] = np.einsum("nhwc,nhwd->cd", xp[tap(i, j)], dy)
    dx = dxp[:, pads[0][0]:pads[0][0] + x.shape[1], pads[1][0]:pads[1][0] + x.shape[2]]
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
    y_ref, dx_ref, dw_ref = _reference(x.numpy(), w.numpy(), stride, padding)
    np.testing.assert_allclose(tf.nn.conv2d(x, w, stride, padding), y_ref, rtol=1e-5, atol=1e-4)
    # The kernel gradient by matrix products, and by TensorFlow's way for stride 1 (TensorFlow's
    # strided gradients: `test_tensorflow_gradients_beside_ours`, with 16 channels; 4 here).
    for forward, matmul in [(True, True), (True, False)][:2 if stride == 1 else 1]:
        ours = functools.partial(conv2d, strides=(stride, stride), padding=padding,
                                 forward_input_gradient=forward, matmul_filter_gradient=matmul)
        y, (dx, dw) = _gradients(ours, x, w)
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-4)
        # float32 against float64, relative to the largest value
        np.testing.assert_allclose(dx / np.max(np.abs(dx_ref)), dx_ref / np.max(np.abs(dx_ref)), atol=2e-5)
        np.testing.assert_allclose(dw / np.max(np.abs(dw_ref)), dw_ref / np.max(np.abs(dw_ref)), atol=2e-5)


@pytest.mark.parametrize("height, k, stride, padding", [(8, 3, 1, "SAME"), (9, 3, 2, "VALID"),
                                                       (4, 3, 2, "SAME"), (2, 3, 1, "SAME")])
@pytest.mark.parametrize("forward, matmul", [(False, True), (True, False)])
def test_tensorflow_gradients_beside_ours(height, k, stride, padding, forward, matmul):
    """TensorFlow's input gradient beside the kernel's by products (as `Conv2D` takes them on
    AVX-512 CPUs for small maps), and ours beside TensorFlow's kernel gradient; 16 channels (with
    fewer, TensorFlow's strided gradients can corrupt the heap on AVX-512 CPUs)."""
    rng = np.random.default_rng(height * 10 + stride)
    x = tf.constant(rng.normal(size=(2, height, height, 16)), tf.float32)
    w = tf.constant(rng.normal(size=(k, k, 16, 16)) * 0.2, tf.float32)
    y_ref, dx_ref, dw_ref = _reference(x.numpy(), w.numpy(), stride, padding)
    ours = functools.partial(conv2d, strides=(stride, stride), padding=padding,
                             forward_input_gradient=forward, matmul_filter_gradient=matmul)
    y, (dx, dw) = _gradients(ours, x, w)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-3)


def test_input_gradient_hand_worked():
    """1-D in effect: a 1x3 kernel (1, 2, 3) of stride 2 over 5 inputs, dy = (1, 10).

    y[0] = x0 + 2 x1 + 3 x2, y[1] = x2 + 2 x3 + 3 x4, so dx = (1, 2, 3 + 10, 20, 30).
    """
    kernel = tf.reshape(tf.constant([1.0, 2.0, 3.0]), [1, 3, 1, 1])
    dy = tf.reshape(tf.constant([1.0, 10.0]), [1, 1, 2, 1])
    dx = input_gradient(dy, kernel, (1, 5), (1, 2))
    np.testing.assert_array_equal(tf.reshape(dx, [-1]), [1.0, 2.0, 13.0, 20.0, 30.0])


def test_filter_gradient_hand_worked():
    """A 1x3 kernel of stride 2 over x = (1, 2, 3, 4, 5), dy = (1, 10): y[0] reads x0..x2, y[1] x2..x4.

    dw[t] = x[t] * 1 + x[t + 2] * 10 = (1 + 30, 2 + 40, 3 + 50); stride 1 over x0..x3 with
    dy = (1, 10): dw[t] = x[t] + 10 x[t + 1] = (21, 32, 43).
    """
    x = tf.reshape(tf.constant([1.0, 2.0, 3.0, 4.0, 5.0]), [1, 1, 5, 1])
    dy = tf.reshape(tf.constant([1.0, 10.0]), [1, 1, 2, 1])
    dw = filter_gradient(x, dy, (1, 3, 1, 1), (1, 2))
    np.testing.assert_array_equal(tf.reshape(dw, [-1]), [31.0, 42.0, 53.0])
    dw = filter_gradient(x[:, :, :4], dy, (1, 3, 1, 1), (1, 1))
    np.testing.assert_array_equal(tf.reshape(dw, [-1]), [21.0, 32.0, 43.0])


def test_layer_is_keras_conv2d_with_the_same_gradients():
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(2, 4, 4, 16)), tf.float32)  # TensorFlow's own gradient: 16 channels
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
    assert _forward(Conv2D(2, 3))._gradient_paths(x)[0]
    assert not _forward(Conv2D(2, 3, dilation_rate=2))._gradient_paths(x)[0]
    assert not _forward(Conv2D(4, 3, groups=2))._gradient_paths(x)[0]
    assert not _forward(Conv2D(2, 3))._gradient_paths(keras.KerasTensor([None, None, None, 2]))[0]
    # Strided: only to a small output map (4x4 = 16 positions at most).
    assert _forward(Conv2D(2, 3, strides=2, padding="same"))._gradient_paths(x)[0]  # 8x8 -> 4x4
    nine = tf.zeros([1, 9, 9, 2])
    assert not _forward(Conv2D(2, 3, strides=2, padding="same"))._gradient_paths(nine)[0]  # 5x5
    assert _forward(Conv2D(2, 3, strides=2))._gradient_paths(tf.zeros([1, 10, 10, 2]))[0]  # valid: 10 -> 4
    eighteen = tf.zeros([1, 18, 18, 2])
    assert not _forward(Conv2D(2, 3, strides=2))._gradient_paths(eighteen)[0]  # valid: 18 -> 8
    layer = Conv2D(2, 3)
    layer.forward_input_gradient = False
    assert not layer._gradient_paths(x)[0]
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
    x = tf.zeros([1, 8, 8, 32])
    assert Conv2D(2, 3).forward_input_gradient is None
    assert Conv2D(2, 3)._gradient_paths(x)[0] is default_forward_input_gradient()
    assert Conv2D(2, 3, strides=2)._gradient_paths(x)[0] is default_forward_input_gradient()
    assert Conv2D(2, 1, strides=2)._gradient_paths(x)[0]
    assert Conv2D(2, 1)._gradient_paths(x)[0] is default_forward_input_gradient()
    assert Conv2D(2, 3)._gradient_paths(tf.zeros([1, 8, 8, 24]))[0]  # channels not a multiple of 16
    # The kernel gradient by matrix products for kernels above 1x1 on maps of 4x4 at most (bfloat16).
    assert Conv2D(2, 3)._gradient_paths(tf.zeros([1, 4, 4, 32], tf.bfloat16))[1]
    assert Conv2D(2, 3, strides=2)._gradient_paths(tf.zeros([1, 8, 8, 32], tf.bfloat16))[1]  # 8x8 -> 4x4
    assert not Conv2D(2, 3)._gradient_paths(tf.zeros([1, 4, 4, 32]))[1]  # float32: TensorFlow's
    assert not Conv2D(2, 3, padding="same")._gradient_paths(tf.zeros([1, 5, 4, 32]))[1]  # 20 positions
    assert not Conv2D(2, 1)._gradient_paths(tf.zeros([1, 2, 2, 32]))[1]
    assert not Conv2D(2, 1, strides=2)._gradient_paths(tf.zeros([1, 16, 16, 32]))[1]  # 32 channels
    assert not Conv2D(2, 3)._gradient_paths(tf.zeros([1, 16, 16, 32]))[1]
    assert not Conv2D(2, 3)._gradient_paths(tf.zeros([1, 16, 16, 3]))[1]  # a stem: TensorFlow's
    assert Conv2D(2, 1, strides=2)._gradient_paths(tf.zeros([1, 16, 16, 8]))[1]  # strided 1x1, 8 channels
    native = Conv2D(2, 3)
    native.forward_input_gradient = native.matmul_filter_gradient = False
    assert native._gradient_paths(tf.zeros([1, 2, 2, 2])) == (False, False)  # the parent's convolution
    assert [resolve_input_gradient(c) for c in ("auto", "forward", "native")] == [None, True, False]
    assert [resolve_filter_gradient(c) for c in ("auto", "matmul", "native")] == [None, True, False]
    with pytest.raises(ValueError, match="kernel gradient"):
        resolve_filter_gradient("forward")
    with pytest.raises(ValueError, match="auto"):
        resolve_input_gradient("fast")


def test_export_traces_tensorflow_gradients_and_restores_the_choice():
    """The export traces every `Conv2D` as Keras' (a SavedModel stores no Python gradient)."""
    from simclr_tf.export import _traceable_for_export

    inputs = keras.Input((8, 8, 3))
    stem = Conv2D(16, 3, padding="same")  # 3 channels: the forward-convolution path by default
    shortcut = Conv2D(32, 1, strides=2)  # strided 1x1: both paths of this module by default
    shortcut.matmul_filter_gradient = True
    model = keras.Model(inputs, shortcut(stem(inputs)))
    x = tf.zeros([1, 8, 8, 3])
    assert stem._gradient_paths(x)[0] and shortcut._gradient_paths(tf.zeros([1, 8, 8, 16])) == (True, True)
    with _traceable_for_export([model]):
        assert stem._gradient_paths(x) == (False, False)
        assert shortcut._gradient_paths(tf.zeros([1, 8, 8, 16])) == (False, False)
    assert (stem.forward_input_gradient, stem.matmul_filter_gradient) == (None, None)
    assert (shortcut.forward_input_gradient, shortcut.matmul_filter_gradient) == (None, True)
