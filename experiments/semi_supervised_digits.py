"""SimCLRv2's semi-supervised recipe on the built-in digits, as one reproducible experiment.

    python experiments/semi_supervised_digits.py [--out runs/semi_supervised_digits] \\
        [--pretrained runs/<a pretraining with --num_proj_layers=3>]

scikit-learn's handwritten digits: 1,437 training and 360 held-out 8x8 scans (trained at 12 px).
With 2 labels per class and with 10% of the labels, the script prints the top-1 accuracy on the 360
held-out digits of:

  1. logistic regression on the raw pixels;
  2. the same network (ResNet-18) trained from scratch on the labelled images only;
  3. SimCLR linear evaluation: logistic regression on the frozen pretrained encoder's features;
  4. SimCLR fine-tuned (SimCLRv2 step 2): the pretrained network fine-tuned on the labelled images
     from the first layer of its 3-layer projection head (`ft_proj_selector=1`);
  5. fine-tuned then self-distilled (step 3): a student of the same architecture learns row 4's
     predictions on all 1,437 training images;
  6. distilled into a smaller student (a ResNet-10, half the parameters) the same way.

Rows 1 and 3 are the mean over `--draws` draws of the labelled images (seeds 0, 1, ...); rows 2, 4,
5 and 6 train once, on the draw of the runs' seed (`--seed`, default 0), whose row-1 and row-3
numbers are printed too. One SimCLR pretraining (the quickstart with SimCLRv2's 3-layer projection
head and crops of at least half the image, `--pretrain_crop_min_area=0.5`) serves rows 3 to 6; it is run into
`<out>/pretrain` unless `--pretrained` names a finished one. Every training is a normal run
directory under `--out` (`<setting>/<row>`: checkpoints, logs, result.json); one that holds a run
of other settings stops the script (its numbers would be reported for these). Every row's wall
time is measured and printed. The table is written to `<out>/semi_supervised.md` and `.json`.
Exit code 3 when fine-tuned + distilled stays below `--target` with 2 labels per class.

`--tune` prints no table: it tries the `TUNING` candidates (fine-tuning learning rate and head
initialisation; distillation steps, temperature and `--distill_augment`) with 2 labels per class
on a validation part of the training images (`--validation_fraction`, 20% of each class,
seeded), never loading digits:test, and writes `<out>/tune/tune.md` and `.json`; the defaults of
this script are its choices.
`--probe_pretrainings=<runs>` prints no table either: it scores pretrainings by logistic regression
with 2 labels per class on that validation part (how the pretraining's crop was chosen).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

SETTINGS = {  # column -> (its title, train_labels_per_class, train_label_fraction)
    "2_per_class": ("2 labels per class", 2, 1.0),
    "10pct": ("10% of labels", 0, 0.1),
}
VALIDATION_SPLIT = "validation"  # not a split of digits: training images are held out instead
# --tune: the candidate settings, tried in order on the validation part with 2 labels per class;
# each stage keeps its best (ties: the earlier, so the cheaper) for the stages after it. The
# distillation stage trains the smaller student (row 6, the cheaper one); rows 5 and 6 share its
# choice. A handful of runs: the machine this was made for has 2 slow cores.
TUNING = (
    ("finetune", "finetune", ({"finetune_learning_rate": 0.005, "ft_head_init": "initializer"},
                              {"finetune_learning_rate": 0.002, "ft_head_init": "initializer"},
                              {"finetune_learning_rate": 0.001, "ft_head_init": "linear_probe"})),
    ("distill", "small_distill", (
        {"distill_steps": 150, "distill_temperature": 1.0, "distill_augment": "same"},
        {"distill_steps": 150, "distill_temperature": 1.0, "distill_augment": "student_simclr"})),
)
ROWS = (
    ("pixels", "logistic regression on raw pixels"),
    ("scratch", "ResNet-18 from scratch, labels only"),
    ("linear_eval", "SimCLR linear evaluation"),
    ("finetune", "SimCLR fine-tuned (ft_proj_selector=1)"),
    ("self_distill", "fine-tuned + self-distilled (ResNet-18)"),
    ("small_distill", "fine-tuned + distilled into ResNet-10"),
)


def _parse(argv):
    parser = argparse.ArgumentParser(description="SimCLRv2's semi-supervised recipe on the digits.")
    parser.add_argument("--out", default="runs/semi_supervised_digits", help="Folder of every run.")
    parser.add_argument("--pretrained", default=None,
                        help="A finished pretraining run (with --num_proj_layers=3) to reuse.")
    parser.add_argument("--pretrain_steps", type=int, default=0,
                        help="Pretraining steps (0: the quickstart's 20 epochs).")
    parser.add_argument("--pretrain_crop_min_area", type=float, default=0.5,
                        help="Smallest crop of the pretraining (the quickstart's: 0.2); chosen with "
                             "few-label probes on the validation part (README).")
    parser.add_argument("--pretrain_image_size", type=int, default=None,
                        help="Image side of the pretraining and of every row (default: the "
                             "quickstart's, 12 px; chosen over 16 px with --probe_pretrainings, README).")
    parser.add_argument("--pretrain_temperature", type=float, default=0.5,
                        help="NT-Xent temperature of the pretraining (the quickstart's: 0.5).")
    parser.add_argument("--seed", type=int, default=0,
                        help="Seed of the pretraining and so of every run, and the label draw that the "
                             "trained rows use (draw i: seed i).")
    parser.add_argument("--finetune_steps", type=int, default=100, help="Fine-tuning steps (row 4).")
    parser.add_argument("--finetune_learning_rate", type=float, default=0.002,
                        help="Chosen by --tune (README).")
    parser.add_argument("--ft_head_init", default="initializer", choices=("initializer", "linear_probe"),
                        help="How fine-tuning (row 4) starts its head (simclr_tf's --ft_head_init).")
    parser.add_argument("--scratch_steps", type=int, default=200, help="Training steps of row 2.")
    parser.add_argument("--scratch_learning_rate", type=float, default=0.05,
                        help="Row 2 starts from random weights: a larger step than fine-tuning's.")
    parser.add_argument("--distill_steps", type=int, default=150, help="Distillation steps (rows 5, 6).")
    parser.add_argument("--distill_learning_rate", type=float, default=1.0)
    parser.add_argument("--distill_temperature", type=float, default=1.0)
    parser.add_argument("--distill_alpha", type=float, default=0.0)
    parser.add_argument("--distill_augment", default="same",
                        choices=("same", "student_crop", "student_simclr"),
                        help="What teacher and student see (simclr_tf's --distill_augment).")
    parser.add_argument("--distill_from", choices=("pretrained", "scratch"), default="pretrained",
                        help="Initialise the self-distilled student (row 5) from the pretraining or "
                             "from random weights (the smaller student always starts from random).")
    parser.add_argument("--draws", type=int, default=5, help="Label draws averaged in rows 1 and 3.")
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help=f"Columns to run, comma-separated, of: {', '.join(SETTINGS)}.")
    parser.add_argument("--rows", default=",".join(name for name, _ in ROWS),
                        help="Rows to run, comma-separated (a distillation needs its teacher, "
                             "`finetune`, run before or in the same call).")
    parser.add_argument("--target", type=float, default=0.88,
                        help="Top-1 that fine-tuned + distilled must reach with 2 labels per class.")
    parser.add_argument("--tune", action="store_true",
                        help="Instead of the table: choose the fine-tuning and distillation settings "
                             "(`TUNING`) on a validation part of the training images, with 2 labels "
                             "per class drawn from the rest; the held-out digits:test are not read.")
    parser.add_argument("--probe_pretrainings", default=None,
                        help="Instead of the table: comma-separated pretraining runs, each scored by "
                             "logistic regression with 2 labels per class (--draws draws from the "
                             "training images less the validation part) on that validation part, on "
                             "the encoder output and on the layer fine-tuning reads; digits:test is not "
                             "read. How the pretraining's settings were chosen (README).")
    parser.add_argument("--validation_fraction", type=float, default=0.2,
                        help="With --tune: the fraction of each class of the 1,437 training images "
                             "held out for validation (seeded by the runs' seed).")
    args = parser.parse_args(argv)
    if not 0.0 < args.validation_fraction < 1.0:
        parser.error(f"--validation_fraction must be in (0, 1), e.g. 0.2; got {args.validation_fraction}")
    # Absolute paths: the runs name each other (teacher, checkpoint) from any working directory.
    args.out = os.path.abspath(args.out)
    args.pretrained = args.pretrained and os.path.abspath(args.pretrained)
    args.settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in args.settings if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown --settings {unknown}: use {', '.join(SETTINGS)}")
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    names = [name for name, _ in ROWS]
    if set(args.rows) - set(names):
        parser.error(f"unknown --rows {sorted(set(args.rows) - set(names))}: use {', '.join(names)}")
    return args


# --- the configurations of the runs ------------------------------------------------------------


def pretrain_config(args):
    """The quickstart with SimCLRv2's 3-layer projection head (fine-tuning starts from its first),
    its smallest crop and temperature as chosen by the flags."""
    from simclr_tf.config import Config

    base = Config()
    return dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, image_size=args.pretrain_image_size),
        model=dataclasses.replace(base.model, num_proj_layers=3),
        augment=dataclasses.replace(base.augment, crop_min_area=args.pretrain_crop_min_area),
        loss=dataclasses.replace(base.loss, temperature=args.pretrain_temperature),
        train=dataclasses.replace(base.train, model_dir=os.path.join(args.out, "pretrain"),
                                  train_steps=args.pretrain_steps, seed=args.seed),
    )


def run_configs(args, pretrained_dir: str, setting: str, validation: float = 0.0) -> dict:
    """Row name -> Config of the trained rows of one column (`setting`).

    With `validation` > 0 every run trains on the training images less a stratified part of that
    fraction (drawn by the runs' seed), draws its labels from the rest, and is evaluated on that
    part: the held-out digits:test are never loaded (`--tune`).
    """
    from simclr_tf.config import FROM_SCRATCH, load_config

    pretrained = load_config(pretrained_dir)
    _, per_class, fraction = SETTINGS[setting]
    folder = os.path.join(args.out, setting)
    data = dataclasses.replace(pretrained.data, train_labels_per_class=per_class,
                               train_label_fraction=fraction)
    if validation:  # a split digits does not have: the library holds out `eval_fraction` instead
        data = dataclasses.replace(data, eval_split=VALIDATION_SPLIT, eval_fraction=validation)
    # Fine-tuning as SimCLRv2 (appendix B.5): the whole network, Nesterov momentum, no weight decay
    # or warm-up; the learning rate is not scaled with the (tiny) batch of labelled images.
    finetune = dataclasses.replace(
        pretrained, data=data,
        model=dataclasses.replace(pretrained.model, ft_proj_selector=1),
        optimizer=dataclasses.replace(pretrained.optimizer, optimizer="momentum",
                                      learning_rate=args.finetune_learning_rate,
                                      learning_rate_scaling="none", warmup_epochs=0.0, weight_decay=0.0),
        train=dataclasses.replace(
            pretrained.train, train_mode="finetune", fine_tune_after_block=-1, checkpoint=pretrained_dir,
            ft_head_init=args.ft_head_init,
            train_steps=args.finetune_steps, linear_eval_epochs=0, lineareval_while_pretraining=False,
            keep_checkpoint_max=1, checkpoint_steps=args.finetune_steps,
            model_dir=os.path.join(folder, "finetune")),
    )
    scratch = dataclasses.replace(
        finetune,
        optimizer=dataclasses.replace(finetune.optimizer, learning_rate=args.scratch_learning_rate),
        train=dataclasses.replace(finetune.train, checkpoint=FROM_SCRATCH, ft_head_init="initializer",
                                            train_steps=args.scratch_steps,
                                            checkpoint_steps=args.scratch_steps,
                                            model_dir=os.path.join(folder, "scratch")))
    # Distillation: all training images, the pretraining's optimizer (LARS) and batch.
    distill_train = dataclasses.replace(
        finetune.train, train_mode="distill", teacher=finetune.train.model_dir, ft_head_init="initializer",
        distill_temperature=args.distill_temperature, distill_alpha=args.distill_alpha,
        distill_augment=args.distill_augment,
        train_steps=args.distill_steps, checkpoint_steps=args.distill_steps,
        checkpoint=pretrained_dir if args.distill_from == "pretrained" else None)
    distill_optimizer = dataclasses.replace(pretrained.optimizer,
                                            learning_rate=args.distill_learning_rate)
    self_distill = dataclasses.replace(
        finetune, optimizer=distill_optimizer,
        train=dataclasses.replace(distill_train, model_dir=os.path.join(folder, "self_distill")))
    if args.distill_from == "scratch":  # a fresh student has no use for a projection head
        self_distill = dataclasses.replace(self_distill, model=dataclasses.replace(
            self_distill.model, proj_head_mode="none", ft_proj_selector=0))
    small = dataclasses.replace(
        finetune, optimizer=distill_optimizer,
        model=dataclasses.replace(finetune.model, resnet_depth=10, proj_head_mode="none",
                                  ft_proj_selector=0),
        train=dataclasses.replace(distill_train, checkpoint=None,
                                  model_dir=os.path.join(folder, "small_distill")))
    return {"scratch": scratch, "finetune": finetune, "self_distill": self_distill,
            "small_distill": small}


# --- measurements ------------------------------------------------------------------------------


def _arrays(source, image_size, encoder=None, batch_size=256):
    """Flattened pixels (no encoder) or the encoder's `final_avg_pool` features, and the labels."""
    from simclr_tf.data import pipeline
    from simclr_tf.evaluation import extract_features

    dataset = pipeline.build_eval_dataset(source, global_batch_size=batch_size, image_size=image_size)
    if encoder is not None:
        return extract_features(encoder, dataset)
    images, labels = [], []
    for x, y in dataset:
        images.append(np.asarray(x).reshape(len(x), -1))
        labels.append(np.asarray(y))
    return np.concatenate(images), np.concatenate(labels)


def probe(train_x, train_y, test_x, test_y, setting: str, draws: int) -> dict:
    """Logistic regression on `draws` draws of the labelled images: the mean and each draw."""
    from simclr_tf.data.sources import label_subset
    from simclr_tf.evaluation import linear_probe_accuracy

    _, per_class, fraction = SETTINGS[setting]
    scores = []
    for seed in range(draws):
        kept = label_subset(train_y, per_class=per_class or None,
                            fraction=None if per_class else fraction, seed=seed)
        scores.append(linear_probe_accuracy(train_x[kept], train_y[kept], test_x, test_y))
    return {"top1": float(np.mean(scores)), "draws": scores}


def parameter_counts(config) -> dict:
    """Trainable parameters of the encoder and of the whole network (heads included)."""
    import keras

    from simclr_tf.models.build import build_model

    with keras.StatelessScope():
        model = build_model(config.resolved(), 10)

    def count(weights):
        return int(sum(np.prod(w.shape) for w in weights))

    return {"encoder": count(model.encoder.trainable_weights), "total": count(model.trainable_weights)}


def check_same_settings(config) -> None:
    """Stops when the run directory of `config` holds a run of other settings.

    A finished run there would be "resumed" (nothing to train) and its numbers reported for these
    settings; an unfinished one would go on with other ones.
    """
    from simclr_tf.config import load_config

    model_dir = config.train.model_dir
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        return
    old, new = dataclasses.asdict(load_config(model_dir).resolved()), dataclasses.asdict(config.resolved())
    differ = [f"{section}.{key} is {old[section].get(key)!r} there and {value!r} now"
              for section, values in new.items() for key, value in values.items()
              if old[section].get(key) != value]
    if differ:
        raise SystemExit(
            f"error: {model_dir} holds a run of other settings ({'; '.join(differ)}); its numbers would "
            f"be reported for these. Pass another --out, or delete {model_dir} to train it again.")


def _train(config) -> tuple[dict, float]:
    from simclr_tf.training import train

    check_same_settings(config)
    started = time.time()
    result = train(config)
    return result, time.time() - started


# --- the table ---------------------------------------------------------------------------------


def format_table(table: dict, settings, params: dict | None = None) -> str:
    """A markdown table: one row per method, one column per setting (top-1 and wall time)."""
    header = "| method | " + " | ".join(f"{SETTINGS[s][0]}: top-1 | wall" for s in settings) + " |"
    lines = [header, "|---|" + "---|---|" * len(settings)]
    for name, label in ROWS:
        cells = []
        for setting in settings:
            entry = table.get(setting, {}).get(name)
            if entry is None:
                cells += ["-", "-"]
                continue
            note = f" (mean of {len(entry['draws'])})" if "draws" in entry else ""
            cells += [f"{entry['top1']:.1%}{note}", f"{entry['seconds']:.0f} s"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _parse(argv)
    from simclr_tf.console import show_library_logs

    show_library_logs()  # the library logs its progress; a script shows it
    import keras

    from simclr_tf.config import load_config
    from simclr_tf.data.sources import load_source, source_labels

    if args.probe_pretrainings:
        probe_pretrainings(args, [os.path.abspath(d) for d in args.probe_pretrainings.split(",") if d])
        return 0
    started = time.time()
    pretrained_dir, pretrain_seconds = args.pretrained, 0.0
    if pretrained_dir is None:
        pretrained_dir = pretrain_config(args).train.model_dir
        check_same_settings(pretrain_config(args))
        if not os.path.exists(os.path.join(pretrained_dir, "result.json")):
            print(f"Pretraining into {pretrained_dir} (shared by rows 3-6).", flush=True)
            _, pretrain_seconds = _train(pretrain_config(args))
    pretrained = load_config(pretrained_dir).resolved()
    if pretrained.model.num_proj_layers != 3:
        print(f"Note: {pretrained_dir} has a {pretrained.model.num_proj_layers}-layer projection head; "
              "SimCLRv2 fine-tunes from the first of 3.", flush=True)
    if args.tune:
        tune(args, pretrained_dir)
        return 0
    with open(os.path.join(pretrained_dir, "result.json")) as f:
        pretrain_result = json.load(f)
    image_size, seed = pretrained.image_size, pretrained.train.seed

    train_source = load_source("digits", "train", seed=seed)
    test_source = load_source("digits", "test", seed=seed)
    pixels = _arrays(train_source, image_size), _arrays(test_source, image_size)
    if not np.array_equal(pixels[0][1], source_labels(train_source)):
        raise RuntimeError("The evaluation pipeline reordered the training images.")
    encoder = build_pretrained_encoder(pretrained, pretrained_dir)
    feature_start = time.time()
    features = _arrays(train_source, image_size, encoder), _arrays(test_source, image_size, encoder)
    feature_seconds = time.time() - feature_start
    keras.backend.clear_session()

    table, runs, params = {}, {}, {}
    for setting in args.settings:
        row = table.setdefault(setting, {})
        for name, (train_xy, test_xy), extra in (("pixels", pixels, 0.0),
                                                 ("linear_eval", features, feature_seconds)):
            if name not in args.rows:
                continue
            begin = time.time()
            row[name] = probe(*train_xy, *test_xy, setting, args.draws)
            row[name]["seconds"] = time.time() - begin + extra
        for name, config in run_configs(args, pretrained_dir, setting).items():
            if name not in args.rows:
                continue
            print(f"\n=== {setting}: {name} ({config.train.model_dir}) ===", flush=True)
            result, seconds = _train(config)
            row[name] = {"top1": float(result["eval_top1"]), "seconds": seconds,
                         "train_steps": result.get("train_steps"), "model_dir": config.train.model_dir}
            runs[f"{setting}/{name}"] = config.train.model_dir
            if name in ("finetune", "small_distill") and name not in params:
                params[name] = parameter_counts(config)
            keras.backend.clear_session()
    total = time.time() - started

    print(f"\nTop-1 on the {len(pixels[1][1])} held-out digits (digits:test); rows 1 and 3: mean of "
          f"{args.draws} label draws, the others draw {seed} (the runs' seed). "
          f"Pretraining ({pretrained_dir}): "
          f"{pretrain_seconds:.0f} s this time, its linear evaluation with all labels "
          f"{pretrain_result.get('eval_top1', float('nan')):.2%}.")
    markdown = format_table(table, args.settings)
    print(markdown)
    for setting in args.settings:
        for name in ("pixels", "linear_eval"):
            if name in table[setting] and seed < len(table[setting][name]["draws"]):
                print(f"{setting}, {name}, draw {seed}: {table[setting][name]['draws'][seed]:.1%}")
    for name, count in params.items():
        print(f"parameters of the {name} network: encoder {count['encoder']:,}, total {count['total']:,}")
    print(f"total {total:.0f} s (pretraining {pretrain_seconds:.0f} s)")

    summary = {"table": table, "pretrained": pretrained_dir, "pretrain_seconds": pretrain_seconds,
               "pretrain_linear_eval_top1": pretrain_result.get("eval_top1"), "parameters": params,
               "total_seconds": total, "runs": runs, "args": vars(args)}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "semi_supervised.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(args.out, "semi_supervised.md"), "w") as f:
        f.write(markdown + "\n")
    reached = table.get("2_per_class", {}).get("self_distill", {}).get("top1")
    if reached is not None:
        print(f"Fine-tuned + self-distilled with 2 labels per class: {reached:.1%} "
              f"(target {args.target:.0%}): {'reached' if reached >= args.target else 'NOT reached'}")
        return 0 if reached >= args.target else 3
    return 0


def probe_pretrainings(args, run_dirs) -> list:
    """Few-label validation probes of pretrainings: a row per run (mean top-1 over the draws).

    The validation part is the library's `eval_fraction` hold-out of the training images (that of
    `--tune`); each draw takes 2 labels per class from the rest (draw `i`: seed `i`, draw 0 is what
    the training runs of `--tune` use) and fits the logistic regression of rows 1 and 3.
    """
    import keras

    from simclr_tf.config import load_config
    from simclr_tf.data import pipeline
    from simclr_tf.data.sources import held_out_split, label_subset, load_source
    from simclr_tf.evaluation import linear_probe_accuracy

    rows = []
    for run_dir in run_dirs:
        config = load_config(run_dir).resolved()
        source = load_source("digits", "train", seed=config.train.seed)
        model = build_pretrained_model(config, run_dir)
        labels = []
        layer = config.model.ft_proj_selector or min(1, config.model.num_proj_layers)
        encoder_out, head_layer = [], []
        for x, y in pipeline.build_eval_dataset(source, global_batch_size=256, image_size=config.image_size):
            h = model.encoder(x, training=False)["final_avg_pool"]
            _, hiddens = model.projection_head(h, training=False)
            encoder_out.append(np.asarray(h))
            head_layer.append(np.asarray(hiddens[layer]))
            labels.append(np.asarray(y))
        labels = np.concatenate(labels)
        rest, held = held_out_split(labels, fraction=args.validation_fraction, seed=config.train.seed)
        row = {"run": run_dir, "crop_min_area": config.augment.crop_min_area,
               "temperature": config.loss.temperature, "layer": layer}
        for name, features in (("encoder", encoder_out), ("head_layer", head_layer)):
            features = np.concatenate(features)
            scores = []
            for seed in range(args.draws):
                kept = rest[label_subset(labels[rest], per_class=2, seed=seed)]
                scores.append(linear_probe_accuracy(features[kept], labels[kept], features[held],
                                                    labels[held]))
            row[name] = {"top1": float(np.mean(scores)), "draws": scores}
        rows.append(row)
        keras.backend.clear_session()
    lines = ["| pretraining | crop_min_area | temperature | encoder output | projection layer |",
             "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['run']} | {row['crop_min_area']} | {row['temperature']} | "
                     f"{row['encoder']['top1']:.1%} | "
                     f"{row['head_layer']['top1']:.1%} (layer {row['layer']}) |")
    print(f"2 labels per class, logistic regression, mean of {args.draws} draws, on the validation part "
          f"({len(held)} training images held out; digits:test not read):")
    print("\n".join(lines))
    return rows


def candidate_name(overrides: dict) -> str:
    """A run folder's name for a candidate, e.g. `finetune_learning_rate=0.002`."""
    return ",".join(f"{key}={value}" for key, value in overrides.items()) or "defaults"


def tune(args, pretrained_dir: str, train=None) -> dict:
    """Try the `TUNING` candidates on the validation part; the chosen values and every score.

    Each stage trains its row once per candidate (on top of the values chosen so far) into
    `<out>/tune/<stage>/<candidate>` and keeps the best validation top-1; a distillation's teacher
    is the best fine-tuned run. `train` (Config -> (result, seconds)) defaults to `_train`.
    """
    import keras

    train = train or _train
    chosen, stages = {}, []
    teacher = None
    for stage, row, candidates in TUNING:
        scores = []
        for overrides in candidates:
            values = {**chosen, **overrides}
            trial = argparse.Namespace(**{**vars(args), **values, "out": os.path.join(
                args.out, "tune", stage, candidate_name(overrides))})
            config = run_configs(trial, pretrained_dir, "2_per_class",
                                 validation=args.validation_fraction)[row]
            if teacher is not None:
                config = dataclasses.replace(config, train=dataclasses.replace(config.train, teacher=teacher))
            print(f"\n=== tune {stage}: {candidate_name(overrides)} ({config.train.model_dir}) ===",
                  flush=True)
            result, seconds = train(config)
            if "held-out" not in str(result.get("eval_split")):
                raise RuntimeError(f"{config.train.model_dir} was not evaluated on the validation part.")
            scores.append({"overrides": overrides, "top1": float(result["eval_top1"]),
                           "examples": result.get("eval_examples"), "seconds": seconds,
                           "model_dir": config.train.model_dir})
            keras.backend.clear_session()
        best = max(range(len(scores)), key=lambda i: (scores[i]["top1"], -i))
        chosen.update(scores[best]["overrides"])
        if row == "finetune":
            teacher = scores[best]["model_dir"]
        stages.append({"stage": stage, "row": row, "scores": scores, "best": best})
    lines = ["| stage | candidate | validation top-1 | wall |", "|---|---|---|---|"]
    for entry in stages:
        for i, score in enumerate(entry["scores"]):
            mark = " (chosen)" if i == entry["best"] else ""
            lines.append(f"| {entry['stage']} | {candidate_name(score['overrides'])}{mark} | "
                         f"{score['top1']:.1%} of {score['examples']} | {score['seconds']:.0f} s |")
    markdown = "\n".join(lines)
    print(markdown)
    print("chosen: " + " ".join(f"--{key}={value}" for key, value in chosen.items()), flush=True)
    summary = {"chosen": chosen, "stages": stages, "validation_fraction": args.validation_fraction,
               "pretrained": pretrained_dir}
    os.makedirs(os.path.join(args.out, "tune"), exist_ok=True)
    with open(os.path.join(args.out, "tune", "tune.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(args.out, "tune", "tune.md"), "w") as f:
        f.write(markdown + "\n")
    return summary


def build_pretrained_model(config, run_dir):
    """The pretrained model of `run_dir` (its latest checkpoint: encoder and projection head)."""
    from simclr_tf import checkpoints
    from simclr_tf.models.build import build_model

    model = build_model(config, 0)
    checkpoints.restore_pretrained(model, run_dir, train_mode="finetune")
    return model


def build_pretrained_encoder(config, run_dir):
    """The pretrained encoder of `run_dir` (its latest checkpoint), in inference mode."""
    return build_pretrained_model(config, run_dir).encoder


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
