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
    assert "| `0.05` |  |  | diverged: The training loss became nan at step 13 |" in open(
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
