"""simclr_tf.convert: the original SimCLR TF2 code's files, read into simclr_tf output for output.

The fixtures in ../shared/fixtures/official_simclr_tf2 were written by the original code itself (a
SimCLRv2 ResNet-50 SK SavedModel in the release format, a ResNet-18 CIFAR training checkpoint),
each with the outputs that code computed. They are unpacked here into temporary directories and
never copied into the project.
"""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf import checkpoints, cli
from simclr_tf import convert as convert_pkg
from simclr_tf.config import Config, DataConfig, TrainConfig, load_config
from simclr_tf.convert import ConversionError, OriginalCheckpoint, convert, read_architecture
from simclr_tf.models.build import build_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "official_simclr_tf2"
NAMES = ("initial_conv", "initial_max_pool", "block_group1", "block_group2", "block_group3",
         "block_group4", "final_avg_pool", "proj_head_input", "proj_head_output", "logits_sup")
ENCODER_NAMES = NAMES[:7]
TOLERANCE = 1e-5  # of each tensor's largest absolute value
# fixture -> (archive, what it unpacks to)
ARCHIVES = {"r18_cifar_ckpt": ("model_dir.tar.xz", "model_dir"),
            "r50_sk1_v2_savedmodel": ("saved_model.tar.xz", "saved_model")}

pytestmark = pytest.mark.skipif(
    not FIXTURES.is_dir(),
    reason=f"the original code's fixtures are not here ({FIXTURES}): they live next to the project "
           "in the development checkout only",
)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """fixture name -> path of the unpacked original SavedModel / model_dir."""
    unpacked = {}
    for name, (archive, member) in ARCHIVES.items():
        target = tmp_path_factory.mktemp(name)
        with tarfile.open(FIXTURES / name / archive) as tar:
            tar.extractall(target, filter="data")
        unpacked[name] = str(target / member)
    return unpacked


@pytest.fixture(scope="module")
def converted(sources, tmp_path_factory):
    """fixture name -> converted run directory (the ResNet-18 through the console command)."""
    out = tmp_path_factory.mktemp("converted")
    runs = {name: str(out / name) for name in ARCHIVES}
    assert cli.main(["convert", sources["r18_cifar_ckpt"], "--model_dir", runs["r18_cifar_ckpt"]]) == 0
    convert(sources["r50_sk1_v2_savedmodel"], runs["r50_sk1_v2_savedmodel"])
    return runs


def _expected(name):
    return dict(np.load(FIXTURES / name / "expected.npz"))


def _flags(name):
    return json.loads((FIXTURES / name / "official_flags.json").read_text())


def _relative_differences(outputs, expected, names):
    return {k: float(np.max(np.abs(np.asarray(outputs[k]) - expected[k])) / np.max(np.abs(expected[k])))
            for k in names}


def _model_from_run(run_dir, train_mode="eval"):
    config = load_config(run_dir)
    model = build_model(config, config.model.num_classes or 0)
    checkpoints.restore_pretrained(model, run_dir, train_mode=train_mode)
    return config, model


@pytest.mark.parametrize("name", sorted(ARCHIVES))
def test_the_architecture_is_read_from_the_file(sources, name):
    arch, pieces = read_architecture(OriginalCheckpoint(sources[name]))
    flags = _flags(name)
    for field in ("resnet_depth", "width_multiplier", "sk_ratio", "se_ratio", "proj_head_mode",
                  "num_proj_layers", "proj_out_dim", "num_classes"):
        assert getattr(arch, field) == flags[field], field
    assert arch.cifar_stem == (flags["image_size"] <= 32)
    assert arch.missing == ()
    # Every variable of the model (no optimizer slot, no step) is mapped, each exactly once.
    variables = {p.node.path + "/" + w for p in pieces for w in ("kernel", "bias", "gamma", "beta",
                 "moving_mean", "moving_variance") if p.node.child(w) is not None}
    assert len(variables) == sum(1 for p in pieces for w in ("kernel", "bias", "gamma", "beta",
                                 "moving_mean", "moving_variance") if p.node.child(w) is not None)
    assert sum(int(np.prod(p.node.shape(w))) for p in pieces for w in (
        "kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance")
        if p.node.shape(w) is not None) == (flags["num_values"] if name.startswith("r50") else 11_518_026)


