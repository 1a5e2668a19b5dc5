"""simclr_tf.study (python -m simclr_tf.study): the grid, the cells' settings, the recipes, the table
and the pictures; a 2x2 quick study end to end (slow), resumed without retraining."""

import csv
import glob
import itertools
import os

import numpy as np
import pytest
from PIL import Image

from simclr_tf import study

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "experiments", "studies", "*.flags")))


def _args(*argv):
    return study._parser().parse_args(["--out", "x", *argv])


def test_grid_axes_take_the_field_types():
    axes = study.build_grid(_args("--grid", "temperature=0.1;0.5", "--grid", "view_b=crop;crop,rotate",
                                  "--grid", "hidden_norm=true;false", "--grid", "image_size=None;16"))
    assert axes == [("temperature", [0.1, 0.5]), ("view_b", ["crop", "crop,rotate"]),
                    ("hidden_norm", [True, False]), ("image_size", [None, 16])]
    with pytest.raises(ValueError, match="unknown setting 'temprature'"):
        study.build_grid(_args("--grid", "temprature=0.1"))
    with pytest.raises(ValueError, match="give at least one --grid"):
        study.build_grid(_args())


def test_pairs_are_the_figure_5_views():
    axes = study.build_grid(_args("--pairs", "crop;color;rotate"))
    assert axes == [("first", ["crop", "color", "rotate"]), ("second", ["crop", "color", "rotate"])]
    # Both views cropped first (the paper's base); the second then gets the row's and the column's.
    assert study.cell_settings({"first": "color", "second": "rotate"}) == {"view_a": "crop",
                                                                          "view_b": "crop,color,rotate"}
    assert study.cell_settings({"first": "rotate", "second": "color"})["view_b"] == "crop,rotate,color"
    assert study.cell_settings({"first": "color", "second": "color"})["view_b"] == "crop,color"
    assert study.cell_settings({"first": "crop", "second": "crop"})["view_b"] == "crop,crop"
    assert study.cell_settings({"first": "blur", "second": "crop"})["view_b"] == "crop,blur,crop"
    config = study.make_config({**study.QUICK, **study.cell_settings({"first": "crop", "second": "blur"}),
                                "temperature": 0.2}, "/tmp/cell")
    got = (config.augment.view_b, config.loss.temperature, config.train.model_dir)
    assert got == ("crop,crop,blur", 0.2, "/tmp/cell")
    config.resolved().validate()


def test_flagfile_settings(tmp_path):
    path = tmp_path / "base.flags"
    path.write_text("# a comment\n--dataset=digits\n--nouse_blur\n--train_steps=7\n--hidden_norm\n")
    assert study.read_flagfile(str(path)) == {"dataset": "digits", "use_blur": False, "train_steps": 7,
                                              "hidden_norm": True}


def test_a_recipe_is_study_arguments_and_settings(tmp_path):
    path = tmp_path / "r.flags"
    path.write_text("# comment\n\n--out=runs/x\n--pairs=crop;color\n--quick\n--train_steps=50\n"
                    "--nouse_blur\n--hidden_norm\n--grid=temperature=0.1;0.5\n")
    argv = study.read_recipe(str(path))
    assert argv == ["--out", "runs/x", "--pairs", "crop;color", "--quick", "--set", "train_steps=50",
                    "--set", "use_blur=false", "--set", "hidden_norm=true", "--grid", "temperature=0.1;0.5"]
    args = study._parser().parse_args(argv + ["--out", "/tmp/elsewhere"])
    assert args.out == "/tmp/elsewhere" and args.set[0] == "train_steps=50"
    path.write_text("--train_stepz=50\n")
    with pytest.raises(ValueError, match="unknown setting 'train_stepz'"):
        study.read_recipe(str(path))
    path.write_text("train_steps=50\n")
    with pytest.raises(ValueError, match=r"r.flags:1: expected --name=value"):
        study.read_recipe(str(path))


