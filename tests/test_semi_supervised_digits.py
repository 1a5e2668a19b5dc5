"""experiments/semi_supervised_digits.py: the table's layout, the runs' recipes, and the whole
experiment end to end on a tiny budget (a few steps per run)."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "semi_supervised_digits.py"


def _module():
    spec = importlib.util.spec_from_file_location("semi_supervised_digits", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_has_every_row_and_column_with_its_numbers():
    ssd = _module()
    table = {"2_per_class": {"pixels": {"top1": 0.675, "seconds": 1.2, "draws": [0.6, 0.75]},
                             "finetune": {"top1": 0.9, "seconds": 42.0}}}
    lines = ssd.format_table(table, ["2_per_class", "10pct"]).splitlines()
    assert lines[0] == ("| method | 2 labels per class: top-1 | wall | 10% of labels: top-1 | wall |")
    assert len(lines) == 2 + len(ssd.ROWS)
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in lines[2:]}
    assert rows["logistic regression on raw pixels"][:2] == ["67.5% (mean of 2)", "1 s"]
    assert rows["SimCLR fine-tuned (ft_proj_selector=1)"][:2] == ["90.0%", "42 s"]
    assert rows["SimCLR fine-tuned (ft_proj_selector=1)"][2:] == ["-", "- |"]


def test_probe_averages_the_draws_of_the_labelled_images():
    ssd = _module()
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 20)
    centres = rng.normal(size=(10, 5)) * 10  # separable classes: every draw scores 100%
    x = centres[labels] + rng.normal(size=(200, 5))
    result = ssd.probe(x, labels, x, labels, "2_per_class", draws=3)
    assert len(result["draws"]) == 3 and result["top1"] == pytest.approx(np.mean(result["draws"]))
    assert result["top1"] == 1.0


def test_recipes_of_the_trained_rows(tmp_path):
    from simclr_tf.config import FROM_SCRATCH, Config, save_config

    ssd = _module()
    args = ssd._parse(["--out", str(tmp_path)])
    pretrain = ssd.pretrain_config(args)
    assert pretrain.model.num_proj_layers == 3
    assert pretrain.resolved().augment.crop_min_area == 0.5 and pretrain.loss.temperature == 0.5
    other = ssd.pretrain_config(ssd._parse(["--pretrain_crop_min_area=0.2", "--pretrain_temperature=0.1"]))
    assert other.resolved().augment.crop_min_area == 0.2 and other.loss.temperature == 0.1
    save_config(pretrain, str(tmp_path / "pretrain"))
    configs = ssd.run_configs(args, str(tmp_path / "pretrain"), "2_per_class")
    assert set(configs) == {"scratch", "finetune", "self_distill", "small_distill"}
    for config in configs.values():
        config.resolved().validate()
        assert config.data.train_labels_per_class == 2
    finetune = configs["finetune"]
    assert finetune.model.ft_proj_selector == 1 and finetune.train.train_mode == "finetune"
    assert finetune.train.checkpoint == str(tmp_path / "pretrain")
    assert configs["scratch"].train.checkpoint == FROM_SCRATCH
    assert configs["scratch"].model == finetune.model  # the same network, from random weights
    assert configs["scratch"].optimizer.learning_rate == 0.05 > finetune.optimizer.learning_rate
    for name in ("self_distill", "small_distill"):
        assert configs[name].train.teacher == finetune.train.model_dir
        assert configs[name].train.train_mode == "distill"
    assert configs["self_distill"].model.resnet_depth == finetune.model.resnet_depth == 18
    assert configs["small_distill"].model.resnet_depth == 10
    small, big = (ssd.parameter_counts(configs[n]) for n in ("small_distill", "finetune"))
    assert small["encoder"] < big["encoder"] / 2
    ten_pct = ssd.run_configs(args, str(tmp_path / "pretrain"), "10pct")["finetune"]
    assert ten_pct.data.train_label_fraction == 0.1 and ten_pct.data.train_labels_per_class == 0
    assert Config().model.num_proj_layers == 2  # the quickstart itself is unchanged


@pytest.mark.slow
def test_the_experiment_end_to_end_on_a_tiny_budget(tmp_path):
    out = tmp_path / "ssd"
    command = [sys.executable, str(SCRIPT), "--out", str(out), "--pretrain_steps=2", "--finetune_steps=2",
               "--scratch_steps=2", "--distill_steps=2", "--draws=2", "--target=0"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "semi_supervised.json").read_text())
    table = summary["table"]
    assert set(table) == {"2_per_class", "10pct"}
    for column in table.values():
        assert set(column) == {"pixels", "scratch", "linear_eval", "finetune", "self_distill",
                               "small_distill"}
        for entry in column.values():
            assert 0.0 <= entry["top1"] <= 1.0 and entry["seconds"] > 0
        for name in ("pixels", "linear_eval"):
            assert len(column[name]["draws"]) == 2
        # 360 held-out digits: every accuracy is a whole number of them
        for entry in column.values():
            for value in entry.get("draws", [entry["top1"]]):
                assert value * 360 == pytest.approx(round(value * 360), abs=1e-3)
    markdown = (out / "semi_supervised.md").read_text()
    assert markdown.count("\n") == 2 + 6 and "SimCLR linear evaluation" in markdown
    assert "| method |" in done.stdout and "total" in done.stdout
    assert summary["parameters"]["small_distill"]["encoder"] < summary["parameters"]["finetune"]["encoder"]
    for name in ("finetune", "self_distill", "small_distill"):
        assert (out / "2_per_class" / name / "result.json").exists()


def test_validation_runs_hold_out_training_images_and_never_read_the_test_digits(tmp_path):
    from simclr_tf.config import save_config
    from simclr_tf.data.sources import load_source, source_labels
    from simclr_tf.training.inputs import data_splits, labelled_subset

    ssd = _module()
    args = ssd._parse(["--out", str(tmp_path), "--tune"])
    save_config(ssd.pretrain_config(args), str(tmp_path / "pretrain"))
    configs = ssd.run_configs(args, str(tmp_path / "pretrain"), "2_per_class", validation=0.2)
    for config in configs.values():
        config.resolved().validate()
    splits = data_splits(configs["finetune"].resolved())
    assert "held-out 20%" in splits.eval_name and "test" not in splits.eval_name
    train_labels, eval_labels = source_labels(splits.train), source_labels(splits.eval)
    assert len(train_labels) + len(eval_labels) == 1437
    # stratified: each class gives a fifth of its images (rounded) to the validation part
    all_labels = source_labels(load_source("digits", "train"))
    for cls in range(10):
        assert (eval_labels == cls).sum() == round(0.2 * (all_labels == cls).sum())
    # the validation images are none of the training images (compare the pixels)
    train_images = {bytes(np.asarray(x)) for x, _ in splits.train.dataset}
    assert not any(bytes(np.asarray(x)) in train_images for x, _ in splits.eval.dataset)
    labelled = source_labels(labelled_subset(configs["finetune"].resolved(), splits.train))
    assert sorted(labelled) == sorted(list(range(10)) * 2)


@pytest.mark.slow
def test_tune_keeps_the_best_candidate_of_each_stage_and_distils_its_teacher(tmp_path):
    from simclr_tf.config import save_config

    ssd = _module()
    args = ssd._parse(["--out", str(tmp_path), "--tune"])
    save_config(ssd.pretrain_config(args), str(tmp_path / "pretrain"))
    best = ssd.TUNING[0][2][1]  # the stand-in scores the second fine-tuning candidate best
    seen = []

    def stand_in(config):
        seen.append(config)
        assert config.data.eval_split == ssd.VALIDATION_SPLIT and config.data.eval_fraction == 0.2
        if config.train.train_mode == "finetune":
            top1 = 0.9 - abs(config.optimizer.learning_rate - best["finetune_learning_rate"]) - 0.1 * (
                config.train.ft_head_init != best["ft_head_init"])
        else:
            top1 = 0.5 + 0.1 * (config.train.distill_augment == "student_simclr")
        return {"eval_top1": top1, "eval_examples": 288, "eval_split": "digits:train held-out 20%"}, 1.0

    summary = ssd.tune(args, str(tmp_path / "pretrain"), train=stand_in)
    candidates = [c for _, _, stage in ssd.TUNING for c in stage]
    assert len(seen) == len(candidates)
    assert {k: summary["chosen"][k] for k in best} == best
    assert summary["chosen"]["distill_augment"] == "student_simclr"
    finetunes = [c for c in seen if c.train.train_mode == "finetune"]
    teacher = [c.train.model_dir for c in finetunes
               if (c.optimizer.learning_rate, c.train.ft_head_init) == tuple(best.values())]
    for config in seen[len(finetunes):]:
        assert config.train.teacher == teacher[0] and config.model.resnet_depth == 10
        assert config.train.model_dir.startswith(str(tmp_path / "tune" / "distill"))
    assert json.loads((tmp_path / "tune" / "tune.json").read_text())["chosen"] == summary["chosen"]
    assert (tmp_path / "tune" / "tune.md").read_text().count("(chosen)") == len(ssd.TUNING)


def test_probe_of_a_pretraining_on_the_validation_part(tmp_path, monkeypatch, capsys):
    """With an "encoder" that returns the pixels, the probe of a pretraining is logistic regression
    on the pixels, computed here another way: the labelled draws come from the training images less
    the validation part, which is what is scored."""
    import keras

    from simclr_tf.config import save_config
    from simclr_tf.data.sources import held_out_split, label_subset, load_source, source_labels
    from simclr_tf.evaluation import linear_probe_accuracy

    ssd = _module()
    args = ssd._parse(["--out", str(tmp_path), "--draws", "2"])
    pretrain = ssd.pretrain_config(args)
    assert pretrain.image_size == 12  # the quickstart's
    save_config(pretrain, str(tmp_path / "pretrain"))

    class Pixels:
        def encoder(self, x, training=False):
            return {"final_avg_pool": keras.ops.reshape(x, (keras.ops.shape(x)[0], -1))}

        def projection_head(self, h, training=False):
            return h, [h, 3.0 * h + 1.0]  # standardised, layer 1 is the same as the pixels

    monkeypatch.setattr(ssd, "build_pretrained_model", lambda config, run_dir: Pixels())
    rows = ssd.probe_pretrainings(args, [str(tmp_path / "pretrain")])

    source = load_source("digits", "train", seed=0)
    pixels, labels = ssd._arrays(source, pretrain.image_size)
    np.testing.assert_array_equal(labels, source_labels(source))
    rest, held = held_out_split(labels, fraction=0.2, seed=0)
    assert len(held) == 287 and not set(rest) & set(held)
    expected = []
    for seed in range(2):
        kept = rest[label_subset(labels[rest], per_class=2, seed=seed)]
        assert len(kept) == 20 and set(kept) <= set(rest)
        expected.append(linear_probe_accuracy(pixels[kept], labels[kept], pixels[held], labels[held]))
    (row,) = rows
    assert row["encoder"]["draws"] == pytest.approx(expected)
    assert row["head_layer"]["draws"] == pytest.approx(expected, abs=0.01)
    assert row["crop_min_area"] == 0.5 and row["layer"] == 1
    assert f"| {tmp_path / 'pretrain'} | 0.5 | 0.5 | {np.mean(expected):.1%} |" in capsys.readouterr().out


def test_a_run_of_other_settings_in_out_is_not_reused(tmp_path):
    """Rerunning into an --out that holds runs of other settings stops, naming what differs,
    instead of reporting the old runs' numbers for the new settings."""
    import dataclasses

    from simclr_tf.config import save_config

    ssd = _module()
    args = ssd._parse(["--out", str(tmp_path)])
    pretrain = ssd.pretrain_config(args)
    ssd.check_same_settings(pretrain)  # nothing there yet
    save_config(pretrain, pretrain.train.model_dir)
    ssd.check_same_settings(pretrain)  # the same settings: resumed or reused
    older = ssd.pretrain_config(ssd._parse(["--out", str(tmp_path), "--pretrain_crop_min_area=0.2"]))
    with pytest.raises(SystemExit, match=r"augment.crop_min_area is 0.5 there and 0.2 now"):
        ssd.check_same_settings(older)
    finetune = ssd.run_configs(args, pretrain.train.model_dir, "2_per_class")["finetune"]
    save_config(finetune, finetune.train.model_dir)
    faster = dataclasses.replace(
        finetune, optimizer=dataclasses.replace(finetune.optimizer, learning_rate=0.1))
    with pytest.raises(SystemExit, match=r"optimizer.learning_rate is 0.002 there and 0.1 now.*delete"):
        ssd.check_same_settings(faster)
