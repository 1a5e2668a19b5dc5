"""The run's hardware, and `--precision=auto`: the policy each kind of device runs best.

`strategy_devices(strategy)` says once, at build time, what the strategy's replicas run on (TPU,
GPU with its name and compute capability, or CPU with its model and flags). The run's hardware
decisions are made from that description, never by a layer: the dtype policy here, XLA
(`resolve_jit_compile`) and the convolution gradients (`simclr_tf.models.conv.conv_gradients_for`).

The original SimCLR trained on TPUs in bfloat16 (activations and matmuls in bfloat16, variables
and the loss in float32: Keras' `mixed_bfloat16` policy). GPUs of compute capability 8.0 and later
(Ampere, Hopper, ...) have bfloat16 tensor cores; earlier ones (Volta, Turing) only float16, which
needs loss scaling (`mixed_float16`: the run wraps its optimizer in `LossScaleOptimizer`). CPUs
with AVX512_BF16 (Intel Cooper Lake and Sapphire Rapids on, AMD Zen 4 on) or AMX compute bfloat16
convolutions through oneDNN about twice as fast as float32; on CPUs without them bfloat16 is
emulated and slower than float32. `auto` picks:

- a TPU strategy: `mixed_bfloat16` (as the original trained);
- a GPU strategy: `mixed_bfloat16` where every GPU has compute capability 8.0 or later,
  `mixed_float16` (with loss scaling) where one is older or its capability is unknown;
- a CPU with `avx512_bf16` or `amx_bf16` in its flags, oneDNN on: `mixed_bfloat16`;
- any other CPU (no such flags, oneDNN turned off by `TF_ENABLE_ONEDNN_OPTS=0`, a platform whose
  CPU flags we cannot read): `float32`.

The choice and its reason are logged once by the run (the command line shows the log) and stored
in its `config.json`; `result.json` holds them under `hardware`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform

import tensorflow as tf

# CPU flags (as Linux names them in /proc/cpuinfo) of native bfloat16 arithmetic.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """The CPU's feature flags as the kernel reports them, or None where they cannot be read."""
    if platform.system() != "Linux":
        return None
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        return None
    return None


@functools.lru_cache(maxsize=1)
def _machine_cpu_flags() -> frozenset[str] | None:
    return cpu_flags()


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name (`/proc/cpuinfo` on Linux, else `platform.processor()`), or `unknown CPU`."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


@dataclasses.dataclass(frozen=True)
class Devices:
    """What a strategy's replicas run on, as the run's hardware decisions need it.

    Attributes:
        kind: `"CPU"`, `"GPU"` or `"TPU"`.
        names: the devices' names: GPU names (e.g. `"NVIDIA H100 80GB HBM3"`), or the CPU model.
        compute_capability: the lowest `(major, minor)` of the GPUs; None for other kinds or where
            TensorFlow does not report it.
        cpu_flags: the host CPU's flags (None where they cannot be read).
    """

    kind: str
    names: tuple[str, ...] = ()
    compute_capability: tuple[int, int] | None = None
    cpu_flags: frozenset[str] | None = None

    def describe(self) -> str:
        """One line for people, e.g. `GPU: NVIDIA A100-SXM4-40GB (compute capability 8.0)`."""
        names = ", ".join(sorted(set(self.names))) or "unknown"
        if self.kind == "GPU" and self.compute_capability:
            names += " (compute capability {}.{})".format(*self.compute_capability)
        return f"{self.kind}: {names}"


def _strategy_device_kinds(strategy) -> tuple[str, list[int]]:
    """(kind, device indices) of the strategy's local replicas: the default strategy runs where
    TensorFlow places ops (the first GPU if there is one)."""
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "TPU", []
    try:
        names = list(strategy.extended.worker_devices)
    except (RuntimeError, AttributeError):  # the default strategy has no device list
        return ("GPU", [0]) if tf.config.list_logical_devices("GPU") else ("CPU", [])
    specs = [tf.DeviceSpec.from_string(name) for name in names]
    kinds = {(spec.device_type or "CPU").upper() for spec in specs}
    if "TPU" in kinds:
        return "TPU", []
    if "GPU" in kinds:
        return "GPU", sorted({spec.device_index or 0 for spec in specs if spec.device_type.upper() == "GPU"})
    return "CPU", []


