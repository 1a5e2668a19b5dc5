"""`--distill_augment`: the student learns on its augmented images what the teacher predicts on the
un-augmented ones (the step's loss against NumPy, the paired dataset, the config and the flag)."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf
from model_factory import simclr_model

from simclr_tf.config import Config, ConfigError, TrainConfig
from simclr_tf.data import views
from simclr_tf.data.pipeline import build_distill_pair_dataset as distill_pair_dataset
from simclr_tf.data.sources import load_source
from simclr_tf.models.distill import DistillationModel

SIZE, CLASSES = 8, 4


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _model(seed, batch_norm):
    keras.utils.set_random_seed(seed)
    layers = [keras.layers.Conv2D(6, 3, padding="same")]
    layers += [keras.layers.BatchNormalization()] if batch_norm else []
    layers += [keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D()]
    model = simclr_model(encoder=keras.Sequential(layers), num_proj_layers=2, proj_out_dim=4,
                        num_classes=CLASSES, train_mode="finetune", global_bn=False)
    model.build((None, SIZE, SIZE, 3))
    rng = np.random.default_rng(seed)
    for weight in model.supervised_head.trainable_weights:  # confident predictions
        weight.assign(rng.normal(scale=2.0, size=weight.shape).astype(np.float32))
    return model


@pytest.mark.parametrize("temperature", [0.1, 1.0])
def test_student_learns_on_its_images_what_the_teacher_predicts_on_its_own(temperature):
    student, teacher = _model(0, batch_norm=False), _model(1, batch_norm=True)
    model = DistillationModel(student, teacher, temperature=temperature)
    model.build((None, SIZE, SIZE, 3))
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    rng = np.random.default_rng(2)
    student_images, teacher_images = (rng.uniform(size=(8, SIZE, SIZE, 3)).astype(np.float32)
                                      for _ in range(2))
    labels = np.full(8, -1, np.int32)
    p_teacher = _softmax(teacher(teacher_images)["logits_sup"].numpy() / temperature)
    student_logits = student(student_images)["logits_sup"].numpy()
    expected = float(np.mean(-np.sum(p_teacher * np.log(_softmax(student_logits / temperature)), -1)))
    # the same images for both would give another loss: the test tells the two apart
    p_same = _softmax(teacher(student_images)["logits_sup"].numpy() / temperature)
    other = float(np.mean(-np.sum(p_same * np.log(_softmax(student_logits / temperature)), -1)))
    assert abs(expected - other) > 1e-3
    dataset = tf.data.Dataset.from_tensors(((student_images, teacher_images), labels))
    history = model.fit(dataset, epochs=1, verbose=0)
    np.testing.assert_allclose(history.history["distill_loss"][0], expected, rtol=1e-5)
    # plain images still serve both (evaluation, or `same`)
    metrics = model.train_on_batch(student_images, labels, return_dict=True)
    np.testing.assert_allclose(metrics["distill_loss"], other, rtol=1e-5)


@pytest.mark.parametrize("student_view", ["crop", "simclr"])
def test_paired_batches_show_the_teacher_the_unaugmented_image(student_view):
    source = load_source("digits", "test")
    size = 16
    dataset = distill_pair_dataset(source, global_batch_size=32, image_size=size,
                                   augment=Config().augment.for_dataset("digits"), student_view=student_view,
                                   seed=3)
    (student_images, teacher_images), labels = next(iter(dataset))
    assert student_images.shape == teacher_images.shape == (32, size, size, 3)
    clean = {}
    for image, label in source.dataset:
        key = views.eval_preprocess(image, image_size=size).numpy().round(5).tobytes()
        clean[key] = int(label)
    for teacher_image, label in zip(teacher_images.numpy(), labels.numpy(), strict=True):
        assert clean[teacher_image.round(5).tobytes()] == label  # exactly an un-augmented image
    assert not np.allclose(student_images.numpy(), teacher_images.numpy(), atol=1e-3)
    with pytest.raises(ValueError, match="student_view"):
        distill_pair_dataset(source, global_batch_size=8, image_size=size,
                             augment=Config().augment, student_view="colour")


def test_config_and_flag():
    from absl import flags

    from simclr_tf import run

    assert TrainConfig().distill_augment == "same"
    distill = dataclasses.replace(TrainConfig(), train_mode="distill", teacher="runs/t")
    dataclasses.replace(distill, distill_augment="student_simclr").validate()
    with pytest.raises(ConfigError, match="distill_augment"):
        dataclasses.replace(distill, distill_augment="strong").validate()
    with pytest.raises(ConfigError, match="read only with `train_mode=distill`"):
        dataclasses.replace(TrainConfig(), distill_augment="student_crop").validate()
    values = flags.FLAGS
    try:
        values(["prog", "--train_mode=distill", "--teacher=runs/t", "--distill_augment=student_crop"])
        config = run.config_from_flags(values)
    finally:
        values.unparse_flags()
    assert config.train.distill_augment == "student_crop"
    config.resolved().validate()
