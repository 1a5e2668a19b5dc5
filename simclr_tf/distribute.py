"""Choosing a `tf.distribute` strategy: one device, mirrored, multi-worker or TPU.

SimCLR needs large batches spread over many devices, with negatives (NT-Xent) and batch-norm
statistics (`global_bn`) shared across replicas. The loss and the layers do the sharing
(`simclr_tf.losses.nt_xent` all-gathers the projections; `BatchNormalization(synchronized=True)`
all-reduces the moments); this module only chooses where the replicas live, checks that the
global batch splits evenly over them, tells which process is the chief that writes
checkpoints, summaries and exports, distributes input pipelines, and holds the workarounds that
Keras 3 needs under `MultiWorkerMirroredStrategy` and the barrier between workers.

References:
    - [Chen et al., 2020. A Simple Framework for Contrastive Learning of Visual
      Representations](https://arxiv.org/abs/2002.05709), section 2.2 (global BN, large batches).
"""

from __future__ import annotations

import json
import logging
import os

import tensorflow as tf

from simclr_tf.config import STRATEGIES

log = logging.getLogger(__name__)


def make_strategy(
    strategy: str = "default",
    *,
    devices=(),
    tpu_name: str | None = None,
    tpu_zone: str | None = None,
    gcp_project: str | None = None,
) -> tf.distribute.Strategy:
    """Returns the `tf.distribute.Strategy` to train under.

    Args:
        strategy: str. One of:
            - `"default"`: the default strategy, one device (a GPU if there is one).
            - `"mirrored"`: `MirroredStrategy` over `devices`, or over every GPU; with no GPU,
              over every logical CPU device (useful for testing; one CPU device gives one replica).
            - `"multi_worker"`: `MultiWorkerMirroredStrategy`; the `TF_CONFIG` environment variable
              describes the cluster and this process' task. Create it at program start-up,
              before any other TensorFlow work.
            - `"tpu"`: `TPUStrategy` through a `TPUClusterResolver`.
            Defaults to `"default"`.
        devices: sequence of str. The devices of `"mirrored"`, e.g. `("/gpu:0", "/gpu:1")`.
            Only valid with `"mirrored"`. Defaults to `()` (all GPUs).
        tpu_name: str. The TPU's name or gRPC address, `"local"` on a TPU VM (`--tpu_name`).
            `None` lets the resolver read the `TPU_NAME` environment variable.
        tpu_zone: str. The TPU's GCE zone (`--tpu_zone`); `None` lets the resolver find it.
        gcp_project: str. The Cloud project of the TPU (`--gcp_project`); `None` lets the
            resolver find it.

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        ValueError: an unknown strategy name; `devices` with a strategy other than `mirrored`, or
            naming a device that does not exist; `multi_worker` with a missing or malformed
            `TF_CONFIG`, or created after TensorFlow has started; `tpu` when no TPU can be found
            or initialised.

    Example:
        ```python
        strategy = make_strategy("mirrored", devices=("/gpu:0", "/gpu:1"))
        per_replica_batch = check_batch_divisible(512, strategy.num_replicas_in_sync)
        with strategy.scope():
            model = build_model(config, num_classes)  # global_bn: batch norm across replicas
        ```
    """
    if strategy not in STRATEGIES:
        raise ValueError(
            f"`strategy` must be one of {', '.join(map(repr, STRATEGIES))}. Received: {strategy!r}."
        )
    devices = tuple(devices or ())
    if devices and strategy != "mirrored":
        raise ValueError(
            f"`devices` only applies to `strategy='mirrored'`. Received: devices={list(devices)} with "
            f"strategy={strategy!r}. Drop --devices or use --strategy=mirrored."
        )
    if strategy == "default":
        return tf.distribute.get_strategy()
    if strategy == "mirrored":
        return _mirrored_strategy(devices)
    if strategy == "multi_worker":
        return _multi_worker_strategy()
    return _tpu_strategy(tpu_name, tpu_zone, gcp_project)


def _mirrored_strategy(devices):
    available = [d.name for d in tf.config.list_logical_devices()]
    if devices:
        known = {_device_key(name): name for name in available}
        seen = set()
        for device in devices:
            key = _device_key(device)
            if key is None or key not in known:
                raise ValueError(
                    f"`devices` must name devices of this machine, like '/gpu:0'. {device!r} is not one "
                    f"of them. Available: {available}. Received: devices={list(devices)}."
                )
            if key in seen:
                raise ValueError(
                    f"`devices` must not repeat a device. {device!r} appears twice in {list(devices)}."
                )
            seen.add(key)
        return tf.distribute.MirroredStrategy(devices=list(devices))
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if gpus:
        return tf.distribute.MirroredStrategy(devices=gpus)
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    log.warning("No GPU found: mirroring over %d CPU device(s): %s.", len(cpus), cpus)
    return tf.distribute.MirroredStrategy(devices=cpus)


