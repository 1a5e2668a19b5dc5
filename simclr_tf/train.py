"""`train(config)`: the one place that wires data, model, optimizer, checkpoints and export.

Everything here takes a typed `Config`; nothing reads flags. The CLI (`simclr_tf.run`) builds the
config, this module runs it:

    pretrain / finetune  ->  evaluate  ->  export  ->  result.json
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from simclr_tf import checkpoints
from simclr_tf.config import Config, save_config
from simclr_tf.data import pipeline, sources
from simclr_tf.distribute import check_batch_divisible, is_chief
from simclr_tf.evaluation import KNNMonitor
from simclr_tf.models.simclr import SimCLRModel
from simclr_tf.optimizers import WarmupCosineDecay, build_optimizer, compute_schedule

RESULT_FILE = "result.json"


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or Inf; the message says at which step and what to try."""


# --- data ------------------------------------------------------------------------------------


def load_split(config: Config, split: str, *, for_eval: bool = False) -> sources.Source:
    """The source of one split, as the data config describes it."""
    data = config.data
    image_dir = data.image_dir
    if for_eval and data.eval_image_dir:
        image_dir = data.eval_image_dir
    return sources.load_source(
        data.dataset,
        split,
        data_dir=data.data_dir,
        download=data.download,
        image_dir=image_dir,
        synthetic_examples=data.synthetic_examples,
        image_size=config.image_size,
        seed=config.train.seed,
    )


def _labelled_subset(config: Config, source: sources.Source) -> sources.Source:
    """The class-balanced label fraction used for supervised training (all labels by default)."""
    data = config.data
    if data.train_label_fraction >= 1.0 and data.train_labels_per_class <= 0:
        return source
    labels = sources.source_labels(source)
    indices = sources.label_subset(
        labels,
        fraction=None if data.train_labels_per_class > 0 else data.train_label_fraction,
        per_class=data.train_labels_per_class or None,
        seed=config.train.seed,
    )
    how = (f"{data.train_labels_per_class} per class" if data.train_labels_per_class
           else f"fraction {data.train_label_fraction}")
    print(f"Using {len(indices)} labelled training images ({how}).", flush=True)
    return sources.subset_source(source, indices)


def _train_dataset(config: Config, source: sources.Source, strategy, start_step: int):
    batch = config.train.train_batch_size
    augment = config.augment

    def make(input_context):
        if config.train.train_mode == "pretrain":
            return pipeline.build_train_dataset(
                source,
                global_batch_size=batch,
                image_size=config.image_size,
                color_jitter_strength=augment.color_jitter_strength,
                use_blur=augment.use_blur,
                color_jitter_impl=augment.color_jitter_impl,
                crop_min_area=augment.crop_min_area,
                random_flip=augment.random_flip,
                seed=config.train.seed,
                cache=config.data.cache_dataset,
                input_context=input_context,
                start_step=start_step,
            )
        return pipeline.build_finetune_dataset(
            source,
            global_batch_size=batch,
            image_size=config.image_size,
            seed=config.train.seed,
            cache=config.data.cache_dataset,
            input_context=input_context,
            start_step=start_step,
        )

    return _distribute(make, strategy)


def _eval_dataset(config: Config, source: sources.Source, strategy):
    def make(input_context):
        return pipeline.build_eval_dataset(
            source,
            global_batch_size=config.train.eval_batch_size,
            image_size=config.image_size,
            input_context=input_context,
            cache=config.data.cache_dataset,
        )

    return _distribute(make, strategy)


def _distribute(make, strategy):
    """`make(input_context)`'s dataset, one shard per input pipeline when the strategy has several."""
    if strategy.num_replicas_in_sync == 1 and not _is_multi_worker(strategy):
        return make(None)
    return strategy.distribute_datasets_from_function(make)


