"""Copying an original checkpoint's weights into a simclr_tf `SimCLRModel`, piece by piece.

Every value is read (and its shape checked) before the first one is assigned, so a damaged file
or a model of another architecture leaves the model untouched.
"""

from __future__ import annotations

import numpy as np

from simclr_tf.config import Config, DataConfig, LossConfig, ModelConfig, TrainConfig
from simclr_tf.convert.architecture import OriginalArchitecture, Piece
from simclr_tf.convert.reader import ConversionError, OriginalCheckpoint

_WEIGHTS = {
    "conv": ("kernel", "bias"),
    "dense": ("kernel", "bias"),
    "batch_norm": ("gamma", "beta", "moving_mean", "moving_variance"),
}


def _layer(model, target: tuple):
    part = getattr(model, target[0], None)
    if part is None:
        return None
    if target[0] == "encoder":
        try:
            layer = part.get_layer(target[1])
        except ValueError:
            return None
        return getattr(layer, target[2], None) if len(target) > 2 else layer
    return getattr(part, target[1], None)


def planned_assignments(model, pieces: list[Piece], *, parts=("encoder", "projection_head",
                                                              "supervised_head")):
    """`[(our variable, original variable Node, value)]` for the pieces in `parts`.

    Raises:
        ConversionError: if a layer is missing in `model` or a shape differs.
    """
    plan = []
    for piece in pieces:
        if piece.target[0] not in parts:
            continue
        layer = _layer(model, piece.target)
        if layer is None:
            raise ConversionError(f"The model has no layer {'/'.join(piece.target)} for "
                                  f"{piece.node.path}: it was built for another architecture.")
        for name in _WEIGHTS[piece.kind]:
            source = piece.node.child(name)
            variable = getattr(layer, name, None)
            if source is None or not source.is_variable:
                if variable is not None:
                    raise ConversionError(f"{piece.node.path} has no `{name}`, which "
                                          f"{'/'.join(piece.target)} has.")
                continue
            if variable is None:
                raise ConversionError(f"{piece.node.path}/{name} has no place in "
                                      f"{'/'.join(piece.target)} (built without `{name}`).")
            value = source.value()
            if tuple(value.shape) != tuple(variable.shape):
                raise ConversionError(
                    f"{piece.node.path}/{name} has shape {tuple(value.shape)}, but "
                    f"{'/'.join(piece.target)}.{name} has {tuple(variable.shape)}: the model was built "
                    "for another architecture."
                )
            plan.append((variable, source, value))
    return plan


def assign(plan) -> int:
    """Assigns the planned values; returns how many numbers were copied."""
    count = 0
    for variable, _, value in plan:
        variable.assign(value.astype(np.dtype(variable.dtype)))
        count += int(value.size)
    return count


def assign_momentum(ckpt: OriginalCheckpoint, optimizer, plan) -> int:
    """Copies the original LARS momentum of each variable into `optimizer`'s; returns how many."""
    momentums = getattr(optimizer, "_momentums", None)
    if not momentums:
        return 0
    copied = 0
    for variable, source, _ in plan:
        value = ckpt.slot(source, "Momentum")
        if value is None or not variable.trainable:
            continue
        slot = momentums[optimizer._get_variable_index(variable)]
        if tuple(slot.shape) == tuple(value.shape):
            slot.assign(value)
            copied += 1
    return copied


def config_for(arch: OriginalArchitecture, model_dir: str, *, dataset: str | None = None,
               image_size: int | None = None) -> Config:
    """A simclr_tf `Config` for the converted run: the architecture, and the original's recipe.

    The data set is not in the file: ImageNet (224 px, temperature 0.1) for an ImageNet stem or
    1000 classes, CIFAR-10/100 (32 px, temperature 0.5) for a CIFAR stem with 10/100 classes.
    """
    if dataset is None:
        dataset = {10: "cifar10", 100: "cifar100"}.get(arch.num_classes) if arch.cifar_stem else None
        dataset = dataset or ("cifar10" if arch.cifar_stem else "imagenet2012")
    size = image_size or (32 if arch.cifar_stem else 224)
    model = ModelConfig(
        resnet_depth=arch.resnet_depth, width_multiplier=arch.width_multiplier,
        sk_ratio=arch.sk_ratio, se_ratio=arch.se_ratio, cifar_stem=arch.cifar_stem,
        proj_head_mode=arch.proj_head_mode, proj_out_dim=arch.proj_out_dim,
        num_proj_layers=arch.num_proj_layers, ft_proj_selector=arch.ft_proj_selector,
        num_classes=arch.num_classes or None,
    )
    train = TrainConfig(
        model_dir=model_dir,
        # A head on a projection layer is a fine-tuned model; our pretraining mode reads the
        # encoder output.
        train_mode="finetune" if arch.ft_proj_selector else "pretrain",
        lineareval_while_pretraining=bool(arch.num_classes),
    )
    return Config(
        data=DataConfig(dataset=dataset, image_size=size),
        model=model,
        loss=LossConfig(temperature=0.5 if arch.cifar_stem else 0.1),
        train=train,
    ).resolved()


def check_fits(model, plan, parts, wanted: dict, source: str, problem: str | None = None) -> None:
    """Raises a `ConversionError` naming the flags to pass if `model` is another network.

    The model fits when the planned values fill every weight of its `parts`: a deeper ResNet or a
    longer head than the file's would otherwise keep weights the file has no value for.

    Args:
        model: SimCLRModel. The model the file is read into.
        plan: list. `planned_assignments(model, ...)`; None when planning failed (`problem`).
        parts: sequence of str. The model's parts that the file must fill (`encoder`, ...).
        wanted: dict. `OriginalArchitecture.model_fields()` of the file (or some of them).
        source: str. The file, for the message.
        problem: str or None. Why planning failed, for the message.
    """
    if problem is None:
        filled = {id(variable) for variable, _, _ in plan or ()}
        left = [v.path for part in parts for v in getattr(model, part).weights if id(v) not in filled]
        if not left:
            return
        problem = f"the file has no value for {len(left)} of the model's weights, e.g. {left[0]}"
    flags = " ".join(f"--{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in wanted.items())
    raise ConversionError(f"{source} holds another network than the run's flags describe ({problem}). "
                          f"Pass its architecture: {flags}")
