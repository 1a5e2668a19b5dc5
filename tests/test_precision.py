"""`--precision=auto`: what it chooses on which hardware, and that a run records its choice."""

import dataclasses
import json
import os

import pytest
import tensorflow as tf

from simclr_tf import precision
from simclr_tf.config import Config, DataConfig, OptimizerConfig, TrainConfig
from simclr_tf.precision import (
    Devices,
    cpu_flags,
    onednn_enabled,
    resolve_jit_compile,
    resolve_precision,
    strategy_devices,
)

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
    policy, reason = resolve_precision("auto", devices=Devices("CPU", cpu_flags=flags), environ={})
    assert policy == expected
    assert reason.startswith("auto: ")
    if expected == "mixed_bfloat16":
        assert any(flag in reason for flag in ("avx512_bf16", "amx_bf16"))


def test_auto_without_onednn_is_float32():
    def auto(onednn):
        return resolve_precision("auto", devices=Devices("CPU", cpu_flags=ZEN4),
                                 environ={"TF_ENABLE_ONEDNN_OPTS": onednn})[0]

    assert auto("0") == "float32" and auto("1") == "mixed_bfloat16"
    assert not onednn_enabled({"TF_ENABLE_ONEDNN_OPTS": "false"}) and onednn_enabled({})


@pytest.mark.parametrize("capability, expected", [
    ((9, 0), "mixed_bfloat16"),  # H100
    ((8, 0), "mixed_bfloat16"),  # A100
    ((8, 6), "mixed_bfloat16"),
    ((7, 5), "mixed_float16"),  # T4
    ((7, 0), "mixed_float16"),  # V100
    (None, "mixed_float16"),  # not reported
])
def test_auto_on_a_gpu_follows_its_compute_capability(capability, expected):
    devices = Devices("GPU", ("some GPU",), capability, ZEN4)  # whatever the host CPU
    policy, reason = resolve_precision("auto", devices=devices, environ={})
    assert policy == expected and "GPU of compute capability" in reason


def _fake_gpus(monkeypatch, details):
    """This process sees the GPUs `details` describes (device_name, compute_capability)."""
    physical = [tf.config.PhysicalDevice(f"/physical_device:GPU:{i}", "GPU") for i in range(len(details))]
    logical = [tf.config.LogicalDevice(f"/device:GPU:{i}", "GPU") for i in range(len(details))]
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: physical)
    monkeypatch.setattr(tf.config, "list_logical_devices", lambda kind=None: logical)
    monkeypatch.setattr(tf.config.experimental, "get_device_details",
                        lambda device: details[int(device.name.rsplit(":", 1)[1])])


def test_strategy_devices_reads_the_gpus_details(monkeypatch):
    _fake_gpus(monkeypatch, [{"device_name": "NVIDIA A100-SXM4-40GB", "compute_capability": (8, 0)},
                             {"device_name": "Tesla V100-SXM2-16GB", "compute_capability": (7, 0)}])
    default = strategy_devices(tf.distribute.get_strategy())  # runs on the first GPU
    assert default == Devices("GPU", ("NVIDIA A100-SXM4-40GB",), (8, 0), default.cpu_flags)
    assert resolve_precision("auto", devices=default)[0] == "mixed_bfloat16"

    class Mirrored:  # a strategy over both GPUs (MirroredStrategy's device list)
        class extended:
            worker_devices = ("/job:localhost/replica:0/task:0/device:GPU:0",
                              "/job:localhost/replica:0/task:0/device:GPU:1")

    both = strategy_devices(Mirrored())
    assert both.compute_capability == (7, 0)  # the oldest decides
    assert resolve_precision("auto", Mirrored())[0] == "mixed_float16"
    assert both.describe() == ("GPU: NVIDIA A100-SXM4-40GB, Tesla V100-SXM2-16GB "
                               "(compute capability 7.0)")
    assert resolve_jit_compile("auto", Mirrored()) == (True, "auto: XLA on a GPU")


