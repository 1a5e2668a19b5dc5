"""2-D convolution whose gradients avoid TensorFlow's slow (and, on one CPU, unsafe) CPU kernels.

The input gradient can run as forward convolutions (`input_gradient`), the kernel gradient as
matrix products (`filter_gradient`); `Conv2D` picks per layer, by machine, shape and precision.

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
(bfloat16; float32 114 against 98). So the path is taken where `default_forward_input_gradient()`
says: on a CPU-only machine whose CPU lacks `avx512f` (e.g. AVX2 only). Two exceptions take it on
every machine. A strided 1x1 convolution (ResNet's projection shortcut): its input gradient is one
1x1 convolution scattered to every s-th position, as fast as TensorFlow's (3.3 ms either way for
the quickstart's largest). And inputs whose channels are not a multiple of 16: on that AVX-512
machine TensorFlow 2.21's CPU input gradient corrupts the heap for few channels (a 1x1 stride-2
convolution of a 16x16 input with 4 or 8 channels aborts the process with "free(): invalid size";
strided 3x3 ones with 4 channels crashed later, unrelated ops; with 16 or more channels it ran).
Its kernel gradient `Conv2DBackpropFilter` has the same fault for the strided 1x1 with 4 channels,
so those kernel gradients are matrix products (`filter_gradient`), as for small maps (below).

`Conv2D` is a drop-in subclass of `keras.layers.Conv2D` (same arguments, variables, checkpoints and
saved config) that takes these paths for what the ResNet uses: 2-D, channels-last, no dilation or
groups, with the TensorFlow backend (the input gradient: stride 1, a 1x1 kernel, or a small strided
output, `STRIDED_MAX_OUTPUT`); anything else is the parent's code. The gradients agree with a
float64 NumPy reference up to float32 rounding (`tests/test_conv.py`).
"""

from __future__ import annotations

import functools

import keras
import tensorflow as tf

from simclr_tf.precision import cpu_flags

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

# `Conv2D.forward_input_gradient` choices: `auto` (None: the machine's default, see `Conv2D`),
# `forward` (True), `native` (False).
INPUT_GRADIENTS = ("auto", "forward", "native")
# `Conv2D.matmul_filter_gradient` choices: `auto` (None), `matmul` (True), `native` (False).
FILTER_GRADIENTS = ("auto", "matmul", "native")

_READ = object()  # not given: ask the machine


def default_forward_input_gradient(flags=_READ, gpus=None) -> bool:
    """Whether `Conv2D` computes its input gradient by forward convolutions on this machine.

    True on a machine without a visible GPU whose CPU lacks AVX-512 (`avx512f`), where TensorFlow's
    `Conv2DBackpropInput` is slow on small maps; False with AVX-512 (TensorFlow's kernel is as fast or
    faster there, see the module docstring), with a GPU, or where the CPU's flags cannot be read.

    Args:
        flags: the CPU's flags (default: read from the machine, once); None means unknown.
        gpus: whether a GPU is visible (default: asked of TensorFlow).
    """
    if flags is _READ and gpus is None:
        return _machine_forward_input_gradient()
    if gpus is None:
        gpus = bool(tf.config.list_physical_devices("GPU"))
    if flags is _READ:
        flags = cpu_flags()
    return not gpus and flags is not None and "avx512f" not in flags


@functools.lru_cache(maxsize=1)
def _machine_forward_input_gradient() -> bool:
    return default_forward_input_gradient(cpu_flags(), bool(tf.config.list_physical_devices("GPU")))


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
        forward_input_gradient: the input gradient by forward convolutions (`input_gradient`).
            True: wherever it applies (stride 1, a 1x1 kernel, or a strided output of at most
            `STRIDED_MAX_OUTPUT` positions); False: TensorFlow's; None (default): as True where
            `default_forward_input_gradient()` says (CPUs without AVX-512), and on every machine for
            strided 1x1 kernels and for inputs whose channels are not a multiple of 16.
        matmul_filter_gradient: the kernel gradient by matrix products (`filter_gradient`).
            True: always; False: TensorFlow's; None (default): in bfloat16 for kernels larger than
            1x1 whose output map has at most `SMALL_MAP_POSITIONS` positions; in any precision for
            strided 1x1 kernels whose input channels are not a multiple of 16 (see the module
            docstring; a 3-channel stem keeps TensorFlow's, by products ResNet-50 at 224 px ran
            2.50 images/s against 3.22).
        Both False give the parent's convolution (the export traces with it: a SavedModel stores
        no Python gradient function).

    Args:
        **kwargs: as `keras.layers.Conv2D`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
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
        few_channels = int(inputs.shape[-1]) % 16 != 0  # TensorFlow's strided gradients unsafe
        forward = self.forward_input_gradient
        if forward is None:
            forward = default_forward_input_gradient() or (pointwise and strided) or few_channels
        forward = forward and (not strided or pointwise or positions <= STRIDED_MAX_OUTPUT)
        matmul = self.matmul_filter_gradient
        if matmul is None:
            small = not pointwise and positions <= SMALL_MAP_POSITIONS
            matmul = (small and inputs.dtype == tf.bfloat16) or (pointwise and strided and few_channels)
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
