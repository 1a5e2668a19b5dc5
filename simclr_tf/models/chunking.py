"""Exact large batches on one device: a train step in chunks with cached embedding gradients.

NT-Xent needs every embedding of the batch at once, but not every activation: gradient caching
(Gao et al., 2021) splits the encoder's work into chunks of `chunk_size` images of the per-replica
batch and keeps only the embeddings between its passes:

1. embed every chunk outside the gradient tape (its activations are freed after each chunk);
2. compute the contrastive loss over all embeddings of the batch (gathered across replicas as in
   the plain step) and its gradient with respect to each embedding, `g = d loss / d z`;
3. for each chunk, embed it again under the tape and back-propagate its slice of `g`
   (`tape.gradient(z_chunk, variables, output_gradients=g_chunk)`), summing parameter gradients;
4. one optimizer step (in `SimCLRModel.train_step`, as for the plain step).

Both views of an image fall into the same chunk, as on a replica. The loops over chunks are
`tf.while_loop`s (one iteration at a time, so one chunk's activations live at once), not a Python
loop unrolled K times.

What a chunked step equals: the step of K = batch / chunk_size replicas without global batch norm.

- The contrastive loss and its gradient are those of the whole batch (up to float32 round-off).
- Batch norm normalises each chunk with that chunk's statistics (with `global_bn`, the same chunk of
  every replica), as each of K replicas would its own shard.
- The online supervised head's loss is computed per chunk, as a replica computes it (the mean over
  that chunk's labelled images), each weighted 1 / (K * replicas); fine-tuning is plain
  cross-entropy and this is then plain gradient accumulation, also exact.
- The memory buffer's keys come from the momentum network per chunk, and the step's keys enter the
  queue in the order K replicas would write them (view-1 keys of the batch, then view-2 keys).
- Moving statistics (the state a training-mode forward pass updates: every trainable
  `keras.layers.BatchNormalization`'s `moving_mean` and `moving_variance`) change once per step:
  before each chunk of the first pass they are restored to their value before the step, the change
  each chunk makes is summed, and after the step they hold `m0 + mean_k(change_k)`, i.e.
  `d * m0 + (1 - d) * mean_k(batch_statistic_k)`. Keras 3 keeps batch norm's moving statistics as
  mirrored variables without aggregation: under `MirroredStrategy` each replica updates its own
  copy and a checkpoint saves the first replica's. The mean over chunks is the mean of those K
  copies (what tf.keras' MEAN-aggregated moving statistics gave), the best estimate of the
  population statistics a K-replica step has.

Randomness: the second pass must recompute exactly what the first one did, so no layer of the
model may draw random numbers (dropout, noise, random augmentation layers); `check_no_random_layers`
refuses them when the model is built.

Cost: one more forward pass of encoder and heads per step, and memory for one chunk's activations
plus the batch's embeddings, their gradients and one gradient accumulator per trainable variable.

Synchronised batch norm (`global_bn`) across the replicas of a `MirroredStrategy` is a
synchronisation point, which TensorFlow does not allow inside a `tf.while_loop` there (only under
XLA on GPUs); in that case alone the chunks run as a Python loop, each chunk's inputs waiting on the
previous chunk's outputs, so they still run one after another.

References:
    - [Gao et al., 2021. Scaling Deep Contrastive Learning Batch Size under Memory Limited
      Setup](https://arxiv.org/abs/2101.06983) (gradient caching).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from simclr_tf.config import check_chunk_size

# Keras' layers that draw random numbers hold a `SeedGenerator`; these are named in the error.
RANDOM_LAYER_KINDS = ("Dropout", "GaussianNoise", "GaussianDropout", "AlphaDropout", "SpatialDropout",
                      "Random")


def check_no_random_layers(parts, chunk_size: int) -> None:
    """Refuses layers that draw random numbers when the step runs in chunks.

    The chunked step embeds every chunk twice and needs both passes to agree, so dropout, noise and
    random preprocessing layers (any Keras layer holding a `SeedGenerator`) cannot be part of the
    model.

    Args:
        parts: iterable of Keras layers (encoder, heads). None entries are skipped.
        chunk_size: int. The `chunk_size` setting; 0 checks nothing.

    Raises:
        ValueError: naming `chunk_size` and the random layers found.
    """
    if not chunk_size:
        return
    found = []
    for part in parts:
        if part is None:
            continue
        for layer in part._flatten_layers(include_self=True, recursive=True):
            random = getattr(layer, "_seed_generators", None) or type(layer).__name__.startswith(
                RANDOM_LAYER_KINDS)
            if random:
                found.append(f"{layer.name} ({type(layer).__name__})")
    if found:
        raise ValueError(
            f"`chunk_size` ({chunk_size}) embeds each chunk twice and needs both passes to compute the "
            f"same thing, but the model has layers that draw random numbers: {', '.join(found)}. "
            "Remove them (dropout, noise, random augmentation layers) or pass --chunk_size=0.")


def state_variables(model) -> list:
    """The state a training-mode forward pass of `model` updates: batch norm's moving statistics.

    Every trainable `keras.layers.BatchNormalization` (ours subclasses it) of the model, the
    memory buffer's momentum network included; a frozen batch norm runs in inference mode.
    """
    variables, seen = [], set()
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable and layer.built:
            for variable in (layer.moving_mean, layer.moving_variance):
                if id(variable) not in seen:
                    seen.add(id(variable))
                    variables.append(variable)
    return variables


class GradientCache:
    """The chunked train step's gradients: what `SimCLRModel.train_step` calls with `chunk_size > 0`.

    Args:
        chunk_size: int. Images of the per-replica batch per chunk (both views of each).

    Example:
        ```python
        cache = GradientCache(128)
        loss, gradients, keys = cache.gradients(model, data, model.trainable_variables)
        ```
    """

    def __init__(self, chunk_size: int):
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size <= 0:
            raise ValueError(f"`chunk_size` must be a positive integer for a GradientCache. Received: "
                             f"{chunk_size!r}. Use 0 in the config to turn chunking off.")
        self.chunk_size = chunk_size

    def applies(self, images) -> bool:
        """Whether a batch of `images` is split: False when one chunk holds the whole batch (then the
        plain step runs, bit for bit)."""
        batch = images.shape[0]
        if batch is None:
            return True
        check_chunk_size(self.chunk_size, int(batch))
        return int(batch) != self.chunk_size

    def gradients(self, model, data, variables):
        """Loss, gradients and memory keys of one per-replica batch, in chunks.

        Args:
            model: the `SimCLRModel` (built, compiled).
            data: `((view_1, view_2), labels)` in pretraining, `(images, labels)` in fine-tuning.
            variables: list. The variables to differentiate (`model.trainable_variables`).

        Returns:
            `(loss, gradients, keys)`: the step's total loss (contrastive, supervised and weight
            decay), one gradient per variable (None where the loss does not reach it), each already
            divided by the number of replicas and loss-scaled as the plain step's, and the memory
            buffer's `(keys_1, keys_2)` of the batch (None without a buffer).
        """
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        state = state_variables(model)
        snapshot = [tf.identity(tf.convert_to_tensor(v)) for v in state]
        if model.train_mode == "pretrain":
            loss, chunk_gradients, keys, deltas, num_chunks = self._pretrain(
                model, data, variables, replicas, state, snapshot)
        else:
            loss, chunk_gradients, deltas, num_chunks = self._finetune(
                model, data, variables, replicas, state, snapshot)
            keys = None
        # K replicas' moving statistics, averaged: m0 + mean of each chunk's change.
        for variable, start, delta in zip(state, snapshot, deltas, strict=True):
            variable.assign(start + delta / tf.cast(num_chunks, delta.dtype))
        with tf.GradientTape() as tape:  # the weight-decay term, once per step as on each replica
            decay = model._weight_decay()
            scaled = model.optimizer.scale_loss(decay / tf.cast(replicas, decay.dtype))
        decay_gradients = tape.gradient(scaled, variables)
        gradients = []
        for chunk, decay_gradient in zip(chunk_gradients, decay_gradients, strict=True):
            parts = [g for g in (chunk, decay_gradient) if g is not None]
            gradients.append(tf.add_n([tf.convert_to_tensor(g) for g in parts]) if parts else None)
        return loss + decay, gradients, keys

    # --- the two modes ------------------------------------------------------------------------------

    def _pretrain(self, model, data, variables, replicas, state, snapshot):
        (view_1, view_2), labels = data
        m = self.chunk_size
        num_chunks = _num_chunks(view_1, m)
        memory = model.memory
        normalize = model.loss_config.hidden_norm

        chunks_1, chunks_2, label_chunks = (_split(t, m) for t in (view_1, view_2, labels))

        def chunk(chunks, k):
            return chunks[k]  # (M, ...), its shape static

        # Pass 1: every chunk's embeddings, outside the tape; the moving statistics' changes.
        def embed(k, embeddings, keys_1, keys_2, deltas):
            for variable, start in zip(state, snapshot, strict=True):
                variable.assign(start)  # each chunk starts from the step's statistics, as a replica
            _, z = model._embed(tf.concat([chunk(chunks_1, k), chunk(chunks_2, k)], axis=0), training=True)
            embeddings = embeddings.write(k, tf.cast(z, tf.float32))  # (2M, D)
            shapes["z"] = z.shape  # static shapes, which XLA needs, seen when the body is traced
            if memory is not None:
                key_1, key_2 = memory.keys((chunk(chunks_1, k), chunk(chunks_2, k)), normalize=normalize)
                keys_1, keys_2 = keys_1.write(k, key_1), keys_2.write(k, key_2)
                shapes["keys"] = key_1.shape
            deltas = [d + (tf.convert_to_tensor(v) - s) for d, v, s in zip(deltas, state, snapshot,
                                                                           strict=True)]
            return embeddings, keys_1, keys_2, deltas

        shapes = {}
        arrays = [tf.TensorArray(tf.float32, size=num_chunks) for _ in range(3)]
        embeddings, keys_1, keys_2, deltas = _loop(
            model, num_chunks, embed, (*arrays, [tf.zeros_like(s) for s in snapshot]))
        static_chunks = num_chunks if isinstance(num_chunks, int) else None
        z = tf.ensure_shape(embeddings.stack(), [static_chunks, *shapes["z"]])  # (K, 2M, D)
        z_1 = _flatten_chunks(z[:, :m])  # (B, D): the batch's order, as the plain step's
        z_2 = _flatten_chunks(z[:, m:])
        keys = None
        if memory is not None:
            keys = tuple(_flatten_chunks(tf.ensure_shape(k.stack(), [static_chunks, *shapes["keys"]]))
                         for k in (keys_1, keys_2))

        # The loss over the whole batch (gathered across replicas) and d loss / d z.
        with tf.GradientTape() as tape:
            tape.watch([z_1, z_2])
            contrastive = model._contrastive_loss(z_1, z_2, training=True)
            scaled = model.optimizer.scale_loss(contrastive / tf.cast(replicas, contrastive.dtype))
        g_1, g_2 = tape.gradient(scaled, [z_1, z_2])
        cached = tf.concat([tf.reshape(g_1, tf.shape(z[:, :m])), tf.reshape(g_2, tf.shape(z[:, m:]))],
                           axis=1)  # (K, 2M, D)
        cached = tf.ensure_shape(cached, z.shape)
        supervised = model.supervised_head is not None and model.lineareval_while_pretraining
        weight = 1.0 / tf.cast(replicas * num_chunks, tf.float32)  # each of K * replicas "replicas"

        # Pass 2: each chunk again under the tape, back-propagating its cached gradients.
        def backprop(k, sums, supervised_sum):
            with tf.GradientTape() as tape:
                h, z = model._embed(tf.concat([chunk(chunks_1, k), chunk(chunks_2, k)], axis=0),
                                    training=True)
                targets, seeds = [z], [tf.cast(cached[k], z.dtype)]
                if supervised:
                    logits = model.supervised_head(tf.stop_gradient(h), training=True)
                    labels_k = chunk(label_chunks, k)
                    loss_k = model._supervised_loss(tf.concat([labels_k, labels_k], axis=0), logits)
                    targets.append(model.optimizer.scale_loss(loss_k * weight))
                    seeds.append(tf.ones([], targets[-1].dtype))
                    supervised_sum += loss_k
            gradients = tape.gradient(targets, variables, output_gradients=seeds)
            return _accumulate(sums, gradients, none), supervised_sum

        none = set()
        sums, supervised_sum = _loop(model, num_chunks, backprop,
                                     (_zeros(variables), tf.constant(0.0, tf.float32)))
        loss = contrastive + supervised_sum / tf.cast(num_chunks, tf.float32)
        gradients = [None if i in none else s for i, s in enumerate(sums)]
        return loss, gradients, keys, deltas, num_chunks

    def _finetune(self, model, data, variables, replicas, state, snapshot):
        images, labels = data
        m = self.chunk_size
        num_chunks = _num_chunks(images, m)
        image_chunks, label_chunks = _split(images, m), _split(labels, m)
        weight = 1.0 / tf.cast(replicas * num_chunks, tf.float32)

        def step(k, sums, loss_sum, deltas):
            for variable, start in zip(state, snapshot, strict=True):
                variable.assign(start)
            with tf.GradientTape() as tape:
                logits = model._finetune_logits(image_chunks[k], training=True)
                loss_k = model._supervised_loss(label_chunks[k], logits)
                scaled = model.optimizer.scale_loss(loss_k * weight)
            sums = _accumulate(sums, tape.gradient(scaled, variables), none)
            deltas = [d + (tf.convert_to_tensor(v) - s) for d, v, s in zip(deltas, state, snapshot,
                                                                           strict=True)]
            return sums, loss_sum + loss_k, deltas

        none = set()
        sums, loss_sum, deltas = _loop(
            model, num_chunks, step,
            (_zeros(variables), tf.constant(0.0, tf.float32), [tf.zeros_like(s) for s in snapshot]))
        gradients = [None if i in none else s for i, s in enumerate(sums)]
        return loss_sum / tf.cast(num_chunks, tf.float32), gradients, deltas, num_chunks


# --- the loop and its accumulators --------------------------------------------------------------------


def _zeros(variables) -> list:
    return [tf.zeros(v.shape, v.dtype) for v in variables]


def _accumulate(sums, gradients, none: set) -> list:
    """`sums + gradients`; records in `none` (when the body is traced) the variables without one."""
    none.update(i for i, g in enumerate(gradients) if g is None)
    return [s if g is None else s + tf.cast(tf.convert_to_tensor(g), s.dtype)
            for s, g in zip(sums, gradients, strict=True)]


def _split(batch, chunk_size):
    """`(K * M, ...)` -> `(K, M, ...)`: indexing it with a tensor gives a chunk of static shape."""
    return tf.reshape(batch, [-1, chunk_size, *batch.shape[1:]])


def _flatten_chunks(chunks):
    """`(K, M, ...)` -> `(K * M, ...)`: the chunks back in the batch's order."""
    shape = chunks.shape
    if shape[2:].is_fully_defined():
        return tf.reshape(chunks, [-1, *shape[2:]])
    return tf.reshape(chunks, tf.concat([[-1], tf.shape(chunks)[2:]], axis=0))


