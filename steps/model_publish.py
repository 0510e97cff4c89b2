"""Publish a packaged model to the model store the GKE serving pods read from.

The serving pod's init container (docker/fetch_model.py) downloads
``<store>/<model>/<version>/<model>.mar`` for the MODEL_VERSION it is given, so a
model is released by uploading it there, next to a small record::

    gs://<bucket>/model-store/catsdogs/<version>/catsdogs.mar
    gs://<bucket>/model-store/catsdogs/<version>/catsdogs.json   (version, sha256, dataset_version, lineage)

The version is the one inside the archive (the bundle's weights digest, also what
every answer reports), and the lineage is read from the bundle inside it, so a
``.mar`` is all this needs. A published version is immutable: publishing the same
model again is a no-op that keeps the first archive, another model under the same
version is refused (rollbacks fetch old versions and must get what was tested).
The record is written last, so its presence means the archive is complete.

    python -m steps.model_publish [--mar FILE | --bundle model.pt | --run-id RUN] [--store gs://B/model-store]
                                  [--outputs F]

``--run-id`` (a training run's id or name) publishes the ``model_bundle`` of exactly
that run, and only if it completed (passed the quality gate): the train-and-deploy
workflow passes the run scripts/run_training_pipeline.sh started and checked, so
another run (someone else's, another stack's, a newer one) can never be shipped
in its place. With no source at all: your latest completed training run on the
active ZenML stack (for hands-on use). ``--store`` defaults to MODEL_STORE_URI of
configs/gcp.env.
``model_version=<version>`` is appended to ``--outputs`` (a GitHub step output).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import torch
from zenml import step

from steps.gcp_settings import load_gcp_settings, log_plainly_to_stderr

logger = logging.getLogger(__name__)


class PublishError(RuntimeError):
    """The model was not published; the message says why."""


@dataclass
class PublishedModel:
    """Where a model version lives in the store, and what it is."""

    model_name: str
    version: str
    mar_uri: str
    record_uri: str
    sha256: str
    model_sha256: str
    size: int
    dataset_version: str
    lineage: dict[str, str]
    published_at: str


def model_prefix(store_uri: str, model_name: str, version: str) -> str:
    """``<store>/<model>/<version>``: the folder docker/fetch_model.py reads from."""
    return f"{store_uri.rstrip('/')}/{model_name}/{version}"


def read_mar(mar_path: Path) -> tuple[str, str, dict[str, str], str]:
    """(model name, version, lineage, sha256 of the weights) from the archive and the bundle inside.

    The weights' digest is taken over the tensors, not the serialized file, so the same
    model packaged twice (zip timestamps, a changed handler file) is recognised as the same.
    """
    with zipfile.ZipFile(mar_path) as archive:
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        serialized = manifest["model"]["serializedFile"]
        bundle = torch.load(io.BytesIO(archive.read(serialized)), map_location="cpu", weights_only=True)
    digest = hashlib.sha256()
    for name, tensor in sorted(bundle["state_dict"].items()):
        digest.update(name.encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    lineage = {str(k): str(v) for k, v in (bundle.get("metadata", {}).get("lineage") or {}).items()}
    return manifest["model"]["modelName"], manifest["model"]["modelVersion"], lineage, digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _filesystem(store_uri: str) -> Any:
    """gcsfs, with Google credentials from the environment (none for STORAGE_EMULATOR_HOST)."""
    import gcsfs

    if not store_uri.startswith("gs://"):
        raise PublishError(
            f"model store {store_uri!r} must be a gs:// URI (MODEL_STORE_URI in configs/gcp.env)"
        )
    return gcsfs.GCSFileSystem()


def publish_mar(mar_path: str | Path, store_uri: str) -> PublishedModel:
    """Upload ``mar_path`` and its record under ``<store>/<model>/<version>/``; idempotent per version."""
    mar_path = Path(mar_path)
    model_name, version, lineage, model_sha256 = read_mar(mar_path)
    fs = _filesystem(store_uri)
    prefix = model_prefix(store_uri, model_name, version)
    mar_uri, record_uri = f"{prefix}/{model_name}.mar", f"{prefix}/{model_name}.json"
    sha256 = _sha256(mar_path)
    if fs.exists(record_uri):
        existing = json.loads(fs.cat_file(record_uri))
        if existing.get("model_sha256") != model_sha256:
            raise PublishError(
                f"{model_name} version {version} is already published at {mar_uri} with other weights; "
                "published versions are immutable: publish the new model under a new version"
            )
        logger.info("%s version %s is already published at %s (kept)", model_name, version, mar_uri)
        return PublishedModel(**existing)
    record = PublishedModel(
        model_name=model_name,
        version=version,
        mar_uri=mar_uri,
        record_uri=record_uri,
        sha256=sha256,
        model_sha256=model_sha256,
        size=mar_path.stat().st_size,
        dataset_version=lineage.get("dataset_version", ""),
        lineage=lineage,
        published_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    fs.put_file(str(mar_path), mar_uri)
    fs.pipe_file(record_uri, (json.dumps(asdict(record), indent=2) + "\n").encode())
    logger.info("published %s version %s to %s", model_name, version, mar_uri)
    return record


@step(enable_cache=False)
def publish_model(mar: Path, smoke_tested: dict, store_uri: str) -> Annotated[dict, "published_model"]:
    """ZenML step: publish the archive once the candidate passed its smoke test (``smoke_tested``
    is that step's output: the data dependency that orders this step after it)."""
    published = publish_mar(mar, store_uri)
    if published.version != smoke_tested["version"]:
        raise PublishError(f"published {published.version}, but {smoke_tested['version']} was smoke tested")
    return asdict(published)


def _trained_bundle(training_run: str) -> dict[str, Any]:
    """The bundle of that training run (empty: your latest completed one on the active stack)."""
    from pipelines.deployment import trained_bundle

    return trained_bundle(training_run).load()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--mar", type=Path, help="a packaged .mar")
    source.add_argument("--bundle", type=Path, help="a model.pt bundle, packaged here")
    source.add_argument("--run-id", default="", help="id or name of the completed training run to publish")
    parser.add_argument("--store", default="", help="model store URI (default: configs/gcp.env's)")
    parser.add_argument("--outputs", type=Path, help="append model_version=<version> to this file")
    args = parser.parse_args(argv)
    log_plainly_to_stderr(logger)
    try:
        store = args.store or load_gcp_settings().model_store_uri
        if args.mar:
            published = publish_mar(args.mar, store)
        else:
            from steps.packaging import build_mar

            bundle = (
                torch.load(str(args.bundle), map_location="cpu", weights_only=True)
                if args.bundle
                else _trained_bundle(args.run_id)
            )
            with tempfile.TemporaryDirectory(prefix="catsdogs-publish-") as tmp:
                published = publish_mar(build_mar(bundle, tmp), store)
    except Exception as exc:  # one line for the CI log: what failed and why
        logger.error("model publish failed: %s", exc)
        return 1
    if args.outputs:
        with args.outputs.open("a") as out:
            out.write(f"model_version={published.version}\n")
    logger.info("model_version=%s sha256=%s", published.version, published.sha256)
    return 0


if __name__ == "__main__":
    sys.exit(main())
