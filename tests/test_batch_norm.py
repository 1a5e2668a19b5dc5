"""simclr_tf.models.batch_norm: the fused layer against Keras' batch norm and a NumPy reference."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from simclr_tf.models import resnet
from simclr_tf.models.batch_norm import (
    BATCH_NORM_EPSILON,
    BatchNormalization,
    check_batch_norm_decay,
    make_batch_norm,
)
from simclr_tf.models.layers import SelectiveKernelConv2D

GAMMA = [0.5, 1.0, 2.0]
BETA = [0.1, -0.2, 0.3]


def _pair(**kwargs):
    """A Keras batch norm and ours, built for 3 channels with the same non-trivial weights."""
    pair = []
    for cls in (keras.layers.BatchNormalization, BatchNormalization):
        layer = cls(momentum=0.9, epsilon=1e-3, **kwargs)
        layer.build((None, None, None, 3))
        if layer.scale:
            layer.gamma.assign(GAMMA)
        if layer.center:
            layer.beta.assign(BETA)
        layer.moving_mean.assign([0.2, -0.1, 0.0])
        layer.moving_variance.assign([1.5, 0.5, 1.0])
        pair.append(layer)
    return pair


def _x(shape=(4, 5, 5, 3), seed=(1, 2)):
    return tf.random.stateless_normal(shape, seed=seed) * 2.0 + 1.0


def _train_pass(layer, x, training=True):
    """Outputs, moving statistics after the pass, and gradients of a weighted sum w.r.t. x and weights."""
    weights = tf.reshape(tf.range(tf.size(x), dtype=tf.float32), x.shape) / 100.0
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * weights)
    sources = [x] + list(layer.trainable_weights)
    return [y, layer.moving_mean, layer.moving_variance, *tape.gradient(loss, sources)]


def _fused_ops(layer, input_shape, training=True):
    function = tf.function(lambda x: layer(x, training=training), autograph=False)
    graph = function.get_concrete_function(tf.TensorSpec(input_shape)).graph
    return [op.type for op in graph.get_operations() if op.type.startswith("FusedBatchNorm")]


# --- numbers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("center, scale", [(True, True), (False, True), (True, False), (False, False)])
def test_training_pass_matches_keras(center, scale):
    x = _x()
    keras_layer, fused_layer = _pair(center=center, scale=scale)
    want = _train_pass(keras_layer, x)
    got = _train_pass(fused_layer, x)
    assert len(got) == len(want) == 4 + int(center) + int(scale)  # y, statistics, dx, weights
    for got_value, want_value in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(got_value), np.asarray(want_value), rtol=1e-4, atol=1e-4)


def test_against_numpy():
    x = _x((3, 4, 2, 3), seed=(3, 4))
    _, layer = _pair()
    y = layer(x, training=True).numpy()
    values = x.numpy().reshape(-1, 3)
    mean, biased = values.mean(axis=0), values.var(axis=0)  # the batch variance divides by n
    want = (x.numpy() - mean) / np.sqrt(biased + 1e-3) * GAMMA + BETA
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
    # Moving averages: momentum * old + (1 - momentum) * batch, with the biased variance as Keras.
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.9 * np.array([0.2, -0.1, 0.0]) + 0.1 * mean,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(),
                               0.9 * np.array([1.5, 0.5, 1.0]) + 0.1 * biased, rtol=1e-5)


def test_one_value_per_channel():
    # Batch 1 at 1x1 (a tiny image deep in the network): the batch variance is 0, not n / (n - 1) = inf.
    x = _x((1, 1, 1, 3))
    keras_layer, fused_layer = _pair()
    for got, want in zip(_train_pass(fused_layer, x), _train_pass(keras_layer, x), strict=True):
        assert np.all(np.isfinite(np.asarray(got)))
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fused_layer.moving_variance.numpy(), 0.9 * np.array([1.5, 0.5, 1.0]),
                               rtol=1e-6)


@pytest.mark.parametrize("freeze", ["training=False", "trainable=False"])
def test_inference_uses_the_moving_statistics(freeze):
    x = _x()
    keras_layer, fused_layer = _pair()
    if freeze == "trainable=False":
        keras_layer.trainable = fused_layer.trainable = False
    training = freeze != "training=False"
    y = fused_layer(x, training=training)
    np.testing.assert_allclose(y, keras_layer(x, training=training), rtol=1e-6, atol=1e-6)
    want = (x.numpy() - [0.2, -0.1, 0.0]) / np.sqrt(np.array([1.5, 0.5, 1.0]) + 1e-3) * GAMMA + BETA
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(fused_layer.moving_variance.numpy(), np.float32([1.5, 0.5, 1.0]))


def test_xla_equals_eager():
    x = _x()
    _, layer = _pair()
    compiled = tf.function(lambda images: layer(images, training=True), jit_compile=True)(x)
    _, reference = _pair()
    np.testing.assert_allclose(compiled, reference(x, training=True), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.moving_variance, reference.moving_variance, rtol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision(policy):
    x = _x()
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        keras_layer, fused_layer = _pair()
    finally:
        keras.config.set_dtype_policy(previous)
    low = tf.cast(x, policy.removeprefix("mixed_"))
    got, want = _train_pass(fused_layer, low), _train_pass(keras_layer, low)
    assert got[0].dtype == low.dtype  # outputs in the compute dtype ...
    assert all(w.dtype == "float32" for w in fused_layer.weights)  # ... variables in float32
    for got_value, want_value in zip(got, want, strict=True):
        got_value, want_value = (np.asarray(tf.cast(v, tf.float32)) for v in (got_value, want_value))
        np.testing.assert_allclose(got_value, want_value, rtol=2e-2, atol=2e-2)
    # The statistics are accumulated in float32, not in the low precision of the inputs.
    np.testing.assert_allclose(fused_layer.moving_mean, keras_layer.moving_mean, rtol=1e-5, atol=1e-6)


# --- where the fused kernel runs ----------------------------------------------------------------------


def test_fused_kernel_in_the_training_pass_only():
    layer = BatchNormalization()
    assert _fused_ops(layer, (2, 4, 4, 3)) == ["FusedBatchNormV3"]
    assert _fused_ops(layer, (2, 4, 4, 3), training=False) == []
    assert _fused_ops(BatchNormalization(), (2, 3)) == []  # 2-D input: the parent's path
    assert _fused_ops(BatchNormalization(axis=1), (2, 3, 4, 4)) == []  # channels first
    # One replica: synchronized batch norm is plain batch norm, so it can be fused too.
    assert _fused_ops(BatchNormalization(synchronized=True), (2, 4, 4, 3)) == ["FusedBatchNormV3"]
    frozen = BatchNormalization()
    frozen.trainable = False
    assert _fused_ops(frozen, (2, 4, 4, 3)) == []


def test_op_determinism_takes_the_parent_path():
    # The fused gradient w.r.t. beta is not deterministic on GPUs.
    tf.config.experimental.enable_op_determinism()
    try:
        assert _fused_ops(BatchNormalization(), (2, 4, 4, 3)) == []
    finally:
        tf_config.disable_op_determinism()
    assert _fused_ops(BatchNormalization(), (2, 4, 4, 3)) == ["FusedBatchNormV3"]


def _all_batch_norms(model):
    """Every batch norm of an encoder, the selective kernels' inner ones included."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif isinstance(layer, SelectiveKernelConv2D):
            found += [layer.batch_norm, layer.reduce_batch_norm]
    return found


