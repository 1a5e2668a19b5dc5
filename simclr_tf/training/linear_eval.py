"""Linear evaluation of a pretrained encoder, on held-out images, by one of two protocols.

- `logistic` (the default for small data sets: digits, synthetic, image folders): the paper's
  transfer-learning protocol (SimCLR appendix B.8). Features of un-augmented images from the frozen
  encoder; an L2-regularised multinomial logistic regression (L-BFGS), its regularisation chosen on
  a validation part of the training images. Seconds on CPU. With `train_labels_per_class` or
  `train_label_fraction` it sees only those labels (the paper's semi-supervised linear evaluation),
  the very images the `sgd` protocol and fine-tuning train on (`inputs.labelled_subset`).
- `sgd` (the default for TFDS data such as ImageNet): the ImageNet protocol. A fresh linear head
  on the frozen encoder, trained with the run's crop and flip, Nesterov momentum, no weight decay,
  its own batch size (`linear_eval_batch_size`), from the run's checkpoint, into
  `<model_dir>/linear_eval`.

Both write `<model_dir>/linear_eval/result.json` and return numbers named `linear_eval`. The `sgd`
head is trained again when the encoder changed since (a finished run resumed with more steps):
`linear_eval/encoder.json` says which encoder its checkpoints belong to.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import time

from simclr_tf import checkpoints, evaluation
from simclr_tf.config import Config, save_config
from simclr_tf.distribute import is_chief, wait_for_all_workers
from simclr_tf.training import inputs, phases, pictures
from simclr_tf.training.run_dir import prepare_model_dir, write_json, write_result

log = logging.getLogger(__name__)

ENCODER_FILE = "encoder.json"  # which encoder the linear head in `<model_dir>/linear_eval` is for

PROTOCOL_NAMES = {
    "logistic": "logistic regression on frozen features (appendix B.8)",
    "sgd": "linear head trained by SGD on the frozen encoder",
}


def linear_eval_config(config: Config, num_labelled: int | None = None) -> Config:
    """The `sgd` linear evaluation of a pretraining run, as a fine-tuning config.

    Args:
        config: the pretraining run's config.
        num_labelled: labelled training images; the batch is `linear_eval_batch_size`, capped at
            this number.
    """
    batch = config.train.linear_eval_batch_size
    if num_labelled:
        batch = max(1, min(batch, num_labelled))
    train = dataclasses.replace(
        config.train,
        mode="train_then_eval",
        train_mode="finetune",
        fine_tune_after_block=4,
        lineareval_while_pretraining=False,
        train_batch_size=batch,
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


def linear_evaluation(config: Config, strategy, model) -> dict:
    """Runs the run's linear-evaluation protocol and returns its numbers (empty without labels)."""
    splits = inputs.data_splits(config)
    if splits.eval is None or splits.num_classes < 2:
        return {}  # no labels: said once where the splits were made
    protocol = config.linear_eval_protocol
    out_dir = os.path.join(config.train.model_dir, "linear_eval")
    log.info(f"Linear evaluation ({PROTOCOL_NAMES[protocol]}) on {splits.eval_name}, into {out_dir}: "
             f"{protocol_reason(config)}.")
    prepare_model_dir(out_dir)
    started = time.time()
    if protocol == "logistic":
        numbers = _logistic(config, splits, model)
    else:
        numbers = _sgd(config, strategy, splits, model)
    numbers["linear_eval_seconds"] = round(time.time() - started, 1)
    numbers["linear_eval_dir"] = out_dir
    if is_chief(strategy):
        write_result(out_dir, numbers)
        numbers.update(_pictures(config, splits, model))
    return numbers


def protocol_reason(config: Config) -> str:
    """Why the run's linear evaluation is the protocol it is, in words for its log line."""
    chosen = config.train.linear_eval_protocol
    if chosen != "auto":
        return f"--linear_eval_protocol={chosen}"
    if config.linear_eval_protocol == "logistic":
        return (f"--linear_eval_protocol=auto chose logistic for {config.data.dataset} data, whose frozen "
                "features fit in memory (minutes at 60,000 images on 2 cores; --linear_eval_protocol=sgd "
                "trains a linear head with augmentation instead)")
    return (f"--linear_eval_protocol=auto chose sgd for the TFDS data set {config.data.dataset} (the "
            "ImageNet protocol, with augmentation; --linear_eval_protocol=logistic fits on frozen features "
            "in memory instead)")


