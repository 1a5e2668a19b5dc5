"""The custom layers of the ResNet encoder: SimCLRv2's selective kernels and squeeze-excitation.

Both are registered as `simclr_tf>SelectiveKernelConv2D` and `simclr_tf>SqueezeExcitation`, the
names saved `.keras` files refer to; their sub-layer names (`conv`, `batch_norm`, `reduce_conv`,
...) are the paths of their variables in checkpoints. The module also holds the helpers the
encoder's convolutions share with them: the original's initialiser and "fixed padding".

References:
    - [Li et al., 2019. Selective Kernel Networks](https://arxiv.org/abs/1903.06586)
    - [Hu et al., 2017. Squeeze-and-Excitation Networks](https://arxiv.org/abs/1709.01507)
    - [Chen et al., 2020. Big Self-Supervised Models are Strong Semi-Supervised Learners](
      https://arxiv.org/abs/2006.10029)
"""

from __future__ import annotations

import keras
from keras import layers, ops

from simclr_tf.models import images as _images  # noqa: F401  (registers ImageEncoder for .keras files)
from simclr_tf.models.batch_norm import check_batch_norm_decay, make_batch_norm
from simclr_tf.models.conv import Conv2D
from simclr_tf.validation import check_number, check_positive_int


def conv_initializer():
    """The original's `tf.keras.initializers.VarianceScaling()`: scale 1, fan-in, truncated normal."""
    return keras.initializers.VarianceScaling(scale=1.0, mode="fan_in", distribution="truncated_normal")


def fixed_padding(kernel_size):
    """Padding `((top, bottom), (left, right))` of the original's `FixedPadding`.

    A strided convolution pads `kernel_size - 1` pixels (the extra one at the end) and runs VALID,
    so its output size is `ceil(size / strides)` whatever the parity of `size`.
    """
    pad_total = kernel_size - 1
    pad_beg = pad_total // 2
    pad_end = pad_total - pad_beg
    return ((pad_beg, pad_end), (pad_beg, pad_end))


@keras.saving.register_keras_serializable(package="simclr_tf")
class SelectiveKernelConv2D(keras.layers.Layer):
    """Selective-kernel 3x3 convolution of SimCLRv2 (two 3x3 streams mixed by attention).

    As in the original SimCLRv2 code, both streams are plain 3x3 convolutions (computed as one
    convolution with `2 * filters` outputs, batch norm and ReLU, then split in two). A global
    descriptor of their sum goes through a 1x1 convolution to `max(int(filters * sk_ratio),
    min_dim)` channels, batch norm, ReLU and a 1x1 convolution back to `2 * filters`; a softmax
    over the two streams gives per-channel mixing weights.

    Args:
        filters: int. Output channels.
        strides: int. Stride of the 3x3 convolutions (fixed padding when > 1). Defaults to `1`.
        sk_ratio: float. Reduction ratio of the attention branch, in (0, 1). Defaults to `0.0625`.
        min_dim: int. Smallest width of the attention branch. Defaults to `32`.
        batch_norm_decay: float. Batch-norm moving-average momentum. Defaults to `0.9`.
        global_bn: bool. Synchronise batch-norm statistics across replicas. Defaults to `False`.
        fused_batch_norm: bool. Batch norms with TensorFlow's fused training kernel
            (`simclr_tf.models.batch_norm.BatchNormalization`) if True, Keras' own layer if
            False; same variables either way. Defaults to `True`.
        **kwargs: base layer arguments (`name`, `dtype`, `trainable`, ...).

    Call arguments:
        inputs: tensor of shape `(batch_size, height, width, channels)`.
        training: bool. Batch statistics (True) or moving averages (False) in batch norm.

    Returns:
        Tensor of shape `(batch_size, ceil(height / strides), ceil(width / strides), filters)`.

    Raises:
        ValueError: if an argument is outside its allowed values.

    Example:

    >>> layer = SelectiveKernelConv2D(64, strides=2)
    >>> tuple(layer(keras.ops.ones((2, 8, 8, 16))).shape)
    (2, 4, 4, 64)

    References:
        - [Li et al., 2019](https://arxiv.org/abs/1903.06586)
        - [Chen et al., 2020 (SimCLRv2)](https://arxiv.org/abs/2006.10029)
    """

    def __init__(
        self,
        filters,
        strides=1,
        sk_ratio=0.0625,
        min_dim=32,
        batch_norm_decay=0.9,
        global_bn=False,
        fused_batch_norm=True,
        **kwargs,
    ):
        for arg_name, value in (("filters", filters), ("strides", strides), ("min_dim", min_dim)):
            check_positive_int(arg_name, value)
        check_number("sk_ratio", sk_ratio, low=0, high=1, low_inclusive=False, high_inclusive=False,
                     hint="SimCLRv2 uses 0.0625.")
        check_batch_norm_decay(batch_norm_decay)
        super().__init__(**kwargs)
        self.filters = filters
        self.strides = strides
        self.sk_ratio = sk_ratio
        self.min_dim = min_dim
        self.batch_norm_decay = batch_norm_decay
        self.global_bn = global_bn
        self.fused_batch_norm = fused_batch_norm

        self.mid_dim = max(int(filters * sk_ratio), min_dim)
        self.pad = (
            layers.ZeroPadding2D(fixed_padding(3), name="pad", dtype=self.dtype_policy)
            if strides > 1
            else None
        )
        self.conv = Conv2D(
            2 * filters,
            3,
            strides=strides,
            padding="valid" if strides > 1 else "same",
            use_bias=False,
            kernel_initializer=conv_initializer(),
            name="conv",
            dtype=self.dtype_policy,
        )
        self.batch_norm = make_batch_norm("batch_norm", batch_norm_decay, global_bn,
                                          fused=fused_batch_norm, dtype=self.dtype_policy)
        self.reduce_conv = layers.Conv2D(
            self.mid_dim,
            1,
            use_bias=False,
            kernel_initializer=conv_initializer(),
            name="reduce_conv",
            dtype=self.dtype_policy,
        )
        self.reduce_batch_norm = make_batch_norm("reduce_batch_norm", batch_norm_decay, global_bn,
                                                 fused=fused_batch_norm, dtype=self.dtype_policy)
        self.expand_conv = layers.Conv2D(
            2 * filters,
            1,
            use_bias=False,
            kernel_initializer=conv_initializer(),
            name="expand_conv",
            dtype=self.dtype_policy,
        )

    def build(self, input_shape):
        shape = input_shape
        if self.pad is not None:
            self.pad.build(shape)
            shape = self.pad.compute_output_shape(shape)
        self.conv.build(shape)
        shape = self.conv.compute_output_shape(shape)
        self.batch_norm.build(shape)
        pooled_shape = (shape[0], 1, 1, self.filters)
        self.reduce_conv.build(pooled_shape)
        reduced_shape = (shape[0], 1, 1, self.mid_dim)
        self.reduce_batch_norm.build(reduced_shape)
        self.expand_conv.build(reduced_shape)
        self.built = True

    def call(self, inputs, training=None):
        x = inputs if self.pad is None else self.pad(inputs)
        x = ops.relu(self.batch_norm(self.conv(x), training=training))
        stream_a, stream_b = ops.split(x, 2, axis=-1)  # 2 x (B, H, W, filters)

        descriptor = ops.mean(stream_a + stream_b, axis=(1, 2), keepdims=True)  # (B, 1, 1, filters)
        descriptor = ops.relu(self.reduce_batch_norm(self.reduce_conv(descriptor), training=training))
        logits_a, logits_b = ops.split(self.expand_conv(descriptor), 2, axis=-1)
        weights = ops.softmax(ops.stack([logits_a, logits_b], axis=0), axis=0)  # (2, B, 1, 1, filters)
        return stream_a * weights[0] + stream_b * weights[1]

    def compute_output_shape(self, input_shape):
        shape = input_shape
        if self.pad is not None:
            shape = self.pad.compute_output_shape(shape)
        shape = self.conv.compute_output_shape(shape)
        return (*shape[:-1], self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "strides": self.strides,
                "sk_ratio": self.sk_ratio,
                "min_dim": self.min_dim,
                "batch_norm_decay": self.batch_norm_decay,
                "global_bn": self.global_bn,
                "fused_batch_norm": self.fused_batch_norm,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="simclr_tf")
