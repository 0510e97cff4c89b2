# ruff: noqa: F811  (pytest fixtures imported from tests.gcs_fixtures are parameters here)
"""GCS for real on localhost: real photos in an emulated bucket, read the way production reads.

The ingest step and the ZenML GCS artifact store run unchanged against
gcp-storage-emulator; faults (503, 403, a vanished object) come from a proxy
in front of it, so gcsfs sees genuine HTTP answers.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gcs_fixtures import (  # noqa: F401  (pytest fixtures)
    RAW_PREFIX,
    TEST_BUCKET,
    GcsEmulator,
    gcs_emulator,
    gcs_env,
    upload_photos,
)

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[1]
PER_CLASS = 6
SOURCE = f"gs://{TEST_BUCKET}/{RAW_PREFIX}"


@pytest.fixture
def photos(gcs_env: GcsEmulator, petimages_dir: Path) -> dict[str, Path]:
    return upload_photos(petimages_dir, TEST_BUCKET, RAW_PREFIX, PER_CLASS)


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test starts with an empty download cache, so it really talks to GCS."""
    monkeypatch.setenv("CATSDOGS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _downloads(gcs: GcsEmulator, fragment: str = "") -> list[str]:
    return [r for r in gcs.rules.requests if "alt=media" in r and fragment in r]


def test_photos_round_trip_through_gcsfs(gcs_env: GcsEmulator, photos: dict[str, Path]) -> None:
    import gcsfs

    fs = gcsfs.GCSFileSystem()
    listed = fs.find(f"{TEST_BUCKET}/{RAW_PREFIX}", detail=True)
    assert set(photos) <= set(listed)
    for key, local in photos.items():
        assert fs.cat_file(key) == local.read_bytes()
        assert listed[key]["generation"], "the cache is keyed by object generation"


def test_ingest_reads_gs_prefix_in_parallel_and_caches(
    gcs_env: GcsEmulator, photos: dict[str, Path], private_cache: Path
) -> None:
    from steps.ingest import ingest_source

    result = ingest_source(SOURCE, workers=1)
    seen = len(result.manifest) + len(result.quarantine)
    assert seen == len(photos)
    assert set(result.manifest["label"]) == {"cat", "dog"}
    assert all(result.manifest["version"].astype(str).str.len() > 0)
    first_downloads = len(_downloads(gcs_env))
    assert first_downloads >= len(photos)

    again = ingest_source(SOURCE, workers=1)
    assert len(_downloads(gcs_env)) == first_downloads, "second run must read the local cache"
    assert again.report["dataset_version"] == result.report["dataset_version"]


def test_rewritten_object_is_downloaded_again(
    gcs_env: GcsEmulator, photos: dict[str, Path], private_cache: Path, petimages_dir: Path
) -> None:
    """A new generation of an object must not be served from the old cache entry."""
    import gcsfs

    from steps.ingest import ingest_source

    before = ingest_source(SOURCE, workers=1)
    key = next(k for k in photos if "/Cat/" in k)
    replacement = sorted((petimages_dir / "Cat").glob("*.jpg"), key=lambda p: int(p.stem))[50]
    gcsfs.GCSFileSystem(token="anon").pipe_file(key, replacement.read_bytes())
    gcsfs.GCSFileSystem.clear_instance_cache()

    after = ingest_source(SOURCE, workers=1)
    uri = f"gs://{key}"
    new_sha = after.manifest.set_index("uri").loc[uri, "sha256"]
    assert new_sha == hashlib.sha256(replacement.read_bytes()).hexdigest()
    assert after.report["dataset_version"] != before.report["dataset_version"]


def test_transient_503_is_retried_and_succeeds(
    gcs_env: GcsEmulator, photos: dict[str, Path], private_cache: Path
) -> None:
    from steps.ingest import ingest_source

    key = next(k for k in photos if "/Dog/" in k)
    gcs_env.rules.transient[key.split("/", 1)[1]] = 2
    result = ingest_source(SOURCE, workers=1)
    uris = set(result.manifest["uri"]) | set(result.quarantine["uri"])
    assert f"gs://{key}" in uris
    assert f"gs://{key}" not in set(result.quarantine["uri"]), "a transient 503 must be retried"
    assert len(_downloads(gcs_env, key.split("/", 1)[1])) >= 3


def _ingest_in_subprocess(timeout: float = 40) -> dict:
    """Run ingest in its own process so a hang fails this test instead of the whole session."""
    code = (
        "import json, sys\n"
        "from steps.ingest import ingest_source\n"
        "from steps.data_sources import DataSourceError\n"
        "try:\n"
        f"    r = ingest_source({SOURCE!r}, workers=1)\n"
        "except DataSourceError as exc:\n"
        "    print(json.dumps({'error': str(exc)})); sys.exit(0)\n"
        "q = r.quarantine.set_index('uri')['reason'].to_dict()\n"
        "print(json.dumps({'kept': len(r.manifest), 'quarantine': q}))\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"ingest of {SOURCE} hung for {timeout}s on a failing object")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_vanished_object_is_quarantined_not_fatal(
    gcs_env: GcsEmulator, photos: dict[str, Path], private_cache: Path
) -> None:
    key = next(k for k in photos if "/Cat/" in k)
    gcs_env.rules.permanent[key.split("/", 1)[1] + "?alt=media"] = 404
    result = _ingest_in_subprocess()
    assert result.get("quarantine", {}).get(f"gs://{key}") == "missing", result
    assert result["kept"] > 0


def test_permission_denied_object_is_reported_clearly(
    gcs_env: GcsEmulator, photos: dict[str, Path], private_cache: Path
) -> None:
    key = next(k for k in photos if "/Dog/" in k)
    gcs_env.rules.permanent[key.split("/", 1)[1] + "?alt=media"] = 403
    result = _ingest_in_subprocess()
    if "error" in result:  # failing the run is acceptable when it says why
        assert any(w in result["error"] for w in ("403", "ermission", "Forbidden")), result
        return
    assert result["quarantine"].get(f"gs://{key}") == "permission_denied", result


def test_missing_bucket_gives_a_clear_error(gcs_env: GcsEmulator, private_cache: Path) -> None:
    from steps.data_sources import DataSourceError
    from steps.ingest import ingest_source

    with pytest.raises(DataSourceError, match="no-such-bucket"):
        ingest_source("gs://no-such-bucket/datasets/cats-dogs/raw", workers=1)


def test_zenml_gcs_artifact_store_writes_and_reads_back(gcs_env: GcsEmulator) -> None:
    """The stack's real GCP artifact store class, through a ZenML materializer."""
    from zenml.client import Client
    from zenml.enums import StackComponentType
    from zenml.materializers.built_in_materializer import BuiltInMaterializer
    from zenml.stack import StackComponent

    client = Client()
    model = client.create_stack_component(
        name="emulated-gcs",
        component_type=StackComponentType.ARTIFACT_STORE,
        flavor="gcp",
        configuration={"path": f"gs://{TEST_BUCKET}/zenml-artifacts"},
    )
    try:
        store = StackComponent.from_model(model)
        uri = f"gs://{TEST_BUCKET}/zenml-artifacts/test-run/metrics"
        store.makedirs(uri)
        payload = {"accuracy": 0.97, "classes": ["cat", "dog"]}
        BuiltInMaterializer(uri=uri, artifact_store=store).save(payload)
        assert store.exists(uri) and store.listdir(uri)
        assert BuiltInMaterializer(uri=uri, artifact_store=store).load(dict) == payload
    finally:
        client.delete_stack_component(model.id, StackComponentType.ARTIFACT_STORE)
