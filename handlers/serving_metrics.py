"""The handler's custom Prometheus metrics, emitted through TorchServe's metrics API.

The handler never runs its own HTTP exporter: it reports through
``context.metrics`` and TorchServe's frontend exposes the values on its
metrics port next to its own request / latency / queue metrics, so there is
one scrape target per pod. Every name here must also be declared, with the same
type and dimensions, under ``model_metrics`` in ``serve_config/metrics.yaml``
(the frontend drops undeclared metrics in Prometheus mode).

TorchServe 0.12 registers histograms with the Prometheus client's default
buckets (0.005 ... 10), and the yaml cannot change them. Units are chosen so
those buckets resolve the values we care about:
- latencies in seconds (5 ms .. 10 s);
- upload size in megabytes (5 kB .. 10 MB), not bytes (every upload would
  land in +Inf);
- the confidence distribution as ``1 - confidence`` (0 .. 0.5 for two
  classes): buckets 0.005 .. 0.5 then read "confidence >= 99.5%", ">= 95%",
  ... while confidence itself (0.5 .. 1) would fall into just two buckets.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

MODEL_DIMS = ["ModelName", "ModelVersion"]

# name -> (type, unit, dimension names). Kept in sync with serve_config/metrics.yaml
# by tests/test_handler_metrics_config.py.
CUSTOM_METRICS: dict[str, tuple[str, str, list[str]]] = {
    "catsdogs_predictions_total": ("counter", "count", [*MODEL_DIMS, "Label"]),
    "catsdogs_request_errors_total": ("counter", "count", [*MODEL_DIMS, "ErrorType"]),
    "catsdogs_prediction_uncertainty_ratio": ("histogram", "ratio", MODEL_DIMS),
    "catsdogs_preprocess_latency_seconds": ("histogram", "seconds", MODEL_DIMS),
    "catsdogs_inference_latency_seconds": ("histogram", "seconds", MODEL_DIMS),
    "catsdogs_upload_size_megabytes": ("histogram", "megabytes", MODEL_DIMS),
}


class ServingMetrics:
    """Thin wrapper over TorchServe's metrics cache; a no-op when there is none (in-process use)."""

    def __init__(self, metrics_cache: Any, model_name: str, model_version: str) -> None:
        self._dims = [model_name, model_version]
        self._metrics: dict[str, Any] = {}
        if metrics_cache is None:
            return
        from ts.metrics.metric_type_enum import MetricTypes

        for name, (kind, unit, dims) in CUSTOM_METRICS.items():
            metric_type = MetricTypes.COUNTER if kind == "counter" else MetricTypes.HISTOGRAM
            try:
                self._metrics[name] = metrics_cache.get_metric(name, metric_type)
            except Exception:  # not declared in the yaml the worker was given
                self._metrics[name] = metrics_cache.add_metric_to_cache(
                    name, unit, dimension_names=dims, metric_type=metric_type
                )

    def _emit(self, name: str, value: float, *extra_dims: str) -> None:
        metric = self._metrics.get(name)
        if metric is None:
            return
        try:
            metric.add_or_update(value, [*self._dims, *extra_dims])
        except Exception:  # metrics must never fail a prediction
            logger.warning("could not emit metric %s", name, exc_info=True)

    def prediction(self, label: str, confidence: float) -> None:
        self._emit("catsdogs_predictions_total", 1, label)
        self._emit("catsdogs_prediction_uncertainty_ratio", max(0.0, 1.0 - confidence))

    def error(self, error_type: str) -> None:
        self._emit("catsdogs_request_errors_total", 1, error_type)

    def preprocess_seconds(self, seconds: float) -> None:
        self._emit("catsdogs_preprocess_latency_seconds", seconds)

    def inference_seconds(self, seconds: float) -> None:
        self._emit("catsdogs_inference_latency_seconds", seconds)

    def upload_bytes(self, size: int) -> None:
        self._emit("catsdogs_upload_size_megabytes", size / 1_000_000)