def _num_chunks(images, chunk_size):
    batch = images.shape[0]
    if batch is not None:
        return check_chunk_size(chunk_size, int(batch))
    batch = tf.shape(images)[0]
    tf.debugging.assert_equal(batch % chunk_size, 0, message=(
        f"`chunk_size` ({chunk_size}) must divide the per-replica batch: use one of its divisors."))
    return batch // chunk_size


def _needs_python_loop(model) -> bool:
    """Whether a synchronisation point (synchronised batch norm across replicas) would sit in the
    loop where the strategy implements it with `merge_call`, which a `tf.while_loop` cannot hold."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return False
    extended = tf.distribute.get_strategy().extended
    merge_call = getattr(extended, "_use_merge_call", lambda: True)()
    synchronized = any(getattr(layer, "synchronized", False)
                       for layer in model._flatten_layers(include_self=False, recursive=True))
    return bool(merge_call and synchronized)


def _loop(model, num_chunks, body, state):
    """`state = body(k, *state)` for k in 0 .. num_chunks - 1, one chunk at a time.

    A `tf.while_loop` with `parallel_iterations=1` (so chunk k + 1 starts when chunk k is done and
    one chunk's activations live at once), or, where synchronised batch norm forbids that, a Python
    loop whose chunks wait on the previous chunk's outputs.
    """
    if _needs_python_loop(model) and isinstance(num_chunks, int):
        for k in range(num_chunks):
            previous = [t.flow if isinstance(t, tf.TensorArray) else t for t in tf.nest.flatten(state)]
            with tf.control_dependencies(previous):
                state = body(tf.constant(k), *state)
        return tuple(state)

    def step(k, *values):
        return (k + 1, *body(k, *values))

    return tuple(tf.while_loop(lambda k, *_: k < num_chunks, step, (tf.constant(0), *state),
                               parallel_iterations=1)[1:])
