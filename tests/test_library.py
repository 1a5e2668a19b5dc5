"""simclr_tf as a library: any Keras encoder, plain compile / fit, serialisation, old checkpoints."""

import json
import pathlib
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from model_factory import simclr_model

import simclr_tf
from simclr_tf.config import Config, DataConfig, LossConfig, ModelConfig, OptimizerConfig, TrainConfig
from simclr_tf.models.heads import ProjectionHead, SupervisedHead
from simclr_tf.models.simclr import SimCLRModel
from simclr_tf.optimizers import LARS

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = 32


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- library-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its library example (after <!-- library-example -->)"
    return match.group(1)


def _views(batch=8, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.uniform(size=(batch, SIZE, SIZE, 3)).astype(np.float32)
    noisy = lambda: np.clip(base + 0.05 * rng.normal(size=base.shape), 0, 1).astype(np.float32)
    return (noisy(), noisy()), (np.arange(batch) % 3).astype(np.int32)


def _small_encoder():
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)  # a batch norm whose name says nothing
    x = keras.layers.ReLU()(x)
    return keras.Model(inputs, x, name="tiny")  # a feature map: SimCLRModel average-pools it


@pytest.mark.slow
def test_readme_library_example_runs_and_excludes_batch_norm_by_role():
    namespace = {}
    exec(compile(_readme_example(), "README.md:library-example", "exec"), namespace)
    model, backbone = namespace["model"], namespace["backbone"]
    assert tuple(namespace["features"].shape) == (4, 2048)
    optimizer = model.optimizer
    assert int(optimizer.iterations.numpy()) == 3
    bn_layers = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bn_layers) == 53
    bn_ids = {id(v) for layer in bn_layers for v in layer.trainable_weights}
    built = optimizer._trainable_variables
    decayed = {id(v) for v, flag in zip(built, optimizer._decay_flags, strict=True) if flag}
    adapted = {id(v) for v, flag in zip(built, optimizer._adaptation_flags, strict=True) if flag}
    assert len(bn_ids) == 106 and not bn_ids & decayed and not bn_ids & adapted
    conv_kernels = {id(layer.kernel) for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D)}
    assert len(conv_kernels) == 53 and conv_kernels <= decayed and conv_kernels <= adapted
    # The model holds the backbone and its heads, and no unused ResNet of ours.
    head_weights = len(model.projection_head.weights)
    assert len(model.weights) == len(backbone.weights) + head_weights


def test_plain_fit_without_a_dummy_call_learns():
    keras.utils.set_random_seed(0)
    model = SimCLRModel(_small_encoder(), ProjectionHead(proj_out_dim=16), SupervisedHead(3),
                        loss_config=LossConfig(temperature=0.5))
    model.compile(optimizer=LARS(0.5, weight_decay=1e-4))
    views, labels = _views(16)
    dataset = tf.data.Dataset.from_tensors((views, labels)).repeat()
    before = [v.numpy().copy() for v in model.encoder.trainable_weights] if model.built else None
    assert before is None  # not built yet: fit builds it on the first batch
    history = model.fit(dataset, epochs=1, steps_per_epoch=12, verbose=0)
    losses = history.history["contrastive_loss"]
    assert np.all(np.isfinite(losses))
    # The projection head sized itself from the pooled feature map (8 channels).
    assert model.projection_head.weights[0].shape == (8, 8)
    # The supervised head (online linear evaluation) trained on stop-gradient features too.
    assert "top1" in history.history
    first = model.train_step(_as_tensors(views, labels))["contrastive_loss"]
    for _ in range(10):
        last = model.train_step(_as_tensors(views, labels))["contrastive_loss"]
    assert float(last) < float(first)


def _as_tensors(views, labels):
    return (tf.constant(views[0]), tf.constant(views[1])), tf.constant(labels)


