"""Performance benchmark: peak GFLOP/s, the SimCLR training step (images/s, MFU), the input pipeline, memory.

One run prints, for this machine:

- the measured peak: the best GFLOP/s of float32 matmuls of a few sizes and a 3x3 convolution in
  TensorFlow (best of several repeats each);
- the training step (two views, ResNet encoder, projection and supervised heads, NT-Xent, LARS) in
  source images/s, with XLA (`jit_compile`) off and on, for ResNet-18 and ResNet-50 with the CIFAR
  stem at 32 px, batch 64, and ResNet-50 at 224 px, batch 8. Each row has the model FLOPs per
  source image (counted from the convolutions and matmuls of the traced forward pass; a training
  step costs 2 views x 3 x forward: the backward pass is about twice the forward), the achieved
  GFLOP/s, the MFU (model FLOPs utilisation, the fraction of the measured peak), the CPU cores the
  process actually got during the timed steps, MFU per CPU-second (the same ratio computed from
  CPU time instead of wall time, so that other jobs on the machine cancel out), and the number of
  traces of the step function (1 means no retracing); before each model, a check that the traced
  step holds no host callbacks (`py_function`, `tf.print`);
- the input pipeline alone (`build_train_dataset`: two augmented views per image) at 32 and 224 px
  in images/s, and whether it keeps up (at least 2x the images per CPU-second of the fastest
  training step at that size); the same pipeline reading and decoding an image folder (60,000
  Fashion-MNIST PNGs, 500 large JPEGs) is `experiments/benchmark_folder.py`;
- the peak resident memory of the process.

Experiments: `--keras_batch_norm` builds the encoder with Keras 3's composite batch norm instead of
our fused-kernel layer (the gain of the fusion), `--conv_input_gradient=native|forward` takes
TensorFlow's `Conv2DBackpropInput` or our forward convolutions for the convolutions' input
gradient (`simclr_tf/models/conv.py`; default `auto`, the plan of the strategy's devices: forward on
CPUs without AVX-512, TensorFlow's on GPUs and TPUs; `--native_conv_gradient` is `=native`),
`--conv_filter_gradient=native|matmul` the same for the kernel gradient, `--precision
mixed_bfloat16` times the mixed-precision step, `--inter_op_threads` / `--intra_op_threads` set
TensorFlow's thread pools, and environment variables (`XLA_FLAGS`, `TF_*`) apply as usual.

The step is timed exactly as `model.fit` runs it: the compiled `model.make_train_function()` is
called on device-resident tensors, after warm-up steps (the first call traces and compiles), and the
clock stops only once the last step's loss has been fetched.

Usage:

```
python experiments/benchmark.py                       # the full table, < 10 minutes on 2 CPU cores
python experiments/benchmark.py --quick               # tiny sizes: a smoke run in about a minute
python experiments/benchmark.py --models=resnet18_cifar32 --no_xla --steps=5
python experiments/benchmark.py --keras_batch_norm --no_xla --no_pipeline         # without BN fusion
python experiments/benchmark.py --models=resnet18_cifar32 --no_xla --no_peak --profile_dir=/tmp/prof
```

Timings on a machine shared with other jobs are noisy: the table reports the load average and
the CPU cores the process got, so MFU can be read against the share of the machine it had.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import gc
import glob
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence

if __name__ == "__main__":  # run as a script from anywhere: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from simclr_tf.config import Config, DataConfig, LossConfig, ModelConfig, OptimizerConfig, TrainConfig
from simclr_tf.models.build import build_model
from simclr_tf.models.conv import (
    FILTER_GRADIENTS,
    INPUT_GRADIENTS,
    Conv2D,
    conv_gradients_for,
    resolve_filter_gradient,
    resolve_input_gradient,
)
from simclr_tf.models.simclr import SimCLRModel
from simclr_tf.optimizers import build_optimizer
from simclr_tf.precision import strategy_devices
from simclr_tf.schedules import WarmupCosineDecay

# A training step of SimCLR runs the encoder on both views (2x) forward and backward (~3x forward).
VIEWS = 2
TRAIN_FLOPS_PER_FORWARD = 3


@dataclasses.dataclass(frozen=True)
class Case:
    """One training-step benchmark: a model at an input size and batch size."""

    name: str
    resnet_depth: int
    image_size: int
    batch_size: int
    cifar_stem: bool


CASES = {
    "resnet18_cifar32": Case("resnet18_cifar32", 18, 32, 64, True),
    "resnet50_cifar32": Case("resnet50_cifar32", 50, 32, 64, True),
    "resnet50_224": Case("resnet50_224", 50, 224, 8, False),
}
QUICK_CASES = {
    "resnet18_cifar16": Case("resnet18_cifar16", 18, 16, 4, True),
}
# Selectable with --models: the quickstart's step (`simclr-tf run` with no flags; at 16 px until 2026-12-07).
EXTRA_CASES = {
    "resnet18_quickstart": Case("resnet18_quickstart", 18, 12, 128, True),
    "resnet18_quickstart16": Case("resnet18_quickstart16", 18, 16, 128, True),  # until 2026-12-07
}


# --- FLOPs -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FlopCount:
    """FLOPs of one traced call: the total and its split by op type and by layer."""

    total: int
    by_op_type: dict[str, int]
    by_layer: dict[str, int]


def _layer_of(op_name: str) -> str:
    # "simclr/resnet/block_group1_block1_conv1/convolution" -> the scope of the layer that made the op
    parts = op_name.split("/")
    return "/".join(parts[:-1]) if len(parts) > 1 else op_name


def _op_flops(op: tf.Operation) -> int:
    """FLOPs of one graph op: 2 per multiply-add of convolutions and matmuls, 0 for anything else."""
    if op.type in ("Conv2D", "Conv3D", "DepthwiseConv2dNative"):
        output = op.outputs[0].shape  # (B, H', W', C_out) for NHWC
        kernel = op.inputs[1].shape  # (kh, kw, C_in / groups, C_out) or (kh, kw, C_in, multiplier)
        if op.type == "DepthwiseConv2dNative":
            macs_per_output = int(np.prod(kernel[:-2]))
        else:
            macs_per_output = int(np.prod(kernel[:-1]))
        return 2 * output.num_elements() * macs_per_output
    if op.type == "MatMul":
        a = op.inputs[0].shape  # (m, k) or (k, m) if transpose_a
        k = a[0] if op.get_attr("transpose_a") else a[1]
        return 2 * op.outputs[0].shape.num_elements() * int(k)
    if op.type in ("BatchMatMul", "BatchMatMulV2", "BatchMatMulV3"):
        a = op.inputs[0].shape
        k = a[-2] if op.get_attr("adj_x") else a[-1]
        return 2 * op.outputs[0].shape.num_elements() * int(k)
    return 0


def count_flops(fn: Callable[[tf.Tensor], object], input_shape: Sequence[int]) -> FlopCount:
    """Counts the FLOPs of `fn(x)` for a float32 `x` of `input_shape`, from the traced graph.

    Convolutions and matrix products count 2 FLOPs per multiply-add (the usual convention of MFU);
    element-wise ops, batch norm, pooling and the optimizer are not counted (on a ResNet they are
    well under 1% of the convolution FLOPs, but they cost time: that time is what MFU shows).

    Args:
        fn: callable taking one tensor, e.g. `lambda x: model(x, training=False)`.
        input_shape: sequence of int. Fully defined shape of `x`, e.g. `(2, 32, 32, 3)`.

    Returns:
        A `FlopCount`: `total`, and the same split by op type and by layer scope.

    Raises:
        ValueError: if `input_shape` is not fully defined, or an op's shapes are unknown after
            tracing (the count would be wrong).

    Example:

    >>> layer = keras.layers.Dense(4, use_bias=False)
    >>> count_flops(layer, (1, 8)).total   # 8 x 4 multiply-adds
    64
    """
    shape = tuple(input_shape)
    if not shape or any(d is None or int(d) <= 0 for d in shape):
        raise ValueError(
            "`input_shape` must be fully defined with positive sizes, e.g. (2, 32, 32, 3). "
            f"Received: {shape!r}."
        )
    graph = tf.function(fn).get_concrete_function(tf.TensorSpec(shape, tf.float32)).graph
    by_type: collections.Counter = collections.Counter()
    by_layer: collections.Counter = collections.Counter()
    for op in graph.get_operations():
        if op.type not in ("Conv2D", "Conv3D", "DepthwiseConv2dNative", "MatMul", "BatchMatMul",
                           "BatchMatMulV2", "BatchMatMulV3"):
            continue
        if not op.outputs[0].shape.is_fully_defined() or not op.inputs[1].shape.is_fully_defined():
            raise ValueError(f"Cannot count FLOPs of {op.name} ({op.type}): its shapes are not fully known.")
        flops = _op_flops(op)
        by_type[op.type] += flops
        by_layer[_layer_of(op.name)] += flops
    return FlopCount(total=sum(by_type.values()), by_op_type=dict(by_type), by_layer=dict(by_layer))


def model_flops_per_image(model: keras.Model, image_size: int) -> int:
    """Forward FLOPs of `model` on one `image_size` x `image_size` RGB image (inference mode).

    Counted on a batch of 2 and halved, so nothing depends on a batch of one.
    """
    return count_flops(lambda x: model(x, training=False), (2, image_size, image_size, 3)).total // 2


def train_flops_per_source_image(forward_flops_per_image: int) -> int:
    """FLOPs of the SimCLR training step per source image: 2 views x (forward + ~2x forward backward)."""
    return VIEWS * TRAIN_FLOPS_PER_FORWARD * forward_flops_per_image


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- peak ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PeakResult:
    """One peak measurement: `flops` done in `seconds` of wall time using `cpu_seconds` of CPU time."""

    name: str
    flops: int
    seconds: float
    cpu_seconds: float

    @property
    def gflops(self) -> float:
        return self.flops / self.seconds / 1e9

    @property
    def gflops_per_cpu_second(self) -> float:
        """GFLOP per second of CPU time: the rate of one fully used core, whatever share we got."""
        return self.flops / max(self.cpu_seconds, 1e-9) / 1e9


def _best_time(run: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of the fastest of `repeats` runs, after one untimed run."""
    run()  # trace, allocate, warm the caches
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        cpu_start, start = _cpu_seconds(), time.perf_counter()
        run()
        best = min(best, (time.perf_counter() - start, _cpu_seconds() - cpu_start))
    return best


