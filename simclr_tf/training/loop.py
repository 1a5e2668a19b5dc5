"""`train(config, strategy)`: the order of a run's phases, and the run's global state.

    pretrain / finetune  ->  evaluate  ->  linear evaluation  ->  export  ->  result.json
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os

import keras
import tensorflow as tf

from simclr_tf import checkpoints, export, interrupts
from simclr_tf.config import Config, save_config
from simclr_tf.data import defaults
from simclr_tf.distribute import is_chief, wait_for_all_workers
from simclr_tf.models.conv import conv_gradients_for
from simclr_tf.precision import resolve_jit_compile, resolve_precision, strategy_devices
from simclr_tf.training import budget, inputs, linear_eval, phases
from simclr_tf.training.run_dir import (
    check_resumable,
    clean_leftovers,
    model_dir_lock,
    prepare_model_dir,
    write_result,
)

log = logging.getLogger(__name__)


def train(config: Config, strategy=None) -> dict:
    """Runs what the config says (train, eval, or both) and returns the results.

    Writes into `config.train.model_dir`: `config.json`, checkpoints `ckpt-<step>`, TensorBoard
    logs under `logs/`, `result.json`, and the exported encoder under `saved_model/<step>`. The
    chief holds `<model_dir>/.run.lock` meanwhile: a second run on the same model_dir stops at once
    with `ModelDirBusy` naming the first.

    Args:
        config: Config. The whole run; validated and resolved here.
        strategy: tf.distribute.Strategy. Defaults to the current (default) strategy.

    Returns:
        dict of results (also written to `result.json`).

    Example:
        ```python
        from simclr_tf import Config, train
        results = train(Config())   # the quickstart: SimCLR on the built-in digits
        ```
    """
    # An image folder's size comes from its images where --image_size is unset (one log line).
    config = defaults.folder_image_size(config).resolved().validate()
    strategy = strategy or tf.distribute.get_strategy()
    train_config = config.train
    prepare_model_dir(train_config.model_dir)
    # One writer per model_dir: the chief holds the lock (other workers write only scratch files).
    lock = model_dir_lock(train_config.model_dir) if is_chief(strategy) else contextlib.nullcontext()
    # Under the CLI's `signals_as_exceptions`, a SIGTERM whose exception TensorFlow replaced with an
    # error of its own still ends the run as a SIGTERM.
    with interrupts.signal_first(), lock:
        if is_chief(strategy):
            clean_leftovers(train_config.model_dir)
        return _locked(config, strategy)


def _locked(config: Config, strategy) -> dict:
    """`train` while holding the model_dir's lock."""
    train_config = config.train
    keras.utils.set_random_seed(train_config.seed)
    if train_config.deterministic:
        tf.config.experimental.enable_op_determinism()
    # The dtype policy is global state: set the run's for its models, and give the caller's back
    # (a float32 run after a mixed-precision one in the same process must be float32).
    # The hardware decisions, from the strategy's devices (DESIGN.md): `auto` becomes the policy
    # and the XLA setting this hardware runs best, stored in config.json; the convolution
    # gradients the encoder's builder takes in the strategy's scope (`build_resnet`) go to
    # result.json. The run logs each once; the command line shows the log.
    devices = strategy_devices(strategy)
    policy, reason = resolve_precision(train_config.precision, strategy, devices=devices)
    jit_compile, jit_reason = resolve_jit_compile(train_config.jit_compile, strategy, devices=devices)
    config = dataclasses.replace(config, train=dataclasses.replace(
        train_config, precision=policy, jit_compile=jit_compile))
    hardware = {"devices": devices.describe(), "precision": f"{policy} ({reason})",
                "jit_compile": f"{jit_compile} ({jit_reason})",
                "conv_gradients": conv_gradients_for(devices).describe()}
    if is_chief(strategy):
        log.info("Devices: %s.", hardware["devices"])
        log.info("Precision: %s.", hardware["precision"])
        log.info("XLA: %s.", hardware["jit_compile"])
        log.info("Convolution gradients: %s.", hardware["conv_gradients"])
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        return _run(config, strategy, hardware)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _accuracy(protocol, split, examples, top1, top5, detail=None) -> dict:
    """One measured accuracy: what was measured (protocol), on which images (split)."""
    entry = {"protocol": protocol, "split": split, "examples": examples, "top1": top1, "top5": top5}
    if detail:
        entry["detail"] = detail
    return entry