@pytest.mark.parametrize("fused_batch_norm", [True, False])
def test_encoder_uses_it_unless_told_not_to(fused_batch_norm):
    encoder = resnet.build_resnet(18, cifar_stem=True, fused_batch_norm=fused_batch_norm)
    batch_norms = _all_batch_norms(encoder)
    # Stem, two per basic block, and the projection shortcut of each block group's first block
    # (the original projects in block_group1 too).
    assert len(batch_norms) == 1 + 8 * 2 + 4
    expected = BatchNormalization if fused_batch_norm else keras.layers.BatchNormalization
    assert all(type(layer) is expected for layer in batch_norms)
    assert all("batch_norm" in layer.name for layer in batch_norms)
    assert _fused_ops(encoder, (2, 8, 8, 3)).count("FusedBatchNormV3") == (21 if fused_batch_norm else 0)


@pytest.mark.parametrize("zero_init, center", [(False, True), (True, False)])
def test_make_batch_norm_gives_the_same_layer_fused_or_not(zero_init, center):
    fused = make_batch_norm("bn", 0.95, True, zero_init=zero_init, center=center)
    plain = make_batch_norm("bn", 0.95, True, zero_init=zero_init, center=center, fused=False)
    assert type(fused) is BatchNormalization and type(plain) is keras.layers.BatchNormalization
    assert fused.get_config() == plain.get_config()
    assert BATCH_NORM_EPSILON == 1e-5  # the original's
    assert (plain.momentum, plain.epsilon, plain.center, plain.synchronized) == (0.95, 1e-5, center, True)
    for layer in (fused, plain):
        layer.build((None, 4, 4, 3))
        np.testing.assert_array_equal(layer.gamma.numpy(), np.full(3, 0.0 if zero_init else 1.0))
        assert [w.name for w in layer.weights] == (["gamma", "beta"] if center else ["gamma"]) + [
            "moving_mean", "moving_variance"]


