"""SimCLRModel: the train step learns, and each fine-tuning mode changes exactly the right weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from model_factory import simclr_model

from simclr_tf.config import LossConfig
from simclr_tf.losses import nt_xent
from simclr_tf.models.simclr import SimCLRModel
from simclr_tf.optimizers import build_optimizer

SIZE = 16


def _model(**kwargs):
    defaults = dict(resnet_depth=18, cifar_stem=True, num_proj_layers=2, proj_out_dim=16, num_classes=4)
    defaults.update(kwargs)
    model = simclr_model(**defaults)
    model(tf.zeros([1, SIZE, SIZE, 3]))
    return model


def _compile(model, name="lars", learning_rate=0.5, weight_decay=1e-4):
    optimizer = build_optimizer(name, learning_rate, weight_decay=weight_decay)
    optimizer.build(model.trainable_variables)
    model.compile(optimizer=optimizer)
    return model


def _views(batch=8, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.uniform(size=(batch, SIZE, SIZE, 3)).astype(np.float32)
    noise = lambda: np.clip(base + 0.05 * rng.normal(size=base.shape), 0, 1).astype(np.float32)
    labels = np.arange(batch) % 4
    return (tf.constant(noise()), tf.constant(noise())), tf.constant(labels, tf.int32)


def test_pretrain_steps_lower_the_loss_on_a_fixed_batch():
    keras.utils.set_random_seed(3)
    model = _compile(_model())
    data = _views()
    first = model.train_step(data)
    for _ in range(5):
        last = model.train_step(data)
    # Metrics are running means: recompute the contrastive loss of the fixed batch directly.
    (view_1, view_2), _ = data
    def contrastive(training):
        z = model(tf.concat([view_1, view_2], 0), training=training)["proj_head_output"]
        return float(nt_xent(z[:8], z[8:], temperature=model.loss_config.temperature)[0])
    assert np.isfinite(float(first["loss"])) and np.isfinite(float(last["loss"]))
    assert contrastive(True) < float(first["contrastive_loss"]) - 0.05
    assert {"contrastive_loss", "contrastive_acc", "contrastive_entropy", "top1", "top5",
            "supervised_loss", "weight_decay", "learning_rate", "loss"} <= set(last)


def test_pretrain_step_matches_a_hand_written_step():
    """One train step equals the same step written out by hand (loss, tape, optimizer)."""
    keras.utils.set_random_seed(5)
    model = _compile(_model(num_classes=0), name="momentum", learning_rate=0.1, weight_decay=0.0)
    reference = _compile(_model(num_classes=0), name="momentum", learning_rate=0.1, weight_decay=0.0)
    reference.set_weights(model.get_weights())
    (view_1, view_2), labels = _views(seed=1)
    model.train_step(((view_1, view_2), labels))
    with tf.GradientTape() as tape:
        z = reference(tf.concat([view_1, view_2], 0), training=True)["proj_head_output"]
        loss = nt_xent(z[:8], z[8:], temperature=reference.loss_config.temperature)[0]
    variables = reference.trainable_variables
    grads = tape.gradient(loss, variables)
    pairs = [(g, v) for g, v in zip(grads, variables, strict=True) if g is not None]
    reference.optimizer.apply_gradients(pairs)
    for got, want in zip(model.weights, reference.weights, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5, err_msg=got.path)


def _changed(model, step_data):
    before = {v.path: v.numpy().copy() for v in model.weights}
    model.train_step(step_data)
    return {v.path for v in model.weights if not np.array_equal(before[v.path], v.numpy())}


def _images(batch=8, seed=0):
    rng = np.random.default_rng(seed)
    return (tf.constant(rng.uniform(size=(batch, SIZE, SIZE, 3)).astype(np.float32)),
            tf.constant(np.arange(batch) % 4, tf.int32))


@pytest.mark.parametrize("fine_tune_after_block", [4, 2, -1])
def test_finetune_changes_exactly_the_right_variables(fine_tune_after_block):
    keras.utils.set_random_seed(11)
    model = _compile(
        _model(train_mode="finetune", fine_tune_after_block=fine_tune_after_block),
        name="momentum", learning_rate=0.1, weight_decay=0.0,
    )
    changed = _changed(model, _images())
    frozen_prefixes = ["stem_"] + [f"block_group{k}_" for k in range(1, fine_tune_after_block + 1)]
    if fine_tune_after_block < 0:
        frozen_prefixes = []
    groups = ["stem_"] + [f"block_group{k}_" for k in range(1, 5)]
    changed_groups = set()
    for variable in model.weights:
        path = variable.path
        layer = path.split("/")[-2]
        if "head_supervised" in path:
            assert path in changed, f"supervised head not trained: {path}"
        elif "projection_head" in path:
            # ft_proj_selector=0: the head reads the encoder output, projection layers get no gradient.
            assert path not in changed, path
        elif any(layer.startswith(p) for p in frozen_prefixes):
            assert path not in changed, f"frozen variable changed: {path}"
        elif fine_tune_after_block == 4:
            assert path not in changed, f"linear evaluation changed an encoder variable: {path}"
        elif path in changed:
            changed_groups.update(g for g in groups if layer.startswith(g))
    # Every group that is not frozen learns (at init only the zero-initialised last batch norm of
    # each residual branch gets a gradient, so look at groups, not at single kernels).
    expected = set(groups) - set(frozen_prefixes) if fine_tune_after_block < 4 else set()
    assert changed_groups == expected


def test_linear_eval_runs_frozen_batch_norm_in_inference_mode():
    keras.utils.set_random_seed(2)
    model = _compile(_model(train_mode="finetune", fine_tune_after_block=4), name="momentum",
                     learning_rate=0.1, weight_decay=0.0)
    moving = {v.path: v.numpy().copy() for v in model.encoder.weights if "moving" in v.path}
    model.train_step(_images())
    for v in model.encoder.weights:
        if "moving" in v.path:
            np.testing.assert_array_equal(v.numpy(), moving[v.path])


def test_supervised_head_on_stop_gradient_features_while_pretraining():
    """The linear head's loss must not reach the encoder: with temperature-free labels only the
    supervised loss differs, so encoder gradients equal those of the contrastive loss alone."""
    keras.utils.set_random_seed(4)
    model = _model()
    (view_1, view_2), labels = _views(seed=2)
    with tf.GradientTape(persistent=True) as tape:
        total = model._forward_losses(((view_1, view_2), labels), training=True)
        contrastive = model.contrastive_loss_tracker.result()
    encoder_vars = model.encoder.trainable_variables
    g_total = tape.gradient(total, encoder_vars)
    z = model(tf.concat([view_1, view_2], 0), training=True)
    del z, contrastive
    with tf.GradientTape() as tape2:
        feats = model.encoder(tf.concat([view_1, view_2], 0), training=True)["final_avg_pool"]
        proj, _ = model.projection_head(feats, training=True)
        only = nt_xent(proj[:8], proj[8:], temperature=model.loss_config.temperature)[0]
    g_only = tape2.gradient(only, encoder_vars)
    for a, b in zip(g_total, g_only, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_unlabelled_examples_are_left_out_of_the_supervised_loss():
    model = _model()
    logits = tf.constant([[5.0, 0, 0, 0], [0, 5.0, 0, 0], [0, 0, 0, 9.0]])
    loss = float(model._supervised_loss(tf.constant([0, 1, -1]), logits))
    expected = -np.log(np.exp(5) / (np.exp(5) + 3))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_bad_arguments():
    encoder = keras.layers.Flatten()
    with pytest.raises(ValueError, match=r"`train_mode` must be one of .*Received.*pretrian"):
        SimCLRModel(encoder, train_mode="pretrian")
    with pytest.raises(ValueError, match=r"`train_mode='finetune'` needs .*`supervised_head`.*num_classes"):
        SimCLRModel(encoder, train_mode="finetune")
    with pytest.raises(ValueError, match=r"`loss_config` must be a `simclr_tf.config.LossConfig`.*dict"):
        SimCLRModel(encoder, loss_config={"temperature": 0.1})


def test_checkpoint_round_trip_restores_every_weight(tmp_path):
    """All weights, the projection head's and its batch-norm statistics included, survive a
    tf.train.Checkpoint round trip (what resume, eval and fine-tuning rely on)."""
    keras.utils.set_random_seed(8)
    model = _model(num_proj_layers=3)
    for variable in model.weights:  # distinct values everywhere, moving statistics included
        variable.assign(np.random.default_rng(len(variable.path)).normal(size=variable.shape).astype("float32"))
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    keras.utils.set_random_seed(9)
    fresh = _model(num_proj_layers=3)
    tf.train.Checkpoint(model=fresh).restore(path).assert_existing_objects_matched()
    assert len(fresh.weights) == len(model.weights)
    for got, want in zip(fresh.weights, model.weights, strict=True):
        np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=want.path)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", pytest.param("mixed_float16", marks=pytest.mark.slow)])
def test_mixed_precision_step_matches_float32(policy):
    """`--precision`: low-precision activations, float32 variables and loss, the float32 step's update."""
    keras.utils.set_random_seed(7)
    reference = _compile(_model(num_classes=0), name="momentum", learning_rate=0.1, weight_decay=0.0)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = _model(num_classes=0)
        optimizer = build_optimizer("momentum", 0.1, weight_decay=0.0)
        if policy == "mixed_float16":  # as train.py: float16 needs loss scaling
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
        model.compile(optimizer=optimizer)
    finally:
        keras.config.set_dtype_policy(previous)
    model.set_weights(reference.get_weights())
    data = _views(seed=2)
    compute_dtype = policy.removeprefix("mixed_")
    features = model(tf.concat(data[0], 0), training=False)
    assert features["final_avg_pool"].dtype == compute_dtype
    assert all(v.dtype == "float32" for v in model.weights)
    loss = model._forward_losses(data, training=False)
    assert loss.dtype == tf.float32
    np.testing.assert_allclose(float(loss), float(reference._forward_losses(data, training=False)), rtol=2e-2)

    before = [v.numpy().copy() for v in model.trainable_variables]
    metrics = model.train_step(data)
    reference_metrics = reference.train_step(data)
    np.testing.assert_allclose(float(metrics["contrastive_loss"]),
                               float(reference_metrics["contrastive_loss"]), rtol=2e-2)
    # The update (-learning rate x gradient) points the float32 step's way and has its size: under
    # mixed_float16 the loss scale (2**15) has been divided out again.
    update = np.concatenate([(v.numpy() - b).ravel() for v, b in zip(model.trainable_variables, before,
                                                                      strict=True)])
    reference_update = np.concatenate([(v.numpy() - b).ravel() for v, b in
                                       zip(reference.trainable_variables, before, strict=True)])
    assert np.all(np.isfinite(update))
    cosine = update @ reference_update / (np.linalg.norm(update) * np.linalg.norm(reference_update))
    # A CPU without native bfloat16 (AVX2 only) runs TensorFlow's emulated bfloat16 kernels, which
    # round more than the native ones: 0.985 measured there (2026-12-07, with TensorFlow's own and
    # with simclr_tf's convolution gradient alike); `--precision=auto` never picks bfloat16 there.
    from simclr_tf.precision import cpu_flags

    native = policy != "mixed_bfloat16" or bool((cpu_flags() or frozenset()) & {"avx512_bf16", "amx_bf16"})
    assert cosine > (0.99 if native else 0.98)
    np.testing.assert_allclose(np.linalg.norm(update), np.linalg.norm(reference_update), rtol=0.05)


