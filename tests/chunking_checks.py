"""The chunked train step against replicas, run in a fresh process by tests/test_chunking.py.

    PYTHONPATH=. python tests/chunking_checks.py <check> [--chunks K ...]

Logical CPU devices can only be made before TensorFlow starts, so the checks run in a fresh
interpreter that splits the CPU into 4 logical devices and prints one JSON object of measurements
on the last line of stdout; the assertions live in tests/test_chunking.py.

    replicas   3 `model.fit` steps of a tiny SimCLRModel (ResNet-10, projection head, supervised
               head on partly labelled images, memory buffer, LARS): one device with `chunk_size` =
               batch / K against K replicas of `MirroredStrategy` without global batch norm, for each
               K of `--chunks`; after the first step and after all three. Weights, optimizer slots,
               memory queue, and batch-norm moving statistics against the mean of the replicas'
               copies (Keras 3 keeps one per replica).
    global_bn  2 replicas with synchronised batch norm, each in 2 chunks (the chunks then run as a
               Python loop: a `tf.while_loop` cannot hold the all-reduce under MirroredStrategy)
               against one device in chunks of both replicas' images, the global batch reordered so
               that each of its chunks holds the same images as the replicas' synchronised chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

DEVICES, BATCH, SIZE, CLASSES = 4, 8, 8, 3
STEPS = int(os.environ.get('CHUNK_STEPS', 3))
MEMORY = int(os.environ.get('CHUNK_MEM', 16))
LEARNING_RATE = float(os.environ.get('CHUNK_LR', 0.1))


def _mirrored(replicas):
    return tf.distribute.MirroredStrategy(devices=[f"/cpu:{i}" for i in range(replicas)],
                                          cross_device_ops=tf.distribute.ReductionToOneDevice())


def _model(chunk_size, global_bn, memory_buffer_size, num_classes=CLASSES):
    from model_factory import simclr_model

    from simclr_tf.optimizers import build_optimizer

    model = simclr_model(resnet_depth=10, cifar_stem=True, global_bn=global_bn, num_proj_layers=2,
                         proj_out_dim=8, num_classes=num_classes, temperature=0.5, weight_decay=1e-4,
                         memory_buffer_size=memory_buffer_size, chunk_size=chunk_size)
    model.build((None, SIZE, SIZE, 3))
    model.compile(optimizer=build_optimizer("lars", LEARNING_RATE, weight_decay=1e-4))
    model.optimizer.build(model.trainable_variables)
    return model


def _batches(seed, labelled=0.5):
    """STEPS batches of two views of BATCH images; a share of the labels -1 (unlabelled)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(size=(STEPS, BATCH, SIZE, SIZE, 3))
    views = [np.clip(base + 0.1 * rng.normal(size=base.shape), 0, 1).astype(np.float32) for _ in range(2)]
    labels = rng.integers(0, CLASSES, size=(STEPS, BATCH)).astype(np.int32)
    labels[rng.uniform(size=labels.shape) >= labelled] = -1
    return views[0], views[1], labels


def _fit(model, view_1, view_2, labels):
    dataset = tf.data.Dataset.from_tensor_slices(((view_1, view_2), labels))  # elements: whole batches
    model.fit(dataset, epochs=1, steps_per_epoch=len(labels), shuffle=False, verbose=0)


def _copies(variable):
    value = variable.value
    if hasattr(value, "values"):  # a mirrored variable: one copy per replica
        return [np.asarray(v.numpy(), np.float64) for v in value.values]
    return [np.asarray(value.numpy(), np.float64)]


