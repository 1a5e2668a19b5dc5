"""`--chunk_size`: the train step in chunks with cached embedding gradients (simclr_tf.models.chunking).

The equivalence with K replicas needs logical CPU devices, made only before TensorFlow starts, so
it runs in a fresh process (tests/chunking_checks.py) that prints its measurements as JSON; the
assertions are here. The other tests run in this process with encoders without batch norm, where a
chunked step must equal the plain one, and tiny ResNets.
"""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from model_factory import simclr_model

from simclr_tf.config import Config, ConfigError, TrainConfig, check_chunk_size, field_docs
from simclr_tf.models.chunking import check_no_random_layers, state_variables
from simclr_tf.optimizers import build_optimizer

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHECKS = ROOT / "tests" / "chunking_checks.py"
TIMEOUT = 900
# Float32 round-off of another summation order: after one step (observed: weights 1.8e-7, moving
# statistics 9e-8) ...
EXACT = 1e-5
# ... and after 3 LARS steps of updates up to 0.4, which amplify it where batch norm normalises 4
# values (chunks of 2 images; observed: weights 7.7e-7 for K = 2, 3.2e-5 for K = 4; moving
# statistics 7e-7). The distributed tests' tolerance for weights after several steps.
STEPS_3 = 1e-4
BATCH, SIZE = 8, 8


def _run_check(*args):
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.run([sys.executable, str(CHECKS), *args], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=TIMEOUT)
    if process.returncode != 0:
        pytest.fail(f"chunking_checks {' '.join(args)} failed (exit {process.returncode}):\n"
                    f"{process.stderr[-4000:]}")
    return json.loads(process.stdout.strip().splitlines()[-1])


# --- against K replicas ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replicas():
    """3 chunked steps on one device and 3 steps on K replicas, K = 2 and 4, in one process."""
    return _run_check("replicas", "--chunks", "2", "4")["replicas"]


@pytest.mark.parametrize("chunks", [2, 4])
def test_chunked_steps_equal_k_replicas_without_global_bn(replicas, chunks):
    """Supervised head on partly labelled images, memory buffer, LARS, batch norm per chunk."""
    result = replicas[str(chunks)]
    assert result["update_max"] > 0.1, result  # the steps moved the weights far beyond the tolerance
    first = result["first_step_diffs"]
    for kind in ("weights", "optimizer", "moving_stats", "other_state"):
        assert first[kind] < EXACT, (kind, result)
    diffs = result["diffs"]
    assert diffs["weights"] < STEPS_3, result
    assert diffs["optimizer"] < STEPS_3, result  # LARS' momentum slots
    assert diffs["other_state"] < STEPS_3, result  # the queue and the momentum network
    assert result["queue_filled"] == 16
    # Moving statistics: the online network's and the momentum network's batch norms (ResNet-10's 13
    # and the head's 2 layers, two variables each) ...
    assert result["moving_stats"] == 2 * 2 * (13 + 2)
    # ... equal the mean of the K replicas' copies. Keras 3 keeps one copy per replica, and they
    # differ (each saw its own shard), so the comparison can tell the mean from the first copy.
    assert diffs["moving_stats"] < STEPS_3, result
    assert result["moving_spread"] > 1000 * EXACT, result
    assert diffs["moving_stats_first_replica"] > 1000 * EXACT, result
    assert result["other_spread"] == 0.0


@pytest.mark.slow
def test_chunks_with_global_bn_on_replicas_equal_one_device_with_those_chunks():
    """2 replicas x 2 chunks, batch norm synchronised over the same chunk of both replicas (a Python
    loop over chunks: MirroredStrategy cannot all-reduce inside a tf.while_loop), against one device
    in chunks of both replicas' images."""
    result = _run_check("global_bn")["global_bn"]["2"]
    assert result["update_max"] > 0.1, result
    assert result["diffs"]["weights"] < 1e-4, result  # Keras' synchronised BN against the fused kernel
    assert result["diffs"]["moving_stats"] < 1e-4, result
    assert result["moving_spread"] == 0.0  # synchronised: every replica saw the same statistics


# --- in this process -------------------------------------------------------------------------------


def _plain_encoder():
    """No batch norm: a chunk's embeddings do not depend on the other chunks."""
    return keras.Sequential([keras.layers.Input((SIZE, SIZE, 3)),
                             keras.layers.Conv2D(8, 3, activation="relu"),
                             keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
                             keras.layers.GlobalAveragePooling2D()], name="plain_encoder")


