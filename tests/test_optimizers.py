"""LARS against a NumPy transcription of its update rule; schedule, scaling and weight decay by hand."""

import math
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.optimizers import LARS, NAME_RULE, VariableRoles, build_optimizer, weight_decay_loss
from simclr_tf.schedules import ScheduleSteps, WarmupCosineDecay, compute_schedule

# --- a NumPy transcription of the LARS rule (the original SimCLR code) ------------------------


def numpy_lars(weights, gradients, learning_rates, *, momentum, weight_decay, eta, nesterov, decay, adapt):
    """Runs len(gradients) LARS steps on one variable; learning_rates[t] is the rate at step t."""
    w = np.array(weights, np.float64)
    v = np.zeros_like(w)
    for g, lr in zip(gradients, learning_rates, strict=True):
        g = np.array(g, np.float64)
        if decay:
            g = g + weight_decay * w
        trust_ratio = 1.0
        if adapt:
            w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
            if w_norm > 0 and g_norm > 0:
                trust_ratio = eta * w_norm / g_norm
        scaled_lr = lr * trust_ratio
        v = momentum * v + scaled_lr * g
        update = momentum * v + scaled_lr * g if nesterov else v
        w = w - update
    return w


def make_variables():
    """Keras variables with realistic paths: what LARS decays/adapts is decided by these paths."""
    dense = keras.layers.Dense(3, name="block_group1_conv1")  # kernel: decay + adaptation
    dense.build((None, 4))
    norm = keras.layers.BatchNormalization(name="block_group1_batch_norm")  # excluded
    norm.build((None, 3))
    head = keras.layers.Dense(2, name="head_supervised")  # excluded (decayed by the loss term)
    head.build((None, 3))
    variables = dense.trainable_weights + norm.trainable_weights + head.trainable_weights
    rng = np.random.default_rng(0)
    for v in variables:
        v.assign(rng.normal(size=v.shape).astype(np.float32))
    return variables


def random_gradients(variables, steps, seed=1):
    rng = np.random.default_rng(seed)
    return [[rng.normal(size=v.shape).astype(np.float32) for v in variables] for _ in range(steps)]


PATHS = {
    "block_group1_conv1/kernel": (True, True),
    "block_group1_conv1/bias": (False, False),
    "block_group1_batch_norm/gamma": (False, False),
    "block_group1_batch_norm/beta": (False, False),
    "head_supervised/kernel": (False, False),
    "head_supervised/bias": (False, False),
}

HYPER = dict(momentum=0.9, weight_decay=0.05, eta=0.4)


def test_exclusions_follow_the_variable_paths():
    variables = make_variables()
    optimizer = LARS(0.1, **HYPER)
    assert {v.path: (optimizer.uses_weight_decay(v), optimizer.uses_layer_adaptation(v))
            for v in variables} == PATHS


@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_matches_the_numpy_rule(steps, nesterov):
    variables = make_variables()
    initial = [v.numpy() for v in variables]
    gradients = random_gradients(variables, steps)
    optimizer = LARS(0.5, nesterov=nesterov, **HYPER)
    for step_gradients in gradients:
        optimizer.apply([tf.constant(g) for g in step_gradients], variables)
    assert int(optimizer.iterations) == steps
    for i, v in enumerate(variables):
        decay, adapt = PATHS[v.path]
        expected = numpy_lars(
            initial[i], [g[i] for g in gradients], [0.5] * steps,
            nesterov=nesterov, decay=decay, adapt=adapt, **HYPER,
        )
        np.testing.assert_allclose(v.numpy(), expected, rtol=1e-5, atol=1e-6, err_msg=v.path)


