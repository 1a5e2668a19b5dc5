"""The command line: `python -m simclr_tf.run [--flags]`.

The only module that reads absl FLAGS. Flag names follow the original SimCLR code where one
exists; each flag is one field of the typed config (`--temperature` -> `LossConfig.temperature`).
With no flags it runs the quickstart: pretraining on the built-in digits with a small ResNet,
evaluation of the linear head, and export of the encoder. Recipes are flagfiles in experiments/:

    python -m simclr_tf.run --flagfile=experiments/cifar10_resnet18.flags
"""

from __future__ import annotations

import dataclasses
import os

# TensorFlow's C++ start-up chatter (CPU features, CUDA probing) hides our messages; a user who
# wants it sets TF_CPP_MIN_LOG_LEVEL themselves.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import sys

from absl import app, flags
from absl import logging as absl_logging

from simclr_tf.config import Config, ConfigError
from simclr_tf.interrupts import Terminated, exit_code, signal_name, signals_as_exceptions

# (flag, config section, field, kind, help). Each flag's default is its config field's default
# (`Config()` is the quickstart), so the CLI and the library cannot disagree.
_FLAG_SPECS = [
    # data
    ("dataset", "data", "dataset", str,
     "Data set: `digits` (built in), `synthetic`, `folder` (with --image_dir) or a TFDS name "
     "(cifar10, imagenet2012, ...)."),
    ("data_dir", "data", "data_dir", str, "TFDS data directory."),
    ("download", "data", "download", bool, "Let TFDS download and prepare missing data."),
    ("image_dir", "data", "image_dir", str,
     "Root folder of images for --dataset=folder (class sub-folders give labels)."),
    ("eval_image_dir", "data", "eval_image_dir", str, "Separate folder of evaluation images."),
    ("train_split", "data", "train_split", str, "Training split."),
    ("eval_split", "data", "eval_split", str, "Evaluation split."),
    ("image_size", "data", "image_size", int, "Input image side; default: the data set's."),
    ("cache_dataset", "data", "cache_dataset", bool, "Cache decoded images in memory."),
    ("train_label_fraction", "data", "train_label_fraction", float,
     "Fraction of labels used for supervised training (class-balanced, e.g. 0.01 or 0.1)."),
    ("eval_fraction", "data", "eval_fraction", float,
     "Without an evaluation split (a folder without --eval_image_dir), hold out this fraction of the "
     "labelled images for evaluation."),
    ("synthetic_examples", "data", "synthetic_examples", int,
     "Images of the `synthetic` data set (coloured shapes made on the fly)."),
    ("train_labels_per_class", "data", "train_labels_per_class", int,
     "If > 0, use exactly this many labelled images per class."),
    # augmentation
    ("color_jitter_strength", "augment", "color_jitter_strength", float,
     "Colour distortion strength; default 1.0, or 0.5 for images of 32 px or less."),
    ("use_blur", "augment", "use_blur", bool,
     "Gaussian blur; default on, off for images of 32 px or less."),
    ("color_jitter_impl", "augment", "color_jitter_impl", str, "Colour jitter of SimCLR `v1` or `v2`."),
    ("crop_min_area", "augment", "crop_min_area", float,
     "Smallest area fraction of random crops; default 0.08 (0.2 for digits)."),
    ("random_flip", "augment", "random_flip", bool,
     "Random horizontal flips in every augmenting phase; default on (off for digits)."),
    ("view_a", "augment", "view_a", str,
     "Policy of the first view: transformations in order, e.g. crop,color,rotate (crop, flip, color, "
     "jitter, drop, blur, cutout, sobel, noise, rotate; parameters as noise(std=0.05)), or a named "
     "policy: default (SimCLR's view), identity."),
    ("view_b", "augment", "view_b", str, "Policy of the second view; see --view_a."),
    # model
    ("resnet_depth", "model", "resnet_depth", int, "ResNet depth: 10, 18, 34, 50, 101, 152, 200."),
    ("width_multiplier", "model", "width_multiplier", int, "ResNet width multiplier."),
    ("sk_ratio", "model", "sk_ratio", float, "Selective-kernel ratio (SimCLRv2: 0.0625); 0 disables."),
    ("se_ratio", "model", "se_ratio", float, "Squeeze-excitation ratio; 0 disables."),
    ("cifar_stem", "model", "cifar_stem", bool, "3x3 stem without max-pool; default for <= 32 px."),
    ("batch_norm_decay", "model", "batch_norm_decay", float, "Batch-norm moving-average decay."),
    ("global_bn", "model", "global_bn", bool, "Synchronise batch norm across replicas."),
    ("proj_head_mode", "model", "proj_head_mode", str, "none, linear or nonlinear."),
    ("proj_out_dim", "model", "proj_out_dim", int, "Projection output size."),
    ("num_proj_layers", "model", "num_proj_layers", int,
     "Projection head layers (2 in SimCLRv1, 3 in SimCLRv2)."),
    ("ft_proj_selector", "model", "ft_proj_selector", int,
     "Projection layer that fine-tuning starts from (0: the encoder output)."),
    ("zero_init_logits_layer", "model", "zero_init_logits_layer", bool,
     "Zero-initialise the supervised head."),
    # loss
    ("temperature", "loss", "temperature", float, "NT-Xent temperature."),
    ("hidden_norm", "loss", "hidden_norm", bool, "L2-normalise projections in NT-Xent."),
    ("contrastive_loss", "loss", "contrastive_loss", str,
     "nt_xent (SimCLR), nt_logistic or margin_triplet (the paper's Table 2)."),
    ("margin", "loss", "margin", float, "Margin of --contrastive_loss=margin_triplet."),
    ("semi_hard_negatives", "loss", "semi_hard_negatives", bool,
     "Semi-hard negative mining for nt_logistic and margin_triplet (the paper's Table 2 'sh')."),
    ("memory_buffer_size", "loss", "memory_buffer_size", int,
     "SimCLRv2's memory buffer: keys of past batches (from a momentum copy of the network) kept as "
     "extra NT-Xent negatives while pretraining; 0 turns it off. One more forward pass a step "
     "(1.4x the quickstart's step time)."),
    ("memory_momentum", "loss", "memory_momentum", float,
     "Moving-average rate of the memory buffer's momentum network (MoCo, SimCLRv2: 0.999)."),
    # optimizer
    ("optimizer", "optimizer", "optimizer", str, "lars, momentum or adam."),
    ("learning_rate", "optimizer", "learning_rate", float, "Base learning rate."),
    ("learning_rate_scaling", "optimizer", "learning_rate_scaling", str,
     "linear (lr * B / 256), sqrt (lr * sqrt(B)) or none."),
    ("warmup_epochs", "optimizer", "warmup_epochs", float, "Warm-up epochs."),
    ("momentum", "optimizer", "momentum", float, "Momentum."),
    ("weight_decay", "optimizer", "weight_decay", float, "Weight decay."),
    ("lars_eta", "optimizer", "lars_eta", float, "LARS trust coefficient."),
    # training
    ("mode", "train", "mode", str, "train, eval or train_then_eval."),
    ("train_mode", "train", "train_mode", str,
     "pretrain, finetune, or distill (a student learns the --teacher's predictions)."),
    ("lineareval_while_pretraining", "train", "lineareval_while_pretraining", bool,
     "Train a linear head on frozen features while pretraining (needs labels)."),
    ("fine_tune_after_block", "train", "fine_tune_after_block", int,
     "-1 fine-tunes everything; k freezes up to block group k; 4 is linear evaluation."),
    ("train_batch_size", "train", "train_batch_size", int, "Global training batch size."),
    ("eval_batch_size", "train", "eval_batch_size", int, "Global evaluation batch size."),
    ("train_epochs", "train", "train_epochs", int, "Training epochs."),
    ("train_steps", "train", "train_steps", int, "Training steps; overrides train_epochs if > 0."),
    ("eval_steps", "train", "eval_steps", int, "Evaluation steps; 0 evaluates the whole split."),
    ("checkpoint_epochs", "train", "checkpoint_epochs", int, "Checkpoint every this many epochs."),
    ("checkpoint_steps", "train", "checkpoint_steps", int,
     "Checkpoint every this many steps; overrides checkpoint_epochs if > 0."),
    ("checkpoint_minutes", "train", "checkpoint_minutes", float,
     "Also checkpoint when this many minutes passed since the last checkpoint; 0 disables."),
    ("max_train_minutes", "train", "max_train_minutes", float,
     "Time budget: stop training after this many minutes in this process, save that step and go on "
     "to evaluation and export (result.json: stopped_by=time_budget); a rerun resumes there. 0: no "
     "limit."),
    ("keep_checkpoint_max", "train", "keep_checkpoint_max", int, "Checkpoints kept."),
    ("keep_hub_module_max", "train", "keep_hub_module_max", int, "Exported SavedModels kept."),
    ("model_dir", "train", "model_dir", str,
     "Where checkpoints, logs, results and exports go."),
    ("checkpoint", "train", "checkpoint", str,
     "Checkpoint (prefix or model_dir) to initialise from, e.g. for fine-tuning; `none` fine-tunes "
     "from random weights on purpose (a baseline trained from scratch on the labels only)."),
    ("seed", "train", "seed", int, "Seed for weights, augmentation and data order."),
    ("jit_compile", "train", "jit_compile", str,
     "Compile the train step with XLA: auto (on for GPU and TPU strategies, off on CPUs), true or false."),
    ("precision", "train", "precision", str,
     "auto (mixed_bfloat16 on a TPU or a CPU with AVX512_BF16/AMX, else float32), float32, "
     "mixed_bfloat16 or mixed_float16."),
    ("steps_per_execution", "train", "steps_per_execution", int, "Train steps per call into TF."),
    ("knn_every_epochs", "train", "knn_every_epochs", int, "kNN monitor period in epochs; 0 disables."),
    ("linear_eval_epochs", "train", "linear_eval_epochs", int,
     "After pretraining, epochs of linear evaluation on the frozen encoder (0 disables)."),
    ("linear_eval_protocol", "train", "linear_eval_protocol", str,
     "logistic (regression on frozen features, the paper's transfer protocol), sgd (a linear head "
     "trained on the frozen encoder with crop and flip, the ImageNet protocol) or auto (logistic for "
     "digits, synthetic and folders)."),
    ("linear_eval_batch_size", "train", "linear_eval_batch_size", int,
     "Batch size of the sgd linear evaluation."),
    ("linear_eval_learning_rate", "train", "linear_eval_learning_rate", float,
     "Base learning rate of that linear evaluation (Nesterov momentum, lr * B / 256)."),
    ("deterministic", "train", "deterministic", bool,
     "Deterministic TensorFlow ops: a seed gives bit-identical weights, resumed or not."),
    ("teacher", "train", "teacher", str,
     "With --train_mode=distill: the frozen teacher, a simclr_tf run directory or checkpoint, or an "
     "original SimCLR SavedModel or checkpoint."),
    ("distill_temperature", "train", "distill_temperature", float,
     "Softmax temperature of the distillation loss (SimCLRv2: 1.0 big-to-small, 0.1 self-distillation)."),
    ("distill_alpha", "train", "distill_alpha", float,
     "Weight of the cross-entropy on labelled images added to the distillation loss (0: none)."),
    ("distill_augment", "train", "distill_augment", str,
     "What a distillation step shows: same (teacher and student one crop-and-flip view, the paper's), "
     "student_crop (the student that view, the teacher the un-augmented image) or student_simclr "
     "(the student a pretraining view with colour, the teacher the un-augmented image)."),
    ("ft_head_init", "train", "ft_head_init", str,
     "With --train_mode=finetune: initializer (the head's initializer, as the original) or "
     "linear_probe (first fit the head as a logistic regression on the frozen features: LP-FT)."),
    # runtime
    ("strategy", "runtime", "strategy", str, "default, mirrored, multi_worker or tpu."),
    ("tpu_name", "runtime", "tpu_name", str, "TPU name for the cluster resolver."),
    ("tpu_zone", "runtime", "tpu_zone", str, "TPU zone."),
    ("gcp_project", "runtime", "gcp_project", str, "Google Cloud project of the TPU."),
]

