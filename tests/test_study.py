"""simclr_tf.study (python -m simclr_tf.study): the grid, the cells' settings, the recipes, the table
and the pictures; a 2x2 quick study end to end (slow), resumed without retraining."""

import csv
import glob
import itertools
import os

import numpy as np
import pytest
from PIL import Image

from simclr_tf import study, study_report

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


def _rows(axes, accuracy_of):
    names = [n for n, _ in axes]
    return [{**dict(zip(names, combo, strict=True)), "linear_eval_top1": accuracy_of(i),
             "train_seconds": 3.0, "model_dir": f"d{i}"}
            for i, combo in enumerate(itertools.product(*[v for _, v in axes]))]


def _png_checks(path, figure):
    """The PNG decodes, has the figure's size at its dpi, is not one colour, and stays small."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    width, height = figure.get_size_inches() * figure.dpi
    assert pixels.shape == (round(height), round(width), 3)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # text, lines and colours drawn
    assert os.path.getsize(path) < 300_000


@pytest.mark.parametrize("axes", [
    [("view_b", ["crop", "crop,rotate", "crop,color"])],
    [("first", ["crop", "color"]), ("second", ["crop", "color"])],
    [("a", [1, 2]), ("b", ["x", "y"]), ("c", [0.1, 0.5, 1.0])],
])
def test_table_and_picture(tmp_path, axes):
    rows = _rows(axes, lambda i: 0.5 + 0.1 * i if i != 1 else None)
    csv_path, md_path = study.write_table(rows, axes, str(tmp_path))
    with open(csv_path) as f:
        read = list(csv.DictReader(f))
    assert len(read) == len(rows) and read[0]["linear_eval_top1"] == "0.5"
    assert "| 50.0% | 3 |" in open(md_path).read()
    png = study.draw_picture(rows, axes, str(tmp_path / "study.png"), "test")
    _png_checks(png, study_report.study_figure(rows, axes, "test"))


def test_heat_map_has_the_grid_on_its_axes_and_each_value_in_its_cell():
    """Rows: all axes but the last (their values joined), columns: the last; a grey '-' where a
    cell diverged; the colour bar spans exactly the finite accuracies."""
    axes = [("a", [True, False]), ("b", ["x", "y"]), ("c", [0.1, 0.5, 1.0])]  # a: not numeric
    values = [0.6, None, 0.62, 0.7, 0.71, 0.72, 0.8, 0.81, 0.82, 0.9, 0.91, 0.935]
    figure = study_report.study_figure(_rows(axes, values.__getitem__), axes, "grid")
    heat = figure.axes[0]
    assert (heat.get_xlabel(), heat.get_ylabel()) == ("c", "a / b")
    assert [t.get_text() for t in heat.get_xticklabels()] == ["0.1", "0.5", "1.0"]
    assert [t.get_text() for t in heat.get_yticklabels()] == ["True,x", "True,y", "False,x", "False,y"]
    assert heat.get_title() == "grid: linear-eval top-1"
    # Cells in reading order: row (a, b), then column c, as itertools.product orders the rows.
    assert [t.get_text() for t in heat.texts] == ["-" if v is None else f"{v:.1%}" for v in values]
    assert [(t.get_position()) for t in heat.texts[:4]] == [(0, 0), (1, 0), (2, 0), (0, 1)]
    image = heat.images[0]
    drawn = image.get_array()
    assert drawn.mask.tolist() == [[v is None for v in values[i:i + 3]] for i in range(0, 12, 3)]
    np.testing.assert_allclose(drawn.filled(np.nan), [[np.nan if v is None else v for v in values[i:i + 3]]
                                                     for i in range(0, 12, 3)])
    assert (image.norm.vmin, image.norm.vmax) == (0.6, 0.935)
    bar = image.colorbar
    assert bar is not None and bar.ax in figure.axes and bar.ax.get_ylim() == pytest.approx((0.6, 0.935))
    assert bar.ax.get_ylabel() == "linear-eval top-1"


def test_pairs_heat_map_and_one_axis_bars():
    axes = [("first", ["crop", "color", "rotate"]), ("second", ["crop", "color", "rotate"])]
    figure = study_report.study_figure(_rows(axes, lambda i: 0.5 + 0.05 * i), axes, "pairs")
    heat = figure.axes[0]
    assert (heat.get_ylabel(), heat.get_xlabel()) == ("first", "second")
    assert [t.get_text() for t in heat.get_yticklabels()] == ["crop", "color", "rotate"]
    assert heat.texts[4].get_text() == "70.0%"  # (color, color), the diagonal's middle
    axes = [("view_b", ["crop", "crop,rotate", "crop,color"])]
    figure = study_report.study_figure(_rows(axes, [0.5, None, 0.75].__getitem__), axes, "bars")
    bars = figure.axes[0]
    assert [p.get_width() for p in bars.patches] == [0.5, 0.0, 0.75]
    assert [t.get_text() for t in bars.get_yticklabels()] == ["crop", "crop,rotate", "crop,color"]
    assert [t.get_text() for t in bars.texts] == ["50.0%", "-", "75.0%"]
    assert (bars.get_ylabel(), bars.get_xlabel()) == ("view_b", "linear-eval top-1")


def test_line_plot_of_a_numeric_grid(tmp_path):
    """Temperature x loss: one line per loss with the cells' accuracies, a log x axis ticked at the
    grid's values, and a legend naming the lines."""
    axes = [("temperature", [0.05, 0.1, 0.5, 1.0]), ("contrastive_loss", ["nt_xent", "nt_logistic"])]
    accuracy = {("nt_xent", t): 0.90 + 0.02 * i for i, t in enumerate(axes[0][1])}
    accuracy.update({("nt_logistic", t): 0.95 - 0.02 * i for i, t in enumerate(axes[0][1])})
    rows = [{"temperature": t, "contrastive_loss": loss, "linear_eval_top1": accuracy[(loss, t)]}
            for t, loss in itertools.product(*[v for _, v in axes])]
    assert study_report.is_numeric_axis(axes[0]) and not study_report.is_numeric_axis(axes[1])
    assert not study_report.is_numeric_axis(("first", [1, 2]))
    assert not study_report.is_numeric_axis(("x", [True, False]))
    figure = study_report.study_figure(rows, axes, "t")
    plot = figure.axes[0]
    assert plot.get_xscale() == "log" and plot.get_xlabel() == "temperature (log scale)"
    assert plot.get_ylabel() == "linear-eval top-1"
    np.testing.assert_allclose(plot.get_xticks(), [0.05, 0.1, 0.5, 1.0])
    assert [t.get_text() for t in plot.get_xticklabels()] == ["0.05", "0.1", "0.5", "1"]
    for line, loss in zip(plot.get_lines(), ["nt_xent", "nt_logistic"], strict=True):
        np.testing.assert_allclose(line.get_xdata(), axes[0][1])
        np.testing.assert_allclose(line.get_ydata(), [accuracy[(loss, t)] for t in axes[0][1]])
    assert [t.get_text() for t in plot.get_legend().get_texts()] == ["contrastive_loss=nt_xent",
                                                                      "contrastive_loss=nt_logistic"]
    _png_checks(study.draw_picture(rows, axes, str(tmp_path / "study.png"), "t"), figure)