def test_excluded_variables_get_plain_momentum_sgd():
    # Hand-worked: two steps with a constant gradient g, lr 0.5, momentum 0.9, no decay or
    # adaptation: v1 = 0.5 g, v2 = 0.9 * 0.5 g + 0.5 g = 0.95 g; w2 = w0 - (v1 + v2) = w0 - 1.45 g.
    variables = make_variables()
    gamma = next(v for v in variables if v.path.endswith("batch_norm/gamma"))
    w0 = gamma.numpy()
    g = np.array([1.0, -2.0, 0.5], np.float32)
    optimizer = LARS(0.5, **HYPER)
    optimizer.build(variables)
    for _ in range(2):
        optimizer.apply([tf.constant(g)], [gamma])
    np.testing.assert_allclose(gamma.numpy(), w0 - 1.45 * g, rtol=1e-6)


def test_separate_adaptation_exclusions():
    # Biases decay but are not adapted; batch norm is adapted but not decayed.
    variables = make_variables()
    initial = [v.numpy() for v in variables]
    gradients = random_gradients(variables, 3, seed=2)
    optimizer = LARS(
        0.5, exclude_from_weight_decay=("batch_norm",), exclude_from_layer_adaptation=("bias",), **HYPER
    )
    for step_gradients in gradients:
        optimizer.apply(step_gradients, variables)
    for i, v in enumerate(variables):
        decay, adapt = "batch_norm" not in v.path, "bias" not in v.path
        assert (optimizer.uses_weight_decay(v), optimizer.uses_layer_adaptation(v)) == (decay, adapt)
        expected = numpy_lars(
            initial[i], [g[i] for g in gradients], [0.5] * 3,
            nesterov=False, decay=decay, adapt=adapt, **HYPER,
        )
        np.testing.assert_allclose(v.numpy(), expected, rtol=1e-5, atol=1e-6, err_msg=v.path)


def test_zero_weights_get_trust_ratio_one():
    # ||w|| = 0: the trust ratio is 1, so the first step is plain SGD, w1 = -lr * g.
    kernel = keras.Variable(np.zeros((3, 2), np.float32), name="kernel")
    g = np.arange(6, dtype=np.float32).reshape(3, 2) - 2.5
    optimizer = LARS(0.1, **HYPER)
    optimizer.apply([tf.constant(g)], [kernel])
    np.testing.assert_allclose(kernel.numpy(), -0.1 * g, rtol=1e-6)


def test_zero_gradient_without_decay_leaves_weights_unchanged():
    # ||g|| = 0: the trust ratio is 1 (not 0/0), and nothing moves.
    kernel = keras.Variable(np.ones((3, 2), np.float32), name="kernel")
    optimizer = LARS(0.1, momentum=0.9, weight_decay=0.0, eta=0.4)
    optimizer.apply([tf.zeros((3, 2))], [kernel])
    np.testing.assert_array_equal(kernel.numpy(), np.ones((3, 2), np.float32))


def test_no_decoupled_decay_from_the_base_class():
    # Zero gradient, decay on, adaptation off: only the coupled decay moves w, once:
    # w1 = w0 - lr * wd * w0 (a second, decoupled decay would give w0 * (1 - lr * wd) ** 2).
    kernel = keras.Variable(np.full((2, 2), 2.0, np.float32), name="kernel")
    optimizer = LARS(0.5, momentum=0.9, weight_decay=0.1, exclude_from_layer_adaptation=("kernel",))
    optimizer.apply([tf.zeros((2, 2))], [kernel])
    np.testing.assert_allclose(kernel.numpy(), np.full((2, 2), 2.0 * (1 - 0.05)), rtol=1e-6)


def test_same_result_in_a_jit_compiled_function():
    variables = make_variables()
    initial = [v.numpy() for v in variables]
    gradients = random_gradients(variables, 3, seed=3)
    optimizer = LARS(0.5, nesterov=True, **HYPER)
    optimizer.build(variables)

    @tf.function(jit_compile=True)
    def apply(step_gradients):
        optimizer.apply(step_gradients, variables)

    for step_gradients in gradients:
        apply([tf.constant(g) for g in step_gradients])
    for i, v in enumerate(variables):
        decay, adapt = PATHS[v.path]
        expected = numpy_lars(
            initial[i], [g[i] for g in gradients], [0.5] * 3,
            nesterov=True, decay=decay, adapt=adapt, **HYPER,
        )
        np.testing.assert_allclose(v.numpy(), expected, rtol=1e-5, atol=1e-6, err_msg=v.path)