class SqueezeExcitation(keras.layers.Layer):
    """Squeeze-and-excitation: rescales channels by a gate computed from their global average.

    The gate is `sigmoid(expand(relu(reduce(mean_hw(x)))))` with 1x1 convolutions (with bias):
    `reduce` to `max(1, int(filters * se_ratio))` channels, `expand` back to the input's
    channels. As in the original, `filters` is the block's base width (for a bottleneck block, a
    quarter of its output channels).

    Args:
        filters: int. Base width that the reduction is computed from.
        se_ratio: float. Reduction ratio, in (0, 1).
        **kwargs: base layer arguments (`name`, `dtype`, `trainable`, ...).

    Call arguments:
        inputs: tensor of shape `(batch_size, height, width, channels)`.

    Returns:
        Tensor of the input's shape.

    Raises:
        ValueError: if an argument is outside its allowed values.

    Example:

    >>> layer = SqueezeExcitation(filters=16, se_ratio=0.25)
    >>> tuple(layer(keras.ops.ones((2, 4, 4, 64))).shape)
    (2, 4, 4, 64)

    References:
        - [Hu et al., 2017](https://arxiv.org/abs/1709.01507)
    """

    def __init__(self, filters, se_ratio, **kwargs):
        check_positive_int("filters", filters)
        check_number("se_ratio", se_ratio, low=0, high=1, low_inclusive=False, high_inclusive=False,
                     hint="Use e.g. 0.25.")
        super().__init__(**kwargs)
        self.filters = filters
        self.se_ratio = se_ratio
        self.reduce_dim = max(1, int(filters * se_ratio))
        self.reduce_conv = layers.Conv2D(
            self.reduce_dim,
            1,
            use_bias=True,
            kernel_initializer=conv_initializer(),
            name="reduce_conv",
            dtype=self.dtype_policy,
        )
        self.expand_conv = None  # its width is the input's channels, known in build()

    def build(self, input_shape):
        channels = input_shape[-1]
        self.expand_conv = layers.Conv2D(
            channels,
            1,
            use_bias=True,
            kernel_initializer=conv_initializer(),
            name="expand_conv",
            dtype=self.dtype_policy,
        )
        pooled_shape = (input_shape[0], 1, 1, channels)
        self.reduce_conv.build(pooled_shape)
        self.expand_conv.build((input_shape[0], 1, 1, self.reduce_dim))
        self.built = True

    def call(self, inputs):
        gate = ops.mean(inputs, axis=(1, 2), keepdims=True)  # (B, 1, 1, C)
        gate = self.expand_conv(ops.relu(self.reduce_conv(gate)))
        return ops.sigmoid(gate) * inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters, "se_ratio": self.se_ratio})
        return config
