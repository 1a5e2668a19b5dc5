"""Typed, validated configuration for simclr_tf.

Frozen dataclasses, one per concern. Field names follow the original SimCLR flag names where one
exists (`--temperature` -> `LossConfig.temperature` -> `nt_xent(temperature=)`), so a flag, a config
field and a keyword argument are the same word. This module imports no TensorFlow: the CLI can
validate a whole run before the (slow) TensorFlow import.

The defaults are the quickstart (`python -m simclr_tf.run` with no flags: SimCLR on the built-in
digits with a ResNet-18), and they are the CLI's defaults too: `simclr_tf.cli.run` reads them from
here, so the two cannot drift. The paper's recipes are flagfiles in `experiments/`. This module also
holds every allowed-value list (`RESNET_DEPTHS`, `OPTIMIZERS`, ...) that the modules implementing
them import.

Derived values that depend on several fields (augmentation defaults for small images, the CIFAR
stem) are resolved in one place, `Config.resolved()`, so the rest of the code sees plain values.

The module is over 450 lines: it is the one table of every setting, its default and its check
(each field documented once, here), which would lose its point split across files.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import re
from typing import Any

from simclr_tf.validation import check_one_of

# Datasets we know without asking TFDS: name -> (native image size, number of classes).
# Any other name is passed to TFDS as-is.
KNOWN_DATASETS = {
    # 8x8 scans, trained at 12 px by default (the source stores 32 px): 16 px took 1.8x the FLOPs
    # for a held-out linear evaluation within one of the 360 images (README, the quickstart).
    "digits": (12, 10),
    "synthetic": (32, 10),
    "fashion_mnist": (28, 10),  # its own size: 224 px would be 64x the pixels of the 28x28 images
    "cifar10": (32, 10),
    "cifar100": (32, 100),
    "stl10": (96, 10),
    "imagenet2012": (224, 1000),
    "imagenet2012_subset": (224, 1000),
    "imagenette": (224, 10),
}

SMALL_IMAGE_SIZE = 32  # at or below this the CIFAR recipe applies (paper, appendix B.9)
MAX_IMAGE_SIZE = 2048  # a larger square image no longer fits a training batch in memory

# Augmentation defaults of particular data sets, where the generic ones would hurt: a mirrored
# digit is another symbol, and an 8x8 scan cropped to 8% of its area keeps no digit. `AugmentConfig`
# fields left `None` take these, and otherwise the generic defaults (`GENERIC_AUGMENT`).
DATASET_AUGMENT = {"digits": {"random_flip": False, "crop_min_area": 0.2}}
GENERIC_AUGMENT = {"random_flip": True, "crop_min_area": 0.08}

# Data sets small enough for the transfer-learning linear evaluation (logistic regression on
# frozen features); the others get the ImageNet protocol (SGD on the frozen encoder).
SMALL_DATASETS = ("digits", "synthetic", "folder")

# The vocabularies: every allowed-value list of simclr_tf, defined here once. The modules that
# implement them import these names (the ResNet its depths, the heads their modes, ...).
MODES = ("train", "eval", "train_then_eval")
TRAIN_MODES = ("pretrain", "finetune", "distill")
# What teacher and student see when distilling (`TrainConfig.distill_augment`).
DISTILL_AUGMENTS = ("same", "student_crop", "student_simclr")
# How fine-tuning starts its supervised head (`TrainConfig.ft_head_init`).
FT_HEAD_INITS = ("initializer", "linear_probe")
# `--checkpoint=none`: fine-tune from random weights, on purpose (a baseline trained from scratch).
FROM_SCRATCH = "none"
RESNET_DEPTHS = (10, 18, 34, 50, 101, 152, 200)
PROJ_HEAD_MODES = ("none", "linear", "nonlinear")
OPTIMIZERS = ("lars", "momentum", "adam")
LEARNING_RATE_SCALINGS = ("linear", "sqrt", "none")
COLOR_JITTER_IMPLS = ("v1", "v2")
# The transformations a view policy (`--view_a`, `--view_b`) may name, in `simclr_tf.data.policy`.
VIEW_TRANSFORMS = ("crop", "flip", "color", "jitter", "drop", "blur", "cutout", "sobel", "noise", "rotate")
# Named view policies: `default` is SimCLR's view as the other augment fields set it (flip only with
# `random_flip`, blur only with `use_blur`); `identity` only resizes.
VIEW_POLICIES = {"default": "crop,flip,color,blur", "identity": ""}
CONTRASTIVE_LOSSES = ("nt_xent", "nt_logistic", "margin_triplet")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
# `--jit_compile`: a flag's text, or the bool a run resolved `auto` to (in its config.json).
JIT_COMPILES = ("auto", "true", "false", True, False)
LINEAR_EVAL_PROTOCOLS = ("auto", "logistic", "sgd")


class ConfigError(ValueError):
    """A configuration value or combination is invalid. The message says how to fix it."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _one_of(name: str, value: Any, allowed: tuple) -> None:
    try:
        check_one_of(name, value, allowed)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    what = "non-negative" if allow_zero else "positive"
    _check(
        isinstance(value, (int, float)) and math.isfinite(value) and ok,
        f"`{name}` must be {what}. Received: {value!r}.",
    )


def _not_empty(name: str, value: str | None, what: str) -> None:
    """A text setting is left out (`None`) or says something: an empty value has no meaning."""
    _check(
        value is None or (isinstance(value, str) and bool(value.strip())),
        f"`{name}` is empty. Pass {what}, or leave --{name} out. Received: {value!r}.",
    )


