"""ResNet encoders of SimCLR (v1) and SimCLRv2, as functional Keras models with named features.

The architecture follows the original SimCLR TensorFlow code (google-research/simclr, `resnet.py`):

- ResNet v1 with basic blocks (depths 18, 34) or bottleneck blocks (50, 101, 152, 200), the
  stride on the 3x3 convolution of a bottleneck ("v1.5"), convolutions without bias and
  `VarianceScaling()` initialisation (scale 1, fan-in, truncated normal), batch norm with
  `epsilon=1e-5` (`BATCH_NORM_EPSILON`), and the last batch-norm `gamma` of every residual branch
  set to zero so that each block starts as the identity (up to the ReLU).
- "Fixed padding": a strided convolution pads its input symmetrically by `kernel_size - 1`
  (extra pixel at the end) and then runs VALID, so the geometry does not depend on the input
  size's parity. Stride-1 convolutions use SAME padding.
- SimCLRv2's selective kernels (`sk_ratio > 0`) replace the 3x3 convolution of each bottleneck
  and switch on the ResNet-D tricks the original applies with them: a deep stem of three 3x3
  convolutions and a projection shortcut that average-pools before its 1x1 convolution.
- Optional squeeze-excitation (`se_ratio > 0`) at the end of every residual branch. Both custom
  layers, `SelectiveKernelConv2D` and `SqueezeExcitation`, live in `layers.py`.
- As in the original, the first block of every block group has a projection shortcut, even in
  `block_group1` of ResNet-18/34 where the shapes already match. So ResNet-18 has 4,224 more
  parameters than torchvision's (a 64x64 1x1 convolution and its batch norm); bottleneck
  ResNets match torchvision exactly (ResNet-50: 23,508,032 trainable weights without the
  classifier).

Images enter as float32 in [0, 1], shape `(batch_size, height, width, 3)`, with no mean / std
normalisation; any height and width work.

Layer names are a contract, since checkpoints store every variable under its layer's name: stem
layers start with `stem_` and the layers of block group `k` with `block_group{k}_` (which
`freeze_up_to_block` relies on), and every batch-norm layer's name contains `batch_norm`. Those
`batch_norm` names stay for checkpoint compatibility and for the original code's name rule, which
still applies to bare variables outside any layer; weight decay no longer relies on them: the LARS
optimizer keeps batch-norm variables and biases out of it by the role of the layer that owns them
(its type), not by name. `build_resnet(fused_batch_norm=False)` gives the same names.

References:
    - [He et al., 2015. Deep Residual Learning for Image Recognition](
      https://arxiv.org/abs/1512.03385)
    - [Chen et al., 2020. A Simple Framework for Contrastive Learning of Visual Representations](
      https://arxiv.org/abs/2002.05709)
    - [Chen et al., 2020. Big Self-Supervised Models are Strong Semi-Supervised Learners](
      https://arxiv.org/abs/2006.10029)
    - [Li et al., 2019. Selective Kernel Networks](https://arxiv.org/abs/1903.06586)
    - [Hu et al., 2017. Squeeze-and-Excitation Networks](https://arxiv.org/abs/1709.01507)
    - [He et al., 2018. Bag of Tricks for Image Classification with CNNs (ResNet-D)](
      https://arxiv.org/abs/1812.01187)
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from simclr_tf import precision
from simclr_tf.config import RESNET_DEPTHS
from simclr_tf.models.batch_norm import BATCH_NORM_EPSILON, check_batch_norm_decay, make_batch_norm
from simclr_tf.models.conv import Conv2D, ConvGradients, conv_gradients_for, use_conv_gradients
from simclr_tf.models.layers import (
    SelectiveKernelConv2D,
    SqueezeExcitation,
    conv_initializer,
    fixed_padding,
)
from simclr_tf.validation import check_number, check_one_of, check_positive_int

# The layers and the epsilon are defined in layers.py and batch_norm.py; callers may import them
# from here, as they did before they moved.
__all__ = [
    "BATCH_NORM_EPSILON",
    "FEATURE_NAMES",
    "RESNET_BLOCKS",
    "SelectiveKernelConv2D",
    "SqueezeExcitation",
    "build_resnet",
    "freeze_up_to_block",
    "resnet_output_dim",
]

# depth -> (block type, number of blocks in each of the four block groups)
RESNET_BLOCKS = {
    10: ("basic", (1, 1, 1, 1)),  # not in the original code: a small student for distillation
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}

# The encoder's named outputs, in the order the image flows through them.
FEATURE_NAMES = (
    "initial_conv",
    "initial_max_pool",
    "block_group1",
    "block_group2",
    "block_group3",
    "block_group4",
    "final_avg_pool",
)

_BOTTLENECK_EXPANSION = 4


def resnet_output_dim(resnet_depth, width_multiplier=1):
    """Width of the encoder's `final_avg_pool` (and `block_group4`) features.

    Args:
        resnet_depth: int. One of 10, 18, 34, 50, 101, 152, 200.
        width_multiplier: int. Channel multiplier. Defaults to `1`.

    Returns:
        `512 * width_multiplier` for basic-block ResNets (10, 18, 34), `2048 * width_multiplier`
        for bottleneck ResNets (50 and deeper).

    Raises:
        ValueError: if `resnet_depth` is not a supported depth or `width_multiplier` is not a
            positive integer.

    Example:

    >>> resnet_output_dim(50, 2)
    4096
    """
    check_one_of("resnet_depth", resnet_depth, RESNET_DEPTHS)
    width_multiplier = check_positive_int("width_multiplier", width_multiplier)
    block_type, _ = RESNET_BLOCKS[resnet_depth]
    expansion = _BOTTLENECK_EXPANSION if block_type == "bottleneck" else 1
    return 512 * width_multiplier * expansion


class _Builder:
    """Functional-graph helpers sharing the encoder's batch-norm and SK/SE settings."""

    def __init__(self, sk_ratio, se_ratio, batch_norm_decay, global_bn, fused_batch_norm):
        self.sk_ratio = sk_ratio
        self.se_ratio = se_ratio
        self.batch_norm_decay = batch_norm_decay
        self.global_bn = global_bn
        self.fused_batch_norm = fused_batch_norm

    def conv(self, x, filters, kernel_size, strides, name):
        """Convolution with the original's fixed padding for strides > 1, no bias."""
        if strides > 1:
            if kernel_size > 1:
                x = layers.ZeroPadding2D(fixed_padding(kernel_size), name=f"{name}_pad")(x)
            padding = "valid"
        else:
            padding = "same"
        return Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            use_bias=False,
            kernel_initializer=conv_initializer(),
            name=name,
        )(x)

    def batch_norm(self, x, name, relu=True, zero_init=False):
        layer = make_batch_norm(name, self.batch_norm_decay, self.global_bn, zero_init=zero_init,
                                fused=self.fused_batch_norm)
        x = layer(x)
        if relu:
            x = layers.ReLU(name=name.replace("batch_norm", "relu"))(x)
        return x

    def projection_shortcut(self, x, filters_out, strides, prefix):
        if self.sk_ratio > 0:
            # ResNet-D: average-pool, then a stride-1 1x1 convolution. Like the original, the
            # pooling also runs (2x2, stride 1, SAME) when the block does not downsample.
            if strides > 1:
                x = layers.ZeroPadding2D(fixed_padding(2), name=f"{prefix}_shortcut_pad")(x)
                x = layers.AveragePooling2D(2, strides=strides, padding="valid",
                                            name=f"{prefix}_shortcut_avg_pool")(x)
            else:
                x = layers.AveragePooling2D(2, strides=1, padding="same",
                                            name=f"{prefix}_shortcut_avg_pool")(x)
            x = self.conv(x, filters_out, 1, 1, f"{prefix}_shortcut_conv")
        else:
            x = self.conv(x, filters_out, 1, strides, f"{prefix}_shortcut_conv")
        return self.batch_norm(x, f"{prefix}_shortcut_batch_norm", relu=False)

    def squeeze_excitation(self, x, filters, prefix):
        if self.se_ratio > 0:
            x = SqueezeExcitation(filters, self.se_ratio, name=f"{prefix}_se")(x)
        return x

    def basic_block(self, x, filters, strides, use_projection, prefix):
        shortcut = self.projection_shortcut(x, filters, strides, prefix) if use_projection else x
        y = self.conv(x, filters, 3, strides, f"{prefix}_conv1")
        y = self.batch_norm(y, f"{prefix}_conv1_batch_norm")
        y = self.conv(y, filters, 3, 1, f"{prefix}_conv2")
        y = self.batch_norm(y, f"{prefix}_conv2_batch_norm", relu=False, zero_init=True)
        y = self.squeeze_excitation(y, filters, prefix)
        y = layers.Add(name=f"{prefix}_add")([y, shortcut])
        return layers.ReLU(name=f"{prefix}_out")(y)

    def bottleneck_block(self, x, filters, strides, use_projection, prefix):
        filters_out = _BOTTLENECK_EXPANSION * filters
        shortcut = self.projection_shortcut(x, filters_out, strides, prefix) if use_projection else x
        y = self.conv(x, filters, 1, 1, f"{prefix}_conv1")
        y = self.batch_norm(y, f"{prefix}_conv1_batch_norm")
        if self.sk_ratio > 0:
            # Carries its own batch norm and ReLU (on the two streams, before mixing).
            y = SelectiveKernelConv2D(
                filters,
                strides=strides,
                sk_ratio=self.sk_ratio,
                batch_norm_decay=self.batch_norm_decay,
                global_bn=self.global_bn,
                fused_batch_norm=self.fused_batch_norm,
                name=f"{prefix}_sk_conv",
            )(y)
        else:
            y = self.conv(y, filters, 3, strides, f"{prefix}_conv2")  # v1.5: stride on the 3x3
            y = self.batch_norm(y, f"{prefix}_conv2_batch_norm")
        y = self.conv(y, filters_out, 1, 1, f"{prefix}_conv3")
        y = self.batch_norm(y, f"{prefix}_conv3_batch_norm", relu=False, zero_init=True)
        y = self.squeeze_excitation(y, filters, prefix)
        y = layers.Add(name=f"{prefix}_add")([y, shortcut])
        return layers.ReLU(name=f"{prefix}_out")(y)