def test_line_plot_of_one_axis_has_no_legend():
    axes = [("proj_out_dim", [16, 64, 128])]
    rows = [{"proj_out_dim": d, "linear_eval_top1": v} for d, v in zip([16, 64, 128], [0.9, None, 0.95],
                                                                        strict=True)]
    plot = study_report.study_figure(rows, axes, "dims").axes[0]
    assert plot.get_legend() is None and plot.get_xscale() == "linear"  # 128 / 16 < 10
    (line,) = plot.get_lines()  # the line over the missing middle cell
    assert line.get_xdata().tolist() == [16, 128] and line.get_ydata().tolist() == [0.9, 0.95]


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


def _assert_the_table_holds_what_each_run_measured(rows):
    """Each row's accuracy is its run's linear evaluation (result.json), exactly: a count of the 360
    held-out digits (QUICK's logistic regression), and far above the 10% of guessing (the untrained
    encoder's features already separate digits well: README, `--quick`)."""
    import json

    for row in rows:
        with open(os.path.join(row["model_dir"], "result.json")) as f:
            result = json.load(f)
        (entry,) = [a for a in result["accuracies"] if a["protocol"] == "linear_eval"]
        assert (entry["detail"], entry["examples"]) == ("logistic", 360)
        assert float(row["linear_eval_top1"]) == entry["top1"] == result["eval_top1"]
        correct = entry["top1"] * 360
        assert correct == pytest.approx(round(correct), abs=1e-6) and correct > 0.3 * 360


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
    _assert_the_table_holds_what_each_run_measured(rows)
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


@pytest.mark.slow
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
    _assert_the_table_holds_what_each_run_measured(rows)
    for row in rows:
        assert tf.train.latest_checkpoint(row["model_dir"]).endswith("ckpt-3")
    assert "| 3/8 (time budget) |" in open(os.path.join(out, "study.md")).read()
