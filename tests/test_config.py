"""Config validation and derived values."""

import dataclasses

import pytest

from simclr_tf.config import (
    AugmentConfig,
    Config,
    ConfigError,
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimizerConfig,
    RuntimeConfig,
    TrainConfig,
    field_docs,
    load_config,
    save_config,
)


def test_defaults_validate():
    config = Config()
    assert config.validate() is config
    # The defaults are the quickstart: built-in digits at 12 px, where the CIFAR recipe applies.
    resolved = config.resolved()
    assert resolved.data.dataset == "digits" and resolved.image_size == 12
    assert resolved.model.cifar_stem is True
    assert resolved.augment.color_jitter_strength == 0.5 and resolved.augment.use_blur is False


@pytest.mark.parametrize(
    "config, match",
    [
        (Config(loss=LossConfig(temperature=0.0)), r"`temperature` must be a positive number.*0\.0"),
        (Config(loss=LossConfig(temperature=-1.0)), r"`temperature`.*-1\.0"),
        (Config(model=ModelConfig(resnet_depth=42)), r"`resnet_depth` must be one of 10, 18, 34.*42"),
        (Config(optimizer=OptimizerConfig(optimizer="sgdd")), r"`optimizer` must be one of.*'sgdd'"),
        (Config(train=TrainConfig(train_batch_size=0)), r"`train_batch_size` must be a positive"),
        (Config(train=TrainConfig(mode="fit")), r"`mode` must be one of"),
        (Config(data=DataConfig(dataset="folder")), r"needs `image_dir`"),
        (Config(data=DataConfig(train_label_fraction=1.5)), r"`train_label_fraction` must be in \(0, 1\]"),
        (Config(data=DataConfig(image_size=16), model=ModelConfig(cifar_stem=False)),
         r"`image_size` \(16\) is too small for the ImageNet stem"),
        (Config(train=TrainConfig(fine_tune_after_block=2)), r"only applies with `train_mode=finetune`"),
        (Config(model=ModelConfig(ft_proj_selector=5, num_proj_layers=3)), r"`ft_proj_selector`"),
        (Config(augment=AugmentConfig(color_jitter_impl="v3")), r"`color_jitter_impl`"),
        (Config(train=TrainConfig(linear_eval_learning_rate=float("inf"))),
         r"`linear_eval_learning_rate` must be positive. Received: inf"),
        (Config(train=TrainConfig(train_steps=4, steps_per_execution=10)),
         r"`steps_per_execution` \(10\) is more than the run's `train_steps` \(4\)"),
        (Config(model=ModelConfig(proj_head_mode="none", ft_proj_selector=2)),
         r"`ft_proj_selector` \(2\) points past the projection head: `proj_head_mode=none` has 0"),
        (Config(optimizer=OptimizerConfig(warmup_epochs=30.0), train=TrainConfig(train_epochs=20)),
         r"`warmup_epochs` \(30.0\) is longer than the run"),
        (Config(data=DataConfig(image_size=100000)), r"`image_size` \(100000\) is larger than 2048 px"),
        (Config(loss=LossConfig(semi_hard_negatives=True)),
         r"`semi_hard_negatives` applies to `contrastive_loss` nt_logistic or margin_triplet.*"
         r"Received: contrastive_loss='nt_xent'"),
    ],
)
def test_invalid_values_say_what_to_fix(config, match):
    with pytest.raises(ConfigError, match=match):
        config.validate()


def test_small_images_get_the_cifar_recipe():
    resolved = Config(data=DataConfig(dataset="cifar10")).resolved()
    assert resolved.augment.color_jitter_strength == 0.5
    assert resolved.augment.use_blur is False
    assert resolved.model.cifar_stem is True
    assert resolved.data.image_size == 32


def test_large_images_get_the_imagenet_recipe_unless_overridden():
    resolved = Config(data=DataConfig(dataset="imagenet2012")).resolved()
    assert (resolved.augment.color_jitter_strength, resolved.augment.use_blur) == (1.0, True)
    assert resolved.model.cifar_stem is False
    overridden = Config(
        data=DataConfig(dataset="imagenet2012"),
        augment=AugmentConfig(color_jitter_strength=0.3, use_blur=False),
    ).resolved()
    assert (overridden.augment.color_jitter_strength, overridden.augment.use_blur) == (0.3, False)


