"""Benchmark: the logistic linear evaluation (`--linear_eval_protocol=logistic`) at 60,000 x 512.

Times `simclr_tf.evaluation.logistic_regression_eval`, the protocol a run on an image folder gets,
on features the size a ResNet-18 gives for Fashion-MNIST: the 60,000 training and 10,000 test images'
raw pixels (from the Debian package dataset-fashion-mnist, /usr/share/datasets/fashion-mnist),
scaled to [0, 1], projected to 512 dimensions by a fixed random Gaussian matrix (seed 0) and passed
through a ReLU. It prints the seconds, the chosen C, the validation and test top-1, the load average
and which library ran. It only calls `logistic_regression_eval`, so an older checkout runs it too:
`PYTHONPATH=/tmp/old python experiments/benchmark_linear_eval.py` times that checkout's code.

`--reference` also fits the usual baseline, scikit-learn's LogisticRegression on the standardised raw
pixels with all 60,000 labels (84.1% on the test images with scikit-learn's defaults).

Usage:

```
python experiments/benchmark_linear_eval.py                  # about a minute on 2 cores
python experiments/benchmark_linear_eval.py --examples=6000  # a tenth of the training images
```
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import logging
import os
import sys
import time

if __name__ == "__main__":  # run as a script: the repository's library, unless PYTHONPATH names another
    if importlib.util.find_spec("simclr_tf") is None:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def read_idx(path: str) -> np.ndarray:
    """An IDX file (the MNIST format: big-endian dimensions after a 4-byte magic) as a uint8 array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_mnist(root: str = FASHION_MNIST):
    """(train_pixels, train_labels, test_pixels, test_labels): pixels float32 (N, 784) in [0, 1]."""
    def part(prefix):
        images = read_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte.gz"))
        labels = read_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte.gz"))
        return images.reshape(len(images), -1).astype(np.float32) / 255.0, labels.astype(np.int64)

    return (*part("train"), *part("t10k"))


def random_features(pixels: np.ndarray, dim: int = 512, seed: int = 0) -> np.ndarray:
    """ReLU of a fixed random Gaussian projection: (N, 784) -> (N, dim) float32."""
    matrix = np.random.default_rng(seed).standard_normal((pixels.shape[1], dim)).astype(np.float32)
    return np.maximum(pixels @ (matrix / np.sqrt(pixels.shape[1])), 0.0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=60000, help="training images used (the first N)")
    parser.add_argument("--dim", type=int, default=512, help="feature dimensions")
    parser.add_argument("--reference", action="store_true",
                        help="also fit LogisticRegression on the standardised raw pixels")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import simclr_tf
    from simclr_tf import evaluation

    print(f"library: {os.path.dirname(simclr_tf.__file__)}")
    x_train, y_train, x_test, y_test = fashion_mnist()
    x_train, y_train = x_train[: args.examples], y_train[: args.examples]
    f_train, f_test = random_features(x_train, args.dim), random_features(x_test, args.dim)
    print(f"features: {f_train.shape} train, {f_test.shape} test (Fashion-MNIST pixels, random "
          f"projection + ReLU); load average before: {os.getloadavg()[0]:.1f}")
    started, cpu = time.time(), time.process_time()
    result = evaluation.logistic_regression_eval(f_train, y_train, f_test, y_test)
    seconds, cpu = time.time() - started, time.process_time() - cpu
    print(f"logistic_regression_eval: {seconds:.1f} s (CPU {cpu:.0f} s), C={result['C']:g}, validation "
          f"top-1 {result['validation_top1']:.2%}, test top-1 {result['top1']:.2%}, top-5 "
          f"{result['top5']:.2%}; load average after: {os.getloadavg()[0]:.1f}")
    if args.reference:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        started = time.time()
        reference = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        reference.fit(x_train, y_train)
        print(f"reference, LogisticRegression (C=1) on standardised raw pixels: test top-1 "
              f"{reference.score(x_test, y_test):.2%} ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
