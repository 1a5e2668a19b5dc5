"""The exported encoder works for the consumers downstream users have: tf.saved_model.load,
Keras 3's TFSMLayer, TF Hub's KerasLayer (tf-keras) and a Keras 3 `.keras` file."""

import json
import os
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from model_factory import simclr_model

from simclr_tf import export
from simclr_tf.models.resnet import FEATURE_NAMES

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(7)
    model = simclr_model(resnet_depth=18, cifar_stem=True, num_proj_layers=2, num_classes=NUM_CLASSES)
    model(tf.zeros([1, 16, 16, 3]))
    # Non-trivial batch-norm statistics and gammas, so inference vs training mode differ.
    for variable in model.weights:
        if "moving_variance" in variable.path:
            variable.assign(np.full(variable.shape, 1.5, np.float32))
        elif "gamma" in variable.path:
            variable.assign(np.full(variable.shape, 0.7, np.float32))
    export_dir = str(tmp_path_factory.mktemp("export"))
    written = export.export_model(model, export_dir, step=12, keep=2, image_size=16)
    return model, export_dir, written


def _sparse_ce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _images(shape, seed=0):
    return tf.constant(np.random.default_rng(seed).uniform(size=shape).astype(np.float32))


def test_export_layout(exported):
    _, export_dir, written = exported
    assert written["saved_model"] == os.path.join(export_dir, "12")
    assert os.path.exists(os.path.join(written["saved_model"], "saved_model.pb"))
    assert os.path.exists(written["keras_file"])
    assert not [name for name in os.listdir(export_dir) if name.startswith(".tmp")]


@pytest.mark.parametrize("shape", [(2, 16, 16, 3), (3, 24, 20, 3)])
def test_saved_model_matches_in_memory_model(exported, shape):
    model, _, written = exported
    loaded = tf.saved_model.load(written["saved_model"])
    images = _images(shape)
    expected = model(images, training=False)
    got = loaded(images, training=False)
    assert set(got) == set(FEATURE_NAMES) | {"proj_head_input", "proj_head_output", "logits_sup"}
    for name, value in expected.items():
        np.testing.assert_allclose(got[name].numpy(), value.numpy(), atol=1e-5, rtol=1e-5, err_msg=name)
    # The original SimCLR modules' spelling, and the serving signature.
    legacy = loaded(images, trainable=False)
    np.testing.assert_allclose(legacy["final_avg_pool"], expected["final_avg_pool"], atol=1e-5)
    served = loaded.signatures["serving_default"](images=images)
    np.testing.assert_allclose(served["block_group4"], expected["block_group4"], atol=1e-5)
    # training=True uses batch statistics: a different result (proves the flag reaches batch norm).
    trained = loaded(images, training=True)["final_avg_pool"].numpy()
    assert not np.allclose(trained, expected["final_avg_pool"].numpy(), atol=1e-3)


def test_saved_model_has_reusable_api(exported):
    model, _, written = exported
    loaded = tf.saved_model.load(written["saved_model"])
    assert len(loaded.variables) == len(model.weights)
    assert len(loaded.trainable_variables) == len(model.trainable_weights)
    assert list(loaded.regularization_losses) == []
    assert all(v.trainable for v in loaded.trainable_variables)


def test_tfsm_layer_inference_and_fine_tuning(exported):
    model, _, written = exported
    layer = keras.layers.TFSMLayer(
        written["saved_model"], call_endpoint="call_inference", call_training_endpoint="call_training"
    )
    images = _images((4, 16, 16, 3), seed=1)
    np.testing.assert_allclose(
        layer(images)["final_avg_pool"], model(images, training=False)["final_avg_pool"], atol=1e-5
    )
    inputs = keras.Input((16, 16, 3))
    features = layer(inputs)["final_avg_pool"]
    outputs = keras.layers.Dense(NUM_CLASSES)(features)
    classifier = keras.Model(inputs, outputs)
    classifier.compile(keras.optimizers.SGD(0.05), _sparse_ce())
    labels = np.array([0, 1, 2, 1])
    before = [w.numpy().copy() for w in layer.trainable_weights]
    losses = [float(classifier.train_on_batch(images, labels)) for _ in range(4)]
    after = [w.numpy() for w in layer.trainable_weights]
    assert len(before) == len(model.trainable_weights)
    assert any(not np.allclose(b, a) for b, a in zip(before, after, strict=True))
    assert losses[-1] < losses[0]


