"""`simclr_tf.models.conv`: its gradients against a NumPy reference, and which path each layer takes."""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf import precision
from simclr_tf.models import conv
from simclr_tf.models.conv import (
    Conv2D,
    ConvGradients,
    conv2d,
    conv_gradients_for,
    filter_gradient,
    input_gradient,
    resolve_filter_gradient,
    resolve_input_gradient,
    use_conv_gradients,
)
from simclr_tf.precision import Devices

AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512_bf16"}


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

    Independent of TensorFlow's kernels, whose gradients are compared beside ours below. Tap (i, j)
    reads the padded input
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


def test_plan_follows_the_strategys_devices():
    """CPU workarounds on CPUs only: GPUs and TPUs get TensorFlow's kernels for every convolution."""
    avx2 = conv_gradients_for(Devices("CPU", ("AVX2 CPU",), cpu_flags=AVX2))
    avx512 = conv_gradients_for(Devices("CPU", ("AVX-512 CPU",), cpu_flags=AVX512))
    unknown = conv_gradients_for(Devices("CPU", cpu_flags=None))
    assert (avx2.forward_input, avx2.matmul_small_maps) == (True, True)
    assert (avx512.forward_input, avx512.matmul_small_maps) == (False, True)
    assert (unknown.forward_input, unknown.matmul_small_maps) == (False, True)  # TensorFlow's input grad
    for kind in ("GPU", "TPU"):
        # A TPU VM's host CPU may lack AVX-512: the replicas' devices decide, not the host.
        plan = conv_gradients_for(Devices(kind, cpu_flags=AVX2))
        assert (plan.device, plan.custom) == (kind, False)
        assert plan.describe() == f"TensorFlow's own kernels ({kind} strategy)"
    assert avx2.describe().startswith("input gradients by forward convolutions, bfloat16 kernel gradients")
    assert "CPU without AVX-512" in avx2.describe()


def test_paths_per_layer_under_a_plan():
    x = tf.zeros([1, 8, 8, 32])

    def paths(layer, inputs, plan):
        layer.gradient_plan = plan
        return layer._gradient_paths(inputs)

    avx2 = conv_gradients_for(Devices("CPU", cpu_flags=AVX2))
    avx512 = conv_gradients_for(Devices("CPU", cpu_flags=AVX512))
    gpu = conv_gradients_for(Devices("GPU"))
    # No plan (a layer built by hand, or loaded): TensorFlow's kernels.
    assert Conv2D(2, 3).gradient_plan is None
    assert Conv2D(2, 3)._gradient_paths(tf.zeros([1, 4, 4, 32], tf.bfloat16)) == (False, False)
    assert paths(Conv2D(2, 3), x, avx2)[0] and paths(Conv2D(2, 3, strides=2), x, avx2)[0]
    assert paths(Conv2D(2, 1, strides=2), x, avx2)[0]
    assert not paths(Conv2D(2, 3), x, avx512)[0]
    # The strided 1x1 and few-channel rules are gone (the heap corruption did not reproduce).
    assert paths(Conv2D(2, 1, strides=2), tf.zeros([1, 16, 16, 8]), avx512) == (False, False)
    assert paths(Conv2D(2, 3), tf.zeros([1, 8, 8, 24]), avx512) == (False, False)
    # The kernel gradient by matrix products for kernels above 1x1 on maps of 4x4 at most (bfloat16).
    small = tf.zeros([1, 4, 4, 32], tf.bfloat16)
    assert paths(Conv2D(2, 3), small, avx512)[1]
    assert paths(Conv2D(2, 3, strides=2), tf.zeros([1, 8, 8, 32], tf.bfloat16), avx512)[1]  # 8x8 -> 4x4
    assert not paths(Conv2D(2, 3), tf.zeros([1, 4, 4, 32]), avx512)[1]  # float32: TensorFlow's
    assert not paths(Conv2D(2, 3, padding="same"), tf.zeros([1, 5, 4, 32], tf.bfloat16), avx512)[1]
    assert not paths(Conv2D(2, 1), tf.zeros([1, 2, 2, 32], tf.bfloat16), avx512)[1]
    assert not paths(Conv2D(2, 3), tf.zeros([1, 16, 16, 32], tf.bfloat16), avx512)[1]
    # A GPU plan: nothing of ours, whatever the shape and dtype.
    assert paths(Conv2D(2, 3), small, gpu) == (False, False)
    assert paths(Conv2D(2, 1, strides=2), tf.zeros([1, 16, 16, 4]), gpu) == (False, False)
    # The experiments' overrides win over the plan.
    forced = Conv2D(2, 3)
    forced.forward_input_gradient = forced.matmul_filter_gradient = True
    assert paths(forced, small, gpu) == (True, True)
    native = Conv2D(2, 3)
    native.forward_input_gradient = native.matmul_filter_gradient = False
    assert paths(native, small, avx2) == (False, False)  # the parent's convolution
    assert [resolve_input_gradient(c) for c in ("auto", "forward", "native")] == [None, True, False]
    assert [resolve_filter_gradient(c) for c in ("auto", "matmul", "native")] == [None, True, False]
    with pytest.raises(ValueError, match="kernel gradient"):
        resolve_filter_gradient("forward")
    with pytest.raises(ValueError, match="auto"):
        resolve_input_gradient("fast")


