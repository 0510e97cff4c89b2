"""MLflow logging that is a no-op outside an MLflow run.

ZenML opens the MLflow run for steps that use the stack's experiment tracker;
the step logic stays callable as a plain function in tests and notebooks,
where these helpers simply do nothing.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image

logger = logging.getLogger(__name__)


def _run() -> Any:
    try:
        import mlflow
    except ImportError:
        return None
    return mlflow if mlflow.active_run() is not None else None


def log_params(params: dict[str, Any]) -> None:
    if mlflow := _run():
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    if mlflow := _run():
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def set_tags(tags: dict[str, Any]) -> None:
    if mlflow := _run():
        mlflow.set_tags({k: str(v) for k, v in tags.items()})


def log_image(image: Image.Image, name: str) -> None:
    if mlflow := _run():
        mlflow.log_image(image, name)


def log_json(data: Any, name: str) -> None:
    if mlflow := _run():
        mlflow.log_dict(json.loads(json.dumps(data, default=str)), name)


def log_file(path: str | Path, artifact_path: str | None = None) -> None:
    if mlflow := _run():
        mlflow.log_artifact(str(path), artifact_path)


def log_dataframe_csv(frame: Any, name: str) -> None:
    if mlflow := _run():
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            frame.to_csv(path, index=False)
            mlflow.log_artifact(str(path))
