"""Batch normalization whose training pass is TensorFlow's fused kernel.

Keras 3's `BatchNormalization` computes a training-mode batch norm from `moments` and element-wise
ops: about ten kernels forward and more backward, each a full pass over the activation.
`FusedBatchNormV3` does the forward in one kernel and its gradient in one more (oneDNN's on x86,
cuDNN's on GPUs). On this project's 2-core CPU that makes the whole training step 1.2x faster for
ResNet-18 and 1.3-1.4x for ResNet-50 (`experiments/benchmark.py` against `--keras_batch_norm`).

`BatchNormalization` here is a drop-in subclass of Keras' layer: the same arguments, variables
(`gamma`, `beta`, `moving_mean`, `moving_variance`), moving-average rule, checkpoints and saved
configs, and the same numbers up to float32 rounding (`tests/test_batch_norm.py`). Only the
training pass of a 4-D channels-last input takes the fused kernel; everything else is the
parent's code:

- inference (`training=False`, or the layer frozen with `trainable = False`);
- masks, batch renormalization, other ranks or axes;
- cross-replica batch norm (`synchronized=True` with more than one replica in sync), whose
  statistics need an all-reduce that the fused kernel cannot do;
- op determinism (`tf.config.experimental.enable_op_determinism()`), because the fused gradient
  with respect to `beta` is not deterministic on GPUs.

The module also holds what every batch norm of the model shares: the original's epsilon
(`BATCH_NORM_EPSILON`), the check of `batch_norm_decay`, and `make_batch_norm`, which builds a
batch norm with the original's settings as this fused layer or as Keras' own.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from simclr_tf.validation import check_number

try:  # not in the public API (only the setter, `tf.config.experimental.enable_op_determinism`, is)
    from tensorflow.python.framework.config import is_op_determinism_enabled
except ImportError:  # pragma: no cover - a TensorFlow without it: assume determinism is off

    def is_op_determinism_enabled() -> bool:
        return False


# The original SimCLR code's batch-norm epsilon, in the encoder and in the projection head.
BATCH_NORM_EPSILON = 1e-5

_FUSABLE_DTYPES = (tf.float16, tf.bfloat16, tf.float32)


@keras.saving.register_keras_serializable(package="simclr_tf")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` with a fused training pass for 4-D NHWC inputs.

    Args:
        **kwargs: as `keras.layers.BatchNormalization`.
    """

    def _fusable(self, inputs, training, mask) -> bool:
        if not (training and self.trainable) or mask is not None or self.renorm:
            return False
        if len(inputs.shape) != 4 or self.axis not in (-1, 3, [-1], [3]):
            return False
        if inputs.dtype not in _FUSABLE_DTYPES:
            return False
        if self.synchronized and tf.distribute.get_strategy().num_replicas_in_sync > 1:
            return False
        return not is_op_determinism_enabled()

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels], tf.float32)
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels], tf.float32)
        outputs, mean, unbiased_variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True
        )
        # The kernel normalises with the biased batch variance but returns the unbiased one
        # (divided by n - 1); Keras' moving average follows the biased one (divided by n).
        count = tf.cast(tf.size(inputs, out_type=tf.int64) // channels, tf.float32)
        variance = tf.where(count > 1.0, unbiased_variance * ((count - 1.0) / count), 0.0)
        momentum = tf.cast(self.momentum, tf.float32)
        self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum + variance * (1.0 - momentum))
        return tf.cast(outputs, self.compute_dtype)


def check_batch_norm_decay(batch_norm_decay) -> float:
    """`batch_norm_decay` as a float if it is in (0, 1).

    Raises:
        ValueError: naming the argument, the interval and the received value.
    """
    return check_number("batch_norm_decay", batch_norm_decay, low=0, high=1, low_inclusive=False,
                        high_inclusive=False, hint="Use e.g. 0.9 (the momentum of the moving averages).")


def make_batch_norm(name, batch_norm_decay, global_bn, *, zero_init=False, center=True, fused=True,
                    dtype=None):
    """A channels-last batch norm with the original's settings (`epsilon=BATCH_NORM_EPSILON`).

    Args:
        name: str. Layer name.
        batch_norm_decay: float. Moving-average momentum.
        global_bn: bool. Synchronise batch statistics across replicas (`synchronized`).
        zero_init: bool. Start `gamma` at zero instead of one. Defaults to `False`.
        center: bool. Learn `beta`. Defaults to `True`.
        fused: bool. This module's `BatchNormalization` (TensorFlow's fused kernel for the
            training pass) if True, Keras' own `keras.layers.BatchNormalization` if False. Both
            have the same config and variables. Defaults to `True`.
        dtype: dtype policy of the layer. Defaults to `None` (the global policy).

    Returns:
        The (unbuilt) layer.
    """
    cls = BatchNormalization if fused else keras.layers.BatchNormalization
    return cls(
        axis=-1,
        momentum=batch_norm_decay,
        epsilon=BATCH_NORM_EPSILON,
        center=center,
        gamma_initializer="zeros" if zero_init else "ones",
        synchronized=global_bn,
        name=name,
        dtype=dtype,
    )
