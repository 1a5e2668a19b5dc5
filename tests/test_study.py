"""experiments/study.py: the grid, the cells' settings, the table and the picture; a 2-cell quick
study end to end (slow), resumed without retraining."""

import csv
import importlib.util
import os

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("study", os.path.join(ROOT, "experiments", "study.py"))
study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study)


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
    assert study.cell_settings({"first": "color", "second": "rotate"}) == {"view_a": "crop",
                                                                          "view_b": "crop,color,rotate"}
    assert study.cell_settings({"first": "color", "second": "color"})["view_b"] == "crop,color"
    assert study.cell_settings({"first": "crop", "second": "crop"})["view_b"] == "crop"
    config = study.make_config({**study.QUICK, **study.cell_settings({"first": "crop", "second": "blur"}),
                                "temperature": 0.2}, "/tmp/cell")
    got = (config.augment.view_b, config.loss.temperature, config.train.model_dir)
    assert got == ("crop,blur", 0.2, "/tmp/cell")
    config.resolved().validate()


def test_flagfile_settings(tmp_path):
    path = tmp_path / "base.flags"
    path.write_text("# a comment\n--dataset=digits\n--nouse_blur\n--train_steps=7\n--hidden_norm\n")
    assert study.read_flagfile(str(path)) == {"dataset": "digits", "use_blur": False, "train_steps": 7,
                                              "hidden_norm": True}


@pytest.mark.parametrize("axes", [
    [("view_b", ["crop", "crop,rotate", "crop,color"])],
    [("first", ["crop", "color"]), ("second", ["crop", "color"])],
    [("a", [1, 2]), ("b", ["x", "y"]), ("c", [0.1, 0.5, 1.0])],
])
def test_table_and_picture(tmp_path, axes):
    import itertools

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


@pytest.mark.slow
def test_quick_study_of_two_cells_end_to_end_and_resumed(tmp_path, capsys):
    """Two short runs (2 steps each) through simclr_tf.training.train; a rerun reads their results."""
    out = str(tmp_path / "study")
    argv = ["--out", out, "--quick", "--set", "train_steps=2", "--set", "checkpoint_steps=2",
            "--set", "train_batch_size=32", "--grid", "view_b=crop;crop,rotate"]
    assert study.main(argv) == 0
    printed = capsys.readouterr().out
    assert "cell 1/2 {'view_b': 'crop'}" in printed and "cell 2/2" in printed
    with open(os.path.join(out, "study.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["view_b"] for r in rows] == ["crop", "crop,rotate"]
    assert all(0.0 < float(r["linear_eval_top1"]) <= 1.0 for r in rows)
    assert os.path.exists(os.path.join(out, "study.png"))
    assert study.main(argv) == 0  # finished cells are read, not retrained
    assert capsys.readouterr().out.count("(reused)") == 2
