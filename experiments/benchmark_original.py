"""The original SimCLR TF2 code against simclr_tf: the training step side by side, on this machine.

Times the training step of google-research/simclr's `tf2/` code (commit 383d414) and of simclr_tf
through the same protocol in one run: ResNet-18 and ResNet-50 with the CIFAR stem, 32 px, batch 64,
LARS, float32, the first call (tracing, compilation) and warm-up steps excluded, and the clock
stopped only once the last step's results are on the host. Rounds interleave the two (original,
simclr_tf, original with XLA, then again), so that load drifting on a shared machine hits both.

The original runs in a subprocess with its own environment (tf-keras as `tf.keras`,
`TF_USE_LEGACY_KERAS=1`), built and stepped with its own code: `model.Model`, its
`WarmUpAndCosineDecay` and `build_optimizer` (`lars_optimizer.LARSOptimizer`), metrics from
`tf.keras.metrics.Mean` updated by its `metrics` functions, `objective.add_contrastive_loss` and
`add_supervised_loss`, `model.add_weight_decay`, under the strategy its `run.py` picks off TPU
(`tf.distribute.MirroredStrategy()`), with the flags of its `run.py` (defaults, `global_bn` on,
`proj_head_mode=nonlinear` with 3 layers, linear evaluation while pretraining) set to this setting:
`--resnet_depth`, `--image_size=32` (its CIFAR stem), `--train_batch_size=64`, `--temperature=0.5`
and `--use_blur=False` (its CIFAR-10 recipe; our step has no blur either). The step is a
`tf.function` (with `jit_compile` for the XLA column) around `strategy.run` of the same forward
pass, losses, metric updates, gradient and `apply_gradients` as `single_step` in its `run.py`,
called once per step on device-resident inputs (views stacked on channels, one-hot labels, as its
input pipeline makes them). One shim, no change to what is computed: tf-keras 2.21 rejects the
`Dense(-1)` that the original's projection-head `LinearLayer` creates and sizes in its own `build`,
so a placeholder width stands in until then. Its `run.py` loops `steps_per_loop` steps inside one
`tf.function` and writes an image summary every `steps_per_loop` steps; neither changes a ~1 s step
measurably.

simclr_tf's step is the one `experiments/benchmark.py` times (`build_train_model`,
`synthetic_batch`, `time_train_step`: the compiled `fit` train function), in float32 (set
explicitly: the default `--precision=auto` picks bfloat16 on CPUs that have it) and without XLA.

Get the original code and tf-keras first (neither goes into this repository or its venv):

1. the original's `tf2/` folder, e.g.
   `git clone https://github.com/google-research/simclr /tmp/simclr && git -C /tmp/simclr checkout
   383d414 && cp -r /tmp/simclr/tf2 /tmp/original_simclr/` (or write its `run.py`, `model.py`,
   `resnet.py`, `lars_optimizer.py`, `objective.py`, `metrics.py`, `data.py`, `data_util.py` there);
2. `.venv/bin/pip install --target /tmp/tfkeras --no-deps "tf-keras~=2.21.0"`.

Usage (about 10 minutes on 2 CPU cores; on a shared machine under the heavy-job lock):

```
flock /tmp/heavy.lock .venv/bin/python experiments/benchmark_original.py \
    --original_dir=/tmp/original_simclr/tf2 --models=resnet18,resnet50 --xla
```

It prints one line per timed measurement, then a table (images/s of each round, the ratio of
medians: simclr_tf over the faster of the original's columns) with the date, CPU and versions.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence

DEPTHS = {"resnet18": 18, "resnet50": 50}
NAMES = {18: "ResNet-18", 50: "ResNet-50"}
ORIGINAL_FILES = ("run.py", "model.py", "resnet.py", "lars_optimizer.py", "objective.py", "metrics.py",
                  "data.py", "data_util.py")
NUM_CLASSES = 10  # the online linear head of both, as on CIFAR-10
TEMPERATURE = 0.5  # the CIFAR setting of both
GET_ORIGINAL = ("git clone https://github.com/google-research/simclr /tmp/simclr && "
                "git -C /tmp/simclr checkout 383d414 && cp -r /tmp/simclr/tf2 /tmp/original_simclr/")
GET_TF_KERAS = '.venv/bin/pip install --target /tmp/tfkeras --no-deps "tf-keras~=2.21.0"'


# --- arguments and environment -----------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original_dir", required=True,
                        help="the original's tf2/ folder (see the module docstring for how to get it)")
    parser.add_argument("--tf_keras_dir", default="/tmp/tfkeras",
                        help="where tf-keras was installed with pip --target ('' : an installed tf-keras)")
    parser.add_argument("--models", default="resnet18,resnet50",
                        help=f"comma-separated models of {', '.join(DEPTHS)}")
    parser.add_argument("--xla", action="store_true", help="also time the original with jit_compile")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per model")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    parser.add_argument("--warmup_steps", type=int, default=1, help="untimed steps after the first call")
    parser.add_argument("--batch_size", type=int, default=64, help="source images per step")
    parser.add_argument("--image_size", type=int, default=32,
                        help="view side in pixels (<= 32: the CIFAR stem, as the original decides)")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [name for name in names if name not in DEPTHS]
    if not names or unknown:
        parser.error(f"--models takes a comma-separated list of {', '.join(DEPTHS)}. "
                     f"Received: {args.models!r}.")
    args.depths = [DEPTHS[name] for name in names]
    for name in ("rounds", "steps", "batch_size", "image_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1. Received: {getattr(args, name)}.")
    if args.warmup_steps < 0:
        parser.error(f"--warmup_steps must be >= 0. Received: {args.warmup_steps}.")
    return args


def check_original_dir(original_dir: str) -> str:
    """The absolute path of the original's `tf2/` folder; exits with how to get it if it is not there."""
    path = os.path.abspath(os.path.expanduser(original_dir))
    missing = [name for name in ORIGINAL_FILES if not os.path.isfile(os.path.join(path, name))]
    if missing:
        found = "does not exist" if not os.path.isdir(path) else f"lacks {', '.join(missing)}"
        raise SystemExit(
            f"--original_dir={original_dir!r} {found}: it must be the tf2/ folder of "
            f"google-research/simclr (commit 383d414) with {', '.join(ORIGINAL_FILES)}. "
            f"Get it with: {GET_ORIGINAL}")
    return path


