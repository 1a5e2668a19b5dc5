"""experiments/benchmark_original.py without the original code: arguments, clear errors, the table."""

import importlib.util
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load():
    path = os.path.join(ROOT, "experiments", "benchmark_original.py")
    spec = importlib.util.spec_from_file_location("benchmark_original", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmark_original"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


bo = _load()


# --- arguments --------------------------------------------------------------------------------------


def test_defaults_are_the_issue_setting():
    args = bo.parse_args(["--original_dir=/x"])
    assert args.depths == [18, 50]
    assert (args.batch_size, args.image_size, args.xla, args.rounds) == (64, 32, False, 2)


def test_models_and_xla():
    args = bo.parse_args(["--original_dir=/x", "--models=resnet50, resnet18", "--xla"])
    assert args.depths == [50, 18] and args.xla


@pytest.mark.parametrize("argv, message", [
    (["--models=resnet18"], "--original_dir"),
    (["--original_dir=/x", "--models=resnet34"], "--models takes a comma-separated list.*resnet34"),
    (["--original_dir=/x", "--models=,"], "--models takes"),
    (["--original_dir=/x", "--rounds=0"], "--rounds must be >= 1. Received: 0"),
    (["--original_dir=/x", "--steps=0"], "--steps must be >= 1"),
    (["--original_dir=/x", "--warmup_steps=-1"], "--warmup_steps must be >= 0. Received: -1"),
])
def test_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        bo.parse_args(argv)
    assert re.search(message, capsys.readouterr().err)


# --- the original's code and tf-keras ---------------------------------------------------------------


def test_missing_original_dir_says_how_to_get_it(tmp_path):
    with pytest.raises(SystemExit, match=r"does not exist.*tf2/ folder of google-research/simclr.*"
                                         r"git clone .*checkout 383d414"):
        bo.check_original_dir(str(tmp_path / "nowhere"))


def test_incomplete_original_dir_names_the_missing_files(tmp_path):
    for name in bo.ORIGINAL_FILES:
        if name not in ("resnet.py", "objective.py"):
            (tmp_path / name).write_text("# stand-in\n")
    with pytest.raises(SystemExit, match=r"lacks resnet\.py, objective\.py"):
        bo.check_original_dir(str(tmp_path))
    (tmp_path / "resnet.py").write_text("")
    (tmp_path / "objective.py").write_text("")
    assert bo.check_original_dir(str(tmp_path)) == str(tmp_path)


def test_original_env_puts_tf_keras_and_the_original_first():
    env = bo.original_env("/orig/tf2", "/tmp/tfkeras", base={"PYTHONPATH": "/other", "PATH": "/bin"})
    assert env["PYTHONPATH"].split(os.pathsep) == ["/tmp/tfkeras", "/orig/tf2", "/other"]
    assert env["TF_USE_LEGACY_KERAS"] == "1" and env["PATH"] == "/bin"
    assert bo.original_env("/orig/tf2", "", base={})["PYTHONPATH"] == "/orig/tf2"


def test_missing_tf_keras_says_how_to_install_it(tmp_path):
    # `python -S` skips site-packages, so only PYTHONPATH can provide tf_keras: here it is empty.
    env = bo.original_env(str(tmp_path), str(tmp_path / "tfkeras"), base={})
    with pytest.raises(SystemExit, match=r"tf-keras is missing.*pip install --target /tmp/tfkeras "
                                         r"--no-deps \"tf-keras~=2.21.0\""):
        bo.require_tf_keras(env, python=(sys.executable, "-S"))


def test_tf_keras_found_on_the_given_path(tmp_path):
    package = tmp_path / "tfkeras" / "tf_keras"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    env = bo.original_env(str(tmp_path), str(tmp_path / "tfkeras"), base={})
    assert bo.require_tf_keras(env, python=(sys.executable, "-S")) == str(package / "__init__.py")


def test_fingerprint_changes_with_the_code(tmp_path):
    for name in bo.ORIGINAL_FILES:
        (tmp_path / name).write_text(name)
    first = bo.fingerprint(str(tmp_path))
    assert len(first) == 12 and bo.fingerprint(str(tmp_path)) == first
    (tmp_path / "model.py").write_text("changed")
    assert bo.fingerprint(str(tmp_path)) != first


# --- the table --------------------------------------------------------------------------------------


def test_table_of_the_issue_figures():
    rows = [bo.Row("ResNet-18", (51.4, 50.8), (32.5,), (58.4, 59.2)),
            bo.Row("ResNet-50", (16.4,), (5.6,), (20.1,))]
    # Ratios of medians: 58.8 / 51.1 and 20.1 / 16.4 (the original without XLA is the faster column).
    assert rows[0].ratio == pytest.approx(58.8 / 51.1)
    assert rows[1].ratio == pytest.approx(20.1 / 16.4)
    assert bo.format_table(rows).splitlines() == [
        "| training step, images/s | original tf2 code | original + XLA | simclr_tf | ratio |",
        "|---|---|---|---|---|",
        "| ResNet-18 | 51.4 / 50.8 | 32.5 | 58.4 / 59.2 | 1.15x |",
        "| ResNet-50 | 16.4 | 5.6 | 20.1 | 1.23x |",
    ]


def test_ratio_is_against_the_faster_original_column():
    row = bo.Row("ResNet-18", (10.0, 12.0, 11.0), (20.0,), (30.0, 30.0, 30.0))
    assert row.ratio == pytest.approx(30.0 / 20.0)
    assert "| 10.0 / 12.0 / 11.0 | 20.0 | 30.0 / 30.0 / 30.0 | 1.50x |" in bo.format_table([row])


def test_table_without_xla():
    row = bo.Row("ResNet-50", (16.0, 18.0), None, (20.0, 19.0))
    assert row.ratio == pytest.approx(19.5 / 17.0)
    last = bo.format_table([row]).splitlines()[-1]
    assert last == "| ResNet-50 | 16.0 / 18.0 | not timed | 20.0 / 19.0 | 1.15x |"


def test_table_when_the_original_with_xla_failed():
    row = bo.Row("ResNet-50", (16.0,), (), (20.0,))
    assert row.ratio == pytest.approx(20.0 / 16.0)
    assert "| 16.0 | failed (see the log lines) | 20.0 | 1.25x |" in bo.format_table([row])