def test_lars_with_the_schedule():
    variables = make_variables()
    initial = [v.numpy() for v in variables]
    gradients = random_gradients(variables, 5, seed=4)
    peak, warmup, total = 0.8, 2, 6
    optimizer = LARS(WarmupCosineDecay(peak, warmup, total), **HYPER)
    for step_gradients in gradients:
        optimizer.apply(step_gradients, variables)
    # Step t uses lr(t): 0, 0.4, then the cosine 0.8 * (1 + cos(pi * (t - 2) / 4)) / 2.
    rates = [0.0, 0.4] + [peak * 0.5 * (1 + math.cos(math.pi * (t - warmup) / (total - warmup)))
                          for t in range(2, 5)]
    for i, v in enumerate(variables):
        decay, adapt = PATHS[v.path]
        expected = numpy_lars(
            initial[i], [g[i] for g in gradients], rates, nesterov=False, decay=decay, adapt=adapt, **HYPER
        )
        np.testing.assert_allclose(v.numpy(), expected, rtol=1e-5, atol=1e-6, err_msg=v.path)


def test_lars_config_round_trip():
    optimizer = LARS(
        WarmupCosineDecay(1.2, 10, 100),
        momentum=0.8,
        weight_decay=1e-6,
        eta=0.002,
        nesterov=True,
        exclude_from_weight_decay=("bias",),
        exclude_from_layer_adaptation=("batch_norm", "bias"),
        clipnorm=1.0,
    )
    config = optimizer.get_config()
    assert config["weight_decay"] == 1e-6 and config["eta"] == 0.002 and config["momentum"] == 0.8
    assert config["exclude_from_weight_decay"] == ["bias"]
    assert config["exclude_from_layer_adaptation"] == ["batch_norm", "bias"]
    restored = LARS.from_config(dict(config))  # from_config deserialises the schedule in place
    assert restored.get_config() == config
    # Through Keras' registry, as when a .keras file is loaded.
    again = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(again, LARS)
    assert again.get_config() == config  # including the serialised WarmupCosineDecay
    assert again.exclude_from_weight_decay == ("bias",)


def test_restored_lars_updates_like_the_original():
    variables_a, variables_b = make_variables(), make_variables()
    gradients = random_gradients(variables_a, 2, seed=5)
    optimizer = LARS(0.5, **HYPER)
    restored = LARS.from_config(optimizer.get_config())
    for step_gradients in gradients:
        optimizer.apply(step_gradients, variables_a)
        restored.apply(step_gradients, variables_b)
    for a, b in zip(variables_a, variables_b, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(momentum=1.0), r"`momentum` must be a number in \[0.0, 1.0\)\. Received: momentum=1.0"),
        (dict(momentum=-0.1), r"`momentum` must be a number in \[0.0, 1.0\)"),
        (dict(weight_decay=-1e-6), r"`weight_decay` must be a number >= 0.0\. Received: weight_decay=-1e-06"),
        (dict(eta=0.0), r"`eta` must be a number > 0.0\. Received: eta=0.0"),
        (dict(exclude_from_weight_decay="bias"), r"`exclude_from_weight_decay` must be a list or tuple"),
        (dict(exclude_from_layer_adaptation=[1]), r"`exclude_from_layer_adaptation` must be a list or tuple"),
    ],
)
def test_lars_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LARS(0.1, **kwargs)


# --- the schedule ------------------------------------------------------------------------------


def test_warmup_cosine_values():
    peak, warmup, total = 2.0, 10, 110
    schedule = WarmupCosineDecay(peak, warmup, total)
    cases = {
        0: 0.0,  # warm-up starts at 0
        5: 1.0,  # halfway through the warm-up: peak / 2
        10: 2.0,  # the peak
        35: peak * 0.5 * (1 + math.cos(math.pi * 0.25)),
        60: 1.0,  # midpoint of the cosine: peak / 2
        110: 0.0,  # end
        500: 0.0,  # clamped after the end
    }
    for step, expected in cases.items():
        np.testing.assert_allclose(float(schedule(step)), expected, atol=1e-6, err_msg=f"step {step}")