def field_docs(part: type) -> dict[str, str]:
    """Each field's description, from the `Attributes:` section of a config class's docstring.

    The docstrings below are the one place a setting is described: the command line's help of
    `--temperature` is the text of `LossConfig`'s `temperature:` entry. An entry starts with
    `name: ` at the section's indentation and continues on the lines indented deeper; its lines
    are joined with single spaces.

    Args:
        part: a config dataclass, e.g. `LossConfig`.

    Returns:
        A dict from field name to its description, in the docstring's order.
    """
    docs: dict[str, list[str]] = {}
    lines = inspect.cleandoc(part.__doc__ or "").splitlines()
    start = lines.index("Attributes:") + 1 if "Attributes:" in lines else len(lines)
    name, indent = None, None
    for line in lines[start:]:
        depth = len(line) - len(line.lstrip())
        if not line.strip() or depth == 0:  # a blank line or the next section ends the list
            break
        entry = re.match(r"(\w+): (.*)", line.strip())
        if entry and (indent is None or depth == indent):
            indent, name = depth, entry.group(1)
            docs[name] = [entry.group(2)]
        elif name is not None and depth > indent:
            docs[name].append(line.strip())
    return {field: " ".join(text) for field, text in docs.items()}


# The rules that tie fields together, each written once: `Config.validate`, `SimCLRModel` and the
# losses call these.
SEMI_HARD_LOSSES = ("nt_logistic", "margin_triplet")


def check_semi_hard_negatives(contrastive_loss: str, semi_hard_negatives: bool) -> None:
    """Semi-hard negative mining applies to `nt_logistic` and `margin_triplet` only."""
    _check(
        not semi_hard_negatives or contrastive_loss in SEMI_HARD_LOSSES,
        "`semi_hard_negatives` applies to `contrastive_loss` nt_logistic or margin_triplet (the "
        "paper's 'sh' rows; NT-Xent weighs its negatives by hardness already). Received: "
        f"contrastive_loss={contrastive_loss!r}: turn it off (--nosemi_hard_negatives, "
        "semi_hard_negatives=False) or choose one of those.",
    )


def check_memory_buffer_mode(train_mode: str, memory_buffer_size: int) -> None:
    """The memory buffer exists only while pretraining."""
    _check(
        not memory_buffer_size or train_mode == "pretrain",
        "The memory buffer is part of contrastive pretraining: `memory_buffer_size` needs "
        f"`train_mode=pretrain`. Received: train_mode={train_mode!r}, memory_buffer_size="
        f"{memory_buffer_size}. Pass --memory_buffer_size=0 (a fine-tuned or distilled "
        "model has no buffer; the pretrained weights load without it).",
    )


def chunk_divisors(per_replica_batch: int) -> list[int]:
    """The chunk sizes that split `per_replica_batch` evenly."""
    return [d for d in range(1, per_replica_batch + 1) if per_replica_batch % d == 0]


