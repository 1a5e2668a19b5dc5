"""simclr_tf: SimCLR (v1 and v2) in Keras 3 / TensorFlow.

The supported names are re-exported here and loaded on first use, so that `import simclr_tf`
(and the CLI's flag checking) does not pay for importing TensorFlow.
"""

import importlib
import importlib.abc
import importlib.machinery
import sys

__version__ = "0.1.0"

_EXPORTS = {
    "AugmentConfig": "simclr_tf.config",
    "Config": "simclr_tf.config",
    "LossConfig": "simclr_tf.config",
    "load_config": "simclr_tf.config",
    "save_config": "simclr_tf.config",
    "nt_xent": "simclr_tf.losses",
    "LARS": "simclr_tf.optimizers",
    "VariableRoles": "simclr_tf.variable_roles",
    "build_optimizer": "simclr_tf.optimizers",
    "weight_decay_loss": "simclr_tf.variable_roles",
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
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        if "keras" in sys.modules and _KERAS_CLASSES not in sys.modules:
            _register_keras_classes()
        return value
    raise AttributeError(f"module 'simclr_tf' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


# `.keras` files of simclr_tf models name our layers (`simclr_tf>SelectiveKernelConv2D`, ...), which
# Keras finds only once their modules have registered them. `import simclr_tf` must be enough to
# load such a file, without importing TensorFlow itself: the classes are registered now if Keras
# is already imported, else right after Keras' own import finishes.
_KERAS_CLASSES = "simclr_tf.models.layers"  # imports every module with a registered class


def _initialising(finished: str = "") -> bool:
    """Whether a module of this package (but `finished`) is being imported: its import may be what
    imports Keras, and registering now could meet it half-initialised."""
    return any(getattr(getattr(module, "__spec__", None), "_initializing", False)
               for name, module in list(sys.modules.items())
               if name.startswith("simclr_tf.") and name != finished)


def _register_keras_classes(finished: str = "") -> bool:
    """Imports the modules of our Keras classes (registering them); False where it must wait: Keras
    was imported by a module of this package that is still initialising."""
    if _KERAS_CLASSES not in sys.modules and _initialising(finished):
        return False
    try:
        importlib.import_module(_KERAS_CLASSES)
    except (ImportError, AttributeError):  # a partially initialised module: a later import retries
        return False
    return True


class _RegisterWithKeras(importlib.abc.MetaPathFinder):
    """Finds nothing itself: gives the specs of `keras` and of this package's modules a loader that,
    once Keras is imported, registers our classes after the module ran (the import of one of our
    modules may be what imports Keras: then the registration waits for it to finish)."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras" and not name.startswith("simclr_tf."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:  # (TensorFlow also asks without importing)
            spec.loader = _ThenRegister(spec.loader, self)
        return spec

    def done(self):
        if self in sys.meta_path:
            sys.meta_path.remove(self)


class _ThenRegister(importlib.abc.Loader):
    """The module's own loader, then our registration."""

    def __init__(self, loader, finder):
        self.loader, self.finder = loader, finder

    def __getattr__(self, name):
        # Everything else is the module's own loader's: `python -m` (runpy) asks for `get_code`,
        # importlib.resources for `get_resource_reader`, tracebacks for `get_source`, ...
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        if "keras" in sys.modules and _register_keras_classes(finished=module.__name__):
            self.finder.done()


if "keras" in sys.modules:
    _register_keras_classes()
else:
    sys.meta_path.insert(0, _RegisterWithKeras())