def _run(config: Config, strategy, hardware: dict) -> dict:
    """`train` once the run's global state (seed, determinism, dtype policy) is set."""
    train_config = config.train
    chief = is_chief(strategy)
    # Nothing is written before the config is known to fit the model_dir's checkpoints.
    check_resumable(config, train_config.model_dir,
                    num_classes=lambda: inputs.num_classes_for(config, inputs.data_splits(config)))
    # Defaults that come from the data and the machine, decided once and recorded in config.json: the
    # decoded-image cache where it fits the memory, and the steps that fit --train_minutes.
    splits = inputs.data_splits(config)
    config = defaults.cache_fits(config, splits.train.num_examples + (splits.eval.num_examples
                                                                     if splits.eval is not None else 0))
    if train_config.mode != "eval":
        config = budget.plan_train_steps(config, strategy)
    train_config = config.train
    if chief:
        save_config(config, train_config.model_dir)

    results: dict = {"config": dataclasses.asdict(config), "hardware": hardware}
    model = None
    if train_config.mode in ("train", "train_then_eval"):
        fitted = phases.fit(config, strategy)
        model = fitted["model"]
        results.update(fitted["summary"])
        wait_for_all_workers(strategy)  # the chief's last checkpoint is complete: others may read it
    accuracies = []
    interrupts.check()  # a signal whose exception was lost on the way ends the run here
    if train_config.mode in ("eval", "train_then_eval"):
        evaluated = phases.evaluate(config, strategy, model)
        results.update(evaluated)
        if evaluated:
            accuracies.append(_accuracy(evaluated["eval_protocol"], evaluated["eval_split"],
                                        evaluated["eval_examples"], evaluated["eval_top1"],
                                        evaluated["eval_top5"]))
    if (train_config.mode == "train_then_eval" and train_config.train_mode == "pretrain"
            and train_config.linear_eval_epochs > 0 and model is not None):
        interrupts.check()
        numbers = linear_eval.linear_evaluation(config, strategy, model)
        results.update(numbers)
        if "linear_eval_top1" in numbers:
            accuracies.append(_accuracy("linear_eval", numbers["linear_eval_split"],
                                        numbers["linear_eval_examples"], numbers["linear_eval_top1"],
                                        numbers["linear_eval_top5"], detail=numbers["linear_eval_protocol"]))
            if "eval_top1" in results:  # the online head's numbers keep their own names
                results["online_eval_top1"] = results["eval_top1"]
                results["online_eval_top5"] = results["eval_top5"]
            # The headline number of the run is the linear evaluation's.
            results.update(eval_protocol="linear_eval", eval_top1=numbers["linear_eval_top1"],
                           eval_top5=numbers["linear_eval_top5"], eval_split=numbers["linear_eval_split"],
                           eval_examples=numbers["linear_eval_examples"])
    results["accuracies"] = accuracies
    if model is not None:
        results["weights_sha256"] = checkpoints.weights_fingerprint(model)
    interrupts.check()
    if model is not None and chief:
        results["exported"] = export.export_model(
            model,
            os.path.join(train_config.model_dir, "saved_model"),
            step=int(model.optimizer.iterations.numpy()),
            keep=train_config.keep_hub_module_max,
            image_size=config.image_size,
        )
    results["model_dir"] = train_config.model_dir
    results["checkpoint"] = tf.train.latest_checkpoint(train_config.model_dir)
    results["logs"] = os.path.join(train_config.model_dir, "logs")
    interrupts.check()  # result.json says the run finished: not after a signal
    if chief:
        write_result(train_config.model_dir, results)
    wait_for_all_workers(strategy)  # no worker leaves the cluster while the chief still exports
    return results