def _is_multi_worker(strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


# --- model -----------------------------------------------------------------------------------


def build_model(config: Config, num_classes: int) -> SimCLRModel:
    """The SimCLRModel a config describes (call inside the strategy's scope)."""
    m = config.model
    return SimCLRModel(
        resnet_depth=m.resnet_depth,
        width_multiplier=m.width_multiplier,
        cifar_stem=bool(m.cifar_stem),
        sk_ratio=m.sk_ratio,
        se_ratio=m.se_ratio,
        batch_norm_decay=m.batch_norm_decay,
        global_bn=m.global_bn,
        proj_head_mode=m.proj_head_mode,
        proj_out_dim=m.proj_out_dim,
        num_proj_layers=m.num_proj_layers,
        ft_proj_selector=m.ft_proj_selector,
        num_classes=num_classes,
        zero_init_logits_layer=m.zero_init_logits_layer,
        train_mode=config.train.train_mode,
        lineareval_while_pretraining=config.train.lineareval_while_pretraining,
        fine_tune_after_block=config.train.fine_tune_after_block,
        temperature=config.loss.temperature,
        hidden_norm=config.loss.hidden_norm,
        optimizer_name=config.optimizer.optimizer,
        weight_decay=config.optimizer.weight_decay,
        name="simclr",
    )


def _num_classes(config: Config, source: sources.Source) -> int:
    if config.model.num_classes:
        return config.model.num_classes
    wants_labels = config.train.train_mode == "finetune" or config.train.lineareval_while_pretraining
    if not wants_labels or not source.num_classes or source.num_classes <= 0:
        return 0
    return source.num_classes


def _build_everything(config: Config, strategy, num_classes: int, schedule=None):
    """Model (built), optimizer (built) and compiled, inside the strategy's scope."""
    with strategy.scope():
        model = build_model(config, num_classes)
        model(tf.zeros([1, config.image_size, config.image_size, 3]), training=False)
        learning_rate = (
            WarmupCosineDecay(schedule.peak_learning_rate, schedule.warmup_steps, schedule.total_steps)
            if schedule is not None
            else 0.0
        )
        optimizer = build_optimizer(
            config.optimizer.optimizer,
            learning_rate,
            momentum=config.optimizer.momentum,
            weight_decay=config.optimizer.weight_decay,
            lars_eta=config.optimizer.lars_eta,
        )
        if config.train.precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
        model.compile(
            optimizer=optimizer,
            jit_compile=config.train.jit_compile,
            steps_per_execution=config.train.steps_per_execution,
        )
    if _is_multi_worker(strategy):
        _work_around_keras_multi_worker(model)
    return model, optimizer


def _work_around_keras_multi_worker(model) -> None:
    """Lets a built, compiled model `fit` and `evaluate` under MultiWorkerMirroredStrategy.

    Keras 3 trips over this strategy twice (keras-team/keras#20585, tensorflow/tensorflow#72388):

    - Before `fit` and `evaluate` it averages a whole input batch over the replicas with
      `strategy.reduce` to build the model symbolically, which fails on a nested batch ("Attempt
      to convert a value (PerReplica ...) to a Tensor"). That build has nothing to do once the
      model, its metrics and its optimizer are built, as `_build_everything` ensures: skip it.
    - It averages each step's outputs with `strategy.reduce("MEAN", value, axis=0)`, which
      expects a batch axis and fails on the scalar metrics ("Invalid reduction dimension 0 for
      input with 0 dimensions"). Giving each scalar a batch axis of one makes that the mean over
      all replicas of all workers, the same value as under MirroredStrategy.
    """
    unbuilt = [layer.name for layer in model._flatten_layers() if not layer.built]
    if unbuilt or not model.optimizer.built:
        raise RuntimeError(f"Build the model and its optimizer first; not built: {unbuilt or 'optimizer'}.")
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None

    def with_batch_axis(step):
        def step_with_batch_axis(data):
            return {name: tf.reshape(value, [1]) for name, value in step(data).items()}  # () -> (1,)

        return step_with_batch_axis

    model.train_step = with_batch_axis(model.train_step)
    model.test_step = with_batch_axis(model.test_step)


# --- callbacks -------------------------------------------------------------------------------


class _StopAtStep(keras.callbacks.Callback):
    """Ends training when the optimizer's step counter reaches `total_steps`."""

    def __init__(self, total_steps):
        super().__init__()
        self.total_steps = total_steps

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) >= self.total_steps:
            self.model.stop_training = True