def _batches(steps=2, seed=0, labelled=1.0):
    rng = np.random.default_rng(seed)
    views = [rng.uniform(size=(steps, BATCH, SIZE, SIZE, 3)).astype(np.float32) for _ in range(2)]
    labels = rng.integers(0, 3, size=(steps, BATCH)).astype(np.int32)
    labels[rng.uniform(size=labels.shape) >= labelled] = -1
    return views, labels


def _train(chunk_size, *, encoder=None, train_mode="pretrain", jit_compile=False, steps=2, labelled=1.0,
           **fields):
    keras.utils.set_random_seed(0)
    model = simclr_model(encoder=encoder() if encoder else None, chunk_size=chunk_size, train_mode=train_mode,
                         proj_out_dim=8, temperature=0.5, weight_decay=1e-4, **fields)
    model.build((None, SIZE, SIZE, 3))
    model.compile(optimizer=build_optimizer("lars", 0.1, weight_decay=1e-4), jit_compile=jit_compile)
    model.initial_weights = [v.numpy() for v in model.trainable_weights]  # for the tests' update sizes
    (view_1, view_2), labels = _batches(steps, labelled=labelled)
    if not steps:
        return model, {}
    x = (view_1, view_2) if train_mode == "pretrain" else view_1
    history = model.fit(tf.data.Dataset.from_tensor_slices((x, labels)), verbose=0).history
    return model, {name: values[-1] for name, values in history.items()}


def _max_diff(a, b):
    return max(float(np.max(np.abs(x.numpy() - y.numpy()))) for x, y in
               zip([*a.weights, *a.optimizer.variables], [*b.weights, *b.optimizer.variables], strict=True))


def test_one_chunk_of_the_whole_batch_is_today_s_step_bit_for_bit():
    fields = dict(resnet_depth=10, cifar_stem=True, num_classes=3, memory_buffer_size=16, labelled=0.5)
    plain, _ = _train(0, **fields)
    whole, _ = _train(BATCH, **fields)
    for got, want in zip([*whole.weights, *whole.optimizer.variables],
                         [*plain.weights, *plain.optimizer.variables], strict=True):
        np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=want.path)


@pytest.mark.parametrize("case", [
    dict(),
    dict(num_classes=3, memory_buffer_size=16),
    dict(contrastive_loss="nt_logistic"),
    dict(contrastive_loss="margin_triplet", semi_hard_negatives=True),
    dict(train_mode="finetune", num_classes=3),
    dict(num_classes=3, jit_compile=True),
], ids=["nt_xent", "supervised_memory", "nt_logistic", "margin_triplet_sh", "finetune", "xla"])
def test_chunked_step_equals_the_plain_step_without_batch_norm(case):
    """Every loss, the online head, the memory buffer, fine-tuning (plain accumulation), XLA. Every
    image is labelled, so the mean loss of each chunk (as a replica computes it) averages to the
    batch's; with unlabelled images the chunked step equals K replicas (tests/chunking_checks.py)."""
    case = dict(case)
    fields = dict(encoder=_plain_encoder, proj_head_mode="none", **case)
    plain, plain_metrics = _train(0, **fields)
    chunked, chunked_metrics = _train(2, **fields)
    moved = max(float(np.max(np.abs(v.numpy()))) for v in plain.optimizer.variables[2:])
    assert moved > 1e-4  # the momentum slots hold real gradients
    assert _max_diff(chunked, plain) < 1e-6
    np.testing.assert_allclose(chunked_metrics["loss"], plain_metrics["loss"], rtol=1e-5)
    for name in ("top1", "contrastive_acc", "supervised_loss"):
        if name in plain_metrics:
            np.testing.assert_allclose(chunked_metrics[name], plain_metrics[name], rtol=1e-5)


def test_chunked_step_under_mixed_bfloat16_matches_the_plain_one():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        fields = dict(encoder=_plain_encoder, proj_head_mode="none", num_classes=3)
        plain, _ = _train(0, **fields)
        chunked, _ = _train(4, **fields)
    finally:
        keras.config.set_dtype_policy(previous)
    assert chunked.encoder.compute_dtype == "bfloat16"
    update = max(float(np.max(np.abs(v.numpy() - w))) for v, w in
                 zip(plain.trainable_weights, plain.initial_weights, strict=True))
    # The chunks compute each image as the whole batch does; bfloat16 reductions of other lengths
    # round differently (observed: 1.1e-3 for updates of 0.1).
    assert update > 0.05
    assert _max_diff(chunked, plain) < 0.03 * update


