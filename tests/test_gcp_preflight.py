# ruff: noqa: F811  (pytest fixtures imported from tests.gcs_fixtures are parameters here)
"""Bad GCP input is refused before any work starts, with one line that says what to set.

Bucket cases run against the GCS emulator (and its fault proxy for a 403); the
ZenML checks against this session's real ZenML store; the credentials case runs
the command in a process whose environment holds no credentials at all.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from steps.gcp_preflight import PreflightError, check_stack_file, preflight
from steps.gcp_settings import MLFLOW_SECRET, RAW_DATA_PREFIX, STACK_FILE
from tests.gcs_fixtures import (  # noqa: F401  (pytest fixtures)
    TEST_BUCKET,
    GcsEmulator,
    gcs_emulator,
    gcs_env,
    upload_photos,
)

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::FutureWarning")]
REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE = f"gs://{TEST_BUCKET}/{RAW_DATA_PREFIX}"


@pytest.fixture
def mlflow_secret() -> Iterator[None]:
    """The secret zenml_stack.yaml refers to, in this session's ZenML store."""
    from zenml.client import Client

    secret = Client().create_secret(MLFLOW_SECRET, values={"username": "ci", "password": "not-a-password"})
    yield
    Client().delete_secret(secret.id)


@pytest.fixture
def test_bucket(gcs_env: GcsEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """GCS_BUCKET points at the emulator's bucket; returns a run config reading photos there."""
    monkeypatch.setenv("GCS_BUCKET", TEST_BUCKET)
    config = tmp_path / "gcp.yaml"
    config.write_text(yaml.safe_dump({"parameters": {"source": SOURCE}}))
    return config


def refused(**kwargs: object) -> str:
    with pytest.raises(PreflightError) as caught:
        preflight(**kwargs)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_ready_setup_passes(test_bucket: Path, petimages_dir: Path, mlflow_secret: None) -> None:
    upload_photos(petimages_dir, TEST_BUCKET, RAW_DATA_PREFIX, per_class=2)
    preflight(STACK_FILE, test_bucket, zenml=True)


def test_missing_bucket(test_bucket: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GCS_BUCKET", "catsdogs-no-such-bucket")
    message = refused(config=test_bucket, zenml=False)
    assert "gs://catsdogs-no-such-bucket does not exist" in message
    assert "gcloud storage buckets create gs://catsdogs-no-such-bucket" in message
    assert "GCS_BUCKET in configs/gcp.env" in message


def test_bucket_given_as_a_url(test_bucket: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GCS_BUCKET", f"gs://{TEST_BUCKET}/datasets")
    message = refused(config=test_bucket, zenml=False)
    assert "GCS_BUCKET=" in message and "bare bucket name" in message and "configs/gcp.env" in message


def test_bucket_without_permission(test_bucket: Path, gcs_env: GcsEmulator) -> None:
    gcs_env.rules.permanent[f"/b/{TEST_BUCKET}"] = 403
    message = refused(config=test_bucket, zenml=False)
    assert f"no access to gs://{TEST_BUCKET}" in message and "roles/storage.objectAdmin" in message


def test_bucket_without_photos(test_bucket: Path, tmp_path: Path) -> None:
    empty = f"gs://{TEST_BUCKET}/datasets/nothing-uploaded-here"
    config = tmp_path / "empty.yaml"
    config.write_text(yaml.safe_dump({"parameters": {"source": empty}}))
    message = refused(config=config, zenml=False)
    assert empty in message and "upload the photos" in message


def test_missing_zenml_secret(test_bucket: Path, petimages_dir: Path) -> None:
    upload_photos(petimages_dir, TEST_BUCKET, RAW_DATA_PREFIX, per_class=2)
    message = refused(config=test_bucket, zenml=True)
    assert f"ZenML secret {MLFLOW_SECRET!r}" in message
    assert f"zenml secret create {MLFLOW_SECRET} --username=<user> --password=<password>" in message


@pytest.mark.parametrize(
    ("kind", "flavor", "expected"),
    [
        ("artifact_store", "gcs", "has flavor 'gcs', which ZenML does not know for artifact_store"),
        ("artefact_store", "gcp", "unknown stack component type 'artefact_store'"),
    ],
)
def test_unknown_stack_component(tmp_path: Path, kind: str, flavor: str, expected: str) -> None:
    stack = yaml.safe_load(STACK_FILE.read_text())
    store = stack["components"].pop("artifact_store")
    store[0]["flavor"] = flavor
    stack["components"][kind] = store
    path = tmp_path / "zenml_stack.yaml"
    path.write_text(yaml.safe_dump(stack))
    with pytest.raises(PreflightError, match=expected) as caught:
        check_stack_file(path)
    assert "steps/gcp_settings.py" in str(caught.value) and "\n" not in str(caught.value)


def test_missing_credentials_one_line(tmp_path: Path) -> None:
    """No key file, no gcloud login, not on GCE: the command says how to authenticate, in one line."""
    keep = ("PATH", "LANG", "ZENML_CONFIG_PATH", "ZENML_ANALYTICS_OPT_IN")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env |= {"HOME": str(tmp_path), "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"), "NO_GCE_CHECK": "true"}
    result = subprocess.run(
        [sys.executable, "-m", "steps.gcp_preflight", "--no-zenml"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    ours = [line for line in result.stderr.splitlines() if line.startswith("gcp preflight:")]
    assert ours == [
        "gcp preflight: no Google credentials found: run `gcloud auth application-default login` "
        "(laptop), authenticate with google-github-actions/auth (CI) or Workload Identity (GKE), "
        "or set GOOGLE_APPLICATION_CREDENTIALS to a service account key file"
    ]
