"""A test helper: a `SimCLRModel` from flat keyword arguments, through the one builder.

Tests name the few fields they care about (`resnet_depth=18, num_proj_layers=2, temperature=0.5`);
this puts each into its config section and calls `build_model`, so the tests exercise the same
wiring as a run.
"""

import dataclasses

from simclr_tf.config import Config, LossConfig, ModelConfig, OptimizerConfig, TrainConfig
from simclr_tf.models.build import build_model

_SECTIONS = {"model": ModelConfig, "loss": LossConfig, "train": TrainConfig}


def simclr_model(encoder=None, num_classes=0, weight_decay=0.0, fused_batch_norm=True, **fields):
    """The unbuilt `SimCLRModel` of a `Config` whose `model`, `loss` and `train` fields are `fields`.

    The loss term's `weight_decay` is 0 unless given (tests compare with steps written by hand).
    """
    values = {name: {} for name in _SECTIONS}
    for key, value in fields.items():
        section = [name for name, cls in _SECTIONS.items()
                   if key in {f.name for f in dataclasses.fields(cls)}]
        if not section:
            raise TypeError(f"{key!r} is no field of ModelConfig, LossConfig or TrainConfig")
        values[section[0]][key] = value
    config = Config(**{name: cls(**values[name]) for name, cls in _SECTIONS.items()},
                    optimizer=OptimizerConfig(weight_decay=weight_decay))
    return build_model(config, num_classes, encoder=encoder, fused_batch_norm=fused_batch_norm,
                       build=False)
