"""Config -> model: the one builder of a `SimCLRModel` from a typed `Config`.

The training wiring, the export CLI, the benchmark and the converter all build models here, so a
config describes the same network wherever it is used.
"""

from __future__ import annotations

import tensorflow as tf

from simclr_tf.config import Config, check_chunk_size
from simclr_tf.models.heads import ProjectionHead, SupervisedHead
from simclr_tf.models.resnet import build_resnet
from simclr_tf.models.simclr import HEAD_DTYPE, SimCLRModel


def build_model(config: Config, num_classes: int, *, encoder=None, fused_batch_norm: bool = True,
                image_size: int | None = None, build: bool = True) -> SimCLRModel:
    """The built `SimCLRModel` a config describes (call inside the strategy's scope).

    The ResNet's shape and the heads come from `config.model`, the loss from `config.loss`, the
    weight decay of the loss term from `config.optimizer`, the mode from `config.train`.

    Args:
        config: Config. Resolved (`config.resolved()`), so the CIFAR stem is decided.
        num_classes: int. Classes of the supervised head; 0 for none.
        encoder: Keras model/layer or None. Replaces our ResNet (the `model` section's ResNet
            fields are then unused).
        fused_batch_norm: bool. TensorFlow's fused kernel for the ResNet's batch norm (True) or
            Keras' composite layer (False, an experiment of the benchmark). Defaults to True.
        image_size: int or None. Side of the images the model is built for; defaults to the
            config's.
        build: bool. Create every variable now; False leaves that to the first batch (plain
            `fit`). Defaults to True.

    Returns:
        A `SimCLRModel`, with every variable created if `build`.

    Example:
        ```python
        config = Config(model=ModelConfig(resnet_depth=50)).resolved()
        model = build_model(config, num_classes=10)
        ```
    """
    m = config.model
    # The per-replica batch is known now, inside the strategy's scope.
    check_chunk_size(config.train.chunk_size, config.train.train_batch_size,
                     tf.distribute.get_strategy().num_replicas_in_sync)
    if encoder is None:
        encoder = build_resnet(
            m.resnet_depth, m.width_multiplier, cifar_stem=bool(m.cifar_stem), sk_ratio=m.sk_ratio,
            se_ratio=m.se_ratio, batch_norm_decay=m.batch_norm_decay, global_bn=m.global_bn,
            fused_batch_norm=fused_batch_norm, name="resnet",
        )
    projection_head = ProjectionHead(
        m.proj_head_mode, m.proj_out_dim, m.num_proj_layers, batch_norm_decay=m.batch_norm_decay,
        global_bn=m.global_bn, name="projection_head", dtype=HEAD_DTYPE,
    )
    supervised_head = SupervisedHead(
        num_classes, zero_init=m.zero_init_logits_layer, name="head_supervised", dtype=HEAD_DTYPE,
    ) if num_classes else None
    model = SimCLRModel(
        encoder,
        projection_head,
        supervised_head,
        loss_config=config.loss,
        # A distilled student is a fine-tuned network (its head reads the `ft_proj_selector` layer).
        train_mode="finetune" if config.train.train_mode == "distill" else config.train.train_mode,
        lineareval_while_pretraining=config.train.lineareval_while_pretraining,
        ft_proj_selector=m.ft_proj_selector,
        fine_tune_after_block=config.train.fine_tune_after_block,
        weight_decay=config.optimizer.weight_decay,
        chunk_size=config.train.chunk_size,
        name="simclr",
    )
    if build:
        size = image_size or config.image_size
        model.build((None, size, size, 3))
    return model
