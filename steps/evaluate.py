"""Evaluate the exact model that will be served, on the held-out test photos.

The bundle is rebuilt with ``model_from_bundle`` (as the handler does) and fed
decoded photos through ``eval_transform`` (as the handler does), so the test
accuracy is the accuracy of what gets deployed. The quality gate then fails
the run before anything is packaged when the accuracy is too low.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm
from zenml import log_metadata, step

from handlers.model_spec import INFERENCE_BATCH_SIZE
from handlers.models import model_from_bundle
from handlers.preprocessing import eval_transform
from steps import plots, tracking
from steps.config import RunConfig
from steps.training import configure_threads, image_loader, labels_of


class QualityGateError(RuntimeError):
    """The model is not good enough to ship."""


def predict(
    bundle: dict[str, Any], frame: pd.DataFrame, batch_size: int = INFERENCE_BATCH_SIZE
) -> np.ndarray:
    """Class probabilities for every row of ``frame``."""
    configure_threads()
    model, meta = model_from_bundle(bundle)
    transform = eval_transform(meta.image_size, meta.mean, meta.std)
    probabilities = []
    with torch.inference_mode():
        for images, _ in tqdm(
            image_loader(frame, transform, batch_size, False), desc="evaluate", unit="batch"
        ):
            probabilities.append(F.softmax(model(images), dim=1).numpy())
    return np.concatenate(probabilities)


def classification_metrics(
    probabilities: np.ndarray, labels: np.ndarray, class_names: list[str]
) -> tuple[dict[str, Any], np.ndarray]:
    predictions = probabilities.argmax(1)
    n = len(class_names)
    matrix = np.zeros((n, n), dtype=np.int64)
    for true, pred in zip(labels, predictions, strict=True):
        matrix[true, pred] += 1
    eps = 1e-12
    loss = float(-np.log(probabilities[np.arange(len(labels)), labels] + eps).mean())
    metrics: dict[str, Any] = {
        "test_accuracy": float((predictions == labels).mean()),
        "test_loss": loss,
        "test_images": len(labels),
    }
    for i, name in enumerate(class_names):
        tp = matrix[i, i]
        precision = tp / max(matrix[:, i].sum(), 1)
        recall = tp / max(matrix[i, :].sum(), 1)
        f1 = 2 * precision * recall / max(precision + recall, eps)
        metrics.update(
            {f"{name}_precision": float(precision), f"{name}_recall": float(recall), f"{name}_f1": float(f1)}
        )
    return metrics, matrix


def evaluate_bundle(
    bundle: dict[str, Any], split_manifest: pd.DataFrame
) -> tuple[dict[str, Any], np.ndarray]:
    test = split_manifest[split_manifest["split"] == "test"]
    class_names = list(bundle["metadata"]["class_names"])
    probabilities = predict(bundle, test)
    return classification_metrics(probabilities, labels_of(test).numpy(), class_names)


def check_quality_gate(metrics: dict[str, Any], min_accuracy: float) -> None:
    if metrics["test_accuracy"] < min_accuracy:
        raise QualityGateError(
            f"quality gate failed: test accuracy {metrics['test_accuracy']:.4f} is below the minimum "
            f"{min_accuracy:.4f} (evaluation.min_test_accuracy); the model was not packaged or deployed"
        )


@step
def evaluate(
    model_bundle: dict[str, Any],
    split_manifest: pd.DataFrame,
    history: list[dict[str, float]],
    config: RunConfig,
) -> tuple[
    Annotated[dict[str, Any], "metrics"],
    Annotated[Image.Image, "confusion_matrix"],
    Annotated[Image.Image, "training_curves"],
]:
    metrics, matrix = evaluate_bundle(model_bundle, split_manifest)
    metrics["model_version"] = model_bundle["metadata"]["version"]
    class_names = list(model_bundle["metadata"]["class_names"])
    confusion = plots.confusion_matrix(matrix, class_names)
    curves = plots.training_curves(history)
    tracking.log_metrics({k: v for k, v in metrics.items() if isinstance(v, float)})
    tracking.log_image(confusion, "evaluation/confusion_matrix.png")
    tracking.log_image(curves, "evaluation/training_curves.png")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "metrics.json"
        path.write_text(json.dumps(metrics, indent=2))
        tracking.log_file(path, "evaluation")
    log_metadata(metadata={"metrics": metrics})
    logging.getLogger(__name__).info("test metrics: %s", metrics)
    check_quality_gate(metrics, config.evaluation.min_test_accuracy)
    return metrics, confusion, curves
