"""RunConfig and load_run_file: unknown keys and bad values fail at once, naming the key."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from steps.config import ConfigError, RunConfig, load_run_file, parse_run_config

REPO_ROOT = Path(__file__).resolve().parents[1]


def config_error(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_run_config(data, origin="test.yaml")
    return str(info.value)


def test_defaults_are_valid() -> None:
    config = parse_run_config(None)
    assert config == RunConfig()
    assert config.model.architecture == "efficientnet_lite0"
    assert config.model.pretrained_weights == "package"
    assert config.training.epochs >= 1
    assert parse_run_config({}) == config


def test_values_are_read() -> None:
    config = parse_run_config(
        {
            "data": {"source": "/data/pets", "limit_per_class": 10, "val_fraction": 0.2},
            "model": {"architecture": "simple_cnn", "image_size": 64, "pretrained_weights": None},
            "training": {"epochs": 2, "batch_size": 8, "augment": False, "seed": 7},
            "evaluation": {"min_test_accuracy": 0.5},
        }
    )
    assert config.data.source == "/data/pets"
    assert config.data.limit_per_class == 10
    assert config.data.test_fraction == 0.1  # untouched default
    assert (config.model.architecture, config.model.image_size) == ("simple_cnn", 64)
    assert config.model.pretrained_weights is None
    assert (config.training.epochs, config.training.augment, config.training.seed) == (2, False, 7)
    assert config.evaluation.min_test_accuracy == 0.5


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"dataa": {}}, "dataa"),
        ({"epochs": 3}, "epochs"),
        ({"data": {"sorce": "x"}}, "data.sorce"),
        ({"model": {"archtecture": "simple_cnn"}}, "model.archtecture"),
        ({"training": {"epoch": 3}}, "training.epoch"),
        ({"training": {"lr": 0.1}}, "training.lr"),
        ({"evaluation": {"min_accuracy": 0.9}}, "evaluation.min_accuracy"),
    ],
)
def test_unknown_key_at_any_level_is_named(data: dict, key: str) -> None:
    message = config_error(data)
    assert f"unknown key '{key}'" in message
    assert message.startswith("test.yaml: ")


def test_every_unknown_key_is_reported_at_once() -> None:
    message = config_error({"training": {"epoch": 1, "batchsize": 2}, "modle": {}})
    for key in ("training.epoch", "training.batchsize", "modle"):
        assert key in message


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"training": {"epochs": "many"}}, "training.epochs"),
        ({"training": {"epochs": 0}}, "training.epochs"),
        ({"training": {"epochs": 1.5}}, "training.epochs"),
        ({"training": {"batch_size": -1}}, "training.batch_size"),
        ({"training": {"learning_rate": 0}}, "training.learning_rate"),
        ({"training": {"augment": "sometimes"}}, "training.augment"),
        ({"training": {"label_smoothing": 1.0}}, "training.label_smoothing"),
        ({"model": {"image_size": 16}}, "model.image_size"),
        ({"model": {"image_size": 1024}}, "model.image_size"),
        ({"model": {"trainable_blocks": 17}}, "model.trainable_blocks"),
        ({"data": {"val_fraction": 0.5}}, "data.val_fraction"),
        ({"data": {"test_fraction": 0}}, "data.test_fraction"),
        ({"data": {"limit_per_class": 0}}, "data.limit_per_class"),
        ({"data": {"source": ["a", "b"]}}, "data.source"),
        ({"evaluation": {"min_test_accuracy": 1.5}}, "evaluation.min_test_accuracy"),
        ({"training": "fast"}, "training"),
    ],
)
def test_bad_values_are_named(data: dict, where: str) -> None:
    message = config_error(data)
    assert f"'{where}'" in message
    assert "unknown key" not in message


def test_package_weights_only_for_efficientnet_lite0() -> None:
    message = config_error({"model": {"architecture": "simple_cnn"}})  # default weights: 'package'
    assert "'package' only exists for efficientnet_lite0" in message
    assert "simple_cnn" in message
    assert config_error({"model": {"architecture": "resnet18", "pretrained_weights": "package"}})


@pytest.mark.parametrize("weights", [None, "download", "/models/resnet18.pth"])
def test_other_weights_are_fine_for_other_architectures(weights: str | None) -> None:
    config = parse_run_config({"model": {"architecture": "resnet18", "pretrained_weights": weights}})
    assert config.model.pretrained_weights == weights


def test_config_is_frozen() -> None:
    config = RunConfig()
    with pytest.raises(pydantic.ValidationError):
        config.training.epochs = 99  # type: ignore[misc]


def test_config_round_trips_through_a_dict() -> None:
    config = parse_run_config({"model": {"architecture": "simple_cnn", "pretrained_weights": None}})
    assert parse_run_config(config.model_dump()) == config


# ---------------------------------------------------------------- run files


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_load_run_file_returns_config_and_zenml_options(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        """
enable_cache: false
run_name: test-run
parameters:
  config:
    model: {architecture: simple_cnn, pretrained_weights: null, image_size: 32}
    training: {epochs: 1}
