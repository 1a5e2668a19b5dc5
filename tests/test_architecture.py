"""The package's house: flags are read only by the CLI, imports flow down the layers of
../shared/DESIGN.md, no import cycle, and no module grows past ~450 lines without saying why."""

import ast
import os
import pathlib
import re
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "simclr_tf"

# Layers, bottom to top; a module may import from lower layers and from its own package
# (`data.*`, `models.*`, `training.*`, `export.*`), never from a higher layer.
LAYERS = [
    {"validation", "interrupts", "console"},  # standard library only
    {"plots"},  # matplotlib figures; nothing of simclr_tf
    {"config"},
    {"variable_roles"},  # which variables are normalisation, biases, the head (for LARS, decay)
    {"losses", "optimizers", "schedules", "distribute", "precision", "data"},
    {"models"},
    {"checkpoints", "evaluation", "export"},
    {"convert"},  # reads the original code's files into checkpoints and exports
    {"training"},
    {"study_report"},  # the study's table and picture, below the study command
    {"run", "cli", "preview", "study", "export.__main__", "convert.__main__"},  # the command-line tools
]
CLI = LAYERS[-1]
MAX_LINES = 450


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__").removesuffix("__init__")
        yield name, path, ast.parse(path.read_text(encoding="utf-8"))


MODULES = {name: (path, tree) for name, path, tree in _modules()}


def _layer(name):
    if name in CLI:
        return len(LAYERS) - 1
    for index, members in enumerate(LAYERS):
        if name.split(".")[0] in members:
            return index
    raise AssertionError(f"simclr_tf.{name} is in no layer of LAYERS: add it to one")


def _imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            module = ("simclr_tf." + node.module) if node.level else node.module
            for alias in node.names:
                # `from package import module` depends on that module; `from module import name`
                # on the module.
                yield f"{module}.{alias.name}"


def _our_imports(name):
    """The modules of simclr_tf that `name` imports (the longest existing module of each import)."""
    found = set()
    for imported in _imports(MODULES[name][1]):
        if not imported.startswith("simclr_tf."):
            continue
        parts = imported.removeprefix("simclr_tf.").split(".")
        for end in range(len(parts), 0, -1):
            candidate = ".".join(parts[:end])
            if candidate in MODULES:
                if candidate != name:
                    found.add(candidate)
                break
    return found


def test_every_module_is_in_a_layer():
    layers = {name: _layer(name) for name in MODULES if name}  # the lazy __init__ is above everything
    assert set(layers.values()) <= set(range(len(LAYERS)))
    assert layers["config"] < layers["models.simclr"] < layers["training.loop"] < layers["run"]


def test_only_the_cli_reads_absl_flags():
    offenders = []
    for name, (_, tree) in MODULES.items():
        if name in ("run",):
            continue
        for imported in _imports(tree):
            if imported in ("absl.flags", "absl.flags.FLAGS", "absl.app"):
                offenders.append(name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id == "FLAGS":
                offenders.append(name)
    assert not offenders, f"only simclr_tf/run.py may read absl flags; also read in {offenders}"


def test_imports_flow_down_the_layers():
    bad = []
    for name in MODULES:
        if not name:
            continue
        for target in _our_imports(name):
            if not target:
                continue
            same_package = target.split(".")[0] == name.split(".")[0]
            if same_package and name not in CLI:
                continue
            if _layer(target) >= _layer(name) and not (name in CLI and target not in CLI):
                bad.append(f"{name} -> {target}")
    assert not bad, f"imports that go up or sideways between layers: {bad}"


def _find_cycles(graph):
    """Every back edge of a depth-first search, as the cycle it closes."""
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_no_import_cycle():
    graph = {name: _our_imports(name) - {""} for name in MODULES if name}
    cycles = _find_cycles(graph)
    assert not cycles, f"import cycles: {[' -> '.join(c) for c in cycles]}"


def test_the_cycle_check_finds_cycles():
    """Not vacuous: the old train <-> export pair, and a longer loop, are found."""
    assert _find_cycles({"train": {"export"}, "export": {"train"}}) == [["export", "train", "export"]]
    assert _find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _find_cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n))
def test_modules_stay_small_or_say_why(name):
    path, tree = MODULES[name]
    lines = len(path.read_text(encoding="utf-8").splitlines())
    docstring = ast.get_docstring(tree) or ""
    assert lines <= MAX_LINES or re.search(r"over ~?450 lines", docstring), (
        f"simclr_tf/{path.relative_to(PACKAGE)} has {lines} lines: split it by concern, or give the "
        "reason in its docstring ('... over 450 lines: ...')"
    )


def test_public_api_resolves_lazily():
    code = ("import sys, simclr_tf; assert 'tensorflow' not in sys.modules; "
            "names = [getattr(simclr_tf, n) for n in simclr_tf.__all__]; "
            "assert simclr_tf.SimCLRModel.__name__ == 'SimCLRModel'; "
            "assert callable(simclr_tf.train) and simclr_tf.train.__module__ == 'simclr_tf.training.loop'; "
            "print(len(names))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip().splitlines()[-1]) == len(__import__("simclr_tf").__all__)