def measure_peak(
    matmul_sizes: Sequence[int] = (512, 1024, 2048),
    conv_shapes: Sequence[tuple[int, int, int]] = ((64, 32, 64), (64, 16, 128), (64, 8, 256)),
    repeats: int = 5,
) -> list[PeakResult]:
    """Measures float32 GFLOP/s of square matmuls and 3x3 SAME convolutions (best of `repeats`).

    Args:
        matmul_sizes: sizes `n` of `(n, n) @ (n, n)` products (`2 n^3` FLOPs).
        conv_shapes: `(batch, side, channels)` of 3x3 stride-1 convolutions from `channels` to
            `channels` on `side` x `side` inputs (`2 * batch * side^2 * 9 * channels^2` FLOPs).
        repeats: timed repeats of each; the best counts.

    Returns:
        One `PeakResult` per measurement; the machine's peak is the largest `gflops`.
    """
    results = []
    rng = tf.random.Generator.from_seed(0)
    for n in matmul_sizes:
        a, b = rng.normal((n, n)), rng.normal((n, n))
        matmul = tf.function(lambda a=a, b=b: tf.reduce_sum(tf.matmul(a, b)[:1, :1]))
        seconds, cpu_seconds = _best_time(lambda matmul=matmul: matmul().numpy(), repeats)
        results.append(PeakResult(f"matmul {n}x{n}", 2 * n**3, seconds, cpu_seconds))
    for batch, side, channels in conv_shapes:
        x, kernel = rng.normal((batch, side, side, channels)), rng.normal((3, 3, channels, channels))
        conv = tf.function(
            lambda x=x, kernel=kernel: tf.reduce_sum(tf.nn.conv2d(x, kernel, 1, "SAME")[:1, :1, :1, :1])
        )
        seconds, cpu_seconds = _best_time(lambda conv=conv: conv().numpy(), repeats)
        flops = 2 * batch * side * side * 9 * channels * channels
        results.append(PeakResult(f"conv3x3 {batch}x{side}x{side}x{channels}", flops, seconds, cpu_seconds))
    return results


