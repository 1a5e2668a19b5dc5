"""Issue 18, cases where users lost work, reproduced with real processes: exports that deleted the
user's folders, two runs on one model_dir, a failed run overwriting config.json, SIGTERM and Ctrl-C,
unreadable newest checkpoints, a full disk."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

# Each test runs the CLI end to end in a subprocess (tens of seconds each): CI's slow stage.
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--dataset=synthetic", "--synthetic_examples=64", "--image_size=16", "--train_batch_size=16",
        "--linear_eval_epochs=0", "--mode=train"]


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)


def _train_command(model_dir, *extra, steps=4):
    return [sys.executable, "-m", "simclr_tf.run", *TINY, f"--train_steps={steps}",
            f"--model_dir={model_dir}", *extra]


def _run(command, timeout=600):
    return subprocess.run(command, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _export(*args):
    return _run([sys.executable, "-m", "simclr_tf.export", *args])


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A finished tiny run with checkpoints at steps 2 and 4 (and its own export of step 4)."""
    model_dir = str(tmp_path_factory.mktemp("runs") / "base")
    done = _run(_train_command(model_dir, "--checkpoint_steps=2"))
    assert done.returncode == 0, done.stderr[-3000:]
    return model_dir


def _user_folders(root):
    for year in ("2017", "2018", "2023"):
        os.makedirs(os.path.join(root, year))
        with open(os.path.join(root, year, "holiday.txt"), "w") as f:
            f.write(year)


def _assert_user_folders_intact(root):
    for year in ("2017", "2018", "2023"):
        with open(os.path.join(root, year, "holiday.txt")) as f:
            assert f.read() == year


# --- 1. exports never delete the user's folders, nor the export just made ------------------------

