"""Export of the trained encoder: a TF-Hub-style SavedModel and a Keras 3 `.keras` file.

The SavedModel follows TF Hub's reusable SavedModel convention, so that it can be used for
inference *and* fine-tuned by downstream code:

- `module(images, training=False)`: images of any size, shape `(batch_size, height, width, 3)`,
  float32 in [0, 1] (the encoder's own input), to a dict of float32 features: `initial_conv`,
  `initial_max_pool`, `block_group1` ... `block_group4`, `final_avg_pool` and, when exported with
  the heads, `proj_head_input`, `proj_head_output` and `logits_sup` (with a supervised head).
  `training=True` runs batch norm on the batch statistics and updates its moving averages, as
  fine-tuning needs. The original SimCLR modules were called as `module(images, trainable=...)`;
  that spelling works too (`trainable=True` means `training=True`). The images may also come as
  users have them, converted inside the graph as the training pipeline does
  (`simclr_tf.models.images`): uint8 (0-255, divided by 255), uint16, float16 / bfloat16 /
  float64 (cast), 1 channel (repeated to RGB) or 4 (alpha dropped), and a single image
  `(height, width, channels)`, which gives features without the batch dimension. Another rank or
  channel count fails with a message saying what is accepted.
- `module.variables`, `module.trainable_variables` and `module.regularization_losses` (empty:
  weight decay is the fine-tuner's choice), which `hub.KerasLayer(..., trainable=True)` uses.
- The signature `serving_default` (inference) returning the same dict, for TF Serving.
- The endpoints `call_inference` and `call_training` for Keras 3's
  `keras.layers.TFSMLayer(path, call_endpoint="call_inference",
  call_training_endpoint="call_training")`.

Next to it, `encoder.keras` holds the encoder as a Keras 3 model that
`keras.saving.load_model` reads back (safe mode on: it contains no Python code), taking images in
the same forms as the SavedModel (`simclr_tf.models.images.ImageEncoder`; `import simclr_tf`
first: it registers the classes with Keras). `encoder_plain.keras` holds the bare encoder, for
plain Keras 3 without `simclr_tf`, for every architecture: it names Keras classes only. Its batch
norms and convolutions are Keras' own `BatchNormalization` and `Conv2D` (the fused batch norm and
the convolution with a fast input gradient that the encoder trains with are implementation
details), SimCLRv2's selective kernels and squeeze-excitation layers are small functional models
of Keras layers computing the same (the outputs agree to 1e-6, `tests/test_export.py`), and it
takes float images `(batch_size, height, width, 3)` in [0, 1] only (a plain Keras model casts
uint8 to float without scaling it). `encoder.keras` keeps our layers (their gradient paths are
chosen again where it is fine-tuned: `simclr_tf.models.conv.use_conv_gradients`).

Loading the SavedModel logs no warning, and gradients flow through it: the exported graphs are
traced without `global_bn`'s all-reduce (on one replica a sum of one value) and with TensorFlow's
own convolution gradient: a custom gradient TensorFlow cannot save ("Will likely fail if a
gradient is requested").

Exports go to `<export_dir>/<global step>/`, written to a temporary directory first and renamed
into place, so a reader never sees half an export; the newest `keep` exports are kept. Each export
holds a marker file (`simclr_tf_export.json`): pruning and replacing touch only folders with it,
never the user's own numbered folders, and never the export just written. A failed export (a full
disk) leaves nothing behind.

Command line (`export/__main__.py`), from the latest (or a given) checkpoint of a run:

    python -m simclr_tf.export --model_dir runs/digits_quickstart [--checkpoint PATH] [--no_heads]

This module imports nothing of the training wiring: training calls it, never the reverse.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil

import keras
import tensorflow as tf

from simclr_tf import interrupts
from simclr_tf.models.batch_norm import BatchNormalization
from simclr_tf.models.conv import Conv2D
from simclr_tf.models.images import (
    FLOAT_DTYPES,
    INTEGER_WHITE,
    ImageEncoder,
    images_error,
    standardize_images,
)
from simclr_tf.models.layers import SelectiveKernelConv2D, SqueezeExcitation
from simclr_tf.models.simclr import encoder_features

KERAS_FILE = "encoder.keras"
PLAIN_KERAS_FILE = "encoder_plain.keras"
EXPORT_MARKER = "simclr_tf_export.json"
_IMAGES_SPEC = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")
# Any rank, channel count and value range users pass (checked and converted inside the graph).
_ANY_IMAGES_SPECS = tuple(tf.TensorSpec(None, tf.as_dtype(dtype), name="images")
                          for dtype in (*FLOAT_DTYPES, *INTEGER_WHITE))


def _standardize_in_graph(images):
    """`standardize_images` inside the SavedModel's graph, also for a rank or channel count known
    only when the function runs; returns the float32 batch and `single` (a bool, or a bool tensor).
    """
    if images.shape.rank is not None and images.shape[-1] is not None:
        return standardize_images(images)  # known now: checked now, static shapes kept
    dtype = images.dtype.name
    if dtype not in INTEGER_WHITE and dtype not in FLOAT_DTYPES:
        raise images_error(f"the dtype {dtype} is none of these", f"dtype {dtype}")
    shape = tf.shape(images)
    rank = tf.size(shape)
    channels = tf.concat([[0], shape], 0)[-1]  # 0 for a scalar
    accepted = tf.logical_and(tf.logical_or(tf.equal(rank, 3), tf.equal(rank, 4)),
                              tf.reduce_any(tf.equal(channels, [1, 3, 4])))
    check = tf.debugging.Assert(accepted, [
        "The encoder takes images of shape (batch_size, height, width, channels) or (height, width, "
        "channels), with 1 (grayscale), 3 (RGB) or 4 (RGBA) channels. Received shape:", shape],
        summarize=8)
    with tf.control_dependencies([check]):  # padded: any rank gets this far, to the check
        batch = tf.reshape(images, tf.concat([[-1], tf.concat([[1, 1, 1], shape], 0)[-3:]], 0))
    batch = tf.cast(batch, tf.float32)
    if dtype in INTEGER_WHITE:
        batch = batch / INTEGER_WHITE[dtype]
    batch = tf.cond(tf.equal(channels, 1), lambda: tf.tile(batch, [1, 1, 1, 3]), lambda: batch[..., :3])
    return tf.ensure_shape(batch, [None, None, None, 3]), tf.equal(rank, 3)


@contextlib.contextmanager
def _traceable_for_export(parts):
    """Layers traced for the export without a Python gradient function of ours.

    A SavedModel cannot store a Python gradient function: loading one with such functions printed
    "Will likely fail if a gradient is requested" for each (gradients worked). So the export traces
    the batch norms of `global_bn` without their cross-replica all-reduce (an identity with a custom
    gradient; a saved graph runs on one replica, where it sums one value), and `simclr_tf`'s
    `Conv2D` with TensorFlow's own gradient. The outputs are the same either way.
    """
    flat = [layer for part in parts if part is not None for layer in part._flatten_layers()]
    norms = [layer for layer in flat
             if isinstance(layer, keras.layers.BatchNormalization) and layer.synchronized]
    convs = {layer: (layer.forward_input_gradient, layer.matmul_filter_gradient)
             for layer in flat if isinstance(layer, Conv2D)}
    for layer in norms:
        layer.synchronized = False
    for layer in convs:
        layer.forward_input_gradient = layer.matmul_filter_gradient = False
    try:
        yield
    finally:
        for layer in norms:
            layer.synchronized = True
        for layer, (forward, matmul) in convs.items():
            layer.forward_input_gradient, layer.matmul_filter_gradient = forward, matmul


def _tf_variables(variables):
    """The tf.Variables under Keras 3 variables (a SavedModel stores tf.Variables)."""
    return [getattr(v, "value", v) for v in variables]


def _dedupe(variables):
    seen, unique = set(), []
    for v in variables:
        if id(v) not in seen:
            seen.add(id(v))
            unique.append(v)
    return unique


def build_export_module(model, *, include_heads=True, image_size=None):
    """A trackable object with the reusable-SavedModel API around a SimCLR model's parts.

    Args:
        model: a `SimCLRModel` (or any object with `encoder`, `projection_head`,
            `supervised_head`, `train_mode` and `ft_proj_selector`), built.
        include_heads: bool. Also return the projection head's and the supervised head's
            outputs. Defaults to `True`.
        image_size: int or None. Side of a probe image (for the list of feature names); an
            encoder with a fixed input size needs it. Defaults to 32.

    Returns:
        A `tf.__internal__.tracking.AutoTrackable` ready for `tf.saved_model.save`.
    """
    encoder = model.encoder
    projection_head = model.projection_head if include_heads else None
    supervised_head = getattr(model, "supervised_head", None) if include_heads else None
    finetuned = getattr(model, "train_mode", "pretrain") == "finetune"
    selector = getattr(model, "ft_proj_selector", 0)

    def features(images, training):
        # Traced here and again by tf.saved_model.save: each time without our gradient functions.
        with _traceable_for_export([encoder, projection_head, supervised_head]):
            outputs = encoder_features(encoder, images, training=training)
            if projection_head is not None:
                h = outputs["final_avg_pool"]
                projection, hiddens = projection_head(h, training=training)
                outputs["proj_head_input"] = h
                outputs["proj_head_output"] = projection
                if supervised_head is not None:
                    head_input = hiddens[selector] if finetuned else h
                    outputs["logits_sup"] = supervised_head(head_input, training=training)
        return {name: tf.cast(value, tf.float32) for name, value in outputs.items()}

    # The two graphs of the model (inference, training) on the images it takes; every other input
    # form is turned into these by a small function that calls them, so each is saved once.
    call_inference = tf.function(lambda images: features(images, training=False), autograph=False,
                                 input_signature=[_IMAGES_SPEC])
    call_training = tf.function(lambda images: features(images, training=True), autograph=False,
                                input_signature=[_IMAGES_SPEC])

    @tf.function(autograph=False)  # plain Python control flow on Python arguments: nothing to convert
    def call(images, training=False, trainable=None):
        if trainable is not None:  # the original SimCLR modules' spelling
            training = bool(trainable) or bool(training)
        batch, single = _standardize_in_graph(images)
        outputs = (call_training if training else call_inference)(batch)
        if single is True:
            return {name: value[0] for name, value in outputs.items()}
        if single is not False:  # known only when the function runs: one image or a batch
            drop = tf.cast(single, tf.int32)
            return {name: tf.reshape(value, tf.shape(value)[drop:]) for name, value in outputs.items()}
        return outputs

    # Trace every Python-argument combination a caller may use, for the images the model takes
    # and for any accepted form, so the loaded function dispatches to a saved graph whichever way
    # it is called.
    for spec in (_IMAGES_SPEC, *_ANY_IMAGES_SPECS):
        for training in (False, True):
            call.get_concrete_function(spec, training=training)
    for trainable in (False, True):  # the original's spelling, for the images it took
        call.get_concrete_function(_IMAGES_SPEC, trainable=trainable)
        call.get_concrete_function(_IMAGES_SPEC, training=False, trainable=trainable)

    parts = [encoder] + [p for p in (projection_head, supervised_head) if p is not None]
    all_variables = _dedupe(v for part in parts for v in part.weights)
    trainable = _dedupe(v for part in parts for v in part.trainable_weights)
    trainable_ids = {id(v) for v in trainable}

    module = tf.__internal__.tracking.AutoTrackable()
    module.variables = _tf_variables(all_variables)
    module.trainable_variables = _tf_variables(trainable)
    module.non_trainable_variables = _tf_variables(v for v in all_variables if id(v) not in trainable_ids)
    module.regularization_losses = []
    module.__call__ = call
    module.call_inference = call_inference
    module.call_training = call_training
    probe = int(image_size or 32)
    module.feature_names = tf.constant(sorted(features(tf.zeros([1, probe, probe, 3]), False)))
    return module


def export_model(model, export_dir, *, step, keep=5, image_size=None, include_heads=True):
    """Writes `<export_dir>/<step>/` (SavedModel + `encoder.keras`) and prunes old exports.

    Args:
        model: the built `SimCLRModel` to export.
        export_dir: str. Directory holding one sub-directory per exported step.
        step: int. The global step, used as the sub-directory name.
        keep: int. How many exports to keep (newest first); 0 or less keeps all. Defaults to `5`.
        image_size: int or None. Recorded for users (the module takes any size).
        include_heads: bool. Export the heads' outputs too. Defaults to `True`.

    Returns:
        dict with `saved_model` (the directory) and `keras_file` (the `.keras` path).
    """
    os.makedirs(export_dir, exist_ok=True)
    final = os.path.join(export_dir, str(int(step)))
    if os.path.lexists(final) and not is_export(final):
        raise FileExistsError(
            f"Not exporting step {int(step)}: {final} exists and is not a simclr_tf export (it has no "
            f"{EXPORT_MARKER}), and nothing of yours is ever replaced. Pass another --export_dir "
            "(an empty or new folder), or move that folder away."
        )
    tmp = os.path.join(export_dir, f".tmp-{int(step)}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        module = build_export_module(model, include_heads=include_heads, image_size=image_size)
        serving = module.call_inference.get_concrete_function()
        tf.saved_model.save(module, tmp, signatures={"serving_default": serving})
        ImageEncoder(with_keras_batch_norm(model.encoder)).save(os.path.join(tmp, KERAS_FILE))
        with_keras_batch_norm(model.encoder, convolutions=True).save(os.path.join(tmp, PLAIN_KERAS_FILE))
        if image_size:
            with open(os.path.join(tmp, "image_size.txt"), "w", encoding="utf-8") as f:
                f.write(f"{int(image_size)}\n")
        with open(os.path.join(tmp, EXPORT_MARKER), "w", encoding="utf-8") as f:
            json.dump({"step": int(step), "include_heads": bool(include_heads)}, f)
            f.write("\n")
        interrupts.check()  # a signal whose exception TensorFlow lost while saving: not published
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written is kept
        if _disk_full(error):
            raise OSError(
                f"No space left on the device of {export_dir} while exporting step {int(step)}: "
                "nothing was written there (the partial export was removed). Free some space, or "
                "pass another --export_dir, and export again."
            ) from None
        raise

    if os.path.exists(final):  # an earlier export of this step (marked as ours): replaced
        shutil.rmtree(final)
    os.replace(tmp, final)
    _prune(export_dir, keep, written=final)
    return {"saved_model": final, "keras_file": os.path.join(final, KERAS_FILE),
            "plain_keras_file": os.path.join(final, PLAIN_KERAS_FILE)}


def is_export(path):
    """Whether `path` is an export written by `export_model` (it holds the marker file)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, EXPORT_MARKER))