@pytest.mark.parametrize("name", sorted(ARCHIVES))
def test_converted_outputs_equal_the_original(converted, name):
    expected = _expected(name)
    _, model = _model_from_run(converted[name])
    outputs = {k: v.numpy() for k, v in model(tf.constant(expected["inputs"]), training=False).items()}
    differences = _relative_differences(outputs, expected, NAMES)
    print(f"{name}: largest relative difference {max(differences.values()):.2e}", differences)
    assert max(differences.values()) <= TOLERANCE, differences


@pytest.mark.parametrize("name", sorted(ARCHIVES))
def test_exported_encoder_keras_equals_the_original_in_a_fresh_process(converted, name, tmp_path):
    step = json.load(open(os.path.join(converted[name], "converted_from.json")))["step"]
    keras_file = os.path.join(converted[name], "saved_model", str(step), "encoder.keras")
    inputs, outputs = tmp_path / "inputs.npy", tmp_path / "outputs.npz"
    np.save(inputs, _expected(name)["inputs"])
    code = ("import sys, numpy as np, keras, simclr_tf.models.layers; "
            "m = keras.saving.load_model(sys.argv[1]); "
            "out = m(np.load(sys.argv[2]), training=False); "
            "np.savez(sys.argv[3], **{k: keras.ops.convert_to_numpy(v) for k, v in out.items()})")
    done = subprocess.run([sys.executable, "-c", code, keras_file, str(inputs), str(outputs)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert done.returncode == 0, done.stderr[-3000:]
    differences = _relative_differences(dict(np.load(outputs)), _expected(name), ENCODER_NAMES)
    assert max(differences.values()) <= TOLERANCE, differences


def test_original_files_convert_on_the_fly_through_the_same_pieces(sources):
    """`--checkpoint=<original>`: restore_pretrained reads the file itself, output for output."""
    name = "r50_sk1_v2_savedmodel"
    expected = _expected(name)
    config = Config().resolved()
    config = dataclasses.replace(config, model=dataclasses.replace(
        config.model, resnet_depth=50, sk_ratio=0.0625, cifar_stem=False, num_proj_layers=3))
    model = build_model(config, 1000, image_size=64)
    assert convert_pkg.restore_pretrained(model, sources[name], train_mode="eval").endswith("variables")
    outputs = model(tf.constant(expected["inputs"]), training=False)
    assert max(_relative_differences(outputs, expected, NAMES).values()) <= TOLERANCE

    other = build_model(Config().resolved(), 10)  # the quickstart's ResNet-18
    with pytest.raises(ConversionError, match=r"another network.*Pass its architecture: "
                                              r"--resnet_depth=50 --width_multiplier=1"):
        convert_pkg.restore_pretrained(other, sources[name], train_mode="finetune")


def test_a_larger_network_than_the_files_is_refused(sources):
    """A ResNet-34 has a place for every piece of a ResNet-18 file and more: weights the file does
    not fill would stay random, so the model is refused (the model holds no architecture fields:
    what the file fills is compared with what the model has)."""
    config = Config().resolved()
    config = dataclasses.replace(config, model=dataclasses.replace(
        config.model, resnet_depth=34, cifar_stem=True, num_proj_layers=2))
    model = build_model(config, 10, image_size=32)
    before = [v.numpy().copy() for v in model.weights]
    with pytest.raises(ConversionError, match=r"another network.*the file has no value for \d+ of the "
                                              r"model's weights.*Pass its architecture: --resnet_depth=18"):
        convert_pkg.restore_pretrained(model, sources["r18_cifar_ckpt"], train_mode="finetune")
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, model.weights, strict=True))