def test_json_round_trip(tmp_path):
    config = Config(
        data=DataConfig(dataset="cifar10", image_size=32),
        model=ModelConfig(resnet_depth=18, sk_ratio=0.0625),
        train=TrainConfig(train_steps=7, model_dir=str(tmp_path)),
    )
    path = save_config(config, str(tmp_path))
    assert load_config(path) == config
    assert dataclasses.asdict(load_config(path)) == dataclasses.asdict(config)


# --- one source of defaults and vocabularies ------------------------------------------------------


def test_cli_defaults_are_the_config_defaults():
    from absl import flags

    from simclr_tf import run

    values = flags.FlagValues()
    for name, section, field, kind, help_text in run._FLAG_SPECS:
        define = {str: flags.DEFINE_string, int: flags.DEFINE_integer, float: flags.DEFINE_float,
                  bool: flags.DEFINE_bool}[kind]
        define(name, run.flag_default(section, field), help_text, flag_values=values)
    flags.DEFINE_bool("use_tpu", False, "", flag_values=values)
    flags.DEFINE_list("devices", [], "", flag_values=values)
    values(["prog"])
    # The CLI with no flags is exactly Config(): the quickstart.
    assert run.config_from_flags(values) == Config()
    for name, section, field, _kind, _help in run._FLAG_SPECS:
        assert run.FLAGS[name].default == getattr(getattr(Config(), section), field), name


def test_every_config_field_of_a_run_has_a_flag():
    from simclr_tf import run

    flagged = {(section, field) for _, section, field, _, _ in run._FLAG_SPECS} | {("runtime", "devices")}
    fields = {(part.name, f.name) for part in dataclasses.fields(Config)
              for f in dataclasses.fields(getattr(Config(), part.name))}
    assert fields - flagged == {("model", "num_classes")}  # taken from the data, or from a checkpoint


VOCABULARIES = ("MODES", "TRAIN_MODES", "RESNET_DEPTHS", "PROJ_HEAD_MODES", "OPTIMIZERS",
                "LEARNING_RATE_SCALINGS", "COLOR_JITTER_IMPLS", "STRATEGIES", "PRECISIONS",
                "SMALL_IMAGE_SIZE", "BATCH_NORM_EPSILON")


def test_vocabularies_and_shared_constants_are_defined_once():
    import ast
    import pathlib

    package = pathlib.Path(__file__).resolve().parents[1] / "simclr_tf"
    definitions, helpers = {}, {}
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id in VOCABULARIES:
                        definitions.setdefault(target.id, []).append(path.name)
            if isinstance(node, ast.FunctionDef) and node.name in ("_check_positive_int", "_check_number"):
                helpers.setdefault(node.name, []).append(path.name)
    assert {name: len(where) for name, where in definitions.items() if len(where) > 1} == {}
    assert set(definitions) == set(VOCABULARIES)
    assert helpers == {}, f"use simclr_tf.validation instead of local copies: {helpers}"


def test_cli_expands_a_home_directory_in_paths(monkeypatch, tmp_path):
    from absl import flags

    from simclr_tf import run

    monkeypatch.setenv("HOME", str(tmp_path))
    values = flags.FLAGS
    try:
        values(["prog", "--model_dir=~/runs/x", "--image_dir=~/pictures"])
        config = run.config_from_flags(values)
    finally:
        values.unparse_flags()
    assert config.train.model_dir == str(tmp_path / "runs" / "x")
    assert config.data.image_dir == str(tmp_path / "pictures") and config.data.dataset == "folder"


# --- every length check in both spellings; every sentinel documented or refused ------------------


