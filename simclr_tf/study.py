"""Run a study: a grid of short SimCLR runs, a table and a picture of their linear-evaluation accuracy.

    python -m simclr_tf.study experiments/studies/digits_augmentation.flags
    python -m simclr_tf.study --out runs/study_rotate --quick \\
        --grid "view_b=crop;crop,color;crop,rotate"
    python -m simclr_tf.study --out runs/study_pairs --quick --pairs "crop;color;blur;rotate"
    python -m simclr_tf.study --out runs/study_t --base experiments/smoke.flags \\
        --grid "temperature=0.1;0.5;1.0" --grid "contrastive_loss=nt_xent;nt_logistic"
    python -m simclr_tf.study experiments/studies/digits_temperature.flags --cell_minutes 2 --seeds 0,1,2

A recipe (`experiments/studies/*.flags`) is a file of the study's arguments, one per line
(`--out=...`, `--pairs=...`, `--grid=...`, `--quick`, `--title=...`, `--cell_minutes=...`,
`--seeds=...`); any other `--name=value`
line sets that config field for every cell, like `--set name=value`. Arguments after the recipe
add to it (a later `--out` wins, so `--out /tmp/s` reruns a recipe elsewhere).

Each `--grid NAME=V1;V2;...` is one axis over a config field (any field of `simclr_tf.config`,
named as its flag: `view_b`, `temperature`, `proj_out_dim`, `train_batch_size`, ...); the study
runs every combination of the axes. `--pairs T1;T2;...` is the paper's Figure 5 grid: both views
are first cropped (the paper's base: "we always first randomly crop images and resize them to the
same resolution"), then the second view gets the row's transformation followed by the column's
(the diagonal: that transformation alone), the first view nothing more. `--base FLAGFILE` and
`--set NAME=VALUE` set the rest; `--quick` is a few minutes on the built-in digits (16 px,
ResNet-18, 30 steps of 64, logistic-regression linear evaluation on the 360 held-out digits).

Each cell is a normal run directory under `--out` (`cell_<i>_<values>`), so an interrupted cell
resumes from its checkpoint and a finished one (its `result.json`) is read, not rerun: a killed
study continues where it stopped. The study writes `study.csv`, `study.md` and `study.png` of the
held-out linear-evaluation top-1 accuracy (`results["accuracies"]`, protocol `linear_eval`), drawn
with Pillow: the Figure 5 heat map for `--pairs` and grids whose first axis is not numeric (a bar
chart for one such axis), and for a numeric first axis (temperature, projection size, batch size
x steps) a line plot of the accuracy against it, one line per value of the other axes. A cell
whose training diverges (NaN loss) is recorded as such and the study goes on.

`--cell_minutes N` is a time budget per cell (the config's `max_train_minutes`): a cell's training
stops once it has run N minutes, that step is saved and evaluated, and the table says which cells
it cut and at which step (`train_steps_done`, `stopped_by` in study.csv; `41/64 (time budget)` in
study.md). Such a cell is finished: a rerun reads it (delete its result.json to train it on from
its checkpoint). `--seeds 0,1,2` runs every cell once per seed (`cell_<i>_<values>_seed<s>`); the
table gives the mean and the sample standard deviation over the seeds that did not diverge (each
seed's value in study.csv), the picture the mean. Each finished run prints a progress line,
`cell 7/49 {<its values>}: linear-eval top-1 <accuracy> on <split> (<its time>), elapsed <time>, eta <time>`,
the eta being the mean time of the runs trained so far times the runs left to train.

The module is over 450 lines: the grid, its recipes, its table and its two pictures are one tool
whose parts change together (a new axis kind touches all four).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import os
import re
import statistics
import sys
import time

QUICK = {  # a few minutes on 2 CPU cores for a handful of cells
    "dataset": "digits", "image_size": 16, "resnet_depth": 18, "train_batch_size": 64,
    "train_steps": 30, "checkpoint_steps": 30, "keep_checkpoint_max": 1, "warmup_epochs": 1.0,
    "lineareval_while_pretraining": False, "linear_eval_protocol": "logistic", "linear_eval_epochs": 1,
}


def _fields():
    """Flag name -> (config section, annotation) for every field of the config."""
    from simclr_tf.config import Config

    return {f.name: (section.name, f.type) for section in dataclasses.fields(Config)
            for f in dataclasses.fields(getattr(Config(), section.name))}


def parse_value(name: str, text: str):
    """`text` as the type of config field `name` (bool: true/false/1/0; `None` for optional)."""
    fields = _fields()
    if name not in fields:
        raise ValueError(f"unknown setting {name!r}: use a config field / flag name, e.g. temperature, "
                         "view_b, proj_out_dim, train_batch_size")
    annotation = str(fields[name][1])
    if text == "None" and "None" in annotation:
        return None
    if annotation.startswith("bool"):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{name} takes true or false. Received: {text!r}.")
        return text.lower() in ("true", "1")
    for kind in (int, float):
        if annotation.startswith(kind.__name__):
            return kind(text)
    return text


STUDY_OPTIONS = ("out", "grid", "pairs", "base", "set", "quick", "title", "cell_minutes", "seeds")


def read_recipe(path: str) -> list[str]:
    """A recipe file as study arguments: its study options as they are, other flags as `--set`."""
    argv = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not line.startswith("--"):
                raise ValueError(f"{path}:{number}: expected --name=value, --name or a # comment. "
                                 f"Received: {line!r}.")
            name, equals, value = line[2:].partition("=")
            if name in STUDY_OPTIONS:
                argv += [f"--{name}", value] if equals else [f"--{name}"]
            elif equals:
                parse_value(name, value)  # an unknown setting is named with its line
                argv += ["--set", f"{name}={value}"]
            elif name.startswith("no") and name[2:] in _fields():
                argv += ["--set", f"{name[2:]}=false"]
            else:
                parse_value(name, "true")
                argv += ["--set", f"{name}=true"]
    return argv


def read_flagfile(path: str) -> dict:
    """`--name=value`, `--name` and `--noname` lines of a flagfile (comments skipped)."""
    settings = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line.startswith("--"):
                continue
            name, equals, value = line[2:].partition("=")
            if equals:
                settings[name] = parse_value(name, value)
            elif name.startswith("no") and name[2:] in _fields():
                settings[name[2:]] = False
            else:
                settings[name] = True
    return settings


def build_grid(args) -> list[tuple[str, list]]:
    """The study's axes: `(name, values)` pairs, in order."""
    axes = []
    if args.pairs:
        names = [t.strip() for t in args.pairs.split(";") if t.strip()]
        axes += [("first", names), ("second", names)]
    for spec in args.grid:
        name, equals, values = spec.partition("=")
        if not equals or not values:
            raise ValueError(f"--grid takes NAME=V1;V2;... Received: {spec!r}.")
        axes.append((name.strip(), [parse_value(name.strip(), v) for v in values.split(";")]))
    if not axes:
        raise ValueError("give at least one --grid NAME=V1;V2 or --pairs T1;T2")
    return axes


