"""SimCLRModel: an encoder (ours or any Keras model), its heads, and the train/test steps."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from simclr_tf.config import CONTRASTIVE_LOSSES, TRAIN_MODES
from simclr_tf.losses import contrastive_loss as contrastive_loss_of
from simclr_tf.models.features import FEATURE, encoder_features, image_shape
from simclr_tf.models.heads import ProjectionHead, SupervisedHead
from simclr_tf.models.memory import MemoryBuffer, check_memory_buffer, copy_of, online_weights
from simclr_tf.models.resnet import build_resnet, freeze_up_to_block
from simclr_tf.optimizers import LARS, VariableRoles, weight_decay_loss

# The heads compute in float32 under a mixed policy: bfloat16 blurs NT-Xent's cosine logits; cheap.
HEAD_DTYPE = "float32"


@keras.saving.register_keras_serializable(package="simclr_tf")
class SimCLRModel(keras.Model):
    """SimCLR: an encoder, a projection head, and an optional supervised head.

    The encoder is our ResNet, built from the `resnet_*` arguments, or any Keras model or layer
    given as `encoder` that maps images to a feature vector (or a feature map, which is
    average-pooled, or a dict with `final_avg_pool`); the heads size themselves from its output.
    The model builds itself on the first batch, so plain Keras works:

    ```python
    model = SimCLRModel(encoder=keras.applications.ResNet50(weights=None, include_top=False,
                                                            pooling="avg"))
    model.compile(optimizer=LARS(WarmupCosineDecay(1.2, 100, 1000), weight_decay=1e-6))
    model.fit(dataset_of_two_views)   # batches of ((view_1, view_2), labels)
    ```

    In `pretrain` mode a training batch is `((view_1, view_2), labels)`. Both views go through the
    encoder in ONE pass (concatenated on the batch axis, so batch norm sees both views, as the
    paper does), then through the projection head into NT-Xent. With `lineareval_while_pretraining`
    and labels, a linear head learns on `stop_gradient` features at the same time (the original's
    online linear evaluation); examples labelled -1 (unlabelled) are left out of that loss.

    In `finetune` mode a batch is `(images, labels)`: the supervised head sits on hidden layer
    `ft_proj_selector` of the projection head (0 = the encoder output) and
    `fine_tune_after_block` freezes the encoder up to a block group; 4 is linear evaluation, where
    only the supervised head trains and every frozen batch norm runs in inference mode.

    Weight decay follows the optimizer (see `simclr_tf.optimizers.weight_decay_loss`): inside LARS
    for everything but the supervised head, an L2 term in the loss otherwise. Which variables are
    batch-norm parameters, biases or the supervised head is decided by the layers that own them
    (`variable_roles()`), and handed to a LARS optimizer when the model is compiled or built.

    Under a `tf.distribute` strategy, Keras sums gradients over replicas, so the loss each replica
    differentiates is divided by the number of replicas: N replicas of batch B then train exactly
    like one device with batch N*B (NT-Xent gathers its negatives across replicas).

    With `memory_buffer_size > 0` (SimCLRv2's memory buffer, pretraining with NT-Xent only), a
    momentum copy of encoder and projection head (`self.memory`, a `MemoryBuffer`) computes keys
    of each step's views in training mode, outside the gradient tape; the queue of past keys
    serves as extra negatives in NT-Xent; after the optimizer step the copy moves towards the
    online weights by `memory_momentum` and the step's keys (gathered from every replica) enter
    the queue. See `simclr_tf.models.memory`.

    Calling the model on images returns a dict of named features: the encoder's outputs
    (`initial_conv` ... `final_avg_pool`), `proj_head_input`, `proj_head_output` and, with a
    supervised head, `logits_sup`.

    Args:
        encoder: `keras.layers.Layer` (a `keras.Model` too) or None. The encoder; None builds our
            ResNet from the arguments below. Defaults to None.
        resnet_depth, width_multiplier, cifar_stem, sk_ratio, se_ratio, batch_norm_decay,
            global_bn, fused_batch_norm: our ResNet (see `build_resnet`); `batch_norm_decay` and
            `global_bn` also configure the projection head.
        proj_head_mode, proj_out_dim, num_proj_layers: the projection head.
        ft_proj_selector: int. Projection-head layer that the supervised head reads in fine-tuning.
        num_classes: int. Classes of the supervised head; 0 for none.
        zero_init_logits_layer: bool. Zero-initialise the supervised head.
        train_mode: str. `pretrain` or `finetune`.
        lineareval_while_pretraining: bool. Train the supervised head while pretraining.
        fine_tune_after_block: int. -1 trains everything; k freezes the stem and groups 1..k.
        temperature: float. NT-Xent temperature.
        hidden_norm: bool. L2-normalise projections in NT-Xent.
        contrastive_loss: str. `nt_xent`, `nt_logistic` or `margin_triplet` (`simclr_tf.losses`).
        margin: float. The margin of `margin_triplet`.
        semi_hard_negatives: bool. Semi-hard negative mining in `nt_logistic` / `margin_triplet`.
        optimizer_name: str or None. `lars`, `momentum` or `adam`; decides where the loss-term
            weight decay goes. None: `lars` if the compiled optimizer is LARS, else `momentum`.
        weight_decay: float. L2 weight decay of the loss term (LARS decays the other weights
            itself, with its own `weight_decay`).
        memory_buffer_size: int. Keys in the memory buffer's queue; 0 for no buffer. Defaults to
            0.
        memory_momentum: float in [0, 1). Moving-average rate of the momentum network. Defaults
            to `0.999`.
    """

    def __init__(
        self,
        encoder=None,
        resnet_depth=50,
        width_multiplier=1,
        cifar_stem=False,
        sk_ratio=0.0,
        se_ratio=0.0,
        batch_norm_decay=0.9,
        global_bn=False,
        fused_batch_norm=True,
        proj_head_mode="nonlinear",
        proj_out_dim=128,
        num_proj_layers=3,
        ft_proj_selector=0,
        num_classes=0,
        zero_init_logits_layer=False,
        train_mode="pretrain",
        lineareval_while_pretraining=True,
        fine_tune_after_block=-1,
        temperature=0.1,
        hidden_norm=True,
        contrastive_loss="nt_xent",
        margin=0.5,
        semi_hard_negatives=False,
        optimizer_name=None,
        weight_decay=0.0,
        memory_buffer_size=0,
        memory_momentum=0.999,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if train_mode not in TRAIN_MODES:
            raise ValueError(f"`train_mode` must be one of {TRAIN_MODES}. Received: {train_mode!r}.")
        if contrastive_loss not in CONTRASTIVE_LOSSES:
            raise ValueError(f"`contrastive_loss` must be one of {CONTRASTIVE_LOSSES}. "
                             f"Received: {contrastive_loss!r}.")
        if semi_hard_negatives and contrastive_loss not in ("nt_logistic", "margin_triplet"):
            raise ValueError("`semi_hard_negatives` applies to `contrastive_loss` 'nt_logistic' or "
                             f"'margin_triplet'. Received: contrastive_loss={contrastive_loss!r}.")
        if encoder is not None and not isinstance(encoder, keras.layers.Layer):
            raise ValueError(
                "`encoder` must be a Keras model or layer mapping images (batch_size, height, width, 3) "
                "to features, e.g. keras.applications.ResNet50(weights=None, include_top=False, "
                f"pooling='avg'). Received: {type(encoder).__name__}."
            )
        if encoder is not None and fine_tune_after_block not in (-1, 4):
            raise ValueError(
                "`fine_tune_after_block` counts our ResNet's block groups; with your own `encoder` "
                "use -1 (fine-tune everything) or 4 (freeze the encoder: linear evaluation), or "
                f"freeze its layers yourself. Received: fine_tune_after_block={fine_tune_after_block!r}."
            )
        if memory_buffer_size:
            check_memory_buffer(memory_buffer_size, memory_momentum)
            if train_mode != "pretrain" or contrastive_loss != "nt_xent":
                raise ValueError(
                    "The memory buffer adds negatives to NT-Xent while pretraining: it needs "
                    "`train_mode='pretrain'` and `contrastive_loss='nt_xent'`. Received: "
                    f"train_mode={train_mode!r}, contrastive_loss={contrastive_loss!r}, "
                    f"memory_buffer_size={memory_buffer_size!r}. Use memory_buffer_size=0."
                )
        if train_mode == "finetune" and not num_classes:
            raise ValueError(
                "`train_mode='finetune'` needs labelled data: `num_classes` must be positive. "
                f"Received: {num_classes!r}."
            )
        self.resnet_depth = resnet_depth
        self.width_multiplier = width_multiplier
        self.cifar_stem = cifar_stem
        self.sk_ratio = sk_ratio
        self.se_ratio = se_ratio
        self.fused_batch_norm = fused_batch_norm
        self.batch_norm_decay = batch_norm_decay
        self.global_bn = global_bn
        self.proj_head_mode = proj_head_mode
        self.proj_out_dim = proj_out_dim
        self.num_proj_layers = num_proj_layers
        self.ft_proj_selector = ft_proj_selector
        self.num_classes = num_classes
        self.zero_init_logits_layer = zero_init_logits_layer
        self.train_mode = train_mode
        self.lineareval_while_pretraining = lineareval_while_pretraining
        self.fine_tune_after_block = fine_tune_after_block
        self.temperature = temperature
        self.hidden_norm = hidden_norm
        self.contrastive_loss = contrastive_loss
        self.margin = margin
        self.semi_hard_negatives = semi_hard_negatives
        self.optimizer_name = optimizer_name
        self.weight_decay = weight_decay
        self.memory_buffer_size = memory_buffer_size
        self.memory_momentum = memory_momentum

        self.custom_encoder = encoder is not None
        self.encoder = encoder if encoder is not None else self._our_encoder("resnet")
        self.projection_head = self._projection_head("projection_head")
        self.memory = None
        if memory_buffer_size:  # the momentum network: the same architecture, its own weights
            self.memory = MemoryBuffer(
                copy_of(encoder) if self.custom_encoder else self._our_encoder("momentum_resnet"),
                self._projection_head("momentum_projection_head"), size=memory_buffer_size,
                momentum=memory_momentum, name="memory_buffer")
        self.supervised_head = SupervisedHead(
            num_classes, zero_init=zero_init_logits_layer, name="head_supervised", dtype=HEAD_DTYPE,
        ) if num_classes else None
        if train_mode == "finetune":
            if self.custom_encoder:
                self.encoder.trainable = fine_tune_after_block < 4
            else:
                freeze_up_to_block(self.encoder, fine_tune_after_block)

        self.contrastive_loss_tracker = keras.metrics.Mean(name="contrastive_loss")
        self.contrastive_accuracy = keras.metrics.Mean(name="contrastive_acc")
        self.contrastive_entropy = keras.metrics.Mean(name="contrastive_entropy")
        self.supervised_loss_tracker = keras.metrics.Mean(name="supervised_loss")
        self.supervised_top1 = keras.metrics.SparseCategoricalAccuracy(name="top1")
        self.supervised_top5 = keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5")
        self.weight_decay_tracker = keras.metrics.Mean(name="weight_decay")
        self.learning_rate_tracker = keras.metrics.Mean(name="learning_rate")
        self.total_loss_tracker = keras.metrics.Mean(name="loss")

    def _our_encoder(self, name):
        return build_resnet(
            self.resnet_depth, self.width_multiplier, cifar_stem=self.cifar_stem, sk_ratio=self.sk_ratio,
            se_ratio=self.se_ratio, batch_norm_decay=self.batch_norm_decay, global_bn=self.global_bn,
            fused_batch_norm=self.fused_batch_norm, name=name,
        )

    def _projection_head(self, name):
        return ProjectionHead(
            proj_head_mode=self.proj_head_mode, proj_out_dim=self.proj_out_dim,
            num_proj_layers=self.num_proj_layers, batch_norm_decay=self.batch_norm_decay,
            global_bn=self.global_bn, name=name, dtype=HEAD_DTYPE,
        )

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
        if self.supervised_head is not None:
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

    def _forward_losses(self, data, training):
        """The total loss of one batch and its parts; updates the metrics."""
        x, labels = data
        total = tf.constant(0.0, tf.float32)
        if self.train_mode == "pretrain":
            view_1, view_2 = x
            batch_size = tf.shape(view_1)[0]
            images = tf.concat([view_1, view_2], axis=0)  # (2N, H, W, 3): BN sees both views
            h = encoder_features(self.encoder, images, training=training)[FEATURE]
            z, _ = self.projection_head(h, training=training)
            z_1, z_2 = z[:batch_size], z[batch_size:]
            memory = self.memory is not None and training
            loss, logits_ab, labels_ab = contrastive_loss_of(
                self.contrastive_loss, z_1, z_2, temperature=self.temperature,
                normalize=self.hidden_norm, margin=self.margin,
                semi_hard_negatives=self.semi_hard_negatives,
                memory=self.memory.queue if memory else None,
                memory_mask=self.memory.mask() if memory else None,
            )
            self.contrastive_loss_tracker.update_state(loss)
            hit = tf.equal(tf.argmax(logits_ab, axis=1), tf.argmax(labels_ab, axis=1))
            self.contrastive_accuracy.update_state(tf.cast(hit, tf.float32))
            probabilities = tf.nn.softmax(logits_ab, axis=-1)
            entropy = -tf.reduce_sum(probabilities * tf.math.log(probabilities + 1e-8), axis=-1)
            self.contrastive_entropy.update_state(entropy)
            total += loss
            if self.supervised_head is not None and self.lineareval_while_pretraining:
                logits = self.supervised_head(tf.stop_gradient(h), training=training)
                total += self._supervised_loss(tf.concat([labels, labels], axis=0), logits)
        else:
            h = encoder_features(self.encoder, x, training=training)[FEATURE]
            head_input = h
            if self.ft_proj_selector > 0:  # fine-tune from inside the projection head (SimCLRv2)
                _, hiddens = self.projection_head(h, training=training)
                head_input = hiddens[self.ft_proj_selector]
            logits = self.supervised_head(head_input, training=training)
            total += self._supervised_loss(labels, logits)
        return total

    def _weight_decay(self):
        optimizer_name = self.optimizer_name
        if optimizer_name is None:
            optimizer = getattr(self.optimizer, "inner_optimizer", self.optimizer)
            optimizer_name = "lars" if isinstance(optimizer, LARS) else "momentum"
        decay = weight_decay_loss(
            self.trainable_variables,
            optimizer_name=optimizer_name,
            weight_decay=self.weight_decay,
            roles=self.variable_roles(),
        )
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
        if self.memory is not None:  # the momentum network's keys, before the tape: nothing recorded
            self.memory.copy_once(online_weights(self.encoder, self.projection_head))
            keys = self.memory.keys(data[0], normalize=self.hidden_norm)
        with tf.GradientTape() as tape:
            loss = self._forward_losses(data, training=True) + self._weight_decay()
            self.total_loss_tracker.update_state(loss)
            # Keras sums gradients over replicas: divide so that N replicas of batch B equal one
            # device with batch N*B.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = loss / tf.cast(replicas, loss.dtype)
            scaled = self.optimizer.scale_loss(scaled)  # loss scaling under mixed_float16
        gradients = tape.gradient(scaled, variables)
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
            raise ValueError("Evaluation needs a supervised head: the model has `num_classes=0`.")
        logits = self.supervised_head(self.supervised_head_input(x), training=False)
        loss = self._supervised_loss(labels, logits)
        self.total_loss_tracker.update_state(loss)
        trackers = (self.total_loss_tracker, self.supervised_loss_tracker, self.supervised_top1,
                    self.supervised_top5)
        return {m.name: m.result() for m in trackers}

    def get_config(self):
        config = super().get_config()
        config.update({name: getattr(self, name) for name in (
            "resnet_depth", "width_multiplier", "cifar_stem", "sk_ratio", "se_ratio",
            "batch_norm_decay", "global_bn", "fused_batch_norm", "proj_head_mode",
            "proj_out_dim", "num_proj_layers", "ft_proj_selector", "num_classes",
            "zero_init_logits_layer", "train_mode", "lineareval_while_pretraining",
            "fine_tune_after_block", "temperature", "hidden_norm", "contrastive_loss",
            "margin", "semi_hard_negatives", "optimizer_name",
            "weight_decay", "memory_buffer_size", "memory_momentum",
        )})
        # A user's encoder serialises through Keras' own mechanism; ours from the arguments above.
        config["encoder"] = keras.saving.serialize_keras_object(self.encoder) if self.custom_encoder else None
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("encoder") is not None:
            config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)
