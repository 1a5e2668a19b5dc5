"""Benchmark: the training input pipeline from an image folder (`--dataset=folder`), two views per image.

Times `build_train_dataset` over `load_source("folder", ..., image_size=32)`, the pipeline a run with
`--dataset=folder --image_dir=DIR --image_size=32` trains on, in source images per second (each
yields two augmented 32 px views), with `cache=False` so that every image is read and decoded again,
as in a run's first epoch or a run whose images do not fit in memory. Two folders, written once
under `--root` (not the repository):

- `fashion_png`: the 60,000 Fashion-MNIST training images as 28x28 grey PNGs in 10 class folders,
  taken from the Debian package dataset-fashion-mnist through `load_source("fashion_mnist")`;
- `large_jpeg`: 500 synthetic 1024x768 photos-like JPEGs (quality 90), unlabelled.

It prints, per folder, the header scan's time, images/s, the CPU cores the process got while timed
(CPU time / wall time) and images per CPU-second (what the whole machine would give, whatever share
other jobs left), with the load average. It only uses `load_source` and `build_train_dataset`, so an
older checkout runs it too: `PYTHONPATH=/tmp/old python experiments/benchmark_folder.py` times that
checkout's library (the line "library:" says which one ran) on the same folders.

Usage:

```
python experiments/benchmark_folder.py                          # both folders, about 2 minutes
python experiments/benchmark_folder.py --folders=large_jpeg --batches=10
```
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

if __name__ == "__main__":  # run as a script: the repository's library, unless PYTHONPATH names another
    if importlib.util.find_spec("simclr_tf") is None:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

FOLDERS = ("fashion_png", "large_jpeg")
FASHION_IMAGES = 60_000
JPEG_IMAGES, JPEG_SIZE = 500, (1024, 768)
_COMPLETE = ".complete"  # hidden: the folder source ignores it


def _cpu_seconds() -> float:
    return time.process_time()  # all threads of the process, in ns (os.times() counts 10 ms ticks)


def load_average() -> str:
    return "load average {:.2f}, {:.2f}, {:.2f} on {} cores".format(*os.getloadavg(), os.cpu_count())


def write_fashion_pngs(folder: str, data_dir: str) -> None:
    """The Fashion-MNIST training images as PNGs, `<folder>/<class>/<index>.png`."""
    from PIL import Image

    from simclr_tf.data.sources import load_source

    source = load_source("fashion_mnist", "train", data_dir=data_dir, download=True)
    names = [name.replace("/", "_") for name in (source.class_names or [f"class_{i}" for i in range(10)])]
    for name in names:
        os.makedirs(os.path.join(folder, name), exist_ok=True)
    index = 0
    for images, labels in source.dataset.batch(4096):
        for image, label in zip(images.numpy(), labels.numpy(), strict=True):
            Image.fromarray(image[..., 0]).save(os.path.join(folder, names[label], f"{index:05d}.png"))
            index += 1


def write_large_jpegs(folder: str, count: int = JPEG_IMAGES, size: tuple[int, int] = JPEG_SIZE) -> None:
    """Smooth colour gradients with waves and noise (JPEG-compressible like photos), seeded."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    for index in range(count):
        phase, freq = rng.uniform(0, 6.3, 3), rng.uniform(0.005, 0.03, 3)
        channels = [127 + 100 * np.sin(freq[c] * (x + (c + 1) * y) + phase[c]) for c in range(3)]
        pixels = np.stack(channels, -1) + rng.normal(0, 8, (height, width, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        image.save(os.path.join(folder, f"{index:04d}.jpg"), quality=90)


def prepare(root: str, name: str) -> str:
    folder = os.path.join(root, name)
    if not os.path.isfile(os.path.join(folder, _COMPLETE)):
        started = time.perf_counter()
        if name == "fashion_png":
            write_fashion_pngs(folder, os.path.join(root, "tfds"))
        else:
            write_large_jpegs(folder)
        open(os.path.join(folder, _COMPLETE), "w").close()
        print(f"  wrote {folder} in {time.perf_counter() - started:.0f} s", flush=True)
    return folder


def time_folder(folder: str, *, image_size: int, batch_size: int, batches: int, warmup_batches: int) -> dict:
    """Scan seconds, images/s and CPU cores of the training pipeline over the folder (no cache)."""
    from simclr_tf.data.pipeline import build_train_dataset
    from simclr_tf.data.sources import load_source

    started = time.perf_counter()
    source = load_source("folder", "train", image_dir=folder, image_size=image_size)
    scan = time.perf_counter() - started
    # Shuffle buffer: at most 10,000 images (the default) are decoded before the first batch.
    dataset = build_train_dataset(source, global_batch_size=batch_size, image_size=image_size, seed=0,
                                  cache=False)
    iterator = iter(dataset)
    for _ in range(warmup_batches):
        next(iterator)
    cpu_start, start = _cpu_seconds(), time.perf_counter()
    for _ in range(batches):
        (view_1, view_2), _ = next(iterator)
    assert view_1.shape == view_2.shape == (batch_size, image_size, image_size, 3)
    wall = time.perf_counter() - start
    cores = (_cpu_seconds() - cpu_start) / wall
    rate = batches * batch_size / wall
    return {"images": source.num_examples, "scan_s": scan, "images_per_s": rate, "cores": cores,
            "images_per_cpu_s": rate / max(cores, 1e-9)}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="/tmp/simclr_tf_folder_benchmark",
                        help="where the folders are written once (not in the repository)")
    parser.add_argument("--folders", default=",".join(FOLDERS),
                        help=f"comma-separated of {', '.join(FOLDERS)}")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=40, help="timed batches per folder")
    parser.add_argument("--warmup_batches", type=int, default=5, help="untimed batches first")
    args = parser.parse_args(argv)
    unknown = [f for f in args.folders.split(",") if f not in FOLDERS]
    if unknown:
        parser.error(f"--folders: unknown {unknown}; choose from {', '.join(FOLDERS)}.")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    import simclr_tf

    print(f"folder pipeline benchmark: library {os.path.dirname(simclr_tf.__file__)}; {load_average()}",
          flush=True)
    results = {}
    for name in args.folders.split(","):
        folder = prepare(args.root, name)
        result = time_folder(folder, image_size=args.image_size, batch_size=args.batch_size,
                             batches=args.batches, warmup_batches=args.warmup_batches)
        results[name] = result
        print(f"  {name:<12} {result['images']:>6} images, scan {result['scan_s']:5.1f} s: "
              f"{result['images_per_s']:7.0f} two-view images/s at {args.image_size} px "
              f"({result['cores']:.2f} cores, {result['images_per_cpu_s']:6.0f} per CPU-second); "
              f"{load_average()}", flush=True)
    return results


if __name__ == "__main__":
    main()