def original_env(original_dir: str, tf_keras_dir: str, base: dict | None = None) -> dict:
    """The environment of the original's process: its folder and tf-keras first on the path, Keras 2."""
    env = dict(os.environ if base is None else base)
    paths = [p for p in (tf_keras_dir, original_dir, env.get("PYTHONPATH", "")) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["TF_USE_LEGACY_KERAS"] = "1"  # tf.keras is tf-keras, as the original needs
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def require_tf_keras(env: dict, python: Sequence[str] = (sys.executable,)) -> str:
    """Where `python` finds tf-keras in `env`; exits with how to install it if it finds none."""
    code = "import importlib.util as u; s = u.find_spec('tf_keras'); print(s.origin if s else '')"
    done = subprocess.run([*python, "-c", code], env=env, capture_output=True, text=True)
    origin = done.stdout.strip()
    if done.returncode != 0 or not origin:
        raise SystemExit(
            "tf-keras is missing: the original code needs it as tf.keras (TF_USE_LEGACY_KERAS=1). "
            f"Install it outside our venv with: {GET_TF_KERAS}, then pass --tf_keras_dir=/tmp/tfkeras. "
            f"Searched PYTHONPATH={env.get('PYTHONPATH', '')!r}.")
    return origin


def fingerprint(original_dir: str) -> str:
    """A short SHA-256 of the original's files, so two runs can tell they timed the same code."""
    digest = hashlib.sha256()
    for name in ORIGINAL_FILES:
        with open(os.path.join(original_dir, name), "rb") as f:
            digest.update(name.encode() + b"\0" + f.read())
    return digest.hexdigest()[:12]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return "unknown CPU"
    names = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")]
    bf16 = "yes" if "avx512_bf16" in info else "no"
    return f"{names[0] if names else 'unknown CPU'} ({os.cpu_count()} cores, AVX512_BF16 {bf16})"


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- the table -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Row:
    """Images/s of one model, one value per round of each column (`original_xla` None: not timed)."""

    model: str
    original: tuple[float, ...]
    original_xla: tuple[float, ...] | None
    ours: tuple[float, ...]

    @property
    def ratio(self) -> float:
        """simclr_tf's median over the faster of the original's medians."""
        best = statistics.median(self.original)
        if self.original_xla:
            best = max(best, statistics.median(self.original_xla))
        return statistics.median(self.ours) / best


def format_table(rows: Sequence[Row]) -> str:
    """A Markdown table: images/s per round (`a / b`), and the ratio of medians."""
    def cell(values):
        if values is None:
            return "not timed"
        return " / ".join(f"{v:.1f}" for v in values) if values else "failed (see the log lines)"

    lines = ["| training step, images/s | original tf2 code | original + XLA | simclr_tf | ratio |",
             "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row.model} | {cell(row.original)} | {cell(row.original_xla)} | {cell(row.ours)} "
                     f"| {row.ratio:.2f}x |")
    return "\n".join(lines)


# --- the original's side: a subprocess serving one JSON request per line ---------------------------------


class OriginalProcess:
    """The original code in its own process (tf-keras), timing steps on request."""

    def __init__(self, args: argparse.Namespace, env: dict):
        self.log = tempfile.NamedTemporaryFile("w+", prefix="benchmark_original_", suffix=".log",
                                               delete=False)
        command = [sys.executable, os.path.abspath(__file__), "--worker",
                   f"--original_dir={args.original_dir}", f"--image_size={args.image_size}",
                   f"--batch_size={args.batch_size}"]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.log, env=env, text=True)

    def request(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        reply = json.loads(line) if line else {"error": "the process ended"}
        if "error" in reply:
            self.log.flush()
            raise RuntimeError(f"The original's process failed on {request}: {reply['error']}\n"
                               f"(its log: {self.log.name})")
        return reply

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=60)
        self.log.close()


