"""What an exported encoder accepts: images as users have them, turned into what the encoder takes.

The encoder itself takes float images in [0, 1] of shape `(batch_size, height, width, 3)` (the
training pipeline's images, no mean/std normalisation). `ImageEncoder`, the model saved as an
export's `encoder.keras`, puts this in front of it, as the SavedModel does inside its graph:

- uint8 images (0-255) are divided by 255, uint16 ones (0-65535) by 65535, as the training pipeline
  converts decoded images; float16 / bfloat16 / float32 / float64 images are taken as values in
  [0, 1] (cast to float32); other dtypes (integers of other widths, bool, strings) are an error;
- 1 channel (grayscale) is repeated to 3, 4 channels (RGBA) lose the alpha channel; other channel
  counts are an error;
- a single image `(height, width, channels)` gives features without the batch dimension
  (`final_avg_pool` of shape `(2048,)` for a ResNet-50); a batch gives batched features.

`ImageEncoder` is registered as `simclr_tf>ImageEncoder`: `import simclr_tf.models.layers` (or
`simclr_tf.export`) before `keras.saving.load_model` of an `encoder.keras`.
"""

from __future__ import annotations

import keras
from keras import ops

# Unsigned integer images and the value of white; floats are taken as [0, 1] already.
INTEGER_WHITE = {"uint8": 255.0, "uint16": 65535.0}
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
CHANNELS = {1: "grayscale, repeated to RGB", 3: "RGB", 4: "RGBA, alpha dropped"}


def images_error(what: str, received) -> ValueError:
    """The one message for images an exported encoder cannot take."""
    return ValueError(
        f"The encoder takes images of shape (batch_size, height, width, channels) or (height, width, "
        f"channels), with 1 (grayscale), 3 (RGB) or 4 (RGBA) channels, as uint8 (0-255), uint16 "
        f"(0-65535) or floats in [0, 1]; {what}. Received: {received}."
    )


def standardize_images(images):
    """Images in any accepted form as float32 `(batch_size, height, width, 3)` in [0, 1].

    Works eagerly, in a `tf.function` and on symbolic Keras tensors; the rank, the channel count
    and the dtype must be known (they are, for arrays and for Keras inputs).

    Args:
        images: an array or tensor of rank 3 or 4 (see the module's docstring).

    Returns:
        `(images, single)`: the float32 batch, and whether the input was one image (rank 3).

    Raises:
        ValueError: another rank, channel count or dtype, saying what is accepted.
    """
    if not (isinstance(images, keras.KerasTensor) or ops.is_tensor(images)):
        images = ops.convert_to_tensor(images)
    dtype = keras.backend.standardize_dtype(images.dtype)
    if dtype not in INTEGER_WHITE and dtype not in FLOAT_DTYPES:
        raise images_error(f"the dtype {dtype} is none of these", f"dtype {dtype}")
    rank = len(images.shape)
    if rank not in (3, 4):
        raise images_error(f"rank {rank} is neither", f"shape {tuple(images.shape)}")
    single = rank == 3
    if single:
        images = ops.expand_dims(images, 0)
    channels = images.shape[-1]
    if channels not in CHANNELS:
        raise images_error(f"{channels} channels are none of these", f"shape {tuple(images.shape)}")
    if dtype in INTEGER_WHITE:
        images = ops.cast(images, "float32") / INTEGER_WHITE[dtype]
    else:
        images = ops.cast(images, "float32")
    if channels == 1:
        images = ops.concatenate([images] * 3, axis=-1)
    elif channels == 4:
        images = images[..., :3]
    return images, single


@keras.saving.register_keras_serializable(package="simclr_tf")
class ImageEncoder(keras.Model):
    """An encoder that takes images as users have them (see the module's docstring).

    Args:
        encoder: keras.Model. Float32 images `(batch_size, height, width, 3)` in [0, 1] to a dict
            of features (or a tensor).
        **kwargs: as `keras.Model`.

    Example:
        ```python
        import simclr_tf.models.layers  # registers the classes an encoder.keras refers to
        encoder = keras.saving.load_model("runs/digits_quickstart/saved_model/300/encoder.keras")
        features = encoder(uint8_photo)["final_avg_pool"]   # (height, width, 3) uint8 -> (512,)
        ```
    """

    def __init__(self, encoder, **kwargs):
        kwargs.setdefault("autocast", False)  # the encoder casts for itself; uint8 must arrive uint8
        super().__init__(**kwargs)
        self.encoder = encoder
        self.built = bool(encoder.built)

    def build(self, input_shape=None):
        self.built = True  # the encoder is built: nothing of its own to create

    def call(self, images, training=None):
        images, single = standardize_images(images)
        outputs = self.encoder(images, training=training)
        if single:
            return keras.tree.map_structure(lambda value: value[0], outputs)
        return outputs

    def compute_output_spec(self, images, training=None):
        return self.call(images, training=training)

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable,
                "encoder": keras.saving.serialize_keras_object(self.encoder)}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        encoder = keras.saving.deserialize_keras_object(config.pop("encoder"), custom_objects=custom_objects)
        return cls(encoder, **config)