# --- training step -------------------------------------------------------------------------------------


def build_train_model(
    case: Case,
    *,
    jit_compile: bool,
    global_bn: bool | None = None,
    num_classes: int = 10,
    keras_batch_norm: bool = False,
    conv_input_gradient: str = "auto",
    conv_filter_gradient: str = "auto",
    chunk_size: int = 0,
) -> SimCLRModel:
    """A compiled SimCLR model as `simclr_tf.train` builds it (LARS, warm-up + cosine, online linear head).

    Built by `simclr_tf.models.build.build_model`, the builder training uses, from a config of the
    case: the SimCLRv2 projection head (3 layers, 128-d), LARS with weight decay 1e-6.

    Args:
        case: the model and input size.
        jit_compile: compile the train step with XLA.
        global_bn: synchronised batch norm; `None` takes `ModelConfig`'s default.
        num_classes: classes of the online linear head (0: none).
        keras_batch_norm: build the encoder with Keras' composite batch norm instead of the fused
            one (an experiment: `build_model(..., fused_batch_norm=False)`).
        conv_input_gradient: how the convolutions' input gradient is computed: `auto` (the plan
            of the strategy's devices, `simclr_tf.models.conv.conv_gradients_for`), `forward`
            (by forward convolutions) or `native` (TensorFlow's `Conv2DBackpropInput`); sets
            `forward_input_gradient` of every `simclr_tf.models.conv.Conv2D`.
        conv_filter_gradient: the kernel gradient: `auto` (the layer's default), `matmul`
            (by matrix products) or `native` (TensorFlow's `Conv2DBackpropFilter`).
        chunk_size: the step in chunks of this many images (`--chunk_size`); 0: the plain step.

    Returns:
        The built, compiled `SimCLRModel` with its optimizer built.
    """
    defaults = ModelConfig()
    config = Config(
        data=DataConfig(dataset="synthetic", image_size=case.image_size),
        model=ModelConfig(
            resnet_depth=case.resnet_depth,
            cifar_stem=case.cifar_stem,
            num_proj_layers=3,
            global_bn=defaults.global_bn if global_bn is None else global_bn,
        ),
        loss=LossConfig(temperature=0.5 if case.image_size <= 32 else 0.1),
        optimizer=OptimizerConfig(optimizer="lars", weight_decay=1e-6),
        train=TrainConfig(train_batch_size=case.batch_size, chunk_size=chunk_size),
    ).resolved()
    model = build_model(config, num_classes, fused_batch_norm=not keras_batch_norm)
    forward = resolve_input_gradient(conv_input_gradient)
    matmul = resolve_filter_gradient(conv_filter_gradient)
    for layer in model._flatten_layers():
        if isinstance(layer, Conv2D):
            layer.forward_input_gradient = forward
            layer.matmul_filter_gradient = matmul
    learning_rate = WarmupCosineDecay(0.3 * case.batch_size / 256, warmup_steps=10, total_steps=1000)
    optimizer = build_optimizer("lars", learning_rate, momentum=0.9, weight_decay=1e-6)
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer, jit_compile=jit_compile)
    optimizer.build(model.trainable_variables)
    return model