def test_hub_keras_layer_fine_tunes(exported):
    hub = pytest.importorskip("tensorflow_hub")
    tf_keras = pytest.importorskip("tf_keras")
    _, _, written = exported
    hub_layer = hub.KerasLayer(written["saved_model"], trainable=True, output_key="final_avg_pool")
    classifier = tf_keras.Sequential(
        [tf_keras.Input((16, 16, 3)), hub_layer, tf_keras.layers.Dense(NUM_CLASSES)]
    )
    classifier.compile(tf_keras.optimizers.SGD(0.05),
                       tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    images = _images((4, 16, 16, 3), seed=2)
    labels = np.array([2, 0, 1, 0])
    encoder_weights = [v for v in hub_layer.trainable_weights if "kernel" in v.name and v.shape.rank == 4]
    assert encoder_weights, "the hub layer exposes no trainable encoder kernels"
    before = [v.numpy().copy() for v in encoder_weights]
    losses = [float(classifier.train_on_batch(images, labels)) for _ in range(4)]
    assert any(not np.allclose(b, v.numpy()) for b, v in zip(before, encoder_weights, strict=True))
    assert losses[-1] < losses[0]


def test_keras_file_loads_and_fine_tunes(exported):
    model, _, written = exported
    encoder = keras.saving.load_model(written["keras_file"])  # safe mode stays on
    images = _images((4, 16, 16, 3), seed=3)
    expected = model.encoder(images, training=False)
    got = encoder(images, training=False)
    for name in FEATURE_NAMES:
        np.testing.assert_allclose(got[name], expected[name], atol=1e-5, err_msg=name)
    inputs = keras.Input((16, 16, 3))
    classifier = keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(encoder(inputs)["final_avg_pool"]))
    classifier.compile(keras.optimizers.SGD(0.05), _sparse_ce())
    labels = np.array([1, 2, 0, 0])
    before = [w.numpy().copy() for w in encoder.trainable_weights]
    history = classifier.fit(images, labels, epochs=4, batch_size=4, verbose=0)
    assert any(not np.allclose(b, w.numpy()) for b, w in zip(before, encoder.trainable_weights, strict=True))
    assert history.history["loss"][-1] < history.history["loss"][0]


_PLAIN_KERAS_LOAD = """
import importlib.abc
import sys


class NoSimclrTF(importlib.abc.MetaPathFinder):  # the package is installed here: make it absent
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "simclr_tf":
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)")


sys.meta_path.insert(0, NoSimclrTF())
import numpy as np
import keras
encoder = keras.saving.load_model(sys.argv[1])
assert "simclr_tf" not in sys.modules
features = encoder(np.load(sys.argv[2]), training=False)
np.savez(sys.argv[3], **{name: np.asarray(value) for name, value in features.items()})
print(sorted({type(layer).__module__.split(".")[0] for layer in encoder.layers}))
"""


