"""The command line's flags are the config's fields: each setting is described once, in config.py's
docstrings, and `--help` shows that description."""

import dataclasses
import pathlib
import re
import subprocess
import sys

import pytest
from absl import flags

from simclr_tf import run
from simclr_tf.config import Config, ConfigError, RuntimeConfig, TrainConfig, field_docs

ROOT = pathlib.Path(__file__).resolve().parents[1]
KINDS = {"string": str, "int": int, "float": float, "bool": bool}


def _parse(*argv):
    values = flags.FLAGS
    try:
        values(["simclr_tf.run", *argv])
        return run.config_from_flags(values)
    finally:
        values.unparse_flags()


def test_every_flag_help_is_its_config_fields_description():
    assert len(run._FLAG_SPECS) > 80
    for name, section, field, _kind, _help in run._FLAG_SPECS:
        doc = field_docs(run._SECTIONS[section])[field]
        assert doc.strip(), f"{section}.{field} has no description"
        assert flags.FLAGS[name].help == doc, name
    assert flags.FLAGS["devices"].help == field_docs(RuntimeConfig)["devices"]
    assert flags.FLAGS["use_tpu"].help  # the original's alias, not a config field


def test_every_config_field_reachable_from_a_flag_is_documented():
    reachable = {(section, field) for _, section, field, _, _ in run._FLAG_SPECS} | {("runtime", "devices")}
    for part in dataclasses.fields(Config):
        docs = field_docs(run._SECTIONS[part.name])
        for field in dataclasses.fields(run._SECTIONS[part.name]):
            if (part.name, field.name) in reachable:
                assert docs.get(field.name, "").strip(), f"{part.name}.{field.name} has no description"
        assert set(docs) <= {f.name for f in dataclasses.fields(run._SECTIONS[part.name])}, part.name


def test_flags_are_the_config_fields_by_name_type_and_default():
    for name, section, field, kind, _help in run._FLAG_SPECS:
        flag = flags.FLAGS[name]
        assert name == field
        assert KINDS[flag.flag_type()] is kind, name
        assert flag.default == getattr(getattr(Config(), section), field), name
    # Spot checks of the flagfiles' types: a float warm-up, integer lengths, an optional bool.
    assert flags.FLAGS["warmup_epochs"].flag_type() == "float"
    assert flags.FLAGS["train_steps"].flag_type() == flags.FLAGS["image_size"].flag_type() == "int"
    assert flags.FLAGS["use_blur"].flag_type() == "bool" and flags.FLAGS["use_blur"].default is None


def test_help_shows_every_flag_with_its_meaning():
    done = subprocess.run([sys.executable, "-m", "simclr_tf.run", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1 and "--model_dir" in done.stdout, done.stderr[-2000:]  # absl's --help: 1
    text = re.sub(r"\s+", " ", done.stdout)
    for name, _section, _field, _kind, doc in run._FLAG_SPECS:
        start = " ".join(doc.split()[:6])
        assert re.search(rf"--(\[no\])?{name}: {re.escape(start)}", text), name
    assert "tensorflow" not in done.stderr.lower()


class _Documented:
    """A class.

    Attributes:
        alpha: first line,
            continued here.
        beta: one line; `gamma: not an entry` in the text.
        gamma_2: deeper
                still continued.

    Example:
        delta: not an attribute.
    """


def test_field_docs_reads_the_attributes_section():
    assert field_docs(_Documented) == {
        "alpha": "first line, continued here.",
        "beta": "one line; `gamma: not an entry` in the text.",
        "gamma_2": "deeper still continued.",
    }
    assert field_docs(type("Bare", (), {"__doc__": "No attributes."})) == {}


def test_an_explicit_zero_image_size_is_refused_not_the_data_sets_size():
    match = r"`image_size` must be an integer of at least 8 pixels\. Received: 0"
    with pytest.raises(ConfigError, match=match):
        _parse("--image_size=0").resolved().validate()
    assert _parse().resolved().validate().image_size == 12  # left out: the data set's size


@pytest.mark.parametrize("flag, match", [
    ("--data_dir=", r"`data_dir` is empty\. Pass a directory, or leave --data_dir out\. Received: ''"),
    ("--eval_split=", r"`eval_split` is empty\. Pass a split name"),
    ("--checkpoint=", r"`checkpoint` is empty\. Pass a checkpoint, a run directory or `none`"),
    ("--tpu_zone=", r"`tpu_zone` is empty"),
])
def test_an_empty_flag_value_is_refused(flag, match):
    with pytest.raises(ConfigError, match=match):
        _parse(flag).resolved().validate()


def test_a_warm_up_longer_than_a_run_in_steps_is_refused():
    match = r"`warmup_epochs` \(10\.0\) is longer than the run \(`train_steps`=5\)"
    with pytest.raises(ConfigError, match=match):
        _parse("--train_steps=5", "--warmup_epochs=10").resolved().validate()
    config = _parse("--train_steps=5", "--warmup_epochs=5").resolved().validate()
    assert config.train == dataclasses.replace(TrainConfig(), train_steps=5)