def _worker(argv: Sequence[str]) -> None:
    """Runs in the original's environment: builds its model and times its training step on request."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--original_dir", required=True)
    parser.add_argument("--image_size", type=int, required=True)
    parser.add_argument("--batch_size", type=int, required=True)
    args = parser.parse_args(argv)
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything printed goes to the log, not into the replies
    sys.path.insert(0, args.original_dir)

    import numpy as np
    import tensorflow as tf
    from absl import flags

    # The original's modules, from --original_dir (run defines its flags).
    import metrics  # isort: skip
    import model as model_lib  # isort: skip
    import objective as obj_lib  # isort: skip
    import run  # noqa: F401  # isort: skip

    # The one shim: the original's LinearLayer makes `Dense(-1)` and sets `units` in its own `build`, before
    # the Dense builds; tf-keras 2.21 rejects -1 at construction, so a placeholder 1 stands in until then.
    dense_init = tf.keras.layers.Dense.__init__

    def dense_init_deferred_units(self, units, *args, **kwargs):
        dense_init(self, 1 if units == -1 else units, *args, **kwargs)

    tf.keras.layers.Dense.__init__ = dense_init_deferred_units
    flags_ = flags.FLAGS
    flags_(["run.py", "--use_tpu=False", "--train_mode=pretrain", f"--image_size={args.image_size}",
            f"--train_batch_size={args.batch_size}", f"--temperature={TEMPERATURE}", "--use_blur=False"])
    strategy = tf.distribute.MirroredStrategy()  # run.py's choice with --use_tpu=False
    rng = np.random.default_rng(0)
    shape = (args.batch_size, args.image_size, args.image_size, 3)
    views = [rng.uniform(size=shape).astype(np.float32) for _ in range(2)]
    features = tf.constant(np.concatenate(views, -1))  # (B, H, W, 6): views stacked on channels
    labels = {"labels": tf.one_hot(rng.integers(0, NUM_CLASSES, args.batch_size), NUM_CLASSES)}
    steps = {}

    def build(depth: int, xla: bool):
        flags_.resnet_depth = depth
        with strategy.scope():
            model = model_lib.Model(NUM_CLASSES)
            optimizer = model_lib.build_optimizer(model_lib.WarmUpAndCosineDecay(flags_.learning_rate, 50000))
            names = ("weight_decay", "total_loss", "contrast_loss", "contrast_acc", "contrast_entropy",
                     "supervised_loss", "supervised_acc")
            mean = {name: tf.keras.metrics.Mean(f"train/{name}") for name in names}

        def single_step(features, labels):  # the forward, losses, metrics and update of run.py's step
            with tf.GradientTape() as tape:
                projection, supervised = model(features, training=True)
                con_loss, logits_con, labels_con = obj_lib.add_contrastive_loss(
                    projection, hidden_norm=flags_.hidden_norm, temperature=flags_.temperature,
                    strategy=strategy)
                metrics.update_pretrain_metrics_train(mean["contrast_loss"], mean["contrast_acc"],
                                                      mean["contrast_entropy"], con_loss, logits_con,
                                                      labels_con)
                sup_labels = tf.concat([labels["labels"], labels["labels"]], 0)  # both views
                sup_loss = obj_lib.add_supervised_loss(labels=sup_labels, logits=supervised)
                metrics.update_finetune_metrics_train(mean["supervised_loss"], mean["supervised_acc"],
                                                      sup_loss, sup_labels, supervised)
                weight_decay = model_lib.add_weight_decay(model, adjust_per_optimizer=True)
                mean["weight_decay"].update_state(weight_decay)
                loss = con_loss + sup_loss + weight_decay
                mean["total_loss"].update_state(loss)
                loss = loss / strategy.num_replicas_in_sync
                grads = tape.gradient(loss, model.trainable_variables)
                optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))

        @tf.function(jit_compile=xla)
        def train_step(features, labels):
            strategy.run(single_step, (features, labels))

        def step():
            train_step(features, labels)

        def sync():
            return float(mean["total_loss"].result())  # waits for the last step

        return step, sync

    def serve(request: dict) -> dict:
        if request["op"] == "versions":
            import tf_keras

            if not tf.keras.__name__.startswith("tf_keras"):
                raise RuntimeError(f"tf.keras is {tf.keras.__name__}, not tf-keras: is TF_USE_LEGACY_KERAS "
                                   "unset?")
            return {"tensorflow": tf.__version__, "tf_keras": tf_keras.__version__,
                    "replicas": strategy.num_replicas_in_sync}
        key = (request["depth"], request["xla"])
        if request["op"] == "build":
            step, sync = steps[key] = build(*key)
            start = time.perf_counter()
            step()
            sync()
            first = time.perf_counter() - start
            for _ in range(request["warmup_steps"]):
                step()
            sync()
            return {"first_step_seconds": first}
        if request["op"] == "time":
            step, sync = steps[key]
            cpu_start, start = _cpu_seconds(), time.perf_counter()
            for _ in range(request["steps"]):
                step()
            loss = sync()
            wall = time.perf_counter() - start
            return {"seconds": wall, "cpu_seconds": _cpu_seconds() - cpu_start, "loss": loss}
        raise ValueError(f"unknown request {request!r}")

    for line in sys.stdin:
        try:
            reply = serve(json.loads(line))
        except Exception:  # the driver shows it and stops
            reply = {"error": traceback.format_exc()}
        channel.write(json.dumps(reply) + "\n")
        channel.flush()


# --- simclr_tf's side and the rounds ---------------------------------------------------------------------


def _our_step(depth: int, args: argparse.Namespace) -> Callable[[], tuple[float, float, float]]:
    """simclr_tf's float32 step, no XLA, from experiments/benchmark.py: returns a timing function."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import benchmark  # experiments/benchmark.py
    import keras

    keras.mixed_precision.set_global_policy("float32")  # not the default `auto` (bfloat16 on this CPU)
    benchmark._clear_session()
    case = benchmark.Case(f"resnet{depth}", depth, args.image_size, args.batch_size, args.image_size <= 32)
    model = benchmark.build_train_model(case, jit_compile=False, num_classes=NUM_CLASSES)
    if model.compute_dtype != "float32" or any(v.dtype != "float32" for v in model.trainable_variables):
        raise RuntimeError(f"simclr_tf's model is not float32 (compute dtype {model.compute_dtype}).")
    batch = benchmark.synthetic_batch(args.batch_size, args.image_size, NUM_CLASSES)

    def timed() -> tuple[float, float, float]:
        timing = benchmark.time_train_step(model, batch, warmup_steps=args.warmup_steps, steps=args.steps)
        return timing.seconds_per_step * timing.steps, timing.cpu_cores, timing.first_step_seconds

    return timed