def test_export_into_a_folder_of_numbered_user_folders_deletes_nothing(base_run, tmp_path):
    userdata = str(tmp_path / "userdata")
    _user_folders(userdata)
    done = _export("--model_dir", base_run, "--export_dir", userdata, "--keep", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Exported step 4" in done.stdout
    _assert_user_folders_intact(userdata)
    assert os.path.isfile(os.path.join(userdata, "4", "saved_model.pb"))
    assert sorted(os.listdir(userdata)) == ["2017", "2018", "2023", "4"]


def test_export_of_an_older_checkpoint_is_not_pruned_by_keep(base_run, tmp_path):
    export_dir = str(tmp_path / "exports")
    assert _export("--model_dir", base_run, "--export_dir", export_dir).returncode == 0
    done = _export("--model_dir", base_run, "--export_dir", export_dir,
                   "--checkpoint", os.path.join(base_run, "ckpt-2"), "--keep", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Exported step 2" in done.stdout
    assert sorted(os.listdir(export_dir)) == ["2", "4"]
    assert os.path.isfile(os.path.join(export_dir, "2", "saved_model.pb"))


def test_export_onto_a_user_folder_of_the_same_number_refuses_and_keeps_it(base_run, tmp_path):
    userdata = str(tmp_path / "userdata")
    os.makedirs(os.path.join(userdata, "4"))
    with open(os.path.join(userdata, "4", "notes.txt"), "w") as f:
        f.write("mine")
    done = _export("--model_dir", base_run, "--export_dir", userdata)
    assert done.returncode == 1
    assert "error:" in done.stderr and "not a simclr_tf export" in done.stderr
    assert "Traceback" not in done.stderr
    assert os.listdir(userdata) == ["4"]
    assert os.listdir(os.path.join(userdata, "4")) == ["notes.txt"]


# --- 2. one run per model_dir ---------------------------------------------------------------------

def _wait_for(predicate, timeout=300):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def _lock_holder(model_dir):
    try:
        with open(os.path.join(model_dir, ".run.lock")) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def test_second_run_on_a_busy_model_dir_stops_at_once_and_names_the_first(tmp_path):
    model_dir = str(tmp_path / "run")
    first = subprocess.Popen(_train_command(model_dir, "--seed=1", steps=1000), env=_env(), cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: str(first.pid) in _lock_holder(model_dir))
        second = _run(_train_command(model_dir, "--seed=2"))
        assert first.poll() is None, "the first run should still be running"
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 1
    assert f"process {first.pid}" in second.stderr and "--model_dir" in second.stderr
    assert "Traceback" not in second.stderr
    with open(os.path.join(model_dir, "config.json")) as f:
        assert json.load(f)["train"]["seed"] == 1  # the second run wrote nothing


def test_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    model_dir = str(tmp_path / "run")
    os.makedirs(model_dir)
    with open(os.path.join(model_dir, ".run.lock"), "w") as f:  # what a SIGKILLed run leaves
        json.dump({"pid": 999999, "host": "here", "started": "yesterday", "command": "run"}, f)
    done = _run(_train_command(model_dir, steps=2))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Taking over" in done.stdout and "999999" in done.stdout
    assert _lock_holder(model_dir) == ""  # released at the end


# --- 3. a run that cannot resume stops before it writes anything ----------------------------------

def _copy_run(base_run, tmp_path):
    import shutil

    model_dir = str(tmp_path / "copy")
    shutil.copytree(base_run, model_dir)
    with open(os.path.join(model_dir, "config.json"), "rb") as f:
        return model_dir, f.read()


def _assert_config_untouched_and_exportable(model_dir, config_bytes, tmp_path):
    with open(os.path.join(model_dir, "config.json"), "rb") as f:
        assert f.read() == config_bytes
    done = _export("--model_dir", model_dir, "--export_dir", str(tmp_path / "export"))
    assert done.returncode == 0, done.stderr[-3000:]


def test_other_architecture_on_a_run_names_the_flags_and_keeps_config_json(base_run, tmp_path):
    model_dir, config_bytes = _copy_run(base_run, tmp_path)
    done = _run(_train_command(model_dir, "--resnet_depth=34", "--width_multiplier=2", steps=6))
    assert done.returncode == 1, done.stderr[-3000:]
    assert "--resnet_depth is 18 there and 34 now" in done.stderr
    assert "--width_multiplier is 1 there and 2 now" in done.stderr
    assert "--model_dir" in done.stderr and "Traceback" not in done.stderr
    assert "incompatible tensor" not in done.stderr
    _assert_config_untouched_and_exportable(model_dir, config_bytes, tmp_path)


def test_other_classes_on_a_run_names_the_data_flags_and_keeps_config_json(base_run, tmp_path):
    from PIL import Image

    model_dir, config_bytes = _copy_run(base_run, tmp_path)
    rng = __import__("numpy").random.default_rng(0)
    for name in ("cats", "dogs"):
        os.makedirs(tmp_path / "images" / name)
        for i in range(12):
            pixels = rng.integers(0, 255, (16, 16, 3)).astype("uint8")
            Image.fromarray(pixels).save(tmp_path / "images" / name / f"{i}.png")
    command = [c for c in _train_command(model_dir, steps=6) if c != "--dataset=synthetic"]
    done = _run(command + ["--dataset=folder", f"--image_dir={tmp_path / 'images'}"])
    assert done.returncode == 1, done.stderr[-3000:]
    assert "10 classes" in done.stderr and "would have 2" in done.stderr
    assert "--dataset is 'synthetic' there and 'folder' now" in done.stderr
    assert "resnet_depth" not in done.stderr and "Traceback" not in done.stderr
    _assert_config_untouched_and_exportable(model_dir, config_bytes, tmp_path)


# --- 4. SIGTERM and Ctrl-C save the current step ----------------------------------------------------

def _latest_step(model_dir):
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(model_dir)
    return int(latest.rsplit("-", 1)[1]) if latest else 0


@pytest.mark.parametrize("signum, exit_code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_while_training_saves_the_step_and_the_rerun_resumes(tmp_path, signum, exit_code):
    model_dir = str(tmp_path / "run")
    log = tmp_path / "stdout.txt"
    # No periodic checkpoint within the test's time: whatever is saved, the signal saved.
    command = _train_command(model_dir, "--checkpoint_steps=900", steps=1000)
    with open(log, "w") as out, open(tmp_path / "stderr.txt", "w") as err:
        process = subprocess.Popen(command, env=_env(), cwd=ROOT, stdout=out, stderr=err)
        try:
            _wait_for(lambda: "step 8/1000" in log.read_text())
            process.send_signal(signum)
            process.wait(timeout=120)
        finally:
            process.kill()
    stderr = (tmp_path / "stderr.txt").read_text()
    name = signal.Signals(signum).name
    assert process.returncode == exit_code, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    step = _latest_step(model_dir)
    assert step >= 8
    assert f"Stopped by {name} at step {step}: saved {os.path.join(model_dir, f'ckpt-{step}')}." in stderr
    assert _lock_holder(model_dir) == ""

    resumed = _run(_train_command(model_dir, "--checkpoint_steps=900", steps=step + 2))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {step}." in resumed.stdout
    assert _latest_step(model_dir) == step + 2


# --- 5. unreadable newest checkpoints, leftovers of interrupted saves, a full disk ----------------

def test_checkpoint_file_naming_a_missing_checkpoint_falls_back_and_leftovers_are_removed(
        base_run, tmp_path):
    model_dir, _ = _copy_run(base_run, tmp_path)
    with open(os.path.join(model_dir, "checkpoint"), "w") as f:
        f.write('model_checkpoint_path: "ckpt-99"\nall_model_checkpoint_paths: "ckpt-99"\n')
    os.makedirs(os.path.join(model_dir, "ckpt-10_temp"))  # what a save cut short leaves
    with open(os.path.join(model_dir, "ckpt-10_temp", "part-00000-of-00001.data-00000-of-00001"), "wb") as f:
        f.write(b"\0" * 2**20)
    os.makedirs(os.path.join(model_dir, "saved_model", ".tmp-10-12345", "variables"))
    done = _run(_train_command(model_dir, steps=6))
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Skipping the checkpoint {os.path.join(model_dir, 'ckpt-99')}: its index file is missing." \
        in done.stdout
    assert f"Resuming from {os.path.join(model_dir, 'ckpt-4')} at step 4." in done.stdout
    assert "Removed 1.0 MB" in done.stdout and "ckpt-10_temp" in done.stdout
    assert _latest_step(model_dir) == 6
    assert not os.path.exists(os.path.join(model_dir, "ckpt-10_temp"))
    assert os.listdir(os.path.join(model_dir, "saved_model")) == ["6"]


def test_truncated_newest_checkpoint_falls_back_to_the_older_one(base_run, tmp_path):
    model_dir, _ = _copy_run(base_run, tmp_path)
    data = os.path.join(model_dir, "ckpt-4.data-00000-of-00001")
    os.truncate(data, os.path.getsize(data) // 2)
    exported = _export("--model_dir", model_dir, "--export_dir", str(tmp_path / "export"))
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "Exported step 2" in exported.stdout and "truncated" in exported.stdout
    done = _run(_train_command(model_dir, steps=6))
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Skipping the checkpoint {os.path.join(model_dir, 'ckpt-4')}" in done.stdout
    assert f"Resuming from {os.path.join(model_dir, 'ckpt-2')} at step 2." in done.stdout
    assert "Traceback" not in done.stderr
    assert _latest_step(model_dir) == 6


@pytest.fixture
def small_disk(tmp_path):
    """A 150 MB file system: room for one checkpoint of the tiny ResNet-18 (88 MB), not two."""
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=150m", "tmpfs", str(mount_point)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        yield str(mount_point)
    finally:
        subprocess.run(["umount", str(mount_point)])


def test_disk_full_while_saving_a_checkpoint_is_one_message_and_leaves_nothing(small_disk):
    model_dir = os.path.join(small_disk, "run")
    command = _train_command(model_dir, "--checkpoint_steps=1", steps=4)
    done = _run(command)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "error: No space left on device while saving the checkpoint of step 2" in done.stderr
    assert f"{os.path.join(model_dir, 'ckpt-1')} is kept" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(n for n in os.listdir(model_dir) if n.startswith("ckpt")) == [
        "ckpt-1.data-00000-of-00001", "ckpt-1.index"]
    again = _run(command)  # the disk is still full: the same message, not a permissions one
    assert again.returncode == 1
    assert "No space left on device" in again.stderr and "permission" not in again.stderr
    assert "Resuming from" in again.stdout


def test_disk_full_while_exporting_leaves_no_partial_export(base_run, small_disk):
    filler = os.path.join(small_disk, "filler")
    with open(filler, "wb") as f:
        f.write(b"\0" * (140 * 2**20))  # 10 MB left, an export needs 89
    export_dir = os.path.join(small_disk, "exports")
    done = _export("--model_dir", base_run, "--export_dir", export_dir)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "error: No space left on the device" in done.stderr and "Traceback" not in done.stderr
    assert os.listdir(export_dir) == []


# --- 6. results belong to the weights they report on; a resume keeps the run's flags -----------

def test_resume_with_another_image_size_or_batch_size_stops_and_names_them(base_run, tmp_path):
    model_dir, config_bytes = _copy_run(base_run, tmp_path)
    command = [c for c in _train_command(model_dir, steps=6) if not c.startswith(("--image_size",
                                                                                    "--train_batch"))]
    done = _run(command + ["--image_size=24", "--train_batch_size=8"])
    assert done.returncode == 1, done.stderr[-3000:]
    assert "--image_size is 16 there and 24 now" in done.stderr
    assert "--train_batch_size is 16 there and 8 now" in done.stderr
    assert "Traceback" not in done.stderr
    with open(os.path.join(model_dir, "config.json"), "rb") as f:
        assert f.read() == config_bytes


def test_new_checkpoint_flag_on_a_run_with_checkpoints_is_not_ignored_silently(base_run, tmp_path):
    model_dir, _ = _copy_run(base_run, tmp_path)
    done = _run(_train_command(model_dir, f"--checkpoint={base_run}", steps=6))
    assert done.returncode == 1, done.stderr[-3000:]
    assert f"--checkpoint={base_run} would be ignored" in done.stderr
    assert "Drop --checkpoint to resume" in done.stderr and "Traceback" not in done.stderr
    assert _latest_step(model_dir) == 4


def _encoder_moving_means(prefix):
    import tensorflow as tf

    reader = tf.train.load_checkpoint(prefix)
    names = sorted(n for n in reader.get_variable_to_shape_map()
                   if n.startswith("model/encoder/") and "moving_mean" in n)
    assert names
    return {n: reader.get_tensor(n) for n in names}


def test_more_steps_on_a_finished_run_evaluates_the_new_encoder(tmp_path):
    import numpy as np

    model_dir = str(tmp_path / "run")
    sgd = ["--mode=train_then_eval", "--linear_eval_epochs=1", "--linear_eval_protocol=sgd"]
    first = _run(_train_command(model_dir, *sgd, steps=2))
    assert first.returncode == 0, first.stderr[-3000:]
    again = _run(_train_command(model_dir, *sgd, steps=4))
    assert again.returncode == 0, again.stderr[-3000:]
    import tensorflow as tf

    # Compared first: the linear head's checkpoint must hold the encoder it reports on.
    pretrained = _encoder_moving_means(os.path.join(model_dir, "ckpt-4"))
    evaluated = _encoder_moving_means(tf.train.latest_checkpoint(os.path.join(model_dir, "linear_eval")))
    assert pretrained.keys() == evaluated.keys()
    for name, value in pretrained.items():
        np.testing.assert_array_equal(evaluated[name], value, err_msg=name)
    assert "The encoder changed since the last linear evaluation (step 2 -> 4)" in again.stdout


# --- 7. an evaluation folder with some of the training classes is labelled by name -------------

def _class_folders(root, names, count=8):
    from PIL import Image

    colours = {"apples": (220, 30, 30), "grass": (30, 200, 30), "sky": (30, 30, 220), "zebra": (128,) * 3}
    for name in names:
        os.makedirs(os.path.join(root, name))
        for i in range(count):
            pixels = __import__("numpy").full((16, 16, 3), colours[name], "uint8")
            pixels[i % 16, :, :] = 255 - pixels[i % 16, :, :]
            Image.fromarray(pixels).save(os.path.join(root, name, f"{i}.png"))


def test_eval_folder_with_fewer_classes_takes_the_training_label_indices(tmp_path):
    import dataclasses

    from simclr_tf.config import Config, DataConfig
    from simclr_tf.training import inputs

    _class_folders(str(tmp_path / "train"), ["apples", "grass", "sky"])
    _class_folders(str(tmp_path / "eval"), ["grass", "sky"])
    config = dataclasses.replace(Config(), data=DataConfig(
        dataset="folder", image_dir=str(tmp_path / "train"), eval_image_dir=str(tmp_path / "eval"),
        image_size=16)).resolved()
    splits = inputs.data_splits(config)
    assert splits.num_classes == 3
    assert sorted(set(splits.eval.labels.tolist())) == [1, 2]  # grass and sky, as in training
    assert splits.eval.class_names == ("apples", "grass", "sky")


def test_eval_mode_on_a_folder_with_fewer_or_unknown_classes(tmp_path):
    _class_folders(str(tmp_path / "train"), ["apples", "grass", "sky"])
    _class_folders(str(tmp_path / "eval"), ["grass", "sky"])
    _class_folders(str(tmp_path / "eval_unknown"), ["grass", "zebra"])
    model_dir = str(tmp_path / "run")
    folder = [c for c in _train_command(model_dir, steps=2) if c != "--dataset=synthetic"]
    folder += ["--dataset=folder", f"--image_dir={tmp_path / 'train'}"]
    trained = _run(folder + [f"--eval_image_dir={tmp_path / 'eval'}"])
    assert trained.returncode == 0, trained.stderr[-3000:]
    evaluated = _run(folder + ["--mode=eval", f"--eval_image_dir={tmp_path / 'eval'}"])
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "(16 held-out images)" in evaluated.stdout
    unknown = _run(folder + ["--mode=eval", f"--eval_image_dir={tmp_path / 'eval_unknown'}"])
    assert unknown.returncode == 1
    assert "['zebra']" in unknown.stderr and "not classes of the training images" in unknown.stderr
    assert "Traceback" not in unknown.stderr
