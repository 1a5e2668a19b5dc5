"""Distillation (SimCLRv2, step 3): a student learns a frozen teacher's predictions.

`distillation_loss` is the paper's eq. 2; `DistillationModel` trains a student `SimCLRModel`
(any encoder, any size) on the temperature-softened predictions of a teacher `SimCLRModel` with a
supervised head, on unlabelled images, optionally plus the cross-entropy on labelled ones.

References:
    Chen et al., "Big Self-Supervised Models are Strong Semi-Supervised Learners", 2020,
    https://arxiv.org/abs/2006.10029 (section 2, eq. 2).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from simclr_tf.models.simclr import FEATURE, SimCLRModel, encoder_features


def distillation_loss(teacher_logits, student_logits, temperature=1.0):
    """The distillation loss of SimCLRv2 (eq. 2), averaged over the batch.

    `-sum_y P_T(y|x; tau) log P_S(y|x; tau)` with `P(y|x; tau) = softmax(logits / tau)`: the
    cross-entropy of the student's softened prediction against the teacher's. No gradient flows
    into the teacher's logits.

    Args:
        teacher_logits: float tensor `(batch_size, num_classes)`.
        student_logits: float tensor `(batch_size, num_classes)`.
        temperature: float. The softmax temperature tau. Defaults to `1.0`.

    Returns:
        A float32 scalar: the mean over the batch.

    Example:
        ```python
        loss = distillation_loss(teacher(images)["logits_sup"], student_logits, temperature=1.0)
        ```
    """
    per_example = _per_example_loss(teacher_logits, student_logits, temperature)
    return tf.reduce_mean(per_example)


def _per_example_loss(teacher_logits, student_logits, temperature):
    teacher_logits = tf.stop_gradient(tf.cast(teacher_logits, tf.float32))
    student_logits = tf.cast(student_logits, tf.float32)
    targets = tf.nn.softmax(teacher_logits / temperature, axis=-1)
    return tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=student_logits / temperature)


def _student_images(images):
    """The student's images of a batch: the batch, or the first of a (student, teacher) pair."""
    return images[0] if isinstance(images, (tuple, list)) else images


def _check_models(student, teacher):
    for name, model in (("student", student), ("teacher", teacher)):
        if not isinstance(model, SimCLRModel):
            raise ValueError(f"`{name}` must be a SimCLRModel. Received: {type(model).__name__}.")
        if model.supervised_head is None:
            raise ValueError(
                f"The {name} needs a supervised head (`num_classes` > 0): distillation compares the "
                f"predictions of teacher and student. Received: num_classes={model.num_classes!r}."
            )
    if student.num_classes != teacher.num_classes:
        raise ValueError(
            f"Teacher and student must predict the same classes: the teacher has {teacher.num_classes}, "
            f"the student {student.num_classes}. Build the student with num_classes="
            f"{teacher.num_classes}."
        )


