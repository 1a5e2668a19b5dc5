"""Does the quickstart learn? Its exported encoder against raw pixels and an untrained encoder.

    python experiments/quality_digits.py [--model_dir runs/digits_quickstart]

Reads the exported encoder of a quickstart run (`simclr-tf run`, no flags), or runs the quickstart
into `--model_dir` first when it has none. scikit-learn's handwritten digits (1,437 training and
360 held-out scans, 8x8) are then read by a linear classifier (L2-regularised logistic regression
on standardised features) trained with 2 and 12 labels per class (the mean over 5 draws of the
labelled images) and with all labels, on the frozen encoder's `final_avg_pool` features, on the
raw pixels, and on the same encoder untrained (random initialisation, same seed). The quickstart
must beat raw pixels in every column (exit code 3 otherwise).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np


def _features(encoder, source, image_size, batch_size=256):
    from simclr_tf.data import pipeline
    from simclr_tf.evaluation import extract_features

    dataset = pipeline.build_eval_dataset(source, global_batch_size=batch_size, image_size=image_size)
    return extract_features(encoder, dataset)


def _pixels(source, image_size, batch_size=512):
    from simclr_tf.data import pipeline

    dataset = pipeline.build_eval_dataset(source, global_batch_size=batch_size, image_size=image_size)
    images, labels = [], []
    for x, y in dataset:
        images.append(np.asarray(x).reshape(len(x), -1))
        labels.append(np.asarray(y))
    return np.concatenate(images), np.concatenate(labels)


COLUMNS = ("2 per class", "12 per class", "all labels")


def _scores(train_x, train_y, test_x, test_y, *, seeds=5):
    from simclr_tf.data.sources import label_subset
    from simclr_tf.evaluation import linear_probe_accuracy

    row = {}
    for per_class, column in ((2, COLUMNS[0]), (12, COLUMNS[1])):
        draws = [label_subset(train_y, per_class=per_class, seed=s) for s in range(seeds)]
        row[column] = float(np.mean([
            linear_probe_accuracy(train_x[i], train_y[i], test_x, test_y) for i in draws
        ]))
    row[COLUMNS[2]] = linear_probe_accuracy(train_x, train_y, test_x, test_y)
    return row


def evaluate(model_dir: str) -> tuple[dict, str, int]:
    """The table's rows for the exported encoder of `model_dir` (run the quickstart into it first
    when it has none): {features: {column: held-out top-1}}, the export used, held-out images."""
    import keras

    from simclr_tf.config import Config, load_config
    from simclr_tf.data.sources import load_source
    from simclr_tf.export import latest_export
    from simclr_tf.models.build import build_model
    from simclr_tf.training import train

    export_dir = latest_export(os.path.join(model_dir, "saved_model"))
    if export_dir is None:
        print(f"No exported encoder in {model_dir}: running the quickstart first.", flush=True)
        quickstart = Config()
        train(dataclasses.replace(quickstart, train=dataclasses.replace(quickstart.train,
                                                                        model_dir=model_dir)))
        export_dir = latest_export(os.path.join(model_dir, "saved_model"))
    config = load_config(model_dir).resolved()
    image_size, seed = config.image_size, config.train.seed
    pretrained = keras.saving.load_model(os.path.join(export_dir, "encoder.keras"))

    keras.utils.set_random_seed(seed)
    untrained = build_model(config, 0)

    train_source = load_source("digits", "train", seed=seed)
    test_source = load_source("digits", "test", seed=seed)
    rows = {}
    train_x, train_y = _pixels(train_source, image_size)
    test_x, test_y = _pixels(test_source, image_size)
    rows["raw pixels"] = _scores(train_x, train_y, test_x, test_y)
    for name, encoder in (("untrained encoder", untrained.encoder), ("SimCLR encoder", pretrained)):
        train_x, train_y = _features(encoder, train_source, image_size)
        test_x, test_y = _features(encoder, test_source, image_size)
        rows[name] = _scores(train_x, train_y, test_x, test_y)
    return rows, export_dir, len(test_y)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="The quickstart's encoder against raw pixels on the digits.")
    parser.add_argument("--model_dir", default="runs/digits_quickstart",
                        help="A quickstart run (run into it first if it has no export).")
    args = parser.parse_args(argv)
    from simclr_tf.console import show_library_logs

    show_library_logs()  # the library logs its progress; a script shows it

    started = time.time()
    rows, export_dir, held_out = evaluate(args.model_dir)
    print(f"\nLogistic regression on digits:test ({held_out} held-out images), top-1 accuracy; encoder "
          f"{export_dir}")
    print(f"{'features':<20}" + "".join(f"{c:>14}" for c in COLUMNS))
    for name, row in rows.items():
        print(f"{name:<20}" + "".join(f"{row[c]:>14.1%}" for c in COLUMNS))
    print(f"total {time.time() - started:.0f} s")
    simclr, raw = rows["SimCLR encoder"], rows["raw pixels"]
    ok = all(simclr[c] > raw[c] for c in COLUMNS)
    print("The quickstart's encoder beats raw pixels in every column:", ok)
    return 0 if ok else 3


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
