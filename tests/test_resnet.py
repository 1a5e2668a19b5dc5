"""ResNet encoders: geometry, parameter counts against published numbers, initialisation, layer
names, freezing, the SK / SE layers against NumPy, serialisation and XLA."""

import math
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.config import RESNET_DEPTHS
from simclr_tf.models import resnet
from simclr_tf.models.batch_norm import BatchNormalization
from simclr_tf.models.layers import SelectiveKernelConv2D, SqueezeExcitation
from simclr_tf.models.resnet import (
    FEATURE_NAMES,
    RESNET_BLOCKS,
    build_resnet,
    freeze_up_to_block,
    resnet_output_dim,
)

EPS = 1e-5  # the original's batch-norm epsilon

# He et al. 2015, Table 1: depth -> (bottleneck blocks?, blocks per group).
ARCHITECTURES = {
    10: (False, (1, 1, 1, 1)),
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
    152: (True, (3, 8, 36, 3)),
    200: (True, (3, 24, 36, 3)),
}


# --- references written independently of the model code -----------------------------------------


def _expected_param_count(depth, width=1, cifar_stem=False, sk_ratio=0.0, se_ratio=0.0):
    """Trainable weights of the original SimCLR(v2) ResNet, counted layer by layer."""
    bottleneck, blocks = ARCHITECTURES[depth]

    def conv(k, c_in, c_out):
        return k * k * c_in * c_out

    def bn(c):
        return 2 * c  # gamma and beta

    c = 64 * width
    if cifar_stem:
        n = conv(3, 3, c) + bn(c)
    elif sk_ratio > 0:  # ResNet-D deep stem
        half = c // 2
        n = conv(3, 3, half) + bn(half) + conv(3, half, half) + bn(half) + conv(3, half, c) + bn(c)
    else:
        n = conv(7, 3, c) + bn(c)
    c_in = c
    for group, num_blocks in enumerate(blocks):
        f = 64 * 2**group * width
        c_out = 4 * f if bottleneck else f
        for block in range(num_blocks):
            if bottleneck:
                n += conv(1, c_in, f) + bn(f)
                if sk_ratio > 0:
                    mid = max(int(f * sk_ratio), 32)
                    n += conv(3, f, 2 * f) + bn(2 * f) + conv(1, f, mid) + bn(mid) + conv(1, mid, 2 * f)
                else:
                    n += conv(3, f, f) + bn(f)
                n += conv(1, f, c_out) + bn(c_out)
            else:
                n += conv(3, c_in, f) + bn(f) + conv(3, f, f) + bn(f)
            if se_ratio > 0:
                r = max(1, int(f * se_ratio))
                n += c_out * r + r + r * c_out + c_out  # two 1x1 convolutions with bias
            if block == 0:  # the original projects the shortcut of every group's first block
                n += conv(1, c_in, c_out) + bn(c_out)
            c_in = c_out
    return n


def _expected_shapes(depth, width, height, cifar_stem, batch=2):
    """Feature shapes from the stride pattern; fixed padding makes every stride-s step ceil(x / s)."""
    expansion = 4 if ARCHITECTURES[depth][0] else 1
    c = 64 * width
    if cifar_stem:
        conv_hw = pool_hw = height
    else:
        conv_hw = math.ceil(height / 2)
        pool_hw = math.ceil(conv_hw / 2)
    shapes = {
        "initial_conv": (batch, conv_hw, conv_hw, c),
        "initial_max_pool": (batch, pool_hw, pool_hw, c),
    }
    hw = pool_hw
    for group in range(1, 5):
        if group > 1:
            hw = math.ceil(hw / 2)
        shapes[f"block_group{group}"] = (batch, hw, hw, c * 2 ** (group - 1) * expansion)
    shapes["final_avg_pool"] = (batch, c * 8 * expansion)
    return shapes


def _np_conv(x, kernel, stride):
    """Convolution with the original's padding: k - 1 pixels split as (k-1)//2 before, rest after."""
    k = kernel.shape[0]
    before, after = (k - 1) // 2, k - 1 - (k - 1) // 2
    xp = np.pad(x, ((0, 0), (before, after), (before, after), (0, 0)))
    out_h = (xp.shape[1] - k) // stride + 1
    out_w = (xp.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[-1]))
    for i in range(k):
        for j in range(k):
            rows = slice(i, i + stride * (out_h - 1) + 1, stride)
            cols = slice(j, j + stride * (out_w - 1) + 1, stride)
            out += xp[:, rows, cols] @ kernel[i, j]
    return out