def cell_settings(point: dict) -> dict:
    """The config settings of one cell: `first` / `second` become the Figure 5 view pair.

    Both views start with the base crop; the second then gets `first` and `second` in that order
    (once on the diagonal), so `(crop, color)` is `crop,crop,color` and `(color, crop)` is
    `crop,color,crop`, as the paper's asymmetric setting composes them.
    """
    settings = {k: v for k, v in point.items() if k not in ("first", "second")}
    if "first" in point:
        first, second = point["first"], point["second"]
        transforms = [first] if first == second else [first, second]
        settings["view_a"] = "crop"
        settings["view_b"] = ",".join(["crop", *transforms])
    return settings


def make_config(settings: dict, model_dir: str):
    from simclr_tf.config import Config

    fields, sections = _fields(), {}
    for name, value in settings.items():
        sections.setdefault(fields[name][0], {})[name] = value
    sections.setdefault("train", {})["model_dir"] = model_dir
    defaults = Config()
    return Config(**{section: dataclasses.replace(getattr(defaults, section), **values)
                     for section, values in sections.items()})


def _slug(point: dict) -> str:
    text = "_".join(f"{v}" for v in point.values())
    return re.sub(r"[^A-Za-z0-9.=-]+", "-", text).strip("-")[:80]


def linear_eval_top1(results: dict) -> float | None:
    for entry in results.get("accuracies", []):
        if entry["protocol"] == "linear_eval":
            return float(entry["top1"])
    return None