def _load_in_plain_keras(path, images, tmp_path):
    """The features of `images` from the `.keras` file at `path`, loaded by a process in which
    simclr_tf cannot be imported (`python -I`, the package hidden from its import system)."""
    np.save(tmp_path / "images.npy", images)
    result = subprocess.run(
        [sys.executable, "-I", "-c", _PLAIN_KERAS_LOAD, path, str(tmp_path / "images.npy"),
         str(tmp_path / "features.npz")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[-2] == "['keras']"
    return np.load(tmp_path / "features.npz")


def _serialized_modules(path):
    """The modules of every class named in a `.keras` file's config."""
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    found, stack = set(), [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "class_name" in item and "module" in item:
                found.add(str(item["module"]))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def test_keras_file_loads_in_plain_keras(exported, tmp_path):
    # A downstream user's process that never imports simclr_tf (and could not) loads the file:
    # its batch norms are Keras' own, not the fused subclass.
    model, _, written = exported
    images = _images((3, 16, 16, 3), seed=4)
    got = _load_in_plain_keras(written["plain_keras_file"], images, tmp_path)
    assert all(module.split(".")[0] == "keras" for module in _serialized_modules(written["plain_keras_file"]))
    expected = model.encoder(images, training=False)
    for name in FEATURE_NAMES:
        np.testing.assert_allclose(got[name], expected[name], atol=1e-6, rtol=1e-6, err_msg=name)


def _random_batch_norms(model, seed):
    """Batch-norm statistics and affine weights away from their initial values (so a wrong split
    of the channels, or a wrong mode, shows)."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape, path = variable.shape, variable.path
        if "moving_variance" in path:
            variable.assign(rng.uniform(0.5, 2.0, shape).astype(np.float32))
        elif "moving_mean" in path or "beta" in path:
            variable.assign(rng.normal(0.0, 0.2, shape).astype(np.float32))
        elif "gamma" in path:
            variable.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))


def test_selective_kernels_and_squeeze_excitation_load_in_plain_keras(tmp_path):
    """SimCLRv2's layers become functional models of Keras layers: same outputs, no simclr_tf."""
    from simclr_tf.models.layers import SelectiveKernelConv2D, SqueezeExcitation
    from simclr_tf.models.resnet import build_resnet

    keras.utils.set_random_seed(3)
    inputs = keras.Input((None, None, 8))
    x = SelectiveKernelConv2D(8, strides=2, sk_ratio=0.0625, min_dim=4, name="sk_strided")(inputs)
    x = SelectiveKernelConv2D(16, name="sk")(x)
    x = SqueezeExcitation(4, 0.25, name="se")(x)
    layers_model = keras.Model(inputs, {"final_avg_pool": keras.layers.GlobalAveragePooling2D()(x), "map": x})
    # And a whole (tiny) encoder with them: ResNet-D shortcuts, squeeze-excitation in every block.
    encoder = build_resnet(18, cifar_stem=True, sk_ratio=0.0625, se_ratio=0.25)
    for index, (model, shape) in enumerate([(layers_model, (2, 12, 12, 8)), (encoder, (2, 16, 16, 3))]):
        _random_batch_norms(model, seed=index)
        plain = export.with_keras_batch_norm(model, convolutions=True)
        path = str(tmp_path / f"plain{index}.keras")
        plain.save(path)
        assert all(module.split(".")[0] == "keras" for module in _serialized_modules(path))
        images = _images(shape, seed=index)
        got = _load_in_plain_keras(path, images, tmp_path)
        expected = model(images, training=False)
        for name, value in expected.items():
            np.testing.assert_allclose(got[name], value, atol=1e-6, rtol=1e-6, err_msg=f"{index} {name}")
        # Training mode (batch statistics) too: the halves of a batch norm see the same channels.
        # Keras' composite batch norm and the fused kernel round the batch variance differently
        # (2x2 maps, batch 2: 8 values per channel), hence the looser tolerance.
        trained = plain(images, training=True)
        for name, value in model(images, training=True).items():
            np.testing.assert_allclose(trained[name], value, atol=1e-4, rtol=1e-4, err_msg=f"{index} {name}")


@pytest.mark.slow
def test_export_keeps_newest(tmp_path):
    keras.utils.set_random_seed(1)
    model = simclr_model(resnet_depth=18, cifar_stem=True, num_proj_layers=1, proj_out_dim=8)
    model(tf.zeros([1, 8, 8, 3]))
    for step in (1, 5, 3):
        export.export_model(model, str(tmp_path), step=step, keep=2, include_heads=False)
    assert sorted(os.listdir(tmp_path)) == ["3", "5"]
    assert export.latest_export(str(tmp_path)) == os.path.join(str(tmp_path), "5")
    loaded = tf.saved_model.load(os.path.join(str(tmp_path), "5"))
    assert "proj_head_output" not in loaded(tf.zeros([1, 8, 8, 3]))


def test_downstream_example_fine_tunes_on_an_image_folder(exported, tmp_path):
    """experiments/finetune_downstream.py, the README's example, runs as written."""
    import importlib.util

    from PIL import Image

    rng = np.random.default_rng(0)
    for name, level in (("bright", 200), ("dark", 40)):
        os.makedirs(tmp_path / name)
        for i in range(8):
            pixels = np.clip(level + rng.normal(0, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments", "finetune_downstream.py")
    spec = importlib.util.spec_from_file_location("finetune_downstream", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    _, _, written = exported
    history = script.main(["--export", written["saved_model"], "--images", str(tmp_path), "--image_size",
                           "16", "--epochs", "4", "--batch_size", "8", "--learning_rate", "0.05"])
    assert history.history["loss"][-1] < history.history["loss"][0]


_IMPORT_SIMCLR_TF_LOAD = """
import sys
import simclr_tf  # nothing else of the package: its import registers the classes with Keras
assert "tensorflow" not in sys.modules  # and stays light
import keras
import numpy as np
encoder = keras.saving.load_model(sys.argv[1])
np.save(sys.argv[3], np.asarray(encoder(np.load(sys.argv[2]), training=False)["final_avg_pool"]))
"""


@pytest.mark.parametrize("first", ["simclr_tf", "keras"])
def test_import_simclr_tf_is_enough_to_load_encoder_keras(exported, tmp_path, first):
    model, _, written = exported
    images = _images((2, 16, 16, 3), seed=5)
    np.save(tmp_path / "images.npy", images)
    code = _IMPORT_SIMCLR_TF_LOAD
    if first == "keras":  # Keras imported before simclr_tf: registered at once
        code = code.replace('import simclr_tf  #', 'import keras\nimport simclr_tf  #').replace(
            'assert "tensorflow" not in sys.modules', 'pass')
    result = subprocess.run([sys.executable, "-c", code, written["keras_file"], str(tmp_path / "images.npy"),
                             str(tmp_path / "pool.npy")], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "pool.npy"),
                               model.encoder(images, training=False)["final_avg_pool"], atol=1e-6, rtol=1e-6)
