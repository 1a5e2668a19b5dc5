"""experiments/benchmark.py: the FLOP counter against hand-worked cases, and the harness at tiny sizes."""

import importlib.util
import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_benchmark():
    path = os.path.join(ROOT, "experiments", "benchmark.py")
    spec = importlib.util.spec_from_file_location("benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmark"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


benchmark = _load_benchmark()


# --- FLOP counter ------------------------------------------------------------------------------------


def test_single_conv_same_padding():
    # (2, 5, 5, 3) -> 3x3 SAME, 8 filters: every one of the 2*5*5*8 outputs takes 3*3*3 multiply-adds.
    conv = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)
    count = benchmark.count_flops(conv, (2, 5, 5, 3))
    assert count.total == 2 * (2 * 5 * 5 * 8) * (3 * 3 * 3) == 21600
    assert count.by_op_type == {"Conv2D": 21600}


def test_strided_valid_conv_and_bias():
    # 7x7 input, 3x3 kernel, stride 2, VALID -> 3x3 output; the bias add is not a multiply-add.
    conv = keras.layers.Conv2D(4, 3, strides=2, padding="valid", use_bias=True)
    assert benchmark.count_flops(conv, (1, 7, 7, 2)).total == 2 * (3 * 3 * 4) * (3 * 3 * 2) == 1296


def test_dense_and_transposed_matmul():
    dense = keras.layers.Dense(4)
    assert benchmark.count_flops(dense, (3, 8)).total == 2 * 3 * 8 * 4 == 192
    weights = tf.ones((5, 6))
    # x^T @ w with x (5, 3): an output of (3, 6), each entry a sum over 5 products.
    count = benchmark.count_flops(lambda x: tf.matmul(x, weights, transpose_a=True), (5, 3))
    assert count.total == 2 * 3 * 6 * 5


def test_small_model_split_by_layer():
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, name="dense")(x)
    model = keras.Model(inputs, outputs)
    count = benchmark.count_flops(lambda x: model(x, training=False), (1, 6, 6, 3))
    conv_flops, dense_flops = 2 * 36 * 4 * 27, 2 * 4 * 2
    assert count.total == conv_flops + dense_flops
    # Keys are TensorFlow name scopes, e.g. "functional_1/conv_1" (made unique by TensorFlow).
    assert sorted(count.by_layer.values()) == [dense_flops, conv_flops]
    assert [flops for scope, flops in count.by_layer.items() if "/conv" in scope] == [conv_flops]


def test_count_flops_rejects_undefined_shape():
    with pytest.raises(ValueError, match="input_shape.*fully defined.*Received"):
        benchmark.count_flops(lambda x: x, (None, 8))


def _resnet18_cifar_macs(side):
    """Multiply-adds of SimCLR's ResNet-18 (CIFAR stem) at `side` px, from the architecture."""
    macs = side * side * 9 * 3 * 64  # stem 3x3 conv
    c_in = 64
    for group, width in enumerate((64, 128, 256, 512)):
        if group > 0:
            side //= 2
        pixels = side * side
        # block 1: conv1 (c_in -> width), conv2, and the 1x1 projection shortcut (first block of every
        # group, as in the original); block 2: two width -> width 3x3 convs.
        macs += pixels * (9 * c_in * width + 9 * width * width + c_in * width)
        macs += pixels * 2 * 9 * width * width
        c_in = width
    macs += 512 * 512 + 512 * 512 + 512 * 128  # 3-layer projection head (no bias)
    macs += 512 * 10  # online linear head
    return macs


def test_resnet18_flops_match_the_architecture():
    case = benchmark.Case("tiny", 18, 16, 2, True)
    model = benchmark.build_train_model(case, jit_compile=False, num_classes=10)
    forward = benchmark.model_flops_per_image(model, 16)
    assert forward == 2 * _resnet18_cifar_macs(16)
    assert benchmark.train_flops_per_source_image(forward) == 6 * forward


# --- peak, step, pipeline ----------------------------------------------------------------------------


