"""SIGTERM and Ctrl-C as exceptions, so that a run stopped outside its training loop ends cleanly.

Python turns Ctrl-C (SIGINT) into `KeyboardInterrupt`, but SIGTERM, what schedulers send before
preemption, kills the process at once: no `finally` runs, so an export's temporary folder, a lock
and TFDS's half-prepared data would stay. Inside `signals_as_exceptions()` SIGTERM raises
`Terminated` instead, which unwinds like `KeyboardInterrupt` (both skip `except Exception`), so every
clean-up on the way runs; the command-line tools then print one line and exit with the conventional
code, 128 + the signal's number (143 for SIGTERM, 130 for SIGINT). The training loop has its own
handling on top (`training.callbacks.SignalStop`): there a signal saves the current step first.

A Python signal handler runs wherever the main thread is, and an exception raised there can be lost
on the way: inside a finalizer (`__del__`, a weakref callback) Python prints it and goes on, and C++
code that calls back into Python (TensorFlow converting a NumPy array to a tensor, tracing a
`tf.data` function) may clear it, or replace it with an error of its own about the data it was
converting. A SIGTERM during data preparation then either was forgotten (the run trained to its end)
or ended as that error (exit 1 after a dump of the images). So the block also remembers the signal:
`check()` raises its exception again at the next safe point (the library calls it between the phases
of a run and before training starts; the one Python would print from the finalizer is not printed),
and `signal_first()` turns any error that escapes after the signal into the signal's exception.

This module imports nothing but the standard library, so a tool can install it before TensorFlow.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading


class Terminated(BaseException):
    """SIGTERM arrived (inside `signals_as_exceptions`). A `BaseException`, like
    `KeyboardInterrupt`, so that `except Exception` blocks let it through.

    Attributes:
        signum: int. The signal's number.
    """

    def __init__(self, signum: int | str = signal.SIGTERM):
        # Libraries that wrap an error rebuild it as `type(error)(*error.args)`: the name comes back.
        signum = signal.Signals[signum] if isinstance(signum, str) else signal.Signals(signum)
        super().__init__(signum.name)
        self.signum = int(signum)


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

    def stop(signum, frame):
        _received.append(signum)  # first, so that `check` knows even if the exception is lost
        raise _exception(signum)

    def unraisable(hook_args, previous_hook=sys.unraisablehook):
        # The signal's exception, dropped in a finalizer: no traceback on stderr (`check` raises it
        # again); anything else as before.
        if not (_received and isinstance(hook_args.exc_value, (Terminated, KeyboardInterrupt))):
            previous_hook(hook_args)

    outermost = not _active
    if outermost:
        _received.clear()
    _active.append(True)
    previous_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, stop),
                signal.SIGINT: signal.signal(signal.SIGINT, stop)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = previous_hook
        _active.pop()


# The signals received inside the outermost `signals_as_exceptions` block, in order; `_active` has one
# entry per block entered. Lists, so that the handler mutates them without a `global` statement.
_received: list[int] = []
_active: list[bool] = []


def _exception(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def received() -> int | None:
    """The first signal received inside the current `signals_as_exceptions` block, or None."""
    return _received[0] if _active and _received else None


def check() -> None:
    """Raises the exception of a signal received inside `signals_as_exceptions`, again.

    The first one can be lost where the handler ran (a finalizer, C++ code calling back into Python);
    the code that goes on after it calls this at a safe point (between the phases of a run, before
    training starts) so that the run still ends as the signal asked. Outside a block, or without a
    signal, it does nothing.

    Raises:
        Terminated: SIGTERM (or another signal that is not SIGINT) was received.
        KeyboardInterrupt: SIGINT was received.
    """
    if _active and _received:
        raise _exception(_received[0])


@contextlib.contextmanager
def signal_first():
    """Inside the block, an error that escapes after a signal arrived (inside `signals_as_exceptions`)
    becomes that signal's exception, chained to the error: C++ code that called back into Python when
    the handler raised may have replaced the signal's exception with an error of its own.

    Example:
        ```python
        with signal_first():
            dataset = tf.data.Dataset.from_tensor_slices(images)   # a SIGTERM stays a SIGTERM
        ```
    """
    try:
        yield
    except (Terminated, KeyboardInterrupt):
        raise
    except BaseException as error:
        if not (_active and _received):
            raise
        raise _exception(_received[0]) from error


__all__ = ["Terminated", "check", "exit_code", "received", "signal_first", "signal_name",
           "signals_as_exceptions"]
