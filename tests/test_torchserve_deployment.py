"""The deployment path on a real TorchServe: register -> smoke test -> promote, and rollback.

Uses its own server and run folder (the shared inference server must keep
serving version test-1 for the other modules).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from steps import torchserve_local
from steps.deployment import DeploymentError, deploy_latest, deploy_mar, mar_manifest
from steps.packaging import build_mar
from steps.torchserve_client import TorchServeClient
from tests.torchserve_fixtures import MODEL_NAME, fitted_tiny_bundle

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory):
    """A private run folder on free ports; the server is started by the first deploy."""
    root = tmp_path_factory.mktemp("deploy") / "torchserve"
    settings = torchserve_local.ServerSettings.for_tests(root)
    root.mkdir(parents=True)
    # Pin the free ports for every later start/reuse of this run folder.
    first = torchserve_local.start(settings)
    yield root
    running = torchserve_local.load_running(root) or first
    torchserve_local.stop(running)


def _client(run_dir: Path) -> TorchServeClient:
    settings = torchserve_local.load_running(run_dir)
    assert settings is not None, "server not running"
    return TorchServeClient.for_local(settings)


def test_first_deploy_promotes_and_prints_a_working_curl(run_dir, petimages_dir):
    result = deploy_latest(fitted_tiny_bundle(petimages_dir, "dep-1"), run_dir=run_dir)
    assert result["version"] == "dep-1" and result["previous_version"] is None
    assert _client(run_dir).default_version(MODEL_NAME) == "dep-1"
    # The printed curl works as pasted.
    out = subprocess.run(result["curl"], shell=True, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["label"] == "cat" and answer["model_version"] == "dep-1"
    assert "Authorization: Bearer" in result["curl"]


def test_failing_smoke_test_keeps_the_previous_default(run_dir, petimages_dir):
    bad = fitted_tiny_bundle(petimages_dir, "dep-bad", swap_labels=True)
    with pytest.raises(DeploymentError, match=r"known cat photo.*dep-1 keeps serving"):
        deploy_latest(bad, run_dir=run_dir)
    client = _client(run_dir)
    assert client.default_version(MODEL_NAME) == "dep-1"
    assert "dep-bad" not in client.versions(MODEL_NAME)
    # The rejected archive leaves the model store; the serving one stays.
    assert not (run_dir / "model-store" / "catsdogs_dep-bad.mar").exists()
    assert (run_dir / "model-store" / "catsdogs_dep-1.mar").exists()
    cat = (petimages_dir / "Cat" / "1.jpg").read_bytes()
    assert client.predict_raw(MODEL_NAME, cat).json()["model_version"] == "dep-1"


def _with_model_file(mar: Path, bundle: dict, target: Path) -> Path:
    """A copy of ``mar`` holding ``bundle`` as model.pt: packaging itself refuses a broken bundle."""
    model_file = io.BytesIO()
    torch.save(bundle, model_file)
    with zipfile.ZipFile(mar) as source, zipfile.ZipFile(target, "w") as copy:
        for item in source.infolist():
            data = model_file.getvalue() if item.filename == "model.pt" else source.read(item)
            copy.writestr(item, data)
    return target


def test_archive_whose_workers_cannot_load_is_refused(run_dir, petimages_dir, tmp_path):
    broken = fitted_tiny_bundle(petimages_dir, "dep-broken")
    mar = build_mar(broken, tmp_path / "built")
    broken["state_dict"] = {k: v for k, v in broken["state_dict"].items() if "classifier" not in k}
    with pytest.raises(DeploymentError, match="registering"):
        deploy_mar(_with_model_file(mar, broken, tmp_path / "catsdogs_dep-broken.mar"), run_dir)
    client = _client(run_dir)
    assert client.default_version(MODEL_NAME) == "dep-1"
    assert "dep-broken" not in client.versions(MODEL_NAME)
    assert not (run_dir / "model-store" / "catsdogs_dep-broken.mar").exists()
    assert (run_dir / "model-store" / "catsdogs_dep-1.mar").exists()


@pytest.mark.slow  # a first ZenML run costs over a minute on 2 cores
def test_zenml_deployment_pipeline_promotes_next_version(run_dir, petimages_dir, tmp_path):
    """On the local stack (MLflow tracker): the .mar is a ZenML and an MLflow artifact."""
    import mlflow
    from zenml.client import Client

    from pipelines.deployment import deployment_pipeline
    from scripts.setup_local_stack import main as setup_local_stack

    assert setup_local_stack() == 0
    previous = _serving(run_dir, petimages_dir)
    bundle_file = tmp_path / "model.pt"
    torch.save(fitted_tiny_bundle(petimages_dir, "dep-2"), bundle_file)
    run = deployment_pipeline(bundle_path=str(bundle_file), run_dir=str(run_dir))
    client = _client(run_dir)
    assert client.default_version(MODEL_NAME) == "dep-2"
    assert sorted(client.versions(MODEL_NAME)) == sorted([previous, "dep-2"])  # one rollback target
    record = json.loads((run_dir / "default_model.json").read_text())
    assert record["version"] == "dep-2"

    run = Client().get_pipeline_run(run.id)
    # The bundle file becomes one weights-only artifact, not a pickle per tensor.
    bundle_artifact = run.steps["load_bundle_file"].outputs["model_bundle"][0]
    assert bundle_artifact.materializer.import_path.endswith("ModelBundleMaterializer")
    assert bundle_artifact.load()["metadata"]["version"] == "dep-2"
    mar_artifact = run.steps["package_model"].outputs["torchserve_mar"][0]
    assert mar_manifest(Path(mar_artifact.load()))["model"]["modelVersion"] == "dep-2"
    tracking = mlflow.MlflowClient(Client().active_stack.experiment_tracker.get_tracking_uri())
    mlflow_runs = tracking.search_runs(
        [e.experiment_id for e in tracking.search_experiments()],
        filter_string="tags.torchserve_mar = 'catsdogs_dep-2.mar'",
    )
    assert len(mlflow_runs) == 1
    logged = [a.path for a in tracking.list_artifacts(mlflow_runs[0].info.run_id, "torchserve")]
    assert logged == ["torchserve/catsdogs_dep-2.mar"]


def test_smoke_test_cli_against_the_running_server(run_dir):
    settings = torchserve_local.load_running(run_dir)
    cmd = [
        sys.executable, "-m", "steps.smoke_test",
        "--url", settings.inference_url,
        "--key-file", str(run_dir / "key_file.json"),
        "--management-url", settings.management_url,
        "--metrics-url", settings.metrics_url,
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "smoke test passed" in out.stdout + out.stderr


def _serving(run_dir: Path, petimages_dir: Path) -> str:
    """The default version, deploying one first when none serves: slow tests also run alone."""
    version = _client(run_dir).default_version(MODEL_NAME)
    if version is None:
        version = deploy_latest(fitted_tiny_bundle(petimages_dir, "dep-0"), run_dir=run_dir)["version"]
    return version


def _deploy_cli(run_dir: Path, bundle: Path, *flags: str) -> subprocess.CompletedProcess:
    """``make deploy BUNDLE=...`` as a user runs it, against this module's server."""
    env = {**os.environ, "CATSDOGS_RUNS_DIR": str(run_dir.parent)}
    cmd = [sys.executable, "-m", "pipelines.deployment", "--bundle", str(bundle), *flags]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_deploy_command_ends_with_a_curl_that_works_when_pasted(run_dir, petimages_dir, tmp_path):
    bundle = tmp_path / "model.pt"
    torch.save(fitted_tiny_bundle(petimages_dir, "dep-cli"), bundle)
    out = _deploy_cli(run_dir, bundle, "--no-zenml")
    assert out.returncode == 0, out.stderr[-3000:]
    curl = out.stdout.strip().splitlines()[-1]
    assert curl.startswith("curl ") and "\x1b" not in curl
    pasted = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=60)
    assert json.loads(pasted.stdout)["model_version"] == "dep-cli", pasted.stdout + pasted.stderr


