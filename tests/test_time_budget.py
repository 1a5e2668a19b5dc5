"""The time budget of a run (`--max_train_minutes`, issue 20's "a time budget per cell"): training stops
at the step where the budget runs out, that step is saved, the run goes on to evaluation and export,
result.json says so, and a rerun resumes there. A fake clock moves one minute per step: nothing
sleeps."""

import dataclasses
import functools
import json
import os

import pytest

from simclr_tf.config import Config, ConfigError, DataConfig, ModelConfig, TrainConfig


class _MinutePerCall:
    """A fake monotonic clock that moves one minute each time it is read.

    `TimeBudget` reads it once when training begins and once after each step, so after step `s`
    it shows `s` minutes of training.
    """

    def __init__(self):
        self.now = 5000.0

    def __call__(self):
        value, self.now = self.now, self.now + 60.0
        return value


def _saved_steps(model_dir):
    import tensorflow as tf

    state = tf.train.get_checkpoint_state(str(model_dir))
    return [int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths] if state else []


def _steps_with_callbacks(tmp_path, minutes, total_steps):
    """Drives TimeBudget and Checkpointer as `fit` orders them, step by step, until a stop."""
    import keras

    from simclr_tf import checkpoints
    from simclr_tf.training.callbacks import Checkpointer, TimeBudget

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    saver = checkpoints.CheckpointSaver(model, model.optimizer, str(tmp_path), max_to_keep=10)
    budget = TimeBudget(minutes, total_steps, clock=_MinutePerCall())
    callbacks = [budget, Checkpointer(saver, every_steps=100, every_minutes=0)]
    for callback in callbacks:
        callback.set_model(model)
        callback.on_train_begin()
    step = 0
    while step < total_steps and not model.stop_training:
        step += 1
        model.optimizer.iterations.assign(step)
        for callback in callbacks:
            callback.on_train_batch_end(step - 1)
    for callback in callbacks:
        callback.on_train_end()
    return budget, step


@pytest.mark.parametrize("minutes, total_steps, stopped_at, last_step", [
    (3, 10, 3, 3),  # one minute a step: the budget runs out after step 3
    (2.5, 10, 3, 3),  # 2 min after step 2 is under 2.5: step 3 is the first at or over it
    (10, 10, None, 10),  # runs out at the last step: that is the run's end, not a budget stop
    (0, 10, None, 10),  # 0: no budget
])
def test_time_budget_stops_at_the_step_where_it_runs_out_and_that_step_is_saved(
        tmp_path, minutes, total_steps, stopped_at, last_step):
    budget, step = _steps_with_callbacks(tmp_path, minutes, total_steps)
    assert (budget.stopped_at, step) == (stopped_at, last_step)
    assert _saved_steps(tmp_path) == [last_step]  # the Checkpointer's save at the end of training
    if stopped_at is not None:
        assert budget.seconds == 60 * stopped_at


def test_max_train_minutes_is_validated_and_has_a_flag():
    from simclr_tf import run

    assert TrainConfig().max_train_minutes == 0.0
    assert run.flag_default("train", "max_train_minutes") == 0.0
    TrainConfig(max_train_minutes=2.5).validate()
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ConfigError, match=r"`max_train_minutes` must be a non-negative number.*"
                                              rf"Received: {bad!r}"):
            TrainConfig(max_train_minutes=bad).validate()


def _tiny_config(model_dir, minutes):
    return Config(
        data=DataConfig(dataset="synthetic", synthetic_examples=64, image_size=16),
        model=ModelConfig(resnet_depth=10, num_proj_layers=2),
        train=TrainConfig(model_dir=str(model_dir), train_steps=8, train_batch_size=16, eval_batch_size=64,
                          checkpoint_steps=100, checkpoint_minutes=0, linear_eval_epochs=0,
                          max_train_minutes=minutes),
    )


def _result(model_dir):
    with open(os.path.join(model_dir, "result.json")) as f:
        return json.load(f)


def _checkpoint_top1(config, checkpoint):
    """(top-1, images) of the online head of `checkpoint`, restored into a fresh model, over the
    run's evaluation images: the run's evaluation, computed another way."""
    import numpy as np

    from simclr_tf import convert
    from simclr_tf.models.build import build_model
    from simclr_tf.training import inputs

    splits = inputs.data_splits(config)
    model = build_model(config.resolved(), inputs.num_classes_for(config, splits))
    convert.restore_pretrained(model, checkpoint, train_mode="eval")
    correct = total = 0
    for images, labels in inputs.eval_dataset(config, splits.eval):
        predicted = np.argmax(model(images, training=False)["logits_sup"].numpy(), axis=1)
        correct, total = correct + int(np.sum(predicted == labels.numpy())), total + len(predicted)
    return correct / total, total


@pytest.mark.slow
def test_a_run_stopped_by_its_budget_is_saved_evaluated_and_resumed(tmp_path, monkeypatch, caplog):
    """8 steps, a budget of 3 minutes at one minute a step: stops at 3, then 6, then runs to 8."""
    from simclr_tf.training import callbacks, train

    monkeypatch.setattr(callbacks, "TimeBudget", functools.partial(callbacks.TimeBudget,
                                                                   clock=_MinutePerCall()))
    model_dir = str(tmp_path / "run")
    config = _tiny_config(model_dir, minutes=3)
    caplog.set_level("INFO", logger="simclr_tf")
    first = train(config)
    printed = caplog.text
    assert "Time budget reached: stopped at step 3 of 8 after 3.0 min of training" in printed
    assert "--max_train_minutes=3" in printed and "Rerun the same command" in printed
    assert _saved_steps(model_dir) == [3]
    result = _result(model_dir)
    assert (result["stopped_by"], result["train_steps_done"], result["train_steps"]) == ("time_budget", 3, 8)
    assert result["global_step"] == 3
    top1, examples = _checkpoint_top1(config, os.path.join(model_dir, "ckpt-3"))  # evaluated at step 3
    assert result["eval_examples"] == examples and result["eval_top1"] == pytest.approx(top1)
    assert os.path.exists(os.path.join(model_dir, "saved_model", "3", "saved_model.pb"))  # exported
    assert first["train_steps_done"] == 3

    # The same command again: resumes at 3 and trains again up to the budget.
    caplog.clear()
    train(config)
    printed = caplog.text
    assert "at step 3." in printed and "stopped at step 6 of 8" in printed
    assert _saved_steps(model_dir)[-1] == 6
    assert (_result(model_dir)["stopped_by"], _result(model_dir)["train_steps_done"]) == ("time_budget", 6)

    # Once more, with no budget: to the end.
    caplog.clear()
    train(dataclasses.replace(config, train=dataclasses.replace(config.train, max_train_minutes=0)))
    assert "Resuming from" in caplog.text and "Time budget reached" not in caplog.text
    result = _result(model_dir)
    assert (result["stopped_by"], result["train_steps_done"], result["global_step"]) == (None, 8, 8)
    assert _saved_steps(model_dir)[-1] == 8
