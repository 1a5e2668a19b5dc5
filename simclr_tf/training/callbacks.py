"""Callbacks of a training run: stop at the last step, NaN guard, checkpoints, progress, kNN."""

from __future__ import annotations

import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from simclr_tf import checkpoints
from simclr_tf.config import Config
from simclr_tf.data import sources
from simclr_tf.evaluation import KNNMonitor
from simclr_tf.training import inputs


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or Inf; the message says at which step and what to try."""


def _step(model) -> int:
    return int(model.optimizer.iterations.numpy())


class StopAtStep(keras.callbacks.Callback):
    """Ends training when the optimizer's step counter reaches `total_steps`."""

    def __init__(self, total_steps):
        super().__init__()
        self.total_steps = total_steps

    def on_train_batch_end(self, batch, logs=None):
        if _step(self.model) >= self.total_steps:
            self.model.stop_training = True


class NaNGuard(keras.callbacks.Callback):
    """Stops at once when the loss is not finite, before any checkpoint of that step is written."""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        loss = float(np.asarray(loss))
        if math.isfinite(loss):
            return
        config = self.config
        raise TrainingDiverged(
            f"The training loss became {loss} at step {_step(self.model)}. Nothing was saved for this "
            f"step; the last good checkpoint in {config.train.model_dir} is kept. Likely causes: a "
            f"learning rate too high for this batch size (learning_rate="
            f"{config.optimizer.learning_rate}, scaling={config.optimizer.learning_rate_scaling}"
            f"), a temperature too low (temperature={config.loss.temperature}), or mixed "
            f"precision overflow. Lower --learning_rate or raise --temperature and rerun: training "
            f"resumes from the last checkpoint."
        )


class Checkpointer(keras.callbacks.Callback):
    """Saves `ckpt-<step>` every `every_steps` steps and at the end of training."""

    def __init__(self, manager: checkpoints.CheckpointSaver, every_steps: int):
        super().__init__()
        self.manager = manager
        self.every_steps = max(1, every_steps)
        self.last_saved = -1

    def _save(self):
        step = _step(self.model)
        if step != self.last_saved:
            self.manager.save(step)
            self.last_saved = step

    def on_train_begin(self, logs=None):
        self.last_saved = _step(self.model)

    def on_train_batch_end(self, batch, logs=None):
        step = _step(self.model)
        if step - self.last_saved >= self.every_steps or step % self.every_steps == 0:
            self._save()

    def on_train_end(self, logs=None):
        self._save()


class StepLogger(keras.callbacks.Callback):
    """A line every `every_steps` steps, for logs that are not a terminal (no progress bar)."""

    def __init__(self, total_steps, every_steps):
        super().__init__()
        self.total_steps = total_steps
        self.every_steps = max(1, every_steps)
        self.start = None
        self.start_step = 0

    def on_train_begin(self, logs=None):
        self.start = time.time()
        self.start_step = _step(self.model)

    def on_train_batch_end(self, batch, logs=None):
        step = _step(self.model)
        if step % self.every_steps and step < self.total_steps:
            return
        elapsed = time.time() - self.start
        done = step - self.start_step
        eta = elapsed / done * (self.total_steps - step) if done else float("nan")
        shown = ", ".join(f"{k}={float(np.asarray(v)):.4g}" for k, v in (logs or {}).items())
        print(f"step {step}/{self.total_steps} ({elapsed:.0f}s, eta {eta:.0f}s): {shown}", flush=True)


def knn_monitor(config: Config, source: sources.Source, log_dir: str):
    """The kNN monitor on the eval split, or None when there are no labels to use."""
    if source.num_classes <= 0:
        print("kNN monitor off: the training images have no labels.", flush=True)
        return None
    try:
        eval_source = inputs.load_split(config, config.data.eval_split, for_eval=True)
    except sources.SplitNotFoundError as error:
        print(f"kNN monitor off: {error}", flush=True)
        return None
    return KNNMonitor(
        inputs.eval_dataset(config, source), inputs.eval_dataset(config, eval_source),
        num_classes=source.num_classes, every_epochs=config.train.knn_every_epochs,
        log_dir=os.path.join(log_dir, "knn"),
    )


def image_summary(dataset, strategy, log_dir: str, *, write: bool) -> None:
    """A few augmented training images in TensorBoard, to see what the model sees.

    Every worker must call it: taking a batch of a multi-worker distributed dataset all-reduces
    which workers still have data. Only the one with `write` set (the chief) writes the summary of
    its first replica's images.
    """
    (view_1, view_2), _ = next(iter(dataset))
    if not write:
        return
    view_1 = strategy.experimental_local_results(view_1)[0]  # (B / replicas, H, W, 3)
    view_2 = strategy.experimental_local_results(view_2)[0]
    writer = tf.summary.create_file_writer(os.path.join(log_dir, "train"))
    with writer.as_default():
        tf.summary.image("view_1", view_1[:4], step=0, max_outputs=4)
        tf.summary.image("view_2", view_2[:4], step=0, max_outputs=4)
    writer.flush()