def _np_batch_norm(x, bn):
    """Inference-mode batch norm with the layer's own moving statistics."""
    y = (x - np.asarray(bn.moving_mean)) / np.sqrt(np.asarray(bn.moving_variance) + EPS)
    y = y * np.asarray(bn.gamma)
    return y + np.asarray(bn.beta) if bn.center else y


def _np_max_pool_same(x, size=3, stride=2):
    out_hw = [math.ceil(d / stride) for d in x.shape[1:3]]
    pads = []
    for d, out in zip(x.shape[1:3], out_hw, strict=True):
        total = max((out - 1) * stride + size - d, 0)
        pads.append((total // 2, total - total // 2))
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-np.inf)
    out = np.full((x.shape[0], *out_hw, x.shape[-1]), -np.inf)
    for i in range(size):
        for j in range(size):
            rows = slice(i, i + stride * (out_hw[0] - 1) + 1, stride)
            cols = slice(j, j + stride * (out_hw[1] - 1) + 1, stride)
            out = np.maximum(out, xp[:, rows, cols])
    return out


def _batch_norm_layers(model):
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif isinstance(layer, SelectiveKernelConv2D):
            found += [layer.batch_norm, layer.reduce_batch_norm]
    return found


def _randomise_batch_norm(model, rng):
    """Non-trivial gamma / beta / moving statistics, so that loading or inference bugs show."""
    for bn in _batch_norm_layers(model):
        dim = bn.gamma.shape[0]
        bn.gamma.assign(rng.uniform(0.5, 1.5, dim).astype("float32"))
        bn.beta.assign(rng.normal(0.0, 0.2, dim).astype("float32"))
        bn.moving_mean.assign(rng.normal(0.0, 0.2, dim).astype("float32"))
        bn.moving_variance.assign(rng.uniform(0.5, 2.0, dim).astype("float32"))


def _count(weights):
    return sum(int(np.prod(w.shape)) for w in weights)


def _images(batch, height, width=None, seed=0):
    return np.random.default_rng(seed).uniform(size=(batch, height, width or height, 3)).astype("float32")


@pytest.fixture(scope="module")
def r18_cifar():
    return build_resnet(18, cifar_stem=True)


# --- geometry ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "depth, cifar_stem, sizes",
    [(18, True, (32, 33)), (18, False, (64, 33)), pytest.param(50, True, (16, 17), marks=pytest.mark.slow),
     (50, False, (32, 33))],
)
def test_output_shapes(depth, cifar_stem, sizes):
    encoder = build_resnet(depth, cifar_stem=cifar_stem)
    assert encoder.input_shape == (None, None, None, 3)
    for size in sizes:
        features = encoder(_images(2, size), training=False)
        assert tuple(features) == FEATURE_NAMES
        got = {name: tuple(value.shape) for name, value in features.items()}
        assert got == _expected_shapes(depth, 1, size, cifar_stem)
    assert features["final_avg_pool"].shape[-1] == resnet_output_dim(depth)


def test_non_square_input(r18_cifar):
    features = r18_cifar(_images(1, 20, 9), training=False)
    assert tuple(features["block_group4"].shape) == (1, 3, 2, 512)  # 20 -> 10 -> 5 -> 3; 9 -> 5 -> 3 -> 2


