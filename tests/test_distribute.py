"""Distribution: make_strategy, is_chief, and proof that N replicas train exactly like one device.

The equivalence checks need several logical CPU devices, which TensorFlow only accepts before it
starts, so each runs in a fresh process (tests/distributed_checks.py) that prints its measurements
as JSON; the assertions are here. The default checks run in three processes started together, so
they overlap on a machine with spare cores.
"""

import functools
import json
import os
import pathlib
import subprocess
import sys
import types

import pytest
import tensorflow as tf

from simclr_tf import distribute
from simclr_tf.distribute import check_batch_divisible, is_chief, make_strategy, read_tf_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHECKS = ROOT / "tests" / "distributed_checks.py"
# Seconds. Tracing a train step with synchronised batch norm costs O(replicas^2): a 4-replica
# ResNet-18 step traces for 2-4 minutes on a busy 2-core machine.
TIMEOUT = 900

# NT-Xent loss and gradients, and batch-norm statistics: float32 round-off of a different
# summation order only (observed: loss 2.4e-7, gradient 1.2e-7, moving statistics 1.2e-7).
EXACT = 1e-5
# Weights after 2 LARS steps through a ResNet-18: the tolerance (observed: 1.3e-5 with 2
# replicas, 3.8e-6 with 4, for updates of up to 1.35; moving statistics 6.6e-7).
WEIGHTS = 1e-4


def _start(check, num_devices, *options):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_CONFIG", None)
    command = [sys.executable, str(CHECKS), check, str(num_devices), *options]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _finish(process):
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"{' '.join(process.args[2:])} did not finish in {TIMEOUT} s.")
    if process.returncode != 0:
        pytest.fail(f"{' '.join(process.args[2:])} failed (exit {process.returncode}):\n{stderr[-4000:]}")
    lines = stdout.strip().splitlines()
    return json.loads(lines[-1])


@functools.cache
def _run_together(*runs):
    """Runs `(checks, num_devices, *options)` in parallel processes; returns their merged results."""
    processes = [_start(*run) for run in runs]
    merged = {}
    for process in processes:
        merged.update(_finish(process))
    return merged


@pytest.fixture(scope="module")
def results():
    """Every default check, in three processes that run side by side."""
    return _run_together(
        ("nt_xent,strategy", 4, "--replicas", "2", "4"),
        ("bn_stats,train_step", 2),
        ("multi_worker", 2),
    )


# --- NT-Xent across replicas -----------------------------------------------------------------------


@pytest.mark.parametrize("replicas", [2, 4])
def test_nt_xent_replica_losses_average_to_the_global_batch_loss(results, replicas):
    result = results["nt_xent"][str(replicas)]
    assert result["num_replicas"] == replicas
    assert result["loss_diff"] < EXACT, result
    assert abs(sum(result["replica_losses"]) / replicas - result["loss_single"]) < EXACT
    # Each replica's loss is over its own queries only: they differ from one another.
    assert max(result["replica_losses"]) - min(result["replica_losses"]) > 0.1


@pytest.mark.parametrize("replicas", [2, 4])
def test_nt_xent_gradient_summed_over_replicas_equals_the_global_batch_gradient(results, replicas):
    result = results["nt_xent"][str(replicas)]
    assert result["grad_max"] > 0.1  # a gradient worth comparing
    assert result["grad_diff"] < EXACT, result


@pytest.mark.parametrize("replicas", [2, 4])
def test_nt_xent_fails_when_the_gradient_is_cut_at_the_gather(results, replicas):
    """The negative control: the same check, with `all_gather` blocking gradients, must fail."""
    result = results["nt_xent"][str(replicas)]
    assert result["cut_gather_loss_diff"] < EXACT  # the forward pass is unchanged ...
    assert result["cut_gather_grad_diff"] > 1000 * EXACT, result  # ... the gradient is not


