"""SimCLRv2's memory buffer: NT-Xent with extra negatives against NumPy, the moving average by hand,
the queue's FIFO order (also across 2 replicas), size 0 as today, checkpoints and export."""

import json
import math
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from model_factory import simclr_model

from simclr_tf.config import Config, ConfigError, LossConfig, TrainConfig
from simclr_tf.losses import contrastive_loss, nt_xent
from simclr_tf.models.heads import SupervisedHead
from simclr_tf.models.memory import MemoryBuffer, online_weights
from simclr_tf.models.simclr import SimCLRModel
from simclr_tf.optimizers import build_optimizer

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = 8  # image side


# --- NT-Xent with a memory: a NumPy transcription of the formula -----------------------------------


def reference_nt_xent_with_memory(z_1, z_2, memory, filled, temperature, normalize):
    """NT-Xent of the 2N views (paper, eq. 1) where every anchor's denominator also holds the filled
    memory keys: l(i, j) = -log(exp(s_ij / t) / (sum_{k != i} exp(s_ik / t) +
    sum_{m filled} exp(sim(z_i, memory_m) / t))). Loss at the original code's scale: the sum of both
    directions, averaged over the N samples. float64, one anchor at a time."""
    z_1, z_2, memory = (np.asarray(a, np.float64) for a in (z_1, z_2, memory))
    n = len(z_1)
    z = np.concatenate([z_1, z_2])  # anchor i's positive is (i + n) mod 2n
    if normalize:
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
        memory = memory / np.linalg.norm(memory, axis=1, keepdims=True)
    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        logits = [z[i] @ z[k] / temperature for k in range(2 * n) if k != i]
        logits += [z[i] @ memory[m] / temperature for m in range(len(memory)) if filled[m]]
        top = max(logits)
        log_denominator = top + math.log(sum(math.exp(v - top) for v in logits))
        total += log_denominator - z[i] @ z[positive] / temperature
    return total / n


def _data(n, d, k, seed):
    rng = np.random.default_rng(seed)
    draw = lambda rows: (rng.normal(size=(rows, d)) / math.sqrt(d)).astype(np.float32)
    return draw(n), draw(n), draw(k)


@pytest.mark.parametrize("n, d, k, temperature, normalize", [
    (1, 4, 3, 0.5, True), (4, 8, 16, 0.1, True), (8, 16, 5, 0.2, False), (3, 2, 64, 1.0, True),
])
@pytest.mark.parametrize("fill", [1.0, 0.5])
def test_nt_xent_with_a_memory_matches_the_formula(n, d, k, temperature, normalize, fill):
    z_1, z_2, memory = _data(n, d, k, seed=n * 100 + k)
    filled = np.arange(k) < max(1, int(fill * k))
    loss, logits_ab, labels = nt_xent(z_1, z_2, temperature=temperature, normalize=normalize,
                                      memory=memory, memory_mask=filled)
    expected = reference_nt_xent_with_memory(z_1, z_2, memory, filled, temperature, normalize)
    np.testing.assert_allclose(float(loss), expected, rtol=2e-5, atol=2e-5)
    assert logits_ab.shape == (n, 2 * n + k) and labels.shape == (n, 2 * n + k)
    # The memory's columns: no positive there, similarities / t where filled, masked where empty.
    np.testing.assert_array_equal(labels.numpy()[:, 2 * n:], np.zeros((n, k)))
    a = z_1 / np.linalg.norm(z_1, axis=1, keepdims=True) if normalize else z_1
    keys = memory / np.linalg.norm(memory, axis=1, keepdims=True) if normalize else memory
    np.testing.assert_allclose(logits_ab.numpy()[:, 2 * n:][:, filled], (a @ keys.T / temperature)[:, filled],
                               rtol=1e-5, atol=1e-5)
    assert np.all(logits_ab.numpy()[:, 2 * n:][:, ~filled] == -1e9)


def test_a_memory_of_identical_keys_by_hand():
    """All 2N views and K keys identical: each anchor picks its positive among 2N - 1 + K equal
    logits, so the loss is 2 * log(2N - 1 + K) (both directions)."""
    z = np.ones((4, 3), np.float32)
    loss, _, _ = nt_xent(z, z, temperature=0.3, memory=np.ones((5, 3), np.float32))
    np.testing.assert_allclose(float(loss), 2 * math.log(2 * 4 - 1 + 5), rtol=1e-6)