def _compare(chunked, replicated):
    """Largest differences, by kind: trainable weights, optimizer slots, moving statistics (against
    the replicas' mean), other state (queue, momentum weights); and the replicas' spread."""
    diffs = {"weights": 0.0, "optimizer": 0.0, "moving_stats": 0.0, "other_state": 0.0,
             "moving_stats_first_replica": 0.0}
    spread_moving, spread_other, counts = 0.0, 0.0, {"moving_stats": 0}
    trainable = {id(v) for v in chunked.trainable_weights}
    for mine, theirs in zip(chunked.weights, replicated.weights, strict=True):
        assert mine.path == theirs.path, (mine.path, theirs.path)
        got, copies = _copies(mine)[0], _copies(theirs)
        if mine.path.endswith(("moving_mean", "moving_variance")):
            counts["moving_stats"] += 1
            mean = np.mean(copies, axis=0)
            diffs["moving_stats"] = max(diffs["moving_stats"], float(np.max(np.abs(got - mean))))
            diffs["moving_stats_first_replica"] = max(diffs["moving_stats_first_replica"],
                                                      float(np.max(np.abs(got - copies[0]))))
            spread_moving = max(spread_moving, *(float(np.max(np.abs(c - copies[0]))) for c in copies))
            continue
        kind = "weights" if id(mine) in trainable else "other_state"
        diff = float(np.max(np.abs(got - copies[0])))
        if diff > diffs[kind]:
            diffs[kind], diffs[f"{kind}_path"] = diff, mine.path
        spread_other = max(spread_other, *(float(np.max(np.abs(c - copies[0]))) for c in copies))
    for mine, theirs in zip(chunked.optimizer.variables, replicated.optimizer.variables, strict=True):
        diff = float(np.max(np.abs(_copies(mine)[0] - _copies(theirs)[0])))
        diffs["optimizer"] = max(diffs["optimizer"], diff)
    return {"diffs": diffs, "moving_spread": spread_moving, "other_spread": spread_other, **counts}


def _update_max(model, initial):
    """The largest change of a trainable weight over the steps."""
    start = {v.path: w for v, w in zip(model.weights, initial, strict=True)}
    return max(float(np.max(np.abs(v.numpy() - start[v.path]))) for v in model.trainable_weights)


def check_replicas(args):
    import keras

    results = {}
    view_1, view_2, labels = _batches(args.seed)
    for chunks in args.chunks:
        keras.utils.set_random_seed(args.seed)
        chunked = _model(BATCH // chunks, global_bn=False, memory_buffer_size=MEMORY)
        initial = chunked.get_weights()
        slots = [v.numpy() for v in chunked.optimizer.variables]
        with _mirrored(chunks).scope():
            replicated = _model(0, global_bn=False, memory_buffer_size=MEMORY)
        replicated.set_weights(initial)
        for variable, value in zip(replicated.optimizer.variables, slots, strict=True):
            variable.assign(value)
        first, rest = slice(0, 1), slice(1, STEPS)
        for model in (chunked, replicated):  # the first step alone: round-off not yet amplified
            _fit(model, view_1[first], view_2[first], labels[first])
        first_step = _compare(chunked, replicated)["diffs"]
        for model in (chunked, replicated):
            _fit(model, view_1[rest], view_2[rest], labels[rest])
        result = _compare(chunked, replicated)
        result["first_step_diffs"] = first_step
        result["update_max"] = _update_max(chunked, initial)
        result["queue_filled"] = int(chunked.memory.filled.numpy()) if chunked.memory else 0
        results[str(chunks)] = result
    return results


def check_global_bn(args):
    """2 replicas x 2 chunks with synchronised batch norm against one device in 2 chunks of 2 x M."""
    import keras

    replicas, chunks = 2, 2
    per_replica = BATCH // replicas
    m = per_replica // chunks
    view_1, view_2, labels = _batches(args.seed, labelled=1.0)  # per-chunk means then agree
    # Replica r holds global images [r * per_replica, (r + 1) * per_replica); its chunk k the M images
    # from r * per_replica + k * M. One device's chunk k of 2 M images: replica 0's chunk k, then 1's.
    order = [r * per_replica + k * m + i for k in range(chunks) for r in range(replicas) for i in range(m)]
    keras.utils.set_random_seed(args.seed)
    single = _model(replicas * m, global_bn=True, memory_buffer_size=0)
    initial = single.get_weights()
    _fit(single, view_1[:, order], view_2[:, order], labels[:, order])
    with _mirrored(replicas).scope():
        replicated = _model(m, global_bn=True, memory_buffer_size=0)
    replicated.set_weights(initial)
    _fit(replicated, view_1, view_2, labels)
    result = _compare(single, replicated)
    result["update_max"] = _update_max(single, initial)
    return {"2": result}


CHECKS = {"replicas": check_replicas, "global_bn": check_global_bn}


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("check", choices=sorted(CHECKS))
    parser.add_argument("--chunks", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * DEVICES)
    print(json.dumps({args.check: CHECKS[args.check](args)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
