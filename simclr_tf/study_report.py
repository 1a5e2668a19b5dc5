"""A study's report (`simclr_tf.study`): its table (`study.csv`, `study.md`) and picture (`study.png`).

The runs are the study's business; this module turns their results into rows (`cell_row`: the
mean and spread over seeds, what a time budget cut), writes them, and draws the picture with
matplotlib (`simclr_tf.plots`): a line plot of the accuracy against a numeric first axis
(temperature, projection size, batch size), one line per combination of the other axes; else the
heat map of the paper's Figure 5 (rows: all axes but the last, columns: the last), or bars for one
such axis. `study_figure` returns the figure, so tests read its labels, ticks and cell texts.
"""

from __future__ import annotations

import csv
import itertools
import math
import os
import statistics

from simclr_tf import plots


def linear_eval_top1(results: dict) -> float | None:
    """The held-out linear-evaluation top-1 of a run's results (`accuracies`), or None."""
    for entry in results.get("accuracies", []):
        if entry["protocol"] == "linear_eval":
            return float(entry["top1"])
    return None


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


def is_numeric_axis(axis: tuple) -> bool:
    """An axis of numbers (not `--pairs`, not booleans): drawn as the line plot's x axis."""
    name, values = axis
    return name not in ("first", "second") and len(values) > 1 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)



def _values(rows: list[dict], axes: list) -> dict[tuple, float | None]:
    """The accuracy of each cell, keyed by its values of the axes in order."""
    return {tuple(row[name] for name, _ in axes): row["linear_eval_top1"] for row in rows}


def study_figure(rows: list[dict], axes: list, title: str):
    """The study's picture as a matplotlib figure (see the module's docstring for which kind).

    Args:
        rows: list of dict. The table's rows (`cell_row`): the axes' values and `linear_eval_top1`
            (None for a diverged cell: a gap in a line, a grey `-` cell, a missing bar).
        axes: list of (name, values). The study's axes, in order.
        title: str. The study's title; the picture's title adds what is shown.

    Returns:
        matplotlib.figure.Figure.
    """
    accuracy = _values(rows, axes)
    if is_numeric_axis(axes[0]):
        (x_name, x_values), other = axes[0], axes[1:]
        lines = {}
        for key in itertools.product(*[values for _, values in other]):  # [()] for one axis
            label = ", ".join(f"{name}={value}" for (name, _), value in zip(other, key, strict=True))
            lines[label] = [accuracy.get((x, *key)) for x in x_values]
        return plots.line_figure(x_values, lines, x_name=x_name,
                                 title=f"{title}: linear-eval top-1 against {x_name}")
    if len(axes) == 1:
        name, values = axes[0]
        return plots.bar_figure([str(v) for v in values], [accuracy.get((v,)) for v in values], name=name,
                                title=f"{title}: linear-eval top-1 by {name}")
    *row_axes, (col_name, col_values) = axes
    row_keys = list(itertools.product(*[values for _, values in row_axes]))
    table = [[math.nan if accuracy.get((*key, col)) is None else accuracy[(*key, col)] for col in col_values]
             for key in row_keys]
    return plots.heatmap_figure(table, [",".join(map(str, key)) for key in row_keys],
                                [str(v) for v in col_values], row_name=" / ".join(n for n, _ in row_axes),
                                col_name=col_name, title=f"{title}: linear-eval top-1")


def draw_picture(rows: list[dict], axes: list, path: str, title: str) -> str:
    """Writes `study_figure(rows, axes, title)` as a PNG at `path`; returns `path`."""
    return plots.save_png(study_figure(rows, axes, title), path)
