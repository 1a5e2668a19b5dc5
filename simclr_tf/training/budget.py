"""`--train_minutes`: a run's steps fitted to a wall-clock budget before its schedule is built.

A fresh run times a few steps of a throwaway copy of its model on its own input pipeline (the first
step, which traces, apart), then sets `train_steps` to what fits the budget; the real model and its
warm-up + cosine schedule are built afterwards with that count, from the same seed. config.json
records the count, and a resumed run (a checkpoint in model_dir, the same `train_minutes`) keeps it,
so its schedule does not change mid-run. `--max_train_minutes` is the hard stop; this is the plan.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time

import keras

from simclr_tf import checkpoints
from simclr_tf.config import Config, load_config
from simclr_tf.training import inputs, phases

log = logging.getLogger(__name__)

MEASURED_STEPS = 3  # timed after the first step


def steps_for_minutes(minutes: float, first_step_seconds: float, seconds_per_step: float) -> int:
    """The steps that fit `minutes`: the first one (its trace included) and then steps of
    `seconds_per_step`; at least 1."""
    rest = 60.0 * minutes - first_step_seconds
    return max(1, 1 + math.floor(rest / seconds_per_step)) if seconds_per_step > 0 else 1


def stored_plan(config: Config) -> int | None:
    """The steps a run in model_dir planned for the same `train_minutes`, if it has a checkpoint."""
    model_dir = config.train.model_dir
    if checkpoints.latest_checkpoint(model_dir) is None or not os.path.exists(os.path.join(model_dir,
                                                                                          "config.json")):
        return None
    try:
        old = load_config(model_dir)
    except (ValueError, TypeError, OSError):
        return None
    if old.train.train_minutes == config.train.train_minutes and old.train.train_steps > 0:
        return old.train.train_steps
    return None


def measure_step_seconds(config: Config, strategy, steps: int = MEASURED_STEPS, clock=time.perf_counter):
    """`(first_step_seconds, seconds_per_step)` of the run's model on its training pipeline.

    A throwaway model (learning rate 0), its weights discarded; the global seed is set again
    afterwards, so the real model starts from the weights it would have had without the measurement.
    """
    splits = inputs.data_splits(config)
    source = splits.train
    if config.train.train_mode == "finetune":
        source = inputs.labelled_subset(config, splits.labelled_train)
    batch = min(config.train.train_batch_size, source.num_examples)
    batch -= batch % strategy.num_replicas_in_sync
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, train_batch_size=batch,
                                                                   steps_per_execution=1))
    model, _ = phases.build_for_training(config, strategy, inputs.num_classes_for(config, splits))
    dataset = inputs.train_dataset(config, source, strategy, 0)
    ends = []

    class _Timer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            ends.append(clock())

    started = clock()
    model.fit(dataset, epochs=1, steps_per_epoch=1 + steps, callbacks=[_Timer()], verbose=0, shuffle=False)
    keras.utils.set_random_seed(config.train.seed)
    return ends[0] - started, (ends[-1] - ends[0]) / max(1, len(ends) - 1)


def plan_train_steps(config: Config, strategy, measure=None) -> Config:
    """The config with `train_steps` set by `train_minutes` (unchanged when that is 0).

    Args:
        config: Config. The run, resolved.
        strategy: tf.distribute.Strategy. Where the run trains.
        measure: callable `(config, strategy) -> (first_step_seconds, seconds_per_step)`. Defaults to
            `measure_step_seconds`; tests pass a fake one.
    """
    minutes = config.train.train_minutes
    if not minutes or config.train.mode == "eval":
        return config
    steps = stored_plan(config)
    if steps is not None:
        log.info(f"--train_minutes={minutes:g}: {steps} steps, as planned when this run started "
                 "(config.json), so the schedule stays the same.")
    else:
        log.info(f"--train_minutes={minutes:g}: timing {MEASURED_STEPS} training steps after the first ...")
        first, per_step = (measure or measure_step_seconds)(config, strategy)
        steps = steps_for_minutes(minutes, first, per_step)
        log.info(f"--train_minutes={minutes:g}: {per_step:.2f} s a step (the first, with its trace: "
                 f"{first:.1f} s), so {steps} steps; warm-up and cosine decay are planned for them.")
    train = dataclasses.replace(config.train, train_steps=steps)
    return dataclasses.replace(config, train=train)
