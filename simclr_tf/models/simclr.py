"""SimCLRModel: an encoder (ours or any Keras model), its heads, and the train/test steps."""

from __future__ import annotations

import copy
import dataclasses

import keras
import tensorflow as tf
from keras import ops

from simclr_tf.config import LossConfig, ModelConfig, TrainConfig, check_memory_buffer_mode
from simclr_tf.losses import contrastive_loss as contrastive_loss_of
from simclr_tf.losses import contrastive_metrics
from simclr_tf.models.chunking import GradientCache, check_chunk_size, check_no_random_layers
from simclr_tf.models.features import FEATURE, encoder_features, image_shape
from simclr_tf.models.heads import ProjectionHead
from simclr_tf.models.memory import MemoryBuffer, copy_of, online_weights
from simclr_tf.models.resnet import freeze_up_to_block
from simclr_tf.optimizers import LARS, VariableRoles, weight_decay_loss
from simclr_tf.validation import check_one_of

# The heads compute in float32 under a mixed policy: bfloat16 blurs NT-Xent's cosine logits; cheap.
HEAD_DTYPE = "float32"
MODEL_TRAIN_MODES = ("pretrain", "finetune")  # a distilled student is a fine-tuned network


@keras.saving.register_keras_serializable(package="simclr_tf")
class SimCLRModel(keras.Model):
    """SimCLR: an encoder, a projection head, and an optional supervised head.

    The encoder is any Keras model or layer that maps images to a feature vector (or a feature
    map, which is average-pooled, or a dict with `final_avg_pool`): our ResNet comes from
    `simclr_tf.models.build.build_model(config, num_classes)`, which builds the parts a `Config`
    describes and passes them in. The heads size themselves from the encoder's output. The model
    builds itself on the first batch, so plain Keras works:

    ```python
    model = SimCLRModel(keras.applications.ResNet50(weights=None, include_top=False, pooling="avg"),
                        loss_config=LossConfig(temperature=0.1))
    model.compile(optimizer=LARS(WarmupCosineDecay(1.2, 100, 1000), weight_decay=1e-6))
    model.fit(dataset_of_two_views)   # batches of ((view_1, view_2), labels)
    ```

    In `pretrain` mode a training batch is `((view_1, view_2), labels)`. Both views go through the
    encoder in ONE pass (concatenated on the batch axis, so batch norm sees both views, as the
    paper does), then through the projection head into the contrastive loss. With
    `lineareval_while_pretraining` and labels, the supervised head learns on `stop_gradient`
    features at the same time (the original's online linear evaluation); examples labelled -1
    (unlabelled) are left out of that loss. The contrastive accuracy and entropy are the
    original's: over each view-1 query's cross-view logits (`simclr_tf.losses.contrastive_metrics`).

    In `finetune` mode a batch is `(images, labels)`: the supervised head sits on hidden layer
    `ft_proj_selector` of the projection head (0 = the encoder output) and
    `fine_tune_after_block` freezes the encoder up to a block group; 4 is linear evaluation, where
    only the supervised head trains and every frozen batch norm runs in inference mode.

    Weight decay follows the compiled optimizer (see `simclr_tf.optimizers.weight_decay_loss`):
    LARS decays every weight but the supervised head's itself, and the loss gets an L2 term for
    the supervised head; with another optimizer the L2 term covers every weight. Which variables
    are batch-norm parameters, biases or the supervised head is decided by the layers that own
    them (`variable_roles()`), and handed to a LARS optimizer when the model is compiled or built.

    Under a `tf.distribute` strategy, Keras sums gradients over replicas, so the loss each replica
    differentiates is divided by the number of replicas: N replicas of batch B then train exactly
    like one device with batch N*B (the contrastive loss gathers its negatives across replicas).

    With `loss_config.memory_buffer_size > 0` (SimCLRv2's memory buffer, NT-Xent pretraining), a
    momentum copy of encoder and projection head (`self.memory`, a `MemoryBuffer`) computes keys
    of each step's views in training mode, outside the gradient tape; the queue of past keys
    serves as extra negatives; after the optimizer step the copy moves towards the online weights
    and the step's keys (gathered from every replica) enter the queue. See
    `simclr_tf.models.memory`.

    With `chunk_size > 0` the train step runs the encoder and heads on chunks of `chunk_size` images
    of the per-replica batch and the contrastive loss on the whole batch (gradient caching, see
    `simclr_tf.models.chunking`): large batches on one device, at the cost of one more forward pass.

    Calling the model on images returns a dict of named features: the encoder's outputs
    (`initial_conv` ... `final_avg_pool` for ours), `proj_head_input`, `proj_head_output` and,
    with a supervised head, `logits_sup`.

    Args:
        encoder: `keras.layers.Layer` (a `keras.Model` too). Maps images `(batch_size, height,
            width, 3)` to features.
        projection_head: `ProjectionHead` (or a layer returning `(projection, hiddens)`) or None.
            None makes a `ProjectionHead` of the config's defaults. Defaults to None.
        supervised_head: `SupervisedHead` (or a layer returning logits) or None for none.
            Defaults to None.
        loss_config: `simclr_tf.config.LossConfig` or None. The contrastive loss (temperature,
            `hidden_norm`, loss, margin, semi-hard negatives, memory buffer); None takes the
            config's defaults. Defaults to None.
        train_mode: str. `pretrain` or `finetune`. Defaults to `pretrain`.
        lineareval_while_pretraining: bool. Train the supervised head while pretraining.
            Defaults to `True`.
        ft_proj_selector: int. Projection-head layer that the supervised head reads in
            fine-tuning. Defaults to `0`.
        fine_tune_after_block: int. -1 trains everything; k freezes our ResNet's stem and
            groups 1..k; another encoder takes -1 or 4 (frozen). Defaults to `-1`.
        weight_decay: float or None. Coefficient of the L2 loss term; None takes a LARS
            optimizer's `weight_decay` (the original's one number), 0 with other optimizers.
            Defaults to None.
        chunk_size: int. 0 trains on the per-replica batch at once; M > 0 runs the step in chunks
            of M images with cached embedding gradients, exactly as batch / M replicas without
            global batch norm would (`simclr_tf.models.chunking`). Defaults to `0`.
        **kwargs: base model arguments (`name`, ...).
    """

    def __init__(
        self,
        encoder,
        projection_head=None,
        supervised_head=None,
        loss_config=None,
        train_mode=TrainConfig.train_mode,
        lineareval_while_pretraining=TrainConfig.lineareval_while_pretraining,
        ft_proj_selector=ModelConfig.ft_proj_selector,
        fine_tune_after_block=TrainConfig.fine_tune_after_block,
        weight_decay=None,
        chunk_size=TrainConfig.chunk_size,
        **kwargs,
    ):
        super().__init__(**kwargs)
        loss_config = LossConfig() if loss_config is None else loss_config
        check_one_of("train_mode", train_mode, MODEL_TRAIN_MODES)
        for name, value in (("encoder", encoder), ("projection_head", projection_head),
                            ("supervised_head", supervised_head)):
            if (value is not None or name == "encoder") and not isinstance(value, keras.layers.Layer):
                raise ValueError(
                    f"`{name}` must be a Keras model or layer"
                    + (" mapping images (batch_size, height, width, 3) to features, e.g. "
                       "keras.applications.ResNet50(weights=None, include_top=False, pooling='avg')"
                       if name == "encoder" else "") + f". Received: {type(value).__name__}.")
        if not isinstance(loss_config, LossConfig):
            raise ValueError("`loss_config` must be a `simclr_tf.config.LossConfig` or None. "
                             f"Received: {type(loss_config).__name__}.")
        loss_config.validate()
        check_memory_buffer_mode(train_mode, loss_config.memory_buffer_size)
        ours = _has_block_groups(encoder)
        if not ours and fine_tune_after_block not in (-1, 4):
            raise ValueError(
                "`fine_tune_after_block` counts our ResNet's block groups; with your own `encoder` "
                "use -1 (fine-tune everything) or 4 (freeze the encoder: linear evaluation), or "
                f"freeze its layers yourself. Received: fine_tune_after_block={fine_tune_after_block!r}."
            )
        if train_mode == "finetune" and supervised_head is None:
            raise ValueError("`train_mode='finetune'` needs labelled data: a `supervised_head` "
                             "(`num_classes` > 0). Received: supervised_head=None.")
        self.loss_config = loss_config
        self.train_mode = train_mode
        self.lineareval_while_pretraining = lineareval_while_pretraining
        self.ft_proj_selector = ft_proj_selector
        self.fine_tune_after_block = fine_tune_after_block
        self.weight_decay = weight_decay
        self.chunk_size = chunk_size
        check_chunk_size(chunk_size)  # its type and sign; against the batch when the step is traced
        check_no_random_layers((encoder, projection_head, supervised_head), chunk_size)
        self.chunking = GradientCache(chunk_size) if chunk_size else None

        self.encoder = encoder
        if projection_head is None:
            projection_head = ProjectionHead(name="projection_head", dtype=HEAD_DTYPE)
        self.projection_head = projection_head
        self.memory = None
        if loss_config.memory_buffer_size:  # the momentum network: the same architecture, its own weights
            self.memory = MemoryBuffer(
                copy_of(encoder, name=f"momentum_{encoder.name}"),
                copy_of(projection_head, name=f"momentum_{projection_head.name}"),
                size=loss_config.memory_buffer_size, momentum=loss_config.memory_momentum,
                name="memory_buffer")
        self.supervised_head = supervised_head
        if train_mode == "finetune":
            if ours:
                freeze_up_to_block(self.encoder, fine_tune_after_block)
            else:
                self.encoder.trainable = fine_tune_after_block < 4

        self.contrastive_loss_tracker = keras.metrics.Mean(name="contrastive_loss")
        self.contrastive_accuracy = keras.metrics.Mean(name="contrastive_acc")
        self.contrastive_entropy = keras.metrics.Mean(name="contrastive_entropy")
        self.supervised_loss_tracker = keras.metrics.Mean(name="supervised_loss")
        self.supervised_top1 = keras.metrics.SparseCategoricalAccuracy(name="top1")
        self.supervised_top5 = keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5")
        self.weight_decay_tracker = keras.metrics.Mean(name="weight_decay")
        self.learning_rate_tracker = keras.metrics.Mean(name="learning_rate")
        self.total_loss_tracker = keras.metrics.Mean(name="loss")

    @property
    def num_classes(self) -> int:
        """Classes of the supervised head; 0 without one."""
        return getattr(self.supervised_head, "num_classes", 0) if self.supervised_head is not None else 0

    # --- forward ------------------------------------------------------------------------------

    def build(self, input_shape):
        """Creates every variable: encoder, projection head (sized from the encoder's output) and
        supervised head. `input_shape` is that of an image batch, or of two views."""
        features = encoder_features(self.encoder, keras.KerasTensor(image_shape(input_shape)))
        h = features[FEATURE]
        if len(h.shape) != 2 or h.shape[-1] is None:
            raise ValueError(
                f"The encoder's `{FEATURE}` must have shape (batch_size, dim). Received: {h.shape}.")
        _, hiddens = self.projection_head(h)
        if self.supervised_head is not None and not self.supervised_head.built:  # given built, or not
            self.supervised_head.build(self._supervised_head_input(h, hiddens).shape)
        if self.memory is not None:  # the momentum network, equal to the online one, and the queue
            self.memory.build_like(self.encoder, self.projection_head, image_shape(input_shape))
        if self.train_mode == "finetune" and self.fine_tune_after_block >= 4:
            # Linear evaluation: the projection layers below the selector are frozen too (now that
            # the head has made its layers), and frozen batch norm runs in inference mode.
            self.projection_head.trainable = False
        self.built = True
        self._share_variable_roles()

    def compile(self, *args, **kwargs):
        super().compile(*args, **kwargs)
        self._share_variable_roles()

    def variable_roles(self) -> VariableRoles:
        """Which variables are normalisation parameters, biases, or the supervised head's."""
        return VariableRoles.of(self, supervised_head=self.supervised_head)

    def _share_variable_roles(self):
        optimizer = getattr(self, "optimizer", None)
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # under loss scaling
        if self.built and hasattr(optimizer, "set_variable_roles"):
            optimizer.set_variable_roles(self.variable_roles())

    def call(self, images, training=False):
        if isinstance(images, (tuple, list)):  # (view_1, view_2), as in a training batch
            images = ops.concatenate(list(images), axis=0)
        features = encoder_features(self.encoder, images, training=training)
        h = features[FEATURE]
        projection, hiddens = self.projection_head(h, training=training)
        features["proj_head_input"] = h
        features["proj_head_output"] = projection
        if self.supervised_head is not None:
            head_input = self._supervised_head_input(h, hiddens)
            features["logits_sup"] = self.supervised_head(head_input, training=training)
        return features

    def _supervised_head_input(self, h, hiddens):
        return hiddens[self.ft_proj_selector] if self.train_mode == "finetune" else ops.stop_gradient(h)

    def supervised_head_input(self, images, training=False):
        """What the supervised head reads for `images`: in fine-tuning the projection head's layer
        `ft_proj_selector` (0: the encoder output), else the encoder output."""
        h = encoder_features(self.encoder, images, training=training)[FEATURE]
        _, hiddens = self.projection_head(h, training=training)
        return self._supervised_head_input(h, hiddens)

    @property
    def metrics(self):
        listed = [self.total_loss_tracker, self.weight_decay_tracker, self.learning_rate_tracker]
        if self.train_mode == "pretrain":
            listed = [
                self.contrastive_loss_tracker,
                self.contrastive_accuracy,
                self.contrastive_entropy,
                *listed,
            ]
        if self.supervised_head is not None:
            listed += [self.supervised_loss_tracker, self.supervised_top1, self.supervised_top5]
        return listed

    # --- losses -------------------------------------------------------------------------------

    def _supervised_loss(self, labels, logits):
        """Mean cross-entropy over labelled examples (label >= 0); updates top-1/top-5."""
        logits = tf.cast(logits, tf.float32)
        labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
        labelled = labels >= 0
        safe_labels = tf.where(labelled, labels, tf.zeros_like(labels))
        weights = tf.cast(labelled, tf.float32)
        per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe_labels, logits=logits)
        count = tf.reduce_sum(weights)
        loss = tf.math.divide_no_nan(tf.reduce_sum(per_example * weights), count)
        self.supervised_top1.update_state(safe_labels, logits, sample_weight=weights)
        self.supervised_top5.update_state(safe_labels, logits, sample_weight=weights)
        self.supervised_loss_tracker.update_state(loss, sample_weight=count)
        return loss

    def _embed(self, images, training):
        """Encoder features `h` and projections `z` of an image batch: `(h, z)`."""
        h = encoder_features(self.encoder, images, training=training)[FEATURE]
        z, _ = self.projection_head(h, training=training)
        return h, z

    def _contrastive_loss(self, z_1, z_2, training):
        """The contrastive loss of the projections of both views (the memory buffer's queue as more
        negatives while training); updates the contrastive metrics."""
        memory = self.memory is not None and training
        c = self.loss_config
        loss, logits_ab, labels_ab = contrastive_loss_of(
            c.contrastive_loss, z_1, z_2, temperature=c.temperature, normalize=c.hidden_norm,
            margin=c.margin, semi_hard_negatives=c.semi_hard_negatives,
            memory=self.memory.queue if memory else None,
            memory_mask=self.memory.mask() if memory else None,
        )
        self.contrastive_loss_tracker.update_state(loss)
        hit, entropy = contrastive_metrics(logits_ab, labels_ab,
                                           memory_size=self.memory.size if memory else 0)
        self.contrastive_accuracy.update_state(hit)
        self.contrastive_entropy.update_state(entropy)
        return loss

    def _finetune_logits(self, images, training):
        """The supervised head's logits in fine-tuning (on projection layer `ft_proj_selector`)."""
        h = encoder_features(self.encoder, images, training=training)[FEATURE]
        head_input = h
        if self.ft_proj_selector > 0:  # fine-tune from inside the projection head (SimCLRv2)
            _, hiddens = self.projection_head(h, training=training)
            head_input = hiddens[self.ft_proj_selector]
        return self.supervised_head(head_input, training=training)

    def _forward_losses(self, data, training):
        """The total loss of one batch and its parts; updates the metrics."""
        x, labels = data
        total = tf.constant(0.0, tf.float32)
        if self.train_mode == "pretrain":
            view_1, view_2 = x
            batch_size = tf.shape(view_1)[0]
            h, z = self._embed(tf.concat([view_1, view_2], axis=0), training)  # (2N, ...): BN sees both views
            total += self._contrastive_loss(z[:batch_size], z[batch_size:], training)
            if self.supervised_head is not None and self.lineareval_while_pretraining:
                logits = self.supervised_head(tf.stop_gradient(h), training=training)
                total += self._supervised_loss(tf.concat([labels, labels], axis=0), logits)
        else:
            total += self._supervised_loss(labels, self._finetune_logits(x, training))
        return total

    def weight_decay_term(self, optimizer):
        """The L2 term of the loss under `optimizer` (see `simclr_tf.optimizers.weight_decay_loss`):
        LARS decays the other weights itself, so with LARS only the supervised head's."""
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # under loss scaling
        lars = isinstance(optimizer, LARS)
        weight_decay = self.weight_decay
        if weight_decay is None:
            weight_decay = optimizer.weight_decay if lars else 0.0
        return weight_decay_loss(self.trainable_variables, optimizer_name="lars" if lars else "momentum",
                                 weight_decay=weight_decay, roles=self.variable_roles())

    def _weight_decay(self):
        decay = self.weight_decay_term(self.optimizer)
        self.weight_decay_tracker.update_state(decay)
        return decay

    # --- steps --------------------------------------------------------------------------------

    def _build_for(self, x):
        """Builds the model (and its optimizer, on every trainable variable) from a batch.

        Plain `fit` without a strategy defers building to the first trace of the train step:
        the variables must exist before the step lists them, and the optimizer must know them
        all, also those that get no gradient in this mode.
        """
        if not self.built:
            self.build(tf.nest.map_structure(lambda t: tuple(t.shape), x))
        optimizer = getattr(self, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.trainable_variables)

    def train_step(self, data):
        self._build_for(data[0])
        variables = self.trainable_variables
        keys = None
        if self.memory is not None:
            self.memory.copy_once(online_weights(self.encoder, self.projection_head))
        images = data[0][0] if self.train_mode == "pretrain" else data[0]
        if self.chunking is not None and self.chunking.applies(images):  # see models/chunking.py
            loss, gradients, keys = self.chunking.gradients(self, data, variables)
        else:
            if self.memory is not None:  # the momentum network's keys, before the tape: nothing recorded
                keys = self.memory.keys(data[0], normalize=self.loss_config.hidden_norm)
            with tf.GradientTape() as tape:
                loss = self._forward_losses(data, training=True) + self._weight_decay()
                # Keras sums gradients over replicas: divide so that N replicas of batch B equal one
                # device with batch N*B.
                replicas = tf.distribute.get_strategy().num_replicas_in_sync
                scaled = loss / tf.cast(replicas, loss.dtype)
                scaled = self.optimizer.scale_loss(scaled)  # loss scaling under mixed_float16
            gradients = tape.gradient(scaled, variables)
        self.total_loss_tracker.update_state(loss)
        # Variables that do not reach the loss (projection layers above the fine-tuning selector,
        # the supervised head without labels) have no gradient; leave them out.
        pairs = [(g, v) for g, v in zip(gradients, variables, strict=True) if g is not None]
        self.learning_rate_tracker.update_state(self.optimizer.learning_rate)  # this step's rate
        self.optimizer.apply_gradients(pairs)
        if self.memory is not None:  # after the step: the moving average, then this step's keys
            self.memory.update(online_weights(self.encoder, self.projection_head))
            self.memory.enqueue(*keys)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        x, labels = data
        if not self.built:
            self.build(tuple(x.shape))
        if self.supervised_head is None:
            raise ValueError("Evaluation needs a supervised head: the model has none (`num_classes=0`).")
        logits = self.supervised_head(self.supervised_head_input(x), training=False)
        loss = self._supervised_loss(labels, logits)
        self.total_loss_tracker.update_state(loss)
        trackers = (self.total_loss_tracker, self.supervised_loss_tracker, self.supervised_top1,
                    self.supervised_top5)
        return {m.name: m.result() for m in trackers}

    def get_config(self):
        config = super().get_config()
        config.update({name: getattr(self, name) for name in (
            "train_mode", "lineareval_while_pretraining", "ft_proj_selector", "fine_tune_after_block",
            "weight_decay", "chunk_size")})
        config["loss_config"] = dataclasses.asdict(self.loss_config)
        for name in ("encoder", "projection_head", "supervised_head"):
            part = getattr(self, name)
            config[name] = None if part is None else keras.saving.serialize_keras_object(part)
            if part is not None:  # the model's `build` builds its parts, in its name scope, as at first
                config[name].pop("build_config", None)
        return config

    @classmethod
    def from_config(cls, config):
        config = copy.deepcopy(config)  # Keras' deserialisation empties the dicts it reads
        config["loss_config"] = LossConfig(**config["loss_config"])
        for name in ("encoder", "projection_head", "supervised_head"):
            if config.get(name) is not None:
                config[name] = keras.saving.deserialize_keras_object(config[name])
        return cls(**config)


def _has_block_groups(encoder) -> bool:
    """Whether `encoder` is our ResNet (`build_resnet`), whose stem and block groups can freeze."""
    return isinstance(encoder, keras.Model) and any(
        layer.name.startswith("stem_") for layer in getattr(encoder, "layers", ()))
