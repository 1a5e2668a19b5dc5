"""Nothing lost: divergence, bad input and crashes end with a clear message and a usable run."""

import dataclasses
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.checkpoints import CheckpointMismatchError
from simclr_tf.config import Config, DataConfig, OptimizerConfig, TrainConfig
from simclr_tf.training import TrainingDiverged, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(model_dir, *, depth=18, optimizer=None, **train_kwargs):
    config = Config()
    kwargs = dict(model_dir=str(model_dir), train_batch_size=64, eval_batch_size=128, train_steps=3,
                  checkpoint_steps=1, mode="train", linear_eval_epochs=0)
    kwargs.update(train_kwargs)
    return dataclasses.replace(
        config,
        data=DataConfig(dataset="digits", image_size=16),
        model=dataclasses.replace(config.model, resnet_depth=depth, num_proj_layers=2),
        optimizer=optimizer or dataclasses.replace(config.optimizer, warmup_epochs=0),
        train=dataclasses.replace(TrainConfig(), **kwargs),
    )


def test_nan_loss_stops_at_once_and_keeps_the_last_good_checkpoint(tmp_path):
    explode = OptimizerConfig(optimizer="momentum", learning_rate=1e30, learning_rate_scaling="none",
                              warmup_epochs=0)
    with pytest.raises(TrainingDiverged, match=r"step \d+.*learning rate.*temperature") as error:
        train(_config(tmp_path, optimizer=explode, train_steps=20))
    bad_step = int(str(error.value).split("at step ")[1].split(".")[0])
    latest = tf.train.latest_checkpoint(str(tmp_path))
    if latest is not None:  # every checkpoint kept is from before the divergence, and finite
        assert int(latest.rsplit("-", 1)[1]) < bad_step
        reader = tf.train.load_checkpoint(latest)
        for name in reader.get_variable_to_shape_map():
            value = reader.get_tensor(name)
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                assert np.isfinite(value).all(), name


@pytest.mark.slow
def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path):
    train(_config(tmp_path / "r18", train_steps=1))
    with pytest.raises(CheckpointMismatchError, match="resnet_depth"):
        train(_config(tmp_path / "r34", depth=34, train_steps=1, train_mode="finetune",
                      checkpoint=str(tmp_path / "r18")))


def test_model_dir_not_writable(tmp_path):
    # A path below a regular file cannot be created, even by root (chmod would not stop root).
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(PermissionError, match="not writable"):
        train(_config(blocker / "run"))


def test_unknown_dataset_and_missing_folder(tmp_path):
    config = _config(tmp_path)
    with pytest.raises(ValueError, match="digitz"):
        train(dataclasses.replace(config, data=DataConfig(dataset="digitz")))
    with pytest.raises((FileNotFoundError, ValueError), match="image_dir|does not exist|not found"):
        missing = DataConfig(dataset="folder", image_dir=str(tmp_path / "nope"))
        train(dataclasses.replace(config, data=missing))


def _cli(model_dir, *extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    flags = [f"--flagfile={os.path.join(ROOT, 'experiments', 'smoke.flags')}", f"--model_dir={model_dir}",
             "--train_steps=8", "--checkpoint_steps=1", "--linear_eval_epochs=0", "--mode=train",
             "--deterministic", "--train_batch_size=32", *extra]
    return [sys.executable, "-m", "simclr_tf.run", *flags], env


def _final_weights(model_dir):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
    names = [n for n in reader.get_variable_to_shape_map() if n.startswith("model/")]
    return {n: reader.get_tensor(n) for n in names}


@pytest.mark.slow
def test_sigkill_at_any_moment_then_rerun_finishes_with_the_same_weights(tmp_path):
    reference_dir = str(tmp_path / "reference")
    command, env = _cli(reference_dir)
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    reference = _final_weights(reference_dir)

    for delay_after_first_checkpoint in (0.0, 1.3):
        model_dir = str(tmp_path / f"killed_{delay_after_first_checkpoint}")
        command, env = _cli(model_dir)
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        deadline = time.time() + 600
        while not os.path.exists(os.path.join(model_dir, "checkpoint")) and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(delay_after_first_checkpoint)
        process.send_signal(signal.SIGKILL)
        process.wait()
        # A kill during a checkpoint write leaves data files without an index: resume ignores them.
        with open(os.path.join(model_dir, "ckpt-999.data-00000-of-00001.tempstate123"), "wb") as f:
            f.write(b"\0" * 100)
        resumed = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert "Resuming from" in resumed.stdout
        assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-8")
        weights = _final_weights(model_dir)
        assert weights.keys() == reference.keys()
        for name, value in reference.items():
            np.testing.assert_array_equal(weights[name], value, err_msg=name)


def test_intact_checkpoints_of_a_relative_model_dir_report_nothing(tmp_path, monkeypatch):
    # The quickstart's model_dir is relative (runs/digits_quickstart): its newest checkpoint must
    # be found as it is, not as runs/x/runs/x/ckpt-N reported missing.
    from simclr_tf import checkpoints

    monkeypatch.chdir(tmp_path)
    variable = tf.Variable([1.0, 2.0])
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=variable), "runs/x", max_to_keep=3,
                                         checkpoint_name=checkpoints.CHECKPOINT_NAME)
    manager.save(checkpoint_number=2)
    manager.save(checkpoint_number=4)
    reports = []
    found = list(checkpoints.intact_checkpoints("runs/x", report=reports.append))
    assert reports == []
    assert found == [os.path.join("runs/x", f"{checkpoints.CHECKPOINT_NAME}-4"),
                     os.path.join("runs/x", f"{checkpoints.CHECKPOINT_NAME}-2")]


def test_steps_per_execution_that_overshoots_the_run_is_refused(tmp_path):
    """68 steps of 11 per epoch with 8 per execution trained 72: refused before any work."""
    from simclr_tf.training.phases import check_steps_per_execution

    with pytest.raises(ValueError, match=r"--steps_per_execution=8 must divide .* \(11\) .* \(68\).*\[1\]"):
        check_steps_per_execution(8, 11, 68)
    check_steps_per_execution(4, 12, 24)  # divides both: allowed
    check_steps_per_execution(1, 11, 68)
    with pytest.raises(ValueError, match=r"Use one of \[1, 2, 3, 6\]"):
        train(_config(tmp_path / "run", train_steps=6, steps_per_execution=4))
    assert not os.path.exists(tmp_path / "run" / "checkpoint")