def _disk_full(error):
    text = str(error)
    return getattr(error, "errno", None) == 28 or "No space left on device" in text


def with_keras_batch_norm(encoder, convolutions: bool = False):
    """The encoder with Keras' own `BatchNormalization` in place of `simclr_tf`'s fused subclass.

    Layers other than the batch norms are shared with `encoder`, not copied (no second set of
    weights for a large model); each batch norm becomes a Keras layer of the same config holding a
    copy of its four weights. With `convolutions`, the result holds Keras classes only, so it
    loads with plain Keras 3: `simclr_tf`'s `Conv2D` (its fast input gradient) becomes Keras' own
    the same way, and each selective kernel and squeeze-excitation layer a small functional model
    of Keras layers computing the same (`_plain_selective_kernel`, `_plain_squeeze_excitation`).
    An encoder without our layers (a user's encoder) is returned as it is.
    """
    swapped = (BatchNormalization, Conv2D, SelectiveKernelConv2D, SqueezeExcitation) if convolutions \
        else (BatchNormalization,)
    if not any(type(layer) in swapped for layer in encoder._flatten_layers()):
        return encoder

    def clone(layer):
        if type(layer) not in swapped:
            return layer
        if type(layer) is SelectiveKernelConv2D:
            return _plain_selective_kernel(layer)
        if type(layer) is SqueezeExcitation:
            return _plain_squeeze_excitation(layer)
        return _plain_copy(layer)

    return keras.models.clone_model(encoder, clone_function=clone)