def test_size_0_is_today_s_loss_exactly():
    z_1, z_2, memory = _data(6, 8, 10, seed=3)
    today = nt_xent(z_1, z_2, temperature=0.2)
    for got in (nt_xent(z_1, z_2, temperature=0.2, memory=None),
                contrastive_loss("nt_xent", z_1, z_2, temperature=0.2, memory=None)):
        for a, b in zip(today, got, strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())  # bit for bit
    # An empty queue (nothing written yet) is masked out entirely: the same loss.
    empty, _, _ = nt_xent(z_1, z_2, temperature=0.2, memory=memory, memory_mask=np.zeros(10, bool))
    np.testing.assert_allclose(float(empty), float(today[0]), rtol=1e-7, atol=1e-7)


def test_the_memory_gets_no_gradient_and_other_losses_refuse_it():
    z_1, z_2, memory = _data(4, 8, 6, seed=4)
    memory = tf.Variable(memory)
    with tf.GradientTape() as tape:
        loss, _, _ = nt_xent(z_1, z_2, memory=memory)
    assert tape.gradient(loss, memory) is None
    with pytest.raises(ValueError, match="only used by `nt_xent`.*nt_logistic"):
        contrastive_loss("nt_logistic", z_1, z_2, memory=memory)


# --- The moving average and the queue --------------------------------------------------------------


def _tiny_encoder():
    return keras.Sequential([keras.layers.Conv2D(4, 3, padding="same"), keras.layers.BatchNormalization(),
                             keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(6)])


def _tiny_model(**kwargs):
    defaults = dict(encoder=_tiny_encoder(), num_proj_layers=2, proj_out_dim=4, num_classes=0,
                    memory_buffer_size=12, memory_momentum=0.9, temperature=0.5)
    defaults.update(kwargs)
    model = simclr_model(**defaults)
    model.build((None, SIZE, SIZE, 3))
    return model


def test_moving_average_by_hand():
    """m = 0.9: a momentum weight of 1 with online 3 becomes 0.9 * 1 + 0.1 * 3 = 1.2, then with
    online 0: 0.9 * 1.2 = 1.08; every weight, batch-norm moving statistics included."""
    model = _tiny_model()
    targets, sources = model.memory.network_weights, online_weights(model.encoder, model.projection_head)
    assert any("moving_mean" in v.path for v in targets)
    for target in targets:
        target.assign(tf.ones(target.shape))
    for online_value, expected in ((3.0, 1.2), (0.0, 1.08)):
        for source in sources:
            source.assign(tf.fill(source.shape, online_value))
        model.memory.update(sources)
        for target in targets:
            np.testing.assert_allclose(target.numpy(), np.full(target.shape, expected), rtol=1e-6)


def test_momentum_network_starts_equal_and_stays_out_of_training():
    model = _tiny_model()
    targets, sources = model.memory.network_weights, online_weights(model.encoder, model.projection_head)
    assert len(targets) == len(sources) > 0
    for target, source in zip(targets, sources, strict=True):
        np.testing.assert_array_equal(target.numpy(), source.numpy())
        assert target is not source
    momentum_ids = {id(v) for v in model.memory.weights}
    assert not momentum_ids & {id(v) for v in model.trainable_variables}
    assert {id(v) for v in model.trainable_variables} == {id(v) for v in sources if v.trainable}
    # Its keys at the start are the online projections (both in training mode), normalised.
    rng = np.random.default_rng(0)
    views = tuple(tf.constant(rng.uniform(size=(5, SIZE, SIZE, 3)), tf.float32) for _ in range(2))
    keys_1, keys_2 = model.memory.keys(views)
    z = model(views, training=True)["proj_head_output"].numpy()
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    np.testing.assert_allclose(np.concatenate([keys_1, keys_2]), z, rtol=1e-5, atol=1e-6)


def test_a_model_that_fit_builds_copies_the_online_network_on_its_first_step():
    """Keras builds an unbuilt model for `fit` in a stateless scope, which drops the build's copy:
    the first step makes it (`copied`). With a learning rate of 0, the momentum network then equals
    the online one after the step (the moving average of two equal weights)."""
    model = simclr_model(encoder=_tiny_encoder(), num_proj_layers=2, proj_out_dim=4, num_classes=0,
                        memory_buffer_size=6)
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    rng = np.random.default_rng(3)
    views = tuple(rng.uniform(size=(1, 3, SIZE, SIZE, 3)).astype(np.float32) for _ in range(2))
    model.fit(tf.data.Dataset.from_tensor_slices((views, np.full((1, 3), -1))), verbose=0)
    assert int(model.memory.copied) == 1 and int(model.memory.filled) == 6
    sources = online_weights(model.encoder, model.projection_head)
    for target, source in zip(model.memory.network_weights, sources, strict=True):
        if "moving" not in target.path:  # each network's own pass moved its moving statistics
            np.testing.assert_allclose(target.numpy(), source.numpy(), atol=1e-6, err_msg=target.path)