def test_warmup_cosine_in_a_tf_function_with_int64_steps():
    schedule = WarmupCosineDecay(2.0, 10, 110)
    values = tf.function(lambda steps: tf.map_fn(schedule, steps, fn_output_signature=tf.float32))(
        tf.constant([0, 5, 60], tf.int64)
    )
    np.testing.assert_allclose(values.numpy(), [0.0, 1.0, 1.0], atol=1e-6)


def test_no_warmup_starts_at_the_peak():
    schedule = WarmupCosineDecay(0.5, 0, 10)
    np.testing.assert_allclose(float(schedule(0)), 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(5)), 0.25, rtol=1e-6)


def test_warmup_longer_than_training_follows_the_ramp_then_stops():
    schedule = WarmupCosineDecay(1.0, 10, 4)
    np.testing.assert_allclose([float(schedule(s)) for s in (0, 2, 3, 4, 8)], [0.0, 0.2, 0.3, 0.0, 0.0],
                               atol=1e-6)


@pytest.mark.parametrize("peak, warmup, total", [(4.8, 3128, 31279), (2.0, 10, 110), (0.3, 0, 50),
                                                 (1.0, 7, 8), (1.0, 10, 4)])
def test_schedule_is_the_original_formula_at_every_step(peak, warmup, total):
    """lr 0 at step 0, linear warm-up, cosine to 0 at total_steps and 0 after (original code)."""
    schedule = WarmupCosineDecay(peak, warmup, total)
    steps = np.arange(0, total + 3)
    expected = []
    for step in steps:
        if step >= total:
            expected.append(0.0)
        elif step < warmup:
            expected.append(peak * step / warmup)
        else:
            expected.append(peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))))
    got = tf.function(lambda s: tf.map_fn(schedule, s, fn_output_signature=tf.float32))(
        tf.constant(steps, tf.int64))
    np.testing.assert_allclose(got.numpy(), expected, rtol=2e-6, atol=1e-6 * peak)


def test_schedule_config_round_trip():
    schedule = WarmupCosineDecay(1.5, 7, 70)
    restored = WarmupCosineDecay.from_config(schedule.get_config())
    assert restored.get_config() == {"peak_learning_rate": 1.5, "warmup_steps": 7, "total_steps": 70,
                                     "name": "WarmupCosineDecay"}
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert isinstance(again, WarmupCosineDecay)
    for step in (0, 3, 7, 30, 70):
        assert float(again(step)) == float(schedule(step))


@pytest.mark.parametrize(
    "args, match",
    [
        ((-1.0, 10, 100),
         r"`peak_learning_rate` must be a number >= 0.0\. Received: peak_learning_rate=-1.0"),
        ((1.0, -1, 100), r"`warmup_steps` must be an integer >= 0\. Received: warmup_steps=-1"),
        ((1.0, 10, 0), r"`total_steps` must be an integer >= 1\. Received: total_steps=0"),
        ((1.0, 2.5, 100), r"`warmup_steps` must be an integer"),
    ],
)
def test_schedule_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        WarmupCosineDecay(*args)


# --- compute_schedule --------------------------------------------------------------------------


def _schedule(**overrides):
    kwargs = dict(
        base_learning_rate=0.3, learning_rate_scaling="linear", batch_size=4096,
        num_train_examples=1281167, train_epochs=100, train_steps=0, warmup_epochs=10,
    )
    kwargs.update(overrides)
    return compute_schedule(**kwargs)


def test_imagenet_linear_scaling_by_hand():
    # 0.3 * 4096 / 256 = 4.8; 1281167 // 4096 = 312 (312 * 4096 = 1277952);
    # 128116700 / 4096 = 31278.49 -> 31279; 12811670 / 4096 = 3127.85 -> 3128.
    result = _schedule()
    assert result == ScheduleSteps(
        peak_learning_rate=pytest.approx(4.8), steps_per_epoch=312, total_steps=31279, warmup_steps=3128
    )


