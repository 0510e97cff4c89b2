# ruff: noqa: F811  (pytest fixtures imported from tests.gcs_fixtures are parameters here)
"""Publishing a .mar to the model store, and the serving pod's fetch of it, through the GCS emulator.

The round trip is the production one: steps/model_publish.py uploads with
gcsfs; docker/fetch_model.py (the serving pod's init container, standard
library only) downloads by MODEL_NAME / MODEL_VERSION and checks the MD5.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from steps.model_publish import PublishError, model_prefix, publish_mar
from steps.packaging import build_mar
from tests.gcs_fixtures import TEST_BUCKET, GcsEmulator, gcs_emulator, gcs_env  # noqa: F401
from tests.torchserve_fixtures import MODEL_NAME, fitted_tiny_bundle, tiny_bundle, tiny_mar  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::FutureWarning")]
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(gcs_env: GcsEmulator, request: pytest.FixtureRequest) -> str:
    """A model store of its own per test, in the emulated bucket."""
    return f"gs://{TEST_BUCKET}/model-store-{request.node.name[:40]}"


def fetch(store: str, version: str, dest: Path) -> subprocess.CompletedProcess:
    """docker/fetch_model.py exactly as the init container runs it (env from the ConfigMap)."""
    env = {**os.environ, "MODEL_STORE_URI": store, "MODEL_NAME": MODEL_NAME, "MODEL_VERSION": version,
           "MODEL_DIR": str(dest)}  # fmt: skip
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "docker" / "fetch_model.py")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_published_model_is_fetched_by_the_serving_pod(store: str, tiny_mar: Path, tmp_path: Path) -> None:
    import gcsfs

    published = publish_mar(tiny_mar, store)
    prefix = model_prefix(store, MODEL_NAME, "test-1")
    assert published.version == "test-1"
    assert published.mar_uri == f"{prefix}/{MODEL_NAME}.mar"
    record = json.loads(gcsfs.GCSFileSystem().cat_file(f"{prefix}/{MODEL_NAME}.json"))
    assert record["version"] == "test-1" and record["model_name"] == MODEL_NAME
    assert len(record["sha256"]) == 64 and record["size"] == tiny_mar.stat().st_size
    assert "dataset_version" in record

    result = fetch(store, "test-1", tmp_path / "models")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "models" / f"{MODEL_NAME}.mar").read_bytes() == tiny_mar.read_bytes()


def test_record_carries_the_bundle_lineage(store: str, petimages_dir: Path, tmp_path: Path) -> None:
    bundle = fitted_tiny_bundle(petimages_dir, "lin-1")
    bundle["metadata"]["lineage"] = {"dataset_version": "ds-abc", "git_commit": "0123abc"}
    published = publish_mar(build_mar(bundle, tmp_path), store)
    assert published.dataset_version == "ds-abc"
    assert published.lineage == {"dataset_version": "ds-abc", "git_commit": "0123abc"}


def test_same_model_again_is_a_no_op(store: str, tiny_bundle: dict, tiny_mar: Path, tmp_path: Path) -> None:
    first = publish_mar(tiny_mar, store)
    repackaged = build_mar(tiny_bundle, tmp_path)  # same weights, new archive
    assert publish_mar(repackaged, store) == first


def test_other_model_under_a_published_version_is_refused(
    store: str, tiny_mar: Path, petimages_dir: Path, tmp_path: Path
) -> None:
    publish_mar(tiny_mar, store)
    other = build_mar(fitted_tiny_bundle(petimages_dir, "test-1", swap_labels=True), tmp_path)
    with pytest.raises(PublishError, match=r"already published .* other weights"):
        publish_mar(other, store)


def test_fetching_an_unpublished_version_says_what_to_check(store: str, tmp_path: Path) -> None:
    result = fetch(store, "never-published", tmp_path / "models")
    assert result.returncode == 1
    assert "does not exist; check MODEL_NAME / MODEL_VERSION" in result.stderr
    assert not (tmp_path / "models" / f"{MODEL_NAME}.mar").exists()


def test_cli_packages_a_bundle_publishes_it_and_reports_the_version(
    store: str, petimages_dir: Path, tmp_path: Path
) -> None:
    bundle_file = tmp_path / "model.pt"
    torch.save(fitted_tiny_bundle(petimages_dir, "cli-1"), bundle_file)
    outputs = tmp_path / "outputs"
    result = subprocess.run(
        [sys.executable, "-m", "steps.model_publish", "--bundle", str(bundle_file), "--store", store,
         "--outputs", str(outputs)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert outputs.read_text().splitlines() == ["model_version=cli-1"]
    assert fetch(store, "cli-1", tmp_path / "models").returncode == 0


def test_cli_refuses_a_store_that_is_not_gcs(tmp_path: Path, tiny_mar: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "steps.model_publish", "--mar", str(tiny_mar), "--store", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    assert "must be a gs:// URI" in result.stderr


@pytest.mark.slow  # a ZenML run plus its own TorchServe: over a minute on 2 cores
def test_deployment_pipeline_publishes_the_smoke_tested_model(
    store: str, petimages_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m pipelines.deployment --publish STORE`: only after the smoke test, and fetchable."""
    from pipelines.deployment import main as deploy_main
    from scripts.setup_local_stack import main as setup_local_stack
    from steps import torchserve_local

    assert setup_local_stack() == 0
    monkeypatch.setenv("CATSDOGS_RUNS_DIR", str(tmp_path))  # the pipeline's default run folder
    run_dir = torchserve_local.default_run_dir()
    run_dir.mkdir()
    torchserve_local.start(torchserve_local.ServerSettings.for_tests(run_dir))
    try:
        bundle_file = tmp_path / "model.pt"
        torch.save(fitted_tiny_bundle(petimages_dir, "pub-1"), bundle_file)
        assert deploy_main(["--bundle", str(bundle_file), "--publish", store]) == 0
        assert fetch(store, "pub-1", tmp_path / "models").returncode == 0
    finally:
        running = torchserve_local.load_running(run_dir)
        if running is not None:
            torchserve_local.stop(running)