def _count_custom_gradients(monkeypatch):
    """How often `conv.conv2d` (the custom-gradient convolution) is called, in a one-item list."""
    calls = [0]
    original = conv.conv2d

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(conv, "conv2d", counting)
    return calls


@pytest.mark.parametrize("devices, expect_custom", [
    (Devices("GPU", ("NVIDIA A100-SXM4-40GB",), (8, 0), AVX2), False),
    (Devices("GPU", ("Tesla V100-SXM2-16GB",), (7, 0), AVX2), False),
    (Devices("TPU", ("TPU",), cpu_flags=AVX2), False),  # a TPU VM whose host lacks AVX-512
    (Devices("CPU", ("AVX2 CPU",), cpu_flags=AVX2), True),
])
def test_no_custom_gradient_is_traced_on_gpus_and_tpus(monkeypatch, devices, expect_custom):
    """The train step of a SimCLR model built under a faked strategy description."""
    from simclr_tf.config import Config, ModelConfig
    from simclr_tf.models.build import build_model
    from simclr_tf.optimizers import build_optimizer

    monkeypatch.setattr(precision, "strategy_devices", lambda strategy=None: devices)
    calls = _count_custom_gradients(monkeypatch)
    keras.utils.set_random_seed(0)
    config = Config(model=ModelConfig(resnet_depth=18, cifar_stem=True, num_proj_layers=1, proj_out_dim=8))
    model = build_model(config.resolved(), 2, image_size=16)
    plans = {layer.gradient_plan for layer in model._flatten_layers() if isinstance(layer, Conv2D)}
    assert plans == {conv_gradients_for(devices)}
    model.compile(optimizer=build_optimizer("momentum", 0.1, weight_decay=0.0))
    views = tf.TensorSpec([2, 16, 16, 3], tf.float32)
    tf.function(model.train_step).get_concrete_function(((views, views), tf.TensorSpec([2], tf.int32)))
    if expect_custom:
        assert calls[0] >= 1  # the counter sees the custom path where it is taken
    else:
        assert calls[0] == 0


def test_use_conv_gradients_reaches_nested_convolutions():
    from simclr_tf.models.layers import SelectiveKernelConv2D

    inputs = keras.Input((8, 8, 16))
    model = keras.Model(inputs, SelectiveKernelConv2D(16, name="sk")(Conv2D(16, 1, name="c")(inputs)))
    plan = ConvGradients("CPU", True, True, "test")
    assert use_conv_gradients(model, plan) == 2  # `c` and the selective kernel's `conv`
    assert model.get_layer("sk").conv.gradient_plan is plan
    assert use_conv_gradients(model, None) == 2 and model.get_layer("c").gradient_plan is None


def test_export_traces_tensorflow_gradients_and_restores_the_choice():
    """The export traces every `Conv2D` as Keras' (a SavedModel stores no Python gradient)."""
    from simclr_tf.export import _traceable_for_export

    inputs = keras.Input((8, 8, 3))
    stem = Conv2D(16, 3, padding="same")
    shortcut = Conv2D(32, 1, strides=2)
    shortcut.matmul_filter_gradient = True
    model = keras.Model(inputs, shortcut(stem(inputs)))
    use_conv_gradients(model, conv_gradients_for(Devices("CPU", cpu_flags=AVX2)))  # forward input grads
    x = tf.zeros([1, 8, 8, 3])
    assert stem._gradient_paths(x)[0] and shortcut._gradient_paths(tf.zeros([1, 8, 8, 16])) == (True, True)
    with _traceable_for_export([model]):
        assert stem._gradient_paths(x) == (False, False)
        assert shortcut._gradient_paths(tf.zeros([1, 8, 8, 16])) == (False, False)
    assert (stem.forward_input_gradient, stem.matmul_filter_gradient) == (None, None)
    assert (shortcut.forward_input_gradient, shortcut.matmul_filter_gradient) == (None, True)