def _device_key(name):
    """`("GPU", 1)` for '/gpu:1', '/device:GPU:1' or '/job:localhost/.../device:GPU:1'."""
    try:
        spec = tf.DeviceSpec.from_string(name)
    except (ValueError, TypeError):
        return None
    if spec.device_type is None or spec.device_index is None:
        return None
    return spec.device_type.upper(), spec.device_index


def read_tf_config(environ=None) -> dict:
    """Reads and checks the `TF_CONFIG` environment variable of a multi-worker cluster.

    Args:
        environ: mapping. Where to read `TF_CONFIG` from. Defaults to `os.environ`.

    Returns:
        The parsed `TF_CONFIG`: a dict with `cluster` (job name -> list of `"host:port"`) and
        `task` (`{"type": job name, "index": int}`).

    Raises:
        ValueError: `TF_CONFIG` is missing, not JSON, or does not describe a task of its cluster.

    Example:
        ```python
        os.environ["TF_CONFIG"] = json.dumps({
            "cluster": {"worker": ["host1:2222", "host2:2222"]},
            "task": {"type": "worker", "index": 0},
        })
        read_tf_config()["task"]  # {"type": "worker", "index": 0}
        ```
    """
    environ = os.environ if environ is None else environ
    example = (
        '{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", "index": 0}}'
    )
    raw = environ.get("TF_CONFIG", "")
    if not raw.strip():
        raise ValueError(
            "`strategy='multi_worker'` needs the TF_CONFIG environment variable describing the "
            f"cluster and this process' task, e.g. TF_CONFIG='{example}' (index 1 on the second "
            "worker). Received: TF_CONFIG is not set."
        )
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"TF_CONFIG must be JSON like '{example}'. It does not parse ({error}). Received: {raw!r}."
        ) from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster or not all(
        isinstance(hosts, list) and hosts for hosts in cluster.values()
    ):
        raise ValueError(
            "TF_CONFIG must have a `cluster` mapping each job name to a non-empty list of "
            f"'host:port' addresses, like '{example}'. Received: {raw!r}."
        )
    if not isinstance(task, dict) or "type" not in task or not isinstance(task.get("index", 0), int):
        raise ValueError(
            "TF_CONFIG must have a `task` with this process' job `type` and integer `index`, like "
            f"'{example}'. Received: {raw!r}."
        )
    task_type, index = task["type"], task.get("index", 0)
    if task_type not in cluster or not 0 <= index < len(cluster[task_type]):
        raise ValueError(
            f"TF_CONFIG's task ({task_type!r}, index {index}) is not in its cluster "
            f"{ {job: len(hosts) for job, hosts in cluster.items()} } (job -> number of tasks). Give "
            f"each process its own job type and an index below the number of that job's addresses. "
            f"Received: {raw!r}."
        )
    return config


def _multi_worker_strategy():
    config = read_tf_config()
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as error:
        # Collective ops are configured when TensorFlow's runtime starts; afterwards it is too late.
        raise ValueError(
            "`strategy='multi_worker'` must be created at program start-up, before TensorFlow runs "
            f"anything else in this process (task {config['task']}). Call make_strategy() first. "
            f"TensorFlow said: {error}"
        ) from error


def _tpu_strategy(tpu_name, tpu_zone, gcp_project):
    where = f"tpu_name={tpu_name!r}, tpu_zone={tpu_zone!r}, gcp_project={gcp_project!r}"
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=tpu_name, zone=tpu_zone, project=gcp_project
        )
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    # The resolver talks to the Cloud TPU API, the metadata server or the local TPU driver, and
    # each fails in its own way (ValueError, URLError, OpError, HttpError ...): report them all
    # as the same user error.
    except Exception as error:
        raise ValueError(
            f"No TPU found with {where}. On a TPU VM pass --tpu_name=local; from another machine "
            "pass --tpu_name (the TPU's name or grpc://address), --tpu_zone and --gcp_project, or "
            f"use --strategy=mirrored or default without a TPU. The resolver said: "
            f"{type(error).__name__}: {error}"
        ) from error
    log.info("TPU system initialised (%s): %s.", where, resolver.cluster_spec().as_dict())
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy) -> bool:
    """Whether this process writes checkpoints, summaries and exports.

    One process writes, the others only train: the `chief` task if the cluster has one, else
    worker 0. A strategy without a cluster (default, mirrored) or a TPU strategy (one client
    process drives every core) is its own chief.

    Args:
        strategy: a `tf.distribute.Strategy`, or any object with a `cluster_resolver` attribute
            (`task_type`, `task_id`, `cluster_spec()`).

    Returns:
        bool.

    Example:
        ```python
        if is_chief(strategy):
            model.save(os.path.join(model_dir, "model.keras"))
        ```
    """
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return True
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if resolver is None or task_type is None:
        return True
    if task_type == "chief":
        return True
    if task_type != "worker":  # evaluator, ps
        return False
    return resolver.task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()