def _queue(size):
    memory = MemoryBuffer(keras.layers.Identity(), keras.layers.Identity(), size=size)
    memory.build((None, 2))
    return memory


def _keys(*values):
    return tf.constant([[v, -v] for v in values], tf.float32)


def test_queue_is_first_in_first_out_and_wraps_around():
    memory = _queue(5)
    np.testing.assert_array_equal(memory.mask(), [False] * 5)
    memory.enqueue(_keys(1, 2), _keys(3, 4))  # view-1 keys, then view-2 keys
    np.testing.assert_array_equal(memory.queue.numpy()[:, 0], [1, 2, 3, 4, 0])
    assert int(memory.pointer) == 4 and int(memory.filled) == 4
    np.testing.assert_array_equal(memory.mask(), [True, True, True, True, False])
    memory.enqueue(_keys(5, 6), _keys(7, 8))  # the oldest (1, 2, 3) are overwritten first
    np.testing.assert_array_equal(memory.queue.numpy(), _keys(6, 7, 8, 4, 5).numpy())
    assert int(memory.pointer) == 3 and int(memory.filled) == 5
    np.testing.assert_array_equal(memory.mask(), [True] * 5)


def test_a_step_with_more_keys_than_the_queue_keeps_the_newest():
    memory = _queue(3)
    memory.enqueue(_keys(1, 2), _keys(3, 4))
    np.testing.assert_array_equal(memory.queue.numpy()[:, 0], [2, 3, 4])
    assert int(memory.pointer) == 0 and int(memory.filled) == 3


def test_train_steps_fill_the_queue_with_the_momentum_keys():
    """Two steps of batch 3 into a queue of 12: step 1's 6 keys, then step 2's, in view order; the
    first step's loss (empty queue) equals the loss without a buffer."""
    keras.utils.set_random_seed(7)
    model = _tiny_model()
    plain = _tiny_model(memory_buffer_size=0)
    momentum_ids = {id(w) for w in model.memory.weights}
    plain.set_weights([v.numpy() for v in model.weights if id(v) not in momentum_ids])
    for m in (model, plain):
        m.compile(optimizer=build_optimizer("momentum", 0.1, weight_decay=0.0))
    rng = np.random.default_rng(1)
    batches = [tuple(tf.constant(rng.uniform(size=(3, SIZE, SIZE, 3)), tf.float32) for _ in range(2))
               for _ in range(2)]
    expected_keys = []
    for step, views in enumerate(batches):
        keys = model.memory.keys(views)  # the momentum network as the step will find it
        logs = model.train_step((views, tf.constant([-1, -1, -1])))
        expected_keys.append(np.concatenate([k.numpy() for k in keys]))
        if step == 0:
            reference = plain.train_step((views, tf.constant([-1, -1, -1])))
            np.testing.assert_allclose(float(logs["contrastive_loss"]), float(reference["contrastive_loss"]),
                                       rtol=1e-6)
    # keys() of a step before the step ran in training mode (batch norm statistics of the batch),
    # as the step's own pass does.
    np.testing.assert_allclose(model.memory.queue.numpy(), np.concatenate(expected_keys), atol=1e-6)
    assert int(model.memory.pointer) == 0 and int(model.memory.filled) == 12