def _split_of(results: dict) -> str:
    """' on <split> (<n> images)' of the linear evaluation in `results`, or ''."""
    for entry in results.get("accuracies", []):
        if entry["protocol"] == "linear_eval" and entry.get("split"):
            return f" on {entry['split']} ({entry['examples']} images)"
    return ""


DIVERGED = "study_diverged.txt"  # in a cell's directory: its training diverged; not retried


def finished_result(config) -> dict | None:
    """The result of a cell that has finished (its result.json, or its divergence), else None."""
    path = os.path.join(config.train.model_dir, "result.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
        if linear_eval_top1(results) is not None:
            return {**results, "reused": True}
    marker = os.path.join(config.train.model_dir, DIVERGED)
    if os.path.exists(marker):
        with open(marker, encoding="utf-8") as f:
            return {"diverged": f.read().strip(), "reused": True}
    return None


def run_cell(config) -> dict:
    """Trains one cell (or reads its finished result.json).

    A cell whose loss becomes NaN (a low temperature without l2 normalisation, say) is a result of
    the study, not its end: it is recorded as `{"diverged": message}` (and in `study_diverged.txt`
    of its directory, so a rerun does not train it again), and the study goes on. So is a cell
    that its time budget (`max_train_minutes`) cut: its result.json says where
    (`stopped_by`, `train_steps_done`), and a rerun reads it.
    """
    finished = finished_result(config)
    if finished is not None:
        return finished
    import keras

    from simclr_tf import training
    from simclr_tf.distribute import make_strategy

    keras.backend.clear_session()
    config = config.resolved().validate()
    try:
        return training.train(config, make_strategy(config.runtime.strategy, devices=config.runtime.devices))
    except training.TrainingDiverged as error:
        message = str(error).split(". ")[0]  # "The training loss became nan at step 13"
        os.makedirs(config.train.model_dir, exist_ok=True)
        with open(os.path.join(config.train.model_dir, DIVERGED), "w", encoding="utf-8") as f:
            f.write(message + "\n")
        return {"diverged": message}


# --- table and picture ------------------------------------------------------------------------------


def _joined(values) -> str:
    return ";".join("" if v is None else str(v) for v in values)


def cell_row(point: dict, runs: list[tuple[int | None, dict]], model_dirs: list[str]) -> dict:
    """One row of the table: a cell's results, over its seeds when `--seeds` ran it more than once.

    Args:
        point: dict. The cell's values of the axes.
        runs: list of (seed, results): the seed is None without `--seeds`.
        model_dirs: list of str. The runs' directories, in the same order.

    Returns:
        dict: the point, `linear_eval_top1` (the mean over the seeds that did not diverge),
        `train_seconds` (the mean), `train_steps_done` / `train_steps` / `stopped_by` (what the
        time budget did), `steps` (the same as text: `41/64 (time budget)` when it cut the run),
        `model_dir`, `note`; with seeds also `seeds`, `linear_eval_top1_std` (sample standard
        deviation, `None` for fewer than two values) and `linear_eval_top1_per_seed`. With seeds,
        the per-run columns hold one value per seed joined by `;`.
    """
    seeded = runs[0][0] is not None
    tops = [linear_eval_top1(results) for _, results in runs]
    valid = [t for t in tops if t is not None]
    seconds = [r["train_seconds"] for _, r in runs if r.get("train_seconds") is not None]
    notes, steps = [], []
    for seed, results in runs:
        if results.get("diverged"):
            notes.append(("" if seed is None else f"seed {seed} ") + f"diverged: {results['diverged']}")
        done, total = results.get("train_steps_done"), results.get("train_steps")
        if results.get("stopped_by") == "time_budget":
            steps.append(f"{done}/{total} (time budget)")
        elif done is not None:
            steps.append(f"{done}")
    row = {**point,
           "linear_eval_top1": statistics.fmean(valid) if valid else None,
           "train_seconds": statistics.fmean(seconds) if seconds else None,
           "steps": steps[0] if len(set(steps)) == 1 else ", ".join(steps),
           "model_dir": _joined(model_dirs), "note": "; ".join(notes)}
    per_run = {name: [results.get(name) for _, results in runs]
               for name in ("train_steps_done", "train_steps", "stopped_by")}
    if seeded:
        row.update({name: _joined(values) for name, values in per_run.items()})
        row.update(seeds=_joined(seed for seed, _ in runs),
                   linear_eval_top1_std=statistics.stdev(valid) if len(valid) > 1 else None,
                   linear_eval_top1_per_seed=_joined(tops))
    else:
        row.update({name: values[0] for name, values in per_run.items()})
    return row


def write_table(rows: list[dict], axes: list, out: str) -> tuple[str, str]:
    """`study.csv` (every column of the rows) and `study.md` (the readable table) in `out`."""
    names = [name for name, _ in axes]
    seeded = any("seeds" in row for row in rows)
    columns = names + ["linear_eval_top1"]
    if seeded:
        columns += ["linear_eval_top1_std", "seeds", "linear_eval_top1_per_seed"]
    columns += ["train_seconds", "train_steps_done", "train_steps", "stopped_by", "model_dir", "note"]
    csv_path, md_path = os.path.join(out, "study.csv"), os.path.join(out, "study.md")
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    accuracy = "linear-eval top-1"
    if seeded:
        accuracy += f" (mean ± std, seeds {rows[0]['seeds'].replace(';', ',')})"
    lines = ["| " + " | ".join(names) + f" | {accuracy} | train s | steps | note |",
             "|" + "---|" * (len(names) + 4)]
    for row in rows:
        top1 = "" if row["linear_eval_top1"] is None else f"{row['linear_eval_top1']:.1%}"
        if top1 and row.get("linear_eval_top1_std") is not None:
            top1 += f" ± {row['linear_eval_top1_std']:.1%}"
        seconds = "" if row.get("train_seconds") is None else f"{row['train_seconds']:.0f}"
        lines.append("| " + " | ".join(f"`{row[n]}`" for n in names)
                     + f" | {top1} | {seconds} | {row.get('steps') or ''} | {row.get('note') or ''} |")
    with open(md_path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return csv_path, md_path


def _color(value: float, low: float, high: float) -> tuple[int, int, int]:
    t = 0.5 if high <= low else (value - low) / (high - low)
    return (int(247 - 200 * t), int(251 - 130 * t), int(255 - 75 * t))  # white to blue


# Line colours of the line plot (repeated past ten lines).
_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def is_numeric_axis(axis: tuple) -> bool:
    """An axis of numbers (not `--pairs`, not booleans): drawn as the line plot's x axis."""
    name, values = axis
    return name not in ("first", "second") and len(values) > 1 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def draw_picture(rows: list[dict], axes: list, path: str, title: str) -> str:
    """The study's picture: a line plot for a numeric first axis, else a heat map or bar chart."""
    if is_numeric_axis(axes[0]):
        return draw_lines(rows, axes, path, title)
    return draw_grid(rows, axes, path, title)


def draw_lines(rows: list[dict], axes: list, path: str, title: str, size=(640, 380)) -> str:
    """Accuracy against the first axis, one line per combination of the other axes' values.

    The x axis is logarithmic when its values are positive and span a factor of 10 or more
    (temperatures 0.05 .. 1, batch sizes 32 .. 4096), else linear; each value has a tick.
    """
    import math

    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    (x_name, x_values), other = axes[0], axes[1:]
    keys = list(itertools.product(*[v for _, v in other]))  # one line each; [()] for one axis
    labels = [", ".join(f"{n}={v}" for (n, _), v in zip(other, key, strict=True)) for key in keys]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    legend = max([int(probe.textlength(text, font=font)) for text in labels] + [0]) + 40 if other else 0
    width, height = size[0] + legend, size[1]
    left, right, top, bottom = 64, width - 20 - legend, 40, height - 48
    log_x = min(x_values) > 0 and max(x_values) / min(x_values) >= 10
    position = (lambda v: math.log(v)) if log_x else float
    lo_x, hi_x = min(map(position, x_values)), max(map(position, x_values))
    span = hi_x - lo_x or 1.0
    x_of = lambda v: left + 20 + (right - left - 40) * ((position(v) - lo_x) / span if hi_x > lo_x else 0.5)
    values = [r["linear_eval_top1"] for r in rows if r["linear_eval_top1"] is not None]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    margin = max(0.005, 0.1 * (high - low))
    low, high = max(0.0, low - margin), min(1.0, high + margin)
    y_of = lambda v: bottom - (bottom - top) * (v - low) / (high - low)

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 10), f"{title}: linear-eval top-1 against {x_name}" + (" (log scale)" if log_x else ""),
              fill="black", font=font)
    for i in range(5):  # y ticks and grid lines
        value = low + (high - low) * i / 4
        y = y_of(value)
        draw.line((left, y, right, y), fill=(225, 225, 225))
        draw.line((left - 4, y, left, y), fill="black")
        text = f"{value:.1%}"
        draw.text((left - 8 - probe.textlength(text, font=font), y - 6), text, fill="black", font=font)
    for value in x_values:  # x ticks at the grid's values
        x = x_of(value)
        draw.line((x, bottom, x, bottom + 4), fill="black")
        text = f"{value:g}"
        draw.text((x - probe.textlength(text, font=font) / 2, bottom + 8), text, fill="black", font=font)
    draw.rectangle((left, top, right, bottom), outline="black")
    draw.text(((left + right) / 2 - probe.textlength(x_name, font=font) / 2, bottom + 26), x_name,
              fill="gray", font=font)
    lookup = {tuple(r[n] for n, _ in axes): r["linear_eval_top1"] for r in rows}
    for i, key in enumerate(keys):
        colour = _PALETTE[i % len(_PALETTE)]
        points = [(x_of(v), y_of(lookup[(v, *key)])) for v in x_values
                  if lookup.get((v, *key)) is not None]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
        if other:
            y = top + 6 + 18 * i
            draw.line((right + 12, y + 6, right + 30, y + 6), fill=colour, width=3)
            draw.text((right + 34, y), labels[i], fill="black", font=font)
    image.save(path, format="PNG")
    return path


