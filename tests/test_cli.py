"""The installed package from outside the checkout: the `simclr-tf` command and `python -m`."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMAND = pathlib.Path(sys.executable).with_name("simclr-tf")
TINY = ["--dataset=synthetic", "--synthetic_examples=64", "--image_size=16", "--train_batch_size=16",
        "--train_steps=1", "--warmup_epochs=0", "--linear_eval_epochs=0", "--eval_batch_size=64"]


def _run(args, cwd, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    if not COMMAND.exists():
        pytest.fail(f"{COMMAND} is missing: install the package (`pip install -e .`, as README's "
                    "commands do).")
    where = tmp_path_factory.mktemp("elsewhere")
    assert not str(where).startswith(str(ROOT))
    return where


def test_console_command_lists_its_tools(outside):
    done = _run([str(COMMAND), "--help"], outside)
    assert done.returncode == 0, done.stderr
    for name in ("run", "export", "preview", "study"):
        assert f"  {name} " in done.stdout
    wrong = _run([str(COMMAND), "trian"], outside)
    assert wrong.returncode == 2 and "unknown command 'trian'" in wrong.stderr


@pytest.mark.slow
def test_train_and_export_from_another_directory(outside):
    done = _run([str(COMMAND), "run", *TINY, "--model_dir=run"], outside)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((outside / "run" / "result.json").read_text())
    assert result["train_steps"] == 1 and result["model_dir"] == "run"
    assert "Linear-eval" not in done.stdout  # linear evaluation was switched off
    exported = _run([sys.executable, "-m", "simclr_tf.export", "--model_dir=run", "--export_dir=exported"],
                    outside)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (outside / "exported" / "1" / "encoder.keras").is_file()
    assert (outside / "exported" / "1" / "saved_model.pb").is_file()


def test_a_wrong_flag_is_a_clear_error(outside):
    done = _run([sys.executable, "-m", "simclr_tf.run", "--temperature=-1", "--model_dir=bad"], outside)
    assert done.returncode == 2
    assert "`temperature` must be a positive number" in done.stderr
    assert not (outside / "bad").exists()
