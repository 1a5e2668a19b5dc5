"""`--ft_head_init=linear_probe`: the head's logits are the logistic regression's decision function
(scikit-learn's own pipeline as the reference), on the features the head reads, and the flag's
errors."""

import dataclasses

import keras
import numpy as np
import pytest
from model_factory import simclr_model

from simclr_tf.config import Config, ConfigError, DataConfig, TrainConfig
from simclr_tf.data.sources import from_arrays
from simclr_tf.training.head_init import PROBE_C, init_head_from_probe, probe_head_weights


def _sklearn_probe(features, labels):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=2000, random_state=0)).fit(
        features, labels)


def _clusters(rng, classes, per_class=6, dim=5):
    centres = rng.normal(scale=3.0, size=(len(classes), dim))
    features = np.concatenate([c + rng.normal(size=(per_class, dim)) for c in centres])
    # Features of very different scales and offsets: the folded standardisation must undo them.
    features = features * np.array([1e-3, 1.0, 50.0, 2.0, 0.1]) + np.array([5.0, -2.0, 100.0, 0.0, 1.0])
    return features, np.repeat(np.asarray(classes), per_class)


def test_logits_are_the_decision_function():
    rng = np.random.default_rng(0)
    features, labels = _clusters(rng, [0, 1, 2])
    kernel, bias, top1 = probe_head_weights(features, labels, 3)
    reference = _sklearn_probe(features, labels)
    test = rng.normal(scale=3.0, size=(40, 5)) * np.array([1e-3, 1.0, 50.0, 2.0, 0.1])
    np.testing.assert_allclose(test @ kernel + bias, reference.decision_function(test), rtol=1e-4, atol=1e-4)
    assert kernel.shape == (5, 3) and kernel.dtype == bias.dtype == np.float32
    assert top1 == pytest.approx(reference.score(features, labels))


def test_two_classes_and_a_class_without_labels():
    rng = np.random.default_rng(1)
    features, labels = _clusters(rng, [0, 2])  # class 1 of 3 has no labelled example
    kernel, bias, _ = probe_head_weights(features, labels, 3)
    reference = _sklearn_probe(features, labels)
    logits = features @ kernel + bias
    # scikit-learn's one row for two classes is the difference of their logits.
    np.testing.assert_allclose(logits[:, 2] - logits[:, 0], reference.decision_function(features),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.array([0, 1, 2])[np.argmax(logits, axis=1)], reference.predict(features))
    assert not kernel[:, 1].any()
    np.testing.assert_allclose(logits[:, 1], logits[:, [0, 2]].min() - 10.0, atol=1e-4)


def test_a_constant_feature_and_one_class_only():
    rng = np.random.default_rng(2)
    features, labels = _clusters(rng, [0, 1])
    features[:, 3] = 7.0  # no spread: must not divide by zero
    kernel, bias, top1 = probe_head_weights(features, labels, 2)
    assert np.all(np.isfinite(kernel)) and np.all(np.isfinite(bias)) and top1 == 1.0
    with pytest.raises(ValueError, match="at least two classes"):
        probe_head_weights(features, np.zeros(len(features), int), 2)


def test_the_model_starts_at_the_probe():
    """On a model whose head reads the first projection layer, the logits after the init are the
    probe's decision function on what the head reads, for labelled and other images alike."""
    keras.utils.set_random_seed(0)
    model = simclr_model(
        encoder=keras.Sequential([keras.layers.Conv2D(6, 3, padding="same", activation="relu"),
                                  keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(16)]),
        num_proj_layers=3, proj_out_dim=4, num_classes=3, train_mode="finetune", ft_proj_selector=1,
        global_bn=False,
    )
    model.build((None, 8, 8, 3))
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(12, 8, 8, 3)).astype(np.uint8)
    labels = np.array([0, 1, 2] * 4)
    top1 = init_head_from_probe(model, from_arrays(images, labels), image_size=8, batch_size=5)

    x = images.astype(np.float32) / 255.0
    features = np.asarray(model.supervised_head_input(x))
    assert features.shape == (12, 16)  # the first layer of the projection head, not the encoder
    reference = _sklearn_probe(features, labels)
    logits = np.asarray(model(x, training=False)["logits_sup"])
    np.testing.assert_allclose(logits, reference.decision_function(features), rtol=1e-3, atol=1e-3)
    assert top1 == pytest.approx(reference.score(features, labels))


def test_config_and_flag():
    assert TrainConfig().ft_head_init == "initializer"
    TrainConfig(train_mode="finetune", ft_head_init="linear_probe").validate()
    with pytest.raises(ConfigError, match="ft_head_init"):
        TrainConfig(train_mode="finetune", ft_head_init="probe").validate()
    with pytest.raises(ConfigError, match="`ft_head_init` is read only with `train_mode=finetune`"):
        TrainConfig(ft_head_init="linear_probe").validate()
    from absl import flags

    from simclr_tf import run

    values = flags.FLAGS
    try:
        values(["prog", "--train_mode=finetune", "--checkpoint=none", "--ft_head_init=linear_probe"])
        config = run.config_from_flags(values)
    finally:
        values.unparse_flags()
    assert config.train.ft_head_init == "linear_probe"
    config.resolved().validate()


@pytest.mark.slow
def test_fine_tuning_starts_from_the_probe(tmp_path, caplog):
    """Fine-tuning runs on 2 labelled digits per class, one step at a learning rate of 1e-12 and a
    batch-norm decay of 0.999999 (nothing moves): from the probe the held-out accuracy is far
    above the random head's (chance)."""
    from simclr_tf.training import train

    def run(head_init):
        config = Config()
        config = dataclasses.replace(
            config,
            data=dataclasses.replace(DataConfig(), dataset="digits", image_size=16, train_labels_per_class=2),
            model=dataclasses.replace(config.model, resnet_depth=10, batch_norm_decay=0.999999),
            optimizer=dataclasses.replace(config.optimizer, optimizer="momentum", learning_rate=1e-12,
                                          learning_rate_scaling="none", warmup_epochs=0.0, weight_decay=0.0),
            train=dataclasses.replace(TrainConfig(), model_dir=str(tmp_path / head_init),
                                      train_mode="finetune",
                                      checkpoint="none", ft_head_init=head_init, train_steps=1,
                                      checkpoint_steps=1, linear_eval_epochs=0),
        )
        return train(config)["eval_top1"]

    caplog.set_level("INFO", logger="simclr_tf")
    random_head = run("initializer")
    probe = run("linear_probe")
    out = caplog.text
    assert "Supervised head initialised by a linear probe on the frozen features of the 20 labelled" in out
    assert random_head < 0.3 and probe > random_head + 0.2, (random_head, probe)
