"""Projection and supervised heads: shapes, a NumPy reference forward pass, config and saving."""

import keras
import numpy as np
import pytest

from simclr_tf import config
from simclr_tf.models import heads
from simclr_tf.models.batch_norm import BATCH_NORM_EPSILON
from simclr_tf.models.heads import ProjectionHead, SupervisedHead

EPS = 1e-5  # batch-norm epsilon of the original


def _randomise_batch_norm(head, rng):
    """Gives every batch norm non-trivial gamma / beta / moving statistics."""
    for bn in head.batch_norm_layers:
        dim = bn.gamma.shape[0]
        bn.gamma.assign(rng.uniform(0.5, 1.5, dim).astype("float32"))
        if bn.center:
            bn.beta.assign(rng.normal(0.0, 0.5, dim).astype("float32"))
        bn.moving_mean.assign(rng.normal(0.0, 0.05, dim).astype("float32"))
        bn.moving_variance.assign(rng.uniform(0.001, 0.01, dim).astype("float32"))


def _numpy_head(x, head):
    """The head's inference-mode forward pass written from the original's definition."""
    hiddens = [x]
    for j, (dense, bn) in enumerate(zip(head.dense_layers, head.batch_norm_layers, strict=True)):
        y = x @ np.asarray(dense.kernel)
        y = (y - np.asarray(bn.moving_mean)) / np.sqrt(np.asarray(bn.moving_variance) + EPS)
        y = y * np.asarray(bn.gamma)
        if bn.center:
            y = y + np.asarray(bn.beta)
        if head.proj_head_mode == "nonlinear" and j < len(head.dense_layers) - 1:
            y = np.maximum(y, 0.0)
        hiddens.append(y)
        x = y
    return x, hiddens


@pytest.mark.parametrize(
    "mode, num_proj_layers, expected_dims",
    [
        ("none", 3, [12]),
        ("linear", 3, [12, 5]),  # num_proj_layers is ignored by the linear head
        ("nonlinear", 1, [12, 5]),
        ("nonlinear", 2, [12, 12, 5]),
        ("nonlinear", 3, [12, 12, 12, 5]),
    ],
)
def test_shapes_hiddens_and_output_shape(mode, num_proj_layers, expected_dims):
    head = ProjectionHead(mode, proj_out_dim=5, num_proj_layers=num_proj_layers)
    x = np.random.default_rng(0).normal(size=(4, 12)).astype("float32")
    projection, hiddens = head(x, training=True)

    assert [tuple(h.shape) for h in hiddens] == [(4, d) for d in expected_dims]
    assert tuple(projection.shape) == (4, expected_dims[-1])
    np.testing.assert_array_equal(np.asarray(hiddens[0]), x)  # hiddens[0] is the input
    np.testing.assert_array_equal(np.asarray(hiddens[-1]), np.asarray(projection))
    assert head.num_layers == len(expected_dims) - 1
    projection_shape, hidden_shapes = head.compute_output_shape((None, 12))
    assert projection_shape == (None, expected_dims[-1])
    assert hidden_shapes == [(None, d) for d in expected_dims]
    for i, hidden in enumerate(hiddens):
        assert head.select(hiddens, i) is hidden


@pytest.mark.parametrize("mode, num_proj_layers", [("linear", 3), ("nonlinear", 1), ("nonlinear", 3)])
def test_forward_equals_numpy_reference_in_inference_mode(mode, num_proj_layers):
    rng = np.random.default_rng(1)
    head = ProjectionHead(mode, proj_out_dim=6, num_proj_layers=num_proj_layers)
    x = rng.normal(size=(5, 10)).astype("float32")
    head(x, training=False)  # build
    _randomise_batch_norm(head, rng)

    projection, hiddens = head(x, training=False)
    expected, expected_hiddens = _numpy_head(x.astype("float64"), head)
    np.testing.assert_allclose(np.asarray(projection), expected, rtol=1e-4, atol=1e-5)
    assert len(hiddens) == len(expected_hiddens)
    for got, want in zip(hiddens, expected_hiddens, strict=True):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)
    if mode == "nonlinear" and num_proj_layers > 1:
        assert np.all(np.asarray(hiddens[1]) >= 0.0)  # ReLU after the middle layers
        assert np.any(expected < 0.0)  # but none after the last


