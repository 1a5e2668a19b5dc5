"""Progress lines by time as well as by steps, and TensorBoard scalars at the same steps (a fake clock)."""

import logging

import numpy as np

from simclr_tf.training import callbacks as cbs
from simclr_tf.training.progress import Cadence, StepLogger, duration


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class _Iterations:
    def __init__(self):
        self.value = 0

    def numpy(self):
        return np.int64(self.value)


class _Model:
    """What the callbacks read of a model: `optimizer.iterations`."""

    def __init__(self):
        self.optimizer = type("Optimizer", (), {})()
        self.optimizer.iterations = _Iterations()


def _train(callbacks, model, clock, steps, *, first_step_seconds, step_seconds):
    """Runs `steps` fake steps: the first (with its trace) takes `first_step_seconds`, the others
    `step_seconds` each."""
    for callback in callbacks:
        callback.set_model(model)
        callback.on_train_begin()
    for index in range(steps):
        clock.now += first_step_seconds if index == 0 else step_seconds
        model.optimizer.iterations.value += 1
        for callback in callbacks:
            callback.on_train_batch_end(index, {"loss": 2.5})


def test_first_line_within_30_s_then_every_minute(caplog):
    clock, model = _Clock(), _Model()
    cadence = Cadence(100, 1000, clock=clock)
    logger = StepLogger(1000, 100, batch_size=128, cadence=cadence)
    with caplog.at_level(logging.INFO, logger="simclr_tf.training.progress"):
        _train([logger], model, clock, 16, first_step_seconds=10.0, step_seconds=7.0)
    lines = [r.getMessage() for r in caplog.records]
    # Step k ends at 10 + 7 (k - 1) s: step 6 is the first 30 s after the first step (45 s), step 15 the
    # first a minute after that (108 s).
    assert len(lines) == 3, lines
    assert lines[0] == ("Training: 1000 steps at about 7.00 s a step (measured after the first): about "
                        "1 h 56 min in all, 1 h 55 min from now.")
    assert lines[1] == "step 6/1000 (45 s, eta 1 h 55 min, 18.3 images/s): loss=2.5"
    assert lines[2] == "step 15/1000 (1 min 48 s, eta 1 h 54 min, 18.3 images/s): loss=2.5"


def test_step_period_still_reports_and_the_last_step_too(caplog):
    clock, model = _Clock(), _Model()
    logger = StepLogger(10, 4, batch_size=8, cadence=Cadence(4, 10, clock=clock))
    with caplog.at_level(logging.INFO, logger="simclr_tf.training.progress"):
        _train([logger], model, clock, 10, first_step_seconds=2.0, step_seconds=0.5)
    steps = [r.getMessage().split()[1] for r in caplog.records if r.getMessage().startswith("step ")]
    assert steps == ["4/10", "8/10", "10/10"]
    assert caplog.records[0].getMessage().startswith("Training: 10 steps at about 0.50 s a step")


def test_tensorboard_scalars_at_the_progress_lines_steps(tmp_path, caplog):
    clock, model = _Clock(), _Model()
    cadence = Cadence(100, 1000, clock=clock)
    summaries = cbs.ScalarSummaries(str(tmp_path), 100, 128, cadence=cadence)
    written = []
    real_write = summaries._write
    summaries._write = lambda logs, step: written.append(step) or real_write(logs, step)
    logger = StepLogger(1000, 100, batch_size=128, cadence=cadence)
    with caplog.at_level(logging.INFO, logger="simclr_tf.training.progress"):
        _train([summaries, logger], model, clock, 16, first_step_seconds=10.0, step_seconds=7.0)
    logged = [int(r.getMessage().split()[1].split("/")[0]) for r in caplog.records
              if r.getMessage().startswith("step ")]
    assert written == logged == [6, 15]


def test_duration():
    assert [duration(s) for s in (41.4, 310, 3900, float("nan"))] == ["41 s", "5 min 10 s", "1 h 05 min", "?"]
