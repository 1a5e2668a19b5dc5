"""The logistic linear evaluation's fast path (large inputs) against its exact path, and its progress."""

import logging

import numpy as np
import pytest

from simclr_tf import evaluation
from simclr_tf.evaluation import LOGISTIC_C_GRID, logistic_regression_eval


def _overlapping_clusters(seed=0, per_class=(120, 60), classes=8, dim=32):
    """Eight overlapping Gaussian classes in 32 dimensions, with a few useless ones: training and test."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 0.35
    centres[:, dim // 2:] = 0.0  # half the dimensions carry no signal: the regularisation matters

    def draw(n):
        labels = np.repeat(np.arange(classes), n)
        return (centres[labels] + rng.normal(size=(len(labels), dim))).astype(np.float32), labels

    return (*draw(per_class[0]), *draw(per_class[1]))


def test_fast_path_gives_the_exact_paths_accuracy_and_c():
    train_x, train_y, test_x, test_y = _overlapping_clusters()
    exact = logistic_regression_eval(train_x, train_y, test_x, test_y, fast=False)
    fast = logistic_regression_eval(train_x, train_y, test_x, test_y, fast=True)
    assert exact["path"] == "exact" and fast["path"] == "fast"
    assert 0.4 < exact["top1"] < 0.95  # a case where the classifier and C matter
    assert abs(fast["top1"] - exact["top1"]) <= 0.005
    grid = sorted(LOGISTIC_C_GRID)
    assert abs(grid.index(fast["C"]) - grid.index(exact["C"])) <= 1
    assert fast["train_examples"] == exact["train_examples"] == 960 and fast["test_examples"] == 480
    # The fast path walked the grid from the smallest C and stopped two values after the best.
    fitted = [c for c, _, _ in fast["fits"]]
    assert fitted == grid[:len(fitted)] and len(fitted) <= grid.index(fast["C"]) + 3


def test_the_fast_path_is_chosen_for_large_inputs(monkeypatch):
    train_x, train_y, test_x, test_y = _overlapping_clusters(per_class=(20, 5))
    monkeypatch.setattr(evaluation, "FAST_LOGISTIC_ELEMENTS", train_x.size - 1)
    assert logistic_regression_eval(train_x, train_y, test_x, test_y, c_grid=(0.1,))["path"] == "fast"
    monkeypatch.setattr(evaluation, "FAST_LOGISTIC_ELEMENTS", train_x.size)
    assert logistic_regression_eval(train_x, train_y, test_x, test_y, c_grid=(0.1,))["path"] == "exact"


@pytest.mark.parametrize("fast", [False, True])
def test_a_progress_line_per_fit(caplog, fast):
    train_x, train_y, test_x, test_y = _overlapping_clusters(per_class=(30, 5))
    with caplog.at_level(logging.INFO, logger="simclr_tf.evaluation"):
        result = logistic_regression_eval(train_x, train_y, test_x, test_y, c_grid=(1e-3, 1e-2), fast=fast)
    lines = [r.getMessage() for r in caplog.records if r.name == "simclr_tf.evaluation"]
    assert len(lines) == 3  # two values of C, then the refit
    for line, (c, score, _) in zip(lines, result["fits"], strict=False):
        assert line.startswith(f"logistic regression C={c:g}: validation top-1 {100 * score:.2f}% (")
        assert line.endswith(" s)")
    assert lines[2].startswith(f"logistic regression refit on all training features, C={result['C']:g}: ")


def test_idle_cores_follow_the_load_average(monkeypatch):
    monkeypatch.setattr(evaluation.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(evaluation.os, "getloadavg", lambda: (2.2, 0.0, 0.0))
    assert evaluation.idle_cores() == 6
    monkeypatch.setattr(evaluation.os, "getloadavg", lambda: (11.0, 0.0, 0.0))
    assert evaluation.idle_cores() == 1


def test_the_protocol_of_a_folder_says_why():
    import dataclasses

    from simclr_tf.config import Config, DataConfig, TrainConfig
    from simclr_tf.training.linear_eval import protocol_reason

    folder = dataclasses.replace(Config(), data=DataConfig(dataset="folder", image_dir="/data/train"))
    assert protocol_reason(folder).startswith(
        "--linear_eval_protocol=auto chose logistic for folder data, whose frozen features fit in memory")
    cifar = dataclasses.replace(Config(), data=DataConfig(dataset="cifar10"))
    assert protocol_reason(cifar).startswith(
        "--linear_eval_protocol=auto chose sgd for the TFDS data set cifar10")
    chosen = dataclasses.replace(folder, train=TrainConfig(linear_eval_protocol="sgd"))
    assert protocol_reason(chosen) == "--linear_eval_protocol=sgd"
