"""Distributed equivalence checks, run in fresh processes by tests/test_distribute.py.

Logical CPU devices can only be configured before TensorFlow initialises its devices, so the
checks run in a fresh interpreter:

    PYTHONPATH=. python tests/distributed_checks.py <check>[,<check>...] <num_devices> [--option ...]

The script splits the one physical CPU into `num_devices` logical CPUs, runs the checks (under
`MirroredStrategy`s over the first `--replicas` of them) and prints one JSON object
`{check: measurements}` on the last line of stdout. It exits non-zero, with the reason on stderr,
if something cannot run. The checks only measure; the assertions live in tests/test_distribute.py.

Checks (results keyed by replica count, or by "<replicas>/<bn mode>"):
    nt_xent      NT-Xent loss and the gradient of a shared weight: replicas vs one device; then
                 the same with the replica context's all_gather wrapped in `tf.stop_gradient`
                 (the negative control: the gradient must then differ).
    train_step   `model.fit` steps of a tiny SimCLRModel (ResNet-18, projection head, NT-Xent,
                 LARS): weights and batch-norm statistics after the steps, replicas vs one device
                 with the global batch, with global and/or per-replica batch norm (`--train_bn`).
    bn_stats     Moving statistics of batch norm after one training-mode call, against NumPy
                 statistics of the global batch and of each replica's shard; and every batch
                 norm of a ResNet-18 encoder against one device on the global batch.
    strategy     `make_strategy` / `is_chief` / `check_batch_divisible` with real devices, and
                 the errors of `multi_worker` created too late and of `tpu` without a TPU.
                 Run it last: it tries to initialise a TPU system.
    multi_worker A real one-worker `MultiWorkerMirroredStrategy` from TF_CONFIG. Runs alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf


def _configure_devices(num_devices, verify=True):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)]
    )
    if not verify:  # listing logical devices starts TensorFlow's runtime
        return None
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(devices) != num_devices:
        raise RuntimeError(f"Asked for {num_devices} logical CPUs, TensorFlow made {devices}.")
    return devices


def _mirrored(num_devices):
    strategy = tf.distribute.MirroredStrategy(
        devices=[f"/cpu:{i}" for i in range(num_devices)],
        # The default on CPU would copy through one device anyway; say so explicitly.
        cross_device_ops=tf.distribute.ReductionToOneDevice(),
    )
    if strategy.num_replicas_in_sync != num_devices:
        raise RuntimeError(
            f"MirroredStrategy has {strategy.num_replicas_in_sync} replicas, not {num_devices}."
        )
    return strategy


def _shards(strategy, array):
    """A per-replica value: replica r holds rows [r * B, (r + 1) * B) of `array`."""
    replicas = strategy.num_replicas_in_sync
    per_replica = array.shape[0] // replicas

    def shard(context):
        start = context.replica_id_in_sync_group * per_replica
        return tf.constant(array[start:start + per_replica])

    return strategy.experimental_distribute_values_from_function(shard)


def _local(strategy, value):
    return [np.asarray(v) for v in strategy.experimental_local_results(value)]


def _max_abs(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# --- nt_xent ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _cut_the_gather():
    """Within it, every replica context's all_gather blocks gradients (the negative control)."""
    original = tf.distribute.ReplicaContext.all_gather

    def all_gather_without_gradient(self, value, axis, options=None):
        return tf.nest.map_structure(tf.stop_gradient, original(self, value, axis, options))

    tf.distribute.ReplicaContext.all_gather = all_gather_without_gradient
    try:
        yield
    finally:  # the checks run after this one in the same process gather with gradients again
        tf.distribute.ReplicaContext.all_gather = original