def test_sqrt_scaling_of_simclr_v2():
    # 0.075 * sqrt(4096) = 0.075 * 64 = 4.8; 0.075 * sqrt(1024) = 2.4.
    assert _schedule(base_learning_rate=0.075, learning_rate_scaling="sqrt").peak_learning_rate == \
        pytest.approx(4.8)
    assert _schedule(base_learning_rate=0.075, learning_rate_scaling="sqrt", batch_size=1024) \
        .peak_learning_rate == pytest.approx(2.4)


def test_no_scaling():
    assert _schedule(learning_rate_scaling="none").peak_learning_rate == 0.3


def test_cifar10_by_hand():
    # 1.0 * 512 / 256 = 2; 50000 // 512 = 97; 50000 * 800 / 512 = 78125 exactly;
    # 50000 * 10 / 512 = 976.5625 -> 977.
    result = _schedule(base_learning_rate=1.0, batch_size=512, num_train_examples=50000, train_epochs=800)
    assert result == ScheduleSteps(2.0, 97, 78125, 977)


def test_train_steps_win_over_epochs():
    result = _schedule(train_steps=1000)
    assert result.total_steps == 1000
    assert result.warmup_steps == 3128  # warm-up still counts in epochs


def test_data_set_smaller_than_a_batch():
    # 100 // 256 = 0 -> at least 1 step per epoch; 100 * 10 / 256 = 3.9 -> 4; 100 / 256 = 0.39 -> 0.
    result = _schedule(batch_size=256, num_train_examples=100, train_epochs=10, warmup_epochs=1)
    assert result == ScheduleSteps(0.3, 1, 4, 0)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(learning_rate_scaling="cubic"),
         r"`learning_rate_scaling` must be one of 'linear', 'sqrt', 'none'\. Received: "
         r"learning_rate_scaling='cubic'"),
        (dict(batch_size=0), r"`batch_size` must be a positive integer\. Received: batch_size=0"),
        (dict(batch_size=-8), r"`batch_size` must be a positive integer"),
        (dict(num_train_examples=0), r"`num_train_examples` must be a positive integer"),
        (dict(warmup_epochs=-1), r"`warmup_epochs` must be a non-negative number"),
        (dict(train_epochs=0, train_steps=0),
         r"no training steps: set `train_epochs > 0` or `train_steps > 0`"),
    ],
)
def test_compute_schedule_rejects_bad_arguments(overrides, match):
    with pytest.raises(ValueError, match=match):
        _schedule(**overrides)


# --- build_optimizer ---------------------------------------------------------------------------


def test_build_optimizer():
    lars = build_optimizer("lars", 0.3, momentum=0.8, weight_decay=1e-6, lars_eta=0.002)
    assert isinstance(lars, LARS)
    assert (lars.momentum, lars.weight_decay, lars.eta, lars.nesterov) == (0.8, 1e-6, 0.002, False)
    sgd = build_optimizer("momentum", 0.3, momentum=0.9, weight_decay=1e-6)
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.nesterov and sgd.momentum == 0.9
    assert sgd.weight_decay is None  # decayed through weight_decay_loss, not by the optimizer
    adam = build_optimizer("adam", 1e-3)
    assert isinstance(adam, keras.optimizers.Adam) and adam.weight_decay is None
    np.testing.assert_allclose(float(adam.learning_rate), 1e-3, rtol=1e-6)


def test_build_optimizer_accepts_a_schedule():
    schedule = WarmupCosineDecay(1.0, 2, 10)
    for name in ("lars", "momentum", "adam"):
        optimizer = build_optimizer(name, schedule)
        np.testing.assert_allclose(float(optimizer.learning_rate), 0.0)  # step 0 of the warm-up