def run_rounds(args: argparse.Namespace, original: OriginalProcess, log: Callable[[str], None] = print
               ) -> list[Row]:
    """For each model: build both, then `rounds` x (original, simclr_tf, original + XLA)."""
    rows = []
    modes = [False, True] if args.xla else [False]
    for depth in args.depths:
        name = NAMES[depth]
        columns = ["original", "ours"]
        for xla in modes:
            try:
                first = original.request(op="build", depth=depth, xla=xla, warmup_steps=args.warmup_steps)
            except RuntimeError as error:
                if not xla:
                    raise
                log(f"  {name} original + XLA: FAILED, not timed: {str(error).strip().splitlines()[-2:]}")
                continue
            if xla:
                columns.append("original_xla")
            log(f"  {name} original{' + XLA' if xla else ''}: built, first step "
                f"{first['first_step_seconds']:.1f} s")
        ours = _our_step(depth, args)
        results = {"original": [], "original_xla": [], "ours": []}
        for round_ in range(1, args.rounds + 1):
            for column in columns:
                if column == "ours":
                    seconds, cores, _ = ours()
                else:
                    reply = original.request(op="time", depth=depth, xla=column == "original_xla",
                                             steps=args.steps)
                    seconds, cores = reply["seconds"], reply["cpu_seconds"] / reply["seconds"]
                images_per_second = args.batch_size * args.steps / seconds
                results[column].append(images_per_second)
                log(f"  {name} round {round_} {column:<12}: {images_per_second:6.2f} images/s "
                    f"({seconds / args.steps:.2f} s/step over {args.steps} steps, {cores:.2f} cores)")
        rows.append(Row(name, tuple(results["original"]),
                        tuple(results["original_xla"]) if args.xla else None, tuple(results["ours"])))
    return rows