def check_nt_xent(args):
    from simclr_tf.losses import nt_xent

    per_replica, in_dim, out_dim, temperature = 3, 5, 4, 0.2
    rng = np.random.default_rng(args.seed)
    cases = {}
    for replicas in args.replicas:
        strategy = _mirrored(replicas)
        batch = per_replica * replicas
        x_1 = rng.normal(size=(batch, in_dim)).astype(np.float32)
        x_2 = (x_1 + 0.3 * rng.normal(size=(batch, in_dim))).astype(np.float32)
        w_init = rng.normal(size=(in_dim, out_dim)).astype(np.float32)

        # One device, the whole global batch.
        w_single = tf.Variable(w_init)
        with tf.GradientTape() as tape:
            loss_single, _, _ = nt_xent(x_1 @ w_single, x_2 @ w_single, temperature=temperature)
        grad_single = tape.gradient(loss_single, w_single)

        with strategy.scope():
            w = tf.Variable(w_init)
        cases[replicas] = (strategy, x_1, x_2, w, loss_single, grad_single)

    def replica_step(w, local_1, local_2):
        # `w` is this replica's copy of the mirrored variable.
        with tf.GradientTape() as tape:
            z_1 = tf.matmul(local_1, w)  # (B, D)
            z_2 = tf.matmul(local_2, w)  # (B, D)
            loss, logits_ab, labels = nt_xent(z_1, z_2, temperature=temperature)
            # As the train step: each replica's loss divided by the replica count, gradients
            # summed over replicas.
            scaled = loss / tf.distribute.get_replica_context().num_replicas_in_sync
        grad = tape.gradient(scaled, w)
        return loss, grad, tf.shape(logits_ab), tf.argmax(labels, axis=1)

    def distributed(strategy, x_1, x_2, w):
        @tf.function  # a new function each time, so that it traces the current all_gather
        def step(d_1, d_2):
            loss, grad, logits_shape, positives = strategy.run(replica_step, args=(w, d_1, d_2))
            return (
                strategy.reduce(tf.distribute.ReduceOp.MEAN, loss, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.SUM, grad, axis=None),
                loss,
                logits_shape,
                positives,
            )

        return step(_shards(strategy, x_1), _shards(strategy, x_2))

    results = {}
    for replicas, (strategy, x_1, x_2, w, loss_single, grad_single) in cases.items():
        loss_mean, grad_sum, losses, logits_shape, positives = distributed(strategy, x_1, x_2, w)
        results[str(replicas)] = {
            "num_replicas": strategy.num_replicas_in_sync,
            "per_replica": per_replica,
            "loss_single": float(loss_single),
            "loss_mean": float(loss_mean),
            "replica_losses": [float(v) for v in _local(strategy, losses)],
            "loss_diff": abs(float(loss_mean) - float(loss_single)),
            "grad_diff": _max_abs(grad_sum, grad_single),
            "grad_max": float(np.max(np.abs(grad_single))),
            "logits_shapes": [v.tolist() for v in _local(strategy, logits_shape)],
            "positives": [v.tolist() for v in _local(strategy, positives)],
        }
    # The negative control: the same measurements with the gradient cut at the all-gather.
    with _cut_the_gather():
        for replicas, (strategy, x_1, x_2, w, loss_single, grad_single) in cases.items():
            loss_mean, grad_sum, _, _, _ = distributed(strategy, x_1, x_2, w)
            results[str(replicas)]["cut_gather_loss_diff"] = abs(float(loss_mean) - float(loss_single))
            results[str(replicas)]["cut_gather_grad_diff"] = _max_abs(grad_sum, grad_single)
    return results


# --- train_step ------------------------------------------------------------------------------------


def _tiny_model(global_bn):
    import keras
    from model_factory import simclr_model

    from simclr_tf.optimizers import build_optimizer

    model = simclr_model(
        resnet_depth=18,
        cifar_stem=True,
        global_bn=global_bn,
        num_proj_layers=2,
        proj_out_dim=8,
        num_classes=0,
        temperature=0.5,
        weight_decay=1e-4,
    )
    model(keras.ops.zeros((1, 8, 8, 3)))
    # Large enough that every step moves the weights far more than the tolerance.
    optimizer = build_optimizer("lars", 0.2, weight_decay=1e-4)
    model.compile(optimizer=optimizer)
    return model