@pytest.mark.parametrize("replicas", [2, 4])
def test_nt_xent_sees_every_replica_s_negatives(results, replicas):
    result = results["nt_xent"][str(replicas)]
    per_replica = result["per_replica"]
    # Logits of each local query against both views of the global batch ...
    assert result["logits_shapes"] == [[per_replica, 2 * per_replica * replicas]] * replicas
    # ... and the positive of local query i on replica r is global sample r * B + i.
    assert result["positives"] == [
        list(range(r * per_replica, (r + 1) * per_replica)) for r in range(replicas)
    ]


# --- One full training step ----------------------------------------------------------------------


def _check_equal_training(result, replicas):
    assert result["num_replicas"] == replicas and result["global_bn"]
    assert result["update_max"] > 0.1, result  # the steps moved the weights far beyond the tolerance
    assert result["weight_diff"] < WEIGHTS, result
    assert result["num_bn_stats"] == 2 * (21 + 2)  # ResNet-18 (CIFAR stem) and the projection head
    assert result["bn_stats_diff"] < WEIGHTS, result
    assert result["bn_replica_spread"] == 0.0
    assert result["trainable_replica_spread"] == 0.0


def test_train_steps_on_2_replicas_equal_one_device_with_the_global_batch(results):
    _check_equal_training(results["train_step"]["2/global"], 2)


@pytest.mark.slow
def test_train_steps_without_global_bn_differ_from_one_device():
    result = _run_together(("train_step", 2, "--train_bn", "per_replica"))["train_step"]["2/per_replica"]
    assert not result["global_bn"]
    # Each replica normalises with its own batch statistics, so the gradients, the weights and the
    # moving statistics all differ from the global batch's ...
    assert result["weight_diff"] > 100 * WEIGHTS, result
    assert result["bn_stats_diff"] > 100 * WEIGHTS, result
    # ... and each replica keeps its own moving statistics, while the trainable weights, updated
    # with all-reduced gradients, stay mirrored.
    assert result["bn_replica_spread"] > 100 * WEIGHTS, result
    assert result["trainable_replica_spread"] == 0.0


@pytest.mark.slow
def test_train_steps_on_4_replicas_equal_one_device_with_the_global_batch():
    result = _run_together(("bn_stats,train_step", 4))["train_step"]["4/global"]
    _check_equal_training(result, 4)


# --- Batch-norm statistics -----------------------------------------------------------------------


def _bn_stats(request, replicas, mode):
    if replicas == 2:
        return request.getfixturevalue("results")["bn_stats"][f"2/{mode}"]
    return _run_together(("bn_stats,train_step", 4))["bn_stats"][f"{replicas}/{mode}"]


BN_REPLICAS = [2, pytest.param(4, marks=pytest.mark.slow)]


@pytest.mark.parametrize("replicas", BN_REPLICAS)
def test_global_bn_statistics_are_those_of_the_global_batch(request, replicas):
    result = _bn_stats(request, replicas, "global")
    assert result["num_replicas"] == replicas and result["global_bn"]
    for name in ("moving_mean", "moving_variance"):
        # Every replica's copy holds the statistics of the whole global batch (NumPy) ...
        assert len(result[f"{name}_vs_global"]) == replicas
        assert max(result[f"{name}_vs_global"]) < EXACT, result
        # ... which are far from those of a single shard, so the comparison can tell them apart.
        assert result[f"{name}_global_vs_shard_0"] > 0.05
    assert result["encoder_num_stats"] == 2 * 21  # the 21 batch norms of ResNet-18 (CIFAR stem)
    assert result["encoder_stats_diff"] < EXACT, result


@pytest.mark.parametrize("replicas", BN_REPLICAS)
def test_per_replica_bn_statistics_are_those_of_each_shard(request, replicas):
    result = _bn_stats(request, replicas, "per_replica")
    assert not result["global_bn"]
    for name in ("moving_mean", "moving_variance"):
        assert len(result[f"{name}_vs_own_shard"]) == replicas
        assert max(result[f"{name}_vs_own_shard"]) < EXACT, result
        assert min(result[f"{name}_vs_global"]) > 0.05, result
    assert result["encoder_stats_diff"] > 1e-3, result


# --- make_strategy with real devices ---------------------------------------------------------------


