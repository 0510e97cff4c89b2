"""TorchServe handler: photo in, ``{"label", "confidence", "probabilities", "model_version"}`` out.

Thin on purpose: decoding, transforms and model construction are imported from
the same ``handlers`` modules training uses, so serving cannot skew from
training, and the class only uses TorchServe's plain handler contract
(``initialize(context)`` / ``handle(data, context)``), so it also runs under
KServe's TorchServe runtime. It does not reuse the stock handlers:
``ImageClassifier`` asks for the top 5 classes (fails with 2), the vision
handler converts nothing to RGB, can switch off Pillow's pixel limit and
imports captum.

Every item of a dynamic batch gets its own answer: a bad image gets its own 4xx
status and ``{"error": code, "message": ...}`` body via TorchServe's per-item
response status, and its neighbours are still predicted.

In the cluster every item must also carry the deployment's shared API key
(``Authorization: Bearer <key>``, see ``handlers/api_key.py``); an item without
it gets its own 401 the same way. Without a configured key file (local serving)
TorchServe's own token authorization guards the server instead.

Inside the ``.mar`` this file sits at the archive root and the ``handlers``
package is shipped next to it as a folder; TorchServe puts the model directory
on ``sys.path``, so ``handlers.x`` imports work in the repo and in the archive.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

try:
    import torch

    from handlers.api_key import authorization_problem, configured_api_keys
    from handlers.cpu_limit import threads_per_worker
    from handlers.image_decoding import ImageDecodeError, decode_image
    from handlers.models import load_bundle
    from handlers.preprocessing import eval_transform
    from handlers.request_parsing import BadRequestError, extract_image_bytes
    from handlers.serving_metrics import ServingMetrics
except ImportError as exc:  # pragma: no cover - exercised only by a broken archive
    # TorchServe answers an ImportError from a handler module by silently loading its
    # *stock* handler of the same name (ts.torch_handler.image_classifier). Fail loudly.
    raise RuntimeError(
        f"catsdogs handler cannot import its modules ({exc}); the .mar must contain the "
        "'handlers' folder - rebuild it with steps.packaging"
    ) from exc

logger = logging.getLogger(__name__)

# HTTP status per decode error code: the client can tell "fix your file" (400),
# "wrong kind of file" (415) and "too big" (413) apart.
ERROR_STATUS = {
    "empty_image": 400,
    "not_an_image": 415,
    "corrupt_image": 400,
    "truncated_image": 400,
    "image_too_large": 413,
    "image_too_small": 400,
    "bad_request": 400,
    "unauthorized": 401,
}
INDEX_TO_NAME = "index_to_name.json"


class ImageClassifierHandler:
    """Cats-vs-dogs handler for TorchServe (one class per module: TorchServe requires it)."""

    def __init__(self) -> None:
        self.initialized = False
        self.model: torch.nn.Module | None = None
        self.class_names: list[str] = []
        self.version = "unknown"
        self.metrics = ServingMetrics(None, "", "")
        self.api_keys: tuple[str, ...] = ()  # empty: no shared key configured (local serving)

    # ------------------------------------------------------------------ load

    def initialize(self, context: Any) -> None:
        """Load the bundle, check the label map against it, size the thread pool, read the API key."""
        # Read once, before anything slow: a key file named but unusable fails the load at once.
        self.api_keys = configured_api_keys()
        properties = context.system_properties
        model_dir = Path(properties["model_dir"])
        serialized = (context.manifest or {}).get("model", {}).get("serializedFile", "model.pt")
        self.load(model_dir / serialized, model_dir / INDEX_TO_NAME)

        config = getattr(context, "model_yaml_config", None) or {}
        workers = int(config.get("minWorkers", 1))
        threads = int(config.get("handler", {}).get("intra_op_threads", 0)) or threads_per_worker(workers)
        torch.set_num_threads(threads)
        self.metrics = ServingMetrics(context.metrics, context.model_name, self.version)
        logger.info(
            "loaded %s version %s (%s, %dpx) with %d intra-op thread(s) for %d worker(s)",
            context.model_name, self.version, self.metadata.architecture,
            self.metadata.image_size, threads, workers,
        )  # fmt: skip
        if self.api_keys:
            logger.info("every request must carry the shared API key (%d accepted)", len(self.api_keys))

    def load(self, bundle_path: Path, index_to_name_path: Path | None = None) -> None:
        """Load outside TorchServe too (benchmarks, tests): same code path as serving."""
        model, self.metadata = load_bundle(bundle_path)
        # NHWC runs this CPU's convolutions faster (measured on Lite0, 2 threads: 7.0 vs
        # 8.0 ms per image alone, 6.7 vs 7.2 in batches of 8); the outputs are the same.
        self.model = model.to(memory_format=torch.channels_last)
        self.class_names = list(self.metadata.class_names)
        if index_to_name_path is not None and index_to_name_path.exists():
            mapping = json.loads(index_to_name_path.read_text())
            names = [mapping[str(i)] for i in range(len(mapping))]
            if names != self.class_names:
                raise RuntimeError(
                    f"{INDEX_TO_NAME} says {names} but the model was trained with "
                    f"{self.class_names}; rebuild the .mar from the training bundle"
                )
        self.version = str(self.metadata.version)
        self.transform = eval_transform(self.metadata.image_size, self.metadata.mean, self.metadata.std)
        self.initialized = True

    # ------------------------------------------------------------------ serve

    def preprocess_one(self, row: dict[str, Any]) -> torch.Tensor:
        """Request row -> CHW tensor; raises BadRequestError or ImageDecodeError."""
        data = extract_image_bytes(row)
        self.metrics.upload_bytes(len(data))
        return self.transform(decode_image(data).image)

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities for an NCHW batch."""
        with torch.inference_mode():
            return torch.softmax(self.model(batch.contiguous(memory_format=torch.channels_last)), dim=1)

    def answer(self, probabilities: torch.Tensor) -> dict[str, Any]:
        values = [round(float(p), 6) for p in probabilities]
        best = max(range(len(values)), key=values.__getitem__)
        return {
            "label": self.class_names[best],
            "confidence": values[best],
            "probabilities": dict(zip(self.class_names, values, strict=True)),
            "model_version": self.version,
        }

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        """One answer per request row; bad rows get their own 4xx and never fail the batch."""
        responses: list[Any] = [None] * len(data)
        tensors: list[torch.Tensor] = []
        good: list[int] = []
        for idx, row in enumerate(data):
            problem = self._authorization_problem(context, idx)
            if problem is not None:
                responses[idx] = self._reject(context, idx, "unauthorized", problem)
                continue
            started = time.perf_counter()
            try:
                tensors.append(self.preprocess_one(row))
                good.append(idx)
            except (ImageDecodeError, BadRequestError) as exc:
                responses[idx] = self._reject(context, idx, exc.code, exc.message)
            except Exception as exc:  # anything else is still this item's problem only
                logger.exception("unexpected error while preprocessing item %d", idx)
                responses[idx] = self._reject(context, idx, "corrupt_image", str(exc))
            finally:
                self.metrics.preprocess_seconds(time.perf_counter() - started)
        if good:
            started = time.perf_counter()
            probabilities = self.predict(torch.stack(tensors))
            self.metrics.inference_seconds(time.perf_counter() - started)
            for idx, row_probs in zip(good, probabilities, strict=True):
                answer = self.answer(row_probs)
                self.metrics.prediction(answer["label"], answer["confidence"])
                responses[idx] = answer
                if context is not None:
                    context.set_response_content_type(idx, "application/json")
        return responses

    def _authorization_problem(self, context: Any, idx: int) -> str | None:
        """Why item ``idx`` is refused a 401, or None when no key is configured or it sent one."""
        if not self.api_keys:
            return None
        headers: dict[str, Any] = {}
        if context is not None and context.request_processor:
            headers = context.get_all_request_header(idx) or {}
        return authorization_problem(headers, self.api_keys)

    def _reject(self, context: Any, idx: int, code: str, message: str) -> dict[str, str]:
        status = ERROR_STATUS.get(code, 400)
        self.metrics.error(code)
        if context is not None:
            # Reason phrase = the code only: decoder messages may hold characters an HTTP
            # status line cannot carry; the full message is in the JSON body.
            context.set_response_status(status, code, idx)
            context.set_response_content_type(idx, "application/json")
            if status == 401:
                context.set_response_header(idx, "WWW-Authenticate", 'Bearer realm="catsdogs"')
        logger.info("rejected item %d: %s (%s)", idx, code, message)
        return {"error": code, "message": message}