def check_train_step(args):
    """`model.fit` steps on replicas against one device, for each replica count and BN mode."""
    import keras

    steps, per_replica, size = args.steps, args.per_replica, 8
    results = {}
    for replicas in args.replicas:
        batch = per_replica * replicas
        rng = np.random.default_rng(args.seed)
        base = rng.uniform(size=(batch, size, size, 3))
        view_1 = np.clip(base + 0.1 * rng.normal(size=base.shape), 0, 1).astype(np.float32)
        view_2 = np.clip(base + 0.1 * rng.normal(size=base.shape), 0, 1).astype(np.float32)
        labels = np.full((batch,), -1, np.int32)  # pretraining without labels

        def dataset(view_1=view_1, view_2=view_2, labels=labels):
            # The same global batch every step; under the strategy Keras splits it into
            # `replicas` consecutive shards of `per_replica` examples.
            return tf.data.Dataset.from_tensors(((view_1, view_2), labels)).repeat(steps)

        # The reference: one device with the whole batch. Its batch norm sees the whole batch
        # whatever `global_bn` says, so it is the reference of both modes.
        keras.utils.set_random_seed(args.seed)
        single = _tiny_model(global_bn=True)
        initial = [w.copy() for w in single.get_weights()]
        single.fit(dataset(), epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0)
        strategy = _mirrored(replicas)
        for mode in args.train_bn:
            with strategy.scope():
                replicated = _tiny_model(global_bn=mode == "global")
            replicated.set_weights(initial)
            replicated.fit(dataset(), epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0)
            result = _compare_models(strategy, replicated, single, initial)
            results[f"{replicas}/{mode}"] = {"steps": steps, "global_bn": mode == "global", **result}
    return results


def _compare_models(strategy, replicated, single, initial):
    worst_diff, worst_path, worst_relative, update_max = 0.0, "", 0.0, 0.0
    for variable, reference, start in zip(replicated.trainable_weights, single.trainable_weights,
                                          _by_path(single, initial), strict=True):
        got, want = variable.numpy(), reference.numpy()
        update = want - start
        update_max = max(update_max, float(np.max(np.abs(update))))
        diff = _max_abs(got, want)
        if diff > worst_diff:
            worst_diff, worst_path = diff, variable.path
        relative = np.linalg.norm(got - want) / max(np.linalg.norm(update), 1e-30)
        worst_relative = max(worst_relative, float(relative))

    # Batch-norm moving statistics: every replica's copy against the single device's (the two
    # models list their weights in the same order, as `set_weights` relies on).
    stats_diff, replica_spread, num_stats = 0.0, 0.0, 0
    for got, want in zip(replicated.weights, single.weights, strict=True):
        if not got.path.endswith(("moving_mean", "moving_variance")):
            continue
        num_stats += 1
        copies = _local(strategy, got.value)
        stats_diff = max(stats_diff, *(_max_abs(c, want.numpy()) for c in copies))
        replica_spread = max(replica_spread, *(_max_abs(c, copies[0]) for c in copies))

    # Trainable weights are mirrored: the all-reduced update keeps every copy identical.
    trainable_spread = 0.0
    for variable in replicated.trainable_weights:
        copies = _local(strategy, variable.value)
        trainable_spread = max(trainable_spread, *(_max_abs(c, copies[0]) for c in copies))

    return {
        "num_replicas": strategy.num_replicas_in_sync,
        "weight_diff": worst_diff,
        "weight_diff_path": worst_path,
        "weight_diff_relative_to_update": worst_relative,
        "update_max": update_max,
        "bn_stats_diff": stats_diff,
        "bn_replica_spread": replica_spread,
        "num_bn_stats": num_stats,
        "trainable_replica_spread": trainable_spread,
    }


def _by_path(model, initial):
    """The initial values of `model.trainable_weights`, from a `get_weights()` list."""
    start = {v.path: w for v, w in zip(model.weights, initial, strict=True)}
    return [start[v.path] for v in model.trainable_weights]


