"""Does TensorFlow's CPU gradient of a strided convolution with few channels corrupt the heap?

An earlier `simclr_tf.models.conv` cited "free(): invalid size" aborts from TensorFlow 2.21's
`Conv2DBackpropInput` / `Conv2DBackpropFilter` on a 2-core AVX-512 CPU for strided convolutions
with 4 or 8 input channels, and routed those gradients around TensorFlow's kernels on every
machine. This script is the stand-alone check: each case runs TensorFlow's own gradients (no
simclr_tf code) of one strided convolution many times in a fresh process, with glibc's heap
checking on (`MALLOC_CHECK_=3`, `MALLOC_PERTURB_`), and reports whether the process crashed.

    python experiments/repro_conv_heap.py [--iterations 20] [--batches 8,256]

Result on this repository's 2-core Intel Sapphire Rapids (AVX-512, AVX512_BF16, AMX), TensorFlow
2.21, 2026: no case crashed (see the module docstring of `simclr_tf.models.conv`).
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys

# (kernel, stride, input channels, output channels, input side)
CASES = [
    (1, 2, 4, 16, 16),
    (1, 2, 8, 32, 16),
    (3, 2, 3, 16, 16),
    (3, 2, 4, 16, 16),
    (3, 2, 4, 16, 32),
]

_CHILD = """
import sys
import tensorflow as tf
kernel, stride, c_in, c_out, side, batch, iterations, dtype, padding, compiled = sys.argv[1:]
kernel, stride, c_in, c_out, side, batch, iterations = map(int, (kernel, stride, c_in, c_out, side,
                                                                 batch, iterations))
dtype = tf.as_dtype(dtype)
x = tf.Variable(tf.random.normal([batch, side, side, c_in]))
w = tf.Variable(tf.random.normal([kernel, kernel, c_in, c_out]))

def step():
    with tf.GradientTape() as tape:
        y = tf.nn.conv2d(tf.cast(x, dtype), tf.cast(w, dtype), strides=stride, padding=padding)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
    dx, dw = tape.gradient(loss, [x, w])
    return tf.reduce_sum(dx) + tf.reduce_sum(dw)

if compiled == "1":
    step = tf.function(step)
total = 0.0
for _ in range(iterations):
    total += float(step())
print("ok", total)
"""


def run_case(kernel, stride, c_in, c_out, side, batch, iterations, dtype, padding, compiled):
    """Runs one case in a fresh process; returns (crashed, what it said last)."""
    env = dict(os.environ, MALLOC_CHECK_="3", MALLOC_PERTURB_="165", TF_CPP_MIN_LOG_LEVEL="2")
    args = [str(a) for a in (kernel, stride, c_in, c_out, side, batch, iterations, dtype, padding,
                             int(compiled))]
    done = subprocess.run([sys.executable, "-c", _CHILD, *args], env=env, capture_output=True,
                          text=True, timeout=900)
    said = done.stdout.strip().splitlines()
    crashed = done.returncode != 0 or not said or not said[-1].startswith("ok")
    return crashed, done.returncode, (done.stderr.strip().splitlines() or [""])[-1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--batches", default="8,256")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--graph_too", action="store_true", help="also each case in a tf.function")
    args = parser.parse_args(argv)
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    import tensorflow as tf  # only for the version line; the cases run in their own processes

    print(f"CPU: {model}; {os.cpu_count()} cores; TensorFlow {tf.__version__}", flush=True)
    crashes = 0
    runs = 0
    for (kernel, stride, c_in, c_out, side), batch, dtype, padding, compiled in itertools.product(
            CASES, [int(b) for b in args.batches.split(",")], args.dtypes.split(","),
            ("VALID", "SAME"), (False, True) if args.graph_too else (False,)):
        crashed, code, last = run_case(kernel, stride, c_in, c_out, side, batch, args.iterations,
                                       dtype, padding, compiled)
        runs += 1
        crashes += crashed
        print(f"{kernel}x{kernel} stride {stride}, {c_in}->{c_out} channels, {side}px, batch {batch}, "
              f"{dtype}, {padding}, {'tf.function' if compiled else 'eager'}: "
              f"{'CRASHED (exit ' + str(code) + '): ' + last if crashed else 'ok'}", flush=True)
    print(f"{crashes} of {runs} cases crashed ({args.iterations} iterations each, MALLOC_CHECK_=3).")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