@keras.saving.register_keras_serializable(package="simclr_tf")
class DistillationModel(keras.Model):
    """A student trained on a frozen teacher's softened predictions (SimCLRv2 distillation).

    A training batch is `(images, labels)` (crop and flip, as in fine-tuning), `-1` marking an
    unlabelled image. The teacher runs in inference mode and never changes (its weights and batch
    norm statistics stay as loaded); the student learns

        loss = distillation_loss(teacher, student; temperature)
               + alpha * cross_entropy(labels, student)   # labelled images only
               + weight decay (as `SimCLRModel`)

    The student's supervised head reads what it reads when fine-tuning (its `ft_proj_selector`
    layer), so the trained student is an ordinary fine-tuned `SimCLRModel`: save it (it is
    `model` in simclr_tf checkpoints), evaluate it or fine-tune it further like one.

    Under a `tf.distribute` strategy each replica's loss is its share of the global batch's loss
    (sums over the local examples divided by the global counts, times the replicas, then divided
    by the replicas like `SimCLRModel.train_step`): N replicas of batch B train exactly like one
    device with batch N*B, also when the labelled images are unevenly spread.

    Args:
        student: `SimCLRModel` with a supervised head; it trains.
        teacher: `SimCLRModel` with a supervised head of the same classes; it is frozen here.
        temperature: float. Softmax temperature tau of the distillation loss. Defaults to `1.0`.
        alpha: float. Weight of the cross-entropy on labelled images. Defaults to `0.0`.

    Example:
        ```python
        model = DistillationModel(student, teacher, temperature=1.0)
        model.compile(optimizer=LARS(0.1, weight_decay=1e-4))
        model.fit(dataset_of_images_and_labels)
        student.evaluate(...)   # after compiling it, or through model.evaluate
        ```
    """

    def __init__(self, student, teacher, temperature=1.0, alpha=0.0, **kwargs):
        super().__init__(**kwargs)
        _check_models(student, teacher)
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"`temperature` must be a positive number, e.g. 1.0. Received: {temperature!r}.")
        if not (isinstance(alpha, (int, float)) and alpha >= 0):
            raise ValueError(f"`alpha` must be a non-negative number, e.g. 0.0. Received: {alpha!r}.")
        self.student = student
        self.teacher = teacher
        self.teacher.trainable = False  # also puts its batch norm in inference mode
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.distill_loss_tracker = keras.metrics.Mean(name="distill_loss")
        self.agreement = keras.metrics.Mean(name="teacher_agreement")
        self.supervised_loss_tracker = keras.metrics.Mean(name="supervised_loss")
        self.top1 = keras.metrics.SparseCategoricalAccuracy(name="top1")
        self.top5 = keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5")
        self.weight_decay_tracker = keras.metrics.Mean(name="weight_decay")
        self.learning_rate_tracker = keras.metrics.Mean(name="learning_rate")
        self.total_loss_tracker = keras.metrics.Mean(name="loss")

    @property
    def metrics(self):
        return [self.distill_loss_tracker, self.agreement, self.supervised_loss_tracker, self.top1,
                self.top5, self.weight_decay_tracker, self.learning_rate_tracker, self.total_loss_tracker]

    def build(self, input_shape):
        for model in (self.student, self.teacher):
            if not model.built:
                model.build(input_shape)
        self.built = True
        self._share_variable_roles()

    def compile(self, *args, **kwargs):
        super().compile(*args, **kwargs)
        self._share_variable_roles()

    def _share_variable_roles(self):
        optimizer = getattr(self, "optimizer", None)
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # under loss scaling
        if self.student.built and hasattr(optimizer, "set_variable_roles"):
            optimizer.set_variable_roles(self.student.variable_roles())

    def call(self, images, training=False):
        """The student's features (a dict, as `SimCLRModel`), with the teacher's `teacher_logits`."""
        features = self.student(images, training=training)
        features["teacher_logits"] = self.teacher(images, training=False)["logits_sup"]
        return features

    # --- forward ------------------------------------------------------------------------------

    def student_logits(self, images, training=False):
        """The student's supervised logits, through the layers fine-tuning uses."""
        student = self.student
        h = encoder_features(student.encoder, images, training=training)[FEATURE]
        head_input = h
        if student.ft_proj_selector > 0:
            _, hiddens = student.projection_head(h, training=training)
            head_input = hiddens[student.ft_proj_selector]
        return tf.cast(student.supervised_head(head_input, training=training), tf.float32)

    def teacher_logits(self, images):
        """The frozen teacher's supervised logits, in inference mode, without gradient."""
        return tf.stop_gradient(tf.cast(self.teacher(images, training=False)["logits_sup"], tf.float32))

    def _batch_losses(self, images, labels, training):
        """This replica's share of the global batch's losses; updates the metrics.

        `images` is one batch both networks see, or a pair `(student_images, teacher_images)`
        (`--distill_augment=student_crop|student_simclr`: the teacher sees the un-augmented image).
        """
        student_images, teacher_images = images if isinstance(images, (tuple, list)) else (images, images)
        teacher_logits = self.teacher_logits(teacher_images)
        logits = self.student_logits(student_images, training=training)
        labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
        labelled = tf.cast(labels >= 0, tf.float32)
        safe_labels = tf.where(labels >= 0, labels, tf.zeros_like(labels))
        local = tf.stack([tf.cast(tf.shape(logits)[0], tf.float32), tf.reduce_sum(labelled)])
        context = tf.distribute.get_replica_context()
        replicas = 1.0
        counts = local
        if context is not None and context.num_replicas_in_sync > 1:
            counts = context.all_reduce(tf.distribute.ReduceOp.SUM, local)  # (global batch, labelled)
            replicas = float(context.num_replicas_in_sync)
        # Sums over this replica's examples divided by the global counts: averaged over replicas
        # (metrics) or summed after dividing by the replicas (gradients), they are the global means.
        distill = replicas * tf.math.divide_no_nan(
            tf.reduce_sum(_per_example_loss(teacher_logits, logits, self.temperature)), counts[0])
        cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe_labels, logits=logits)
        supervised = replicas * tf.math.divide_no_nan(tf.reduce_sum(cross_entropy * labelled), counts[1])
        self.distill_loss_tracker.update_state(distill)
        self.supervised_loss_tracker.update_state(supervised)
        hit = tf.equal(tf.argmax(logits, axis=-1), tf.argmax(teacher_logits, axis=-1))
        self.agreement.update_state(tf.cast(hit, tf.float32))
        self.top1.update_state(safe_labels, logits, sample_weight=labelled)
        self.top5.update_state(safe_labels, logits, sample_weight=labelled)
        return distill, supervised

    def _weight_decay(self):
        decay = self.student.weight_decay_term(self.optimizer)  # the student's, as it would train alone
        self.weight_decay_tracker.update_state(decay)
        return decay

    # --- steps --------------------------------------------------------------------------------

    def train_step(self, data):
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        if not self.built:
            self.build(tuple(_student_images(images).shape))
        if not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)
        variables = self.trainable_variables  # the student's: the teacher is frozen
        with tf.GradientTape() as tape:
            distill, supervised = self._batch_losses(images, labels, training=True)
            loss = distill + self.alpha * supervised + self._weight_decay()
            self.total_loss_tracker.update_state(loss)
            # Keras sums gradients over replicas (see the class docstring).
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = self.optimizer.scale_loss(loss / tf.cast(replicas, loss.dtype))
        gradients = tape.gradient(scaled, variables)
        # Projection layers above the student's selector do not reach the loss.
        pairs = [(g, v) for g, v in zip(gradients, variables, strict=True) if g is not None]
        self.learning_rate_tracker.update_state(self.optimizer.learning_rate)
        self.optimizer.apply_gradients(pairs)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        if not self.built:
            self.build(tuple(_student_images(images).shape))
        distill, supervised = self._batch_losses(images, labels, training=False)
        self.total_loss_tracker.update_state(distill + self.alpha * supervised)
        return {m.name: m.result() for m in (self.total_loss_tracker, self.distill_loss_tracker,
                                             self.agreement, self.supervised_loss_tracker, self.top1,
                                             self.top5)}

    def get_config(self):
        config = super().get_config()
        config.update({
            "student": keras.saving.serialize_keras_object(self.student),
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "temperature": self.temperature,
            "alpha": self.alpha,
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for name in ("student", "teacher"):
            config[name] = keras.saving.deserialize_keras_object(config[name])
        return cls(**config)