def test_mirrored_uses_every_logical_cpu_or_the_listed_devices(results):
    result = results["strategy"]
    assert result["mirrored_all_replicas"] == 4
    cpus = [f"device:CPU:{i}" for i in range(4)]
    assert [d.rsplit("/", 1)[-1] for d in result["mirrored_all_devices"]] == cpus
    assert result["mirrored_is_chief"] is True
    assert result["mirrored_listed_replicas"] == 2
    assert [d.rsplit("/", 1)[-1] for d in result["mirrored_listed_devices"]] == cpus[:2]
    assert result["per_replica_batch"] == 3


def test_mirrored_device_errors_name_the_device_and_the_choices(results):
    result = results["strategy"]
    assert "'/cpu:4' is not one of them" in result["missing_device_error"]
    assert "Available: ['/device:CPU:0', '/device:CPU:1', '/device:CPU:2', '/device:CPU:3']" in (
        result["missing_device_error"]
    )
    assert "must not repeat a device" in result["repeated_device_error"]
    assert result["divisible_error"].startswith(
        "`train_batch_size` (13) must be divisible by the number of replicas (4)"
    )


def test_multi_worker_created_after_tensorflow_started_says_so(results):
    error = results["strategy"]["multi_worker_too_late_error"]
    assert "must be created at program start-up" in error
    assert "Call make_strategy() first" in error


def test_tpu_without_a_tpu_is_a_clear_error(results):
    error = results["strategy"]["tpu_local_error"]
    assert error.startswith("No TPU found with tpu_name='local'")
    for flag in ("--tpu_name", "--tpu_zone", "--gcp_project"):
        assert flag in error
    assert "NotFoundError" in error  # the resolver's own reason is kept


def test_multi_worker_from_tf_config(results):
    result = results["multi_worker"]
    assert result["type"] in ("MultiWorkerMirroredStrategy", "CollectiveAllReduceStrategy")
    assert result["task"] == ["worker", 0]
    assert result["is_chief"] is True
    assert result["should_checkpoint"] is result["is_chief"]  # TensorFlow's own notion agrees
    assert result["replica_sum"] == result["num_replicas"] >= 1


# --- make_strategy in this process (no devices needed) -----------------------------------------------


def test_default_strategy_is_tensorflow_s_default():
    strategy = make_strategy()
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1
    assert not tf.distribute.has_strategy()
    assert is_chief(strategy)


def test_unknown_strategy_name():
    with pytest.raises(ValueError, match=r"`strategy` must be one of 'default', 'mirrored', "
                                         r"'multi_worker', 'tpu'. Received: 'gpu'"):
        make_strategy("gpu")


def test_devices_only_with_mirrored():
    with pytest.raises(ValueError, match=r"`devices` only applies to `strategy='mirrored'`.*"
                                         r"strategy='default'"):
        make_strategy("default", devices=["/gpu:0"])


@pytest.mark.parametrize("device", ["/gpu:7", "not a device", "/job:localhost"])
def test_mirrored_rejects_devices_that_do_not_exist(device):
    with pytest.raises(ValueError, match=r"`devices` must name devices of this machine"):
        make_strategy("mirrored", devices=[device])


def test_multi_worker_without_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match=r"needs the TF_CONFIG environment variable.*"
                                         r"Received: TF_CONFIG is not set"):
        make_strategy("multi_worker")