def test_moving_statistics_change_once_per_step():
    """One chunked step of K chunks moves batch norm's statistics once: m0 + mean of each chunk's
    change, computed here by hand from a forward pass of each chunk."""
    model, _ = _train(4, resnet_depth=10, cifar_stem=True, steps=1)
    start = _train(0, resnet_depth=10, cifar_stem=True, steps=0)[0]
    (view_1, view_2), _ = _batches(1)
    state = state_variables(start)
    assert len(state) == 2 * (13 + 2)  # ResNet-10's 13 batch norms, the projection head's 2
    m0 = [v.numpy() for v in state]
    changes = []
    for k in range(2):
        for variable, value in zip(state, m0, strict=True):
            variable.assign(value)
        chunk = slice(4 * k, 4 * k + 4)
        start._embed(tf.concat([view_1[0][chunk], view_2[0][chunk]], 0), training=True)
        changes.append([v.numpy() - s for v, s in zip(state, m0, strict=True)])
    for variable, value, *deltas in zip(state_variables(model), m0, *changes, strict=True):
        np.testing.assert_allclose(variable.numpy(), value + np.mean(deltas, axis=0), atol=1e-5)


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size, why", [
    (3, "does not divide the per-replica batch"),
    (256, "is larger than the per-replica batch"),
    (-8, "is negative"),
])
def test_bad_chunk_size_is_one_error_naming_the_flag_and_the_divisors(chunk_size, why):
    with pytest.raises(ConfigError, match=rf"--chunk_size \({chunk_size}\) {why} \(train_batch_size 128\)\. "
                                          r"Use one of its divisors \[1, 2, 4, 8, 16, 32, 64, 128\]"):
        Config(train=TrainConfig(train_batch_size=128, chunk_size=chunk_size)).validate()


def test_chunk_size_is_checked_against_the_per_replica_batch():
    assert check_chunk_size(16, 128, 4) == 2
    with pytest.raises(ValueError, match=r"--chunk_size \(64\) is larger than the per-replica batch "
                                         r"\(32 = train_batch_size 128 / 4 replicas\)\. Use one of its "
                                         r"divisors \[1, 2, 4, 8, 16, 32\]"):
        check_chunk_size(64, 128, 4)


def test_build_model_checks_the_per_replica_batch_of_its_strategy():
    from simclr_tf.models.build import build_model

    config = dataclasses.replace(Config(), train=TrainConfig(train_batch_size=8, chunk_size=3))
    with pytest.raises(ValueError, match=r"--chunk_size \(3\) does not divide the per-replica batch "
                                         r"\(train_batch_size 8\)\. Use one of its divisors \[1, 2, 4, 8\]"):
        build_model(config, num_classes=0, build=False)


def test_the_model_refuses_a_negative_chunk_size():
    from simclr_tf.models.simclr import SimCLRModel

    with pytest.raises(ValueError, match=r"`chunk_size` must be 0 \(off\) or a positive number .* "
                                         r"Received: chunk_size=-1"):
        SimCLRModel(_plain_encoder(), chunk_size=-1)


def test_distillation_refuses_chunks():
    with pytest.raises(ConfigError, match="distillation's step does not run in chunks.*--chunk_size=0"):
        TrainConfig(train_mode="distill", teacher="runs/teacher", chunk_size=4).validate()


@pytest.mark.parametrize("layer", [keras.layers.Dropout(0.1), keras.layers.GaussianNoise(0.1),
                                   keras.layers.GaussianDropout(0.1), keras.layers.AlphaDropout(0.1),
                                   keras.layers.SpatialDropout2D(0.1), keras.layers.RandomFlip()])
def test_random_layers_are_refused_with_chunks(layer):
    encoder = keras.Sequential([keras.layers.Input((SIZE, SIZE, 3)), layer, keras.layers.Conv2D(4, 3),
                                keras.layers.GlobalAveragePooling2D()])
    with pytest.raises(ValueError, match=rf"`chunk_size` \(4\) embeds each chunk twice .* layers that draw "
                                         rf"random numbers: {layer.name} \({type(layer).__name__}\)"):
        simclr_model(encoder=encoder, chunk_size=4)
    check_no_random_layers([encoder], chunk_size=0)  # without chunks they are fine
    simclr_model(encoder=encoder, chunk_size=0)


def test_chunk_size_is_documented_and_saved_in_the_model_config():
    assert "chunks of M images" in field_docs(TrainConfig)["chunk_size"]
    model = simclr_model(encoder=_plain_encoder(), chunk_size=4, proj_head_mode="none")
    assert model.get_config()["chunk_size"] == 4