@pytest.mark.parametrize("loss_name, semi_hard", [("nt_logistic", False), ("margin_triplet", False),
                                                  ("margin_triplet", True)])
def test_pretrain_steps_with_a_loss_variant_lower_that_loss(loss_name, semi_hard):
    from simclr_tf.losses import contrastive_loss

    keras.utils.set_random_seed(3)
    model = _compile(_model(num_classes=0, contrastive_loss=loss_name, margin=0.5,
                            semi_hard_negatives=semi_hard))
    data = _views()
    (view_1, view_2), _ = data

    def loss(training):
        z = model(tf.concat([view_1, view_2], 0), training=training)["proj_head_output"]
        return float(contrastive_loss(loss_name, z[:8], z[8:], temperature=model.loss_config.temperature,
                                      margin=0.5, semi_hard_negatives=semi_hard)[0])

    before = loss(True)  # the step's metric is the loss of the weights before it
    first = model.train_step(data)
    np.testing.assert_allclose(float(first["contrastive_loss"]), before, rtol=1e-4)
    for _ in range(5):
        model.train_step(data)
    assert before > 0 and loss(True) < before
    rebuilt = SimCLRModel.from_config(model.get_config())
    assert rebuilt.loss_config == model.loss_config
    c = model.loss_config
    assert (c.contrastive_loss, c.semi_hard_negatives) == (loss_name, semi_hard)
    encoder = keras.layers.Flatten()
    with pytest.raises(ValueError, match=r"`contrastive_loss` must be one of .*Received: .*'xent'"):
        SimCLRModel(encoder, loss_config=LossConfig(contrastive_loss="xent"))
    with pytest.raises(ValueError, match=r"`semi_hard_negatives` applies to .*contrastive_loss=.nt_xent."):
        SimCLRModel(encoder, loss_config=LossConfig(semi_hard_negatives=True))
