"""The command line starts quietly: none of TensorFlow's C++ start-up lines (`I0000 ... cudart_stub`,
`E0000 ... failed call to cuInit`) unless the user asks for them, and the library's log messages
appear as plain lines."""

import logging
import os
import pathlib
import re
import subprocess
import sys

import pytest

from simclr_tf import console

ROOT = pathlib.Path(__file__).resolve().parents[1]
# A C++ log line of TensorFlow / abseil: severity, MMDD, time (hh:mm:epoch seconds), thread, file:line].
CPP_LOG_LINE = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\] ", re.MULTILINE)
# A device that no machine has: the run stops with a clear error right after TensorFlow found the
# devices (the import and the CUDA probe, where the C++ lines come from), on any machine.
NO_SUCH_DEVICE = ["--strategy=mirrored", "--devices=/gpu:99"]


def _run(args, tmp_path, **env):
    environ = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONPATH")}
    environ.update(env)
    return subprocess.run([sys.executable, *args, f"--model_dir={tmp_path / 'run'}", *NO_SUCH_DEVICE],
                          cwd=ROOT, env=environ, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("entry", [["-m", "simclr_tf.run"], ["-m", "simclr_tf.cli", "run"]],
                         ids=["python -m simclr_tf.run", "simclr-tf run"])
def test_no_tensorflow_start_up_lines(entry, tmp_path):
    done = _run(entry, tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    # The run got as far as TensorFlow's devices, and said why it stopped.
    assert "`devices` must name devices of this machine" in done.stderr and "/gpu:99" in done.stderr
    assert not CPP_LOG_LINE.findall(done.stderr + done.stdout), done.stderr[-3000:]
    assert not re.search(r"^[IWEF]\d{4} ", done.stderr, re.MULTILINE), done.stderr[-3000:]
    assert "absl::InitializeLog" not in done.stderr


def test_the_user_can_ask_for_tensorflow_lines(tmp_path):
    """A TF_CPP_MIN_LOG_LEVEL of the user's is left alone, and nothing is held back."""
    done = _run(["-m", "simclr_tf.run"], tmp_path, TF_CPP_MIN_LOG_LEVEL="0")
    assert done.returncode == 1, done.stderr[-3000:]
    assert CPP_LOG_LINE.findall(done.stderr), done.stderr[-3000:]  # e.g. `I0000 ... port.cc:153] oneDNN`


@pytest.mark.parametrize("module", ["simclr_tf.run", "simclr_tf.cli"])
def test_tensorflow_log_level_is_set_before_tensorflow_is_imported(module):
    code = ("import os, sys; os.environ.pop('TF_CPP_MIN_LOG_LEVEL', None); "
            f"import {module}; "
            "assert 'tensorflow' not in sys.modules, 'the CLI imported TensorFlow before the flags'; "
            "print(os.environ['TF_CPP_MIN_LOG_LEVEL'])")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "2"


@pytest.mark.parametrize("line, dropped", [
    ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n", True),
    ("I0000 00:00:1796680684.082017    7355 port.cc:153] oneDNN custom operations are on.\n", True),
    ("W0000 00:00:1796680684.082017    7355 cuda_executor.cc:1] Could not load libcudnn.\n", True),
    ("E0000 00:00:1796680688.182470    7355 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
     "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n", True),
    ("E0000 00:00:1796680688.182470    7355 gpu_device.cc:10] something else went wrong\n", False),
    ("Traceback (most recent call last):\n", False),
    ("I0000 is not a log line of TensorFlow\n", False),
])
def test_start_up_noise_is_recognised(line, dropped):
    assert console.is_start_up_noise(line, log_level=2, nvidia_driver=False) is dropped


CUINIT = ("E0000 00:00:1796680688.182470    7355 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
          "CUDA error\n")
INFO = "I0000 00:00:1796680684.082017    7355 port.cc:153] oneDNN custom operations are on.\n"
ERROR = "E0000 00:00:1796680688.182470    7355 gpu_device.cc:10] something else went wrong\n"


def test_cuinit_error_is_kept_where_there_is_an_nvidia_driver():
    assert console.is_start_up_noise(CUINIT, log_level=2, nvidia_driver=True) is False


@pytest.mark.parametrize("log_level, dropped", [(0, []), (1, [INFO]), (2, [INFO, CUINIT]),
                                                (3, [INFO, CUINIT, ERROR])])
def test_the_log_level_decides_what_is_held_back(log_level, dropped):
    held = [line for line in (INFO, CUINIT, ERROR)
            if console.is_start_up_noise(line, log_level=log_level, nvidia_driver=False)]
    assert held == dropped


def test_held_back_stderr_passes_on_everything_else(capfd):
    with console.held_back_stderr(lambda line: line.startswith("noise")):
        os.write(2, b"noise 1\nkept 1\n")  # as C++ code writes: to the file descriptor
        os.write(2, b"kept 2\nnoise 2\n")
    assert capfd.readouterr().err == "kept 1\nkept 2\n"


def test_held_back_stderr_passes_on_its_lines_when_the_block_raises(capfd):
    with pytest.raises(ImportError, match="no module"):
        with console.held_back_stderr(lambda line: False):
            os.write(2, b"said before the error\n")
            raise ImportError("no module")
    assert capfd.readouterr().err == "said before the error\n"


def test_library_logs_are_plain_lines_on_stdout(capsys):
    logger = logging.getLogger("simclr_tf")
    saved = logger.handlers[:], logger.level, logger.propagate
    try:
        console.show_library_logs()
        console.show_library_logs()  # a second call adds no second handler
        logging.getLogger("simclr_tf.training.phases").info("Resuming from ckpt-5 at step 5.")
        logging.getLogger("simclr_tf.data").debug("not shown")
        logging.getLogger("other").info("not ours")
        assert capsys.readouterr().out == "Resuming from ckpt-5 at step 5.\n"
        assert logger.propagate is False  # absl's handler on the root logger would repeat the line
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