def test_measure_peak_counts_the_right_work():
    results = benchmark.measure_peak(matmul_sizes=(64,), conv_shapes=((2, 8, 16),), repeats=1)
    assert [r.flops for r in results] == [2 * 64**3, 2 * 2 * 8 * 8 * 9 * 16 * 16]
    for result in results:
        assert result.seconds > 0 and result.cpu_seconds >= 0
        assert result.gflops == pytest.approx(result.flops / result.seconds / 1e9)


def test_time_train_step_runs_the_fit_step_without_retracing():
    case = benchmark.Case("tiny", 18, 8, 2, True)
    model = benchmark.build_train_model(case, jit_compile=False, global_bn=False)
    batch = benchmark.synthetic_batch(case.batch_size, case.image_size)
    before = [w.numpy().copy() for w in model.encoder.trainable_weights[:1]]
    timing = benchmark.time_train_step(model, batch, warmup_steps=1, steps=2)
    assert timing.traces == 1  # one trace for 1 + 1 + 2 calls
    assert int(model.optimizer.iterations.numpy()) == 4  # every call trained one step
    assert not np.allclose(before[0], model.encoder.trainable_weights[0].numpy())
    assert timing.images_per_second == pytest.approx(case.batch_size / timing.seconds_per_step)
    assert timing.cpu_cores > 0
    row = benchmark.StepRow(case, False, 1_000_000, timing)
    assert row.gflops == pytest.approx(6e6 * timing.images_per_second / 1e9)
    table = benchmark.format_table([row], peak_gflops=row.gflops * 2, peak_gflops_per_cpu_second=None)
    assert "tiny" in table and "50.0%" in table  # MFU = half the given peak
    # A time budget stops timing after the step that exceeds it, but always times one step.
    budgeted = benchmark.time_train_step(model, batch, warmup_steps=0, steps=5, max_seconds=0.0)
    assert budgeted.steps == 1
    assert int(model.optimizer.iterations.numpy()) == 4 + 2


def test_time_train_step_rejects_bad_steps():
    with pytest.raises(ValueError, match="steps.*Received"):
        benchmark.time_train_step(None, None, steps=0)


def test_input_pipeline_rate():
    timing = benchmark.time_input_pipeline(8, 4, num_images=16, batches=2, warmup_batches=1)
    assert timing.images_per_second > 0 and timing.cpu_cores > 0
    assert timing.images_per_cpu_second == pytest.approx(timing.images_per_second / timing.cpu_cores)


def test_peak_rss_is_plausible():
    # The process holds TensorFlow: more than 50 MiB, less than the machine.
    assert 50 < benchmark.peak_rss_mib() < 1024 * 1024


def test_summarize_profile_without_trace(tmp_path):
    with pytest.raises(FileNotFoundError, match="No profile"):
        benchmark.summarize_profile(str(tmp_path))


# --- command line ------------------------------------------------------------------------------------


def test_args_exclusive_xla_flags():
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--no_xla", "--xla_only"])


def test_unknown_model_names_the_choices():
    with pytest.raises(SystemExit, match="unknown case.*resnet18_cifar32"):
        benchmark._select_cases(benchmark.parse_args(["--models=resnet99"]))
    chosen = benchmark._select_cases(benchmark.parse_args(["--models=resnet50_224,resnet18_cifar32"]))
    assert [c.name for c in chosen] == ["resnet50_224", "resnet18_cifar32"]


def test_main_minimal_run(capsys):
    result = benchmark.main(["--models=none", "--no_peak", "--no_pipeline"])
    assert result["rows"] == []
    assert "peak resident memory" in capsys.readouterr().out


@pytest.mark.slow
def test_main_quick():
    result = benchmark.main(["--quick", "--no_xla"])
    assert result["peak_gflops"] > 0
    assert result["rows"][0].timing.traces == 1


# --- Keras batch norm experiment ----------------------------------------------------------------------


