"""Distillation on 2 replicas against one device, run in a fresh process by tests/test_distill.py.

    PYTHONPATH=. python tests/distill_distributed_check.py [num_devices]

Splits the CPU into logical devices (possible only before TensorFlow starts), trains a tiny student
from a tiny teacher for a few steps under `MirroredStrategy` and on one device with the whole batch,
and prints one JSON object of measurements on the last line of stdout. The labelled images are
spread unevenly over the replicas (3 on the first, 1 on the second), so a per-replica mean of the
cross-entropy would differ from the global one.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

STEPS, PER_REPLICA, SIZE, CLASSES = 3, 4, 8, 4


def tiny_pair(seed: int):
    """A student without batch norm (its training-mode output is independent of the batch split)
    and a teacher with batch norm (frozen: inference mode), both with `CLASSES` classes."""
    import keras
    from model_factory import simclr_model

    keras.utils.set_random_seed(seed)
    student = simclr_model(
        encoder=keras.Sequential([keras.layers.Conv2D(6, 3, padding="same", activation="relu"),
                                  keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(8)]),
        num_proj_layers=2, proj_out_dim=4, num_classes=CLASSES, train_mode="finetune", global_bn=False,
        weight_decay=1e-3,
    )
    teacher = simclr_model(
        encoder=keras.Sequential([keras.layers.Conv2D(6, 3, padding="same"),
                                  keras.layers.BatchNormalization(),
                                  keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D()]),
        num_proj_layers=2, proj_out_dim=4, num_classes=CLASSES, train_mode="finetune", global_bn=False,
    )
    for model in (student, teacher):
        model.build((None, SIZE, SIZE, 3))
    # A confident teacher (the heads start at stddev 0.01, which predicts nearly uniformly).
    rng = np.random.default_rng(seed)
    for weight in teacher.supervised_head.trainable_weights:
        weight.assign(rng.normal(scale=2.0, size=weight.shape).astype(np.float32))
    return student, teacher


def distillation(seed: int, temperature=2.0, alpha=0.5):
    import keras

    from simclr_tf.models.distill import DistillationModel

    student, teacher = tiny_pair(seed)
    model = DistillationModel(student, teacher, temperature=temperature, alpha=alpha)
    model.build((None, SIZE, SIZE, 3))
    model.compile(optimizer=keras.optimizers.SGD(0.5, momentum=0.9))
    return model


def main(argv):
    import keras

    replicas = int(argv[0]) if argv else 2
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    batch = PER_REPLICA * replicas
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(batch, SIZE, SIZE, 3)).astype(np.float32)
    labels = np.full((batch,), -1, np.int32)
    labels[:3] = [0, 1, 2]  # the first replica's shard
    labels[PER_REPLICA] = 3  # one on the second

    def dataset():
        return tf.data.Dataset.from_tensors((images, labels)).repeat(STEPS)

    single = distillation(seed=1)
    initial = single.get_weights()
    teacher_before = [w.copy() for w in single.teacher.get_weights()]
    history = single.fit(dataset(), epochs=1, steps_per_epoch=STEPS, shuffle=False, verbose=0)

    strategy = tf.distribute.MirroredStrategy(
        devices=[f"/cpu:{i}" for i in range(replicas)], cross_device_ops=tf.distribute.ReductionToOneDevice())
    with strategy.scope():
        replicated = distillation(seed=1)
    replicated.set_weights(initial)
    replicated_history = replicated.fit(dataset(), epochs=1, steps_per_epoch=STEPS, shuffle=False, verbose=0)

    def diff(a, b):
        return float(max(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))
                         for x, y in zip(a, b, strict=True)))

    start = [w for w, v in zip(initial, single.weights, strict=True) if v.trainable]
    results = {
        "replicas": strategy.num_replicas_in_sync,
        "student_diff": diff(replicated.student.get_weights(), single.student.get_weights()),
        "update_max": diff([v.numpy() for v in single.trainable_weights], start),
        "teacher_changed_single": diff(single.teacher.get_weights(), teacher_before),
        "teacher_changed_replicated": diff(replicated.teacher.get_weights(), teacher_before),
        "loss_single": [float(x) for x in history.history["loss"]],
        "loss_replicated": [float(x) for x in replicated_history.history["loss"]],
        "supervised_single": float(history.history["supervised_loss"][-1]),
        "supervised_replicated": float(replicated_history.history["supervised_loss"][-1]),
    }
    keras.backend.clear_session()
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
