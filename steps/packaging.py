"""Package a trained model bundle as a TorchServe ``.mar``.

The archive holds only what serving needs: the bundle (``model.pt``, loadable
with ``weights_only=True``), ``index_to_name.json`` written from the class
order training used, the handler, the shared ``handlers`` package as a folder
(so ``handlers.x`` imports resolve inside the unpacked archive) and the
per-model config. No ZenML, MLflow or training-only code goes in.

``build_mar`` is a plain function (tests, ``make``); ``package_model`` is the
ZenML step around it, which also logs the archive to MLflow when the active
stack has an MLflow experiment tracker.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import torch
from zenml import step

from handlers.models import BundleError, ModelMetadata, model_from_bundle, read_bundle_file

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
HANDLERS_DIR = REPO_ROOT / "handlers"
HANDLER_FILE = HANDLERS_DIR / "image_classifier.py"
MODEL_CONFIG = REPO_ROOT / "serve_config" / "model-config.yaml"
DEFAULT_MODEL_NAME = "catsdogs"
# The modules the handler needs at serve time; nothing else from the repo is shipped.
SERVING_MODULES = (
    "__init__.py",
    "api_key.py",
    "cpu_limit.py",
    "image_classifier.py",
    "image_decoding.py",
    "model_spec.py",
    "models.py",
    "preprocessing.py",
    "request_parsing.py",
    "serving_metrics.py",
)


class PackagingError(RuntimeError):
    """torch-model-archiver failed or the bundle is not a model bundle."""


def safe_version(version: str) -> str:
    """A version usable in a file name and a management-API URL path."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", str(version)).strip("-.")
    return cleaned or "0"


def mar_file_name(model_name: str, version: str) -> str:
    """One file per version, so registering v2 never overwrites the v1 that is serving."""
    return f"{model_name}_{safe_version(version)}.mar"


def _load_bundle_dict(bundle: dict[str, Any] | str | Path) -> dict[str, Any]:
    """The bundle, checked before packaging: its weights must load into the model its metadata names.

    A bundle TorchServe cannot load (wrong class count, missing weights) would
    otherwise only fail at registration, with the cause in TorchServe's model_log.log.
    """
    try:
        data = bundle if isinstance(bundle, dict) else read_bundle_file(bundle)
        model_from_bundle(data, "the bundle" if isinstance(bundle, dict) else str(bundle))
    except BundleError as exc:
        raise PackagingError(str(exc)) from None
    return data


def build_mar(
    bundle: dict[str, Any] | str | Path,
    export_dir: str | Path,
    model_name: str = DEFAULT_MODEL_NAME,
    version: str | None = None,
    model_config: str | Path = MODEL_CONFIG,
) -> Path:
    """Write ``<export_dir>/<model_name>_<version>.mar`` and return its path.

    ``version`` defaults to the bundle's own ``metadata.version`` so the version
    TorchServe reports is the one the handler puts in every answer.
    """
    data = _load_bundle_dict(bundle)
    metadata = ModelMetadata.from_dict(data["metadata"])
    version = safe_version(version or metadata.version)
    export_dir = Path(export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    target = export_dir / mar_file_name(model_name, version)

    with tempfile.TemporaryDirectory(prefix="catsdogs-mar-") as tmp:
        stage = Path(tmp) / "extra"
        (stage / "handlers").mkdir(parents=True)
        for module in SERVING_MODULES:
            shutil.copy2(HANDLERS_DIR / module, stage / "handlers" / module)
        index_to_name = {str(i): name for i, name in enumerate(metadata.class_names)}
        (stage / "index_to_name.json").write_text(json.dumps(index_to_name, indent=2))
        model_file = Path(tmp) / "model.pt"
        torch.save(data, str(model_file))
        # Written next to the .mar name, then renamed: a half-written archive is never
        # visible in the model store under its final name.
        build_dir = Path(tmp) / "out"
        build_dir.mkdir()
        cmd = [
            sys.executable, "-m", "model_archiver.model_packaging",
            "--model-name", model_name,
            "--version", version,
            "--serialized-file", str(model_file),
            "--handler", str(HANDLER_FILE),
            "--extra-files", str(stage),
            "--config-file", str(model_config),
            "--export-path", str(build_dir),
            "--force",
        ]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        built = build_dir / f"{model_name}.mar"
        if result.returncode != 0 or not built.exists():
            raise PackagingError(
                f"torch-model-archiver failed (exit {result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[-2000:]}"
            )
        tmp_target = target.with_suffix(".mar.partial")
        shutil.move(str(built), tmp_target)
        tmp_target.replace(target)
    logger.info("packaged %s version %s -> %s", model_name, version, target)
    return target


def _log_to_mlflow(mar_path: Path) -> None:
    """Attach the archive to the step's MLflow run when the stack has an MLflow tracker."""
    try:
        from zenml.client import Client

        tracker = Client().active_stack.experiment_tracker
        if tracker is None or tracker.flavor != "mlflow":
            return
        import mlflow

        if mlflow.active_run() is None:
            return
        mlflow.log_artifact(str(mar_path), artifact_path="torchserve")
        mlflow.set_tag("torchserve_mar", mar_path.name)
    except Exception:  # tracking must not fail packaging
        logger.warning("could not log %s to MLflow", mar_path, exc_info=True)


def mlflow_tracker_name() -> str | None:
    """The active stack's MLflow tracker name; called when a pipeline is built, never at import."""
    try:
        from zenml.client import Client

        tracker = Client().active_stack.experiment_tracker
        return tracker.name if tracker is not None and tracker.flavor == "mlflow" else None
    except Exception:
        return None


@step(enable_cache=False)
def package_model(
    model_bundle: dict,
    model_name: str = DEFAULT_MODEL_NAME,
) -> Annotated[Path, "torchserve_mar"]:
    """ZenML step: the training bundle dict -> a versioned .mar, stored as a ZenML artifact.

    The deployment pipeline attaches the stack's MLflow tracker with
    ``with_options`` so the archive is also an MLflow artifact of this run.
    """
    out_dir = Path(tempfile.mkdtemp(prefix="catsdogs-package-"))
    mar = build_mar(model_bundle, out_dir, model_name=model_name)
    _log_to_mlflow(mar)
    return mar
