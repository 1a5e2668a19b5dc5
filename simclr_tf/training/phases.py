"""The phases of a run: pretraining or fine-tuning, and evaluation (linear evaluation: linear_eval.py).

Each phase takes the typed `Config` and a strategy and returns its numbers; `loop.py` orders them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
import warnings

import keras
import numpy as np

from simclr_tf import checkpoints, convert
from simclr_tf.config import Config
from simclr_tf.distribute import (
    check_batch_divisible,
    is_chief,
    is_multi_worker,
    work_around_keras_multi_worker,
)
from simclr_tf.models.build import build_model
from simclr_tf.optimizers import build_optimizer
from simclr_tf.schedules import WarmupCosineDecay, compute_schedule
from simclr_tf.training import callbacks as cbs
from simclr_tf.training import distill, head_init, inputs
from simclr_tf.training.callbacks import TrainingDiverged

log = logging.getLogger(__name__)

__all__ = ["TrainingDiverged", "build_for_training", "evaluate", "fit"]


def build_for_training(config: Config, strategy, num_classes: int, schedule=None):
    """Model and optimizer, both built, and the model compiled, inside the strategy's scope."""
    with strategy.scope():
        model = build_model(config, num_classes)
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
        model.compile(
            optimizer=optimizer,
            jit_compile=config.train.jit_compile,
            steps_per_execution=config.train.steps_per_execution,
        )
        optimizer.build(model.trainable_variables)
    if is_multi_worker(strategy):
        work_around_keras_multi_worker(model)
    return model, optimizer


def finetune_start_note(init_checkpoint: str | None) -> str:
    """What a fresh fine-tuning with the head's own initializer starts from, as printed."""
    if init_checkpoint is None:
        return "Fine-tuning from random weights (--checkpoint=none)."
    return ("Fine-tuning from those weights; the supervised head starts from its initializer "
            "(--ft_head_init=initializer).")


def check_steps_per_execution(steps_per_execution: int, steps_per_epoch: int, total_steps: int) -> None:
    """Keras runs whole executions: one that does not divide the epoch and the run trains past the
    run's last step, where the learning-rate schedule has ended (seen: 72 steps of a 68-step run)."""
    steps_per_epoch = min(steps_per_epoch, total_steps)  # as `fit` runs a run shorter than an epoch
    if steps_per_execution > 1 and (steps_per_epoch % steps_per_execution
                                    or total_steps % steps_per_execution):
        divisors = [d for d in range(1, steps_per_epoch + 1) if steps_per_epoch % d == 0 == total_steps % d]
        raise ValueError(
            f"--steps_per_execution={steps_per_execution} must divide the steps per epoch "
            f"({steps_per_epoch}) and the run's steps ({total_steps}): Keras runs whole executions, so "
            f"training would go past its last step. Use one of {divisors}, or set --train_steps to a "
            "multiple of it.")