_DEFINE = {str: flags.DEFINE_string, int: flags.DEFINE_integer, float: flags.DEFINE_float,
           bool: flags.DEFINE_bool}

_DEFAULTS = Config()


def flag_default(section: str, field: str):
    """The default of a flag: the field's default in `Config()`."""
    return getattr(getattr(_DEFAULTS, section), field)


for _name, _section, _field, _kind, _help in _FLAG_SPECS:
    _DEFINE[_kind](_name, flag_default(_section, _field), _help)
flags.DEFINE_bool("use_tpu", False, "Original SimCLR flag: the same as --strategy=tpu.")
flags.DEFINE_list("devices", [], "Devices for --strategy=mirrored, e.g. /gpu:0,/gpu:1.")

FLAGS = flags.FLAGS


def config_from_flags(flag_values) -> Config:
    """Turns parsed flags into a typed Config (not yet validated)."""
    sections: dict[str, dict] = {}
    for name, section, field, _kind, _help in _FLAG_SPECS:
        sections.setdefault(section, {})[field] = flag_values[name].value
    if flag_values.use_tpu:
        sections["runtime"]["strategy"] = "tpu"
    for section, field in (("data", "data_dir"), ("data", "image_dir"), ("data", "eval_image_dir"),
                           ("train", "model_dir"), ("train", "checkpoint")):
        value = sections[section].get(field)
        if isinstance(value, str) and value.startswith("~"):
            sections[section][field] = os.path.expanduser(value)  # a flag's value reaches no shell
    if (flag_values["image_dir"].value or flag_values["eval_image_dir"].value) \
            and not flag_values["dataset"].present:
        sections["data"]["dataset"] = "folder"  # --image_dir alone means your folder
    sections["runtime"]["devices"] = tuple(flag_values.devices)
    defaults = Config()
    return Config(**{
        section: dataclasses.replace(getattr(defaults, section), **values)
        for section, values in sections.items()
    })