def test_multi_worker_with_tf_config_that_is_not_json(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{cluster: worker}")
    with pytest.raises(ValueError, match=r"TF_CONFIG must be JSON.*does not parse.*"
                                         r"Received: '\{cluster: worker\}'"):
        make_strategy("multi_worker")


@pytest.mark.parametrize(
    "tf_config, match",
    [
        ({"task": {"type": "worker", "index": 0}}, "must have a `cluster`"),
        ({"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}, "must have a `cluster`"),
        ({"cluster": {"worker": ["a:1"]}}, "must have a `task`"),
        ({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": "0"}}, "must have a `task`"),
        ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}},
         r"task \('worker', index 2\) is not in its cluster \{'worker': 2\}"),
        ({"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}},
         r"task \('chief', index 0\) is not in its cluster"),
        (["worker"], "must have a `cluster`"),
    ],
)
def test_malformed_tf_config(tf_config, match):
    with pytest.raises(ValueError, match=match):
        read_tf_config({"TF_CONFIG": json.dumps(tf_config)})


def test_read_tf_config_returns_the_cluster_and_task():
    value = {"cluster": {"chief": ["a:1"], "worker": ["b:2", "c:3"]}, "task": {"type": "worker", "index": 1}}
    assert read_tf_config({"TF_CONFIG": json.dumps(value)}) == value


# --- TPU, without a TPU ------------------------------------------------------------------------


class _FakeResolver:
    created = []

    def __init__(self, tpu=None, zone=None, project=None):
        self.arguments = {"tpu": tpu, "zone": zone, "project": project}
        _FakeResolver.created.append(self)

    def cluster_spec(self):
        return tf.train.ClusterSpec({"worker": ["10.0.0.2:8470"]})


def test_tpu_passes_the_flags_to_the_resolver_and_builds_a_tpu_strategy(monkeypatch):
    calls = []
    _FakeResolver.created = []
    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", _FakeResolver)
    monkeypatch.setattr(tf.config, "experimental_connect_to_cluster", lambda r: calls.append(("connect", r)))
    monkeypatch.setattr(tf.tpu.experimental, "initialize_tpu_system", lambda r: calls.append(("init", r)))
    monkeypatch.setattr(tf.distribute, "TPUStrategy", lambda r: types.SimpleNamespace(resolver=r))

    strategy = make_strategy("tpu", tpu_name="my-tpu", tpu_zone="europe-west4-a", gcp_project="my-project")

    (resolver,) = _FakeResolver.created
    assert resolver.arguments == {"tpu": "my-tpu", "zone": "europe-west4-a", "project": "my-project"}
    # Connected, then initialised, before the strategy is built on the same resolver.
    assert calls == [("connect", resolver), ("init", resolver)]
    assert strategy.resolver is resolver


def test_tpu_resolver_failure_says_no_tpu_and_which_flags_to_pass(monkeypatch):
    def no_tpu(tpu=None, zone=None, project=None):
        raise ValueError("Please provide a TPU Name to connect to.")

    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", no_tpu)
    with pytest.raises(ValueError, match=r"No TPU found with tpu_name=None, tpu_zone='z', gcp_project=None\. "
                                         r"On a TPU VM pass --tpu_name=local.*--tpu_zone and --gcp_project.*"
                                         r"The resolver said: ValueError: Please provide a TPU Name") as info:
        make_strategy("tpu", tpu_zone="z")
    assert isinstance(info.value.__cause__, ValueError)


def test_tpu_initialisation_failure_is_reported_the_same_way(monkeypatch):
    def not_found(resolver):
        raise tf.errors.NotFoundError(None, None, "TPUs not found in the cluster.")

    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", _FakeResolver)
    monkeypatch.setattr(tf.config, "experimental_connect_to_cluster", lambda r: None)
    monkeypatch.setattr(tf.tpu.experimental, "initialize_tpu_system", not_found)
    with pytest.raises(ValueError, match=r"No TPU found with tpu_name='t'.*NotFoundError: TPUs not found"):
        make_strategy("tpu", tpu_name="t")


@pytest.mark.slow
def test_train_step_compiles_with_xla_as_on_a_tpu():
    """A TPU runs the whole train step through XLA: no op of it may be CPU-only.

    Compiling the step with XLA on the CPU (global batch norm, NT-Xent, the supervised head with
    unlabelled examples, LARS) is the closest check this machine can make.
    """
    import keras
    import numpy as np
    from model_factory import simclr_model

    from simclr_tf.optimizers import build_optimizer

    model = simclr_model(resnet_depth=18, cifar_stem=True, global_bn=True, num_proj_layers=2, proj_out_dim=8,
                        num_classes=3, temperature=0.5, weight_decay=1e-4)
    model(keras.ops.zeros((1, 8, 8, 3)))
    model.compile(optimizer=build_optimizer("lars", 0.2, weight_decay=1e-4), jit_compile=True)
    rng = np.random.default_rng(0)
    views = tuple(rng.uniform(size=(4, 8, 8, 3)).astype(np.float32) for _ in range(2))
    labels = np.array([0, 1, -1, 2], np.int32)
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(tf.data.Dataset.from_tensors((views, labels)).repeat(2), epochs=1, steps_per_epoch=2,
                        shuffle=False, verbose=0)
    assert model.jit_compile is True  # Keras silently falls back when a model cannot be compiled
    assert np.isfinite(history.history["loss"][-1])
    changed = sum(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    assert changed > len(before) // 2


# --- is_chief ----------------------------------------------------------------------------------


def _strategy_with_tf_config(monkeypatch, cluster, task_type, task_id):
    """A stand-in strategy whose resolver reads TF_CONFIG, as MultiWorkerMirroredStrategy's does."""
    tf_config = {"cluster": cluster, "task": {"type": task_type, "index": task_id}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    return types.SimpleNamespace(cluster_resolver=resolver)


@pytest.mark.parametrize(
    "cluster, task_type, task_id, chief",
    [
        ({"worker": ["a:1", "b:2"]}, "worker", 0, True),  # no chief job: worker 0 writes
        ({"worker": ["a:1", "b:2"]}, "worker", 1, False),
        ({"chief": ["c:0"], "worker": ["a:1", "b:2"]}, "chief", 0, True),
        ({"chief": ["c:0"], "worker": ["a:1", "b:2"]}, "worker", 0, False),  # the chief job writes
        ({"chief": ["c:0"], "worker": ["a:1"], "evaluator": ["e:0"]}, "evaluator", 0, False),
    ],
)
def test_is_chief(monkeypatch, cluster, task_type, task_id, chief):
    assert is_chief(_strategy_with_tf_config(monkeypatch, cluster, task_type, task_id)) is chief


def test_is_chief_without_a_cluster():
    assert is_chief(types.SimpleNamespace(cluster_resolver=None))
    # A multi-worker strategy started without TF_CONFIG: a resolver with no task.
    no_task = types.SimpleNamespace(task_type=None, task_id=None)
    assert is_chief(types.SimpleNamespace(cluster_resolver=no_task))


# --- check_batch_divisible ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "batch, replicas, per_replica", [(512, 8, 64), (4096, 128, 32), (6, 1, 6), (2, 2, 1)]
)
def test_check_batch_divisible_returns_the_per_replica_batch(batch, replicas, per_replica):
    assert check_batch_divisible(batch, replicas) == per_replica


def test_check_batch_divisible_error_names_the_batch_the_replicas_and_a_fix():
    with pytest.raises(ValueError, match=r"^`train_batch_size` \(100\) must be divisible by the number of "
                                         r"replicas \(8\).*Use a multiple of 8, e\.g\. 96 or 104\.$"):
        check_batch_divisible(100, 8)


def test_check_batch_divisible_smaller_than_the_replicas_and_other_names():
    with pytest.raises(ValueError, match=r"^`eval_batch_size` \(3\) .* replicas \(4\).*e\.g\. 4\.$"):
        check_batch_divisible(3, 4, name="eval_batch_size")


@pytest.mark.parametrize(
    "batch, replicas, match",
    [
        (0, 2, r"`train_batch_size` must be a positive integer. Received: 0"),
        (8.0, 2, r"`train_batch_size` must be a positive integer. Received: 8.0"),
        (8, 0, r"`num_replicas` must be a positive integer. Received: 0"),
    ],
)
def test_check_batch_divisible_rejects_non_positive_values(batch, replicas, match):
    with pytest.raises(ValueError, match=match):
        check_batch_divisible(batch, replicas)


def test_strategies_match_the_config():
    from simclr_tf.config import RuntimeConfig

    for name in distribute.STRATEGIES:
        RuntimeConfig(strategy=name).validate()
    with pytest.raises(ValueError, match="strategy"):
        RuntimeConfig(strategy="bogus").validate()
