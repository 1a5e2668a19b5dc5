"""What a person sees at the command line: TensorFlow's quiet start, the library's log lines.

Library code logs (`logging.getLogger(__name__)`) and never prints; the command-line tools
(`simclr_tf.run`, `simclr_tf.cli`) decide what is shown, with these functions. Importing this module
sets TensorFlow's C++ log level, so the tools import it before anything that imports TensorFlow.
This module imports only the standard library (TensorFlow inside `start_tensorflow`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator

# TensorFlow's C++ log level applies only if it is set before TensorFlow is imported, so it is set
# when a tool imports this module. A user who set TF_CPP_MIN_LOG_LEVEL gets what they asked for
# (0: every line).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# What TensorFlow writes while it starts, before its log level applies (abseil writes every line
# to stderr until it is initialised): INFO and WARNING lines (oneDNN, the CUDA stub, CPU features)
# and, on a machine without an NVIDIA driver, cuInit's error.
_CPP_LOG_LINE = re.compile(r"([IWEF])\d{4} [\d:.]+ +\d+ \S+:\d+\] (.*)", re.DOTALL)
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def is_start_up_noise(line: str, log_level: int, nvidia_driver: bool) -> bool:
    """Whether `line` is one of TensorFlow's start-up lines that the log level is meant to hide.

    Args:
        line: str. A line written to stderr while TensorFlow started.
        log_level: int. TF_CPP_MIN_LOG_LEVEL: 1 hides INFO lines, 2 also WARNING lines (and cuInit's
            error where it says nothing), 3 also ERROR lines.
        nvidia_driver: bool. Whether the machine has an NVIDIA driver: there a failed cuInit is news
            (the GPU is unusable), elsewhere it is TensorFlow looking for a GPU that is not there.
    """
    if line.rstrip("\n") == _ABSL_PREAMBLE:
        return log_level >= 1
    log = _CPP_LOG_LINE.match(line)
    if not log:
        return False
    severity, message = log.groups()
    return "IWEF".index(severity) < log_level or (
        severity == "E" and log_level >= 2 and not nvidia_driver
        and message.startswith("failed call to cuInit"))


@contextlib.contextmanager
def held_back_stderr(drop: Callable[[str], bool]) -> Iterator[None]:
    """Catches what is written to file descriptor 2 (C++ code writes there, not to `sys.stderr`)
    inside the block, and then writes every caught line for which `drop` is false to stderr."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to catch (a daemon): nothing to hold back
        yield
        return
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            lines = caught.read().decode("utf-8", "replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not drop(line)))
            sys.stderr.flush()


def start_tensorflow() -> None:
    """Imports TensorFlow and has it find its devices, without its C++ start-up lines.

    The import and the first device query (where CUDA is probed) are when TensorFlow writes lines
    that its log level does not hide; they are held back, and everything else written meanwhile
    (a Python warning, a traceback) is passed on. `TF_CPP_MIN_LOG_LEVEL=0` holds back nothing.
    Call it after the flags are checked: importing TensorFlow takes seconds.
    """
    try:
        log_level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        log_level = 0  # as TensorFlow reads a value that is not a number
    nvidia_driver = os.path.exists("/proc/driver/nvidia")
    with held_back_stderr(lambda line: is_start_up_noise(line, log_level, nvidia_driver)):
        import tensorflow as tf

        tf.config.list_physical_devices()


class _StdoutHandler(logging.StreamHandler):
    """Writes to the `sys.stdout` of the moment (a test or a tool may replace it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def show_library_logs() -> None:
    """Shows the library's log messages (the `simclr_tf` loggers, INFO and up) as plain lines on
    stdout, where the run's progress goes. Library code logs; the command line decides what a
    person sees. Calling it again changes nothing."""
    logger = logging.getLogger("simclr_tf")
    if not any(isinstance(handler, _StdoutHandler) for handler in logger.handlers):
        handler = _StdoutHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # absl's handler on the root logger would print each line again