def test_build_optimizer_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"`optimizer` must be one of 'lars', 'momentum', 'adam'\. "
                                         r"Received: optimizer='sgd'"):
        build_optimizer("sgd", 0.1)


# --- weight_decay_loss -------------------------------------------------------------------------


def _decay_variables():
    conv = keras.layers.Conv2D(2, 3, name="block_group1_conv1")
    conv.build((None, 8, 8, 3))
    norm = keras.layers.BatchNormalization(name="block_group1_batch_norm")
    norm.build((None, 8, 8, 2))
    proj = keras.layers.Dense(4, name="projection_dense")
    proj.build((None, 2))
    head = keras.layers.Dense(3, name="head_supervised")
    head.build((None, 2))
    variables = conv.trainable_weights + norm.trainable_weights + proj.trainable_weights + \
        head.trainable_weights
    rng = np.random.default_rng(6)
    for v in variables:
        v.assign(rng.normal(size=v.shape).astype(np.float32))
    return variables


def _half_sum_of_squares(variables):
    return sum(0.5 * np.sum(np.square(v.numpy().astype(np.float64))) for v in variables)


def test_weight_decay_loss_with_lars_decays_only_the_supervised_head_kernel():
    variables = _decay_variables()
    head_kernel = [v for v in variables if v.path == "head_supervised/kernel"]
    loss = weight_decay_loss(variables, optimizer_name="lars", weight_decay=1e-3)
    assert loss.dtype == tf.float32 and loss.shape == ()
    np.testing.assert_allclose(loss.numpy(), 1e-3 * _half_sum_of_squares(head_kernel), rtol=1e-6)


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_weight_decay_loss_without_lars_decays_all_but_batch_norm(name):
    variables = _decay_variables()
    decayed = [v for v in variables if "batch_norm" not in v.path]
    assert len(decayed) == len(variables) - 2  # gamma and beta left out
    loss = weight_decay_loss(variables, optimizer_name=name, weight_decay=1e-3)
    np.testing.assert_allclose(loss.numpy(), 1e-3 * _half_sum_of_squares(decayed), rtol=1e-6)


@pytest.mark.parametrize("name", ["lars", "momentum", "adam"])
def test_weight_decay_loss_is_zero_without_decay(name):
    loss = weight_decay_loss(_decay_variables(), optimizer_name=name, weight_decay=0.0)
    assert loss.dtype == tf.float32 and float(loss) == 0.0


def test_weight_decay_loss_is_zero_when_nothing_matches():
    variables = [v for v in _decay_variables() if "head_supervised" not in v.path]
    loss = weight_decay_loss(variables, optimizer_name="lars", weight_decay=1e-3)
    assert loss.dtype == tf.float32 and float(loss) == 0.0


def test_weight_decay_loss_is_differentiable():
    # d/dw (wd * sum(w^2) / 2) = wd * w
    variables = _decay_variables()
    with tf.GradientTape() as tape:
        loss = weight_decay_loss(variables, optimizer_name="momentum", weight_decay=0.1)
    gradients = tape.gradient(loss, variables)
    for v, g in zip(variables, gradients, strict=True):
        if "batch_norm" in v.path:
            assert g is None
        else:
            np.testing.assert_allclose(g.numpy(), 0.1 * v.numpy(), rtol=1e-6)


def test_weight_decay_loss_rejects_unknown_optimizers():
    with pytest.raises(ValueError, match=r"`optimizer_name` must be one of 'lars', 'momentum', 'adam'\. "
                                         r"Received: optimizer_name='sgd'"):
        weight_decay_loss([], optimizer_name="sgd", weight_decay=1e-6)


# --- exclusion by role --------------------------------------------------------------------------


def _lars_excluded(optimizer, variables):
    optimizer.build(variables)
    return {v.path for v, decay in zip(variables, optimizer._decay_flags, strict=True) if not decay}


