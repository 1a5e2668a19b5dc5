"""`--precision=auto`: bfloat16 where the hardware computes it natively, float32 elsewhere.

The original SimCLR trained on TPUs in bfloat16 (activations and matmuls in bfloat16, variables
and the loss in float32: Keras' `mixed_bfloat16` policy). CPUs with AVX512_BF16 (Intel Cooper
Lake and Sapphire Rapids on, AMD Zen 4 on) or AMX compute bfloat16 convolutions through oneDNN
about twice as fast as float32; on CPUs without them bfloat16 is emulated and slower than
float32. `auto` picks:

- a TPU strategy: `mixed_bfloat16` (as the original trained);
- a visible GPU: `float32` (pass `mixed_float16` or `mixed_bfloat16` yourself where it helps);
- a CPU with `avx512_bf16` or `amx_bf16` in its flags, oneDNN on: `mixed_bfloat16`;
- anything else (no such flags, oneDNN turned off by `TF_ENABLE_ONEDNN_OPTS=0`, a platform
  whose CPU flags we cannot read): `float32`.

The choice and its reason are printed by the run and stored in its `config.json`.
"""

from __future__ import annotations

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


def onednn_enabled(environ=None) -> bool:
    """Whether TensorFlow's oneDNN CPU kernels are on (they are unless TF_ENABLE_ONEDNN_OPTS=0)."""
    environ = os.environ if environ is None else environ
    return environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip().lower() not in ("0", "false", "no", "off")


_READ = object()  # `flags` not given: read them from the machine


def resolve_precision(precision: str, strategy=None, *, flags=_READ, gpus=None,
                      environ=None) -> tuple[str, str]:
    """The Keras dtype policy for `precision`, and why.

    Args:
        precision: `auto`, or a policy name (`float32`, `mixed_bfloat16`, `mixed_float16`),
            returned unchanged.
        strategy: the run's `tf.distribute.Strategy` (a TPU strategy means bfloat16).
        flags: the CPU flags (default: read from the machine); None means unknown.
        gpus: whether a GPU is visible (default: asked of TensorFlow).
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
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "mixed_bfloat16", "auto: TPU (bfloat16 as the original SimCLR trained)"
    if gpus is None:
        gpus = bool(tf.config.list_physical_devices("GPU"))
    if gpus:
        return "float32", "auto: a GPU is visible (pass --precision=mixed_float16 to use its half precision)"
    if flags is _READ:
        flags = cpu_flags()
    if flags is None:
        return "float32", "auto: the CPU's features cannot be read on this platform"
    native = [flag for flag in NATIVE_BF16_FLAGS if flag in flags]
    if not native:
        return "float32", "auto: the CPU has no native bfloat16 (no AVX512_BF16 or AMX)"
    if not onednn_enabled(environ):
        return "float32", "auto: oneDNN is off (TF_ENABLE_ONEDNN_OPTS=0), so bfloat16 would be emulated"
    return "mixed_bfloat16", f"auto: the CPU computes bfloat16 natively ({', '.join(native)})"