# --- bn_stats --------------------------------------------------------------------------------------


def check_bn_stats(args):
    """Moving statistics after one training-mode call, for each replica count and BN mode."""
    results = {}
    for replicas in args.replicas:
        strategy = _mirrored(replicas)
        for mode in ("global", "per_replica"):
            results[f"{replicas}/{mode}"] = _bn_stats(strategy, mode == "global", args.seed)
    return results


def _bn_stats(strategy, global_bn, seed):
    import keras

    from simclr_tf.models.batch_norm import BatchNormalization
    from simclr_tf.models.resnet import build_resnet

    replicas = strategy.num_replicas_in_sync
    momentum, per_replica, channels = 0.9, 3, 4
    batch = per_replica * replicas
    rng = np.random.default_rng(seed)
    # Shards with different means and scales, so per-replica and global statistics differ.
    scale = np.repeat(np.arange(1, replicas + 1), per_replica)[:, None, None, None]
    x = (rng.normal(size=(batch, 2, 2, channels)) * scale + scale).astype(np.float32)

    with strategy.scope():
        # The encoder's layer: fused per replica, Keras' all-reduced path when synchronized.
        layer = BatchNormalization(momentum=momentum, synchronized=global_bn)
        layer.build((None, 2, 2, channels))

    @tf.function
    def call_layer(values):
        return strategy.run(lambda v: layer(v, training=True), args=(values,))

    call_layer(_shards(strategy, x))
    axes = (0, 1, 2)
    # Keras: moving = momentum * moving + (1 - momentum) * batch statistic, from 0 and 1, with
    # the biased (population) variance.
    expected_global = {
        "moving_mean": (1 - momentum) * x.mean(axes),
        "moving_variance": momentum + (1 - momentum) * x.var(axes),
    }
    shards = np.split(x, replicas)
    expected_local = {
        "moving_mean": [(1 - momentum) * s.mean(axes) for s in shards],
        "moving_variance": [momentum + (1 - momentum) * s.var(axes) for s in shards],
    }
    result = {"num_replicas": replicas, "global_bn": global_bn}
    for name in ("moving_mean", "moving_variance"):
        copies = _local(strategy, getattr(layer, name).value)
        result[f"{name}_vs_global"] = [_max_abs(c, expected_global[name]) for c in copies]
        result[f"{name}_vs_own_shard"] = [
            _max_abs(c, e) for c, e in zip(copies, expected_local[name], strict=True)
        ]
        result[f"{name}_global_vs_shard_0"] = _max_abs(expected_global[name], expected_local[name][0])

    # Every batch norm of a ResNet encoder: moving statistics after one training-mode call on
    # the replicas against one device on the global batch.
    image = rng.uniform(size=(batch, 8, 8, 3)).astype(np.float32)
    keras.utils.set_random_seed(seed)
    single = build_resnet(18, cifar_stem=True, global_bn=True)
    with strategy.scope():
        replicated = build_resnet(18, cifar_stem=True, global_bn=global_bn)
    replicated.set_weights(single.get_weights())
    single(image, training=True)

    @tf.function
    def call_encoder(values):
        return strategy.run(lambda v: replicated(v, training=True)["final_avg_pool"], args=(values,))

    call_encoder(_shards(strategy, image))
    encoder_diff, count = 0.0, 0
    for got, want in zip(replicated.weights, single.weights, strict=True):
        if got.path.endswith(("moving_mean", "moving_variance")):
            count += 1
            for copy in _local(strategy, got.value):
                encoder_diff = max(encoder_diff, _max_abs(copy, want.numpy()))
    result["encoder_stats_diff"] = encoder_diff
    result["encoder_num_stats"] = count
    return result


# --- strategy --------------------------------------------------------------------------------------


def _free_port():
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def _error(function, *args, **kwargs):
    """The message of the ValueError that `function` raises, or None if it returns."""
    try:
        function(*args, **kwargs)
    except ValueError as error:
        return str(error)
    return None


