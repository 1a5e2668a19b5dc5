"""Distillation (SimCLRv2 step 3): the loss against NumPy, a frozen teacher, a student that learns,
the run end to end (teacher -> student -> evaluation), the config's errors, and 2 replicas."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from model_factory import simclr_model

from simclr_tf import checkpoints
from simclr_tf.config import Config, ConfigError, DataConfig, TrainConfig, save_config
from simclr_tf.models.build import build_model
from simclr_tf.models.distill import DistillationModel, distillation_loss

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE, CLASSES = 8, 4


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _numpy_distillation(teacher_logits, student_logits, temperature):
    """SimCLRv2 eq. 2, written out: -sum_y P_T(y|x; tau) log P_S(y|x; tau), mean over x."""
    p_teacher = _softmax(teacher_logits / temperature)
    log_p_student = np.log(_softmax(student_logits / temperature))
    return float(np.mean(-np.sum(p_teacher * log_p_student, axis=-1)))


def _numpy_cross_entropy(logits, labels):
    labelled = labels >= 0
    log_p = np.log(_softmax(logits[labelled]))
    return float(np.mean(-log_p[np.arange(labelled.sum()), labels[labelled]]))


def _tiny_pair(seed=0, student_encoder=None):
    """A student without batch norm (so training mode computes what inference does) and a teacher
    with batch norm, whose moving statistics would move if it ran in training mode."""
    keras.utils.set_random_seed(seed)
    student = simclr_model(
        encoder=student_encoder or keras.Sequential([
            keras.layers.Conv2D(6, 3, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(16)]),
        num_proj_layers=2, proj_out_dim=4, num_classes=CLASSES, train_mode="finetune", global_bn=False,
    )
    teacher = simclr_model(
        encoder=keras.Sequential([keras.layers.Conv2D(6, 3, padding="same"),
                                  keras.layers.BatchNormalization(),
                                  keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D()]),
        num_proj_layers=2, proj_out_dim=4, num_classes=CLASSES, train_mode="finetune", global_bn=False,
    )
    for model in (student, teacher):
        model.build((None, SIZE, SIZE, 3))
    # A confident teacher (the heads start at stddev 0.01, which predicts nearly uniformly).
    rng = np.random.default_rng(seed)
    for weight in teacher.supervised_head.trainable_weights:
        weight.assign(rng.normal(scale=2.0, size=weight.shape).astype(np.float32))
    # Non-trivial moving statistics, so that a training-mode call would visibly change them.
    for weight in teacher.encoder.layers[1].non_trainable_weights:
        weight.assign(np.full(weight.shape, 0.5, np.float32))
    return student, teacher


def _batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(n, SIZE, SIZE, 3)).astype(np.float32)


# --- the loss ----------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0, 4.0])
def test_distillation_loss_against_numpy(temperature):
    rng = np.random.default_rng(1)
    teacher_logits = rng.normal(scale=3.0, size=(6, 5)).astype(np.float32)
    student_logits = rng.normal(scale=3.0, size=(6, 5)).astype(np.float32)
    got = float(distillation_loss(teacher_logits, student_logits, temperature=temperature))
    np.testing.assert_allclose(got, _numpy_distillation(teacher_logits, student_logits, temperature),
                               rtol=1e-5)


def test_distillation_loss_analytic_cases():
    logits = np.array([[2.0, -1.0, 0.5]], np.float32)
    p = _softmax(logits)
    # Student equals teacher: the loss is the teacher's entropy (its minimum over students).
    entropy = float(-(p * np.log(p)).sum())
    np.testing.assert_allclose(float(distillation_loss(logits, logits)), entropy, rtol=1e-6)
    # A uniform student gives log(num_classes) whatever the teacher.
    np.testing.assert_allclose(float(distillation_loss(logits, np.zeros_like(logits))), np.log(3), rtol=1e-6)
    # No gradient flows into the teacher's logits.
    teacher = tf.Variable(logits)
    with tf.GradientTape() as tape:
        loss = distillation_loss(teacher, tf.zeros_like(logits))
    assert tape.gradient(loss, teacher) is None


@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.0), (0.5, 0.0), (2.0, 0.7)])
def test_train_step_loss_against_numpy(temperature, alpha):
    """The loss a step reports (before its update) is eq. 2 plus alpha times the labelled CE."""
    student, teacher = _tiny_pair()
    model = DistillationModel(student, teacher, temperature=temperature, alpha=alpha)
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    images = _batch()
    labels = np.array([0, -1, 2, -1, -1, 3, 1, -1], np.int32)
    teacher_logits = teacher(images)["logits_sup"].numpy()
    student_logits = student(images)["logits_sup"].numpy()
    metrics = model.train_on_batch(images, labels, return_dict=True)
    distill = _numpy_distillation(teacher_logits, student_logits, temperature)
    cross_entropy = _numpy_cross_entropy(student_logits, labels)
    np.testing.assert_allclose(metrics["distill_loss"], distill, rtol=1e-5)
    np.testing.assert_allclose(metrics["supervised_loss"], cross_entropy, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], distill + alpha * cross_entropy, rtol=1e-5)


# --- the teacher stays, the student learns -----------------------------------------------------


def test_teacher_never_changes_and_student_learns_it():
    student, teacher = _tiny_pair()
    model = DistillationModel(student, teacher, temperature=1.0)
    model.compile(optimizer=keras.optimizers.Adam(0.02))
    teacher_before = [w.copy() for w in teacher.get_weights()]
    student_before = [w.copy() for w in student.get_weights()]
    assert not model.teacher.trainable_weights
    assert {id(v) for v in model.trainable_variables} <= {id(v) for v in student.trainable_variables}

    images = _batch(16)
    labels = np.full((16,), -1, np.int32)  # unlabelled: the teacher is the only signal
    before = model.evaluate(images, labels, verbose=0, return_dict=True)
    model.fit(tf.data.Dataset.from_tensors((images, labels)).repeat(), steps_per_epoch=60, epochs=1,
              verbose=0)
    after = model.evaluate(images, labels, verbose=0, return_dict=True)

    for got, want in zip(teacher.get_weights(), teacher_before, strict=True):
        np.testing.assert_array_equal(got, want)  # kernels, gamma/beta and the moving statistics
    assert any(not np.array_equal(g, w) for g, w in zip(student.get_weights(), student_before, strict=True))
    assert after["distill_loss"] < before["distill_loss"] - 0.05, (before, after)
    assert after["teacher_agreement"] > before["teacher_agreement"], (before, after)
    assert after["teacher_agreement"] >= 0.75, after


def test_models_are_checked():
    student, teacher = _tiny_pair()
    headless = simclr_model(encoder=keras.layers.Flatten(), num_classes=0)
    with pytest.raises(ValueError, match="teacher needs a supervised head"):
        DistillationModel(student, headless)
    other = simclr_model(encoder=keras.layers.Flatten(), num_classes=CLASSES + 1, train_mode="finetune")
    with pytest.raises(ValueError, match="same classes: the teacher has 5, the student 4"):
        DistillationModel(student, other)
    with pytest.raises(ValueError, match="`temperature` must be a positive number"):
        DistillationModel(student, teacher, temperature=0.0)
    with pytest.raises(ValueError, match="`alpha` must be a non-negative number"):
        DistillationModel(student, teacher, alpha=-1.0)


# --- configuration -----------------------------------------------------------------------------


def test_config_errors():
    with pytest.raises(ConfigError, match="`train_mode=distill` needs a teacher: --teacher="):
        TrainConfig(train_mode="distill").validate()
    with pytest.raises(ConfigError, match="`teacher` is read only with `train_mode=distill`"):
        TrainConfig(teacher="runs/x").validate()
    with pytest.raises(ConfigError, match="`distill_temperature` must be positive. Received: 0.0"):
        TrainConfig(train_mode="distill", teacher="runs/x", distill_temperature=0.0).validate()
    with pytest.raises(ConfigError, match="`distill_alpha` must be non-negative. Received: -0.5"):
        TrainConfig(train_mode="distill", teacher="runs/x", distill_alpha=-0.5).validate()
    TrainConfig(train_mode="distill", teacher="runs/x", distill_alpha=0.5).validate()


def test_teachers_that_cannot_teach(tmp_path):
    from simclr_tf.training import distill

    no_config = tmp_path / "no_config"
    config = _tiny_config(str(no_config), train_mode="pretrain", lineareval_while_pretraining=False)
    model = build_model(config.resolved(), 0)
    checkpoints.CheckpointSaver(model, None, str(no_config)).save(1)
    with pytest.raises(FileNotFoundError, match="has no config.json beside its checkpoint"):
        distill.teacher_config(str(no_config))
    save_config(config, str(no_config))
    with pytest.raises(ValueError, match="has no supervised head, so it predicts no classes"):
        distill.teacher_config(str(no_config))


# --- end to end --------------------------------------------------------------------------------


def _tiny_config(model_dir, **train):
    config = Config()
    train.setdefault("linear_eval_epochs", 0)
    return dataclasses.replace(
        config,
        data=dataclasses.replace(DataConfig(), dataset="digits", image_size=16),
        model=dataclasses.replace(config.model, resnet_depth=18, num_proj_layers=2),
        train=dataclasses.replace(TrainConfig(), model_dir=model_dir, train_batch_size=64,
                                  eval_batch_size=128, train_steps=3, checkpoint_steps=3, **train),
    )


@pytest.mark.slow
def test_teacher_then_student_then_eval(tmp_path):
    """A SimCLRv2-style teacher (3-layer head, fine-tuned from its first layer) distilled into a
    student with a 2-layer head read at the encoder; the student's run evaluates on its own."""
    from simclr_tf.training import distill, train

    teacher_dir = str(tmp_path / "teacher")
    teacher_config = _tiny_config(teacher_dir, train_mode="finetune", checkpoint="none")
    teacher_config = dataclasses.replace(teacher_config, model=dataclasses.replace(
        teacher_config.model, num_proj_layers=3, ft_proj_selector=1))
    taught = train(teacher_config)
    assert taught["eval_protocol"] == "finetune"

    student_dir = str(tmp_path / "student")
    config = _tiny_config(student_dir, train_mode="distill", teacher=teacher_dir, distill_temperature=2.0,
                          distill_alpha=0.5)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, train_labels_per_class=2))
    distilled = train(config)
    assert distilled["eval_protocol"] == "distill" and distilled["eval_examples"] == 360
    # The run's evaluation is the student checkpoint's accuracy on digits' 360 test images: a count
    # of them, and that of the checkpoint restored into a fresh model to within one image (after 3
    # steps the student is at chance, its logits nearly tied: the run's compiled step and this
    # eager call part on one of them).
    from simclr_tf import convert
    from simclr_tf.training import inputs

    student = build_model(config.resolved(), 10)
    convert.restore_pretrained(student, distilled["checkpoint"], train_mode="eval")
    correct = 0
    for images, labels in inputs.eval_dataset(config, inputs.data_splits(config).eval):
        predicted = np.argmax(student(images, training=False)["logits_sup"].numpy(), axis=1)
        correct += int(np.sum(predicted == labels.numpy()))
    assert distilled["eval_top1"] * 360 == pytest.approx(round(distilled["eval_top1"] * 360), abs=1e-3)
    assert abs(round(distilled["eval_top1"] * 360) - correct) <= 1, (distilled["eval_top1"], correct)
    assert np.isfinite(distilled["train_distill_loss"]) and "train_teacher_agreement" in distilled
    # Every training image (the teacher was fine-tuned on all of them), not the 20 labelled ones.
    assert distilled["num_train_examples"] == taught["num_train_examples"] > 20
    # The checkpoint holds the student as `model`, the layout of a fine-tuned run.
    assert checkpoints.checkpoint_num_classes(distilled["checkpoint"]) == 10
    with open(os.path.join(student_dir, "result.json")) as f:
        assert json.load(f)["eval_protocol"] == "distill"

    evaluated = train(dataclasses.replace(config, train=dataclasses.replace(config.train, mode="eval")))
    np.testing.assert_allclose(evaluated["eval_top1"], distilled["eval_top1"], atol=1e-6)

    # A teacher of other classes than the data's is refused, before anything is built.
    resolved = config.resolved()
    with pytest.raises(ConfigError, match="predicts 10 classes, but the data's labels have 3"):
        distill.load_teacher(resolved, tf.distribute.get_strategy(), 3)


# --- two replicas ------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_replicas_train_like_one_device():
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_CONFIG", None)
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "distill_distributed_check.py"), "2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["update_max"] > 1e-3  # the steps moved the student...
    assert result["student_diff"] < 1e-6, result  # ...to the same weights on 2 replicas as on one
    assert result["teacher_changed_single"] == 0.0 and result["teacher_changed_replicated"] == 0.0
    np.testing.assert_allclose(result["loss_replicated"], result["loss_single"], rtol=1e-5)
    np.testing.assert_allclose(result["supervised_replicated"], result["supervised_single"], rtol=1e-5)
