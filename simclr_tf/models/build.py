"""Config -> model: the one builder of a `SimCLRModel` from a typed `Config`.

The training wiring, the export CLI, the benchmark and the converter all build models here, so a
config describes the same network wherever it is used.
"""

from __future__ import annotations

from simclr_tf.config import Config
from simclr_tf.models.simclr import SimCLRModel


def build_model(config: Config, num_classes: int, *, encoder=None, fused_batch_norm: bool = True,
                image_size: int | None = None) -> SimCLRModel:
    """The built `SimCLRModel` a config describes (call inside the strategy's scope).

    Args:
        config: Config. Resolved (`config.resolved()`), so the CIFAR stem is decided.
        num_classes: int. Classes of the supervised head; 0 for none.
        encoder: Keras model/layer or None. Replaces our ResNet (the `model` section's ResNet
            fields are then unused).
        fused_batch_norm: bool. TensorFlow's fused kernel for the ResNet's batch norm (True) or
            Keras' composite layer (False, an experiment of the benchmark). Defaults to True.
        image_size: int or None. Side of the images the model is built for; defaults to the
            config's.

    Returns:
        A `SimCLRModel` with every variable created.
    """
    m = config.model
    model = SimCLRModel(
        encoder=encoder,
        resnet_depth=m.resnet_depth,
        width_multiplier=m.width_multiplier,
        cifar_stem=bool(m.cifar_stem),
        sk_ratio=m.sk_ratio,
        se_ratio=m.se_ratio,
        batch_norm_decay=m.batch_norm_decay,
        global_bn=m.global_bn,
        fused_batch_norm=fused_batch_norm,
        proj_head_mode=m.proj_head_mode,
        proj_out_dim=m.proj_out_dim,
        num_proj_layers=m.num_proj_layers,
        ft_proj_selector=m.ft_proj_selector,
        num_classes=num_classes,
        zero_init_logits_layer=m.zero_init_logits_layer,
        # A distilled student is a fine-tuned network (its head reads the `ft_proj_selector` layer).
        train_mode="finetune" if config.train.train_mode == "distill" else config.train.train_mode,
        lineareval_while_pretraining=config.train.lineareval_while_pretraining,
        fine_tune_after_block=config.train.fine_tune_after_block,
        temperature=config.loss.temperature,
        hidden_norm=config.loss.hidden_norm,
        contrastive_loss=config.loss.contrastive_loss,
        margin=config.loss.margin,
        semi_hard_negatives=config.loss.semi_hard_negatives,
        optimizer_name=config.optimizer.optimizer,
        weight_decay=config.optimizer.weight_decay,
        memory_buffer_size=config.loss.memory_buffer_size,
        memory_momentum=config.loss.memory_momentum,
        name="simclr",
    )
    size = image_size or config.image_size
    model.build((None, size, size, 3))
    return model
