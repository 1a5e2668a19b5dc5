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
import sys

from absl import app, flags
from absl import logging as absl_logging

from simclr_tf.config import (
    AugmentConfig,
    Config,
    ConfigError,
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimizerConfig,
    RuntimeConfig,
    TrainConfig,
    field_docs,
)

# Sets TensorFlow's log level; nothing imported here imports TensorFlow (`main` does, later).
from simclr_tf.console import show_library_logs, start_tensorflow
from simclr_tf.interrupts import Terminated, exit_code, signal_name, signals_as_exceptions

# Every field of the typed config is the flag of its name, with the field's default (`Config()` is
# the quickstart) and the field's description from config.py (`field_docs`): each setting is
# described and defaulted once, so the CLI and the library cannot disagree.
_SECTIONS = {"data": DataConfig, "augment": AugmentConfig, "model": ModelConfig, "loss": LossConfig,
             "optimizer": OptimizerConfig, "train": TrainConfig, "runtime": RuntimeConfig}
# Fields without a flag of their own: the classes come from the data; `--devices` is a list flag.
_NOT_FLAGS = {("model", "num_classes"), ("runtime", "devices")}
_KINDS = {"str": str, "int": int, "float": float, "bool": bool}
_DEFINE = {str: flags.DEFINE_string, int: flags.DEFINE_integer, float: flags.DEFINE_float,
           bool: flags.DEFINE_bool}


def flag_help(section: str, field: str) -> str:
    """The help of a flag: the field's description in config.py."""
    return field_docs(_SECTIONS[section])[field]


def _flag_specs() -> list[tuple[str, str, str, type, str]]:
    """(flag, config section, field, kind, help) of every flag that sets one config field."""
    specs = []
    for section, part in _SECTIONS.items():
        for field in dataclasses.fields(part):
            if (section, field.name) not in _NOT_FLAGS:
                kind = _KINDS[str(field.type).split("|")[0].strip()]  # `int | None`: an int flag
                specs.append((field.name, section, field.name, kind, flag_help(section, field.name)))
    return specs


_FLAG_SPECS = _flag_specs()
_DEFAULTS = Config()


def flag_default(section: str, field: str):
    """The default of a flag: the field's default in `Config()`."""
    return getattr(getattr(_DEFAULTS, section), field)


for _name, _section, _field, _kind, _help in _FLAG_SPECS:
    _DEFINE[_kind](_name, flag_default(_section, _field), _help)
flags.DEFINE_bool("use_tpu", False, "Original SimCLR flag: the same as --strategy=tpu.")
flags.DEFINE_list("devices", list(flag_default("runtime", "devices")), flag_help("runtime", "devices"))

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
        config = config_from_flags(FLAGS)
        # Every check before TensorFlow starts. `train` resolves the config itself, after the log
        # lines are shown: an image folder's size then comes from its images (one line).
        config.resolved().validate()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    absl_logging.set_verbosity(absl_logging.WARNING)  # TF's INFO chatter hides the progress lines
    show_library_logs()
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
    # TensorFlow is imported only now, after the flags were checked, without its start-up lines.
    start_tensorflow()
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
