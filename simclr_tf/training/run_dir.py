"""One run's directory: checked writable before any work, results written atomically."""

from __future__ import annotations

import json
import os

RESULT_FILE = "result.json"
CONFIG_FILE = "config.json"


def prepare_model_dir(model_dir: str) -> None:
    """Creates model_dir and checks it is writable, before any work.

    Raises:
        PermissionError: naming the directory and what to do.
    """
    try:
        os.makedirs(model_dir, exist_ok=True)
        probe = os.path.join(model_dir, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as error:
        raise PermissionError(
            f"`model_dir` {model_dir!r} is not writable ({error.strerror}). Choose another "
            "--model_dir or fix its permissions."
        ) from None


def write_json(path: str, values: dict) -> None:
    """Writes `values` as JSON to `path` atomically (a temporary file renamed into place)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(values, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    os.replace(tmp, path)


def write_result(model_dir: str, values: dict) -> str:
    """Writes `<model_dir>/result.json`; returns its path."""
    path = os.path.join(model_dir, RESULT_FILE)
    write_json(path, values)
    return path
