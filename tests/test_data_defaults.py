"""Defaults that come from the data (issue 30 item 2): an image folder's size from its images, the
decoded-image cache only where it fits the memory, and `--train_minutes` planned into a step count that
config.json keeps for a resumed run."""

import dataclasses
import logging
import os

import numpy as np
import pytest
from PIL import Image

from simclr_tf.config import Config, ConfigError, DataConfig, TrainConfig, save_config
from simclr_tf.data import defaults


def _folder(root, side, per_class=3, classes=("a", "b")):
    """Tiny PNGs of `side` x `side + 4` px (shorter side `side`) in class folders."""
    rng = np.random.default_rng(side)
    for name in classes:
        os.makedirs(root / name, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (side + 4, side, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return str(root)


def _folder_config(image_dir, **data):
    return Config(data=DataConfig(dataset="folder", image_dir=image_dir, **data))


def test_a_folder_of_28_px_images_trains_at_32_and_one_of_500_px_at_224(tmp_path, caplog):
    small = _folder(tmp_path / "small", 28)
    large = _folder(tmp_path / "large", 500, per_class=1)
    with caplog.at_level(logging.INFO, logger="simclr_tf.data.defaults"):
        config = defaults.folder_image_size(_folder_config(small))
    assert config.data.image_size == 32 and config.resolved().image_size == 32
    assert caplog.records[0].getMessage() == (
        f"Image size: 32 px, from the images of {small} (median shorter side 28 px of 6 image headers, to "
        "a multiple of 8 within 32..224); pass --image_size to choose another.")
    assert defaults.folder_image_size(_folder_config(large)).data.image_size == 224
    # A size given, another data set or a missing folder: unchanged (the loader reports the last).
    assert defaults.folder_image_size(_folder_config(small, image_size=64)).data.image_size == 64
    assert defaults.folder_image_size(Config()).data.image_size is None
    assert defaults.folder_image_size(_folder_config(str(tmp_path / "absent"))).data.image_size is None


def test_the_size_rule():
    assert [defaults.image_size_for_side(s) for s in (8, 28, 37, 44, 96, 150, 500)] == [
        32, 32, 40, 48, 96, 152, 224]


def test_sampled_headers_spread_over_the_folder(tmp_path):
    _folder(tmp_path, 8, per_class=5, classes=("a", "b", "c", "d"))
    (tmp_path / ".hidden.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    sample = defaults.sample_image_files(str(tmp_path), count=4)
    assert [os.path.relpath(p, tmp_path).split(os.sep)[0] for p in sample] == ["a", "b", "c", "d"]
    assert len(defaults.sample_image_files(str(tmp_path))) == 20


def test_the_image_extensions_are_the_folder_sources():
    from simclr_tf.data import folder

    assert defaults.IMAGE_EXTENSIONS == folder.IMAGE_EXTENSIONS


def test_the_cache_is_used_only_where_it_fits_a_quarter_of_the_memory(caplog):
    config = dataclasses.replace(Config(), data=DataConfig(dataset="folder", image_dir="/x", image_size=32))
    needed = 70_000 * 32 * 32 * 3  # 215 MB
    with caplog.at_level(logging.INFO, logger="simclr_tf.data.defaults"):
        assert defaults.cache_fits(config, 70_000, available=4 * needed).data.cache_dataset is True
        assert defaults.cache_fits(config, 70_000, available=4 * needed - 4).data.cache_dataset is False
    on, off = (r.getMessage() for r in caplog.records)
    assert on.startswith("Decoded-image cache on: about 0.22 GB for 70000 images at 32 px, within a quarter "
                         "of the 0.86 GB of memory available;")
    assert off.startswith("Decoded-image cache off: about 0.22 GB for 70000 images at 32 px, more than a "
                          "quarter of the 0.86 GB of memory available (images are decoded again each epoch)")
    # Set on the command line, it is what it says.
    forced = dataclasses.replace(config, data=dataclasses.replace(config.data, cache_dataset=True))
    assert defaults.cache_fits(forced, 70_000, available=1).data.cache_dataset is True
    assert defaults.available_memory() > 0


def test_train_minutes_plans_the_steps_and_a_resumed_run_keeps_them(tmp_path, caplog):
    import tensorflow as tf

    from simclr_tf.training import budget

    assert budget.steps_for_minutes(1.0, first_step_seconds=6.0, seconds_per_step=0.5) == 109
    assert budget.steps_for_minutes(0.01, first_step_seconds=6.0, seconds_per_step=0.5) == 1
    config = Config(train=TrainConfig(model_dir=str(tmp_path), train_minutes=1.0))
    calls = []

    def fake_measure(config, strategy):
        calls.append(config.train.train_minutes)
        return 6.0, 0.5

    caplog.set_level(logging.INFO, logger="simclr_tf.training.budget")
    planned = budget.plan_train_steps(config, None, measure=fake_measure)
    assert planned.train.train_steps == 109 and calls == [1.0]
    assert "0.50 s a step (the first, with its trace: 6.0 s), so 109 steps" in caplog.text
    # What `train` records in config.json; with a checkpoint there, a rerun keeps those steps.
    save_config(planned, str(tmp_path))
    assert budget.plan_train_steps(config, None, measure=fake_measure).train.train_steps == 109
    assert calls == [1.0, 1.0]  # no checkpoint yet: a fresh run, timed again
    tf.train.Checkpoint(v=tf.Variable(1.0)).write(str(tmp_path / "ckpt-10"))
    resumed = budget.plan_train_steps(config, None, measure=lambda *a: pytest.fail("timed again"))
    assert resumed.train.train_steps == 109
    assert "109 steps, as planned when this run started (config.json)" in caplog.text
    # Another budget is another plan.
    other = dataclasses.replace(config, train=dataclasses.replace(config.train, train_minutes=2.0))
    assert budget.plan_train_steps(other, None, measure=fake_measure).train.train_steps == 229
    # Off: the config as it is.
    off = Config(train=TrainConfig(model_dir=str(tmp_path)))
    assert budget.plan_train_steps(off, None, measure=fake_measure) is off


def test_train_minutes_is_checked():
    with pytest.raises(ConfigError, match=r"`train_minutes` must be a non-negative number.*Received: -1"):
        TrainConfig(train_minutes=-1).validate()
    with pytest.raises(ConfigError, match="`train_minutes` plans pretraining and fine-tuning"):
        TrainConfig(train_minutes=5, train_mode="distill", teacher="/t").validate()