class _NaNGuard(keras.callbacks.Callback):
    """Stops at once when the loss is not finite, before any checkpoint of that step is written."""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        loss = float(np.asarray(loss))
        if math.isfinite(loss):
            return
        step = int(self.model.optimizer.iterations.numpy())
        raise TrainingDiverged(
            f"The training loss became {loss} at step {step}. Nothing was saved for this step; the "
            f"last good checkpoint in {self.config.train.model_dir} is kept. Likely causes: a "
            f"learning rate too high for this batch size (learning_rate="
            f"{self.config.optimizer.learning_rate}, scaling={self.config.optimizer.learning_rate_scaling}"
            f"), a temperature too low (temperature={self.config.loss.temperature}), or mixed "
            f"precision overflow. Lower --learning_rate or raise --temperature and rerun: training "
            f"resumes from the last checkpoint."
        )


class _Checkpointer(keras.callbacks.Callback):
    """Saves `ckpt-<step>` every `every_steps` steps and at the end of training."""

    def __init__(self, manager: checkpoints.CheckpointSaver, every_steps: int):
        super().__init__()
        self.manager = manager
        self.every_steps = max(1, every_steps)
        self.last_saved = -1

    def _save(self):
        step = int(self.model.optimizer.iterations.numpy())
        if step != self.last_saved:
            self.manager.save(step)
            self.last_saved = step

    def on_train_begin(self, logs=None):
        self.last_saved = int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step - self.last_saved >= self.every_steps or step % self.every_steps == 0:
            self._save()

    def on_train_end(self, logs=None):
        self._save()


class _StepLogger(keras.callbacks.Callback):
    """A line every `every_steps` steps, for logs that are not a terminal (no progress bar)."""

    def __init__(self, total_steps, every_steps):
        super().__init__()
        self.total_steps = total_steps
        self.every_steps = max(1, every_steps)
        self.start = None
        self.start_step = 0

    def on_train_begin(self, logs=None):
        self.start = time.time()
        self.start_step = int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step % self.every_steps and step < self.total_steps:
            return
        elapsed = time.time() - self.start
        done = step - self.start_step
        eta = elapsed / done * (self.total_steps - step) if done else float("nan")
        shown = ", ".join(f"{k}={float(np.asarray(v)):.4g}" for k, v in (logs or {}).items())
        print(f"step {step}/{self.total_steps} ({elapsed:.0f}s, eta {eta:.0f}s): {shown}", flush=True)


def _knn_monitor(config: Config, source: sources.Source, log_dir: str):
    """The kNN monitor on the eval split, or None when there are no labels to use."""
    if source.num_classes <= 0:
        print("kNN monitor off: the training images have no labels.", flush=True)
        return None
    try:
        eval_source = load_split(config, config.data.eval_split, for_eval=True)
    except sources.SplitNotFoundError as error:
        print(f"kNN monitor off: {error}", flush=True)
        return None

    def batches(split_source):
        return pipeline.build_eval_dataset(
            split_source, global_batch_size=config.train.eval_batch_size, image_size=config.image_size,
            cache=config.data.cache_dataset,
        )

    return KNNMonitor(
        batches(source), batches(eval_source), num_classes=source.num_classes,
        every_epochs=config.train.knn_every_epochs, log_dir=os.path.join(log_dir, "knn"),
    )


def _image_summary(dataset, strategy, log_dir: str, *, write: bool) -> None:
    """A few augmented training images in TensorBoard, to see what the model sees.

    Every worker must call it: taking a batch of a multi-worker distributed dataset all-reduces
    which workers still have data. Only the one with `write` set (the chief) writes the summary of
    its first replica's images.
    """
    (view_1, view_2), _ = next(iter(dataset))
    if not write:
        return
    view_1 = strategy.experimental_local_results(view_1)[0]  # (B / replicas, H, W, 3)
    view_2 = strategy.experimental_local_results(view_2)[0]
    writer = tf.summary.create_file_writer(os.path.join(log_dir, "train"))
    with writer.as_default():
        tf.summary.image("view_1", view_1[:4], step=0, max_outputs=4)
        tf.summary.image("view_2", view_2[:4], step=0, max_outputs=4)
    writer.flush()