@dataclasses.dataclass(frozen=True)
class StepTiming:
    """Timing of `steps` training steps after warm-up."""

    seconds_per_step: float
    images_per_second: float
    first_step_seconds: float  # tracing + compilation + one step
    cpu_cores: float  # process CPU time / wall time during the timed steps
    traces: int  # times the step function was traced (1: no retracing)
    steps: int = 0  # timed steps


def synthetic_batch(batch_size: int, image_size: int, num_classes: int = 10, seed: int = 0):
    """A device-resident training batch `((view_1, view_2), labels)` of uniform random views."""
    rng = tf.random.Generator.from_seed(seed)
    shape = (batch_size, image_size, image_size, 3)
    view_1, view_2 = rng.uniform(shape), rng.uniform(shape)  # (B, H, W, 3) float32 in [0, 1)
    labels = rng.uniform((batch_size,), 0, max(num_classes, 1), tf.int32)
    return (view_1, view_2), labels


def time_train_step(
    model: SimCLRModel, batch, *, warmup_steps: int = 1, steps: int = 3, max_seconds: float | None = None
) -> StepTiming:
    """Times the model's compiled train function (the one `fit` uses) on one device-resident batch.

    The first call (tracing and compilation) and `warmup_steps` more are excluded. The clock stops
    after the last step's loss is on the host, so asynchronous execution cannot hide any work.

    Args:
        model: a compiled model whose `train_step` takes `batch`.
        batch: `((view_1, view_2), labels)` tensors.
        warmup_steps: untimed steps after the first.
        steps: timed steps (at most).
        max_seconds: stop timing after the step that passes this many seconds (at least one step
            is timed); `None` times all `steps`.

    Returns:
        A `StepTiming`.

    Raises:
        ValueError: if `steps < 1` or `warmup_steps < 0`.
    """
    if steps < 1 or warmup_steps < 0:
        raise ValueError(
            "`steps` must be >= 1 and `warmup_steps` >= 0. "
            f"Received: steps={steps}, warmup_steps={warmup_steps}."
        )
    traces = [0]
    train_step = model.train_step

    def counted_train_step(data):
        traces[0] += 1  # Python runs only while TensorFlow traces the step
        return train_step(data)

    model.train_step = counted_train_step
    model.train_function = None
    model.make_train_function()
    train_function = model.train_function
    batch_size = int(batch[1].shape[0])

    start = time.perf_counter()
    float(train_function([batch])["loss"])
    first = time.perf_counter() - start
    for _ in range(warmup_steps):
        float(train_function([batch])["loss"])

    cpu_start, start = _cpu_seconds(), time.perf_counter()
    timed = 0
    while timed < steps:
        logs = train_function([batch])
        timed += 1
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break  # the check needs no sync: a slow step still delays the host at the next call
    float(logs["loss"])  # wait for the last step
    wall = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu_start
    model.train_step = train_step
    return StepTiming(
        seconds_per_step=wall / timed,
        images_per_second=batch_size * timed / wall,
        first_step_seconds=first,
        cpu_cores=cpu / wall,
        traces=traces[0],
        steps=timed,
    )


HOST_CALLBACK_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc", "PrintV2", "Print"})


def host_callbacks_in_train_step(model: SimCLRModel, batch) -> list[str]:
    """Ops of the traced train step that call back into Python or print: host round trips.

    Traces `model.train_step` once more (nothing runs) and lists such ops by name, including those
    inside nested functions (`tf.cond` / `tf.while_loop` branches).
    """
    graph = tf.function(model.train_step).get_concrete_function(batch).graph
    found = [op.name for op in graph.get_operations() if op.type in HOST_CALLBACK_OPS]
    for function in getattr(graph, "_functions", {}).values():  # function library: control-flow bodies
        found += [op.name for op in function.graph.get_operations() if op.type in HOST_CALLBACK_OPS]
    return found