def test_the_run_directory_is_a_simclr_tf_run_that_resumes(converted, sources):
    run = converted["r18_cifar_ckpt"]
    assert sorted(os.listdir(run)) == ["checkpoint", "ckpt-1.data-00000-of-00001", "ckpt-1.index",
                                       "config.json", "converted_from.json", "saved_model"]
    config = load_config(run)
    assert config.train.model_dir == run and config.data.image_size == 32 and config.model.cifar_stem
    from simclr_tf.training.phases import build_for_training

    model, optimizer = build_for_training(config, tf.distribute.get_strategy(), 10)
    saver = checkpoints.CheckpointSaver(model, optimizer, run)
    assert saver.restore_latest() == 1  # the original's global step, with its LARS momentum
    original = OriginalCheckpoint(sources["r18_cifar_ckpt"])
    kernel = original.model.child("_projection_head").child("linear_layers").items()[0].child("dense")
    layer = model.projection_head.nl_0_dense
    np.testing.assert_array_equal(layer.kernel.numpy(), kernel.value("kernel"))
    momentum = optimizer._momentums[optimizer._get_variable_index(layer.kernel)]
    np.testing.assert_array_equal(momentum.numpy(), original.slot(kernel.child("kernel")))


def _rewrite(source, prefix, change, drop=lambda path: False):
    """Writes the original model of `source` again as a training checkpoint, changed by `change`.

    The same object structure (`model/resnet_model/...` with the original's attribute names and
    lists), built from `tf.Module`s, as another file of the original code would be. `change(path,
    value)` returns the value to write, or None to leave the variable out; objects whose path
    `drop(path)` is true are left out with everything below them.
    """
    ckpt = OriginalCheckpoint(source)

    def build(node):
        module = tf.Module()
        for local_name in sorted(node._children):
            child = node.child(local_name)
            if drop(child.path):
                continue
            if child.is_variable:
                value = change(child.path, child.value())
                if value is not None:
                    setattr(module, local_name, tf.Variable(value))
            elif local_name.isdigit():
                continue
            else:
                items = child.items()
                if items or child._children == {}:
                    setattr(module, local_name, [build(i) for i in items if not drop(i.path)])
                else:
                    setattr(module, local_name, build(child))
        return module

    tf.train.Checkpoint(model=build(ckpt.model)).write(prefix)
    return prefix


def test_a_model_without_projection_head_converts_what_it_has(sources, tmp_path):
    """Like the SimCLRv1 releases: the encoder and the supervised head, and a note of the rest."""
    prefix = _rewrite(sources["r18_cifar_ckpt"], str(tmp_path / "v1" / "ckpt-7"),
                      lambda path, value: value, drop=lambda path: "/linear_layers/" in path)
    lines = []
    result = convert(prefix, str(tmp_path / "run"), export=False, log=lines.append)
    arch = result["architecture"]
    assert arch.proj_head_mode == "none" and arch.num_classes == 10 and result["step"] == 0
    assert "missing:          projection head" in lines[0]
    expected = _expected("r18_cifar_ckpt")
    _, model = _model_from_run(result["model_dir"])
    outputs = model(tf.constant(expected["inputs"]), training=False)
    names = ENCODER_NAMES + ("logits_sup",)
    assert max(_relative_differences(outputs, expected, names).values()) <= TOLERANCE
    np.testing.assert_array_equal(outputs["proj_head_output"], outputs["final_avg_pool"])


@pytest.mark.parametrize("change, match", [
    (lambda path, value: value[:, :256] if path.endswith("linear_layers/0/dense/kernel") else value,
     r"projection-head layer 0 has a middle layer mapping 512 -> 256.*cannot have produced"),
    (lambda path, value: None if path.endswith("linear_layers/0/bn_relu/bn/beta") else value,
     r"projection-head layer 0 has a middle layer whose batch norm has no beta"),
    (lambda path, value: np.zeros(128, np.float32) if path.endswith("linear_layers/1/bn_relu/bn/moving_mean")
     else value, None),  # a sound change: converts
])
def test_a_head_the_original_cannot_have_produced_is_refused(sources, tmp_path, change, match):
    prefix = _rewrite(sources["r18_cifar_ckpt"], str(tmp_path / "odd" / "ckpt-1"), change)
    if match is None:
        convert(prefix, str(tmp_path / "run"), export=False, log=lambda _: None)
        return
    with pytest.raises(ConversionError, match=match):
        convert(prefix, str(tmp_path / "run"), export=False, log=lambda _: None)
    assert not os.path.exists(tmp_path / "run")