def test_roles_of_a_keras_applications_resnet50_are_its_batch_norms_and_biases():
    backbone = keras.applications.ResNet50(weights=None, include_top=False, pooling="avg",
                                           input_shape=(32, 32, 3))
    roles = VariableRoles.of(backbone)
    # Reference by Keras' naming of this architecture: batch norms end in "_bn", conv biases "/bias".
    bn = {id(v) for v in backbone.weights if v.path.split("/")[-2].endswith("_bn")}
    biases = {id(v) for v in backbone.weights if v.path.endswith("/bias")}
    assert len(bn) == 53 * 4 and roles.normalization == bn
    assert len(biases) == 53 and roles.bias == biases
    optimizer = LARS(0.1, weight_decay=1e-4)
    optimizer.set_variable_roles(roles)
    excluded = _lars_excluded(optimizer, backbone.trainable_variables)
    trainable_bn = {v.path for v in backbone.trainable_variables if id(v) in bn}
    assert len(trainable_bn) == 106  # gamma and beta of 53 batch norms
    assert excluded == trainable_bn | {v.path for v in backbone.trainable_variables if id(v) in biases}


def test_roles_follow_the_layer_not_its_name():
    inputs = keras.Input((8,))
    x = keras.layers.Dense(4, use_bias=False, name="batch_norm_lookalike")(inputs)  # a kernel: decayed
    x = keras.layers.BatchNormalization(name="bn")(x)  # a batch norm named "bn": excluded
    x = keras.layers.Dense(3, name="out")(x)  # kernel decayed, bias excluded
    model = keras.Model(inputs, x)
    optimizer = LARS(0.1, weight_decay=1e-4)
    optimizer.set_variable_roles(VariableRoles.of(model))
    excluded = _lars_excluded(optimizer, model.trainable_variables)
    assert excluded == {"bn/gamma", "bn/beta", "out/bias"}
    # The name rule, where no roles are given, gets both wrong, and says it is guessing.
    with pytest.warns(UserWarning, match="by their names only"):
        by_name = _lars_excluded(LARS(0.1, weight_decay=1e-4), model.trainable_variables)
    assert by_name == {"batch_norm_lookalike/kernel", "out/bias"}
    assert NAME_RULE == ("batch_norm", "_bn/", "bias", "head_supervised")


def test_roles_given_after_build_change_the_decisions():
    inputs = keras.Input((8,))
    outputs = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(4, name="d")(inputs))
    model = keras.Model(inputs, outputs)
    optimizer = LARS(0.1, weight_decay=1e-4)
    optimizer.build(model.trainable_variables)
    assert optimizer._decay_flags == [True, False, True, True]  # names: only d/bias matches
    optimizer.set_variable_roles(VariableRoles.of(model))
    assert optimizer._decay_flags == [True, False, False, False]
    assert optimizer._adaptation_flags == [True, False, False, False]


def test_weight_decay_loss_by_role_skips_a_batch_norm_named_bn():
    inputs = keras.Input((8,))
    x = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(4, name="d")(inputs))
    model = keras.Model(inputs, x)
    for v in model.trainable_variables:
        v.assign(np.full(v.shape, 2.0, np.float32))
    roles = VariableRoles.of(model)
    loss = weight_decay_loss(model.trainable_variables, optimizer_name="momentum", weight_decay=0.1,
                             roles=roles)
    # d/kernel (8x4) and d/bias (4) decayed: 0.1 * (32 + 4) * 4 / 2; gamma and beta of "bn" not.
    np.testing.assert_allclose(float(loss), 0.1 * 36 * 2.0, rtol=1e-6)