# --- phases ----------------------------------------------------------------------------------


def _fit(config: Config, strategy) -> dict:
    """Pretraining or fine-tuning, resuming from the latest checkpoint in model_dir."""
    train = config.train
    source = load_split(config, config.data.train_split)
    num_classes = _num_classes(config, source)
    if config.train.train_mode == "finetune":
        source = _labelled_subset(config, source)
    num_examples = source.num_examples
    if train.train_batch_size > num_examples:
        raise ValueError(
            f"`train_batch_size` ({train.train_batch_size}) is larger than the training split "
            f"({num_examples} images of {config.data.dataset}:{config.data.train_split}). Use a "
            f"batch size of at most {num_examples}."
        )
    check_batch_divisible(train.train_batch_size, strategy.num_replicas_in_sync)
    schedule = compute_schedule(
        base_learning_rate=config.optimizer.learning_rate,
        learning_rate_scaling=config.optimizer.learning_rate_scaling,
        batch_size=train.train_batch_size,
        num_train_examples=num_examples,
        train_epochs=train.train_epochs,
        train_steps=train.train_steps,
        warmup_epochs=config.optimizer.warmup_epochs,
    )
    model, optimizer = _build_everything(config, strategy, num_classes, schedule)
    chief = is_chief(strategy)
    saver = checkpoints.CheckpointSaver(
        model, optimizer, train.model_dir, max_to_keep=train.keep_checkpoint_max, chief=chief
    )
    start_step = saver.restore_latest()
    if start_step == 0 and train.checkpoint:
        checkpoints.restore_pretrained(model, train.checkpoint, train_mode=train.train_mode)
        print(f"Initialised from the checkpoint {train.checkpoint}.", flush=True)
    if start_step:
        print(f"Resuming from {saver.latest} at step {start_step}.", flush=True)

    total_steps = schedule.total_steps
    steps_per_epoch = schedule.steps_per_epoch
    checkpoint_every = train.checkpoint_steps or train.checkpoint_epochs * steps_per_epoch or total_steps
    log_dir = os.path.join(train.model_dir, "logs")
    summary = {
        "train_steps": total_steps,
        "steps_per_epoch": steps_per_epoch,
        "peak_learning_rate": schedule.peak_learning_rate,
        "warmup_steps": schedule.warmup_steps,
        "num_train_examples": num_examples,
    }
    if start_step >= total_steps:
        print(f"Training already finished: step {start_step} of {total_steps}.", flush=True)
        return {"model": model, "summary": summary, "history": {}}

    dataset = _train_dataset(config, source, strategy, start_step)
    interactive = sys.stdout.isatty()
    callbacks = [
        _NaNGuard(config),
        _StopAtStep(total_steps),
        _Checkpointer(saver, checkpoint_every),
    ]
    if chief and train.knn_every_epochs > 0 and train.train_mode == "pretrain":
        monitor = _knn_monitor(config, source, log_dir)
        if monitor is not None:
            callbacks.append(monitor)  # before TensorBoard, which then logs knn_top1 too
    if chief:
        callbacks.append(
            keras.callbacks.TensorBoard(log_dir=log_dir, update_freq=max(1, min(100, steps_per_epoch)))
        )
    if config.train.train_mode == "pretrain":
        _image_summary(dataset, strategy, log_dir, write=chief)
    if not interactive:
        callbacks.append(_StepLogger(total_steps, max(1, min(100, steps_per_epoch))))
    epochs = math.ceil(total_steps / steps_per_epoch)
    started = time.time()
    history = model.fit(
        dataset,
        epochs=epochs,
        initial_epoch=start_step // steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
        callbacks=callbacks,
        verbose=1 if interactive else 0,
        shuffle=False,  # the input pipeline shuffles, reproducibly from the seed
    )
    summary["train_seconds"] = round(time.time() - started, 1)
    final = {k: float(np.asarray(v[-1])) for k, v in history.history.items() if v}
    summary.update({f"train_{k}": v for k, v in final.items()})
    return {"model": model, "summary": summary, "history": history.history}