def check_strategy(args):
    num_devices = args.num_devices
    from simclr_tf.distribute import check_batch_divisible, is_chief, make_strategy

    result = {}
    mirrored = make_strategy("mirrored")
    result["mirrored_all_replicas"] = mirrored.num_replicas_in_sync
    result["mirrored_all_devices"] = list(mirrored.extended.worker_devices)
    result["mirrored_is_chief"] = is_chief(mirrored)
    listed = make_strategy("mirrored", devices=["/cpu:0", "/device:CPU:1"])
    result["mirrored_listed_replicas"] = listed.num_replicas_in_sync
    result["mirrored_listed_devices"] = list(listed.extended.worker_devices)
    missing = ["/cpu:0", f"/cpu:{num_devices}"]
    result["missing_device_error"] = _error(make_strategy, "mirrored", devices=missing)
    repeated = ["/cpu:0", "/device:CPU:0"]
    result["repeated_device_error"] = _error(make_strategy, "mirrored", devices=repeated)
    replicas = mirrored.num_replicas_in_sync
    result["divisible_error"] = _error(check_batch_divisible, 3 * num_devices + 1, replicas)
    result["per_replica_batch"] = check_batch_divisible(3 * num_devices, replicas)
    # TensorFlow is running now: too late for collective ops.
    os.environ["TF_CONFIG"] = json.dumps(
        {"cluster": {"worker": [f"localhost:{_free_port()}"]}, "task": {"type": "worker", "index": 0}}
    )
    result["multi_worker_too_late_error"] = _error(make_strategy, "multi_worker")
    # No TPU on this machine: the local TPU driver finds none (no network involved).
    result["tpu_local_error"] = _error(make_strategy, "tpu", tpu_name="local")
    return result


def check_multi_worker(args):
    """A real MultiWorkerMirroredStrategy of one worker, created first thing, as it must be."""
    from simclr_tf.distribute import is_chief, make_strategy

    os.environ["TF_CONFIG"] = json.dumps(
        {"cluster": {"worker": [f"localhost:{_free_port()}"]}, "task": {"type": "worker", "index": 0}}
    )
    strategy = make_strategy("multi_worker")
    resolver = strategy.cluster_resolver
    total = strategy.reduce(
        tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None
    )
    return {
        "type": type(strategy).__name__,
        "is_chief": is_chief(strategy),
        "should_checkpoint": bool(strategy.extended.should_checkpoint),
        "task": [resolver.task_type, resolver.task_id],
        "num_replicas": strategy.num_replicas_in_sync,
        "replica_sum": float(total),
    }


CHECKS = {
    "nt_xent": check_nt_xent,
    "train_step": check_train_step,
    "bn_stats": check_bn_stats,
    "strategy": check_strategy,
    "multi_worker": check_multi_worker,
}


def main(argv):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checks", help=f"comma-separated, run in this order: {', '.join(CHECKS)}")
    parser.add_argument("num_devices", type=int, help="logical CPU devices to make")
    parser.add_argument("--replicas", type=int, nargs="+", help="replica counts; default num_devices")
    parser.add_argument("--train_bn", nargs="+", choices=("global", "per_replica"), default=["global"],
                        help="batch-norm modes of train_step (bn_stats always measures both)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--per_replica", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    checks = args.checks.split(",")
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        parser.error(f"unknown checks {unknown}; choose from {list(CHECKS)}.")
    if "multi_worker" in checks and checks != ["multi_worker"]:
        parser.error("multi_worker must run alone: it must start before TensorFlow does.")
    args.replicas = args.replicas or [args.num_devices]
    if args.num_devices < 1 or not all(1 <= r <= args.num_devices for r in args.replicas):
        parser.error(f"need 1 <= replicas <= num_devices. Received: {args.replicas}, {args.num_devices}.")
    # A multi-worker strategy must be created before TensorFlow's runtime starts.
    _configure_devices(args.num_devices, verify=checks != ["multi_worker"])
    results = {check: CHECKS[check](args) for check in checks}
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