@pytest.mark.parametrize("value", [0.0, 1.0, 1.5, -0.1, True, "0.9", float("nan"), None])
def test_check_batch_norm_decay(value):
    with pytest.raises(ValueError, match=r"`batch_norm_decay` must be a number in \(0, 1\)\. Received: "
                                         r"batch_norm_decay=.*e\.g\. 0\.9"):
        check_batch_norm_decay(value)


def test_check_batch_norm_decay_accepts_and_returns_a_float():
    assert check_batch_norm_decay(0.9) == 0.9
    assert type(check_batch_norm_decay(np.float32(0.5))) is float


def test_encoder_training_step_matches_keras_batch_norm():
    # The same ResNet (SK convs and SE included) with Keras' batch norm: same features, gradients
    # and batch-norm statistics after a training pass.
    encoder = resnet.build_resnet(18, cifar_stem=True, sk_ratio=0.0625, se_ratio=0.25)
    reference = resnet.build_resnet(18, cifar_stem=True, sk_ratio=0.0625, se_ratio=0.25,
                                    fused_batch_norm=False)
    assert not any(isinstance(layer, BatchNormalization) for layer in _all_batch_norms(reference))
    rng = np.random.default_rng(0)
    # Non-trivial batch-norm weights (zero-init gammas would hide the residual branches).
    reference.set_weights([rng.normal(1.0, 0.2, w.shape).astype("float32") if "gamma" in w.path
                           else np.abs(w.numpy()) + 0.5 if "moving_variance" in w.path else w.numpy()
                           for w in encoder.weights])
    encoder.set_weights(reference.get_weights())
    x = _x((4, 16, 16, 3))

    def step(model):
        with tf.GradientTape() as tape:
            h = model(x, training=True)["final_avg_pool"]
            loss = tf.reduce_sum(h * tf.range(h.shape[-1], dtype=tf.float32) / h.shape[-1])
        return h, tape.gradient(loss, model.trainable_weights)

    got_h, got_grads = step(encoder)
    want_h, want_grads = step(reference)
    np.testing.assert_allclose(got_h, want_h, rtol=1e-4, atol=1e-4)
    for got, want, weight in zip(got_grads, want_grads, encoder.trainable_weights, strict=True):
        scale = np.abs(np.asarray(want)).max() + 1e-6
        np.testing.assert_allclose(np.asarray(got) / scale, np.asarray(want) / scale, atol=1e-3,
                                   err_msg=weight.path)
    for got, want in zip(encoder.non_trainable_weights, reference.non_trainable_weights, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=got.path)


# --- saving -------------------------------------------------------------------------------------------


def test_keras_file_round_trip(tmp_path):
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, BatchNormalization(momentum=0.8, epsilon=1e-4, name="bn")(inputs))
    model.get_layer("bn").set_weights([np.float32(w) for w in ([1.5, 0.5, 2.0], [0.1, 0.2, 0.3],
                                                               [0.3, 0.0, -0.3], [2.0, 1.0, 0.5])])
    path = str(tmp_path / "bn.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    layer = reloaded.get_layer("bn")
    assert type(layer) is BatchNormalization
    assert (layer.momentum, layer.epsilon) == (0.8, 1e-4)
    x = _x((2, 4, 4, 3))
    np.testing.assert_allclose(reloaded(x, training=False), model(x, training=False), rtol=1e-6, atol=1e-6)


def test_restores_checkpoints_of_keras_batch_norm(tmp_path):
    # Same variables under the same names: checkpoints written before the switch still restore.
    keras_layer, _ = _pair()
    fused_layer = BatchNormalization()
    fused_layer.build((None, None, None, 3))
    assert [w.name for w in fused_layer.weights] == [w.name for w in keras_layer.weights]
    path = tf.train.Checkpoint(layer=keras_layer).write(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(layer=fused_layer).read(path).assert_consumed()
    for got, want in zip(fused_layer.weights, keras_layer.weights, strict=True):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