@pytest.mark.parametrize("size", [32, 33])
def test_stem_and_pooling_match_numpy(size):
    # 32 px tells the original's fixed padding (3 before, 3 after) from SAME (2 before, 3 after).
    encoder = build_resnet(18, cifar_stem=False)
    _randomise_batch_norm(encoder, np.random.default_rng(0))
    x = _images(2, size)
    features = encoder(x, training=False)

    conv = _np_conv(x.astype("float64"), np.asarray(encoder.get_layer("stem_conv").kernel, "float64"), 2)
    np.testing.assert_allclose(np.asarray(features["initial_conv"]), conv, rtol=1e-4, atol=1e-4)
    # initial_conv is taken before the stem's batch norm; then BN, ReLU, 3x3 stride-2 max-pool.
    stem = np.maximum(_np_batch_norm(conv, encoder.get_layer("stem_batch_norm")), 0.0)
    np.testing.assert_allclose(
        np.asarray(features["initial_max_pool"]), _np_max_pool_same(stem), rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(
        np.asarray(features["final_avg_pool"]),
        np.asarray(features["block_group4"]).mean(axis=(1, 2)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_cifar_stem_matches_numpy(r18_cifar):
    x = _images(2, 9)
    features = r18_cifar(x, training=False)
    conv = _np_conv(x.astype("float64"), np.asarray(r18_cifar.get_layer("stem_conv").kernel, "float64"), 1)
    np.testing.assert_allclose(np.asarray(features["initial_conv"]), conv, rtol=1e-4, atol=1e-5)
    relu = np.maximum(_np_batch_norm(conv, r18_cifar.get_layer("stem_batch_norm")), 0.0)
    np.testing.assert_allclose(np.asarray(features["initial_max_pool"]), relu, rtol=1e-4, atol=1e-5)


def test_resnet_output_dim():
    depths = (10, 18, 34, 50, 101, 152, 200)
    assert [resnet_output_dim(d) for d in depths] == [512, 512, 512, 2048, 2048, 2048, 2048]
    assert resnet_output_dim(50, 2) == 4096 and resnet_output_dim(18, 3) == 1536
    encoder = build_resnet(18, 2, cifar_stem=True)
    assert encoder(_images(1, 8), training=False)["final_avg_pool"].shape[-1] == resnet_output_dim(18, 2)


def test_depths_are_the_configs_and_follow_he_et_al():
    assert set(RESNET_BLOCKS) == set(RESNET_DEPTHS)
    blocks = {depth: (kind == "bottleneck", groups) for depth, (kind, groups) in RESNET_BLOCKS.items()}
    assert blocks == ARCHITECTURES


# --- parameter counts -------------------------------------------------------------------------


def test_reference_counter_reproduces_published_counts():
    # torchvision's ResNet-50 has 25,557,032 parameters, its classifier 2048 * 1000 + 1000.
    assert _expected_param_count(50) == 25_557_032 - 2_049_000 == 23_508_032
    assert _expected_param_count(50, 2) == 93_907_072
    assert _expected_param_count(50, 4) == 375_378_176
    # torchvision's ResNet-18 (11,689,512, classifier 513,000) has no projection shortcut in
    # block_group1; the original SimCLR code has one there (1x1 conv 64 -> 64 and its batch norm).
    assert _expected_param_count(18) == 11_689_512 - 513_000 + 64 * 64 + 2 * 64
    # SimCLRv2 (arXiv 2006.10029), Table 1: encoder parameters in millions, without and with SK.
    published = {
        (50, 1): (24, 35), (50, 2): (94, 140),
        (101, 1): (43, 65), (101, 2): (170, 257),
        (152, 1): (58, 89), (152, 3): (None, 795),
    }
    for (depth, width), (plain, with_sk) in published.items():
        if plain is not None:
            assert round(_expected_param_count(depth, width) / 1e6) == plain
        assert round(_expected_param_count(depth, width, sk_ratio=0.0625) / 1e6) == with_sk


@pytest.mark.parametrize(
    "depth, width, kwargs",
    [
        (10, 1, {"cifar_stem": True}),
        (18, 1, {}),
        (18, 1, {"cifar_stem": True}),
        (34, 1, {}),
        (50, 1, {}),
        (50, 2, {}),
        (50, 1, {"sk_ratio": 0.0625}),
        (50, 1, {"se_ratio": 0.25, "cifar_stem": True}),
        (18, 1, {"sk_ratio": 0.0625, "se_ratio": 0.25}),  # ResNet-D stem and shortcuts, no SK conv
    ],
)
def test_parameter_counts(depth, width, kwargs):
    with keras.StatelessScope():  # shapes only: no memory for the weights' values
        encoder = build_resnet(depth, width, **kwargs)
    trainable = _count(encoder.trainable_weights)
    assert trainable == _expected_param_count(depth, width, **kwargs)
    # Non-trainable weights are exactly the moving mean and variance of every batch norm.
    gammas = [w for w in encoder.weights if w.path.endswith("/gamma")]
    assert _count(encoder.non_trainable_weights) == 2 * _count(gammas)


@pytest.mark.slow
@pytest.mark.parametrize(
    "depth, width, sk_ratio, expected",
    [(50, 4, 0.0, 375_378_176), (152, 3, 0.0625, None)],
)
def test_parameter_counts_of_large_models(depth, width, sk_ratio, expected):
    with keras.StatelessScope():
        encoder = build_resnet(depth, width, sk_ratio=sk_ratio)
    trainable = _count(encoder.trainable_weights)
    assert trainable == _expected_param_count(depth, width, sk_ratio=sk_ratio)
    if expected is not None:
        assert trainable == expected
    else:  # SimCLRv2's ResNet-152 (3x + SK): 795M parameters
        assert round(trainable / 1e6) == 795


# --- initialisation and naming ----------------------------------------------------------------


@pytest.mark.parametrize("depth, kwargs", [(18, {"cifar_stem": True}), (50, {"sk_ratio": 0.0625})])
def test_last_batch_norm_of_every_branch_starts_at_zero(depth, kwargs):
    encoder = build_resnet(depth, **kwargs)
    bottleneck, blocks = ARCHITECTURES[depth]
    last_conv = 3 if bottleneck else 2
    last = re.compile(rf"block_group\d_block\d+_conv{last_conv}_batch_norm/gamma$")
    zero_paths = []
    for w in encoder.weights:
        value = np.asarray(w)
        if w.path.endswith("/gamma"):
            if last.search(w.path):
                zero_paths.append(w.path)
                np.testing.assert_array_equal(value, 0.0)
            else:
                np.testing.assert_array_equal(value, 1.0)
        elif w.path.endswith(("/beta", "/moving_mean")):
            np.testing.assert_array_equal(value, 0.0)
    assert len(zero_paths) == sum(blocks)


def test_blocks_without_projection_start_as_identity(r18_cifar):
    # Zero gamma -> the residual branch outputs 0 and the block returns relu(x) = x (x >= 0).
    x = _images(2, 8)
    probe = keras.Model(
        r18_cifar.input,
        [r18_cifar.get_layer(f"block_group{g}_block1_out").output for g in (1, 2)]
        + [r18_cifar.get_layer(f"block_group{g}_block2_out").output for g in (1, 2)],
    )
    block1_g1, block1_g2, block2_g1, block2_g2 = (np.asarray(t) for t in probe(x, training=False))
    np.testing.assert_array_equal(block2_g1, block1_g1)
    np.testing.assert_array_equal(block2_g2, block1_g2)


def test_layer_names_batch_norm_settings_and_no_conv_bias():
    encoder = build_resnet(50, cifar_stem=True, sk_ratio=0.0625, se_ratio=0.25, batch_norm_decay=0.95)
    paths = [w.path for w in encoder.weights]
    bn_suffixes = ("/gamma", "/beta", "/moving_mean", "/moving_variance")
    assert all("batch_norm" in p for p in paths if p.endswith(bn_suffixes))
    # Only squeeze-excitation's 1x1 convolutions carry a bias, as in the original.
    biases = [p for p in paths if p.endswith("/bias")]
    assert biases and all(re.search(r"_se/(reduce|expand)_conv/bias$", p) for p in biases)
    for layer in encoder.layers:
        assert layer.name == "images" or layer.name.startswith(("stem_", "block_group", "final_avg_pool"))
        if isinstance(layer, keras.layers.Conv2D):
            assert not layer.use_bias
    batch_norms = _batch_norm_layers(encoder)
    assert len(batch_norms) == len([p for p in paths if p.endswith("/gamma")])
    for bn in batch_norms:
        assert "batch_norm" in bn.name
        assert bn.epsilon == EPS and bn.momentum == 0.95 and not bn.synchronized


def test_global_bn_is_synchronized_and_equals_local_bn_on_one_replica():
    local = build_resnet(18, cifar_stem=True)
    synced = build_resnet(18, cifar_stem=True, global_bn=True)
    assert all(bn.synchronized for bn in _batch_norm_layers(synced))
    synced.set_weights(local.get_weights())
    x = _images(4, 8)
    got, want = synced(x, training=True), local(x, training=True)
    # Same batch statistics; the synchronised layer computes the variance as E[x^2] - E[x]^2.
    np.testing.assert_allclose(np.asarray(got["final_avg_pool"]), np.asarray(want["final_avg_pool"]),
                               rtol=1e-3, atol=1e-4)


# --- fused or Keras batch norm --------------------------------------------------------------------


@pytest.mark.parametrize(
    "depth, kwargs",
    [(18, {"cifar_stem": True}),
     pytest.param(50, {"cifar_stem": True, "sk_ratio": 0.0625, "se_ratio": 0.25}, marks=pytest.mark.slow)],
)
def test_fused_and_keras_batch_norm_build_the_same_network(tmp_path, depth, kwargs):
    fused = build_resnet(depth, **kwargs)
    plain = build_resnet(depth, fused_batch_norm=False, **kwargs)
    assert [layer.name for layer in plain.layers] == [layer.name for layer in fused.layers]
    def variables(model):
        return [(w.path, tuple(w.shape)) for w in model.weights]

    assert variables(plain) == variables(fused)
    fused_bns, plain_bns = _batch_norm_layers(fused), _batch_norm_layers(plain)
    assert len(plain_bns) == len(fused_bns) > 0  # selective kernels' inner batch norms included
    assert all(type(bn) is BatchNormalization for bn in fused_bns)
    assert all(type(bn) is keras.layers.BatchNormalization for bn in plain_bns)
    for got, want in zip(plain_bns, fused_bns, strict=True):
        assert got.get_config() == want.get_config()

    # Same numbers in inference mode once the weights are the same.
    rng = np.random.default_rng(6)
    _randomise_batch_norm(fused, rng)
    plain.set_weights(fused.get_weights())
    x = _images(2, 9)
    got, want = plain(x, training=False), fused(x, training=False)
    for name in FEATURE_NAMES:
        np.testing.assert_allclose(np.asarray(got[name]), np.asarray(want[name]), rtol=1e-5, atol=1e-5)

    # A checkpoint written by either restores into a freshly built encoder of the other kind.
    _randomise_batch_norm(plain, rng)  # differ from `fused` from here on
    for source, fused_batch_norm in ((fused, False), (plain, True)):
        path = tf.train.Checkpoint(model=source).write(str(tmp_path / f"to_fused_{fused_batch_norm}"))
        target = build_resnet(depth, fused_batch_norm=fused_batch_norm, **kwargs)
        tf.train.Checkpoint(model=target).read(path).assert_consumed()
        for got_weight, want_weight in zip(target.weights, source.weights, strict=True):
            np.testing.assert_array_equal(np.asarray(got_weight), np.asarray(want_weight),
                                          err_msg=want_weight.path)


# --- freezing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [-1, 0, 1, 2, 3, 4])
def test_freeze_up_to_block(r18_cifar, k):
    encoder = r18_cifar
    moving = ("moving_mean", "moving_variance")
    all_trainable = {w.path for w in encoder.weights if not w.path.endswith(moving)}
    frozen_prefixes = () if k < 0 else ("stem_",) + tuple(f"block_group{g}_" for g in range(1, k + 1))
    try:
        frozen = freeze_up_to_block(encoder, k)
        expected = {p for p in all_trainable if not p.startswith(frozen_prefixes)}
        assert {w.path for w in encoder.trainable_weights} == expected
        assert all(layer.name.startswith(frozen_prefixes) for layer in frozen)
        if k >= 0:
            assert {layer.name for layer in frozen} >= {"stem_conv", "stem_batch_norm"}
        if k == 4:
            assert not encoder.trainable_weights
    finally:
        freeze_up_to_block(encoder, -1)
    assert len(encoder.trainable_weights) == len(all_trainable)  # the reset is complete


def test_frozen_batch_norm_runs_in_inference_mode():
    encoder = build_resnet(18, cifar_stem=True)
    _randomise_batch_norm(encoder, np.random.default_rng(1))
    freeze_up_to_block(encoder, 1)
    before = {w.path: np.asarray(w).copy() for w in encoder.non_trainable_weights}
    x = _images(4, 8)
    encoder(x, training=True)
    after = {w.path: np.asarray(w) for w in encoder.non_trainable_weights}
    for path, value in before.items():
        frozen = path.startswith(("stem_", "block_group1_"))
        assert np.array_equal(after[path], value) == frozen, path


@pytest.mark.parametrize("k", [5, -2, 1.0, True, "4"])
def test_freeze_up_to_block_rejects_bad_k(r18_cifar, k):
    with pytest.raises(ValueError, match=r"`fine_tune_after_block` must be an integer in \[-1, 4\]"):
        freeze_up_to_block(r18_cifar, k)


def test_freeze_up_to_block_rejects_other_models():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs), name="mlp")
    with pytest.raises(ValueError, match="`encoder` must be a model built by `build_resnet`.*'mlp'"):
        freeze_up_to_block(model, 0)


# --- SK and SE --------------------------------------------------------------------------------


@pytest.mark.parametrize("strides, size", [(1, 5), (2, 7), (2, 6)])
def test_selective_kernel_matches_numpy(strides, size):
    rng = np.random.default_rng(2)
    layer = SelectiveKernelConv2D(8, strides=strides, sk_ratio=0.25, min_dim=4)
    x = rng.normal(size=(2, size, size, 3)).astype("float32")
    layer(x, training=False)
    for bn in (layer.batch_norm, layer.reduce_batch_norm):
        dim = bn.gamma.shape[0]
        bn.gamma.assign(rng.uniform(0.5, 1.5, dim).astype("float32"))
        bn.beta.assign(rng.normal(0.0, 0.2, dim).astype("float32"))
        bn.moving_mean.assign(rng.normal(0.0, 0.2, dim).astype("float32"))
        bn.moving_variance.assign(rng.uniform(0.5, 2.0, dim).astype("float32"))
    assert layer.mid_dim == 4  # max(int(8 * 0.25), 4)
    got = np.asarray(layer(x, training=False))

    streams = _np_batch_norm(_np_conv(x, np.asarray(layer.conv.kernel), strides), layer.batch_norm)
    streams = np.maximum(streams, 0)
    a, b = streams[..., :8], streams[..., 8:]
    squeeze = (a + b).mean(axis=(1, 2), keepdims=True)
    squeeze = np.maximum(_np_batch_norm(squeeze @ np.asarray(layer.reduce_conv.kernel)[0, 0],
                                        layer.reduce_batch_norm), 0)
    logits = squeeze @ np.asarray(layer.expand_conv.kernel)[0, 0]
    weight_a = 1.0 / (1.0 + np.exp(logits[..., 8:] - logits[..., :8]))  # softmax over the two streams
    expected = weight_a * a + (1.0 - weight_a) * b
    assert got.shape == (2, math.ceil(size / strides), math.ceil(size / strides), 8)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert layer.compute_output_shape((None, size, size, 3)) == got.shape[:0] + (None, *got.shape[1:])


def test_squeeze_excitation_matches_numpy():
    rng = np.random.default_rng(3)
    layer = SqueezeExcitation(filters=8, se_ratio=0.25)
    x = rng.normal(size=(2, 3, 3, 32)).astype("float32")
    got = np.asarray(layer(x))
    assert layer.reduce_dim == 2
    squeeze = x.mean(axis=(1, 2), keepdims=True)
    hidden = squeeze @ np.asarray(layer.reduce_conv.kernel)[0, 0] + np.asarray(layer.reduce_conv.bias)
    hidden = np.maximum(hidden, 0)
    gate = 1.0 / (1.0 + np.exp(-(hidden @ np.asarray(layer.expand_conv.kernel)[0, 0]
                                 + np.asarray(layer.expand_conv.bias))))
    np.testing.assert_allclose(got, gate * x, rtol=1e-5, atol=1e-6)
    assert layer.compute_output_shape((None, 3, 3, 32)) == (None, 3, 3, 32)


@pytest.mark.parametrize(
    "kwargs",
    [{"sk_ratio": 0.0625}, {"se_ratio": 0.25}, {"sk_ratio": 0.0625, "se_ratio": 0.25, "cifar_stem": True}],
)
def test_sk_and_se_encoders_run(kwargs):
    encoder = build_resnet(50, **kwargs)
    cifar_stem = kwargs.get("cifar_stem", False)
    size = 9 if cifar_stem else 33
    features = encoder(_images(2, size), training=True)
    got = {name: tuple(value.shape) for name, value in features.items()}
    assert got == _expected_shapes(50, 1, size, cifar_stem)
    names = {layer.name for layer in encoder.layers}
    assert ("block_group2_block1_sk_conv" in names) == ("sk_ratio" in kwargs)
    assert ("block_group2_block1_se" in names) == ("se_ratio" in kwargs)
    if "sk_ratio" in kwargs:  # ResNet-D: average-pooling shortcut, and the deep stem
        assert "block_group2_block1_shortcut_avg_pool" in names
        assert ("stem_conv3" in names) == (not cifar_stem)
    assert all(np.isfinite(np.asarray(v)).all() for v in features.values())


def test_custom_layer_config_round_trip():
    x = np.random.default_rng(4).normal(size=(2, 6, 6, 8)).astype("float32")
    for layer in (
        SelectiveKernelConv2D(4, strides=2, sk_ratio=0.5, min_dim=2, batch_norm_decay=0.99, global_bn=True),
        SelectiveKernelConv2D(4, sk_ratio=0.5, min_dim=2, fused_batch_norm=False),
        SqueezeExcitation(filters=4, se_ratio=0.5),
    ):
        want = np.asarray(layer(x, training=False) if isinstance(layer, SelectiveKernelConv2D) else layer(x))
        config = layer.get_config()
        clone = type(layer).from_config(config)
        assert clone.get_config() == config
        clone.build(x.shape)
        clone.set_weights(layer.get_weights())
        got = np.asarray(clone(x, training=False) if isinstance(clone, SelectiveKernelConv2D) else clone(x))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
        assert type(restored) is type(layer) and restored.get_config() == config


def test_selective_kernel_batch_norm_class_and_configs_saved_before_the_argument():
    fused, plain = SelectiveKernelConv2D(8), SelectiveKernelConv2D(8, fused_batch_norm=False)
    assert type(fused.batch_norm) is type(fused.reduce_batch_norm) is BatchNormalization
    assert type(plain.batch_norm) is type(plain.reduce_batch_norm) is keras.layers.BatchNormalization
    config = plain.get_config()
    assert config["fused_batch_norm"] is False
    assert SelectiveKernelConv2D.from_config(config).fused_batch_norm is False
    # `.keras` files written before the argument existed have no such key: they load as they were
    # built, with the fused layer.
    del config["fused_batch_norm"]
    restored = SelectiveKernelConv2D.from_config(config)
    assert restored.fused_batch_norm is True and type(restored.batch_norm) is BatchNormalization


def test_moved_names_are_still_importable_from_resnet_and_keep_their_registration():
    from simclr_tf.models import batch_norm, layers

    assert resnet.SelectiveKernelConv2D is layers.SelectiveKernelConv2D is SelectiveKernelConv2D
    assert resnet.SqueezeExcitation is layers.SqueezeExcitation is SqueezeExcitation
    assert resnet.BATCH_NORM_EPSILON is batch_norm.BATCH_NORM_EPSILON == EPS
    # The names saved `.keras` files refer to.
    assert keras.saving.get_registered_name(SelectiveKernelConv2D) == "simclr_tf>SelectiveKernelConv2D"
    assert keras.saving.get_registered_name(SqueezeExcitation) == "simclr_tf>SqueezeExcitation"
    assert keras.saving.get_registered_object("simclr_tf>SelectiveKernelConv2D") is SelectiveKernelConv2D


def test_save_and_reload(tmp_path):
    rng = np.random.default_rng(5)
    encoder = build_resnet(18, cifar_stem=True, sk_ratio=0.0625, se_ratio=0.25, name="encoder")
    _randomise_batch_norm(encoder, rng)
    path = str(tmp_path / "encoder.keras")
    encoder.save(path)
    reloaded = keras.saving.load_model(path)
    x = _images(2, 8)
    want, got = encoder(x, training=False), reloaded(x, training=False)
    assert set(got) == set(FEATURE_NAMES)
    for name in FEATURE_NAMES:
        np.testing.assert_allclose(np.asarray(got[name]), np.asarray(want[name]), rtol=1e-6, atol=1e-6)

    # The SK layer lives only in bottleneck ResNets; save it in a small model of its own.
    inputs = keras.Input((None, None, 8))
    y = SelectiveKernelConv2D(16, strides=2, name="sk")(inputs)
    small = keras.Model(inputs, SqueezeExcitation(4, 0.25, name="se")(y))
    _randomise_batch_norm(small, rng)
    small.save(str(tmp_path / "small.keras"))
    reloaded = keras.saving.load_model(str(tmp_path / "small.keras"))
    x = rng.normal(size=(2, 5, 5, 8)).astype("float32")
    np.testing.assert_allclose(np.asarray(reloaded(x, training=False)), np.asarray(small(x, training=False)),
                               rtol=1e-6, atol=1e-6)


def test_jit_compiled_forward_equals_eager(r18_cifar):
    x = _images(2, 16)
    eager = r18_cifar(x, training=False)
    compiled = tf.function(lambda images: r18_cifar(images, training=False), jit_compile=True)(x)
    for name in FEATURE_NAMES:
        np.testing.assert_allclose(np.asarray(compiled[name]), np.asarray(eager[name]), rtol=1e-4, atol=1e-5)


def test_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        encoder = build_resnet(18, cifar_stem=True, se_ratio=0.25)
        sk = SelectiveKernelConv2D(8, strides=2)
    finally:
        keras.config.set_dtype_policy(previous)
    features = encoder(_images(2, 8), training=True)
    assert all(keras.backend.standardize_dtype(v.dtype) == "bfloat16" for v in features.values())
    assert keras.backend.standardize_dtype(sk(_images(2, 6), training=True).dtype) == "bfloat16"
    assert all(w.dtype == "float32" for w in encoder.weights + sk.weights)


# --- argument validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((20,), {},
         r"`resnet_depth` must be one of 10, 18, 34, 50, 101, 152, 200\. Received: resnet_depth=20"),
        ((18, 0), {}, "`width_multiplier` must be a positive integer. Received: width_multiplier=0"),
        ((18, 1.5), {}, "`width_multiplier` must be a positive integer"),
        ((50,), {"sk_ratio": 1.0}, r"`sk_ratio` must be a number in \[0, 1\).*sk_ratio=1.0"),
        ((50,), {"se_ratio": -0.1}, r"`se_ratio` must be a number in \[0, 1\)"),
        ((50,), {"sk_ratio": "0.1"}, r"`sk_ratio` must be a number in \[0, 1\).*0 disables it"),
        ((True,), {}, "`resnet_depth` must be one of .*Received: resnet_depth=True"),
        ((18,), {"batch_norm_decay": 1.0},
         r"`batch_norm_decay` must be a number in \(0, 1\).*batch_norm_decay=1.0"),
        ((18,), {"conv_gradients": "cpu"},
         r"`conv_gradients` must be 'auto', a .*ConvGradients` or None .*conv_gradients='cpu'"),
    ],
)
def test_build_resnet_rejects_bad_args(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_resnet(*args, **kwargs)


def test_layers_and_helpers_reject_bad_args():
    with pytest.raises(ValueError, match="`resnet_depth` must be one of"):
        resnet_output_dim(19)
    with pytest.raises(ValueError, match="`width_multiplier` must be a positive integer"):
        resnet_output_dim(50, 0)
    with pytest.raises(ValueError, match="`filters` must be a positive integer. Received: filters=0"):
        SelectiveKernelConv2D(0)
    with pytest.raises(ValueError, match="`strides` must be a positive integer"):
        SelectiveKernelConv2D(8, strides=0)
    with pytest.raises(ValueError, match=r"`sk_ratio` must be a number in \(0, 1\).*sk_ratio=0"):
        SelectiveKernelConv2D(8, sk_ratio=0)
    with pytest.raises(ValueError, match=r"`se_ratio` must be a number in \(0, 1\).*se_ratio=1.5"):
        SqueezeExcitation(8, 1.5)