def test_layer_structure_follows_the_original():
    head = ProjectionHead("nonlinear", proj_out_dim=8, num_proj_layers=3, batch_norm_decay=0.95,
                          name="projection_head")
    head.build((None, 16))
    for j, (dense, bn) in enumerate(zip(head.dense_layers, head.batch_norm_layers, strict=True)):
        last = j == 2
        assert dense.units == (8 if last else 16)  # middle layers keep the input width
        assert not dense.use_bias
        assert "batch_norm" in bn.name
        assert bn.epsilon == EPS and bn.momentum == 0.95 and bn.scale
        assert bn.center == (not last)  # no beta on the last batch norm
    paths = [v.path for v in head.trainable_weights]
    assert not any(p.endswith("bias") for p in paths)
    assert sum(p.endswith("beta") for p in paths) == 2
    assert all("batch_norm" in p for p in paths if p.endswith(("gamma", "beta")))
    # 2 x (16x16 kernel + gamma + beta) + 16x8 kernel + gamma.
    assert sum(int(np.prod(v.shape)) for v in head.trainable_weights) == 2 * (256 + 32) + 128 + 8

    linear = ProjectionHead("linear", proj_out_dim=8)
    linear.build((None, 16))
    (bn,) = linear.batch_norm_layers
    assert linear.dense_layers[0].units == 8 and not bn.center  # the original: use_bias=False -> center=False

    identity = ProjectionHead("none")
    identity(np.ones((2, 16), "float32"))
    assert not identity.weights


def test_kernel_initialiser_is_normal_with_stddev_0_01():
    head = ProjectionHead("nonlinear", num_proj_layers=2, proj_out_dim=128)
    head.build((None, 256))
    kernel = np.asarray(head.dense_layers[0].kernel)
    assert abs(kernel.std() - 0.01) < 5e-4 and abs(kernel.mean()) < 2e-4
    np.testing.assert_array_equal(np.asarray(head.batch_norm_layers[0].gamma), 1.0)

    supervised = SupervisedHead(100)
    supervised.build((None, 256))
    assert abs(np.asarray(supervised.dense.kernel).std() - 0.01) < 1e-3
    np.testing.assert_array_equal(np.asarray(supervised.dense.bias), 0.0)


def test_training_mode_uses_batch_statistics():
    head = ProjectionHead("nonlinear", proj_out_dim=4, num_proj_layers=2)
    x = np.random.default_rng(2).normal(3.0, 2.0, size=(64, 8)).astype("float32")
    projection, hiddens = head(x, training=True)
    # Last batch norm: gamma 1, no beta -> each feature is standardised with the batch's statistics:
    # mean 0 and variance v / (v + eps), v the batch variance of the dense layer's output.
    pre_norm = np.asarray(hiddens[-2], "float64") @ np.asarray(head.dense_layers[-1].kernel, "float64")
    batch_var = pre_norm.var(0)
    np.testing.assert_allclose(np.asarray(projection).mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(projection).var(0), batch_var / (batch_var + EPS), rtol=1e-3)
    # Moving averages moved by (1 - momentum) towards the batch statistics.
    moving_mean = np.asarray(head.batch_norm_layers[0].moving_mean)
    assert np.any(np.abs(moving_mean) > 0)


def test_supervised_head_logits_and_zero_init():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 7)).astype("float32")
    zero = SupervisedHead(4, zero_init=True)
    np.testing.assert_array_equal(np.asarray(zero(x)), np.zeros((3, 4)))

    head = SupervisedHead(4)
    logits = np.asarray(head(x))
    assert head.name == "head_supervised"
    assert all("head_supervised" in v.path for v in head.weights)
    head.dense.bias.assign(rng.normal(size=4).astype("float32"))
    expected = x @ np.asarray(head.dense.kernel) + np.asarray(head.dense.bias)
    np.testing.assert_allclose(np.asarray(head(x)), expected, rtol=1e-5, atol=1e-6)
    assert np.any(logits != 0.0)
    assert head.compute_output_shape((None, 7)) == (None, 4)