def draw_grid(rows: list[dict], axes: list, path: str, title: str) -> str:
    """A heat map (rows: all axes but the last, columns: the last) or, for one axis, a bar chart."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width_of = lambda text: int(probe.textlength(text, font=font)) + 1
    values = [r["linear_eval_top1"] for r in rows if r["linear_eval_top1"] is not None]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    pad, line = 10, 14
    if len(axes) == 1:
        name, labels = axes[0]
        labels = [str(v) for v in labels]
        left, bar = max(map(width_of, labels)) + 2 * pad, 300
        image = Image.new("RGB", (left + bar + 70, 2 * line + pad + len(rows) * (line + 8) + pad), "white")
        draw = ImageDraw.Draw(image)
        draw.text((pad, pad), f"{title}: linear-eval top-1 by {name}", fill="black", font=font)
        for i, row in enumerate(rows):
            top = 2 * line + pad + i * (line + 8)
            draw.text((pad, top), str(row[name]), fill="black", font=font)
            if row["linear_eval_top1"] is not None:
                length = int(bar * row["linear_eval_top1"])
                colour = _color(row["linear_eval_top1"], low, high)
                draw.rectangle((left, top, left + length, top + line), fill=colour, outline="black")
                draw.text((left + length + 4, top), f"{row['linear_eval_top1']:.1%}", fill="black", font=font)
    else:
        *row_axes, (col_name, col_values) = axes
        row_keys = list(itertools.product(*[v for _, v in row_axes]))
        row_labels = [",".join(map(str, key)) for key in row_keys]
        col_labels = [str(v) for v in col_values]
        cell = max(64, max(map(width_of, col_labels)) + pad)
        left = max(map(width_of, row_labels + [" / ".join(n for n, _ in row_axes)])) + 2 * pad
        top0 = 3 * line + pad
        size = (left + cell * len(col_values) + pad, top0 + 28 * len(row_keys) + pad)
        image = Image.new("RGB", size, "white")
        draw = ImageDraw.Draw(image)
        draw.text((pad, pad), f"{title}: linear-eval top-1", fill="black", font=font)
        draw.text((pad, pad + 2 * line), " / ".join(n for n, _ in row_axes), fill="gray", font=font)
        draw.text((left, pad + line), col_name, fill="gray", font=font)
        for j, label in enumerate(col_labels):
            draw.text((left + j * cell + 4, pad + 2 * line), label, fill="black", font=font)
        lookup = {tuple(r[n] for n, _ in axes): r["linear_eval_top1"] for r in rows}
        for i, key in enumerate(row_keys):
            top = top0 + 28 * i
            draw.text((pad, top + 8), row_labels[i], fill="black", font=font)
            for j, col in enumerate(col_values):
                value = lookup.get((*key, col))
                box = (left + j * cell, top, left + (j + 1) * cell - 2, top + 26)
                draw.rectangle(box, fill=_color(value, low, high) if value is not None else "#dddddd")
                text = "-" if value is None else f"{value:.1%}"
                draw.text((box[0] + (cell - width_of(text)) // 2, top + 8), text, fill="black", font=font)
    image.save(path, format="PNG")
    return path


# --- main -------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simclr_tf.study [RECIPE.flags]",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="study directory: one run directory per cell")
    parser.add_argument("--grid", action="append", default=[], help="an axis: NAME=V1;V2;... (repeatable)")
    parser.add_argument("--pairs", default=None, help="Figure 5 grid of transformations: T1;T2;...")
    parser.add_argument("--base", default=None, help="flagfile of the settings every cell shares")
    parser.add_argument("--set", action="append", default=[], help="NAME=VALUE for every cell (repeatable)")
    parser.add_argument("--quick", action="store_true", help="a few minutes on digits (see QUICK)")
    parser.add_argument("--title", default=None, help="title of the picture; default: the out folder")
    parser.add_argument("--cell_minutes", type=float, default=None,
                        help="time budget of each cell's training in minutes (max_train_minutes): a "
                             "cell stops there, is evaluated, and the table says at which step")
    parser.add_argument("--seeds", default=None,
                        help="run each cell once per seed, e.g. 0,1,2: the table shows mean ± std, "
                             "the picture the mean")
    return parser


def parse_seeds(text: str | None) -> list[int] | None:
    """`--seeds=0,1,2` as [0, 1, 2]; None without the option."""
    if text is None:
        return None
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"--seeds takes distinct non-negative integers, e.g. 0,1,2. Received: {text!r}.")
    return seeds


def plan(args) -> tuple[list, list[dict], list[list]]:
    """The study's axes, its cells' points and their validated configs, before anything trains.

    Returns:
        (axes, points, configs): `configs[i]` lists the configs of cell `i`, one per seed of
        `--seeds` (in `cell_<i>_<values>_seed<s>`), or its one config without `--seeds`.
    """
    base = dict(QUICK) if args.quick else {}
    if args.base:
        base.update(read_flagfile(args.base))
    for item in args.set:
        name, equals, value = item.partition("=")
        if not equals:
            raise ValueError(f"--set takes NAME=VALUE. Received: {item!r}.")
        base[name] = parse_value(name, value)
    if args.cell_minutes is not None:
        base["max_train_minutes"] = args.cell_minutes
    seeds = parse_seeds(args.seeds)
    axes = build_grid(args)
    points = [dict(zip([n for n, _ in axes], combo, strict=True))
              for combo in itertools.product(*[v for _, v in axes])]
    configs = []
    for i, point in enumerate(points):
        settings = {**base, **cell_settings(point)}
        folder = os.path.join(args.out, f"cell_{i}_{_slug(point)}")
        if seeds is None:
            configs.append([make_config(settings, folder)])
        else:
            configs.append([make_config({**settings, "seed": seed}, f"{folder}_seed{seed}")
                            for seed in seeds])
    for config in itertools.chain(*configs):  # every cell checked before the first one trains
        config.resolved().validate()
    return axes, points, configs


def _duration(seconds: float) -> str:
    """41 s, 5 min 10 s, 1 h 05 min."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def main(argv=None, *, clock=time.monotonic) -> int:
    """The command: plan every cell, run (or read) them in order with a progress line, then the
    table and the picture. `clock` (seconds) times the cells for the progress line; tests pass a
    fake one."""
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):  # a recipe file first; the arguments after it add to it
        try:
            argv = read_recipe(argv[0]) + argv[1:]
        except (ValueError, OSError) as error:
            parser.error(str(error))
    args = parser.parse_args(argv)
    try:
        axes, points, configs = plan(args)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    os.makedirs(args.out, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    seeded = args.seeds is not None
    runs = [(i, config) for i, cell in enumerate(configs) for config in cell]
    results_of = [[] for _ in points]  # per cell: (seed, results)
    start, spent = clock(), []  # seconds of each run trained by this process
    for r, (i, config) in enumerate(runs):
        began = clock()
        results = run_cell(config)
        ended = clock()
        if not results.get("reused"):
            spent.append(ended - began)
        seed = config.train.seed if seeded else None
        results_of[i].append((seed, results))
        # The eta: the mean time of the runs trained so far, times the runs still to train
        # (finished ones are read, not trained); unknown until one has trained.
        left = sum(1 for _, later in runs[r + 1:] if finished_result(later) is None)
        eta = _duration(statistics.fmean(spent) * left) if spent else ("0 s" if not left else "unknown")
        top1 = linear_eval_top1(results)
        shown = (f"diverged: {results['diverged']}" if results.get("diverged")
                 else "none" if top1 is None else f"{top1:.1%}{_split_of(results)}")
        if results.get("stopped_by") == "time_budget":
            shown += (f" (time budget: stopped at step {results['train_steps_done']} of "
                      f"{results['train_steps']})")
        label = f"cell {i + 1}/{len(points)}"
        if seeded:
            label += f" seed {seed} (run {r + 1}/{len(runs)})"
        took = "reused" if results.get("reused") else _duration(ended - began)
        print(f"{label} {points[i]}: linear-eval top-1 {shown} ({took}), elapsed {_duration(ended - start)}, "
              f"eta {eta}", flush=True)
    rows = [cell_row(point, results_of[i], [c.train.model_dir for c in configs[i]])
            for i, point in enumerate(points)]
    csv_path, md_path = write_table(rows, axes, args.out)
    title = args.title or os.path.basename(os.path.normpath(args.out))
    if seeded and len(configs[0]) > 1:
        title += f", mean of {len(configs[0])} seeds"
    png = draw_picture(rows, axes, os.path.join(args.out, "study.png"), title)
    with open(md_path, encoding="utf-8") as f:
        print(f.read(), end="")
    print(f"Wrote {csv_path}, {md_path} and {png} in {clock() - start:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