def _evaluate(config: Config, strategy, model=None) -> dict:
    """Top-1 / top-5 of the supervised head on the eval split."""
    train = config.train
    try:
        source = load_split(config, config.data.eval_split, for_eval=True)
    except sources.SplitNotFoundError as error:
        print(f"Evaluation skipped: {error}", flush=True)
        return {}
    global_step = int(model.optimizer.iterations.numpy()) if model is not None else 0
    if model is None:
        num_classes = _num_classes(config, source)
        model, _ = _build_everything(config, strategy, num_classes)
        saver = checkpoints.CheckpointSaver(model, None, train.model_dir, max_to_keep=1, chief=False)
        step = global_step = saver.restore_latest(model_only=True)
        if step == 0:
            if not train.checkpoint:
                raise FileNotFoundError(
                    f"Nothing to evaluate: no checkpoint in {train.model_dir} and no --checkpoint. "
                    "Train first (--mode=train_then_eval) or point --checkpoint at one."
                )
            checkpoints.restore_pretrained(model, train.checkpoint, train_mode="eval")
    if model.supervised_head is None:
        print("Evaluation skipped: the model has no supervised head (no labels).", flush=True)
        return {}
    if source.num_classes <= 0:
        print("Evaluation skipped: the eval split has no labels.", flush=True)
        return {}
    dataset = _eval_dataset(config, source, strategy)
    metrics = model.evaluate(
        dataset, steps=train.eval_steps or None, verbose=1 if sys.stdout.isatty() else 0,
        return_dict=True,
    )
    return {
        "eval_top1": float(metrics["top1"]),
        "eval_top5": float(metrics["top5"]),
        "eval_loss": float(metrics["supervised_loss"]),
        "eval_split": f"{config.data.dataset}:{config.data.eval_split}",
        "eval_examples": source.num_examples,
        "global_step": global_step,
    }


def linear_eval_config(config: Config) -> Config:
    """The paper's linear evaluation of a pretraining run: a linear head on the frozen encoder.

    Trained with crop + flip only, Nesterov momentum, no weight decay, from the run's latest
    checkpoint, into `<model_dir>/linear_eval`.
    """
    train = dataclasses.replace(
        config.train,
        mode="train_then_eval",
        train_mode="finetune",
        fine_tune_after_block=4,
        lineareval_while_pretraining=False,
        train_epochs=config.train.linear_eval_epochs,
        train_steps=0,
        checkpoint_steps=0,
        checkpoint_epochs=max(1, config.train.linear_eval_epochs),
        linear_eval_epochs=0,
        checkpoint=config.train.model_dir,
        model_dir=os.path.join(config.train.model_dir, "linear_eval"),
    )
    optimizer = dataclasses.replace(
        config.optimizer,
        optimizer="momentum",
        learning_rate=config.train.linear_eval_learning_rate,
        learning_rate_scaling="linear",
        warmup_epochs=0.0,
        weight_decay=0.0,
    )
    model = dataclasses.replace(config.model, ft_proj_selector=0)
    return dataclasses.replace(config, train=train, optimizer=optimizer, model=model)


def _linear_evaluation(config: Config, strategy) -> dict:
    le_config = linear_eval_config(config)
    print(f"Linear evaluation: {le_config.train.train_epochs} epochs on the frozen encoder, "
          f"into {le_config.train.model_dir}", flush=True)
    prepare_model_dir(le_config.train.model_dir)
    chief = is_chief(strategy)
    if chief:
        save_config(le_config, le_config.train.model_dir)
    fitted = _fit(le_config, strategy)
    evaluated = _evaluate(le_config, strategy, fitted["model"])
    if chief:
        _write_json(os.path.join(le_config.train.model_dir, RESULT_FILE), {**fitted["summary"], **evaluated})
    results = {"linear_eval_dir": le_config.train.model_dir,
               "linear_eval_train_seconds": fitted["summary"].get("train_seconds", 0.0)}
    if "eval_top1" in evaluated:
        results.update(
            eval_top1=evaluated["eval_top1"], eval_top5=evaluated["eval_top5"],
            eval_loss=evaluated["eval_loss"], eval_split=evaluated["eval_split"],
            eval_examples=evaluated["eval_examples"], eval_protocol="linear evaluation (frozen encoder)",
        )
    return results