def test_lars_exclude_from_a_keras_applications_resnet50_compiled_outside_simclr():
    # keras.applications names its batch norms "conv1_bn": neither "batch_norm" nor a SimCLRModel.
    backbone = keras.applications.ResNet50(weights=None, include_top=False, pooling="avg",
                                           input_shape=(32, 32, 3))
    by_path = {v.path: v for v in backbone.trainable_variables}
    rng = np.random.default_rng(0)
    for path in ("conv1_bn/gamma", "conv1_conv/bias"):  # away from 1 and 0, where decay and the
        v = by_path[path]                                # trust ratio would change nothing
        v.assign(rng.normal(1.0, 0.5, size=v.shape).astype(np.float32))
    optimizer = LARS(0.5, exclude_from=backbone, **HYPER)
    # Eager, so the step runs the very ops of the tape below: at batch 2 a random ResNet-50's
    # gradients are ill-conditioned enough that a traced step's reordered sums differ visibly.
    backbone.compile(optimizer=optimizer, loss="mse", run_eagerly=True)
    x = rng.uniform(size=(2, 32, 32, 3)).astype(np.float32)
    y = rng.normal(size=(2, 2048)).astype(np.float32)
    initial = {path: v.numpy() for path, v in by_path.items()}
    with tf.GradientTape() as tape:  # the gradient of Keras' train step, at the initial weights
        loss = keras.losses.MeanSquaredError()(y, backbone(x, training=True))
    gradients = dict(zip(by_path, tape.gradient(loss, list(by_path.values())), strict=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the roles are known: no warning about the name rule
        backbone.train_on_batch(x, y)

    excluded = {v.path for v, decay, adapt in zip(backbone.trainable_variables, optimizer._decay_flags,
                                                   optimizer._adaptation_flags, strict=True)
                if not decay and not adapt}
    roles = VariableRoles.of(backbone)
    assert excluded == {v.path for v in backbone.trainable_variables
                        if roles.is_normalization(v) or roles.is_bias(v)}
    assert len(excluded) == 53 * 3  # gamma, beta and the conv's bias of 53 conv + batch-norm pairs
    for path, decay_and_adapt in [("conv1_bn/gamma", False), ("conv1_conv/bias", False),
                                  ("conv1_conv/kernel", True)]:
        expected = numpy_lars(initial[path], [gradients[path].numpy()], [0.5], nesterov=False,
                              decay=decay_and_adapt, adapt=decay_and_adapt, **HYPER)
        other = numpy_lars(initial[path], [gradients[path].numpy()], [0.5], nesterov=False,
                           decay=not decay_and_adapt, adapt=not decay_and_adapt, **HYPER)
        np.testing.assert_allclose(by_path[path].numpy(), expected, rtol=1e-4, atol=1e-6, err_msg=path)
        assert not np.allclose(by_path[path].numpy(), other, rtol=1e-3, atol=1e-5), path


def test_name_rule_knows_keras_batch_norm_naming_and_warns():
    backbone = keras.applications.ResNet50(weights=None, include_top=False, pooling="avg",
                                           input_shape=(32, 32, 3))
    optimizer = LARS(0.1, weight_decay=1e-4)
    with pytest.warns(UserWarning, match=r"by their names only .* exclude_from=model"):
        excluded = _lars_excluded(optimizer, backbone.trainable_variables)
    roles = VariableRoles.of(backbone)
    # "conv1_bn/gamma" and "conv1_conv/bias": the name rule now finds what the roles find.
    assert excluded == {v.path for v in backbone.trainable_variables
                        if roles.is_normalization(v) or roles.is_bias(v)}
    assert "conv1_bn/gamma" in excluded and "conv1_conv/kernel" not in excluded


def test_exclude_from_is_read_when_built_and_rejects_non_layers():
    inputs = keras.Input((8,))
    outputs = keras.layers.LayerNormalization(name="ln")(keras.layers.Dense(4, name="d")(inputs))
    model = keras.Model(inputs, outputs)
    optimizer = LARS(0.1, weight_decay=1e-4, exclude_from=model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimizer.build(model.trainable_variables)
    assert [v.path for v in model.trainable_variables] == ["d/kernel", "d/bias", "ln/gamma", "ln/beta"]
    assert optimizer._decay_flags == [True, False, False, False]
    assert optimizer._adaptation_flags == [True, False, False, False]
    assert "exclude_from" not in optimizer.get_config()
    with pytest.raises(ValueError, match=r"`exclude_from` must be the Keras model .* Received: "
                                         r"exclude_from=\['d'\] of type list"):
        LARS(0.1, exclude_from=["d"])