def check_chunk_size(chunk_size, train_batch_size: int | None = None, num_replicas: int = 1) -> int:
    """Checks `chunk_size` against the per-replica batch; returns the number of chunks (0: off).

    Args:
        chunk_size: int. Images per chunk; 0 turns chunking off.
        train_batch_size: int or None. The global batch (all replicas together); None checks the
            type and sign only. Defaults to None.
        num_replicas: int. Replicas in sync. Defaults to `1`.

    Returns:
        int. Chunks per step and replica, `per_replica_batch // chunk_size`; 0 when off or when
        the batch is not given.

    Raises:
        ConfigError: a `chunk_size` that is no integer, negative, larger than the per-replica batch
            or not dividing it; the message names `--chunk_size` and lists the batch's divisors.

    Example:
        ```python
        check_chunk_size(128, 1024)     # 8
        check_chunk_size(100, 1024)     # ValueError: `chunk_size` (100) does not divide ...
        ```
    """
    integer = isinstance(chunk_size, int) and not isinstance(chunk_size, bool)
    if train_batch_size is None:
        if not integer or chunk_size < 0:
            raise ConfigError(
                f"`chunk_size` must be 0 (off) or a positive number of images per chunk that divides the "
                f"per-replica batch. Received: chunk_size={chunk_size!r}. Pass e.g. --chunk_size=128.")
        return 0
    num_replicas = max(int(num_replicas), 1)
    per_replica = train_batch_size // num_replicas
    if integer and (chunk_size == 0 or (0 < chunk_size <= per_replica and per_replica % chunk_size == 0)):
        return per_replica // chunk_size if chunk_size else 0
    if not integer:
        why = "is no integer"
    elif chunk_size < 0:
        why = "is negative"
    elif chunk_size > per_replica:
        why = "is larger than the per-replica batch"
    else:
        why = "does not divide the per-replica batch"
    batch = (f"{per_replica} = train_batch_size {train_batch_size} / {num_replicas} replicas"
             if num_replicas > 1 else f"train_batch_size {train_batch_size}")
    raise ConfigError(
        f"--chunk_size ({chunk_size!r}) {why} ({batch}). Use one of its divisors "
        f"{chunk_divisors(per_replica)} (the step then runs in chunks of that many images), or 0 to "
        f"turn chunking off. Received: chunk_size={chunk_size!r}.")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where images come from.

    Attributes:
        dataset: `digits` (built in, scikit-learn's scans), `synthetic`, `folder` (see
            `image_dir`), or any TFDS name (`cifar10`, `imagenet2012`, ...).
        data_dir: TFDS data directory. Unset (`None`): TFDS' default.
        download: let TFDS download and prepare the data set if it is missing.
        image_dir: root of an image folder, read when `dataset` is `folder` (on the command
            line `--image_dir` alone implies it); class sub-folders give the labels.
        eval_image_dir: optional separate folder of evaluation images (with `dataset=folder`).
        train_split: name of the training split (TFDS syntax; `train` for the other sources).
        eval_split: name of the evaluation split (TFDS syntax; `test` for the other sources).
        image_size: side of the square model input, in pixels (at least 8). Unset (`None`):
            the data set's native size (12 for digits, 32 for CIFAR, 224 for ImageNet
            and for data sets simclr_tf does not know); for an image folder, the median shorter
            side of its images, to a multiple of 8 within 32..224 (`simclr_tf.data.defaults`).
        cache_dataset: cache decoded images in memory. Unset (`None`): when the cache (images x
            image_size^2 x 3 bytes) fits a quarter of the memory available.
        train_label_fraction: fraction of labelled training images used for supervised training
            (class-balanced, deterministic by seed). 1.0 uses all.
        train_labels_per_class: if > 0, use exactly this many labelled images per class instead
            of `train_label_fraction`; 0: the fraction decides.
        synthetic_examples: number of images of the `synthetic` data set (coloured shapes made
            on the fly).
        eval_fraction: where the data has no evaluation split (an image folder without
            `eval_image_dir`, a TFDS data set without `eval_split`), this fraction of the labelled
            images, drawn per class from the seed, is held out for evaluation and used for nothing
            else (not for pretraining either).
    """

    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = True
    image_dir: str | None = None
    eval_image_dir: str | None = None
    train_split: str = "train"
    eval_split: str = "test"
    image_size: int | None = None
    cache_dataset: bool | None = None
    train_label_fraction: float = 1.0
    train_labels_per_class: int = 0
    synthetic_examples: int = 256
    eval_fraction: float = 0.1

    def validate(self) -> None:
        _check(bool(self.dataset), "`dataset` must be a name, e.g. `digits` or `cifar10`.")
        for name in ("data_dir", "image_dir", "eval_image_dir"):
            _not_empty(name, getattr(self, name), "a directory")
        _not_empty("train_split", self.train_split, "a split name, e.g. `train`")
        _not_empty("eval_split", self.eval_split, "a split name, e.g. `test`")
        if self.dataset == "folder":
            _check(
                bool(self.image_dir),
                "`dataset=folder` needs `image_dir`: the root folder of your images, e.g. "
                "--image_dir=/data/my_images.",
            )
        if self.image_size is not None:
            _check(
                isinstance(self.image_size, int) and self.image_size >= 8,
                f"`image_size` must be an integer of at least 8 pixels. Received: {self.image_size!r}.",
            )
        _check(
            0.0 < self.train_label_fraction <= 1.0,
            f"`train_label_fraction` must be in (0, 1]. Received: {self.train_label_fraction!r}.",
        )
        _positive("train_labels_per_class", self.train_labels_per_class, allow_zero=True)
        _positive("synthetic_examples", self.synthetic_examples)
        _check(
            0.0 < self.eval_fraction < 1.0,
            f"`eval_fraction` must be in (0, 1), e.g. 0.1. Received: {self.eval_fraction!r}.",
        )
        _check(
            self.dataset == "folder" or not (self.image_dir or self.eval_image_dir),
            f"`image_dir` / `eval_image_dir` are read only with `dataset=folder`, but `dataset` is "
            f"{self.dataset!r}. Drop --dataset (an --image_dir alone means your folder) or "
            "--image_dir.",
        )

    def native_image_size(self) -> int:
        if self.dataset in KNOWN_DATASETS:
            return KNOWN_DATASETS[self.dataset][0]
        return 224


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """SimCLR's data augmentation.

    `None` means "the paper's default for this image size": strength 1.0 with blur for ImageNet-sized
    images, strength 0.5 without blur at 32 px and below (paper, appendix B.9).

    Attributes:
        color_jitter_strength: colour distortion strength s (0: none). Unset (`None`): 1.0, or 0.5 for
            images of 32 px or less.
        use_blur: apply Gaussian blur (p = 0.5 per view). Unset (`None`): on, or off for images of
            32 px or less.
        color_jitter_impl: `v2` (SimCLRv2 code, default) or `v1` (SimCLRv1 code).
        crop_min_area: smallest area fraction of the random resized crop. Unset (`None`): the
            data set's (`DATASET_AUGMENT`: 0.2 for digits), else 0.08.
        random_flip: flip views horizontally with p = 0.5. Unset (`None`): the data set's (off for
            digits, where a mirror image changes the class), else on.
        view_a: the policy of the first view: transformations in order (crop, flip, color,
            jitter, drop, blur, cutout, sobel, noise, rotate), with parameters, e.g.
            `crop,color(strength=0.5),rotate` or `noise(std=0.05)`, or a named policy: `default`
            (SimCLR's view from the other augmentation settings) or `identity` (only the resize;
            an empty value means the same). See `simclr_tf.data.policy`.
        view_b: the policy of the second view, written as `view_a`.

    These settings apply in every phase that augments: pretraining, and the crop and flip of
    fine-tuning and of the SGD linear evaluation.
    """

    color_jitter_strength: float | None = None
    use_blur: bool | None = None
    color_jitter_impl: str = "v2"
    crop_min_area: float | None = None
    random_flip: bool | None = None
    view_a: str = "default"
    view_b: str = "default"

    def for_dataset(self, dataset: str) -> AugmentConfig:
        """This config with `random_flip` / `crop_min_area` left `None` filled for `dataset`."""
        defaults = {**GENERIC_AUGMENT, **DATASET_AUGMENT.get(dataset, {})}
        return dataclasses.replace(self, **{
            name: value if getattr(self, name) is None else getattr(self, name)
            for name, value in defaults.items()
        })

    def for_image_size(self, image_size: int) -> AugmentConfig:
        """This config with every `None` filled by the paper's default for `image_size`.

        At 32 px and below (CIFAR): colour strength 0.5 and no blur; above: 1.0 and blur
        (paper, appendix B.9).
        """
        small = image_size <= SMALL_IMAGE_SIZE
        generic = {name: value if getattr(self, name) is None else getattr(self, name)
                   for name, value in GENERIC_AUGMENT.items()}
        return dataclasses.replace(
            self,
            **generic,
            color_jitter_strength=(
                self.color_jitter_strength if self.color_jitter_strength is not None
                else (0.5 if small else 1.0)
            ),
            use_blur=self.use_blur if self.use_blur is not None else not small,
        )

    def validate(self) -> None:
        if self.color_jitter_strength is not None:
            _positive("color_jitter_strength", self.color_jitter_strength, allow_zero=True)
        _one_of("color_jitter_impl", self.color_jitter_impl, COLOR_JITTER_IMPLS)
        _check(
            self.crop_min_area is None or 0.0 < self.crop_min_area <= 1.0,
            f"`crop_min_area` must be in (0, 1]. Received: {self.crop_min_area!r}.",
        )
        for name in ("view_a", "view_b"):  # names only; simclr_tf.data.policy checks parameters
            value = getattr(self, name)
            names = re.sub(r"\([^()]*\)", "", value).split(",") if isinstance(value, str) else ["?"]
            _check(
                all(n.strip() in VIEW_TRANSFORMS for n in names if n.strip())
                or (isinstance(value, str) and value.strip() in VIEW_POLICIES),
                f"`{name}` must be a named policy ({', '.join(VIEW_POLICIES)}) or transformations of "
                f"{', '.join(VIEW_TRANSFORMS)}, comma-separated, e.g. 'crop,color'. Received: {value!r}.",
            )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Encoder and heads.

    Attributes:
        resnet_depth: 10, 18, 34, 50, 101, 152 or 200 (10: one basic block per group, a small
            student for distillation; not in the original code).
        width_multiplier: channel multiplier of the ResNet (1 to 4 in the papers).
        sk_ratio: selective-kernel reduction ratio (SimCLRv2 uses 0.0625); 0 disables.
        se_ratio: squeeze-excitation ratio; 0 disables.
        cifar_stem: 3x3 stride-1 stem without max-pool. `None`: on for images of 32 px or less.
        batch_norm_decay: batch-norm moving-average momentum.
        global_bn: synchronise batch-norm statistics across replicas.
        proj_head_mode: `none`, `linear` or `nonlinear`.
        proj_out_dim: output size of the projection head.
        num_proj_layers: layers of the projection head (2 in SimCLRv1, 3 in SimCLRv2).
        ft_proj_selector: projection-head layer that fine-tuning starts from (0 = encoder output).
        zero_init_logits_layer: zero-initialise the supervised head.
        num_classes: classes of the supervised head; `None` takes it from the data.
    """

    resnet_depth: int = 18
    width_multiplier: int = 1
    sk_ratio: float = 0.0
    se_ratio: float = 0.0
    cifar_stem: bool | None = None
    batch_norm_decay: float = 0.9
    global_bn: bool = True
    proj_head_mode: str = "nonlinear"
    proj_out_dim: int = 128
    num_proj_layers: int = 2
    ft_proj_selector: int = 0
    zero_init_logits_layer: bool = False
    num_classes: int | None = None

    def validate(self) -> None:
        _one_of("resnet_depth", self.resnet_depth, RESNET_DEPTHS)
        _check(
            isinstance(self.width_multiplier, int) and 1 <= self.width_multiplier <= 8,
            f"`width_multiplier` must be an integer from 1 to 8. Received: {self.width_multiplier!r}.",
        )
        _check(0.0 <= self.sk_ratio < 1.0, f"`sk_ratio` must be in [0, 1). Received: {self.sk_ratio!r}.")
        _check(0.0 <= self.se_ratio < 1.0, f"`se_ratio` must be in [0, 1). Received: {self.se_ratio!r}.")
        _check(
            0.0 < self.batch_norm_decay < 1.0,
            f"`batch_norm_decay` must be in (0, 1). Received: {self.batch_norm_decay!r}.",
        )
        _one_of("proj_head_mode", self.proj_head_mode, PROJ_HEAD_MODES)
        _positive("proj_out_dim", self.proj_out_dim)
        _positive("num_proj_layers", self.num_proj_layers)
        _check(
            0 <= self.ft_proj_selector <= self.num_proj_layers,
            f"`ft_proj_selector` must be in [0, num_proj_layers={self.num_proj_layers}]. "
            f"Received: {self.ft_proj_selector!r}.",
        )
        if self.num_classes is not None:
            _positive("num_classes", self.num_classes)


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The contrastive loss.

    Attributes:
        temperature: softmax temperature tau (0.1 for ImageNet, 0.5 for CIFAR-10).
        hidden_norm: L2-normalise the projections before the dot products (cosine similarity).
        contrastive_loss: `nt_xent` (SimCLR's), `nt_logistic` or `margin_triplet` (the paper's
            Table 2; `simclr_tf.losses`).
        margin: the margin of `margin_triplet`, in units of the similarity.
        semi_hard_negatives: score each query against its semi-hard negative only (the most
            similar negative less similar than the positive; the paper's "sh" rows of Table 2), for
            `nt_logistic` and `margin_triplet`.
        memory_buffer_size: keys in SimCLRv2's memory buffer (after MoCo): projections of past
            batches by a momentum copy of encoder and projection head, extra negatives of NT-Xent
            while pretraining. 0 (the default) turns it off. Any size works (the queue wraps
            around); a step adds `2 * train_batch_size` keys, and one more forward pass (1.4x the
            quickstart's step time). `simclr_tf.models.memory`.
        memory_momentum: rate m of the momentum network's moving average of the online weights
            (`w <- m * w + (1 - m) * online` after each step); MoCo and SimCLRv2 use 0.999.
    """

    temperature: float = 0.5
    hidden_norm: bool = True
    contrastive_loss: str = "nt_xent"
    margin: float = 0.5
    semi_hard_negatives: bool = False
    memory_buffer_size: int = 0
    memory_momentum: float = 0.999

    def validate(self) -> None:
        _check(
            isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
            and self.temperature > 0,
            f"`temperature` must be a positive number (the paper uses 0.1 on ImageNet, 0.5 on "
            f"CIFAR-10). Received: {self.temperature!r}.",
        )
        _one_of("contrastive_loss", self.contrastive_loss, CONTRASTIVE_LOSSES)
        _positive("margin", self.margin, allow_zero=True)
        check_semi_hard_negatives(self.contrastive_loss, self.semi_hard_negatives)
        _check(
            isinstance(self.memory_buffer_size, int) and not isinstance(self.memory_buffer_size, bool)
            and self.memory_buffer_size >= 0,
            "`memory_buffer_size` must be a non-negative integer (keys in the queue; 0 turns the memory "
            f"buffer off). Received: {self.memory_buffer_size!r}.",
        )
        _check(
            isinstance(self.memory_momentum, (int, float)) and 0.0 <= self.memory_momentum < 1.0,
            f"`memory_momentum` must be in [0, 1) (MoCo and SimCLRv2 use 0.999). Received: "
            f"{self.memory_momentum!r}.",
        )
        _check(
            not self.memory_buffer_size or self.contrastive_loss == "nt_xent",
            "The memory buffer adds negatives to NT-Xent: `memory_buffer_size` needs "
            f"`contrastive_loss=nt_xent`. Received: contrastive_loss={self.contrastive_loss!r}, "
            f"memory_buffer_size={self.memory_buffer_size}. Pass --memory_buffer_size=0 or "
            "--contrastive_loss=nt_xent.",
        )


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer and learning-rate schedule.

    Attributes:
        optimizer: `lars`, `momentum` (Nesterov) or `adam`.
        learning_rate: base learning rate, scaled by `learning_rate_scaling`.
        learning_rate_scaling: `linear` (lr * B / 256), `sqrt` (lr * sqrt(B)) or `none`.
        warmup_epochs: linear warm-up length in epochs (0: none, training starts at the peak
            rate); at most the length of the run.
        momentum: momentum of LARS / SGD.
        weight_decay: L2 weight decay lambda.
        lars_eta: LARS trust coefficient.
    """

    optimizer: str = "lars"
    learning_rate: float = 1.0
    learning_rate_scaling: str = "linear"
    warmup_epochs: float = 2.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lars_eta: float = 0.001

    def validate(self) -> None:
        _one_of("optimizer", self.optimizer, OPTIMIZERS)
        _one_of("learning_rate_scaling", self.learning_rate_scaling, LEARNING_RATE_SCALINGS)
        _positive("learning_rate", self.learning_rate)
        _positive("warmup_epochs", self.warmup_epochs, allow_zero=True)
        _check(0.0 <= self.momentum < 1.0, f"`momentum` must be in [0, 1). Received: {self.momentum!r}.")
        _positive("weight_decay", self.weight_decay, allow_zero=True)
        _positive("lars_eta", self.lars_eta)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What to run and for how long.

    Attributes:
        mode: `train`, `eval` or `train_then_eval`.
        train_mode: `pretrain` (contrastive), `finetune` (supervised from a checkpoint) or
            `distill` (a student learns the predictions of `teacher` on unlabelled images).
        lineareval_while_pretraining: train a linear head on stop-gradient features while
            pretraining (needs labels).
        fine_tune_after_block: -1 fine-tunes everything; 0 freezes the stem; k freezes up to
            block group k; 4 is linear evaluation (only the head trains).
        train_batch_size: global training batch size (all replicas together).
        eval_batch_size: global evaluation batch size.
        train_epochs: length of training in epochs (passes over the training images);
            `train_steps` wins when above 0.
        train_steps: length of training in steps; 0: `train_epochs` sets it.
        eval_steps: evaluation batches; 0 evaluates the whole split.
        checkpoint_epochs: checkpoint every this many epochs; `checkpoint_steps` wins when above
            0. With both 0, training checkpoints only at its end (and every
            `checkpoint_minutes`).
        checkpoint_steps: checkpoint every this many steps; 0: `checkpoint_epochs` sets the
            period.
        checkpoint_minutes: also a checkpoint when this many minutes passed since the last one
            (0 disables), so that a run with long epochs loses at most that much to a crash or a
            preemption without notice. Off with several workers (they would have to agree when).
        max_train_minutes: a time budget: training stops when it has run this many minutes in this
            process (0: no limit), saves a checkpoint at that step, and the run goes on to its
            evaluation, linear evaluation and export of that step; result.json says
            `"stopped_by": "time_budget"` and `train_steps_done`. Rerunning the same model_dir
            resumes there and trains again up to the budget or to the end. Off with several
            workers (they would have to agree when).
        train_minutes: a time budget that plans (0: off): a fresh run times a few steps of its
            model after the first (the trace) and sets `train_steps` to the steps that fit this many
            minutes, so its warm-up and cosine decay end with the budget; config.json records those
            steps and a resumed run keeps them. Replaces `train_epochs` and `train_steps`.
        keep_checkpoint_max: checkpoints kept.
        keep_hub_module_max: exported SavedModels kept (0 keeps all).
        model_dir: where checkpoints, logs, results and exports go.
        checkpoint: checkpoint (prefix or run directory) to initialise from (fine-tuning /
            evaluation). `none` says "from random weights" on purpose: `train_mode=finetune`
            needs a checkpoint or that (a supervised baseline trained from scratch on the labels
            only).
        seed: seed for weights, augmentations and data order (a non-negative integer).
        jit_compile: compile the train step with XLA: `auto` (on for GPU and TPU strategies, off
            on CPUs, where XLA was slower; a run stores what it chose in config.json), `true` or
            `false`.
        precision: `auto` (`mixed_bfloat16` on a TPU, a GPU of compute capability 8.0 or later,
            or a CPU with AVX512_BF16 or AMX; `mixed_float16` with loss scaling on older GPUs;
            else `float32`; see `simclr_tf.precision`; a run stores what it chose in
            config.json), `float32`, `mixed_bfloat16` or `mixed_float16`.
        steps_per_execution: train steps run per call into TensorFlow.
        knn_every_epochs: run the kNN monitor every this many epochs (0 disables).
        linear_eval_epochs: after pretraining, train a linear head on the frozen encoder for
            this many epochs (the paper's linear evaluation; 0 disables).
        linear_eval_learning_rate: base learning rate of that linear evaluation (Nesterov
            momentum, linear scaling, no weight decay).
        linear_eval_protocol: `logistic`: the paper's transfer protocol (appendix B.8), an
            L2-regularised logistic regression on frozen features of un-augmented images, the
            regularisation chosen on a validation part of the training images; `sgd`: the ImageNet
            protocol, a linear head trained by SGD on the frozen encoder with crop and flip;
            `auto`: `logistic` for small data sets (digits, synthetic, folders), else `sgd`.
        linear_eval_batch_size: batch size of the `sgd` linear evaluation (capped at the
            labelled images), independent of the pretraining batch.
        deterministic: make TensorFlow ops deterministic, so that a run (also a resumed one)
            gives bit-identical weights for a seed (costs some speed).
        teacher: with `train_mode=distill`, the frozen teacher: a simclr_tf run directory or
            checkpoint (with a supervised head), or an original SimCLR SavedModel / checkpoint.
        distill_temperature: temperature tau of the teacher's and student's softmax in the
            distillation loss (SimCLRv2, eq. 2: 1.0 big-to-small, 0.1 self-distillation).
        distill_alpha: weight of the cross-entropy on labelled images added to the distillation
            loss (0: the teacher's predictions alone, as in the paper).
        distill_augment: what the images of a distillation step are. `same` (the paper's): teacher
            and student see one crop-and-flip view (as fine-tuning's); `student_crop`: the student
            sees that view, the teacher the un-augmented (evaluation) image; `student_simclr`: the
            student sees a pretraining view (`augment`'s `view_a`: crop, colour, ...), the teacher
            the un-augmented image (Noisy-Student style; not in the original code).
        ft_head_init: how fine-tuning from a checkpoint starts the supervised head. `initializer`
            (the original's): its initializer (random, or zero with `zero_init_logits_layer`);
            `linear_probe`: a logistic regression fitted on the frozen features of the labelled
            images first (LP-FT; not in the original code; `simclr_tf.training.head_init`).
        chunk_size: 0 (off) or M: run each step's encoder and heads on chunks of M images of the
            per-replica batch (both views of an image in one chunk) and the contrastive loss on the
            whole batch, with cached embedding gradients (gradient caching; one more forward pass,
            memory of one chunk's activations): exactly the step of batch / M replicas without
            global batch norm, one optimizer step per batch (`simclr_tf.models.chunking`). M must
            divide the per-replica batch.
    """

    mode: str = "train_then_eval"
    train_mode: str = "pretrain"
    lineareval_while_pretraining: bool = True
    fine_tune_after_block: int = -1
    train_batch_size: int = 128
    eval_batch_size: int = 256
    train_epochs: int = 20
    train_steps: int = 0
    eval_steps: int = 0
    checkpoint_epochs: int = 1
    checkpoint_steps: int = 0
    checkpoint_minutes: float = 30.0
    max_train_minutes: float = 0.0
    train_minutes: float = 0.0
    keep_checkpoint_max: int = 5
    keep_hub_module_max: int = 1
    model_dir: str = "runs/digits_quickstart"
    checkpoint: str | None = None
    seed: int = 0
    jit_compile: str | bool = "auto"
    precision: str = "auto"
    steps_per_execution: int = 1
    knn_every_epochs: int = 0
    linear_eval_epochs: int = 30
    linear_eval_learning_rate: float = 0.1
    linear_eval_protocol: str = "auto"
    linear_eval_batch_size: int = 256
    deterministic: bool = False
    teacher: str | None = None
    distill_temperature: float = 1.0
    distill_alpha: float = 0.0
    distill_augment: str = "same"
    ft_head_init: str = "initializer"
    chunk_size: int = 0

    @property
    def init_checkpoint(self) -> str | None:
        """The checkpoint to initialise from; None without one or with `checkpoint=none`."""
        if not self.checkpoint or self.checkpoint == FROM_SCRATCH:
            return None
        return self.checkpoint

    def validate(self) -> None:
        _one_of("mode", self.mode, MODES)
        _one_of("train_mode", self.train_mode, TRAIN_MODES)
        _not_empty("checkpoint", self.checkpoint, "a checkpoint, a run directory or `none`")
        _not_empty("teacher", self.teacher, "a run directory, checkpoint or SavedModel")
        _check(
            isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed >= 0,
            f"`seed` must be a non-negative integer, e.g. 0. Received: {self.seed!r}.",
        )
        if self.train_mode == "distill":
            _check(bool(self.teacher),
                   "`train_mode=distill` needs a teacher: --teacher=<a simclr_tf run directory or "
                   "checkpoint with a supervised head, or an original SimCLR SavedModel or checkpoint>. "
                   f"Received: teacher={self.teacher!r}.")
        else:
            _check(not self.teacher,
                   f"`teacher` is read only with `train_mode=distill`, but train_mode is "
                   f"{self.train_mode!r}. Add --train_mode=distill or drop --teacher.")
        _positive("distill_temperature", self.distill_temperature)
        _positive("distill_alpha", self.distill_alpha, allow_zero=True)
        _one_of("distill_augment", self.distill_augment, DISTILL_AUGMENTS)
        _check(self.train_mode == "distill" or self.distill_augment == "same",
               f"`distill_augment` is read only with `train_mode=distill`, but train_mode is "
               f"{self.train_mode!r}. Add --train_mode=distill or drop --distill_augment.")
        _one_of("ft_head_init", self.ft_head_init, FT_HEAD_INITS)
        _check(self.train_mode == "finetune" or self.ft_head_init == "initializer",
               f"`ft_head_init` is read only with `train_mode=finetune`, but train_mode is "
               f"{self.train_mode!r}. Add --train_mode=finetune or drop --ft_head_init.")
        _check(
            -1 <= self.fine_tune_after_block <= 4,
            f"`fine_tune_after_block` must be in [-1, 4]. Received: {self.fine_tune_after_block!r}.",
        )
        for name in ("train_batch_size", "eval_batch_size", "keep_checkpoint_max", "steps_per_execution"):
            value = getattr(self, name)
            _check(
                isinstance(value, int) and value > 0,
                f"`{name}` must be a positive integer. Received: {value!r}.",
            )
        for name in ("train_epochs", "train_steps", "eval_steps", "checkpoint_epochs",
                     "checkpoint_steps", "keep_hub_module_max", "knn_every_epochs", "linear_eval_epochs"):
            value = getattr(self, name)
            _check(
                isinstance(value, int) and value >= 0,
                f"`{name}` must be a non-negative integer. Received: {value!r}.",
            )
        _check(
            self.train_epochs > 0 or self.train_steps > 0 or self.mode == "eval",
            "Training needs `train_epochs > 0` or `train_steps > 0`.",
        )
        _check(bool(self.model_dir), "`model_dir` must be a directory path.")
        _check(
            isinstance(self.checkpoint_minutes, (int, float)) and math.isfinite(self.checkpoint_minutes)
            and self.checkpoint_minutes >= 0,
            "`checkpoint_minutes` must be a non-negative number of minutes (0 disables the timed "
            f"checkpoints). Received: {self.checkpoint_minutes!r}.",
        )
        _check(
            isinstance(self.max_train_minutes, (int, float)) and math.isfinite(self.max_train_minutes)
            and self.max_train_minutes >= 0,
            "`max_train_minutes` must be a non-negative number of minutes (0: no time budget). "
            f"Received: {self.max_train_minutes!r}.",
        )
        _check(
            isinstance(self.train_minutes, (int, float)) and math.isfinite(self.train_minutes)
            and self.train_minutes >= 0,
            "`train_minutes` must be a non-negative number of minutes (0: the run's length comes from "
            f"--train_epochs or --train_steps). Received: {self.train_minutes!r}.",
        )
        _check(not self.train_minutes or self.train_mode != "distill",
               "`train_minutes` plans pretraining and fine-tuning; a distillation's length comes from "
               f"--train_epochs or --train_steps. Received: train_minutes={self.train_minutes}. Pass "
               "--train_minutes=0 (--max_train_minutes stops any run at a time budget).")
        _positive("linear_eval_learning_rate", self.linear_eval_learning_rate)
        _check(
            self.train_steps == 0 or self.steps_per_execution <= self.train_steps,
            f"`steps_per_execution` ({self.steps_per_execution}) is more than the run's `train_steps` "
            f"({self.train_steps}): Keras would run {self.steps_per_execution} steps. Use at most "
            f"{self.train_steps}.",
        )
        _one_of("precision", self.precision, PRECISIONS)
        _one_of("jit_compile", self.jit_compile, JIT_COMPILES)
        _one_of("linear_eval_protocol", self.linear_eval_protocol, LINEAR_EVAL_PROTOCOLS)
        # The replicas are known when the strategy is: `build_model` checks the per-replica batch.
        check_chunk_size(self.chunk_size, self.train_batch_size)
        _check(not self.chunk_size or self.train_mode != "distill",
               "`chunk_size` applies to pretraining and fine-tuning; distillation's step does not run "
               f"in chunks. Received: train_mode='distill', chunk_size={self.chunk_size}. Pass "
               "--chunk_size=0.")
        _check(
            isinstance(self.linear_eval_batch_size, int) and self.linear_eval_batch_size > 0,
            "`linear_eval_batch_size` must be a positive integer. Received: "
            f"{self.linear_eval_batch_size!r}.",
        )


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """Devices and distribution.

    Attributes:
        strategy: `default`, `mirrored`, `multi_worker` or `tpu`.
        devices: devices for `strategy=mirrored` (e.g. `/gpu:0,/gpu:1`); empty uses all GPUs.
        tpu_name: the TPU's name or gRPC address for the cluster resolver, `local` on a TPU VM.
            Unset (`None`): the resolver's default.
        tpu_zone: the TPU's Google Cloud zone. Unset (`None`): the resolver's default.
        gcp_project: the Google Cloud project of the TPU. Unset (`None`): the resolver's default.
    """

    strategy: str = "default"
    devices: tuple[str, ...] = ()
    tpu_name: str | None = None
    tpu_zone: str | None = None
    gcp_project: str | None = None

    def validate(self) -> None:
        _one_of("strategy", self.strategy, STRATEGIES)
        for name in ("tpu_name", "tpu_zone", "gcp_project"):
            _not_empty(name, getattr(self, name), "a value")


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole run."""

    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    train: TrainConfig = TrainConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    def validate(self) -> Config:
        """Checks every field and the combinations; returns self so calls can chain."""
        for part in (self.data, self.augment, self.model, self.loss, self.optimizer, self.train,
                     self.runtime):
            part.validate()
        check_memory_buffer_mode(self.train.train_mode, self.loss.memory_buffer_size)
        if self.train.fine_tune_after_block >= 0:
            _check(
                self.train.train_mode == "finetune",
                "`fine_tune_after_block` only applies with `train_mode=finetune`. "
                f"Received train_mode={self.train.train_mode!r}.",
            )
        _check(
            self.model.ft_proj_selector <= {"none": 0, "linear": 1}.get(self.model.proj_head_mode,
                                                                       self.model.num_proj_layers),
            f"`ft_proj_selector` ({self.model.ft_proj_selector}) points past the projection head: "
            f"`proj_head_mode={self.model.proj_head_mode}` has "
            f"{ {'none': 0, 'linear': 1}.get(self.model.proj_head_mode, self.model.num_proj_layers)} "
            "layer(s). Use a smaller --ft_proj_selector (0 is the encoder output).",
        )
        _check(
            self.train.train_steps > 0 or self.train.mode == "eval"
            or self.optimizer.warmup_epochs <= self.train.train_epochs,
            f"`warmup_epochs` ({self.optimizer.warmup_epochs}) is longer than the run "
            f"(`train_epochs`={self.train.train_epochs}): the learning rate would never reach its peak. "
            "Use fewer warm-up epochs or more training epochs.",
        )
        # The same rule for a run given in steps. A warm-up epoch is at least one step (a batch
        # larger than the training images shrinks to them), so `round(warmup_epochs)` steps is the
        # shortest the warm-up can be; its exact length needs the data set's size.
        _check(
            self.train.train_steps == 0 or self.train.mode == "eval"
            or round(self.optimizer.warmup_epochs) <= self.train.train_steps,
            f"`warmup_epochs` ({self.optimizer.warmup_epochs}) is longer than the run "
            f"(`train_steps`={self.train.train_steps}): an epoch is at least one step, so the warm-up "
            f"takes at least {round(self.optimizer.warmup_epochs)} steps and the learning rate would "
            "never reach its peak. Use fewer warm-up epochs (--warmup_epochs) or more training steps.",
        )
        image_size = self.image_size
        _check(
            image_size <= MAX_IMAGE_SIZE,
            f"`image_size` ({image_size}) is larger than {MAX_IMAGE_SIZE} px, more than a training step "
            "can hold in memory. SimCLR trains at 224 px (ImageNet) or 32 px (CIFAR): pass a smaller "
            "--image_size.",
        )
        min_size = 8 if self.uses_cifar_stem else 32
        _check(
            image_size >= min_size,
            f"`image_size` ({image_size}) is too small for the "
            f"{'CIFAR' if self.uses_cifar_stem else 'ImageNet'} stem of the ResNet, which needs at "
            f"least {min_size} px. Use a larger --image_size"
            + ("" if self.uses_cifar_stem else " or --cifar_stem") + ".",
        )
        return self

    @property
    def image_size(self) -> int:
        # Only `None` means "the data set's size": an explicit 0 is refused by `validate`.
        if self.data.image_size is None:
            return self.data.native_image_size()
        return self.data.image_size

    @property
    def linear_eval_protocol(self) -> str:
        """`logistic` or `sgd`: the linear evaluation this run gets (`auto` decided)."""
        protocol = self.train.linear_eval_protocol
        if protocol == "auto":
            return "logistic" if self.data.dataset in SMALL_DATASETS else "sgd"
        return protocol

    @property
    def uses_cifar_stem(self) -> bool:
        if self.model.cifar_stem is not None:
            return self.model.cifar_stem
        return self.image_size <= SMALL_IMAGE_SIZE

    def resolved(self) -> Config:
        """Fills every `None` that means "the default for this data" with a concrete value."""
        augment = self.augment.for_dataset(self.data.dataset).for_image_size(self.image_size)
        model = dataclasses.replace(self.model, cifar_stem=self.uses_cifar_stem)
        data = dataclasses.replace(self.data, image_size=self.image_size)
        return dataclasses.replace(self, data=data, augment=augment, model=model)

    # --- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Config:
        parts = {}
        for field in dataclasses.fields(cls):
            part_cls = field.type if isinstance(field.type, type) else _PARTS[field.name]
            raw = dict(values.get(field.name, {}))
            known = {f.name for f in dataclasses.fields(part_cls)}
            unknown = set(raw) - known
            _check(not unknown, f"Unknown `{field.name}` config keys: {sorted(unknown)}.")
            if "devices" in raw:
                raw["devices"] = tuple(raw["devices"])
            parts[field.name] = part_cls(**raw)
        return cls(**parts)


_PARTS = {
    "data": DataConfig,
    "augment": AugmentConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "optimizer": OptimizerConfig,
    "train": TrainConfig,
    "runtime": RuntimeConfig,
}


def save_config(config: Config, directory: str, filename: str = "config.json") -> str:
    """Writes the config as JSON, atomically; returns the path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, filename)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(config.to_dict(), f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
    return path


def load_config(path: str, filename: str = "config.json") -> Config:
    """Reads a config written by `save_config`, from its file or from the run's directory."""
    if os.path.isdir(path):
        path = os.path.join(path, filename)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"No config at {path!r}. Pass the model_dir of a simclr_tf run (it holds {filename})."
        )
    with open(path, encoding="utf-8") as f:
        return Config.from_dict(json.load(f))