def _write_json(path: str, values: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(values, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    os.replace(tmp, path)


def prepare_model_dir(model_dir: str) -> None:
    """Creates model_dir and checks it is writable, before any work."""
    try:
        os.makedirs(model_dir, exist_ok=True)
        probe = os.path.join(model_dir, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as error:
        raise PermissionError(
            f"`model_dir` {model_dir!r} is not writable ({error.strerror}). Choose another "
            "--model_dir or fix its permissions."
        ) from None


def train(config: Config, strategy=None) -> dict:
    """Runs what the config says (train, eval, or both) and returns the results.

    Writes into `config.train.model_dir`: `config.json`, checkpoints `ckpt-<step>`, TensorBoard
    logs under `logs/`, `result.json`, and the exported encoder under `saved_model/<step>`.

    Args:
        config: Config. The whole run; validated and resolved here.
        strategy: tf.distribute.Strategy. Defaults to the current (default) strategy.

    Returns:
        dict of results (also written to `result.json`).
    """
    config = config.resolved().validate()
    strategy = strategy or tf.distribute.get_strategy()
    train_config = config.train
    prepare_model_dir(train_config.model_dir)
    keras.utils.set_random_seed(train_config.seed)
    if train_config.deterministic:
        tf.config.experimental.enable_op_determinism()
    # The dtype policy is global state: set the run's for its models, and give the caller's back
    # (a float32 run after a mixed-precision one in the same process must be float32).
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(train_config.precision)
    try:
        return _run(config, strategy)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _run(config: Config, strategy) -> dict:
    """`train` once the run's global state (seed, determinism, dtype policy) is set."""
    train_config = config.train
    chief = is_chief(strategy)
    if chief:
        save_config(config, train_config.model_dir)

    results: dict = {"config": dataclasses.asdict(config)}
    model = None
    if train_config.mode in ("train", "train_then_eval"):
        fitted = _fit(config, strategy)
        model = fitted["model"]
        results.update(fitted["summary"])
        _wait_for_all_workers(strategy)  # the chief's last checkpoint is complete: others may read it
    if train_config.mode in ("eval", "train_then_eval"):
        results.update(_evaluate(config, strategy, model))
    if (train_config.mode == "train_then_eval" and train_config.train_mode == "pretrain"
            and train_config.linear_eval_epochs > 0):
        if "eval_top1" in results:  # the head trained alongside pretraining
            results["online_eval_top1"] = results["eval_top1"]
            results["online_eval_top5"] = results["eval_top5"]
        results.update(_linear_evaluation(config, strategy))
    if model is not None:
        results["weights_sha256"] = checkpoints.weights_fingerprint(model)
    if model is not None and chief:
        results["exported"] = _export(config, model)
    results["model_dir"] = train_config.model_dir
    results["checkpoint"] = tf.train.latest_checkpoint(train_config.model_dir)
    results["logs"] = os.path.join(train_config.model_dir, "logs")
    if chief:
        _write_json(os.path.join(train_config.model_dir, RESULT_FILE), results)
    _wait_for_all_workers(strategy)  # no worker leaves the cluster while the chief still exports
    return results


def _wait_for_all_workers(strategy) -> None:
    """A barrier across the workers of a multi-worker strategy (nothing to do otherwise)."""
    if _is_multi_worker(strategy):
        barrier = tf.function(lambda: strategy.reduce("SUM", strategy.run(tf.ones, ([],)), axis=None),
                              autograph=False)
        barrier()


def _export(config: Config, model) -> dict:
    try:
        from simclr_tf import export
    except ImportError:  # export lands in its own change
        return {}
    step = int(model.optimizer.iterations.numpy())
    return export.export_model(
        model,
        os.path.join(config.train.model_dir, "saved_model"),
        step=step,
        keep=config.train.keep_hub_module_max,
        image_size=config.image_size,
    )
