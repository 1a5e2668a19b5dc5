"""Does `--precision=auto` (bfloat16 on this CPU) keep the quickstart's quality? Seeds x precisions.

    python experiments/precision_digits.py [--seeds 0,1,2] [--precisions float32,auto] [--out runs/precision]

Runs the quickstart (`simclr-tf run`, no other flags) once per seed and precision into
`<out>/<precision>_seed<seed>` (a finished run is reused, a killed one resumes), then prints per run:
the pretraining wall time and images/s, the quickstart's own held-out number (the paper's linear
evaluation: logistic regression on frozen features, 360 held-out digits), and the columns of
`quality_digits.py` (logistic regression with 2 and 12 labels per class, mean of 5 draws); then
each precision's mean and spread (sample standard deviation over seeds). Quality holds when the
means of `auto` lie within the float32 runs' spread.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import quality_digits  # the sibling experiment


def run_one(out: str, precision: str, seed: int, train_epochs: int = 0, image_size: int = 0) -> dict:
    from simclr_tf.config import Config
    from simclr_tf.training import train

    quickstart = Config()
    train_epochs = train_epochs or quickstart.train.train_epochs
    image_size = image_size or quickstart.image_size
    model_dir = os.path.join(out, f"{precision}_{train_epochs}epochs_{image_size}px_seed{seed}")
    config = dataclasses.replace(
        quickstart,
        data=dataclasses.replace(quickstart.data, image_size=image_size),
        train=dataclasses.replace(quickstart.train, model_dir=model_dir, seed=seed, precision=precision,
                                  train_epochs=train_epochs))
    started = time.time()
    results = train(config)
    wall = time.time() - started
    rows, _, held_out = quality_digits.evaluate(model_dir)
    simclr = rows["SimCLR encoder"]
    with open(os.path.join(model_dir, "result.json"), encoding="utf-8") as f:
        stored = json.load(f)
    return {
        "precision": precision,
        "policy": stored["config"]["train"]["precision"],
        "seed": seed,
        "train_epochs": train_epochs,
        "image_size": image_size,
        "run_seconds": wall,
        "train_seconds": stored.get("train_seconds"),
        "images_per_second": stored.get("train_images_per_second"),
        "linear_eval_top1": results["linear_eval_top1"],
        "held_out": held_out,
        "2 per class": simclr[quality_digits.COLUMNS[0]],
        "12 per class": simclr[quality_digits.COLUMNS[1]],
    }


def _spread(values):
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.2%} ± {std:.2%}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--precisions", default="float32,auto", help="comma-separated --precision values")
    parser.add_argument("--train_epochs", type=int, default=0,
                        help="pretraining epochs (default: the quickstart's)")
    parser.add_argument("--image_size", type=int, default=0,
                        help="pretraining image side (default: the quickstart's)")
    parser.add_argument("--out", default="runs/precision", help="folder of the runs")
    args = parser.parse_args(argv)
    from simclr_tf.console import show_library_logs

    show_library_logs()  # the library logs its progress; a script shows it
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]

    runs = []
    for seed in seeds:  # interleaved, so that a change of load hits both precisions
        for precision in precisions:
            runs.append(run_one(args.out, precision, seed, args.train_epochs, args.image_size))
            print(json.dumps(runs[-1]), flush=True)

    print("\nThe quickstart per precision and seed; accuracies are top-1 on the 360 held-out digits "
          "(digits:test)")
    header = (f"{'precision':<10}{'policy':<16}{'seed':>5}{'run s':>8}{'img/s':>8}"
              f"{'linear eval':>13}{'2/class':>10}{'12/class':>10}")
    print(header)
    for r in runs:
        ips = r["images_per_second"]
        print(f"{r['precision']:<10}{r['policy']:<16}{r['seed']:>5}{r['run_seconds']:>8.0f}"
              f"{(f'{ips:.0f}' if ips else '-'):>8}{r['linear_eval_top1']:>13.2%}"
              f"{r['2 per class']:>10.1%}{r['12 per class']:>10.1%}")
    print("\nMean ± standard deviation over seeds")
    for precision in precisions:
        mine = [r for r in runs if r["precision"] == precision]
        print(f"{precision:<10} run {statistics.fmean(r['run_seconds'] for r in mine):.0f} s; "
              f"linear eval {_spread([r['linear_eval_top1'] for r in mine])}; "
              f"2/class {_spread([r['2 per class'] for r in mine])}; "
              f"12/class {_spread([r['12 per class'] for r in mine])}")
    with open(os.path.join(args.out, "precision_digits.json"), "w", encoding="utf-8") as f:
        json.dump(runs, f, indent=2)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