""",
    )
    config, rest = load_run_file(path)
    assert config.model.architecture == "simple_cnn"
    assert config.training.epochs == 1
    assert rest == {"enable_cache": False, "run_name": "test-run"}


def test_load_run_file_accepts_a_string_path(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "parameters:\n  config: {}\n")
    config, rest = load_run_file(str(path))
    assert config == RunConfig() and rest == {}


def test_empty_run_file_gives_defaults(tmp_path: Path) -> None:
    config, rest = load_run_file(write_yaml(tmp_path, ""))
    assert config == RunConfig() and rest == {}


@pytest.mark.parametrize("name", ["local.yaml", "quick.yaml"])
def test_shipped_configs_are_valid(name: str) -> None:
    config, _ = load_run_file(REPO_ROOT / "configs" / name)
    assert isinstance(config, RunConfig)


def test_missing_run_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_file(tmp_path / "nope.yaml")


def test_folder_is_not_a_run_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_file(tmp_path)


def test_invalid_yaml(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "parameters:\n  config: {model: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_run_file(path)


def test_run_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_run_file(write_yaml(tmp_path, "- a\n- b\n"))


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "parameter:\n  config: {}\n")
    with pytest.raises(ConfigError) as info:
        load_run_file(path)
    assert "unknown top-level key" in str(info.value)
    assert "'parameter'" in str(info.value)


def test_unknown_parameter(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "parameters:\n  config: {}\n  epochs: 3\n")
    with pytest.raises(ConfigError) as info:
        load_run_file(path)
    assert "unknown parameter" in str(info.value)
    assert "'epochs'" in str(info.value)


def test_unknown_nested_key_in_a_run_file_names_file_and_key(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "parameters:\n  config:\n    training:\n      epoch: 3\n")
    with pytest.raises(ConfigError) as info:
        load_run_file(path)
    assert str(path) in str(info.value)
    assert "unknown key 'training.epoch'" in str(info.value)


def test_bad_value_in_a_run_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "parameters:\n  config:\n    training:\n      epochs: lots\n")
    with pytest.raises(ConfigError, match=r"'training\.epochs'"):
        load_run_file(path)


def test_parameters_that_is_not_a_mapping_is_a_config_error(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "parameters:\n  - config\n")
    with pytest.raises(ConfigError):
        load_run_file(path)


def test_unknown_architecture_fails_in_the_config_naming_the_choices() -> None:
    message = config_error({"model": {"architecture": "resnet999", "pretrained_weights": None}})
    assert "\n" not in message
    assert "'model.architecture'" in message and "'resnet999'" in message
    assert "efficientnet_lite0, simple_cnn" in message and "resnet18" in message
    assert "'package' only exists" not in message  # one problem, not a follow-on one


def test_config_accepts_exactly_the_names_build_model_knows() -> None:
    from handlers.models import architecture_names

    names = architecture_names()
    assert names[:2] == ["efficientnet_lite0", "simple_cnn"] and "resnet18" in names
    for name in ("simple_cnn", "resnet18", "mobilenet_v3_small"):
        assert parse_run_config({"model": {"architecture": name, "pretrained_weights": None}})