@pytest.mark.parametrize("recipe", RECIPES, ids=os.path.basename)
def test_the_recipes_parse_and_every_cell_validates(recipe):
    """Each recipe of experiments/studies/: its grid and every cell's config, as main() builds them."""
    args = study._parser().parse_args(study.read_recipe(recipe))
    axes, points, configs = study.plan(args)  # validates every cell
    assert args.out and len(axes) >= 1 and all(len(values) >= 2 for _, values in axes)
    assert len(configs) == len(points) == np.prod([len(values) for _, values in axes])
    with open(recipe, encoding="utf-8") as f:
        header = f.read()
    assert "python -m simclr_tf.study " + os.path.relpath(recipe, ROOT) in header  # the command


def test_recipes_exist():
    names = {os.path.basename(r) for r in RECIPES}
    assert {"digits_augmentation.flags", "digits_temperature.flags"} <= names


@pytest.mark.parametrize("axes", [
    [("view_b", ["crop", "crop,rotate", "crop,color"])],
    [("first", ["crop", "color"]), ("second", ["crop", "color"])],
    [("a", [1, 2]), ("b", ["x", "y"]), ("c", [0.1, 0.5, 1.0])],
])
def test_table_and_picture(tmp_path, axes):
    names = [n for n, _ in axes]
    rows = [{**dict(zip(names, combo, strict=True)), "linear_eval_top1": 0.5 + 0.1 * i if i != 1 else None,
             "train_seconds": 3.0, "model_dir": f"d{i}"}
            for i, combo in enumerate(itertools.product(*[v for _, v in axes]))]
    csv_path, md_path = study.write_table(rows, axes, str(tmp_path))
    with open(csv_path) as f:
        read = list(csv.DictReader(f))
    assert len(read) == len(rows) and read[0]["linear_eval_top1"] == "0.5"
    assert "| 50.0% | 3 |" in open(md_path).read()
    png = study.draw_picture(rows, axes, str(tmp_path / "study.png"), "test")
    with Image.open(png) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[0] > 40 and pixels.shape[1] > 100
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 4  # text and coloured cells drawn


def _pixels_of(pixels, colour):
    """(rows, columns) of the pixels of exactly that colour."""
    return np.nonzero(np.all(pixels == np.array(colour, np.uint8), axis=-1))


def test_line_plot_of_a_numeric_grid(tmp_path):
    """Temperature x loss: one line per loss, the accuracy rising along one and falling along the other."""
    axes = [("temperature", [0.05, 0.1, 0.5, 1.0]), ("contrastive_loss", ["nt_xent", "nt_logistic"])]
    accuracy = {("nt_xent", t): 0.90 + 0.02 * i for i, t in enumerate(axes[0][1])}
    accuracy.update({("nt_logistic", t): 0.95 - 0.02 * i for i, t in enumerate(axes[0][1])})
    rows = [{"temperature": t, "contrastive_loss": loss, "linear_eval_top1": accuracy[(loss, t)]}
            for t, loss in itertools.product(*[v for _, v in axes])]
    assert study.is_numeric_axis(axes[0]) and not study.is_numeric_axis(axes[1])
    assert not study.is_numeric_axis(("first", [1, 2])) and not study.is_numeric_axis(("x", [True, False]))
    path = study.draw_picture(rows, axes, str(tmp_path / "study.png"), "t")
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[0] == 380 and pixels.shape[1] > 640  # the plot and its legend
    rising_y, rising_x = _pixels_of(pixels, study._PALETTE[0])
    falling_y, falling_x = _pixels_of(pixels, study._PALETTE[1])
    assert len(rising_x) > 100 and len(falling_x) > 100  # two lines drawn (and their legend swatches)
    plot = rising_x < 560  # leave the legend out
    left, right = rising_x[plot] < np.median(rising_x[plot]), rising_x[plot] > np.median(rising_x[plot])
    assert rising_y[plot][left].mean() > rising_y[plot][right].mean()  # image rows grow downwards
    assert rising_x[plot].min() < 100 and rising_x[plot].max() > 500  # the x axis is spanned
    plot = falling_x < 560
    left, right = falling_x[plot] < np.median(falling_x[plot]), falling_x[plot] > np.median(falling_x[plot])
    assert falling_y[plot][left].mean() < falling_y[plot][right].mean()


