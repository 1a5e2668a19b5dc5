"""Issue 18, the rest of its list: fine-tuning from random weights only on purpose, image folders with
odd file names and unreadable class folders, a checkpoint every N minutes, and SIGTERM / Ctrl-C
outside the training loop. Real processes where the case is about processes, as in
tests/test_no_lost_work.py."""

import os
import subprocess
import sys

import pytest

from simclr_tf.config import Config, ConfigError, DataConfig, TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--dataset=synthetic", "--synthetic_examples=64", "--image_size=16", "--train_batch_size=16",
        "--linear_eval_epochs=0", "--mode=train"]


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)


def _train_command(model_dir, *extra, steps=2):
    return [sys.executable, "-m", "simclr_tf.run", *TINY, f"--train_steps={steps}",
            f"--model_dir={model_dir}", *extra]


def _run(command, timeout=600):
    return subprocess.run(command, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


# --- fine-tuning needs weights to start from, or says `none` ---------------------------------------

def _finetune_config(model_dir, **train):
    return Config(
        data=DataConfig(dataset="synthetic", synthetic_examples=64, image_size=16),
        train=TrainConfig(model_dir=str(model_dir), train_mode="finetune", train_steps=2,
                          train_batch_size=16, mode="train", linear_eval_epochs=0, **train),
    )


def test_finetune_without_a_checkpoint_stops_before_any_work(tmp_path):
    from simclr_tf.training import train

    with pytest.raises(ConfigError, match=r"`train_mode=finetune` needs weights to start from.*"
                                          r"--checkpoint=none to train from random weights on purpose"):
        train(_finetune_config(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "config.json")
    assert not [n for n in os.listdir(tmp_path / "run") if n.startswith("ckpt")]


@pytest.mark.slow
def test_finetune_from_scratch_on_purpose_trains(tmp_path):
    model_dir = tmp_path / "run"
    done = _run(_train_command(model_dir, "--train_mode=finetune", "--checkpoint=none"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Fine-tuning from random weights (--checkpoint=none)." in done.stdout
    # The CLI says the same as the library when the opt-in is missing, with its exit code.
    other = _run(_train_command(tmp_path / "other", "--train_mode=finetune"))
    assert other.returncode == 1
    assert "error: `train_mode=finetune` needs weights to start from" in other.stderr
    assert "Traceback" not in other.stderr


def test_the_fine_tuning_start_says_what_it_starts_from():
    """Fine-tuning from a pretraining once printed "from random weights" as well (2026-12-07)."""
    from simclr_tf.training.phases import finetune_start_note

    assert finetune_start_note(None) == "Fine-tuning from random weights (--checkpoint=none)."
    note = finetune_start_note(TrainConfig(checkpoint="runs/a").init_checkpoint)
    assert "random weights" not in note and "head starts from its initializer" in note


def test_init_checkpoint_reads_none_as_no_checkpoint():
    assert TrainConfig(checkpoint="none").init_checkpoint is None
    assert TrainConfig(checkpoint="").init_checkpoint is None
    assert TrainConfig(checkpoint="runs/a").init_checkpoint == "runs/a"
    assert TrainConfig().init_checkpoint is None


# --- a checkpoint every N minutes as well as every N steps ----------------------------------------

class _Clock:
    """A fake monotonic clock: the test moves it, nothing sleeps."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _saved_steps(model_dir):
    import tensorflow as tf

    state = tf.train.get_checkpoint_state(str(model_dir))
    return [int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths] if state else []


@pytest.mark.parametrize("every_minutes, expected", [
    (30, [3, 6, 8, 11]),  # 10 minutes a step: every third step, the step period at 8 restarts it
    (0, [8]),  # off: the step period alone
])
def test_checkpoint_every_n_minutes_with_a_fake_clock(tmp_path, every_minutes, expected):
    import keras

    from simclr_tf import checkpoints
    from simclr_tf.training.callbacks import Checkpointer

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    saver = checkpoints.CheckpointSaver(model, model.optimizer, str(tmp_path), max_to_keep=10)
    clock = _Clock()
    callback = Checkpointer(saver, every_steps=8, every_minutes=every_minutes, clock=clock)
    callback.set_model(model)
    callback.on_train_begin()
    for step in range(1, 12):
        clock.now += 600  # ten minutes per step
        model.optimizer.iterations.assign(step)
        callback.on_train_batch_end(step - 1)
    assert _saved_steps(tmp_path) == expected
    assert not [n for n in os.listdir(tmp_path) if "temp" in n]  # each save complete


def test_checkpoint_minutes_is_validated_and_has_a_flag():
    from simclr_tf import run

    assert TrainConfig().checkpoint_minutes == 30.0
    assert run.flag_default("train", "checkpoint_minutes") == 30.0
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ConfigError, match=r"`checkpoint_minutes` must be a non-negative number.*"
                                              rf"Received: {bad!r}"):
            TrainConfig(checkpoint_minutes=bad).validate()


# --- image folders: file names that are not UTF-8, folders that cannot be read --------------------

def _png(path, value):
    import numpy as np
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path, format="PNG")


def _latin1_folder(root):
    """Two classes; names in Latin-1 bytes (what old cameras and Windows zips write), not UTF-8."""
    root = os.fsencode(str(root))
    _png(os.path.join(root, b"caf\xe9", b"cr\xe8me.png"), 10)
    _png(os.path.join(root, b"caf\xe9", b"plain.png"), 20)
    _png(os.path.join(root, b"tea", b"\xff\xfe.png"), 30)
    _png(os.path.join(root, b"tea", b"ok.png"), 40)
    with open(os.path.join(root, b"tea", b"bro\xefken.png"), "wb") as f:
        f.write(b"not a png")


def test_folder_with_file_names_that_are_not_utf8_is_read(tmp_path, caplog):
    import numpy as np

    from simclr_tf.data.folder import load_image_folder

    _latin1_folder(tmp_path / "images")
    with caplog.at_level("WARNING"):
        source = load_image_folder(str(tmp_path / "images"))
    assert source.num_examples == 4 and source.num_classes == 2
    assert source.class_names == (os.fsdecode(b"caf\xe9"), "tea")
    got = sorted((int(label), int(np.asarray(image)[0, 0, 0])) for image, label in source.dataset)
    assert got == [(0, 10), (0, 20), (1, 30), (1, 40)]  # each image with its own pixels and class
    assert source.stats.skipped_files == 1
    assert "bro\\xefken.png" in caplog.text  # the broken file, named in a form that prints


@pytest.mark.slow
def test_folder_run_with_names_that_are_not_utf8_trains(tmp_path):
    _latin1_folder(tmp_path / "images")
    command = [c for c in _train_command(tmp_path / "run") if c != "--dataset=synthetic"]
    done = _run(command + ["--dataset=folder", f"--image_dir={tmp_path / 'images'}",
                           "--train_batch_size=4", "--eval_fraction=0.5"])
    assert done.returncode == 0, done.stderr[-3000:]
    # The library's warning (a broken file, its name escaped) is one of the run's plain log lines.
    assert "Traceback" not in done.stderr and "bro\\xefken.png" in done.stdout + done.stderr


def _unreadable_class_folder(tmp_path):
    for name in ("apples", "grass", "sky"):
        for i in range(2):
            _png(str(tmp_path / "images" / name / f"{i}.png"), 50 * i)
    return str(tmp_path / "images")


def _check_unreadable_class_folder_is_an_error(image_dir):
    from simclr_tf.data.folder import load_image_folder

    with pytest.raises(PermissionError, match=r"Cannot read the class folder\(s\) 'grass' \(Permission "
                                              r"denied\).*labels would shift.*chmod -R u\+rX"):
        load_image_folder(image_dir)


@pytest.mark.skipif(os.geteuid() == 0, reason="chmod does not deny root")
def test_unreadable_class_folder_is_an_error_naming_it(tmp_path):
    image_dir = _unreadable_class_folder(tmp_path)
    os.chmod(os.path.join(image_dir, "grass"), 0)
    try:
        _check_unreadable_class_folder_is_an_error(image_dir)
    finally:
        os.chmod(os.path.join(image_dir, "grass"), 0o755)


def test_unreadable_folders_as_root_see_them(tmp_path, monkeypatch, caplog):
    """The same case where chmod does not deny (root): listing the folder fails as it would."""
    from simclr_tf.data.folder import load_image_folder

    image_dir = _unreadable_class_folder(tmp_path)
    _png(str(tmp_path / "images" / "sky" / "old" / "0.png"), 70)
    denied = {os.path.join(image_dir, "grass"), os.path.join(image_dir, "sky", "old")}
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) in denied:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    _check_unreadable_class_folder_is_an_error(image_dir)
    denied.remove(os.path.join(image_dir, "grass"))  # a sub-folder of a class: left out, said
    with caplog.at_level("WARNING"):
        source = load_image_folder(image_dir)
    assert source.num_examples == 6 and source.stats.unreadable_folders == 1
    assert f"Left out 1 folder(s) of {image_dir}" in caplog.text
    assert f"{os.path.join(image_dir, 'sky', 'old')} (Permission denied)" in caplog.text


# --- SIGTERM and Ctrl-C outside the training loop -------------------------------------------------

def _stop_when(command, ready, signum, tmp_path, timeout=300):
    """Starts `command`, sends `signum` once `ready(stdout so far)` holds; returns (rc, stdout, stderr).

    The output is read line by line from a pipe, so a signal meant for the moment a line says
    goes right after that line; `ready` is also asked every 20 ms, for conditions on files.
    """
    import threading
    import time

    err_path = tmp_path / "stderr.txt"
    lines, arrived = [], threading.Condition()
    with open(err_path, "w") as err:
        process = subprocess.Popen(command, env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=err,
                                   text=True)

        def read():
            for line in process.stdout:
                with arrived:
                    lines.append(line)
                    arrived.notify_all()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            deadline = time.time() + timeout
            with arrived:
                while not ready("".join(lines)):
                    assert process.poll() is None, f"ended before the signal: {err_path.read_text()[-3000:]}"
                    assert time.time() < deadline, "timed out"
                    arrived.wait(0.02)
            process.send_signal(signum)
            process.wait(timeout=120)
            reader.join(timeout=30)
        finally:
            process.kill()
    return process.returncode, "".join(lines), err_path.read_text()


def _assert_one_clean_line(returncode, stderr, signum):
    import signal

    name = signal.Signals(signum).name
    assert returncode == 128 + signum, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("Stopped by")]
    assert len(lines) == 1 and lines[0].startswith(f"Stopped by {name}")


@pytest.mark.slow
def test_sigterm_during_the_linear_evaluation_ends_cleanly_and_the_rerun_finishes(tmp_path):
    import signal

    model_dir = tmp_path / "run"
    command = [c for c in _train_command(model_dir) if c not in ("--mode=train", "--linear_eval_epochs=0",
                                                                 "--dataset=synthetic")]
    command += ["--dataset=digits", "--mode=train_then_eval", "--linear_eval_protocol=logistic"]
    returncode, _, stderr = _stop_when(command, lambda out: "Linear evaluation (" in out, signal.SIGTERM,
                                       tmp_path)
    _assert_one_clean_line(returncode, stderr, signal.SIGTERM)
    assert f"the checkpoints in {model_dir} are kept" in stderr
    assert not os.path.exists(model_dir / "result.json")  # written only by a run that finished
    assert not os.path.exists(model_dir / "saved_model")
    with open(model_dir / ".run.lock") as f:
        assert f.read() == ""  # released
    again = _run(command)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Training already finished: step 2 of 2." in again.stdout
    assert os.path.exists(model_dir / "result.json")


@pytest.mark.slow
def test_sigint_during_the_export_removes_the_partial_export(tmp_path):
    import signal

    model_dir = tmp_path / "run"
    export_dir = model_dir / "saved_model"

    def exporting(_):
        return export_dir.is_dir() and any(n.startswith(".tmp-") for n in os.listdir(export_dir))

    returncode, _, stderr = _stop_when(_train_command(model_dir), exporting, signal.SIGINT, tmp_path)
    _assert_one_clean_line(returncode, stderr, signal.SIGINT)
    assert os.listdir(export_dir) == []  # the partial export removed, nothing else there
    assert not os.path.exists(model_dir / "result.json")
    assert sorted(n for n in os.listdir(model_dir) if n.startswith("ckpt-2")) == [
        "ckpt-2.data-00000-of-00001", "ckpt-2.index"]


def test_sigterm_while_the_data_is_prepared_ends_cleanly(tmp_path):
    """The signal goes when the run says it prepares the data (8,000 synthetic images: a second or
    more of NumPy). Once a signal lost in a TensorFlow finalizer trained all 50 steps (exit 0), and
    one whose exception TensorFlow replaced by its own ended with exit 1 after a dump of the images;
    now, wherever it lands before training, the run ends with 143, one line, before its first step."""
    import signal

    model_dir = tmp_path / "run"
    command = [c for c in _train_command(model_dir, steps=50) if not c.startswith("--synthetic_examples")]
    command.append("--synthetic_examples=8000")
    returncode, stdout, stderr = _stop_when(command, lambda out: "Preparing the data: synthetic." in out,
                                            signal.SIGTERM, tmp_path)
    _assert_one_clean_line(returncode, stderr, signal.SIGTERM)
    assert "step " not in stdout  # stopped before training began
    assert not [n for n in os.listdir(model_dir) if n.startswith("ckpt")]
    assert not os.path.exists(model_dir / "result.json")
    with open(model_dir / ".run.lock") as f:
        assert f.read() == ""  # released


# --- a signal whose exception is lost or replaced on the way still ends the run -------------------

def test_a_signal_lost_in_a_finalizer_is_raised_again_at_the_next_check(monkeypatch):
    """Python runs a signal handler wherever the main thread is; inside a finalizer its exception is
    printed and dropped (as in TensorFlow's `__del__`s): `check()` raises it again, and nothing is
    printed meanwhile (the run's one line stays one)."""
    import signal
    import sys

    from simclr_tf.interrupts import Terminated, check, received, signals_as_exceptions

    class SignalledWhileCollected:
        def __del__(self):
            signal.raise_signal(signal.SIGTERM)  # the handler runs here, inside the finalizer

    class FailsWhileCollected:
        def __del__(self):
            raise ValueError("another error in a finalizer")

    unraisable = []

    def record(hook_args):
        unraisable.append(hook_args.exc_value)

    monkeypatch.setattr(sys, "unraisablehook", record)
    with signals_as_exceptions():
        check()  # nothing received: nothing raised
        SignalledWhileCollected()  # collected at once; its Terminated is "ignored" by Python
        assert received() == signal.SIGTERM
        with pytest.raises(Terminated) as again:
            check()
        assert again.value.signum == signal.SIGTERM
        assert unraisable == []  # the lost one was not printed
        FailsWhileCollected()
        assert [type(error) for error in unraisable] == [ValueError]  # other ones are, as before
    assert sys.unraisablehook is record and received() is None
    check()  # outside a block: nothing


def test_an_error_that_replaced_a_signal_becomes_the_signal_again():
    """C++ code that called back into Python when the handler ran may raise an error of its own (a
    ValueError about the array it was converting); `signal_first` gives the signal back."""
    import signal

    from simclr_tf.interrupts import signal_first, signals_as_exceptions

    def convert(array):
        try:
            signal.raise_signal(signal.SIGINT)
        except BaseException:
            raise ValueError(f"Failed to convert a NumPy array to a Tensor: {array}") from None

    with signals_as_exceptions():
        with pytest.raises(KeyboardInterrupt) as stopped, signal_first():
            convert([[12, 34]])
    assert isinstance(stopped.value.__cause__, ValueError)
    with signals_as_exceptions(), pytest.raises(ValueError, match="no signal"), signal_first():
        raise ValueError("no signal: the error stays")


def test_terminated_survives_being_rebuilt_from_its_args():
    """Libraries that wrap an error rebuild it as `type(error)(*error.args)`."""
    import signal

    from simclr_tf.interrupts import Terminated, exit_code, signal_name

    rebuilt = Terminated(*Terminated(signal.SIGTERM).args)
    assert (rebuilt.signum, exit_code(rebuilt), signal_name(rebuilt), str(rebuilt)) == (
        signal.SIGTERM, 143, "SIGTERM", "SIGTERM")