def test_keras_batch_norm_in_resnet_is_scoped():
    from simclr_tf.models.batch_norm import BatchNormalization as FusedBatchNormalization

    case = benchmark.Case("tiny", 18, 8, 2, True)

    def batch_norms(model):
        return [layer for layer in model.encoder.layers if "batch_norm" in layer.name]

    composite = benchmark.build_train_model(case, jit_compile=False, global_bn=False, keras_batch_norm=True)
    assert batch_norms(composite)
    assert all(type(layer) is keras.layers.BatchNormalization for layer in batch_norms(composite))
    # Outside the context the encoder is built with the fused layer again.
    default = benchmark.build_train_model(case, jit_compile=False, global_bn=False)
    assert len(batch_norms(default)) == len(batch_norms(composite))
    assert all(type(layer) is FusedBatchNormalization for layer in batch_norms(default))


def test_conv_input_gradient_experiment_switches_every_convolution():
    from simclr_tf.models.conv import Conv2D

    case = benchmark.Case("tiny", 18, 8, 2, True)

    def convs(model):
        return [layer for layer in model._flatten_layers() if isinstance(layer, Conv2D)]

    def build(**kwargs):
        return benchmark.build_train_model(case, jit_compile=False, global_bn=False, **kwargs)

    native, forward = build(conv_input_gradient="native"), build(conv_input_gradient="forward")
    default = build()
    assert len(convs(native)) == len(convs(forward)) == 21  # ResNet-18: stem, 16 in blocks, 4 shortcuts
    assert not any(layer.forward_input_gradient for layer in convs(native))
    assert all(layer.forward_input_gradient for layer in convs(forward))
    assert all(layer.forward_input_gradient is None for layer in convs(default))  # the plan's choice
    assert {layer.gradient_plan for layer in convs(default)} == {
        benchmark.conv_gradients_for(benchmark.strategy_devices())}
    assert benchmark.parse_args(["--native_conv_gradient"]).conv_input_gradient == "native"
    matmul = build(conv_filter_gradient="matmul")
    assert all(layer.matmul_filter_gradient is True for layer in convs(matmul))
    assert all(layer.matmul_filter_gradient is None for layer in convs(default))
    assert benchmark.parse_args([]).conv_input_gradient == "auto"


def test_device_line_names_the_gpu_or_the_cpu(monkeypatch):
    from simclr_tf import precision

    gpu = precision.Devices("GPU", ("NVIDIA H100 80GB HBM3",), (9, 0))
    assert benchmark.device_line(gpu) == "device GPU: NVIDIA H100 80GB HBM3 (compute capability 9.0)"
    # From TensorFlow's device details under a one-GPU strategy (faked: this machine has none).
    fake = tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")
    monkeypatch.setattr(tf.config, "list_logical_devices",
                        lambda kind=None: [tf.config.LogicalDevice("/device:GPU:0", "GPU")])
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [fake])
    monkeypatch.setattr(tf.config.experimental, "get_device_details",
                        lambda device: {"device_name": "Tesla V100-SXM2-16GB", "compute_capability": (7, 0)})
    assert benchmark.device_line() == "device GPU: Tesla V100-SXM2-16GB (compute capability 7.0)"
    monkeypatch.undo()
    if not tf.config.list_physical_devices("GPU"):
        assert benchmark.device_line() == f"device CPU: {precision.cpu_model()}"
        assert precision.cpu_model() != "unknown CPU"


def test_clear_session_keeps_the_precision():
    # keras.backend.clear_session() alone resets the policy: a --precision run would time float32.
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        benchmark._clear_session()
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_host_callbacks_are_found():
    case = benchmark.Case("tiny", 18, 8, 2, True)
    model = benchmark.build_train_model(case, jit_compile=False, global_bn=False)
    batch = benchmark.synthetic_batch(case.batch_size, case.image_size)
    assert benchmark.host_callbacks_in_train_step(model, batch) == []
    train_step = model.train_step

    def chatty_train_step(data):
        logs = train_step(data)
        tf.print("step")  # a host round trip
        return logs

    model.train_step = chatty_train_step
    found = benchmark.host_callbacks_in_train_step(model, batch)
    assert len(found) == 1 and "PrintV2" in found[0]