def fit(config: Config, strategy) -> dict:
    """Pretraining or fine-tuning, resuming from the latest checkpoint in model_dir.

    Training ends at the last step, or earlier at the time budget (`max_train_minutes`, counted
    from the start of training in this process), with a checkpoint of the step it reached; the
    summary says which (`train_steps_done`, `stopped_by`: None or "time_budget").
    """
    train = config.train
    splits = inputs.data_splits(config)
    num_classes = inputs.num_classes_for(config, splits)
    source = splits.train
    if train.train_mode == "finetune":
        if splits.num_classes <= 0:
            raise ValueError(
                f"`train_mode=finetune` needs labelled images, and {source.name} has none. Put the "
                "images in class sub-folders (at least two), or pretrain on them instead "
                "(--train_mode=pretrain)."
            )
        source = inputs.labelled_subset(config, splits.labelled_train)
    teacher = None
    if train.train_mode == "distill":  # every training image; the student's classes are the teacher's
        source = distill.distillation_source(config, splits)
        teacher = distill.load_teacher(config, strategy, splits.num_classes)
        num_classes = teacher.num_classes
    num_examples = source.num_examples
    if train.train_batch_size > num_examples:
        replicas = strategy.num_replicas_in_sync
        batch = num_examples // replicas * replicas
        if batch == 0:
            raise ValueError(
                f"The training images ({num_examples} of {source.name}) are fewer than the replicas "
                f"({replicas}): every replica needs at least one image per step. Use more images or "
                "fewer devices."
            )
        log.warning(f"`train_batch_size` ({train.train_batch_size}) is larger than the {num_examples} "
                    f"training images of {source.name}: using batches of {batch}.")
        train = dataclasses.replace(train, train_batch_size=batch)
        config = dataclasses.replace(config, train=train)
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
    check_steps_per_execution(train.steps_per_execution, schedule.steps_per_epoch, schedule.total_steps)
    model, optimizer = build_for_training(config, strategy, num_classes, schedule)
    # What `fit` trains: the model, or a DistillationModel around it (the checkpoints hold `model`).
    trained = model if teacher is None else distill.distillation_model(config, strategy, model, optimizer,
                                                                       teacher)
    chief = is_chief(strategy)
    saver = checkpoints.CheckpointSaver(
        model, optimizer, train.model_dir, max_to_keep=train.keep_checkpoint_max, chief=chief
    )
    start_step = saver.restore_latest()
    if start_step == 0 and train.init_checkpoint:
        convert.restore_pretrained(model, train.init_checkpoint, train_mode=train.train_mode)
        log.info(f"Initialised from the checkpoint {train.init_checkpoint}.")
    if start_step == 0 and train.ft_head_init == "linear_probe":
        with strategy.scope():
            top1 = head_init.init_head_from_probe(model, source, image_size=config.image_size,
                                                  batch_size=config.train.eval_batch_size, seed=train.seed)
        log.info(f"Supervised head initialised by a linear probe on the frozen features of the "
                 f"{num_examples} labelled training images (--ft_head_init=linear_probe; its top-1 on "
                 f"those training images: {top1:.2%}).")
    elif start_step == 0 and train.train_mode == "finetune":
        log.info(finetune_start_note(train.init_checkpoint))
    if start_step:
        log.info(f"Resuming from {saver.latest} at step {start_step}.")

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
        log.info(f"Training already finished: step {start_step} of {total_steps}.")
        summary.update(train_steps_done=start_step, stopped_by=None)
        return {"model": model, "summary": summary, "history": {}}

    dataset = inputs.train_dataset(config, source, strategy, start_step)
    # SIGTERM (a scheduler's notice before preemption) and Ctrl-C save the current step and stop;
    # with several workers every one must take part in a save, so there a signal ends at once.
    stop = cbs.SignalStop(enabled=not is_multi_worker(strategy))
    # Timed saves only where one process decides: workers would have to agree on the moment.
    checkpoint_minutes = 0.0 if is_multi_worker(strategy) else train.checkpoint_minutes
    # The time budget likewise: each worker's clock would stop it at another step.
    budget_minutes = train.max_train_minutes
    if budget_minutes and is_multi_worker(strategy):
        log.warning(f"--max_train_minutes={budget_minutes:g} is not applied with several workers (they would "
                    "have to agree on the step): training runs to its last step.")
        budget_minutes = 0.0
    budget = cbs.TimeBudget(budget_minutes, total_steps)
    callbacks = [cbs.NaNGuard(config), cbs.StopAtStep(total_steps), budget,
                 cbs.Checkpointer(saver, checkpoint_every, stop=stop, every_minutes=checkpoint_minutes)]
    if chief and train.knn_every_epochs > 0 and train.train_mode == "pretrain":
        monitor = cbs.knn_monitor(config, splits, log_dir)
        if monitor is not None:
            callbacks.append(monitor)  # before TensorBoard, which then logs knn_top1 too
    every = max(1, min(100, steps_per_epoch))
    # Progress by steps and by time (the first line about 30 s after the first step, then at least
    # once a minute), in a terminal as in a log file; TensorBoard's scalars at the same steps.
    cadence = cbs.Cadence(every, total_steps)
    if chief:
        callbacks.append(cbs.ScalarSummaries(log_dir, every, train.train_batch_size, cadence=cadence))
    if train.train_mode == "pretrain":
        cbs.image_summary(dataset, strategy, log_dir, write=chief)
    callbacks.append(cbs.StepLogger(total_steps, every, train.train_batch_size, cadence=cadence))
    # A run shorter than an epoch is one epoch of exactly its steps, so the progress bar counts
    # the steps that really run.
    steps_per_epoch = min(steps_per_epoch, total_steps)
    epochs = math.ceil(total_steps / steps_per_epoch)
    started = time.time()
    with stop:
        history = trained.fit(
            dataset,
            epochs=epochs,
            initial_epoch=start_step // steps_per_epoch,
            steps_per_epoch=steps_per_epoch,
            callbacks=callbacks,
            verbose=0,  # the StepLogger's lines, not a progress bar they would break
            shuffle=False,  # the input pipeline shuffles, reproducibly from the seed
        )
    if stop.received is not None:
        raise cbs.Interrupted(stop.received, int(model.optimizer.iterations.numpy()), saver.latest)
    seconds = time.time() - started
    summary["train_seconds"] = round(seconds, 1)
    step = int(model.optimizer.iterations.numpy())
    summary["train_steps_done"] = step
    summary["train_start_step"] = start_step
    summary["stopped_by"] = None
    if budget.stopped_at is not None:
        summary["stopped_by"] = "time_budget"
        log.info(f"Time budget reached: stopped at step {step} of {total_steps} after "
                 f"{budget.seconds / 60:.1f} min of training (--max_train_minutes={budget_minutes:g}) and "
                 f"saved {saver.latest}; the run goes on with the model of step {step}. Rerun the same "
                 "command to train on from there (again up to the budget, or to the end).")
    steps_run = step - start_step
    summary["train_images_per_second"] = round(steps_run * train.train_batch_size / max(seconds, 1e-9), 2)
    final = {k: float(np.asarray(v[-1])) for k, v in history.history.items() if v}
    summary.update({f"train_{k}": v for k, v in final.items()})
    return {"model": model, "summary": summary, "history": history.history}


