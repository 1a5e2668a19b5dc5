"""Every recipe in experiments/ parses into a valid configuration (no unknown or bad flag)."""

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