def test_cli_publishes_exactly_the_training_run_it_is_given(
    store: str, petimages_dir: Path, tmp_path: Path
) -> None:
    """`--run-id`: that run's model, not the newest completed run; a run that failed its gate is refused.

    The runs are tests/tiny_training_pipeline.py's (the real pipeline name, step and output
    names and materializer), in a ZenML store of this test's own.
    """
    env = {**os.environ, "ZENML_CONFIG_PATH": str(tmp_path / "zenml"), "ZENML_ANALYTICS_OPT_IN": "false"}
    ids = {}
    for name, version, flags in (
        ("run-a", "ver-a", []),
        ("run-b", "ver-b", []),
        ("run-c", "ver-c", ["--fail"]),
    ):
        bundle_file = tmp_path / f"{name}.pt"
        torch.save(fitted_tiny_bundle(petimages_dir, version), bundle_file)
        result = subprocess.run(
            [sys.executable, "-m", "tests.tiny_training_pipeline", "--run-name", name, "--bundle",
             str(bundle_file), *flags],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        ids[name] = result.stdout.strip().splitlines()[-1].removeprefix("run_id=")

    def publish(run: str) -> tuple[subprocess.CompletedProcess, Path]:
        outputs = tmp_path / f"outputs-{run}"
        result = subprocess.run(
            [sys.executable, "-m", "steps.model_publish", "--run-id", run, "--store", store,
             "--outputs", str(outputs)],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        return result, outputs

    older, outputs = publish(ids["run-a"])  # run-b completed later: still run-a's model
    assert older.returncode == 0, older.stderr[-3000:]
    assert outputs.read_text().splitlines() == ["model_version=ver-a"]
    failed, outputs = publish(ids["run-c"])
    assert failed.returncode == 1
    assert (
        "run run-c" in failed.stderr
        and "is failed: step evaluate failed: quality gate failed" in failed.stderr
    )
    assert not outputs.exists()
    assert fetch(store, "ver-c", tmp_path / "models").returncode == 1
