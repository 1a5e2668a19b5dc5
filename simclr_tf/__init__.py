"""simclr_tf: SimCLR (v1 and v2) in Keras 3 / TensorFlow.

The supported names are re-exported here and loaded on first use, so that `import simclr_tf`
(and the CLI's flag checking) does not pay for importing TensorFlow.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "AugmentConfig": "simclr_tf.config",
    "Config": "simclr_tf.config",
    "load_config": "simclr_tf.config",
    "save_config": "simclr_tf.config",
    "nt_xent": "simclr_tf.losses",
    "LARS": "simclr_tf.optimizers",
    "VariableRoles": "simclr_tf.optimizers",
    "build_optimizer": "simclr_tf.optimizers",
    "weight_decay_loss": "simclr_tf.optimizers",
    "WarmupCosineDecay": "simclr_tf.schedules",
    "compute_schedule": "simclr_tf.schedules",
    "build_resnet": "simclr_tf.models.resnet",
    "ProjectionHead": "simclr_tf.models.heads",
    "SupervisedHead": "simclr_tf.models.heads",
    "SimCLRModel": "simclr_tf.models.simclr",
    "MemoryBuffer": "simclr_tf.models.memory",
    "build_model": "simclr_tf.models.build",
    "load_source": "simclr_tf.data.sources",
    "build_train_dataset": "simclr_tf.data.pipeline",
    "two_views": "simclr_tf.data.views",
    "make_strategy": "simclr_tf.distribute",
    "export_model": "simclr_tf.export",
    "knn_predict": "simclr_tf.evaluation",
    "train": "simclr_tf.training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'simclr_tf' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