def _plain_copy(layer, weights=None, **changes):
    """Keras' own `Conv2D` or `BatchNormalization` with `layer`'s config (and `changes`) and weights."""
    conv = isinstance(layer, keras.layers.Conv2D)
    plain = (keras.layers.Conv2D if conv else keras.layers.BatchNormalization).from_config(
        {**layer.get_config(), **changes})
    weights = layer.get_weights() if weights is None else weights
    shape = list(layer.get_build_config()["input_shape"])
    if not conv:
        shape[-1] = int(weights[0].shape[0])  # a half of the batch norm's channels
    plain.build(shape)
    plain.set_weights(weights)
    return plain


def _plain_selective_kernel(layer):
    """`SelectiveKernelConv2D` as a functional model of Keras layers, with its weights.

    Its one convolution of `2 * filters` outputs (and its batch norm) becomes two of `filters`,
    one per stream, holding the halves of the kernel (and of the batch-norm weights): per channel,
    the same arithmetic as convolving once and splitting. The softmax over the two streams' logits
    is `sigmoid(a - b)` and `sigmoid(b - a)`, equal to it up to float rounding.
    """
    filters = layer.filters
    channels = int(layer.conv.kernel.shape[2])
    images = keras.Input((None, None, channels), dtype=layer.compute_dtype, name=f"{layer.name}_input")
    x = images
    if layer.pad is not None:
        x = keras.layers.ZeroPadding2D.from_config(layer.pad.get_config())(x)

    def halves(source, name, x):
        """Two copies of `source` (Conv2D or batch norm), each with half of its output channels."""
        outputs = []
        for index, part in enumerate("ab"):
            part_slice = slice(index * filters, (index + 1) * filters)
            changes = {"name": f"{name}_{part}"}
            if isinstance(source, keras.layers.Conv2D):
                changes["filters"] = filters
                weights = [w[..., part_slice] for w in source.get_weights()]
            else:
                weights = [w[part_slice] for w in source.get_weights()]
            copy = _plain_copy(source, weights, **changes)
            outputs.append(copy(x[index] if isinstance(x, list) else x))
        return outputs

    streams = halves(layer.conv, "conv", x)
    streams = halves(layer.batch_norm, "batch_norm", streams)
    stream_a, stream_b = (keras.layers.ReLU(name=f"relu_{part}")(stream)
                          for part, stream in zip("ab", streams, strict=True))
    descriptor = keras.layers.Add(name="sum")([stream_a, stream_b])
    descriptor = keras.layers.GlobalAveragePooling2D(keepdims=True, name="mean")(descriptor)  # (B, 1, 1, F)
    descriptor = _plain_copy(layer.reduce_conv)(descriptor)
    descriptor = _plain_copy(layer.reduce_batch_norm)(descriptor)
    descriptor = keras.layers.ReLU(name="reduce_relu")(descriptor)
    logits_a, logits_b = halves(layer.expand_conv, "expand_conv", descriptor)
    weight_a = keras.layers.Activation("sigmoid", name="weight_a")(
        keras.layers.Subtract(name="logits_a_minus_b")([logits_a, logits_b]))
    weight_b = keras.layers.Activation("sigmoid", name="weight_b")(
        keras.layers.Subtract(name="logits_b_minus_a")([logits_b, logits_a]))
    mixed = keras.layers.Add(name="mix")([keras.layers.Multiply(name="weighted_a")([stream_a, weight_a]),
                                          keras.layers.Multiply(name="weighted_b")([stream_b, weight_b])])
    return keras.Model(images, mixed, name=layer.name)