# --- input pipeline -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PipelineTiming:
    images_per_second: float
    cpu_cores: float  # process CPU time / wall time while batches were taken

    @property
    def images_per_cpu_second(self) -> float:
        return self.images_per_second / max(self.cpu_cores, 1e-9)


def time_input_pipeline(
    image_size: int,
    batch_size: int,
    *,
    source_image_size: int | None = None,
    num_images: int = 512,
    batches: int = 20,
    warmup_batches: int = 3,
    seed: int = 0,
) -> PipelineTiming:
    """Images/s of the pretraining input pipeline alone, at the recipe's augmentation for the size.

    Source images are random uint8 images of `source_image_size` px (`image_size` for 32 px and
    below, as CIFAR; 256 px above it, as ImageNet after decoding), held in memory and cached, so
    the number is the cost of shuffling, augmenting (crop, flip, colour, and blur above 32 px) and
    batching: the work done for every step of a real run.

    Args:
        image_size: int. Side of the views.
        batch_size: int. Batch size.
        source_image_size: int or None. Side of the source images.
        num_images: int. Images in the source.
        batches: int. Timed batches.
        warmup_batches: int. Untimed batches first (the pipeline fills its buffers).
        seed: int. Seed of the images and the augmentations.

    Returns:
        A `PipelineTiming`: source images per second (each yields two views) and CPU cores used.
    """
    from simclr_tf.data.pipeline import build_train_dataset
    from simclr_tf.data.sources import from_arrays

    small = image_size <= 32
    side = source_image_size or (image_size if small else 256)
    images = np.random.default_rng(seed).integers(0, 256, (num_images, side, side, 3), dtype=np.uint8)
    source = from_arrays(images, np.arange(num_images) % 10, name="benchmark")
    dataset = build_train_dataset(
        source,
        global_batch_size=batch_size,
        image_size=image_size,  # the default AugmentConfig: the paper's recipe for this size
        seed=seed,
        cache=True,
    )
    iterator = iter(dataset)
    for _ in range(warmup_batches):
        next(iterator)
    cpu_start, start = _cpu_seconds(), time.perf_counter()
    for _ in range(batches):
        (view_1, _), _ = next(iterator)
    float(view_1[0, 0, 0, 0])
    wall = time.perf_counter() - start
    return PipelineTiming(batches * batch_size / wall, (_cpu_seconds() - cpu_start) / wall)


# --- memory, load ------------------------------------------------------------------------------------


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def load_average() -> str:
    try:
        return "load average {:.2f}, {:.2f}, {:.2f} on {} cores".format(*os.getloadavg(), os.cpu_count())
    except OSError:
        return f"load average unavailable, {os.cpu_count()} cores"


# --- profile ---------------------------------------------------------------------------------------------