@pytest.mark.parametrize("config, match", [
    (Config(optimizer=OptimizerConfig(warmup_epochs=10.0), train=TrainConfig(train_steps=5)),
     r"`warmup_epochs` \(10\.0\) is longer than the run \(`train_steps`=5\): an epoch is at least one "
     r"step, so the warm-up takes at least 10 steps"),
    (Config(optimizer=OptimizerConfig(warmup_epochs=30.0), train=TrainConfig(train_epochs=20)),
     r"`warmup_epochs` \(30\.0\) is longer than the run \(`train_epochs`=20\)"),
    (Config(data=DataConfig(image_size=0)), r"`image_size` must be an integer of at least 8 pixels"),
    (Config(data=DataConfig(data_dir="")), r"`data_dir` is empty\. Pass a directory, or leave --data_dir"),
    (Config(data=DataConfig(image_dir="")), r"`image_dir` is empty"),
    (Config(data=DataConfig(eval_image_dir=" ")), r"`eval_image_dir` is empty.*Received: ' '"),
    (Config(data=DataConfig(train_split="")), r"`train_split` is empty\. Pass a split name, e\.g\. `train`"),
    (Config(data=DataConfig(eval_split="")), r"`eval_split` is empty\. Pass a split name, e\.g\. `test`"),
    (Config(train=TrainConfig(checkpoint="")), r"`checkpoint` is empty\. Pass a checkpoint, a run directory "
                                               r"or `none`, or leave --checkpoint out"),
    (Config(train=TrainConfig(teacher="")), r"`teacher` is empty"),
    (Config(runtime=RuntimeConfig(tpu_name="")), r"`tpu_name` is empty"),
    (Config(runtime=RuntimeConfig(gcp_project="")), r"`gcp_project` is empty"),
    (Config(train=TrainConfig(seed=-1)), r"`seed` must be a non-negative integer, e\.g\. 0\. Received: -1"),
])
def test_lengths_and_sentinels_say_what_to_fix(config, match):
    with pytest.raises(ConfigError, match=match):
        config.resolved().validate()
    with pytest.raises(ConfigError, match=match):
        config.validate()


@pytest.mark.parametrize("optimizer, train", [
    (OptimizerConfig(warmup_epochs=5.0), TrainConfig(train_steps=5)),  # as long as the run: allowed
    (OptimizerConfig(warmup_epochs=10.0), TrainConfig(train_steps=5, mode="eval")),  # no training
    (OptimizerConfig(warmup_epochs=30.0), TrainConfig(train_epochs=20, train_steps=40)),  # steps win
    (OptimizerConfig(warmup_epochs=0.4), TrainConfig(train_steps=1)),  # may round to 0 steps
])
def test_warm_up_within_the_run_is_valid(optimizer, train):
    assert Config(optimizer=optimizer, train=train).validate().optimizer == optimizer


def test_only_an_unset_image_size_means_the_data_sets():
    assert Config().image_size == 12 and Config(data=DataConfig(dataset="cifar10")).image_size == 32
    assert Config(data=DataConfig(image_size=0)).image_size == 0  # then refused, see above
    assert Config(data=DataConfig(image_size=0)).resolved().data.image_size == 0


# Values that mean something other than their number, and where their field's description says so.
SENTINELS = [
    (DataConfig, "image_size", "Unset (`None`): the data set's native size"),
    (DataConfig, "data_dir", "Unset (`None`): TFDS' default"),
    (DataConfig, "train_labels_per_class", "0: the fraction decides"),
    (AugmentConfig, "color_jitter_strength", "Unset (`None`): 1.0, or 0.5"),
    (AugmentConfig, "view_a", "an empty value means the same"),
    (OptimizerConfig, "warmup_epochs", "0: none"),
    (TrainConfig, "fine_tune_after_block", "-1 fine-tunes everything"),
    (TrainConfig, "train_steps", "0: `train_epochs` sets it"),
    (TrainConfig, "eval_steps", "0 evaluates the whole split"),
    (TrainConfig, "checkpoint_steps", "0: `checkpoint_epochs` sets the period"),
    (TrainConfig, "checkpoint_epochs", "With both 0, training checkpoints only at its end"),
    (TrainConfig, "checkpoint_minutes", "0 disables"),
    (TrainConfig, "max_train_minutes", "0: no limit"),
    (TrainConfig, "keep_hub_module_max", "0 keeps all"),
    (TrainConfig, "knn_every_epochs", "0 disables"),
    (TrainConfig, "linear_eval_epochs", "0 disables"),
    (TrainConfig, "checkpoint", "`none` says \"from random weights\""),
    (TrainConfig, "distill_alpha", "0: the teacher's predictions alone"),
    (LossConfig, "memory_buffer_size", "0 (the default) turns it off"),
    (ModelConfig, "sk_ratio", "0 disables"),
    (ModelConfig, "ft_proj_selector", "0 = encoder output"),
    (RuntimeConfig, "devices", "empty uses all GPUs"),
    (RuntimeConfig, "tpu_name", "Unset (`None`): the resolver's default"),
]


@pytest.mark.parametrize("part, field, says", SENTINELS, ids=[f"{p.__name__}.{f}" for p, f, _ in SENTINELS])
def test_sentinels_are_documented(part, field, says):
    assert says in field_docs(part)[field]