def test_damaged_or_foreign_sources_are_clear_errors_and_write_nothing(sources, converted, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match="not an original SimCLR SavedModel or checkpoint"):
        convert(str(tmp_path), str(out))
    with pytest.raises(ConversionError, match="simclr_tf checkpoint already"):
        convert(converted["r18_cifar_ckpt"], str(out))
    with pytest.raises(ConversionError, match="exists and is not empty"):
        convert(sources["r18_cifar_ckpt"], converted["r50_sk1_v2_savedmodel"])

    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for file in os.listdir(sources["r18_cifar_ckpt"]):
        data = open(os.path.join(sources["r18_cifar_ckpt"], file), "rb").read()
        if file.endswith(".data-00000-of-00001"):
            data = data[: len(data) // 2]  # a download that stopped half-way
        (damaged / file).write_bytes(data)
    with pytest.raises(ConversionError, match="truncated or damaged"):
        convert(str(damaged), str(out), log=lambda _: None)
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if "converting" in p]


def test_the_command_line_reports_errors(tmp_path, capsys):
    assert cli.main(["convert", str(tmp_path), "--model_dir", str(tmp_path / "out")]) == 2
    assert "error:" in capsys.readouterr().err


def _digits_config(model_dir, **train):
    return dataclasses.replace(
        Config(),
        data=DataConfig(dataset="digits", image_size=32),
        train=dataclasses.replace(TrainConfig(), model_dir=model_dir, train_batch_size=16,
                                  eval_batch_size=64, train_steps=2, checkpoint_steps=2,
                                  eval_steps=1, linear_eval_epochs=0, **train),
    )


def _accuracy_on_eval_images(config, checkpoint, examples):
    """(top-1, top-5) of `checkpoint` (ours or the original's), restored into a fresh model, on the
    first `examples` images of digits' test split, by argsort of its logits."""
    from simclr_tf.training import inputs

    model = build_model(config.resolved(), 10)
    convert_pkg.restore_pretrained(model, checkpoint, train_mode="eval")
    ranked, labels = [], []
    for images, batch_labels in inputs.eval_dataset(config, inputs.data_splits(config).eval):
        ranked.append(np.argsort(-model(images, training=False)["logits_sup"].numpy(), axis=1))
        labels.append(batch_labels.numpy())
    ranked, labels = np.concatenate(ranked)[:examples], np.concatenate(labels)[:examples]
    return float(np.mean(ranked[:, 0] == labels)), float(np.mean((ranked[:, :5] == labels[:, None]).any(1)))


def test_fine_tuning_from_an_original_saved_model_on_digits(sources, tmp_path):
    from simclr_tf.training import train

    config = _digits_config(str(tmp_path / "finetune"), train_mode="finetune",
                            checkpoint=sources["r50_sk1_v2_savedmodel"])
    config = dataclasses.replace(config, model=dataclasses.replace(
        config.model, resnet_depth=50, sk_ratio=0.0625, cifar_stem=False, num_proj_layers=3,
        ft_proj_selector=1))
    results = train(config)
    assert results["train_steps"] == 2 and np.isfinite(results["train_loss"])
    # The run's evaluation is its fine-tuned checkpoint's accuracy on the first eval_steps (1) batch
    # of 64 test images, and it says so.
    assert results["eval_examples"] == 64
    top1, top5 = _accuracy_on_eval_images(config, results["checkpoint"], 64)
    assert (results["eval_top1"], results["eval_top5"]) == (pytest.approx(top1), pytest.approx(top5))


def test_eval_mode_reads_an_original_checkpoint(sources, tmp_path):
    from simclr_tf.training import train

    config = _digits_config(str(tmp_path / "eval"), mode="eval", checkpoint=sources["r18_cifar_ckpt"])
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, resnet_depth=18,
                                                                   num_proj_layers=2, cifar_stem=True))
    results = train(config)
    assert results["global_step"] == 0
    # The original CIFAR-10 classifier's accuracy on the first 64 digits (eval_steps=1), read back
    # through the converter.
    top1, top5 = _accuracy_on_eval_images(config, sources["r18_cifar_ckpt"], 64)
    assert results["eval_examples"] == 64
    assert (results["eval_top1"], results["eval_top5"]) == (pytest.approx(top1), pytest.approx(top5))