def summarize_profile(logdir: str, top: int = 15) -> list[tuple[str, float]]:
    """Total time per TensorFlow op type in the newest trace under `logdir` (`tf.profiler` output).

    Reads the XSpace protobuf that `tf.profiler.experimental.start/stop` writes (the data the
    TensorBoard profiler shows) and sums the durations of the op events of the executor threads.
    Under XLA the step is one op (the compiled cluster) and the per-op split is the cluster's.

    Returns:
        `(op type, seconds)` pairs, largest first, at most `top`.
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    paths = sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")))
    if not paths:
        raise FileNotFoundError(f"No profile (*.xplane.pb) under {logdir!r}. Run with --profile_dir first.")
    space = xplane_pb2.XSpace()
    with open(paths[-1], "rb") as f:
        space.ParseFromString(f.read())
    totals: collections.Counter = collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_Compute") and "XLA" not in line.name:
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                # Op events are "scope/op_name:OpType"; "ExecutorState::Process" and the like are
                # bookkeeping that encloses them.
                if ":" in name and "::" not in name:
                    totals[name.rsplit(":", 1)[1]] += event.duration_ps * 1e-12
    return totals.most_common(top)


def profile_train_step(model: SimCLRModel, batch, logdir: str, steps: int = 2) -> list[tuple[str, float]]:
    """Traces `steps` train steps with the TensorFlow profiler and summarises where time goes."""
    model.make_train_function()
    float(model.train_function([batch])["loss"])  # compiled before the trace starts
    tf.profiler.experimental.start(logdir)
    try:
        for _ in range(steps):
            logs = model.train_function([batch])
        float(logs["loss"])
    finally:
        tf.profiler.experimental.stop()
    return summarize_profile(logdir)


# --- the run --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StepRow:
    case: Case
    jit_compile: bool
    forward_flops: int  # per image
    timing: StepTiming

    @property
    def train_flops(self) -> int:
        return train_flops_per_source_image(self.forward_flops)

    @property
    def gflops(self) -> float:
        return self.train_flops * self.timing.images_per_second / 1e9


def _clear_session() -> None:
    """Frees the previous models; keeps the dtype policy, which `clear_session` resets to float32."""
    policy = keras.mixed_precision.global_policy()
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(policy)


def run_step_benchmarks(
    cases: Sequence[Case], jit_modes: Sequence[bool], *, warmup_steps: int, steps: int,
    max_seconds: float | None = None, global_bn: bool | None = None, keras_batch_norm: bool = False,
    conv_input_gradient: str = "auto", conv_filter_gradient: str = "auto",
    log: Callable[[str], None] = print,
) -> list[StepRow]:
    """Times the training step of every case in every XLA mode (a fresh model each)."""
    rows = []
    for case in cases:
        forward_flops = None
        for jit_compile in jit_modes:
            _clear_session()
            model = build_train_model(case, jit_compile=jit_compile, global_bn=global_bn,
                                      keras_batch_norm=keras_batch_norm,
                                      conv_input_gradient=conv_input_gradient,
                                      conv_filter_gradient=conv_filter_gradient)
            batch = synthetic_batch(case.batch_size, case.image_size)
            if forward_flops is None:
                forward_flops = model_flops_per_image(model, case.image_size)
                callbacks = host_callbacks_in_train_step(model, batch)
                log(f"  {case.name}: {forward_flops / 1e9:.3f} GFLOP per image forward; host callbacks in "
                    f"the train step: {', '.join(callbacks) if callbacks else 'none'}")
            timing = time_train_step(model, batch, warmup_steps=warmup_steps, steps=steps,
                                     max_seconds=max_seconds)
            row = StepRow(case, jit_compile, forward_flops, timing)
            log(f"  {case.name} jit_compile={jit_compile}: {timing.images_per_second:.2f} images/s "
                f"({timing.seconds_per_step:.2f} s/step over {timing.steps} steps, first step "
                f"{timing.first_step_seconds:.1f} s, {timing.cpu_cores:.2f} cores)", flush=True)
            rows.append(row)
            del model
            gc.collect()
    return rows


def _percent(value: float) -> str:
    return "n/a" if value != value else f"{value:.1%}"  # NaN: no peak to compare with


def format_table(
    rows: Sequence[StepRow], peak_gflops: float | None, peak_gflops_per_cpu_second: float | None = None
) -> str:
    """The training-step table.

    Columns: seconds per step, source images/s, training GFLOP per source image, achieved GFLOP/s,
    MFU (achieved / `peak_gflops`), the CPU cores the process used, MFU per CPU time (GFLOP per
    CPU-second of the step over that of the peak run: MFU with the machine's other load factored
    out), and the number of traces of the step function.
    """
    header = (f"{'training step':<17} {'XLA':>3} {'batch':>5} {'s/step':>6} {'images/s':>8} "
              f"{'GFLOP/img':>9} {'GFLOP/s':>7} {'MFU':>6} {'cores':>5} {'MFU/cpu':>7} {'traces':>6}")
    lines = [header, "-" * len(header)]
    for row in rows:
        mfu = row.gflops / peak_gflops if peak_gflops else float("nan")
        mfu_cpu = (
            row.gflops / max(row.timing.cpu_cores, 1e-9) / peak_gflops_per_cpu_second
            if peak_gflops_per_cpu_second else float("nan")
        )
        lines.append(
            f"{row.case.name:<17} {'on' if row.jit_compile else 'off':>3} {row.case.batch_size:>5} "
            f"{row.timing.seconds_per_step:>6.2f} {row.timing.images_per_second:>8.2f} "
            f"{row.train_flops / 1e9:>9.2f} {row.gflops:>7.1f} {_percent(mfu):>6} "
            f"{row.timing.cpu_cores:>5.2f} {_percent(mfu_cpu):>7} {row.timing.traces:>6}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (ResNet-18 at 16 px, batch 4; small peak and pipeline runs)")
    parser.add_argument("--models", default=None,
                        help=f"comma-separated cases of {', '.join({**CASES, **EXTRA_CASES})} "
                             "(default: all but the quickstart's; 'none' skips)")
    parser.add_argument("--no_xla", action="store_true", help="time the step without jit_compile only")
    parser.add_argument("--xla_only", action="store_true", help="time the step with jit_compile only")
    parser.add_argument("--no_peak", action="store_true", help="skip the peak measurement (MFU vs --peak)")
    parser.add_argument("--peak", type=float, default=None, help="peak GFLOP/s to use instead of measuring")
    parser.add_argument("--no_pipeline", action="store_true", help="skip the input-pipeline benchmark")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per case")
    parser.add_argument("--warmup_steps", type=int, default=1, help="untimed steps after the first")
    parser.add_argument("--max_seconds_per_case", type=float, default=45.0,
                        help="stop timing a case after this many seconds of timed steps (>= 1 step)")
    parser.add_argument("--global_bn", choices=("default", "on", "off"), default="default",
                        help="synchronised batch norm (default: ModelConfig's)")
    parser.add_argument("--keras_batch_norm", action="store_true",
                        help="experiment: the encoder uses Keras' composite batch norm instead of the "
                             "fused kernel")
    parser.add_argument("--conv_input_gradient", choices=INPUT_GRADIENTS, default="auto",
                        help="the convolutions' input gradient: by forward convolutions, by "
                             "TensorFlow's Conv2DBackpropInput (native), or the plan of the devices "
                             "(auto: forward on CPUs without AVX-512, TensorFlow's on GPUs/TPUs)")
    parser.add_argument("--conv_filter_gradient", choices=FILTER_GRADIENTS, default="auto",
                        help="the convolutions' kernel gradient: by matrix products, by TensorFlow's "
                             "Conv2DBackpropFilter (native), or the plan of the devices (auto: on "
                             "CPUs, products for maps of 4x4 and smaller in bfloat16)")
    parser.add_argument("--native_conv_gradient", action="store_const", const="native",
                        dest="conv_input_gradient", help="the same as --conv_input_gradient=native")
    parser.add_argument("--inter_op_threads", type=int, default=0,
                        help="tf.config.threading inter-op threads (0: TensorFlow's default)")
    parser.add_argument("--intra_op_threads", type=int, default=0,
                        help="tf.config.threading intra-op threads (0: TensorFlow's default)")
    parser.add_argument("--precision", choices=("float32", "mixed_bfloat16", "mixed_float16"),
                        default="float32", help="Keras dtype policy of the model")
    parser.add_argument("--batch_sizes", default=None,
                        help="comma-separated batches: instead of the usual table, the memory and time "
                             "of the plain and the chunked step at 32 px, each case in its own process "
                             "(experiments/benchmark_chunks.py; --models' depths, default ResNet-18 and -50)")
    parser.add_argument("--chunk_size", type=int, default=128, help="with --batch_sizes: images per chunk")
    parser.add_argument("--plain_up_to", type=int, default=None,
                        help="with --batch_sizes: time the plain step only up to this batch (it stops "
                             "fitting in memory)")
    parser.add_argument("--profile_dir", default=None,
                        help="also trace two steps of each case with tf.profiler into this directory "
                             "and print the time per op type")
    args = parser.parse_args(argv)
    if args.no_xla and args.xla_only:
        parser.error("--no_xla and --xla_only exclude each other: pass at most one.")
    if args.steps < 1 or args.warmup_steps < 0:
        parser.error(f"--steps must be >= 1 and --warmup_steps >= 0. "
                     f"Received: {args.steps}, {args.warmup_steps}.")
    return args


def _select_cases(args: argparse.Namespace) -> list[Case]:
    known = {**CASES, **QUICK_CASES, **EXTRA_CASES}
    if args.models is None:
        return list((QUICK_CASES if args.quick else CASES).values())
    if args.models == "none":
        return []
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"--models: unknown case(s) {unknown}. Choose from {', '.join(known)} or 'none'.")
    return [known[name] for name in names]


def _input_gradient_label(choice: str) -> str:
    if choice == "auto":
        return f"auto ({conv_gradients_for(strategy_devices()).describe()})"
    return "forward convolutions" if choice == "forward" else "TensorFlow's Conv2DBackpropInput"


def device_line(devices=None) -> str:
    """The device the steps run on, so a figure can be put beside published ones: the GPU's name
    (and compute capability) from TensorFlow's device details, or the CPU's model."""
    devices = devices or strategy_devices()
    return f"device {devices.describe()}"


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.batch_sizes:  # the chunked step's table (issue 28)
        from experiments.benchmark_chunks import memory_table

        depths = sorted({case.resnet_depth for case in _select_cases(args)} if args.models else {18, 50})
        print(f"chunked step: {device_line()}, {os.cpu_count()} CPU cores, precision {args.precision}; "
              f"{load_average()}", flush=True)
        rows = memory_table(depths, [int(b) for b in args.batch_sizes.split(",")], args.chunk_size,
                            precision=args.precision, steps=args.steps, warmup_steps=args.warmup_steps,
                            plain_up_to=args.plain_up_to)
        return {"chunk_rows": rows}
    cases = _select_cases(args)
    if args.inter_op_threads or args.intra_op_threads:
        # Must run before TensorFlow executes its first op.
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    keras.mixed_precision.set_global_policy(args.precision)
    print(f"simclr_tf benchmark: TensorFlow {tf.__version__}, Keras {keras.__version__}, "
          f"{device_line()}, {os.cpu_count()} CPU cores, precision {args.precision}"
          f"{', Keras composite batch norm' if args.keras_batch_norm else ''}"
          f", conv input gradient {_input_gradient_label(args.conv_input_gradient)}, kernel gradient "
          f"{args.conv_filter_gradient}; {load_average()}",
          flush=True)
    started = time.perf_counter()

    peak_gflops, peak_per_cpu = args.peak, None
    if peak_gflops is None and not args.no_peak:
        if args.quick:
            peaks = measure_peak(matmul_sizes=(256, 512), conv_shapes=((8, 16, 64),), repeats=3)
        else:
            peaks = measure_peak()
        print("\npeak (float32, best of 5 each):")
        for result in peaks:
            print(f"  {result.name:<26} {result.gflops:8.1f} GFLOP/s  "
                  f"({result.gflops_per_cpu_second:6.1f} per CPU-second)")
        peak_gflops = max(result.gflops for result in peaks)
        peak_per_cpu = max(result.gflops_per_cpu_second for result in peaks)
        print(f"  {'measured peak':<26} {peak_gflops:8.1f} GFLOP/s  ({peak_per_cpu:6.1f} per CPU-second; "
              f"{load_average()})", flush=True)

    jit_modes = [False] if args.no_xla else [True] if args.xla_only else [False, True]
    global_bn = {"default": None, "on": True, "off": False}[args.global_bn]
    rows = []
    if cases:
        print("\ntraining steps (warm-up excluded):", flush=True)
        rows = run_step_benchmarks(cases, jit_modes, warmup_steps=args.warmup_steps, steps=args.steps,
                                   max_seconds=args.max_seconds_per_case, global_bn=global_bn,
                                   keras_batch_norm=args.keras_batch_norm,
                                   conv_input_gradient=args.conv_input_gradient,
                                   conv_filter_gradient=args.conv_filter_gradient)
        print()
        print(format_table(rows, peak_gflops, peak_per_cpu))
        print(f"  ({load_average()}; 'cores': CPU time / wall time of the process during the timed steps)")

    pipeline = {}
    if not args.no_pipeline:
        print("\ninput pipeline alone (two views per image):", flush=True)
        sizes = ((32, 4, 64),) if args.quick else ((32, 64, 512), (224, 8, 256))
        for image_size, batch_size, num_images in sizes:
            timing = time_input_pipeline(image_size, batch_size, num_images=num_images,
                                         batches=5 if args.quick else 20)
            # Both compete for the same cores, so compare images per CPU-second: what each would do
            # with the whole machine, whatever share the other jobs left it during its measurement.
            consumers = [r for r in rows if r.case.image_size == image_size]
            fastest = max(consumers, key=lambda r: r.timing.images_per_second / max(r.timing.cpu_cores, 1e-9),
                          default=None)
            if fastest is None:
                verdict = "no training step at this size timed"
            else:
                ratio = timing.images_per_cpu_second / (
                    fastest.timing.images_per_second / max(fastest.timing.cpu_cores, 1e-9))
                verdict = (f"{ratio:.0f}x the {fastest.case.name} step (XLA "
                           f"{'on' if fastest.jit_compile else 'off'}) per CPU-second: "
                           + ("keeps up (>= 2x)" if ratio >= 2 else "TOO SLOW (< 2x)"))
            print(f"  {image_size:>3} px, batch {batch_size:>3}: {timing.images_per_second:8.1f} images/s "
                  f"({timing.cpu_cores:.2f} cores)  {verdict}")
            pipeline[image_size] = timing

    profiles = {}
    if args.profile_dir:
        print("\nprofile (time per op type over 2 steps, summed over the executor threads):", flush=True)
        for case in cases:
            for jit_compile in jit_modes:
                _clear_session()
                model = build_train_model(case, jit_compile=jit_compile, global_bn=global_bn,
                                          keras_batch_norm=args.keras_batch_norm)
                batch = synthetic_batch(case.batch_size, case.image_size)
                logdir = os.path.join(args.profile_dir, f"{case.name}_xla_{'on' if jit_compile else 'off'}")
                summary = profile_train_step(model, batch, logdir)
                profiles[(case.name, jit_compile)] = summary
                total = sum(seconds for _, seconds in summary) or 1.0
                print(f"  {case.name} jit_compile={jit_compile} ({logdir}):")
                for op_type, seconds in summary:
                    print(f"    {op_type:<40} {seconds:7.2f} s {seconds / total:6.1%}")

    print(f"\npeak resident memory: {peak_rss_mib():.0f} MiB; "
          f"total time {time.perf_counter() - started:.0f} s")
    return {"peak_gflops": peak_gflops, "rows": rows, "pipeline": pipeline, "profiles": profiles}


if __name__ == "__main__":
    main()
