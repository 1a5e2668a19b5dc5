"""The memory buffer on 2 replicas, run in a fresh process by tests/test_memory_buffer.py.

    PYTHONPATH=. python tests/memory_buffer_check.py

Splits the CPU into 2 logical devices (possible only before TensorFlow starts) and prints one JSON
object of measurements on the last line of stdout; the assertions live in the test file.

    fifo  `MemoryBuffer.enqueue` under `MirroredStrategy`: replica r holds samples r*B .. r*B+B-1
          of each view; every replica's queue, after two steps that wrap around, against the FIFO
          order of the global batch written out in Python.
    fit   3 `model.fit` steps of a tiny SimCLRModel with a memory buffer: 2 replicas against one
          device with the global batch (queue, momentum and online weights).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

REPLICAS, PER_REPLICA, SIZE, STEPS = 2, 3, 8, 3


def _strategy():
    return tf.distribute.MirroredStrategy(devices=[f"/cpu:{i}" for i in range(REPLICAS)],
                                          cross_device_ops=tf.distribute.ReductionToOneDevice())


def _components(variable):
    """The per-replica copies of a Keras variable under a strategy."""
    return [np.asarray(v.numpy()).tolist() for v in variable.value.values]


def check_fifo(strategy):
    import keras

    from simclr_tf.models.memory import MemoryBuffer

    size, batch = 16, PER_REPLICA * REPLICAS
    with strategy.scope():
        memory = MemoryBuffer(keras.layers.Identity(), keras.layers.Identity(), size=size)
        memory.build((None, 1))

    @tf.function
    def enqueue(step):
        def fn():
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            local = tf.cast(tf.range(PER_REPLICA) + replica * PER_REPLICA, tf.float32)
            view_1 = 100.0 * step + local  # global sample i of view 1: 100 * step + i
            view_2 = 100.0 * step + 50.0 + local  # of view 2: 100 * step + 50 + i
            memory.enqueue(view_1[:, None], view_2[:, None])
        strategy.run(fn)

    expected, pointer = [0.0] * size, 0
    for step in (1, 2):  # 12 keys a step into 16 entries: the second step wraps around
        enqueue(tf.constant(float(step)))
        for key in [100.0 * step + i for i in range(batch)] + [100.0 * step + 50 + i for i in range(batch)]:
            expected[pointer] = key
            pointer = (pointer + 1) % size
    return {
        "num_replicas": strategy.num_replicas_in_sync,
        "queues": [[row[0] for row in q] for q in _components(memory.queue)],
        "expected": expected,
        "pointers": _components(memory.pointer),
        "expected_pointer": pointer,
    }


def _model(seed):
    import keras
    from model_factory import simclr_model

    keras.utils.set_random_seed(seed)
    # No batch norm in the encoder: its training-mode output does not depend on the batch split. The
    # projection head's batch norm is synchronised (global_bn), so it sees the global batch.
    encoder = keras.Sequential([keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
                                keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(6)])
    model = simclr_model(encoder=encoder, num_proj_layers=2, proj_out_dim=4, num_classes=0, global_bn=True,
                        memory_buffer_size=10, memory_momentum=0.8, temperature=0.5)
    model.build((None, SIZE, SIZE, 3))
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    return model


def check_fit(strategy):
    batch = PER_REPLICA * REPLICAS
    rng = np.random.default_rng(0)
    views = [rng.uniform(size=(STEPS, batch, SIZE, SIZE, 3)).astype(np.float32) for _ in range(2)]

    def dataset():
        return tf.data.Dataset.from_tensor_slices(((views[0], views[1]), np.full((STEPS, batch), -1)))

    single = _model(seed=1)
    initial = single.get_weights()
    momentum_start = [v.numpy() for v in single.memory.network_weights]
    single.fit(dataset(), epochs=1, shuffle=False, verbose=0)
    with strategy.scope():
        replicated = _model(seed=1)
    replicated.set_weights(initial)
    replicated.fit(dataset(), epochs=1, shuffle=False, verbose=0)

    def diff(a, b):  # the largest difference, relative to the value where it is above 1
        a, b = ([np.asarray(x, np.float64) for x in xs] for xs in (a, b))
        return float(max(np.max(np.abs(x - y) / np.maximum(1.0, np.abs(y)))
                         for x, y in zip(a, b, strict=True)))

    online = lambda m: [v.numpy() for v in m.trainable_variables]
    momentum = lambda m: [v.numpy() for v in m.memory.network_weights]
    return {
        "num_replicas": strategy.num_replicas_in_sync,
        "filled": _components(replicated.memory.filled),
        "expected_filled": min(10, 2 * batch * STEPS),
        "queue_changed": float(np.abs(single.memory.queue.numpy()).max()),
        "queue_diff": max(diff([q], [single.memory.queue.numpy()])
                          for q in _components(replicated.memory.queue)),
        "momentum_diff": diff(momentum(replicated), momentum(single)),
        "online_diff": diff(online(replicated), online(single)),
        "momentum_moved": diff(momentum(single), momentum_start),
    }


def main():
    import keras

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS)
    strategy = _strategy()
    results = {"fifo": check_fifo(strategy), "fit": check_fit(strategy)}
    keras.backend.clear_session()
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
