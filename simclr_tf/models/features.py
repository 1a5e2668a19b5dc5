"""The named features of an encoder: what the heads and the momentum network read."""

from __future__ import annotations

from keras import ops

FEATURE = "final_avg_pool"  # the encoder output the heads read


def encoder_features(encoder, images, training=False) -> dict:
    """The named features of `encoder` on `images`: always a dict holding `final_avg_pool`.

    Our ResNet returns such a dict already. Any other encoder may return a feature vector
    `(batch_size, dim)`, which becomes `final_avg_pool`, or a feature map
    `(batch_size, height, width, channels)`, which is average-pooled into it.
    """
    outputs = encoder(images, training=training)
    if isinstance(outputs, dict):
        if FEATURE not in outputs:
            raise ValueError(
                f"An encoder that returns a dict must have a `{FEATURE}` entry (the pooled features "
                f"the heads read). Received keys: {sorted(outputs)}."
            )
        return dict(outputs)
    rank = len(outputs.shape)
    if rank == 4:
        return {FEATURE: ops.mean(outputs, axis=(1, 2))}
    if rank == 2:
        return {FEATURE: outputs}
    raise ValueError(
        "The encoder must map images to a feature vector (batch_size, dim), a feature map "
        "(batch_size, height, width, channels) or a dict with `final_avg_pool`. Received an "
        f"output of shape {tuple(outputs.shape)}."
    )


def image_shape(input_shape) -> tuple:
    """The shape of one image batch, also when given the shapes of two views."""
    if isinstance(input_shape, (tuple, list)) and input_shape and isinstance(input_shape[0], (tuple, list)):
        input_shape = input_shape[0]
    return tuple(input_shape)