def test_line_plot_of_one_axis_has_no_legend(tmp_path):
    axes = [("proj_out_dim", [16, 64, 128])]
    rows = [{"proj_out_dim": d, "linear_eval_top1": v} for d, v in zip([16, 64, 128], [0.9, None, 0.95],
                                                                        strict=True)]
    path = study.draw_picture(rows, axes, str(tmp_path / "study.png"), "dims")
    with Image.open(path) as image:
        assert image.size == (640, 380)
        pixels = np.asarray(image.convert("RGB"))
    assert len(_pixels_of(pixels, study._PALETTE[0])[0]) > 50  # the line over the missing middle cell


def test_a_diverged_cell_is_recorded_and_the_study_goes_on(tmp_path, monkeypatch, capsys):
    """No training here: `train` is replaced by one that diverges at temperature 0.05."""
    from simclr_tf import training

    calls = []

    def fake_train(config, strategy):
        calls.append(config.loss.temperature)
        if config.loss.temperature == 0.05:
            raise training.TrainingDiverged("The training loss became nan at step 13. Nothing was saved")
        return {"accuracies": [{"protocol": "linear_eval", "top1": 0.9}], "train_seconds": 1.0}

    monkeypatch.setattr(training, "train", fake_train)
    out = str(tmp_path / "s")
    argv = ["--out", out, "--quick", "--grid", "temperature=0.05;0.5"]
    assert study.main(argv) == 0
    assert "linear-eval top-1 diverged: The training loss became nan at step 13" in capsys.readouterr().out
    with open(os.path.join(out, "study.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [(r["linear_eval_top1"], r["note"]) for r in rows] == [
        ("", "diverged: The training loss became nan at step 13"), ("0.9", "")]
    assert "| `0.05` |  |  |  | diverged: The training loss became nan at step 13 |" in open(
        os.path.join(out, "study.md")).read()
    assert os.path.exists(os.path.join(out, "study.png")) and calls == [0.05, 0.5]
    assert study.main(argv) == 0 and calls == [0.05, 0.5, 0.5]  # the diverged cell is not retried


@pytest.mark.slow
def test_quick_study_of_2x2_cells_end_to_end_and_resumed(tmp_path, capsys):
    """A 2x2 Figure 5 grid (2 steps a cell) through simclr_tf.training.train, from a recipe; a rerun
    reads the cells' results instead of training them again."""
    out = str(tmp_path / "study")
    recipe = tmp_path / "tiny.flags"
    recipe.write_text("# python -m simclr_tf.study tiny.flags\n--quick\n--pairs=crop;rotate\n"
                      "--train_steps=2\n--checkpoint_steps=2\n--train_batch_size=32\n--out=/not/here\n")
    argv = [str(recipe), "--out", out]
    assert study.main(argv) == 0
    printed = capsys.readouterr().out
    assert "cell 1/4 {'first': 'crop', 'second': 'crop'}" in printed and "cell 4/4" in printed
    with open(os.path.join(out, "study.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [(r["first"], r["second"]) for r in rows] == [("crop", "crop"), ("crop", "rotate"),
                                                         ("rotate", "crop"), ("rotate", "rotate")]
    assert all(0.0 < float(r["linear_eval_top1"]) <= 1.0 for r in rows)
    assert os.path.exists(os.path.join(out, "study.png"))
    import json

    with open(os.path.join(rows[2]["model_dir"], "config.json")) as f:
        assert json.load(f)["augment"]["view_b"] == "crop,rotate,crop"
    assert study.main(argv) == 0  # finished cells are read, not retrained
    assert capsys.readouterr().out.count("(reused)") == 4


# --- a time budget per cell, seeds per cell ---------------------------------------------------------


def test_cell_minutes_and_seeds_reach_every_cells_config(tmp_path):
    path = tmp_path / "r.flags"
    path.write_text("--out=runs/x\n--quick\n--grid=temperature=0.1;0.5\n--cell_minutes=2.5\n--seeds=0,3\n")
    argv = study.read_recipe(str(path))
    assert argv[-4:] == ["--cell_minutes", "2.5", "--seeds", "0,3"]
    axes, points, configs = study.plan(study._parser().parse_args(argv))
    assert [len(cell) for cell in configs] == [2, 2]
    got = [(c.loss.temperature, c.train.seed, c.train.max_train_minutes, os.path.basename(c.train.model_dir))
           for cell in configs for c in cell]
    assert got == [(0.1, 0, 2.5, "cell_0_0.1_seed0"), (0.1, 3, 2.5, "cell_0_0.1_seed3"),
                   (0.5, 0, 2.5, "cell_1_0.5_seed0"), (0.5, 3, 2.5, "cell_1_0.5_seed3")]
    # Without them: one config a cell, in the folder it always had, and no budget.
    axes, points, configs = study.plan(_args("--quick", "--grid", "temperature=0.1;0.5"))
    assert [(len(cell), os.path.basename(cell[0].train.model_dir), cell[0].train.max_train_minutes)
            for cell in configs] == [(1, "cell_0_0.1", 0.0), (1, "cell_1_0.5", 0.0)]
    for bad in ("0,0", "a,b", "-1", ""):
        with pytest.raises(ValueError, match="--seeds takes distinct non-negative integers"):
            study.plan(_args("--quick", "--grid", "temperature=0.1", "--seeds", bad))
    from simclr_tf.config import ConfigError

    with pytest.raises(ConfigError, match="`max_train_minutes` must be a non-negative number"):
        study.plan(_args("--quick", "--grid", "temperature=0.1", "--cell_minutes", "-1"))


def test_the_table_says_which_cells_the_budget_cut_and_the_progress_line_has_elapsed_and_eta(
        tmp_path, monkeypatch, capsys):
    """No training here: `train` is replaced by one that honours a budget of 30 steps' worth."""
    from simclr_tf import training

    seen = []

    def fake_train(config, strategy):
        seen.append(config.train.max_train_minutes)
        steps = {0.1: 30, 0.5: 12}[config.loss.temperature]  # 0.5: cut by the budget at step 12
        return {"accuracies": [{"protocol": "linear_eval", "top1": 0.9, "split": "digits:test",
                                "examples": 360}], "train_seconds": 2.0,
                "train_steps": 30, "train_steps_done": steps,
                "stopped_by": "time_budget" if steps < 30 else None}

    monkeypatch.setattr(training, "train", fake_train)
    out = str(tmp_path / "s")
    assert study.main(["--out", out, "--quick", "--grid", "temperature=0.1;0.5", "--cell_minutes", "4"]) == 0
    assert seen == [4.0, 4.0]
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("cell 1/2 {'temperature': 0.1}: linear-eval top-1 90.0% on digits:test "
                                 "(360 images) (")
    assert ", elapsed " in printed[0] and printed[0].endswith(" s")  # the eta of one more cell
    assert "(time budget: stopped at step 12 of 30)" in printed[1] and printed[1].endswith("eta 0 s")
    with open(os.path.join(out, "study.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [(r["train_steps_done"], r["train_steps"], r["stopped_by"]) for r in rows] == [
        ("30", "30", ""), ("12", "30", "time_budget")]
    table = open(os.path.join(out, "study.md")).read()
    assert "| `0.1` | 90.0% | 2 | 30 |  |" in table
    assert "| `0.5` | 90.0% | 2 | 12/30 (time budget) |  |" in table


def test_progress_eta_counts_only_the_cells_left_to_train(tmp_path, monkeypatch, capsys):
    """A finished cell after the current one is read, not trained: the eta leaves it out."""
    import json

    from simclr_tf import training

    monkeypatch.setattr(training, "train", lambda config, strategy: {
        "accuracies": [{"protocol": "linear_eval", "top1": 0.5}], "train_seconds": 1.0})
    ticks = iter(range(0, 10_000, 100))  # every clock reading 100 s later
    out = tmp_path / "s"
    args = ["--out", str(out), "--quick", "--grid", "temperature=0.1;0.2;0.5"]
    _, _, configs = study.plan(_args(*args[2:]))
    last = out / os.path.basename(configs[2][0].train.model_dir)  # the last cell finished already
    last.mkdir(parents=True)
    (last / "result.json").write_text(json.dumps({"accuracies": [{"protocol": "linear_eval", "top1": 0.7}]}))
    assert study.main(args, clock=lambda: next(ticks)) == 0
    lines = capsys.readouterr().out.splitlines()[:3]
    # Readings: start 0; cell 1 from 100 to 200 (100 s) -> 1 cell left to train (the third is done).
    assert lines[0].endswith("(1 min 40 s), elapsed 3 min 20 s, eta 1 min 40 s"), lines[0]
    assert lines[1].endswith("eta 0 s") and "(reused)" in lines[2] and "70.0%" in lines[2]


def test_seeds_give_mean_and_std_per_cell(tmp_path, monkeypatch, capsys):
    """No training here: the stand-in's accuracy depends on the seed and the temperature."""
    from simclr_tf import training

    accuracy = {(0.1, 0): 0.90, (0.1, 1): 0.94, (0.1, 2): 0.95, (0.5, 0): 0.80, (0.5, 1): 0.82}

    def fake_train(config, strategy):
        key = (config.loss.temperature, config.train.seed)
        if key not in accuracy:
            raise training.TrainingDiverged("The training loss became nan at step 5. Nothing was saved")
        return {"accuracies": [{"protocol": "linear_eval", "top1": accuracy[key]}],
                "train_seconds": 1.0 + key[1], "train_steps": 30, "train_steps_done": 30 - 10 * key[1],
                "stopped_by": "time_budget" if key[1] else None}

    monkeypatch.setattr(training, "train", fake_train)
    out = str(tmp_path / "s")
    assert study.main(["--out", out, "--quick", "--grid", "temperature=0.1;0.5", "--seeds", "0,1,2"]) == 0
    printed = capsys.readouterr().out
    assert "cell 2/2 seed 2 (run 6/6) {'temperature': 0.5}: linear-eval top-1 diverged" in printed
    with open(os.path.join(out, "study.csv")) as f:
        rows = list(csv.DictReader(f))
    first = [0.90, 0.94, 0.95]
    assert float(rows[0]["linear_eval_top1"]) == pytest.approx(np.mean(first))
    assert float(rows[0]["linear_eval_top1_std"]) == pytest.approx(np.std(first, ddof=1))
    assert float(rows[1]["linear_eval_top1"]) == pytest.approx(0.81)  # the diverged seed left out
    assert float(rows[1]["linear_eval_top1_std"]) == pytest.approx(np.std([0.80, 0.82], ddof=1))
    assert rows[1]["linear_eval_top1_per_seed"] == "0.8;0.82;" and rows[0]["seeds"] == "0;1;2"
    assert rows[0]["train_steps_done"] == "30;20;10" and rows[0]["stopped_by"] == ";time_budget;time_budget"
    assert float(rows[0]["train_seconds"]) == pytest.approx(2.0)  # the mean of 1, 2 and 3
    assert rows[1]["note"] == "seed 2 diverged: The training loss became nan at step 5"
    assert len(rows[0]["model_dir"].split(";")) == 3
    table = open(os.path.join(out, "study.md")).read()
    assert "linear-eval top-1 (mean ± std, seeds 0,1,2)" in table
    assert f"| `0.1` | {np.mean(first):.1%} ± {np.std(first, ddof=1):.1%} | 2 | " \
           "30, 20/30 (time budget), 10/30 (time budget) |  |" in table


@pytest.mark.slow
def test_a_real_study_whose_cells_are_cut_by_their_budget(tmp_path, monkeypatch):
    """Two cells of 8 steps each, a budget of 3 minutes a cell, a fake clock moving one minute a
    step: each cell stops, is saved and evaluated at step 3, and study.csv says so."""
    import functools

    import tensorflow as tf

    from simclr_tf.training import callbacks

    class MinutePerCall:
        now = 0.0

        def __call__(self):
            self.now += 60.0
            return self.now

    monkeypatch.setattr(callbacks, "TimeBudget", functools.partial(callbacks.TimeBudget,
                                                                   clock=MinutePerCall()))
    out = str(tmp_path / "s")
    assert study.main(["--out", out, "--quick", "--grid", "temperature=0.1;0.5", "--cell_minutes", "3",
                       "--set", "resnet_depth=10", "--set", "train_steps=8", "--set", "checkpoint_steps=100",
                       "--set", "train_batch_size=16"]) == 0
    with open(os.path.join(out, "study.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [(r["train_steps_done"], r["train_steps"], r["stopped_by"]) for r in rows] == [
        ("3", "8", "time_budget")] * 2
    assert all(0.0 < float(r["linear_eval_top1"]) <= 1.0 for r in rows)
    for row in rows:
        assert tf.train.latest_checkpoint(row["model_dir"]).endswith("ckpt-3")
    assert "| 3/8 (time budget) |" in open(os.path.join(out, "study.md")).read()