def _restore_for_eval(config: Config, strategy, num_classes: int):
    """A model holding the run's latest checkpoint, or the one `--checkpoint` names."""
    train = config.train
    model, _ = build_for_training(config, strategy, num_classes)
    saver = checkpoints.CheckpointSaver(model, None, train.model_dir, max_to_keep=1, chief=False)
    step = saver.restore_latest(model_only=True)
    if step == 0:
        if not train.init_checkpoint:
            raise FileNotFoundError(
                f"Nothing to evaluate: no checkpoint in {train.model_dir} and no --checkpoint. "
                "Train first (--mode=train_then_eval) or point --checkpoint at one."
            )
        convert.restore_pretrained(model, train.init_checkpoint, train_mode="eval")
    return model, step


def evaluate(config: Config, strategy, model=None) -> dict:
    """Top-1 / top-5 of the supervised head on the held-out images, named by protocol and split."""
    train = config.train
    splits = inputs.data_splits(config)
    if splits.eval is None:
        return {}  # no labels: said once where the splits were made
    if model is None:
        model, global_step = _restore_for_eval(config, strategy, inputs.num_classes_for(config, splits))
    else:
        global_step = int(model.optimizer.iterations.numpy())
    if model.supervised_head is None:
        log.info("Evaluation skipped: the model has no supervised head (no labels).")
        return {}
    with warnings.catch_warnings():
        # One pass over a dataset of unknown length ends by running out of data, as it should;
        # Keras warns about that as if training had been cut short.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        metrics = model.evaluate(
            inputs.eval_dataset(config, splits.eval, strategy), steps=train.eval_steps or None,
            verbose=1 if sys.stdout.isatty() else 0, return_dict=True,
        )
    if train.train_mode == "pretrain":
        protocol = "online_linear_head"  # trained on stop-gradient features while pretraining
    elif train.train_mode == "distill":
        protocol = "distill"
    elif train.fine_tune_after_block >= 4:
        protocol = "linear_eval"
    else:
        protocol = "finetune"
    return {
        "eval_protocol": protocol,
        "eval_top1": float(metrics["top1"]),
        "eval_top5": float(metrics["top5"]),
        "eval_loss": float(metrics["supervised_loss"]),
        "eval_split": splits.eval_name,
        # `eval_steps` batches cover only the first images of the split.
        "eval_examples": (min(splits.eval.num_examples, train.eval_steps * train.eval_batch_size)
                          if train.eval_steps else splits.eval.num_examples),
        "global_step": global_step,
    }