def test_config_round_trip():
    head = ProjectionHead("nonlinear", proj_out_dim=7, num_proj_layers=2, batch_norm_decay=0.99,
                          global_bn=True, name="ph")
    config = head.get_config()
    clone = ProjectionHead.from_config(config)
    assert clone.get_config() == config
    assert (clone.proj_head_mode, clone.proj_out_dim, clone.num_proj_layers, clone.global_bn) == (
        "nonlinear", 7, 2, True)

    supervised = SupervisedHead(9, zero_init=True, name="head_supervised")
    clone = SupervisedHead.from_config(supervised.get_config())
    assert clone.get_config() == supervised.get_config()
    assert clone.num_classes == 9 and clone.zero_init


def test_save_and_reload_gives_the_same_outputs(tmp_path):
    rng = np.random.default_rng(4)
    inputs = keras.Input((12,))
    projection, hiddens = ProjectionHead("nonlinear", proj_out_dim=6, num_proj_layers=3,
                                         name="projection_head")(inputs)
    logits = SupervisedHead(3, name="head_supervised")(hiddens[1])
    model = keras.Model(inputs, [projection, logits])
    _randomise_batch_norm(model.get_layer("projection_head"), rng)

    path = str(tmp_path / "heads.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    x = rng.normal(size=(4, 12)).astype("float32")
    for got, want in zip(reloaded(x, training=False), model(x, training=False), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision(policy):
    x = np.random.default_rng(5).normal(size=(4, 8)).astype("float32")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        head = ProjectionHead("nonlinear", proj_out_dim=4, num_proj_layers=3)
        supervised = SupervisedHead(3)
    finally:
        keras.config.set_dtype_policy(previous)
    compute_dtype = policy.removeprefix("mixed_")
    projection, hiddens = head(x, training=True)
    logits = supervised(hiddens[2])
    assert keras.backend.standardize_dtype(projection.dtype) == compute_dtype
    assert keras.backend.standardize_dtype(logits.dtype) == compute_dtype
    assert all(v.dtype == "float32" for v in head.weights + supervised.weights)
    assert np.all(np.isfinite(np.asarray(projection, dtype="float32")))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"proj_head_mode": "mlp"}, "`proj_head_mode` must be one of 'none', 'linear', 'nonlinear'"),
        ({"proj_out_dim": 0}, "`proj_out_dim` must be a positive integer.*Received: proj_out_dim=0"),
        ({"num_proj_layers": 0}, "`num_proj_layers` must be a positive integer"),
        ({"num_proj_layers": 2.0}, "`num_proj_layers` must be a positive integer"),
        ({"proj_out_dim": True}, "`proj_out_dim` must be a positive integer.*SimCLR uses 128"),
        ({"batch_norm_decay": "0.9"}, r"`batch_norm_decay` must be a number in \(0, 1\).*'0.9'"),
        ({"batch_norm_decay": 1.0}, r"`batch_norm_decay` must be a number in \(0, 1\)"),
    ],
)
def test_projection_head_bad_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ProjectionHead(**kwargs)


def test_bad_inputs_and_selector():
    head = ProjectionHead("nonlinear", num_proj_layers=2)
    with pytest.raises(ValueError, match=r"expects pooled features of shape \(batch_size, dim\)"):
        head(np.ones((2, 4, 4, 8), "float32"))
    _, hiddens = head(np.ones((2, 8), "float32"))
    with pytest.raises(ValueError, match=r"`ft_proj_selector` must be an integer in \[0, 2\].*Received: "
                                         r"ft_proj_selector=3"):
        head.select(hiddens, 3)
    with pytest.raises(ValueError, match="`ft_proj_selector`"):
        head.select(hiddens, -1)
    with pytest.raises(ValueError, match="`num_classes` must be a positive integer.*num_classes=0"):
        SupervisedHead(0)
    with pytest.raises(ValueError, match="`SupervisedHead` expects pooled features"):
        SupervisedHead(3)(np.ones((2, 3, 8), "float32"))


def test_modes_and_epsilon_come_from_one_place():
    assert heads.PROJ_HEAD_MODES is config.PROJ_HEAD_MODES  # imported, not redefined
    assert BATCH_NORM_EPSILON == EPS
    for mode in config.PROJ_HEAD_MODES:
        head = ProjectionHead(mode, proj_out_dim=4, num_proj_layers=2)
        head.build((None, 8))
        # Keras' own batch norm (the fused one only serves 4-D inputs), so saved heads are unchanged.
        assert all(type(bn) is keras.layers.BatchNormalization for bn in head.batch_norm_layers)
        assert all(bn.epsilon == BATCH_NORM_EPSILON for bn in head.batch_norm_layers)