_PROTOCOLS = {
    "online_linear_head": "online linear head, trained on stop-gradient features while pretraining",
    "linear_eval": "linear evaluation",
    "finetune": "fine-tuned",
    "distill": "distilled student",
}


def _print_summary(results: dict) -> None:
    print("\n" + "=" * 72)
    for entry in results.get("accuracies", []):
        what = _PROTOCOLS.get(entry["protocol"], entry["protocol"])
        if entry.get("detail") == "logistic":
            what += " (logistic regression on frozen features)"
        elif entry.get("detail") == "sgd":
            what += " (linear head trained on the frozen encoder)"
        print(f"Accuracy, {what}:\n    top-1 {entry['top1']:.2%}, top-5 {entry['top5']:.2%} on "
              f"{entry['split']} ({entry['examples']} held-out images)")
    if not results.get("accuracies"):
        print("No accuracy: the run had no labelled held-out images (see above).")
    if "train_seconds" in results:
        speed = results.get("train_images_per_second")
        speed = f", {speed:.1f} images/s" if speed else ""
        if results.get("stopped_by") == "time_budget":
            print(f"Trained to step {results['train_steps_done']} of {results['train_steps']} (stopped by "
                  f"the time budget) in {results['train_seconds']:.0f} s{speed}")
        elif results.get("train_start_step"):
            start, end = results["train_start_step"], results["train_steps"]
            print(f"Trained {end - start} steps this time (resumed at step {start}, now {end} of {end}) "
                  f"in {results['train_seconds']:.0f} s{speed}")
        else:
            print(f"Trained {results['train_steps']} steps in {results['train_seconds']:.0f} s{speed}")
    model_dir = results["model_dir"]
    print(f"Checkpoints:        {results.get('checkpoint')}")
    if "weights_sha256" in results:
        print(f"Weights SHA-256:    {results['weights_sha256']}")
    print(f"TensorBoard logs:   {results['logs']}   (tensorboard --logdir {results['logs']})")
    print(f"Results:            {os.path.join(model_dir, 'result.json')}")
    print(f"Config:             {os.path.join(model_dir, 'config.json')}")
    if results.get("embeddings_png"):
        print(f"Embeddings picture: {results['embeddings_png']}  (held-out images; TensorBoard: projector)")
    exported = results.get("exported") or {}
    if exported:
        print(f"Exported encoder:   {exported['saved_model']}  (SavedModel, TF-Hub style)")
        print(f"                    {exported['keras_file']}")
    print("=" * 72)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}. Flags start with --.")
    try:
        config = config_from_flags(FLAGS).resolved().validate()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    absl_logging.set_verbosity(absl_logging.WARNING)  # TF's INFO chatter hides the progress lines
    # SIGTERM and Ctrl-C outside the training loop (data preparation, linear evaluation, export)
    # unwind as exceptions, so every clean-up on the way runs; then one line and 143 / 130.
    with signals_as_exceptions():
        try:
            return _train_and_report(config)
        except (KeyboardInterrupt, Terminated) as stopped:
            print(f"Stopped by {signal_name(stopped)} before the end of the run: the checkpoints in "
                  f"{config.train.model_dir} are kept and nothing is half-written (a partial export is "
                  "removed, result.json is written only at the end). Rerun the same command to finish "
                  "the run.", file=sys.stderr)
            return exit_code(stopped)


def _train_and_report(config: Config) -> int:
    """`main` once the flags are checked: the run, its errors as one line, the summary."""
    # TensorFlow is imported only now, after the flags were checked.
    from simclr_tf.distribute import make_strategy
    from simclr_tf.training import train
    from simclr_tf.training.callbacks import Interrupted
    from simclr_tf.training.run_dir import ModelDirBusy

    try:
        strategy = make_strategy(
            config.runtime.strategy,
            devices=config.runtime.devices,
            tpu_name=config.runtime.tpu_name,
            tpu_zone=config.runtime.tpu_zone,
            gcp_project=config.runtime.gcp_project,
        )
        results = train(config, strategy)
    except (ValueError, OSError, FloatingPointError, ModelDirBusy) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except Interrupted as stopped:  # SIGTERM or Ctrl-C while training: the step was saved
        print(stopped, file=sys.stderr)
        return stopped.exit_code
    results.pop("config", None)
    _print_summary(results)
    return 0


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()


__all__ = ["config_from_flags", "main"]
