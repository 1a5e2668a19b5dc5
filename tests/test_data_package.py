"""The data package's boundaries: what its modules import, and that none is in an import cycle."""

import ast
import pathlib
import subprocess
import sys

import pytest

DATA = pathlib.Path(__file__).resolve().parents[1] / "simclr_tf" / "data"
ALLOWED = ("simclr_tf.data", "simclr_tf.config", "simclr_tf.validation")


def _simclr_imports(path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        else:
            continue
        yield from (name for name in names if name.split(".")[0] == "simclr_tf")


def test_data_modules_import_only_data_config_and_validation():
    modules = sorted(DATA.glob("*.py"))
    assert {"ops", "color", "kernel", "views", "pipeline", "sources", "folder", "tfds", "synthetic"} <= {
        path.stem for path in modules
    }
    bad = [
        (path.name, name)
        for path in modules
        for name in _simclr_imports(path)
        if not any(name == allowed or name.startswith(allowed + ".") for allowed in ALLOWED)
    ]
    assert not bad, f"simclr_tf.data modules import outside data, config and validation: {bad}"


@pytest.mark.slow
def test_folder_and_tfds_import_first_without_a_cycle():
    # `sources.load_source` imports these two, which import `sources`: each must load on its own.
    for name in ("folder", "tfds"):
        done = subprocess.run([sys.executable, "-c", f"import simclr_tf.data.{name}"], capture_output=True,
                              text=True, timeout=300, cwd=DATA.parents[1])
        assert done.returncode == 0, done.stderr[-2000:]
