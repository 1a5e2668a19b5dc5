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
held-out linear-evaluation top-1 accuracy (`results["accuracies"]`, protocol `linear_eval`), with
`simclr_tf.study_report` (matplotlib): the Figure 5 heat map for `--pairs` and grids whose first
axis is not numeric (a bar chart for one such axis), and for a numeric first axis (temperature,
projection size, batch size x steps) a line plot of the accuracy against it, one line per value of
the other axes. A cell whose training diverges (NaN loss) is recorded as such and the study goes on.

`--cell_minutes N` is a time budget per cell (the config's `max_train_minutes`): a cell's training
stops once it has run N minutes, that step is saved and evaluated, and the table says which cells
it cut and at which step (`train_steps_done`, `stopped_by` in study.csv; `41/64 (time budget)` in
study.md). Such a cell is finished: a rerun reads it (delete its result.json to train it on from
its checkpoint). `--seeds 0,1,2` runs every cell once per seed (`cell_<i>_<values>_seed<s>`); the
table gives the mean and the sample standard deviation over the seeds that did not diverge (each
seed's value in study.csv), the picture the mean. Each finished run prints a progress line,
`cell 7/49 {<its values>}: linear-eval top-1 <accuracy> on <split> (<its time>), elapsed <time>, eta <time>`,
the eta being the mean time of the runs trained so far times the runs left to train.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import re
import statistics
import sys
import time

from simclr_tf.study_report import cell_row, draw_picture, linear_eval_top1, write_table

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