def build_resnet(
    resnet_depth,
    width_multiplier=1,
    *,
    cifar_stem=False,
    sk_ratio=0.0,
    se_ratio=0.0,
    batch_norm_decay=0.9,
    global_bn=False,
    fused_batch_norm=True,
    conv_gradients="auto",
    name="resnet",
):
    """Builds a SimCLR ResNet encoder as a functional `keras.Model` with named features.

    Args:
        resnet_depth: int. One of 10, 18, 34, 50, 101, 152, 200.
        width_multiplier: int. Multiplies every channel count (stem 64 * w, block groups
            64/128/256/512 * w base widths). Defaults to `1`.
        cifar_stem: bool. Use a 3x3 stride-1 stem without max-pool (for images of about 32 px)
            instead of the ImageNet stem (7x7 stride-2 convolution and 3x3 stride-2 max-pool).
            Defaults to `False`.
        sk_ratio: float. Selective-kernel ratio (SimCLRv2 uses `0.0625`); 0 disables. When > 0,
            bottleneck blocks use `SelectiveKernelConv2D` and the network uses the ResNet-D deep
            stem (ImageNet stem only) and average-pool projection shortcuts (all depths), as the
            original. Defaults to `0.0`.
        se_ratio: float. Squeeze-excitation ratio; 0 disables. Defaults to `0.0`.
        batch_norm_decay: float. Batch-norm moving-average momentum. Defaults to `0.9`.
        global_bn: bool. Synchronise batch-norm statistics across replicas
            (`BatchNormalization(synchronized=True)`). Defaults to `False`.
        fused_batch_norm: bool. Batch norms are `simclr_tf.models.batch_norm.BatchNormalization`,
            whose training pass is TensorFlow's fused kernel (faster), if True; Keras' own
            `keras.layers.BatchNormalization` (a composite of element-wise ops) with the same
            config if False. Layer and variable names, and so checkpoints, are the same either
            way. Defaults to `True`.
        conv_gradients: `"auto"`, a `simclr_tf.models.conv.ConvGradients`, or None. How the
            convolutions' gradients are computed: `"auto"` decides from the devices of the
            strategy the encoder is built under (TensorFlow's own kernels on GPUs and TPUs, the
            CPU workarounds of `simclr_tf.models.conv` on CPUs); None: TensorFlow's everywhere.
            Not saved with the model. Defaults to `"auto"`.
        name: str. Model name. Defaults to `"resnet"`.

    Returns:
        A `keras.Model` taking float32 images in [0, 1] of shape `(batch_size, height, width, 3)`
        (any height and width) and returning a dict of tensors:

        - `initial_conv`: output of the stem's (last) convolution, before its batch norm, as
          in the original. `(B, H/2, W/2, 64w)`; `(B, H, W, 64w)` with the CIFAR stem.
        - `initial_max_pool`: the stem's output (after batch norm, ReLU and max-pool), i.e. the
          input of `block_group1`. `(B, H/4, W/4, 64w)`. The CIFAR stem has no max-pool: there
          this is the ReLU output, `(B, H, W, 64w)`.
        - `block_group1` ... `block_group4`: outputs of the four block groups (strides 1, 2, 2,
          2), with `64w, 128w, 256w, 512w` channels, times 4 for bottleneck ResNets.
        - `final_avg_pool`: global average of `block_group4`, `(B, resnet_output_dim(...))`.

        Under a mixed-precision policy the outputs have the compute dtype (e.g. bfloat16).

    Raises:
        ValueError: if an argument is outside its allowed range.

    Example:

    >>> encoder = build_resnet(18, cifar_stem=True)
    >>> features = encoder(keras.ops.zeros((2, 32, 32, 3)), training=False)
    >>> tuple(features["final_avg_pool"].shape)
    (2, 512)
    """
    check_one_of("resnet_depth", resnet_depth, RESNET_DEPTHS)
    width_multiplier = check_positive_int("width_multiplier", width_multiplier)
    for arg_name, value in (("sk_ratio", sk_ratio), ("se_ratio", se_ratio)):
        check_number(arg_name, value, low=0, high=1, high_inclusive=False, hint="0 disables it.")
    check_batch_norm_decay(batch_norm_decay)
    if conv_gradients is not None and not isinstance(conv_gradients, ConvGradients) \
            and not (isinstance(conv_gradients, str) and conv_gradients == "auto"):
        raise ValueError("`conv_gradients` must be 'auto', a `simclr_tf.models.conv.ConvGradients` or "
                         f"None (TensorFlow's kernels). Received: conv_gradients={conv_gradients!r}.")

    block_type, blocks_per_group = RESNET_BLOCKS[resnet_depth]
    builder = _Builder(sk_ratio, se_ratio, batch_norm_decay, global_bn, fused_batch_norm)
    block_fn = builder.bottleneck_block if block_type == "bottleneck" else builder.basic_block
    stem_width = 64 * width_multiplier

    images = keras.Input(shape=(None, None, 3), name="images")
    outputs = {}
    if cifar_stem:
        x = builder.conv(images, stem_width, 3, 1, "stem_conv")
        outputs["initial_conv"] = x
        x = builder.batch_norm(x, "stem_batch_norm")
        outputs["initial_max_pool"] = x
    else:
        if sk_ratio > 0:  # ResNet-D deep stem: three 3x3 convolutions instead of one 7x7
            x = builder.conv(images, stem_width // 2, 3, 2, "stem_conv1")
            x = builder.batch_norm(x, "stem_conv1_batch_norm")
            x = builder.conv(x, stem_width // 2, 3, 1, "stem_conv2")
            x = builder.batch_norm(x, "stem_conv2_batch_norm")
            x = builder.conv(x, stem_width, 3, 1, "stem_conv3")
        else:
            x = builder.conv(images, stem_width, 7, 2, "stem_conv")
        outputs["initial_conv"] = x
        x = builder.batch_norm(x, "stem_batch_norm")
        x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_max_pool")(x)
        outputs["initial_max_pool"] = x

    for group, num_blocks in enumerate(blocks_per_group, start=1):
        filters = 64 * 2 ** (group - 1) * width_multiplier
        for block in range(1, num_blocks + 1):
            strides = 2 if group > 1 and block == 1 else 1
            x = block_fn(x, filters, strides, use_projection=block == 1,
                         prefix=f"block_group{group}_block{block}")
        outputs[f"block_group{group}"] = x

    outputs["final_avg_pool"] = layers.GlobalAveragePooling2D(name="final_avg_pool")(x)
    model = keras.Model(images, outputs, name=name)
    if conv_gradients == "auto":
        # Built inside the strategy's scope: its devices decide, once (DESIGN.md).
        conv_gradients = conv_gradients_for(precision.strategy_devices(tf.distribute.get_strategy()))
    use_conv_gradients(model, conv_gradients)
    return model


def freeze_up_to_block(encoder, fine_tune_after_block):
    """Freezes the encoder's stem and first block groups for fine-tuning, as the original.

    Frozen layers get `trainable = False`; in Keras 3 that also makes their batch norm use the
    moving averages (inference mode) even when the model is called with `training=True`. All
    other layers get `trainable = True`, so calls are idempotent. A compiled model must be
    re-compiled (or its train function re-made) after the change.

    Args:
        encoder: a model built by `build_resnet`.
        fine_tune_after_block: int. `-1` trains everything; `0` freezes the stem; `k` in 1..4
            freezes the stem and block groups 1..k (4: only heads on top of the encoder train).

    Returns:
        The list of layers that were frozen.

    Raises:
        ValueError: if `fine_tune_after_block` is not in [-1, 4] or `encoder` has no `stem_`
            layers.

    Example:

    >>> encoder = build_resnet(18, cifar_stem=True)
    >>> frozen = freeze_up_to_block(encoder, 4)
    >>> len(encoder.trainable_weights)
    0
    """
    valid = isinstance(fine_tune_after_block, int) and not isinstance(fine_tune_after_block, bool)
    if not valid or fine_tune_after_block not in (-1, 0, 1, 2, 3, 4):
        raise ValueError(
            "`fine_tune_after_block` must be an integer in [-1, 4] (-1: train all, 0: freeze the "
            "stem, k: freeze the stem and block groups 1..k). "
            f"Received: fine_tune_after_block={fine_tune_after_block!r}."
        )
    if not any(layer.name.startswith("stem_") for layer in encoder.layers):
        raise ValueError(
            f"`encoder` must be a model built by `build_resnet` (layers named `stem_*` and "
            f"`block_group{{k}}_*`). Received a model named {encoder.name!r} without `stem_` layers."
        )
    prefixes = ()
    if fine_tune_after_block >= 0:
        prefixes = ("stem_",) + tuple(f"block_group{k}_" for k in range(1, fine_tune_after_block + 1))
    _set_trainable(encoder, True)
    frozen = []
    for layer in encoder.layers:
        freeze = layer.name.startswith(prefixes)  # never for -1: prefixes is ()
        _set_trainable(layer, not freeze)
        if freeze:
            frozen.append(layer)
    return frozen


def _set_trainable(layer, value):
    # Keras' TensorFlow backend skips `layer.trainable = value` when the attribute already equals
    # `value` (its auto-tracking short-circuits `self.x = self.x`): re-enabling an encoder that is
    # itself trainable would leave the layers frozen by an earlier call frozen. The property setter
    # always propagates to the sub-layers and their variables.
    keras.layers.Layer.trainable.fset(layer, value)
