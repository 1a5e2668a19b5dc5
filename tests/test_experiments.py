"""Every recipe in experiments/ parses into a valid configuration (no unknown or bad flag)."""

import dataclasses
import glob
import os

import pytest
from absl import flags

from simclr_tf import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "experiments", "*.flags")))


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_recipe_is_a_valid_config(path):
    flag_values = flags.FLAGS
    try:
        flag_values(["simclr_tf.run", f"--flagfile={path}"])
        config = run.config_from_flags(flag_values).resolved().validate()
    finally:
        flag_values.unparse_flags()
    lines = open(path).read().splitlines()
    assert lines[0].startswith("# ") and any("python -m simclr_tf.run" in line for line in lines[:4])
    assert any(line.startswith("# Hardware") for line in lines), "recipe header: hardware"
    assert config.train.model_dir


def test_recipes_exist():
    names = {os.path.basename(p) for p in RECIPES}
    assert {"smoke.flags", "digits_quickstart.flags", "cifar10_resnet50.flags",
            "imagenet_resnet50_1x.flags", "imagenet_r152_3x_sk1_v2.flags"} <= names


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar10_resnet50.flags", "imagenet_resnet50_1x.flags",
                                  "imagenet_r152_3x_sk1_v2.flags", "imagenet_finetune_10pct.flags"])
def test_recipe_starts_on_mock_data(name, tmp_path):
    """A recipe loads and runs a step on TFDS mock data (model shrunk to fit a CPU test)."""
    import dataclasses

    import tensorflow_datasets as tfds

    from simclr_tf.training import train

    flag_values = flags.FLAGS
    try:
        flag_values(["simclr_tf.run", f"--flagfile={os.path.join(ROOT, 'experiments', name)}"])
        config = run.config_from_flags(flag_values)
    finally:
        flag_values.unparse_flags()
    small = dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, image_size=32, data_dir=str(tmp_path / "tfds")),
        model=dataclasses.replace(config.model, resnet_depth=18, width_multiplier=1, sk_ratio=0.0),
        train=dataclasses.replace(config.train, train_batch_size=4, eval_batch_size=4, train_steps=1,
                                  train_epochs=0, eval_steps=1, linear_eval_epochs=0,
                                  model_dir=str(tmp_path / "run"), checkpoint=None,
                                  train_mode="pretrain" if config.train.train_mode == "finetune"
                                  else config.train.train_mode),
        optimizer=dataclasses.replace(config.optimizer, warmup_epochs=0),
    )
    with tfds.testing.mock_data(num_examples=8):
        results = train(small)
    assert results["train_steps"] == 1


def test_the_quickstart_recipe_is_the_default_config():
    from simclr_tf.config import Config

    flag_values = flags.FLAGS
    try:
        path = os.path.join(ROOT, "experiments", "digits_quickstart.flags")
        flag_values(["simclr_tf.run", f"--flagfile={path}"])
        config = run.config_from_flags(flag_values)
    finally:
        flag_values.unparse_flags()

    def decided(c):  # `auto` protocols decided, every None filled
        c = c.resolved()
        train = dataclasses.replace(c.train, linear_eval_protocol=c.linear_eval_protocol)
        return dataclasses.replace(c, train=train)

    assert decided(config) == decided(Config())
