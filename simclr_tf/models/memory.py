"""The memory buffer of SimCLRv2 (after MoCo): a momentum network and a FIFO queue of its keys.

SimCLRv2 adds to SimCLR's in-batch negatives the projections of past batches, kept in a queue of
`size` keys. Those keys come from a momentum copy of the encoder and projection head whose weights
follow the online network's slowly (an exponential moving average, rate `momentum`, 0.999 in MoCo
and SimCLRv2), so keys a few hundred steps old still resemble what the online network would give.

Decisions, and why:

- The momentum network computes keys in **training mode**, as MoCo's key encoder does: its batch
  norms normalise with the statistics of the key batch (across replicas with `global_bn`, which
  plays the part of MoCo's shuffling BN), not with moving statistics that lag behind. Its weights
  are excluded from the optimizer (marked non-trainable, so neither `trainable_variables`, LARS
  nor the weight decay see them), and its forward pass runs outside the gradient tape.
- After every optimizer step every momentum weight, batch-norm moving statistics included, becomes
  `m * momentum_weight + (1 - m) * online_weight` (`update`). The moving statistics of the copy
  are never used for keys (training mode); averaging them too keeps the copy a whole network.
- The momentum network starts equal to the online one: `copy_weights` when the model is built, or,
  where that copy was dropped (Keras builds a model for `fit` in a stateless scope, which discards
  assignments), at the first train step (`copy_once`, guarded by the `copied` variable).
- The keys of a step are all-gathered from every replica (view-1 keys of the global batch, then
  view-2 keys) and written at the pointer, oldest entries overwritten first, wrapping around the
  end of the queue: any `size` works, also one that is no multiple of the global batch. A step
  with more keys than `size` keeps its newest `size`.
- Entries not yet written are masked out of the loss (`mask`): the first steps use the filled
  part only, so nothing has to be filled before training starts.
- The queue, its pointer, its fill count and the momentum network are variables of the model:
  checkpoints hold them, and a resumed run continues exactly. Exports hold the online encoder
  only.

Cost: one more forward pass (no backward) of encoder and head per step (36 steps of the quickstart:
153 s with 4096 keys against 110 s without, 1.4x), plus `size x proj_out_dim` floats and a matrix
product of the queries with the queue.

References:
    - [Chen et al., 2020. Big Self-Supervised Models are Strong Semi-Supervised
      Learners](https://arxiv.org/abs/2006.10029) (SimCLRv2), section 2.
    - [He et al., 2019. Momentum Contrast for Unsupervised Visual Representation
      Learning](https://arxiv.org/abs/1911.05722) (MoCo), Algorithm 1.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from simclr_tf.models.features import FEATURE, encoder_features
from simclr_tf.validation import check_number, check_positive_int


def check_memory_buffer(size, momentum) -> None:
    """Checks the buffer's `size` (a positive integer) and `momentum` (in [0, 1)).

    Raises:
        ValueError: naming the argument, what is allowed and the received value.
    """
    check_positive_int("memory_buffer_size", size,
                       hint="It counts the keys in the queue; 0 (the default) means no memory buffer.")
    check_number("memory_momentum", momentum, low=0, high=1, high_inclusive=False,
                 hint="MoCo and SimCLRv2 use 0.999.")


@keras.saving.register_keras_serializable(package="simclr_tf")
class MemoryBuffer(keras.layers.Layer):
    """A momentum copy of encoder and projection head, and a FIFO queue of its keys.

    `SimCLRModel` makes one (copies of its encoder and projection head) when its loss config has
    `memory_buffer_size > 0`, and drives it in its train step:
    keys of the step's views from the momentum network (before the gradient tape), the loss with
    the queue as extra negatives (`queue`, `mask`), then after the optimizer step `update` (the
    moving average) and `enqueue` (the keys of the step).

    Args:
        encoder: `keras.layers.Layer`. A fresh encoder of the online encoder's architecture.
        projection_head: `keras.layers.Layer`. A fresh projection head like the online one.
        size: int. Keys the queue holds.
        momentum: float in [0, 1). Rate `m` of the moving average. Defaults to `0.999`.
        **kwargs: base layer arguments (`name`, ...).

    Example:
        ```python
        model = SimCLRModel(encoder, loss_config=LossConfig(memory_buffer_size=4096))  # makes one
        model.memory.queue, model.memory.pointer, model.memory.filled
        ```
    """

    def __init__(self, encoder, projection_head, size, momentum=0.999, **kwargs):
        super().__init__(**kwargs)
        check_memory_buffer(size, momentum)
        size = int(size)
        self.encoder = encoder
        self.projection_head = projection_head
        self.size = size
        self.momentum = float(momentum)

    def build(self, input_shape):
        """Creates the queue for keys of `input_shape[-1]` dimensions, its pointer and fill count."""
        dim = int(input_shape[-1])
        # The same keys on every replica (gathered before they are written): each replica updates
        # its own copy with the same values, as batch norm updates its moving statistics.
        self.queue = self.add_weight(shape=(self.size, dim), initializer="zeros", dtype="float32",
                                     trainable=False, autocast=False, name="queue")
        self.pointer = self.add_weight(shape=(), initializer="zeros", dtype="int32", trainable=False,
                                       autocast=False, name="pointer")  # the next entry written
        self.filled = self.add_weight(shape=(), initializer="zeros", dtype="int32", trainable=False,
                                      autocast=False, name="filled")  # entries holding a key
        self.copied = self.add_weight(shape=(), initializer="zeros", dtype="int32", trainable=False,
                                      autocast=False, name="copied")  # 1 once equal to the online network
        self.built = True

    def build_like(self, encoder, projection_head, image_shape) -> None:
        """Builds the momentum network for images of `image_shape`, equal to the online `encoder`
        and `projection_head`, and the queue for keys of the projection head's size."""
        images = keras.KerasTensor(tuple(image_shape))
        keys, _ = self.projection_head(encoder_features(self.encoder, images)[FEATURE])
        self.build(keys.shape)
        self.copy_weights(encoder, projection_head)

    def keys(self, views, normalize=True):
        """The momentum network's keys of both views: training mode, no gradient.

        Args:
            views: `(view_1, view_2)`, image batches of shape `(N, H, W, 3)`.
            normalize: bool. L2-normalise the keys, as NT-Xent does the projections
                (`hidden_norm`). Defaults to `True`.

        Returns:
            `(keys_1, keys_2)`, float32 of shape `(N, D)` each.
        """
        view_1, view_2 = views
        batch_size = tf.shape(view_1)[0]
        images = tf.concat([view_1, view_2], axis=0)  # (2N, H, W, 3): one pass, as the online one
        h = encoder_features(self.encoder, images, training=True)[FEATURE]
        keys, _ = self.projection_head(h, training=True)
        keys = tf.stop_gradient(tf.cast(keys, tf.float32))  # (2N, D)
        if normalize:
            keys = tf.math.l2_normalize(keys, axis=-1, epsilon=1e-12)
        return keys[:batch_size], keys[batch_size:]

    @property
    def network_weights(self) -> list:
        """The momentum network's weights, in the order of `online_weights(encoder, head)`."""
        return online_weights(self.encoder, self.projection_head)

    def copy_weights(self, encoder, projection_head) -> None:
        """Sets the momentum network equal to the online `encoder` and `projection_head`, and keeps
        its weights out of training (non-trainable: no optimizer, no weight decay)."""
        targets = self.network_weights
        sources = online_weights(encoder, projection_head)
        shapes = [tuple(v.shape) for v in targets], [tuple(v.shape) for v in sources]
        if shapes[0] != shapes[1]:
            raise ValueError(
                "The momentum copy of the encoder and projection head does not have the online "
                f"network's weights ({len(shapes[0])} weights against {len(shapes[1])}). The encoder "
                "must be rebuildable from its config (keras.models.clone_model)."
            )
        for target, source in zip(targets, sources, strict=True):
            target.assign(source)
            target.trainable = False  # the layers stay trainable, so batch norm runs in training mode
        self.copied.assign(1)

    def copy_once(self, sources) -> None:
        """Sets the momentum network equal to the online weights `sources` unless it was already
        (`copied`); for the first train step of a model that `fit` built."""

        def copy():
            for target, source in zip(self.network_weights, sources, strict=True):
                target.assign(source)
            self.copied.assign(1)
            return tf.constant(True)

        tf.cond(self.copied > 0, lambda: tf.constant(False), copy)

    def update(self, sources) -> None:
        """One moving-average step: `w <- m * w + (1 - m) * online` for every momentum weight.

        Args:
            sources: list of variables. The online weights, as `online_weights` lists them.
        """
        m = self.momentum
        for target, source in zip(self.network_weights, sources, strict=True):
            value = m * target + (1.0 - m) * tf.cast(source, target.dtype)
            target.assign(tf.cast(value, target.dtype))

    def mask(self):
        """`(size,)` bool: the entries that hold a key."""
        return tf.range(self.size) < self.filled

    def enqueue(self, *keys) -> None:
        """Writes the keys of a step at the pointer, oldest entries first overwritten (FIFO).

        Args:
            *keys: float tensors of shape `(N, D)`, this replica's keys (e.g. of view 1, then of
                view 2). Under a strategy each is all-gathered from every replica first, so every
                replica writes the same `N_global` keys of each, in the global batch's order.
        """
        context = tf.distribute.get_replica_context()
        gather = context is not None and context.num_replicas_in_sync > 1
        keys = [tf.cast(k, tf.float32) for k in keys]
        if gather:
            keys = [context.all_gather(k, axis=0) for k in keys]  # (N_global, D) each
        keys = tf.stop_gradient(tf.concat(keys, axis=0))[-self.size:]  # (n, D), n <= size
        count = tf.shape(keys)[0]
        slots = (self.pointer + tf.range(count)) % self.size  # (n,), distinct since n <= size
        self.queue.assign(tf.tensor_scatter_nd_update(self.queue, slots[:, tf.newaxis], keys))
        self.pointer.assign((self.pointer + count) % self.size)
        self.filled.assign(tf.minimum(self.filled + count, self.size))

    def get_config(self):
        config = super().get_config()
        config.update({
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "projection_head": keras.saving.serialize_keras_object(self.projection_head),
            "size": self.size,
            "momentum": self.momentum,
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for name in ("encoder", "projection_head"):
            config[name] = keras.saving.deserialize_keras_object(config[name])
        return cls(**config)


def online_weights(encoder, projection_head) -> list:
    """Every weight of `encoder` and `projection_head` (moving statistics too), in a fixed order."""
    return [*encoder.weights, *projection_head.weights]


def copy_of(layer, name=None):
    """A fresh layer of `layer`'s architecture, with its own weights, named `name` if given."""
    if isinstance(layer, keras.Model):
        clone = keras.models.clone_model(layer)
        if name:  # the variable paths of a functional model's layers do not contain its name
            clone.name = name
        return clone
    config = layer.get_config()
    if name:
        config["name"] = name
    return layer.__class__.from_config(config)