def _plain_squeeze_excitation(layer):
    """`SqueezeExcitation` as a functional model of Keras layers, with its weights."""
    channels = int(layer.expand_conv.filters)
    inputs = keras.Input((None, None, channels), dtype=layer.compute_dtype, name=f"{layer.name}_input")
    gate = keras.layers.GlobalAveragePooling2D(keepdims=True, name="mean")(inputs)  # (B, 1, 1, C)
    gate = keras.layers.ReLU(name="reduce_relu")(_plain_copy(layer.reduce_conv)(gate))
    gate = keras.layers.Activation("sigmoid", name="gate")(_plain_copy(layer.expand_conv)(gate))
    return keras.Model(inputs, keras.layers.Multiply(name="excite")([gate, inputs]), name=layer.name)


def _exported_steps(export_dir):
    """Steps of the simclr_tf exports in `export_dir` (numbered folders with the marker only)."""
    return sorted(int(name) for name in os.listdir(export_dir)
                  if name.isdigit() and is_export(os.path.join(export_dir, name)))


def _prune(export_dir, keep, written=None):
    """Removes marked exports beyond the newest `keep`; never `written`, never unmarked folders."""
    if keep <= 0:
        return
    for old in _exported_steps(export_dir)[:-keep]:
        path = os.path.join(export_dir, str(old))
        if written is None or os.path.abspath(path) != os.path.abspath(written):
            shutil.rmtree(path, ignore_errors=True)


def latest_export(export_dir):
    """The newest `<export_dir>/<step>` directory, or None."""
    if not os.path.isdir(export_dir):
        return None
    steps = sorted(int(name) for name in os.listdir(export_dir) if name.isdigit()
                   and os.path.isfile(os.path.join(export_dir, name, "saved_model.pb")))
    return os.path.join(export_dir, str(steps[-1])) if steps else None
