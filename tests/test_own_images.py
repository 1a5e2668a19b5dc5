"""Your own images end to end: unlabelled and labelled folders with default settings, held-out
evaluation that no phase trains on, numbers named by protocol and split, scalars in TensorBoard."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from simclr_tf.config import Config, DataConfig, TrainConfig
from simclr_tf.training import train


def _write_digits(root, count, classes=None):
    """Real 8x8 digit scans as 16x16 PNGs: flat, or in class folders (nested one level deeper)."""
    digits = load_digits()
    for i in range(count):
        pixels = (digits.images[i] * 16).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(pixels).convert("RGB").resize((16, 16))
        folder = root if classes is None else root / f"class_{digits.target[i] % classes}" / "scans"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i}.png")


def _config(image_dir, model_dir, **train):
    """The defaults (the quickstart's), pointed at a folder; only the length is shortened."""
    defaults = Config()
    return dataclasses.replace(
        defaults,
        data=dataclasses.replace(DataConfig(), dataset="folder", image_dir=str(image_dir), image_size=16),
        train=dataclasses.replace(TrainConfig(), model_dir=str(model_dir), train_steps=2, **train),
    )


@pytest.mark.slow
def test_an_unlabelled_folder_pretrains_exports_and_says_why_there_is_no_accuracy(tmp_path, caplog):
    _write_digits(tmp_path / "images", 40)
    with caplog.at_level("INFO", logger="simclr_tf"):
        results = train(_config(tmp_path / "images", tmp_path / "run"))
    out = caplog.text
    assert out.count("no labels: evaluation, linear evaluation and the kNN monitor are skipped") == 1
    assert "using batches of 40" in out  # the default batch (128) is capped at the 40 images
    assert results["accuracies"] == [] and "eval_top1" not in results
    assert results["num_train_examples"] == 40 and results["train_steps"] == 2
    assert os.path.isfile(results["exported"]["keras_file"])
    stored = json.loads((tmp_path / "run" / "result.json").read_text())
    assert stored["accuracies"] == [] and stored["weights_sha256"] == results["weights_sha256"]


@pytest.mark.slow
def test_a_labelled_folder_without_eval_split_holds_images_out(tmp_path):
    _write_digits(tmp_path / "images", 60, classes=3)
    results = train(_config(tmp_path / "images", tmp_path / "run"))
    # 3 classes of 20 images: 2 of each held out (10%), and nothing trains on them.
    assert results["num_train_examples"] == 54
    assert "held-out 10%" in results["eval_split"] and results["eval_examples"] == 6
    protocols = [(a["protocol"], a.get("detail"), a["examples"]) for a in results["accuracies"]]
    assert protocols == [("online_linear_head", None, 6), ("linear_eval", "logistic", 6)]
    assert results["eval_protocol"] == "linear_eval" and results["linear_eval_train_examples"] == 54
    assert 0.0 <= results["eval_top1"] <= 1.0
    assert os.path.isfile(tmp_path / "run" / "embeddings.png")
    assert os.path.isfile(tmp_path / "run" / "logs" / "projector" / "projector_config.pbtxt")
    with Image.open(tmp_path / "run" / "embeddings.png") as picture:
        colours = {c for _, c in picture.convert("RGB").getcolors(1 << 16)}
    assert len(colours) >= 4  # background, text and at least two class colours


@pytest.mark.slow
def test_every_scalar_reaches_tensorboard_also_at_a_mid_epoch_end(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    config = dataclasses.replace(
        Config(),
        data=DataConfig(dataset="synthetic", synthetic_examples=256, image_size=16),
        train=dataclasses.replace(TrainConfig(), model_dir=str(tmp_path), train_steps=3, train_batch_size=16,
                                  linear_eval_epochs=0, mode="train"),
    )
    train(config)  # 16 steps per epoch: the run ends mid-epoch, between two logging steps
    events = event_accumulator.EventAccumulator(str(tmp_path / "logs" / "train"),
                                                size_guidance={"tensors": 0})
    events.Reload()
    tags = set(events.Tags()["tensors"])
    assert {"contrastive_loss", "loss", "learning_rate", "images_per_second"} <= tags
    assert [e.step for e in events.Tensors("contrastive_loss")] == [3]
    speed = float(np.asarray(tf_value(events.Tensors("images_per_second")[-1])))
    assert speed > 0


def tf_value(event):
    import tensorflow as tf

    return tf.make_ndarray(event.tensor_proto)


@pytest.mark.parametrize(
    "flags, code, message",
    [
        (["--dataset=cifar10", "--image_dir=/somewhere"], 2, "read only with `dataset=folder`"),
        (["--image_dir=/does/not/exist", "--model_dir={tmp}/run"], 1, "does not exist"),
    ],
)
def test_image_dir_alone_means_a_folder_and_a_conflict_is_an_error(tmp_path, flags, code, message):
    flags = [f.format(tmp=tmp_path) for f in flags]
    done = subprocess.run([sys.executable, "-m", "simclr_tf.run", *flags], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == code, done.stderr[-2000:]
    assert message in done.stderr
