"""Callbacks of a training run: stop at the last step or on a time budget, NaN guard, checkpoints,
progress, kNN."""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time

import keras
import numpy as np
import tensorflow as tf

from simclr_tf import checkpoints, interrupts
from simclr_tf.config import Config
from simclr_tf.evaluation import KNNMonitor
from simclr_tf.training import inputs
from simclr_tf.training.progress import Cadence, StepLogger  # noqa: F401 (StepLogger: re-exported)

log = logging.getLogger(__name__)


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


class TimeBudget(keras.callbacks.Callback):
    """Ends training before its last step once it has run `minutes` minutes in this process.

    The clock starts at the beginning of training (`on_train_begin`: after the data and the model
    are built, so a resumed run gets its whole budget again). When the budget runs out after step
    `s < total_steps`, training stops there and `stopped_at` is `s`; the `Checkpointer` (after this
    callback in the list) saves step `s` at the end of training, as for any end.

    Args:
        minutes: float. The budget in minutes; 0 disables it.
        total_steps: int. The run's last step (reaching it is not a budget stop).
        clock: callable returning seconds (monotonic). Defaults to `time.monotonic`; tests pass a
            fake one.
    """

    def __init__(self, minutes: float, total_steps: int, clock=None):
        super().__init__()
        self.minutes = minutes
        self.total_steps = total_steps
        self.clock = clock or time.monotonic
        self.started = 0.0
        self.stopped_at = None
        self.seconds = 0.0  # spent when it stopped

    def on_train_begin(self, logs=None):
        self.started = self.clock()
        self.stopped_at = None

    def on_train_batch_end(self, batch, logs=None):
        if self.minutes <= 0:
            return
        step = _step(self.model)
        spent = self.clock() - self.started
        if step < self.total_steps and spent >= 60 * self.minutes:
            self.stopped_at, self.seconds = step, spent
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


class Interrupted(Exception):
    """Training stopped on SIGTERM or Ctrl-C after saving its step; `exit_code` is 128 + signal."""

    def __init__(self, signum: int, step: int, path):
        name = signal.Signals(signum).name
        super().__init__(
            f"Stopped by {name} at step {step}: saved {path}. Rerun the same command to resume "
            "from there."
        )
        self.exit_code = 128 + signum


class SignalStop:
    """While training (a `with` block): SIGTERM and Ctrl-C are noted, not fatal, so that the
    `Checkpointer` saves the current step and stops training cleanly. A second Ctrl-C stops at once
    (`KeyboardInterrupt`). Outside the main thread, or with `enabled=False`, it does nothing.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self):
        # A signal that came before (while the data was prepared) and whose exception was lost
        # on the way (see `interrupts`) stops the run here, before its first step.
        interrupts.check()
        if self.enabled:
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        return False


class Checkpointer(keras.callbacks.Callback):
    """Saves `ckpt-<step>` every `every_steps` steps, when `every_minutes` minutes passed since the
    last save, and at the end of training (also an early end: a `TimeBudget` stop); and at once
    (then stops training) when `stop` (a `SignalStop`) has received SIGTERM or Ctrl-C. Every save
    goes through the same `CheckpointSaver` (atomic: the `checkpoint` index names a checkpoint only
    once it is complete).

    Args:
        manager: checkpoints.CheckpointSaver. Writes the checkpoints.
        every_steps: int. Step period.
        stop: SignalStop or None.
        every_minutes: float. Time period in minutes, counted from the start of training and from
            each save; 0 disables it. Defaults to `0`.
        clock: callable returning seconds (monotonic). Defaults to `time.monotonic`; tests pass a
            fake one.
    """

    def __init__(self, manager: checkpoints.CheckpointSaver, every_steps: int, stop=None, *,
                 every_minutes: float = 0.0, clock=time.monotonic):
        super().__init__()
        self.manager = manager
        self.every_steps = max(1, every_steps)
        self.stop = stop
        self.every_minutes = every_minutes
        self.clock = clock
        self.last_saved = -1
        self.last_saved_time = 0.0

    def _save(self):
        step = _step(self.model)
        if step != self.last_saved:
            self.manager.save(step)
            self.last_saved = step
        self.last_saved_time = self.clock()

    def _time_is_up(self) -> bool:
        return self.every_minutes > 0 and self.clock() - self.last_saved_time >= 60 * self.every_minutes

    def on_train_begin(self, logs=None):
        self.last_saved = _step(self.model)
        self.last_saved_time = self.clock()

    def on_train_batch_end(self, batch, logs=None):
        step = _step(self.model)
        stopping = self.stop is not None and self.stop.received is not None
        if (stopping or step - self.last_saved >= self.every_steps or step % self.every_steps == 0
                or self._time_is_up()):
            self._save()
        if stopping:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self._save()


class ScalarSummaries(keras.callbacks.Callback):
    """Every logged scalar to TensorBoard (`<log_dir>/train`): every `every_steps` steps, at each
    epoch end (with the kNN monitor's value) and at the last step, plus `images_per_second`.

    Replaces Keras' TensorBoard callback, whose step-wise recording stays off at the end of a run
    that stops mid-epoch or between two `update_freq` steps, so the last values were lost. With a
    `cadence` (a `progress.Cadence`, shared with the `StepLogger`) the steps are the cadence's, timed
    as well as counted, so TensorBoard has the values of the progress lines.
    """

    def __init__(self, log_dir, every_steps, batch_size, cadence: Cadence | None = None):
        super().__init__()
        self.log_dir = log_dir
        self.every_steps = max(1, every_steps)
        self.batch_size = batch_size
        self.cadence = cadence
        self.writer = None
        self.logs, self.written_step, self.written_names = {}, -1, set()
        self.clock = (0.0, 0)

    def on_train_begin(self, logs=None):
        self.writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "train"))
        self.clock = (time.time(), _step(self.model))

    def _write(self, logs, step):
        now, since = time.time(), self.clock
        values = {k: float(np.asarray(v)) for k, v in (logs or {}).items() if np.size(v) == 1}
        if step == self.written_step:  # an epoch's end at a step already written: what is new only
            values = {k: v for k, v in values.items() if k not in self.written_names}
            if not values:
                return
        elif step > since[1] and now > since[0]:
            values["images_per_second"] = (step - since[1]) * self.batch_size / (now - since[0])
            self.clock = (now, step)
        with self.writer.as_default():
            for name, value in values.items():
                tf.summary.scalar(name, value, step=step)
        self.written_names = (self.written_names if step == self.written_step else set()) | set(values)
        self.written_step = step

    def on_train_batch_end(self, batch, logs=None):
        self.logs = dict(logs or {})
        step = _step(self.model)
        if self.cadence.due(step) if self.cadence is not None else step % self.every_steps == 0:
            self._write(self.logs, step)

    def on_epoch_end(self, epoch, logs=None):
        self.logs = dict(logs or self.logs)
        self._write(self.logs, _step(self.model))

    def on_train_end(self, logs=None):
        step = _step(self.model)
        if step != self.written_step and self.logs:
            self._write(self.logs, step)
        self.writer.flush()


def knn_monitor(config: Config, splits: inputs.DataSplits, log_dir: str):
    """The kNN monitor (labelled training images vote for held-out ones), or None without labels."""
    if splits.eval is None or splits.num_classes <= 0:
        return None  # no labels: said once where the splits were made
    return KNNMonitor(
        inputs.eval_dataset(config, splits.labelled_train), inputs.eval_dataset(config, splits.eval),
        num_classes=splits.num_classes, every_epochs=config.train.knn_every_epochs,
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
