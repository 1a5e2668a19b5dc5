"""2-D convolution whose gradients avoid TensorFlow's slow (and, on one CPU, unsafe) CPU kernels.

The input gradient can run as forward convolutions (`input_gradient`), the kernel gradient as
matrix products (`filter_gradient`); `Conv2D` picks per layer, by the run's plan (`ConvGradients`,
decided once from the strategy's devices), shape and precision.

TensorFlow's CPU kernel for the gradient of a convolution with respect to its input,
`Conv2DBackpropInput`, is slow where the feature maps are small and the channels many: on a
2-core AVX2 CPU, for a batch of 128, a 3x3 convolution of 512 channels at 2x2 takes 18 ms forward
and 812 ms for its input gradient (3 GFLOP/s), and the strided 3x3 one from 4x4 to 2x2 takes 307 ms
(forward 8 ms). ResNet's last stages are such maps (the quickstart's 16 px images end at 2x2), so
that one op took 72% of the quickstart's training step (`experiments/benchmark.py --profile_dir`).

The input gradient of a convolution is itself a convolution, so it can be computed with the fast
forward kernel. For a 'valid' convolution of stride `s` and kernel `k`,
`y[o] = sum_t x[o*s + t] w[t]`, the gradient at an input position `p = q*s + a` (`0 <= a < s`)
collects the taps `t = m*s + a`:

    dx[q*s + a] = sum_m dy[q - m] w[m*s + a]

a full correlation of `dy` with the reversed sub-kernel `w[a::s]` (its input and output channels
swapped). In two dimensions that is one forward convolution per phase `(a, b)` (one for stride 1,
four for stride 2), whose results interleave into `dx`: exactly the multiply-adds of the native
op, none spent on inserted zeros. 'same' padding is padding the input first and cropping the
gradient after.

This path pays only on CPUs without AVX-512. On a 2-core AVX-512 CPU (AMD EPYC with AVX512_BF16,
2026-12-07) TensorFlow's kernel has no such weakness: for the quickstart's shapes (batch 256) it is
as fast as the forward path for stride 1 (the 512-channel 3x3 at 2x2: 22.9 ms against 23.8) and
1.5-2x faster for the strided ones (from 4x4 to 2x2: 16.3 ms against 28.1; in bfloat16 12.3 against
25.1), and the quickstart's step runs at 167 images/s with it against 128 with the forward path
(bfloat16; float32 114 against 98). So the path is taken on CPUs that lack `avx512f` (e.g. AVX2
only).

These are CPU workarounds, measured on CPUs only. The decision is made once, when the encoder is
built, from the devices of the strategy it is built under (`conv_gradients_for`, DESIGN.md): a GPU
or TPU strategy gets TensorFlow's own kernels (cuDNN's, XLA's) for every convolution, and no
custom gradient is traced; a CPU strategy gets the forward input gradient where the CPU lacks
AVX-512 and the kernel gradient by products for small bfloat16 maps (below). The run prints and
records the choice (`ConvGradients.describe`). A layer built outside a builder (or loaded from a
`.keras` file) has no plan and runs TensorFlow's kernels.

An earlier version also took these paths on every machine, GPUs and TPUs included, for strided 1x1
convolutions and inputs whose channels are not a multiple of 16, citing heap corruption ("free():
invalid size") by TensorFlow 2.21's strided CPU gradients with 4 or 8 channels on an AVX-512 CPU.
That did not reproduce: `experiments/repro_conv_heap.py` (TensorFlow's gradients alone, 1x1 stride
2 with 4 and 8 channels, 3x3 stride 2 with 3 and 4 channels, batches 8 and 256, float32 and
bfloat16, VALID and SAME, 20 iterations each, glibc heap checking on) ran every case cleanly on a
2-core Sapphire Rapids (AVX-512, AVX512_BF16, AMX), so that rule is gone: strided 1x1 and
few-channel convolutions take TensorFlow's gradients on CPUs with AVX-512 too (on that machine its
strided 1x1 input gradient was as fast as the forward path, 3.3 ms either way).

`Conv2D` is a drop-in subclass of `keras.layers.Conv2D` (same arguments, variables, checkpoints and
saved config) that takes these paths for what the ResNet uses: 2-D, channels-last, no dilation or
groups, with the TensorFlow backend (the input gradient: stride 1, a 1x1 kernel, or a small strided
output, `STRIDED_MAX_OUTPUT`); anything else is the parent's code. The gradients agree with a
float64 NumPy reference up to float32 rounding (`tests/test_conv.py`).
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from simclr_tf.precision import Devices

# A strided convolution takes the forward path only where its output map has at most this many
# positions (4x4): measured on a 2-core AVX2 CPU, batch 128, TensorFlow's input gradient is faster
# for larger strided maps (3x3 from 18x18 to 8x8: 11.5 ms against 17.0) and far slower for small ones
# (from 6x6 to 2x2: 342 ms against 33); for stride 1 the forward path was faster at every size
# measured (2x2 to 16x16 maps).
STRIDED_MAX_OUTPUT = 16

# The kernel gradient by matrix products (`filter_gradient`) for output maps of at most this many
# positions (4x4), kernels larger than 1x1: TensorFlow's `Conv2DBackpropFilter` is slow there.
# Measured on a 2-core AVX512_BF16 CPU (2026-12-07), batch 256, the quickstart's last stages, with
# another job on the machine: 3x3 of 512 channels at 2x2, bfloat16 94.6 ms against 17.8 by products
# (float32 72.7 against 40.2); 256 channels at 4x4 58.0 against 20.5 (float32 44.3 against 45.4);
# the strided 3x3 from 4x4 to 2x2 81.8 against 16.9 (float32 43.3 against 29.0). At 8x8 and larger
# TensorFlow's was as fast or faster (16x16, 64 channels: 28.6 against 29.2). In the quickstart's
# whole step that made bfloat16 1.10x faster (166-177 images/s against 154-159) but float32 slower
# (106-108 against 114-115, idle), so float32 keeps TensorFlow's kernel there.
SMALL_MAP_POSITIONS = 16

# `Conv2D.forward_input_gradient` choices: `auto` (None: the run's plan, see `Conv2D`),
# `forward` (True), `native` (False).
INPUT_GRADIENTS = ("auto", "forward", "native")
# `Conv2D.matmul_filter_gradient` choices: `auto` (None), `matmul` (True), `native` (False).
FILTER_GRADIENTS = ("auto", "matmul", "native")

@dataclasses.dataclass(frozen=True)
class ConvGradients:
    """The gradient computations a run's `Conv2D` layers take: decided once, from its devices.

    Attributes:
        device: the kind of device the plan is for: `"CPU"`, `"GPU"` or `"TPU"`.
        forward_input: the input gradient by forward convolutions (`input_gradient`) wherever it
            applies (a CPU without AVX-512).
        matmul_small_maps: the kernel gradient by matrix products (`filter_gradient`) in bfloat16
            for kernels larger than 1x1 whose output map has at most `SMALL_MAP_POSITIONS`
            positions (a CPU).
        reason: why, for people.
    """

    device: str
    forward_input: bool = False
    matmul_small_maps: bool = False
    reason: str = ""

    @property
    def custom(self) -> bool:
        """Whether any convolution may take a gradient of this module (else TensorFlow's own)."""
        return self.forward_input or self.matmul_small_maps

    def describe(self) -> str:
        """One line for people and for result.json."""
        if not self.custom:
            return f"TensorFlow's own kernels ({self.reason})"
        paths = []
        if self.forward_input:
            paths.append("input gradients by forward convolutions")
        if self.matmul_small_maps:
            paths.append("bfloat16 kernel gradients of maps up to 4x4 by matrix products")
        return f"{', '.join(paths)}; TensorFlow's elsewhere ({self.reason})"


def conv_gradients_for(devices: Devices) -> ConvGradients:
    """The convolution gradients for a strategy's devices (`simclr_tf.precision.strategy_devices`).

    GPUs and TPUs: TensorFlow's kernels for every convolution (the workarounds were measured on
    CPUs only). CPUs: the forward input gradient where the CPU lacks AVX-512 (known flags without
    `avx512f`), and the kernel gradient by products for small bfloat16 maps.

    Example:
        ```python
        plan = conv_gradients_for(strategy_devices(strategy))
        print(f"Convolution gradients: {plan.describe()}")
        ```
    """
    if devices.kind != "CPU":
        return ConvGradients(devices.kind, reason=f"{devices.kind} strategy")
    flags = devices.cpu_flags
    if flags is None:
        return ConvGradients("CPU", False, True, "CPU whose flags cannot be read")
    if "avx512f" in flags:
        return ConvGradients("CPU", False, True, "CPU with AVX-512")
    return ConvGradients("CPU", True, True, "CPU without AVX-512")


def use_conv_gradients(model, plan: ConvGradients | None) -> int:
    """Gives every `Conv2D` in `model` (nested layers included) the plan; returns how many.

    None takes TensorFlow's kernels everywhere (as a layer without a plan does).
    """
    convs = [layer for layer in model._flatten_layers() if isinstance(layer, Conv2D)]
    for layer in convs:
        layer.gradient_plan = plan
    return len(convs)


def resolve_input_gradient(choice: str) -> bool | None:
    """`Conv2D.forward_input_gradient` for one of `INPUT_GRADIENTS` (`auto`: None)."""
    return _resolve("conv input gradient", choice, INPUT_GRADIENTS)


def resolve_filter_gradient(choice: str) -> bool | None:
    """`Conv2D.matmul_filter_gradient` for one of `FILTER_GRADIENTS` (`auto`: None)."""
    return _resolve("conv kernel gradient", choice, FILTER_GRADIENTS)


def _resolve(what: str, choice: str, choices: tuple[str, str, str]) -> bool | None:
    if choice not in choices:
        raise ValueError(f"{what} must be one of {choices}. Received: {choice!r}.")
    return {choices[0]: None, choices[1]: True, choices[2]: False}[choice]


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'SAME' padding (before, after) of one spatial dimension."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def input_gradient(dy, kernel, input_shape, strides):
    """The gradient of a 'valid' convolution with respect to its input, by forward convolutions.

    Args:
        dy: (batch, out_h, out_w, out_channels) gradient of the convolution's output.
        kernel: (k_h, k_w, in_channels, out_channels) the convolution's kernel.
        input_shape: (height, width) of the convolution's (padded) input; static ints.
        strides: (s_h, s_w) static ints.

    Returns:
        (batch, height, width, in_channels) gradient with respect to the input.
    """
    height, width = input_shape
    k_h, k_w = int(kernel.shape[0]), int(kernel.shape[1])
    s_h, s_w = strides
    out_h, out_w = int(dy.shape[1]), int(dy.shape[2])
    rows, cols = -(-height // s_h), -(-width // s_w)  # positions q of each phase
    phases = []
    for a in range(s_h):
        row = []
        for b in range(s_w):
            taps_h, taps_w = len(range(a, k_h, s_h)), len(range(b, k_w, s_w))
            if taps_h == 0 or taps_w == 0:  # e.g. a 1x1 kernel of stride 2: no tap reaches (a, b)
                row.append(tf.zeros([tf.shape(dy)[0], rows, cols, kernel.shape[2]], dy.dtype))
                continue
            # The sub-kernel w[a::s, b::s], reversed in space, its channels swapped (out -> in);
            # a full correlation: taps - 1 zeros before, enough after for `rows` x `cols` outputs.
            sub = tf.reverse(kernel[a::s_h, b::s_w], axis=[0, 1])
            sub = tf.transpose(sub, [0, 1, 3, 2])
            padded = tf.pad(dy, [[0, 0], [taps_h - 1, rows - out_h], [taps_w - 1, cols - out_w], [0, 0]])
            row.append(tf.nn.conv2d(padded, sub, strides=1, padding="VALID"))
        phases.append(row)
    if s_h == 1 and s_w == 1:
        return phases[0][0]
    # Interleave: dx[q*s_h + a, r*s_w + b] = phases[a][b][q, r], then crop to the input size.
    stacked = tf.stack([tf.stack(row, axis=3) for row in phases], axis=2)  # (n, rows, s_h, cols, s_w, c)
    batch = tf.shape(dy)[0]
    dx = tf.reshape(stacked, [batch, rows * s_h, cols * s_w, kernel.shape[2]])
    return dx[:, :height, :width, :]


def filter_gradient(padded, dy, kernel_shape, strides):
    """The gradient of a 'valid' convolution with respect to its kernel, by matrix products.

    `dw[i, j] = x_ij^T dy`, where `x_ij` is the input seen by tap (i, j) (every s-th position from
    (i, j)), both flattened over batch and positions: for stride 1 one product per tap of a shifted
    slice of the input; strided, one product of all patches (`tf.image.extract_patches`, whose
    patch layout (i, j, channel) is the kernel's).

    Args:
        padded: (batch, height, width, in_channels) the convolution's (padded) input.
        dy: (batch, out_h, out_w, out_channels) gradient of its output.
        kernel_shape: (k_h, k_w, in_channels, out_channels), static ints.
        strides: (s_h, s_w) static ints.

    Returns:
        (k_h, k_w, in_channels, out_channels) gradient with respect to the kernel.
    """
    k_h, k_w, c_in, c_out = (int(d) for d in kernel_shape)
    s_h, s_w = strides
    out_h, out_w = int(dy.shape[1]), int(dy.shape[2])
    dy_rows = tf.reshape(dy, [-1, c_out])
    if (s_h, s_w) == (1, 1):
        taps = [tf.matmul(tf.reshape(padded[:, i:i + out_h, j:j + out_w, :], [-1, c_in]), dy_rows,
                          transpose_a=True)
                for i in range(k_h) for j in range(k_w)]
        return tf.reshape(tf.stack(taps), [k_h, k_w, c_in, c_out])
    patches = tf.image.extract_patches(padded, [1, k_h, k_w, 1], [1, s_h, s_w, 1], [1, 1, 1, 1], "VALID")
    patches = patches[:, :out_h, :out_w, :]
    product = tf.matmul(tf.reshape(patches, [-1, k_h * k_w * c_in]), dy_rows, transpose_a=True)
    return tf.reshape(product, [k_h, k_w, c_in, c_out])


def conv2d(inputs, kernel, strides, padding, *, forward_input_gradient: bool = True,
           matmul_filter_gradient: bool = False):
    """`tf.nn.conv2d` (channels-last, no dilation) with a choice of gradient computations.

    Args:
        inputs, kernel, strides, padding: as `tf.nn.conv2d` (strides as (s_h, s_w)).
        forward_input_gradient: the input gradient by `input_gradient` (forward convolutions);
            else TensorFlow's `Conv2DBackpropInput`.
        matmul_filter_gradient: the kernel gradient by `filter_gradient` (matrix products); else
            TensorFlow's `Conv2DBackpropFilter`.
    """
    strides = tuple(int(s) for s in strides)
    padding = padding.upper()

    @tf.custom_gradient
    def convolve(x, w):
        if padding == "SAME":
            pad_h = _same_padding(int(x.shape[1]), int(w.shape[0]), strides[0])
            pad_w = _same_padding(int(x.shape[2]), int(w.shape[1]), strides[1])
            padded = tf.pad(x, [[0, 0], list(pad_h), list(pad_w), [0, 0]])
        else:
            pad_h = pad_w = (0, 0)
            padded = x
        y = tf.nn.conv2d(padded, w, strides=(1, *strides, 1), padding="VALID")

        def grad(dy):
            centred = pad_h == pad_w == ((w.shape[0] - 1) // 2,) * 2 and w.shape[0] == w.shape[1]
            if not forward_input_gradient:
                dx = tf.raw_ops.Conv2DBackpropInput(
                    input_sizes=tf.shape(padded), filter=w, out_backprop=dy,
                    strides=(1, *strides, 1), padding="VALID")
                dx = dx[:, pad_h[0]:pad_h[0] + int(x.shape[1]), pad_w[0]:pad_w[0] + int(x.shape[2]), :]
            elif strides == (1, 1) and centred:
                # Stride 1, 'same', a square odd kernel: one 'same' convolution of the reversed kernel.
                flipped = tf.transpose(tf.reverse(w, axis=[0, 1]), [0, 1, 3, 2])
                dx = tf.nn.conv2d(dy, flipped, strides=1, padding="SAME")
            else:
                dx = input_gradient(dy, w, (int(padded.shape[1]), int(padded.shape[2])), strides)
                dx = dx[:, pad_h[0]:pad_h[0] + int(x.shape[1]), pad_w[0]:pad_w[0] + int(x.shape[2]), :]
            if matmul_filter_gradient:
                dw = filter_gradient(padded, dy, w.shape, strides)
            else:
                dw = tf.raw_ops.Conv2DBackpropFilter(
                    input=padded, filter_sizes=tf.shape(w), out_backprop=dy,
                    strides=(1, *strides, 1), padding="VALID")
            return dx, dw

        return y, grad

    # The kernel's value, read here: a variable read inside `convolve` would need its own gradient.
    return convolve(tf.convert_to_tensor(inputs), tf.convert_to_tensor(kernel))


@keras.saving.register_keras_serializable(package="simclr_tf")
class Conv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` with the faster gradient computations of this module where they pay.

    Attributes:
        gradient_plan: the run's `ConvGradients`, set when the encoder is built
            (`use_conv_gradients`), from the strategy's devices; None (default): TensorFlow's
            kernels, the parent's convolution.
        forward_input_gradient: an override for experiments (`experiments/benchmark.py`): the
            input gradient by forward convolutions (`input_gradient`). True: wherever it applies
            (stride 1, a 1x1 kernel, or a strided output of at most `STRIDED_MAX_OUTPUT`
            positions); False: TensorFlow's; None (default): as the plan says.
        matmul_filter_gradient: an override: the kernel gradient by matrix products
            (`filter_gradient`). True: always; False: TensorFlow's; None (default): as the plan says
            (on CPUs, in bfloat16 for kernels larger than 1x1 whose output map has at most
            `SMALL_MAP_POSITIONS` positions; a 3-channel stem keeps TensorFlow's, by products
            ResNet-50 at 224 px ran 2.50 images/s against 3.22).
        Both False give the parent's convolution (the export traces with it: a SavedModel stores
        no Python gradient function).

    Args:
        **kwargs: as `keras.layers.Conv2D`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gradient_plan: ConvGradients | None = None
        self.forward_input_gradient: bool | None = None
        self.matmul_filter_gradient: bool | None = None

    def _applies(self, inputs) -> bool:
        return (keras.backend.backend() == "tensorflow" and self.data_format == "channels_last"
                and self.groups == 1 and tuple(self.dilation_rate) == (1, 1)
                and len(inputs.shape) == 4 and None not in tuple(inputs.shape[1:]))

    def _gradient_paths(self, inputs) -> tuple[bool, bool]:
        """(input gradient by forward convolutions, kernel gradient by matrix products) for `inputs`."""
        if not self._applies(inputs):
            return False, False
        pointwise = tuple(self.kernel_size) == (1, 1)
        strided = tuple(self.strides) != (1, 1)
        positions = self._output_positions(inputs)
        plan = self.gradient_plan
        forward = self.forward_input_gradient
        if forward is None:
            forward = plan is not None and plan.forward_input
        forward = forward and (not strided or pointwise or positions <= STRIDED_MAX_OUTPUT)
        matmul = self.matmul_filter_gradient
        if matmul is None:
            small = not pointwise and positions <= SMALL_MAP_POSITIONS
            matmul = plan is not None and plan.matmul_small_maps and small and inputs.dtype == tf.bfloat16
        return bool(forward), bool(matmul)

    def _output_positions(self, inputs) -> int:
        sizes = []
        for size, kernel, stride in zip(inputs.shape[1:3], self.kernel_size, self.strides, strict=True):
            sizes.append(-(-size // stride) if self.padding == "same" else (size - kernel) // stride + 1)
        return sizes[0] * sizes[1]

    def convolution_op(self, inputs, kernel):
        forward, matmul = self._gradient_paths(inputs)
        if not (forward or matmul):
            return super().convolution_op(inputs, kernel)
        return conv2d(inputs, kernel, self.strides, self.padding,
                      forward_input_gradient=forward, matmul_filter_gradient=matmul)