def strategy_devices(strategy=None) -> Devices:
    """The devices the replicas of `strategy` (default: the current one) run on.

    GPU names and compute capabilities come from `tf.config.experimental.get_device_details`.
    """
    strategy = strategy or tf.distribute.get_strategy()
    kind, indices = _strategy_device_kinds(strategy)
    flags = _machine_cpu_flags()
    if kind == "TPU":
        return Devices("TPU", ("TPU",), cpu_flags=flags)
    if kind == "CPU":
        return Devices("CPU", (cpu_model(),), cpu_flags=flags)
    gpus = tf.config.list_physical_devices("GPU")
    gpus = [gpus[i] for i in indices if i < len(gpus)] or gpus
    names, capabilities = [], []
    for gpu in gpus:
        details = tf.config.experimental.get_device_details(gpu)
        names.append(details.get("device_name") or gpu.name)
        capabilities.append(details.get("compute_capability"))
    capability = None if not capabilities or None in capabilities else min(
        tuple(int(part) for part in c) for c in capabilities)
    return Devices("GPU", tuple(names) or ("GPU",), capability, flags)


def onednn_enabled(environ=None) -> bool:
    """Whether TensorFlow's oneDNN CPU kernels are on (they are unless TF_ENABLE_ONEDNN_OPTS=0)."""
    environ = os.environ if environ is None else environ
    return environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip().lower() not in ("0", "false", "no", "off")


def resolve_precision(precision: str, strategy=None, *, devices: Devices | None = None,
                      environ=None) -> tuple[str, str]:
    """The Keras dtype policy for `precision`, and why.

    Args:
        precision: `auto`, or a policy name (`float32`, `mixed_bfloat16`, `mixed_float16`),
            returned unchanged.
        strategy: the run's `tf.distribute.Strategy` (default: the current one).
        devices: what the replicas run on (default: `strategy_devices(strategy)`).
        environ: the environment (default: `os.environ`), for `TF_ENABLE_ONEDNN_OPTS`.

    Returns:
        `(policy, reason)`, e.g. `("mixed_bfloat16", "auto: the CPU computes bfloat16 natively
        (avx512_bf16)")`.

    Example:
        ```python
        policy, why = resolve_precision("auto", tf.distribute.get_strategy())
        keras.mixed_precision.set_global_policy(policy)
        ```
    """
    if precision != "auto":
        return precision, "set by --precision"
    devices = devices or strategy_devices(strategy)
    if devices.kind == "TPU":
        return "mixed_bfloat16", "auto: TPU (bfloat16 as the original SimCLR trained)"
    if devices.kind == "GPU":
        capability = devices.compute_capability
        if capability is not None and capability >= (8, 0):
            return "mixed_bfloat16", (f"auto: GPU of compute capability {capability[0]}.{capability[1]} "
                                      "(bfloat16 tensor cores)")
        shown = "unknown" if capability is None else f"{capability[0]}.{capability[1]}"
        return "mixed_float16", (f"auto: GPU of compute capability {shown}, before 8.0: float16 with "
                                 "loss scaling")
    flags = devices.cpu_flags
    if flags is None:
        return "float32", "auto: the CPU's features cannot be read on this platform"
    native = [flag for flag in NATIVE_BF16_FLAGS if flag in flags]
    if not native:
        return "float32", "auto: the CPU has no native bfloat16 (no AVX512_BF16 or AMX)"
    if not onednn_enabled(environ):
        return "float32", "auto: oneDNN is off (TF_ENABLE_ONEDNN_OPTS=0), so bfloat16 would be emulated"
    return "mixed_bfloat16", f"auto: the CPU computes bfloat16 natively ({', '.join(native)})"


def resolve_jit_compile(jit_compile, strategy=None, *, devices: Devices | None = None) -> tuple[bool, str]:
    """Whether the train step compiles with XLA, and why.

    Args:
        jit_compile: True, False (or `"true"`, `"false"`), or `"auto"`: on for GPU and TPU
            strategies (where XLA fuses the step's element-wise ops; a TPU compiles every step
            anyway), off on CPUs (there XLA made every model 1.9-3.3x slower: README,
            `experiments/benchmark.py`).
        strategy: the run's `tf.distribute.Strategy` (default: the current one).
        devices: what the replicas run on (default: `strategy_devices(strategy)`).

    Returns:
        `(jit_compile, reason)`.
    """
    if jit_compile != "auto":
        on = jit_compile if isinstance(jit_compile, bool) else str(jit_compile).lower() == "true"
        return on, "set by --jit_compile"
    devices = devices or strategy_devices(strategy)
    if devices.kind in ("GPU", "TPU"):
        return True, f"auto: XLA on a {devices.kind}"
    return False, "auto: off on a CPU"
