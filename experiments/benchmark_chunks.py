"""Memory and time of the chunked train step (`--chunk_size`) against the plain one.

`experiments/benchmark.py --batch_sizes=256,1024,4096 --chunk_size=128` runs this table: for each
model and batch, the plain step (where it fits in memory) and the step in chunks of `chunk_size`,
and the plain step of one chunk (the memory goal's reference), each in a fresh process so that its
peak resident memory (`ru_maxrss`) is its own. A row gives the peak resident memory of the process,
the memory the steps added to the built model (peak minus the resident memory before the first step),
the seconds per step and the source images per second (warm-up excluded).

Goals (issue 28): the chunked step's added memory at most 1.3x that of the plain step of one chunk
plus the batch's embeddings; its time at most 1.4x the plain step's (one more forward pass).

Run one case alone (what the table's processes do):

    python experiments/benchmark_chunks.py --depth=18 --batch_size=1024 --chunk_size=128
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

if __name__ == "__main__":  # run as a script from anywhere: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_case(depth: int, image_size: int, batch_size: int, chunk_size: int, precision: str,
             steps: int, warmup_steps: int) -> dict:
    """One case in this process: builds the model, times `steps` steps after warm-up, and reads
    the peak resident memory."""
    import keras
    import tensorflow as tf

    import experiments.benchmark as benchmark

    keras.mixed_precision.set_global_policy(precision)
    case = benchmark.Case(f"resnet{depth}_cifar{image_size}", depth, image_size, batch_size, True)
    model = benchmark.build_train_model(case, jit_compile=False, chunk_size=chunk_size)
    batch = benchmark.synthetic_batch(batch_size, image_size)
    tf.nest.map_structure(lambda t: t.numpy(), batch)
    before = _rss_mib()
    timing = benchmark.time_train_step(model, batch, warmup_steps=warmup_steps, steps=steps)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"depth": depth, "image_size": image_size, "batch_size": batch_size, "chunk_size": chunk_size,
            "precision": precision, "peak_mib": peak, "before_step_mib": before,
            "step_mib": peak - before, "seconds_per_step": timing.seconds_per_step,
            "images_per_second": timing.images_per_second, "first_step_seconds": timing.first_step_seconds,
            "steps": timing.steps, "cpu_cores": timing.cpu_cores}


def run_in_process(depth, image_size, batch_size, chunk_size, precision, steps, warmup_steps,
                   memory_limit_mib=None, timeout=None) -> dict:
    """`run_case` in a fresh process (its own peak memory); an out-of-memory or a crash comes back as
    a row saying so."""
    command = [sys.executable, os.path.abspath(__file__), f"--depth={depth}", f"--image_size={image_size}",
               f"--batch_size={batch_size}", f"--chunk_size={chunk_size}", f"--precision={precision}",
               f"--steps={steps}", f"--warmup_steps={warmup_steps}"]
    preexec = None
    if memory_limit_mib:
        limit = int(memory_limit_mib * 1024 * 1024)

        def preexec():  # the address space: an allocation past it fails instead of swapping the machine
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    row = {"depth": depth, "image_size": image_size, "batch_size": batch_size, "chunk_size": chunk_size,
           "precision": precision}
    started = time.perf_counter()
    try:
        process = subprocess.run(command, capture_output=True, text=True, timeout=timeout, preexec_fn=preexec)
    except subprocess.TimeoutExpired:
        return {**row, "error": f"no result in {timeout} s"}
    if process.returncode != 0:
        signs = ("OOM", "MemoryError", "bad_alloc", "ResourceExhausted", "Cannot allocate")
        out_of_memory = any(sign in process.stderr for sign in signs) or process.returncode in (-9, 137)
        last = process.stderr.strip().splitlines()[-1][:200] if process.stderr.strip() else ""
        reason = "out of memory" if out_of_memory else f"exit {process.returncode}: {last}"
        return {**row, "error": reason, "wall_seconds": time.perf_counter() - started}
    return json.loads(process.stdout.strip().splitlines()[-1])


def memory_table(depths, batch_sizes, chunk_size, *, image_size=32, precision="float32", steps=1,
                 warmup_steps=0, memory_limit_mib=None, timeout=None, plain_up_to=None,
                 printer=print) -> list:
    """The table of the module docstring: rows for each depth and batch, plain and chunked."""
    rows = []
    for depth in depths:
        cases = [(chunk_size, 0)]  # the plain step of one chunk: the memory goal's reference
        for batch in batch_sizes:
            if plain_up_to is None or batch <= plain_up_to:
                cases.append((batch, 0))
            if chunk_size and chunk_size < batch:
                cases.append((batch, chunk_size))
        for batch, chunk in cases:
            row = run_in_process(depth, image_size, batch, chunk, precision, steps, warmup_steps,
                                 memory_limit_mib=memory_limit_mib, timeout=timeout)
            rows.append(row)
            printer(format_row(row), flush=True)
    return rows


def format_row(row) -> str:
    name = f"ResNet-{row['depth']} {row['image_size']} px batch {row['batch_size']:>5}"
    mode = f"chunks of {row['chunk_size']}" if row["chunk_size"] else "plain"
    if "error" in row:
        return f"  {name}  {mode:<15} {row['error']}"
    return (f"  {name}  {mode:<15} peak {row['peak_mib']:8.0f} MiB  step +{row['step_mib']:8.0f} MiB  "
            f"{row['seconds_per_step']:8.1f} s/step  {row['images_per_second']:7.1f} images/s  "
            f"({row['cpu_cores']:.1f} cores)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=18)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--chunk_size", type=int, default=0)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--warmup_steps", type=int, default=0)
    args = parser.parse_args(argv)
    row = run_case(args.depth, args.image_size, args.batch_size, args.chunk_size, args.precision, args.steps,
                   args.warmup_steps)
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
