"""SIGTERM and Ctrl-C as exceptions, so that a run stopped outside its training loop ends cleanly.

Python turns Ctrl-C (SIGINT) into `KeyboardInterrupt`, but SIGTERM, what schedulers send before
preemption, kills the process at once: no `finally` runs, so an export's temporary folder, a lock
and TFDS's half-prepared data would stay. Inside `signals_as_exceptions()` SIGTERM raises
`Terminated` instead, which unwinds like `KeyboardInterrupt` (both skip `except Exception`), so every
clean-up on the way runs; the command-line tools then print one line and exit with the conventional
code, 128 + the signal's number (143 for SIGTERM, 130 for SIGINT). The training loop has its own
handling on top (`training.callbacks.SignalStop`): there a signal saves the current step first.

This module imports nothing but the standard library, so a tool can install it before TensorFlow.
"""

from __future__ import annotations

import contextlib
import signal
import threading


class Terminated(BaseException):
    """SIGTERM arrived (inside `signals_as_exceptions`). A `BaseException`, like
    `KeyboardInterrupt`, so that `except Exception` blocks let it through.

    Attributes:
        signum: int. The signal's number.
    """

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(error: BaseException) -> int:
    """The conventional exit code of a process ended by the signal behind `error` (128 + number)."""
    signum = getattr(error, "signum", signal.SIGINT)  # KeyboardInterrupt: Ctrl-C
    return 128 + int(signum)


def signal_name(error: BaseException) -> str:
    """`SIGTERM` or `SIGINT`: the signal behind a `Terminated` or a `KeyboardInterrupt`."""
    return signal.Signals(getattr(error, "signum", signal.SIGINT)).name


@contextlib.contextmanager
def signals_as_exceptions():
    """While the block runs, SIGTERM raises `Terminated` and SIGINT `KeyboardInterrupt` (in the main
    thread, where Python runs signal handlers; elsewhere the block runs unchanged).

    Example:
        ```python
        with signals_as_exceptions():
            try:
                export_model(model, export_dir, step=step)   # removes its partial export on any error
            except (Terminated, KeyboardInterrupt) as stopped:
                print(f"Stopped by {signal_name(stopped)}: nothing was written.")
                sys.exit(exit_code(stopped))
        ```
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated(signum)

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, terminate),
                signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


__all__ = ["Terminated", "exit_code", "signal_name", "signals_as_exceptions"]
