"""Progress of a training run, by steps and by time: when to say something, and the lines said.

A run at 7 s a step said nothing for its first 100 steps (12 minutes). Now the first line comes about
30 s after the first step (which includes the trace), then at least once a minute and every
`every_steps` steps, in a terminal as in a log file; TensorBoard's scalars are written at the same
moments (`Cadence`, shared by `StepLogger` and `callbacks.ScalarSummaries`). With the first line comes
one more: the run's steps, the measured time of a step and the estimated time of the whole run.
"""

from __future__ import annotations

import logging
import math
import time

import keras
import numpy as np

log = logging.getLogger(__name__)

FIRST_LINE_SECONDS = 30.0  # after the end of the first step
LINE_SECONDS = 60.0  # at least this often after the first line


def duration(seconds: float) -> str:
    """41 s, 5 min 10 s, 1 h 05 min; `?` when unknown (NaN or infinite)."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _step(model) -> int:
    return int(model.optimizer.iterations.numpy())


class Cadence:
    """Decides at which steps progress is reported: every `every_steps` steps, the last step, the
    first step at least `first_seconds` after the end of the first step of this process, and then the
    first step at least `every_seconds` after the previous report.

    The decision for a step is taken once (the first `due(step)` call) and remembered, so several
    callbacks that ask about the same step agree, whatever the clock said in between.

    Args:
        every_steps: int. Step period.
        total_steps: int. The run's last step (always reported).
        first_seconds: float. Seconds from the end of the first step to the first report. Defaults to
            `FIRST_LINE_SECONDS` (30).
        every_seconds: float. Longest time between two reports. Defaults to `LINE_SECONDS` (60).
        clock: callable returning seconds (monotonic). Defaults to `time.monotonic`; tests pass a
            fake one.
    """

    def __init__(self, every_steps: int, total_steps: int, *, first_seconds: float = FIRST_LINE_SECONDS,
                 every_seconds: float = LINE_SECONDS, clock=time.monotonic):
        self.every_steps = max(1, int(every_steps))
        self.total_steps = total_steps
        self.first_seconds = first_seconds
        self.every_seconds = every_seconds
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        """Forgets the reports and the first step (a new `fit`)."""
        self.first_step_end = None  # (time, step) at the end of the first step of this process
        self.last_report = None  # time of the last report
        self._decided = (None, False)

    def due(self, step: int) -> bool:
        """Whether progress is reported at `step` (call once a step has ended)."""
        if self._decided[0] == step:
            return self._decided[1]
        now = self.clock()
        if self.first_step_end is None:
            self.first_step_end = (now, step)
        if self.last_report is None:
            timed = now - self.first_step_end[0] >= self.first_seconds
        else:
            timed = now - self.last_report >= self.every_seconds
        report = timed or step % self.every_steps == 0 or step >= self.total_steps
        if report:
            self.last_report = now
        self._decided = (step, report)
        return report

    def seconds_per_step(self, step: int) -> float:
        """Seconds a step took since the end of the first one (its trace left out); NaN before."""
        if self.first_step_end is None or step <= self.first_step_end[1]:
            return float("nan")
        start, first = self.first_step_end
        return (self.clock() - start) / (step - first)


class StepLogger(keras.callbacks.Callback):
    """A progress line when the `Cadence` says so: step, elapsed time, ETA, images/s and the logged
    values; with the first line, one more with the run's steps and its estimated total time.

    Args:
        total_steps: int. The run's last step.
        every_steps: int. Step period (the `Cadence`'s, when none is given).
        batch_size: int or None. Images per step, for images/s.
        cadence: Cadence or None. Shared with `callbacks.ScalarSummaries` so that the TensorBoard
            scalars are written at the same steps. Defaults to a new one.
        clock: callable returning seconds (monotonic), for the cadence made here and the elapsed
            time. Defaults to `time.monotonic`.
    """

    def __init__(self, total_steps, every_steps, batch_size=None, *, cadence: Cadence | None = None,
                 clock=None):
        super().__init__()
        self.total_steps = total_steps
        self.every_steps = max(1, every_steps)
        self.batch_size = batch_size
        self.clock = clock or (cadence.clock if cadence is not None else time.monotonic)
        self.cadence = cadence or Cadence(every_steps, total_steps, clock=self.clock)
        self.start = None
        self.start_step = 0
        self.estimated = False

    def on_train_begin(self, logs=None):
        self.start = self.clock()
        self.start_step = _step(self.model)
        self.estimated = False
        self.cadence.reset()

    def on_train_batch_end(self, batch, logs=None):
        step = _step(self.model)
        if not self.cadence.due(step):
            return
        elapsed = self.clock() - self.start
        per_step = self.cadence.seconds_per_step(step)
        if not math.isfinite(per_step):  # only the first step so far: it includes the trace
            per_step = elapsed / max(1, step - self.start_step)
        eta = per_step * (self.total_steps - step)
        speed = ""
        if self.batch_size and math.isfinite(per_step) and per_step > 0:
            speed = f", {self.batch_size / per_step:.1f} images/s"
        if not self.estimated and step < self.total_steps:
            self.estimated = True
            log.info(f"Training: {self.total_steps} steps at about {per_step:.2f} s a step (measured after "
                     f"the first): about {duration(per_step * self.total_steps)} in all, "
                     f"{duration(eta)} from now.")
        shown = ", ".join(f"{k}={float(np.asarray(v)):.4g}" for k, v in (logs or {}).items()
                          if np.size(v) == 1)
        log.info(f"step {step}/{self.total_steps} ({duration(elapsed)}, eta {duration(eta)}{speed}): {shown}")