def main(argv: Sequence[str] | None = None) -> list[Row]:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--worker" in argv:
        _worker(argv)
        return []
    args = parse_args(argv)
    args.original_dir = check_original_dir(args.original_dir)
    env = original_env(args.original_dir, os.path.abspath(args.tf_keras_dir) if args.tf_keras_dir else "")
    tf_keras = require_tf_keras(env)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    started = datetime.datetime.now(datetime.UTC)
    original = OriginalProcess(args, env)
    try:
        versions = original.request(op="versions")
        print(f"Original SimCLR TF2 code ({args.original_dir}, sha256 {fingerprint(args.original_dir)}; "
              f"TensorFlow {versions['tensorflow']}, tf-keras {versions['tf_keras']} from "
              f"{os.path.dirname(os.path.dirname(tf_keras))}, {versions['replicas']} replica) vs simclr_tf "
              f"(TensorFlow {tf.__version__}, Keras 3)", flush=True)
        print(f"{started:%Y-%m-%d %H:%M} UTC, {cpu_model()}, load average "
              f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
        print(f"training step: CIFAR stem, {args.image_size} px, batch {args.batch_size}, LARS, float32, "
              f"{args.warmup_steps} warm-up step(s) after the first call excluded, {args.steps} timed steps "
              f"per measurement, {args.rounds} interleaved round(s)", flush=True)
        rows = run_rounds(args, original, log=lambda line: print(line, flush=True))
    finally:
        original.close()
    minutes = (datetime.datetime.now(datetime.UTC) - started).total_seconds() / 60
    print()
    print(format_table(rows))
    print(f"\n(ratio: simclr_tf's median over the faster original column's median; load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; {minutes:.1f} min)")
    return rows


if __name__ == "__main__":
    main()
