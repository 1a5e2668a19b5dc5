"""The package's import graph: flags are read only by the CLI, and imports flow one way."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "simclr_tf"

# module -> modules of ours it must not import (DESIGN.md: config -> data|models|losses|optimizers
# -> train -> export, run.py on top).
LOW_LEVEL = {"config", "losses", "optimizers", "data.augment", "data.sources", "data.pipeline"}
FORBIDDEN_FOR_LOW_LEVEL = {"train", "run", "export", "evaluation", "models.simclr"}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        yield name, ast.parse(path.read_text(encoding="utf-8"))


def _imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.level:  # relative import inside simclr_tf
                yield "simclr_tf." + node.module
            else:
                yield node.module
                for alias in node.names:
                    yield f"{node.module}.{alias.name}"


def test_only_the_cli_reads_absl_flags():
    offenders = []
    for name, tree in _modules():
        if name in ("run",):
            continue
        for imported in _imports(tree):
            if imported in ("absl.flags", "absl.flags.FLAGS"):
                offenders.append(name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id == "FLAGS":
                offenders.append(name)
    assert not offenders, f"only simclr_tf/run.py may read absl flags; also read in {offenders}"


def test_low_level_modules_do_not_import_the_wiring():
    bad = []
    for name, tree in _modules():
        if name not in LOW_LEVEL:
            continue
        for imported in _imports(tree):
            if imported.startswith("simclr_tf."):
                target = imported.removeprefix("simclr_tf.")
                if any(target == f or target.startswith(f + ".") for f in FORBIDDEN_FOR_LOW_LEVEL):
                    bad.append((name, target))
    assert not bad, f"low-level modules import the wiring: {bad}"


def test_the_package_has_modules():
    names = {name for name, _ in _modules()}
    assert {"config"} <= names


def test_public_api_resolves_lazily():
    import os
    import subprocess
    import sys

    code = ("import sys, simclr_tf; assert 'tensorflow' not in sys.modules; "
            "names = [getattr(simclr_tf, n) for n in simclr_tf.__all__]; "
            "assert simclr_tf.SimCLRModel.__name__ == 'SimCLRModel'; print(len(names))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip().splitlines()[-1]) == len(__import__("simclr_tf").__all__)
