"""Roll a new model version onto the local TorchServe: register, smoke test, promote.

The order is the safety: a version is registered *next to* the one serving,
checked through its explicit version URL, and only then made the default. If
anything fails, the candidate is unregistered, the previous default keeps
serving (TorchServe never switched), and the caller gets the reason.

Plain functions here (``deploy_mar``, ``deploy_latest``) are what ``make run``
and the tests call; ``pipelines/deployment.py`` wraps the same functions as
ZenML steps.
"""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from steps import torchserve_local
from steps.packaging import DEFAULT_MODEL_NAME, build_mar, mar_file_name
from steps.smoke_test import assert_smoke_test, default_photo
from steps.torchserve_client import TorchServeClient

logger = logging.getLogger(__name__)


class DeploymentError(RuntimeError):
    """The candidate was not promoted; the message says why and what keeps serving."""


@dataclass
class Candidate:
    """A registered, not yet promoted version (what the pipeline steps pass along)."""

    model_name: str
    version: str
    mar_name: str
    previous_version: str | None
    run_dir: str


def mar_manifest(mar_path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(mar_path) as archive:
        return json.loads(archive.read("MAR-INF/MANIFEST.json"))


def _server(run_dir: str | Path | None) -> tuple[torchserve_local.ServerSettings, TorchServeClient]:
    """Start the local server for ``run_dir`` or reuse the one already running there."""
    settings = torchserve_local.ServerSettings.local(run_dir)
    running = torchserve_local.load_running(settings.root)
    settings = running or torchserve_local.start(settings)
    return settings, TorchServeClient.for_local(settings)


def register_candidate(mar_path: str | Path, run_dir: str | Path | None = None) -> Candidate:
    """Copy the archive into the model store and register it beside the serving version."""
    mar_path = Path(mar_path)
    manifest = mar_manifest(mar_path)
    model_name = manifest["model"]["modelName"]
    version = manifest["model"]["modelVersion"]
    settings, client = _server(run_dir)
    # Named from the manifest: a ZenML-loaded artifact arrives as "file_data".
    target = settings.model_store / mar_file_name(model_name, version)
    if mar_path.resolve() != target.resolve():
        shutil.copy2(mar_path, target)
    previous = client.default_version(model_name)
    if version in client.versions(model_name):
        if version == previous:
            logger.info("%s %s is already the default; re-checking it", model_name, version)
            return Candidate(model_name, version, target.name, previous, settings.run_dir)
        client.unregister(model_name, version)  # a stale, never-promoted registration
    logger.info("registering %s %s (default now: %s)", model_name, version, previous or "none")
    try:
        client.register(target.name, initial_workers=1)
        client.wait_for_workers(model_name, version)
    except Exception:
        # Workers that cannot load leave the version registered beside the default.
        if version != previous:
            _discard(
                settings, client, Candidate(model_name, version, target.name, previous, settings.run_dir)
            )
        raise
    return Candidate(model_name, version, target.name, previous, settings.run_dir)


def _discard(
    settings: torchserve_local.ServerSettings, client: TorchServeClient, candidate: Candidate
) -> None:
    """Unregister a rejected candidate and delete its archive from the model store.

    Left there under its final name, a rejected .mar looks like a deployable
    version next to the promoted one. The serving and previous default's archives
    are never touched.
    """
    if candidate.version in client.versions(candidate.model_name):
        client.unregister(candidate.model_name, candidate.version)
    if candidate.mar_name not in _protected_archives(settings, candidate):
        (settings.model_store / candidate.mar_name).unlink(missing_ok=True)
        logger.info("removed rejected archive %s from the model store", candidate.mar_name)


def _protected_archives(settings: torchserve_local.ServerSettings, candidate: Candidate) -> set[str]:
    """Archives a rollback never deletes: the serving default's and the one a restart loads."""
    keep = set()
    if candidate.previous_version:
        keep.add(mar_file_name(candidate.model_name, candidate.previous_version))
    try:
        recorded = torchserve_local.read_default_model(settings)
    except torchserve_local.TorchServeError:
        return {candidate.mar_name}  # cannot tell what a restart loads: delete nothing
    if recorded:
        keep.add(recorded["mar"])
    return keep


def smoke_test_candidate(
    candidate: Candidate, cat_photo: Path | None = None, dog_photo: Path | None = None
) -> None:
    """Smoke test the candidate's own URL; on failure unregister it and raise."""
    settings, client = _server(candidate.run_dir)
    try:
        assert_smoke_test(
            client,
            model=candidate.model_name,
            version=candidate.version,
            cat_photo=cat_photo,
            dog_photo=dog_photo,
        )
    except Exception as exc:
        if candidate.version != candidate.previous_version:
            try:
                _discard(settings, client, candidate)
            except Exception:
                logger.warning("could not unregister %s", candidate.version, exc_info=True)
        serving = candidate.previous_version or "no version"
        raise DeploymentError(
            f"{candidate.model_name} {candidate.version} was not promoted ({exc}); {serving} keeps serving"
        ) from exc


def promote_candidate(candidate: Candidate, keep_previous: int = 1) -> dict[str, Any]:
    """Make the candidate the default, record it for the next start, retire old versions."""
    settings, client = _server(candidate.run_dir)
    client.set_default(candidate.model_name, candidate.version)
    torchserve_local.write_default_model(
        settings, candidate.model_name, candidate.version, candidate.mar_name
    )
    keep = {candidate.version}
    if candidate.previous_version and keep_previous:
        keep.add(candidate.previous_version)  # instant rollback target
    for version in client.versions(candidate.model_name):
        if version not in keep:
            client.unregister(candidate.model_name, version)
    result = {
        **asdict(candidate),
        "inference_url": settings.inference_url,
        "curl": curl_command(settings, candidate.model_name),
    }
    logger.info("%s %s is now the default", candidate.model_name, candidate.version)
    return result


def curl_command(
    settings: torchserve_local.ServerSettings, model_name: str, photo: Path | None = None
) -> str:
    """A curl that works as pasted: explicit image content type and the token header.

    (TorchServe answers 500 to ``--data-binary`` sent with curl's default
    form-urlencoded content type.)
    """
    photo = photo or default_photo("cat")
    token = torchserve_local.read_tokens(settings).get("inference")
    auth = f"-H 'Authorization: Bearer {token}' " if token else ""
    return (
        f"curl {auth}-H 'Content-Type: image/jpeg' --data-binary @{photo} "
        f"{settings.inference_url}/predictions/{model_name}"
    )


def deploy_mar(
    mar_path: str | Path,
    run_dir: str | Path | None = None,
    cat_photo: Path | None = None,
    dog_photo: Path | None = None,
) -> dict[str, Any]:
    """Register -> wait for workers -> smoke test -> promote; raises DeploymentError."""
    try:
        candidate = register_candidate(mar_path, run_dir)
    except Exception as exc:
        raise DeploymentError(f"registering {Path(mar_path).name} failed: {exc}") from exc
    smoke_test_candidate(candidate, cat_photo, dog_photo)
    return promote_candidate(candidate)


def deploy_latest(
    bundle: dict[str, Any] | str | Path,
    run_dir: str | Path | None = None,
    model_name: str = DEFAULT_MODEL_NAME,
    cat_photo: Path | None = None,
    dog_photo: Path | None = None,
) -> dict[str, Any]:
    """The tail of ``make run``: package a training bundle (dict or model.pt) and deploy it.

    Returns the deployment record, including a ready-to-paste ``curl``.
    """
    root = Path(run_dir or torchserve_local.default_run_dir())
    mar = build_mar(bundle, root / "model-store", model_name=model_name)
    return deploy_mar(mar, root, cat_photo, dog_photo)