def test_strategy_devices_of_cpus_and_tpus():
    cpus = strategy_devices(tf.distribute.MirroredStrategy(["/cpu:0"]))
    assert cpus.kind == "CPU" and cpus.names == (precision.cpu_model(),)
    assert cpus.cpu_flags == cpu_flags()
    # A TPU strategy cannot be built here; an uninitialised instance is one for isinstance.
    tpu = tf.distribute.TPUStrategy.__new__(tf.distribute.TPUStrategy)
    assert strategy_devices(tpu).kind == "TPU"


def test_auto_on_a_tpu_is_bfloat16():
    tpu = tf.distribute.TPUStrategy.__new__(tf.distribute.TPUStrategy)
    assert resolve_precision("auto", tpu, environ={})[0] == "mixed_bfloat16"
    assert resolve_precision("auto", devices=Devices("TPU", cpu_flags=SKYLAKE))[0] == "mixed_bfloat16"


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_an_explicit_precision_is_kept(precision):
    gpu = Devices("GPU", ("some GPU",), (9, 0), ZEN4)
    assert resolve_precision(precision, devices=gpu, environ={}) == (precision, "set by --precision")


@pytest.mark.parametrize("kind, expected", [("GPU", True), ("TPU", True), ("CPU", False)])
def test_jit_compile_auto(kind, expected):
    devices = Devices(kind, cpu_flags=ZEN4)
    assert resolve_jit_compile("auto", devices=devices)[0] is expected
    assert resolve_jit_compile(True, devices=Devices("CPU")) == (True, "set by --jit_compile")
    assert resolve_jit_compile(False, devices=Devices("GPU")) == (False, "set by --jit_compile")


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


@pytest.mark.slow
def test_auto_is_the_default_and_a_run_stores_its_choice(tmp_path, caplog):
    from simclr_tf.models.conv import conv_gradients_for
    from simclr_tf.training import train

    assert Config().train.precision == "auto" and Config().train.jit_compile == "auto"
    model_dir = str(tmp_path / "run")
    config = dataclasses.replace(
        Config(),
        data=dataclasses.replace(DataConfig(), dataset="synthetic", image_size=16),
        train=dataclasses.replace(TrainConfig(), model_dir=model_dir, train_batch_size=16,
                                  eval_batch_size=32, train_steps=1, linear_eval_epochs=0,
                                  lineareval_while_pretraining=False),
        optimizer=dataclasses.replace(OptimizerConfig(), warmup_epochs=0),
    )
    with caplog.at_level("INFO", logger="simclr_tf"):
        results = train(config)
    chosen, reason = resolve_precision("auto")
    stored = json.load(open(os.path.join(model_dir, "config.json")))
    assert stored["train"]["precision"] == chosen == results["config"]["train"]["precision"]
    assert stored["train"]["jit_compile"] is False  # auto on this CPU: off
    result = json.load(open(os.path.join(model_dir, "result.json")))
    plan = conv_gradients_for(strategy_devices()).describe()
    assert result["hardware"] == {"devices": f"CPU: {precision.cpu_model()}",
                                  "precision": f"{chosen} ({reason})",
                                  "jit_compile": "False (auto: off on a CPU)", "conv_gradients": plan}
    logged = [record.getMessage() for record in caplog.records]
    for line in (f"Precision: {chosen} ({reason}).", "XLA: False (auto: off on a CPU).",
                 f"Convolution gradients: {plan}."):
        assert logged.count(line) == 1, (line, logged)


def test_jit_compile_setting_is_checked():
    from simclr_tf.config import ConfigError

    for value in ("auto", "true", "false", True, False):
        dataclasses.replace(TrainConfig(), jit_compile=value).validate()
    with pytest.raises(ConfigError, match=r"`jit_compile` must be one of .*Received: jit_compile='yes'"):
        dataclasses.replace(TrainConfig(), jit_compile="yes").validate()
    assert resolve_jit_compile("true", devices=Devices("CPU"))[0] is True
    assert resolve_jit_compile("false", devices=Devices("TPU"))[0] is False