@pytest.mark.parametrize("ours", [False, True], ids=["user_encoder", "our_resnet"])
def test_keras_file_round_trip(tmp_path, ours):
    if ours:
        model = simclr_model(resnet_depth=18, cifar_stem=True, se_ratio=0.25, num_proj_layers=2,
                             proj_out_dim=16, num_classes=3)
    else:
        model = SimCLRModel(_small_encoder(), ProjectionHead(proj_out_dim=16), SupervisedHead(3))
    model.build((None, SIZE, SIZE, 3))
    for v in model.non_trainable_weights:  # batch-norm statistics away from 0 / 1
        v.assign(np.random.default_rng(2).uniform(0.5, 1.5, v.shape).astype(np.float32))
    images = np.random.default_rng(1).uniform(size=(4, SIZE, SIZE, 3)).astype(np.float32)
    expected = model(images, training=False)
    path = str(tmp_path / "simclr.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, SimCLRModel) and restored.num_classes == 3
    assert restored.encoder.name == ("resnet" if ours else "tiny")
    got = restored(images, training=False)
    for name in ("final_avg_pool", "proj_head_output", "logits_sup"):
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("memory_buffer_size", [0, 8])
def test_config_round_trip_of_our_resnet_model(memory_buffer_size):
    model = simclr_model(resnet_depth=18, cifar_stem=True, num_proj_layers=2, proj_out_dim=16, num_classes=3,
                         temperature=0.2, memory_buffer_size=memory_buffer_size, weight_decay=1e-4)
    model.build((None, 16, 16, 3))
    config = model.get_config()
    assert config["loss_config"]["temperature"] == 0.2 and config["weight_decay"] == 1e-4
    assert config["encoder"]["config"]["name"] == "resnet"  # the built parts, serialised by Keras
    again = SimCLRModel.from_config(config)
    again.build((None, 16, 16, 3))
    assert [v.path for v in again.weights] == [v.path for v in model.weights]
    assert again.get_config() == config
    assert again.loss_config == model.loss_config and again.num_classes == 3
    assert (again.memory is None) == (memory_buffer_size == 0)


def test_the_defaults_are_the_configs():
    """A head or loss not given is the config's default; the builder passes the config's own."""
    model = SimCLRModel(_small_encoder())
    assert model.loss_config == LossConfig()
    head, default = model.projection_head, ModelConfig()
    assert (head.proj_head_mode, head.proj_out_dim, head.num_proj_layers, head.batch_norm_decay,
            head.global_bn) == (default.proj_head_mode, default.proj_out_dim, default.num_proj_layers,
                                default.batch_norm_decay, default.global_bn)
    assert (model.train_mode, model.lineareval_while_pretraining, model.ft_proj_selector,
            model.fine_tune_after_block) == ("pretrain", TrainConfig().lineareval_while_pretraining,
                                             default.ft_proj_selector, TrainConfig().fine_tune_after_block)


def test_a_vector_encoder_and_a_dict_encoder():
    inputs = keras.Input((SIZE, SIZE, 3))
    vector = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(5, 3)(inputs)))
    model = SimCLRModel(vector, ProjectionHead(proj_out_dim=4))
    features = model(np.zeros((2, SIZE, SIZE, 3), np.float32))
    assert tuple(features["final_avg_pool"].shape) == (2, 5)
    assert tuple(features["proj_head_output"].shape) == (2, 4)
    pooled = keras.layers.Flatten()(keras.layers.MaxPooling2D(8)(inputs))
    named = keras.Model(inputs, {"final_avg_pool": pooled})
    model = SimCLRModel(named, ProjectionHead(num_proj_layers=1, proj_out_dim=4))
    features = model(np.zeros((2, SIZE, SIZE, 3)))
    assert tuple(features["final_avg_pool"].shape) == (2, 48)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(encoder="resnet50"), r"`encoder` must be a Keras model or layer.*Received: str"),
        (dict(encoder=None), r"`encoder` must be a Keras model or layer.*Received: NoneType"),
        (dict(encoder=keras.layers.Dense(3), projection_head="mlp"),
         r"`projection_head` must be a Keras model or layer. Received: str"),
        (dict(encoder=keras.layers.Dense(3), train_mode="finetune", supervised_head=SupervisedHead(2),
              fine_tune_after_block=2),
         r"with your own `encoder` use -1 .* or 4 .*Received: fine_tune_after_block=2"),
    ],
)
def test_bad_encoders_say_what_to_do(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SimCLRModel(**kwargs)


def test_an_encoder_with_the_wrong_output_says_so():
    inputs = keras.Input((SIZE, SIZE, 3))
    model = SimCLRModel(keras.Model(inputs, keras.layers.Reshape((SIZE, SIZE * 3))(inputs)))
    with pytest.raises(ValueError, match=r"feature vector \(batch_size, dim\).*Received an output of shape"):
        model.build((None, SIZE, SIZE, 3))


def test_linear_evaluation_freezes_a_user_encoder():
    model = SimCLRModel(_small_encoder(), supervised_head=SupervisedHead(3), train_mode="finetune",
                        fine_tune_after_block=4)
    model.build((None, SIZE, SIZE, 3))
    trainable = {v.path for v in model.trainable_variables}
    assert trainable == {v.path for v in model.supervised_head.trainable_weights}


@pytest.mark.slow
def test_checkpoints_keep_the_object_names_of_earlier_versions(tmp_path):
    """A run writes exactly the checkpoint keys (and shapes) of the code before the library split.

    tests/data/checkpoint_keys_v0.json was written by simclr_tf at commit dc512cf (the last
    version with train.py) for these two runs; checkpoints restore by these keys, so checkpoints
    of that version restore into this one.
    """
    golden = json.loads((ROOT / "tests" / "data" / "checkpoint_keys_v0.json").read_text())
    cases = {
        "resnet18_pretrain": Config(
            data=DataConfig(dataset="synthetic", image_size=16, synthetic_examples=64),
            model=ModelConfig(resnet_depth=18, num_proj_layers=2, se_ratio=0.25),
            optimizer=OptimizerConfig(warmup_epochs=0),
            train=TrainConfig(train_batch_size=16, train_steps=1, linear_eval_epochs=0, mode="train",
                              model_dir=str(tmp_path / "a"))),
        "resnet50_sk_finetune": Config(
            data=DataConfig(dataset="synthetic", image_size=32, synthetic_examples=64),
            model=ModelConfig(resnet_depth=50, sk_ratio=0.0625, num_proj_layers=3, ft_proj_selector=1),
            optimizer=OptimizerConfig(warmup_epochs=0),
            train=TrainConfig(train_batch_size=8, train_steps=1, linear_eval_epochs=0, mode="train",
                              train_mode="finetune", checkpoint="none", model_dir=str(tmp_path / "b"))),
    }
    for name, config in cases.items():
        simclr_tf.train(config)
        prefix = tf.train.latest_checkpoint(config.train.model_dir)
        keys = sorted([k, list(s)] for k, s in tf.train.list_variables(prefix))
        assert keys == golden[name], name