@pytest.mark.parametrize("policy, jit_compile", [("mixed_bfloat16", False), ("float32", True)])
def test_fit_under_mixed_precision_and_xla(policy, jit_compile):
    """`--precision=mixed_bfloat16`: bfloat16 keys, a float32 queue and moving average; and the
    step compiles with XLA (`--jit_compile`)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = _tiny_model(memory_buffer_size=8)
        model.compile(optimizer=build_optimizer("momentum", 0.05, weight_decay=0.0), jit_compile=jit_compile)
    finally:
        keras.config.set_dtype_policy(previous)
    rng = np.random.default_rng(5)
    views = tuple(rng.uniform(size=(2, 3, SIZE, SIZE, 3)).astype(np.float32) for _ in range(2))
    data = tf.data.Dataset.from_tensor_slices((views, np.full((2, 3), -1)))
    history = model.fit(data, epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert model.memory.queue.dtype == "float32" and int(model.memory.filled) == 8
    norms = np.linalg.norm(model.memory.queue.numpy(), axis=1)
    np.testing.assert_allclose(norms, np.ones(8), rtol=1e-5)  # normalised keys, every entry written
    assert all(v.dtype == "float32" for v in model.memory.network_weights)


# --- Checkpoints and export ------------------------------------------------------------------------


def test_resume_from_a_checkpoint_continues_exactly(tmp_path):
    """2 steps, save, restore into a fresh model, 2 more steps == 4 uninterrupted steps: online and
    momentum weights, queue, pointer and fill count."""
    from simclr_tf.checkpoints import CheckpointSaver

    rng = np.random.default_rng(2)
    batches = [(tuple(tf.constant(rng.uniform(size=(4, SIZE, SIZE, 3)), tf.float32) for _ in range(2)),
                tf.constant([-1] * 4)) for _ in range(4)]

    def fresh(seed):
        keras.utils.set_random_seed(seed)
        model = _tiny_model(memory_buffer_size=10, memory_momentum=0.5)
        optimizer = build_optimizer("lars", 0.3, weight_decay=1e-4)
        optimizer.build(model.trainable_variables)
        model.compile(optimizer=optimizer)
        return model

    uninterrupted = fresh(0)
    for batch in batches:
        uninterrupted.train_step(batch)
    first = fresh(0)
    for batch in batches[:2]:
        first.train_step(batch)
    CheckpointSaver(first, first.optimizer, str(tmp_path)).save(2)
    resumed = fresh(99)  # other initial weights: everything must come from the checkpoint
    assert CheckpointSaver(resumed, resumed.optimizer, str(tmp_path)).restore_latest() == 2
    assert int(resumed.memory.filled) == 10 and int(resumed.memory.pointer) == 6
    for batch in batches[2:]:
        resumed.train_step(batch)
    assert len(resumed.weights) == len(uninterrupted.weights)
    for got, want in zip(resumed.weights, uninterrupted.weights, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-6, err_msg=want.path)
    np.testing.assert_array_equal(resumed.memory.queue.numpy(), uninterrupted.memory.queue.numpy())
    assert int(resumed.memory.pointer) == int(uninterrupted.memory.pointer) == 32 % 10


def test_export_holds_the_online_network_only():
    from simclr_tf.export import build_export_module

    model = _tiny_model()
    module = build_export_module(model, image_size=SIZE)
    exported = {id(v) for v in module.variables}
    assert not exported & {id(getattr(v, "value", v)) for v in model.memory.weights}
    assert len(module.variables) == len(online_weights(model.encoder, model.projection_head))


@pytest.mark.slow
def test_cli_run_with_a_buffer_checkpoints_it_exports_without_it_and_resumes(tmp_path):
    """`python -m simclr_tf.run --memory_buffer_size=...`: 2 steps; the checkpoint holds the queue,
    its pointer and the momentum network; the export only the online encoder; more steps resume
    from it; another buffer size cannot resume it."""
    tiny = ["--dataset=synthetic", "--synthetic_examples=64", "--image_size=16", "--train_batch_size=16",
            "--linear_eval_epochs=0", "--eval_batch_size=64", "--resnet_depth=18", "--mode=train",
            "--memory_buffer_size=40", f"--model_dir={tmp_path / 'run'}"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")

    def run(*flags):
        return subprocess.run([sys.executable, "-m", "simclr_tf.run", *tiny, *flags], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=900)

    done = run("--train_steps=2")
    assert done.returncode == 0, done.stderr[-3000:]
    stored = tf.train.load_checkpoint(str(tmp_path / "run" / "ckpt-2"))
    names = stored.get_variable_to_shape_map()
    queue = [n for n in names if n.startswith("model/memory/queue/")]
    assert len(queue) == 1 and names[queue[0]] == [40, 128]
    pointer = next(n for n in names if n.startswith("model/memory/pointer/"))
    assert int(stored.get_tensor(pointer)) == 2 * 2 * 16 % 40  # 2 steps of 32 keys
    assert any(n.startswith("model/memory/encoder/") for n in names)
    exported = tf.saved_model.load(str(tmp_path / "run" / "saved_model" / "2"))
    momentum = [n for n in names if n.startswith(("model/memory/encoder/", "model/memory/projection_head/"))]
    # The online encoder and heads: as many weights as the momentum network (plus the supervised
    # head's), not twice as many, and no queue.
    assert len(momentum) <= len(exported.variables) < 2 * len(momentum)
    assert not any(tuple(v.shape) == (40, 128) for v in exported.variables)

    resumed = run("--train_steps=3")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    stored = tf.train.load_checkpoint(str(tmp_path / "run" / "ckpt-3"))
    assert int(stored.get_tensor(pointer)) == 3 * 2 * 16 % 40
    other = run("--train_steps=4", "--memory_buffer_size=80")
    assert other.returncode != 0 and "--memory_buffer_size is 40 there and 80 now" in other.stderr


# --- Configuration ---------------------------------------------------------------------------------


def test_config_defaults_leave_the_buffer_off():
    assert Config().loss.memory_buffer_size == 0 and Config().loss.memory_momentum == 0.999
    assure = Config(loss=LossConfig(memory_buffer_size=4096)).validate()
    assert assure.loss.memory_buffer_size == 4096


@pytest.mark.parametrize("config, match", [
    (Config(loss=LossConfig(memory_buffer_size=-1)), r"`memory_buffer_size` must be a non-negative.*-1"),
    (Config(loss=LossConfig(memory_momentum=1.0)), r"`memory_momentum` must be in \[0, 1\).*1.0"),
    (Config(loss=LossConfig(memory_buffer_size=64, contrastive_loss="margin_triplet")),
     r"needs `contrastive_loss=nt_xent`. Received: contrastive_loss='margin_triplet'"),
    (Config(loss=LossConfig(memory_buffer_size=64), train=TrainConfig(train_mode="finetune")),
     r"needs `train_mode=pretrain`. Received: train_mode='finetune'.*--memory_buffer_size=0"),
])
def test_config_errors_say_what_to_fix(config, match):
    with pytest.raises(ConfigError, match=match):
        config.validate()


def test_model_errors():
    encoder, head = keras.layers.Flatten(), SupervisedHead(3)
    with pytest.raises(ValueError, match=r"needs `train_mode=pretrain`. Received: train_mode='finetune'"):
        SimCLRModel(encoder, supervised_head=head, loss_config=LossConfig(memory_buffer_size=8),
                    train_mode="finetune")
    with pytest.raises(ValueError, match=r"`memory_momentum` must be in \[0, 1\).*1.5"):
        SimCLRModel(encoder, loss_config=LossConfig(memory_buffer_size=8, memory_momentum=1.5))
    with pytest.raises(ValueError, match=r"`memory_buffer_size` must be a non-negative integer.*2.5"):
        SimCLRModel(encoder, loss_config=LossConfig(memory_buffer_size=2.5))


def test_flags_reach_the_config():
    from absl import flags

    from simclr_tf import run

    values = flags.FlagValues()
    for name, section, field, kind, help_text in run._FLAG_SPECS:
        run._DEFINE[kind](name, run.flag_default(section, field), help_text, flag_values=values)
    flags.DEFINE_bool("use_tpu", False, "", flag_values=values)
    flags.DEFINE_list("devices", [], "", flag_values=values)
    values(["run", "--memory_buffer_size=256", "--memory_momentum=0.99"])
    config = run.config_from_flags(values)
    assert config.loss.memory_buffer_size == 256 and config.loss.memory_momentum == 0.99


# --- Two replicas ----------------------------------------------------------------------------------

_REPLICAS_SCRIPT = ROOT / "tests" / "memory_buffer_check.py"


@pytest.fixture(scope="module")
def replicas():
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, str(_REPLICAS_SCRIPT)], capture_output=True, text=True,
                          timeout=900, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_two_replicas_enqueue_the_global_batch_in_order(replicas):
    """Replica r holds keys r*B .. r*B + B - 1 of each view: every replica's queue holds the global
    batch's view-1 keys, then its view-2 keys, as one device would write them."""
    result = replicas["fifo"]
    assert result["num_replicas"] == 2
    for queue in result["queues"]:
        assert queue == result["expected"]
    assert result["pointers"] == [result["expected_pointer"]] * 2


def test_two_replicas_train_like_one_device_with_the_global_batch(replicas):
    result = replicas["fit"]
    assert result["num_replicas"] == 2
    assert result["filled"] == [result["expected_filled"]] * 2
    assert result["queue_changed"] > 0.1  # the queue holds keys, not zeros
    # float32 round-off of another summation order, grown by 3 steps of SGD with momentum (observed:
    # 3e-5 queue, 5e-5 weights; the same model without a buffer differs by 6e-4 in this set-up). A
    # queue in another order, or of one replica's keys only, would differ by O(1).
    assert result["queue_diff"] < 1e-3, result
    assert result["momentum_diff"] < 1e-3, result
    assert result["online_diff"] < 1e-3, result
    assert result["momentum_moved"] > 1e-4  # the moving average ran