def check_batch_divisible(global_batch_size: int, num_replicas: int, name: str = "train_batch_size") -> int:
    """Checks that a global batch splits evenly over the replicas; returns the per-replica batch.

    Every replica must hold the same number of examples, so that dividing each replica's loss by
    the number of replicas and summing the gradients equals one device on the whole batch.

    Args:
        global_batch_size: int. The batch size summed over all replicas.
        num_replicas: int. `strategy.num_replicas_in_sync`.
        name: str. The name of the batch-size setting, for the error message. Defaults to
            `"train_batch_size"`.

    Returns:
        int: `global_batch_size // num_replicas`.

    Raises:
        ValueError: if `num_replicas` or `global_batch_size` is not a positive integer, or the
            batch does not divide by the number of replicas.

    Example:
        ```python
        check_batch_divisible(512, 8)  # 64
        check_batch_divisible(100, 8)  # ValueError: `train_batch_size` (100) must be divisible ...
        ```
    """
    if not isinstance(num_replicas, int) or num_replicas < 1:
        raise ValueError(f"`num_replicas` must be a positive integer. Received: {num_replicas!r}.")
    if not isinstance(global_batch_size, int) or global_batch_size < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {global_batch_size!r}.")
    if global_batch_size % num_replicas:
        lower = global_batch_size // num_replicas * num_replicas
        upper = lower + num_replicas
        suggestion = f"{lower} or {upper}" if lower else f"{upper}"
        raise ValueError(
            f"`{name}` ({global_batch_size}) must be divisible by the number of replicas "
            f"({num_replicas}), so that every replica gets the same share. Use a multiple of "
            f"{num_replicas}, e.g. {suggestion}."
        )
    return global_batch_size // num_replicas


def is_multi_worker(strategy) -> bool:
    """Whether `strategy` spans several worker processes (`MultiWorkerMirroredStrategy`)."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def distribute_dataset(make, strategy):
    """`make(input_context)`'s dataset, one shard per input pipeline when the strategy has several.

    With one replica in one process, `make(None)` as it is; otherwise
    `strategy.distribute_datasets_from_function(make)`.
    """
    if strategy.num_replicas_in_sync == 1 and not is_multi_worker(strategy):
        return make(None)
    return strategy.distribute_datasets_from_function(make)


def wait_for_all_workers(strategy) -> None:
    """A barrier across the workers of a multi-worker strategy (nothing to do otherwise)."""
    if is_multi_worker(strategy):
        barrier = tf.function(lambda: strategy.reduce("SUM", strategy.run(tf.ones, ([],)), axis=None),
                              autograph=False)
        barrier()


def work_around_keras_multi_worker(model) -> None:
    """Lets a built, compiled model `fit` and `evaluate` under MultiWorkerMirroredStrategy.

    Keras 3 trips over this strategy twice (keras-team/keras#20585, tensorflow/tensorflow#72388):

    - Before `fit` and `evaluate` it averages a whole input batch over the replicas with
      `strategy.reduce` to build the model symbolically, which fails on a nested batch ("Attempt
      to convert a value (PerReplica ...) to a Tensor"). That build has nothing to do once the
      model, its metrics and its optimizer are built: skip it.
    - It averages each step's outputs with `strategy.reduce("MEAN", value, axis=0)`, which
      expects a batch axis and fails on the scalar metrics ("Invalid reduction dimension 0 for
      input with 0 dimensions"). Giving each scalar a batch axis of one makes that the mean over
      all replicas of all workers, the same value as under MirroredStrategy.

    Raises:
        RuntimeError: if the model or its optimizer is not built yet.
    """
    unbuilt = [layer.name for layer in model._flatten_layers() if not layer.built]
    if unbuilt or not model.optimizer.built:
        raise RuntimeError(f"Build the model and its optimizer first; not built: {unbuilt or 'optimizer'}.")
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None

    def with_batch_axis(step):
        def step_with_batch_axis(data):
            return {name: tf.reshape(value, [1]) for name, value in step(data).items()}  # () -> (1,)

        return step_with_batch_axis

    model.train_step = with_batch_axis(model.train_step)
    model.test_step = with_batch_axis(model.test_step)


__all__ = ["STRATEGIES", "check_batch_divisible", "distribute_dataset", "is_chief", "is_multi_worker",
           "make_strategy", "read_tf_config", "wait_for_all_workers", "work_around_keras_multi_worker"]