@pytest.mark.slow  # a ZenML pipeline run in a fresh interpreter: about a minute on 2 cores
def test_failed_deploy_command_names_the_reason(run_dir, petimages_dir, tmp_path):
    previous = _serving(run_dir, petimages_dir)
    bundle = tmp_path / "bad.pt"
    torch.save(fitted_tiny_bundle(petimages_dir, "dep-cli-bad", swap_labels=True), bundle)
    out = _deploy_cli(run_dir, bundle)
    assert out.returncode == 1
    # ZenML sends every log record to stdout, coloured.
    last = re.sub(r"\x1b\[[0-9;]*m", "", (out.stderr + out.stdout).strip().splitlines()[-1])
    assert last.startswith("deployment failed: smoke_test_candidate: catsdogs dep-cli-bad was not promoted")
    assert "known cat photo" in last and last.endswith(f"{previous} keeps serving")
    assert _client(run_dir).default_version(MODEL_NAME) == previous


def test_restart_serves_only_the_promoted_version(run_dir):
    """Deterministic start: no snapshot, only default_model.json's archive is loaded."""
    promoted = json.loads((run_dir / "default_model.json").read_text())["version"]
    settings = torchserve_local.load_running(run_dir)
    assert len(_client(run_dir).versions(MODEL_NAME)) >= 1
    assert torchserve_local.stop(settings)
    restarted = torchserve_local.start(settings)
    client = TorchServeClient.for_local(restarted)
    assert client.versions(MODEL_NAME) == [promoted]
    client.wait_for_workers(MODEL_NAME, promoted)
    assert client.default_version(MODEL_NAME) == promoted
