"""End to end: the CLI writes what it promises, resumes where it stopped, and eval reproduces."""

import dataclasses
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.config import Config, DataConfig, TrainConfig
from simclr_tf.training import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_cli(*flags, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, "-m", "simclr_tf.run", *flags], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=timeout,
    )


@pytest.mark.slow
def test_cli_writes_the_expected_files_and_resumes(tmp_path):
    model_dir = str(tmp_path / "run")
    smoke = os.path.join(ROOT, "experiments", "smoke.flags")
    first = _run_cli(f"--flagfile={smoke}", f"--model_dir={model_dir}", "--train_steps=4",
                     "--checkpoint_steps=2", "--linear_eval_epochs=0")
    assert first.returncode == 0, first.stderr[-3000:]
    for name in ("config.json", "result.json", "checkpoint", "ckpt-2.index", "ckpt-4.index"):
        assert os.path.exists(os.path.join(model_dir, name)), name
    assert os.listdir(os.path.join(model_dir, "logs"))
    assert os.path.exists(os.path.join(model_dir, "saved_model", "4", "saved_model.pb"))
    assert os.path.exists(os.path.join(model_dir, "saved_model", "4", "encoder.keras"))
    result = json.load(open(os.path.join(model_dir, "result.json")))
    assert result["train_steps"] == 4 and result["eval_protocol"] == "online_linear_head"
    _assert_counted_accuracy(result, examples=360)  # digits' test split
    # The summary prints what result.json holds.
    assert (f"top-1 {result['eval_top1']:.2%}, top-5 {result['eval_top5']:.2%} on digits:test "
            "(360 held-out images)") in first.stdout
    assert os.path.join(model_dir, "result.json") in first.stdout

    # Export again from the checkpoint with the export CLI: same step, heads included.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    exported = subprocess.run(
        [sys.executable, "-m", "simclr_tf.export", f"--model_dir={model_dir}",
         f"--export_dir={tmp_path / 'exports'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    import tensorflow as tf

    module = tf.saved_model.load(str(tmp_path / "exports" / "4"))
    features = module(tf.zeros([2, 16, 16, 3]), training=False)
    assert features["logits_sup"].shape == (2, 10) and features["final_avg_pool"].shape == (2, 512)

    second = _run_cli(f"--flagfile={smoke}", f"--model_dir={model_dir}", "--train_steps=6",
                      "--checkpoint_steps=2", "--linear_eval_epochs=0")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Resuming from" in second.stdout and "at step 4" in second.stdout
    # What it says it trained is this run's share, not the whole schedule (2026-12-07).
    assert "Trained 2 steps this time (resumed at step 4, now 6 of 6)" in second.stdout
    assert "Trained 4 steps in" in first.stdout
    assert os.path.exists(os.path.join(model_dir, "ckpt-6.index"))
    assert json.load(open(os.path.join(model_dir, "result.json")))["train_steps"] == 6


def test_cli_rejects_bad_flags_before_any_work(tmp_path):
    bad = _run_cli("--temperature=-1", f"--model_dir={tmp_path}/x")
    assert bad.returncode == 2 and "temperature" in bad.stderr
    assert not os.path.exists(tmp_path / "x")
    unknown = _run_cli("--temprature=0.5")
    assert unknown.returncode != 0 and "temprature" in unknown.stderr
    flagfile = tmp_path / "bad.flags"
    flagfile.write_text("--dataset=digits\n--no_such_flag=3\n")
    from_file = _run_cli(f"--flagfile={flagfile}")
    assert from_file.returncode != 0 and "no_such_flag" in from_file.stderr


def _assert_counted_accuracy(results, *, examples):
    """Top-1 and top-5 are counts of `examples` evaluated images, and top-1 <= top-5."""
    assert results["eval_examples"] == examples
    for key in ("eval_top1", "eval_top5"):
        assert results[key] * examples == pytest.approx(round(results[key] * examples), abs=1e-3), key
    assert results["eval_top1"] <= results["eval_top5"]


def _tiny_config(model_dir, **train):
    train.setdefault("linear_eval_epochs", 0)
    config = Config()
    return dataclasses.replace(
        config,
        data=dataclasses.replace(DataConfig(), dataset="digits", image_size=16),
        model=dataclasses.replace(config.model, resnet_depth=18, num_proj_layers=2),
        train=dataclasses.replace(
            TrainConfig(), model_dir=model_dir, train_batch_size=64, eval_batch_size=128,
            train_steps=3, checkpoint_steps=3, **train,
        ),
    )


@pytest.mark.slow
def test_eval_mode_reproduces_the_in_memory_accuracy(tmp_path):
    config = _tiny_config(str(tmp_path / "run"))
    trained = train(config)
    evaluated = train(dataclasses.replace(config, train=dataclasses.replace(config.train, mode="eval")))
    assert trained["eval_examples"] == evaluated["eval_examples"] == 360
    np.testing.assert_allclose(evaluated["eval_top1"], trained["eval_top1"], atol=1e-6)
    np.testing.assert_allclose(evaluated["eval_loss"], trained["eval_loss"], rtol=1e-5)


@pytest.mark.slow
def test_mixed_precision_run_leaves_float32_for_the_next(tmp_path):
    results = train(_tiny_config(str(tmp_path / "mixed"), precision="mixed_bfloat16", linear_eval_epochs=0))
    # The loss is the sum of its parts (each a mean over the same steps).
    np.testing.assert_allclose(results["train_loss"], results["train_contrastive_loss"]
                               + results["train_supervised_loss"] + results["train_weight_decay"], rtol=1e-5)
    _assert_counted_accuracy(results, examples=360)
    # Checkpointed variables are float32 (the policy only lowers the computation).
    reader = tf.train.load_checkpoint(results["checkpoint"])
    dtypes = reader.get_variable_to_dtype_map()
    assert dtypes and all(dtype in (tf.float32, tf.int64) for name, dtype in dtypes.items()
                          if "OBJECT_GRAPH" not in name), {n: d for n, d in dtypes.items() if d != tf.float32}
    # The caller's policy is back: a float32 run after it computes in float32.
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.slow
def test_linear_evaluation_after_pretraining(tmp_path):
    config = _tiny_config(str(tmp_path / "run"), linear_eval_epochs=1)
    results = train(config)
    with open(os.path.join(results["linear_eval_dir"], "result.json")) as f:
        written = json.load(f)
    assert written["linear_eval_top1"] == results["linear_eval_top1"]
    assert results["eval_protocol"] == "linear_eval" and results["linear_eval_protocol"] == "logistic"
    # Fitted on every labelled training image (no label subset asked for), scored on digits' test split.
    assert results["linear_eval_train_labels"] == results["num_train_examples"] == 1437
    assert results["linear_eval_label_subset"] == "all" and results["linear_eval_examples"] == 360
    # The headline numbers are the linear evaluation's; the online head's keep their own names.
    online, linear = results["accuracies"]
    assert (online["protocol"], linear["protocol"]) == ("online_linear_head", "linear_eval")
    assert (results["eval_top1"], results["eval_top5"]) == (linear["top1"], linear["top5"]) == (
        results["linear_eval_top1"], results["linear_eval_top5"])
    assert (results["online_eval_top1"], results["online_eval_top5"]) == (online["top1"], online["top5"])
    _assert_counted_accuracy(results, examples=360)
