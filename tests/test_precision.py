"""`--precision=auto`: what it chooses on which hardware, and that a run records its choice."""

import dataclasses
import json
import os

import pytest
import tensorflow as tf

from simclr_tf.config import Config, DataConfig, TrainConfig
from simclr_tf.precision import cpu_flags, onednn_enabled, resolve_precision

ZEN4 = frozenset({"fpu", "avx2", "avx512f", "avx512_bf16", "avx512_vnni"})
SAPPHIRE_RAPIDS = frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"})
SKYLAKE = frozenset({"fpu", "avx2", "avx512f", "avx512bw"})


@pytest.mark.parametrize("flags, expected", [
    (ZEN4, "mixed_bfloat16"),
    (SAPPHIRE_RAPIDS, "mixed_bfloat16"),
    (frozenset({"avx512f", "amx_bf16"}), "mixed_bfloat16"),
    (SKYLAKE, "float32"),
    (frozenset(), "float32"),
    (None, "float32"),  # flags unknown (not Linux)
])
def test_auto_on_a_cpu(flags, expected):
    policy, reason = resolve_precision("auto", flags=flags, gpus=False, environ={})
    assert policy == expected
    assert reason.startswith("auto: ")
    if expected == "mixed_bfloat16":
        assert any(flag in reason for flag in ("avx512_bf16", "amx_bf16"))


def test_auto_without_onednn_is_float32():
    def auto(onednn):
        return resolve_precision("auto", flags=ZEN4, gpus=False, environ={"TF_ENABLE_ONEDNN_OPTS": onednn})[0]

    assert auto("0") == "float32" and auto("1") == "mixed_bfloat16"
    assert not onednn_enabled({"TF_ENABLE_ONEDNN_OPTS": "false"}) and onednn_enabled({})


def test_auto_on_a_gpu_is_float32_whatever_the_cpu():
    policy, reason = resolve_precision("auto", flags=ZEN4, gpus=True, environ={})
    assert policy == "float32" and "GPU" in reason


def test_auto_on_a_tpu_is_bfloat16():
    # A TPU strategy cannot be built here; an uninitialised instance is one for isinstance.
    tpu = tf.distribute.TPUStrategy.__new__(tf.distribute.TPUStrategy)
    assert resolve_precision("auto", tpu, flags=SKYLAKE, gpus=False, environ={})[0] == "mixed_bfloat16"


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_an_explicit_precision_is_kept(precision):
    assert resolve_precision(precision, flags=ZEN4, gpus=True, environ={})[0] == precision


def test_cpu_flags_reads_the_flags_line(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx512f avx512_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu avx512f avx512_bf16\n")
    if os.uname().sysname != "Linux":
        pytest.skip("cpu_flags reads /proc/cpuinfo on Linux only")
    assert cpu_flags(str(cpuinfo)) == frozenset({"fpu", "avx512f", "avx512_bf16"})
    assert cpu_flags(str(tmp_path / "missing")) is None


def test_auto_matches_this_machine():
    if os.uname().sysname != "Linux" or tf.config.list_physical_devices("GPU"):
        pytest.skip("checks a CPU-only Linux machine")
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        text = f.read()
    native = "avx512_bf16" in text or "amx_bf16" in text
    expected = "mixed_bfloat16" if native and onednn_enabled() else "float32"
    assert resolve_precision("auto")[0] == expected


def test_auto_is_the_default_and_a_run_stores_its_choice(tmp_path, capsys):
    from simclr_tf.training import train

    assert Config().train.precision == "auto"
    model_dir = str(tmp_path / "run")
    config = dataclasses.replace(
        Config(),
        data=dataclasses.replace(DataConfig(), dataset="synthetic", image_size=16),
        train=dataclasses.replace(TrainConfig(), model_dir=model_dir, train_batch_size=16,
                                  eval_batch_size=32, train_steps=1, linear_eval_epochs=0,
                                  lineareval_while_pretraining=False),
    )
    results = train(config)
    chosen, reason = resolve_precision("auto")
    stored = json.load(open(os.path.join(model_dir, "config.json")))
    assert stored["train"]["precision"] == chosen == results["config"]["train"]["precision"]
    assert f"Precision: {chosen} ({reason})." in capsys.readouterr().out