def _pictures(config: Config, splits: inputs.DataSplits, model) -> dict:
    """The held-out embeddings as `embeddings.png` and in TensorBoard's projector."""
    features, labels = evaluation.extract_features(model, inputs.eval_dataset(config, splits.eval))
    png = pictures.embedding_png(
        features, labels, os.path.join(config.train.model_dir, "embeddings.png"),
        title=f"held-out embeddings ({len(labels)} images of {splits.eval_name}), first two principal "
              "components",
    )
    projector_dir = pictures.write_projector(os.path.join(config.train.model_dir, "logs"), features, labels)
    return {"embeddings_png": png, "embeddings_projector": projector_dir}


def label_subset_name(config: Config) -> str:
    """Which labelled training images supervised phases use, as `inputs.labelled_subset` picks them."""
    data = config.data
    if data.train_labels_per_class > 0:
        return f"{data.train_labels_per_class} per class"
    if data.train_label_fraction < 1.0:
        return f"fraction {data.train_label_fraction}"
    return "all"


def _logistic(config: Config, splits: inputs.DataSplits, model) -> dict:
    labelled = inputs.labelled_subset(config, splits.labelled_train)  # the sgd protocol's labels too
    # `model(images)` returns the encoder's features, whatever the encoder; eval preprocessing only.
    train_features, train_labels = evaluation.extract_features(model, inputs.eval_dataset(config, labelled))
    test_features, test_labels = evaluation.extract_features(model, inputs.eval_dataset(config, splits.eval))
    result = evaluation.logistic_regression_eval(train_features, train_labels, test_features, test_labels,
                                                 seed=config.train.seed)
    labels, subset = result["train_examples"], label_subset_name(config)
    return {
        "linear_eval_protocol": "logistic",
        "linear_eval_description": (f"{PROTOCOL_NAMES['logistic']}, fitted on {labels} labelled training "
                                    f"images ({subset} of {splits.labelled_train.num_examples})"),
        "linear_eval_train_labels": labels,
        "linear_eval_label_subset": subset,
        "linear_eval_top1": result["top1"],
        "linear_eval_top5": result["top5"],
        "linear_eval_C": result["C"],
        "linear_eval_validation_top1": result["validation_top1"],
        "linear_eval_train_examples": result["train_examples"],
        "linear_eval_split": splits.eval_name,
        "linear_eval_examples": result["test_examples"],
    }


def _sgd(config: Config, strategy, splits: inputs.DataSplits, model) -> dict:
    le_config = linear_eval_config(config, num_labelled=splits.labelled_train.num_examples)
    if is_chief(strategy):
        _start_over_if_encoder_changed(le_config.train.model_dir, model)
        save_config(le_config, le_config.train.model_dir)
    wait_for_all_workers(strategy)  # no worker resumes a linear head of another encoder
    fitted = phases.fit(le_config, strategy)
    evaluated = phases.evaluate(le_config, strategy, fitted["model"])
    numbers = {"linear_eval_protocol": "sgd",
               "linear_eval_train_seconds": fitted["summary"].get("train_seconds")}
    if "eval_top1" in evaluated:
        numbers.update(
            linear_eval_top1=evaluated["eval_top1"], linear_eval_top5=evaluated["eval_top5"],
            linear_eval_loss=evaluated["eval_loss"], linear_eval_split=evaluated["eval_split"],
            linear_eval_examples=evaluated["eval_examples"],
        )
    return numbers


def _start_over_if_encoder_changed(out_dir: str, model) -> None:
    """A linear head belongs to the encoder it was trained on: when the run's encoder changed (more
    pretraining steps), the linear head's checkpoints are removed and a new head is trained, so the
    numbers reported are always the current encoder's."""
    current = {"encoder_step": int(model.optimizer.iterations.numpy()),
               "encoder_sha256": checkpoints.weights_fingerprint(model.encoder)}
    path = os.path.join(out_dir, ENCODER_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            previous = json.load(f)
    except (OSError, ValueError):
        previous = {}
    if previous.get("encoder_sha256") != current["encoder_sha256"] and checkpoints.latest_checkpoint(out_dir):
        log.info(f"The encoder changed since the last linear evaluation (step "
                 f"{previous.get('encoder_step', '?')} -> {current['encoder_step']}): training a new "
                 "linear head.")
        stale = glob.glob(os.path.join(glob.escape(out_dir), "ckpt-*"))
        stale.append(os.path.join(out_dir, "checkpoint"))
        for stale_file in stale:
            if os.path.isfile(stale_file):
                os.remove(stale_file)
    write_json(path, current)
