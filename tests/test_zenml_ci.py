"""steps/zenml_ci.py against a real ZenML store: the run check's verdict and the stack sync.

Each module gets a throwaway store of its own (ZENML_CONFIG_PATH in a temporary
folder, used by subprocesses only), so the runs named ``training_pipeline`` here
never become "the latest training run" of the rest of the test session.

The runs come from tests/tiny_training_pipeline.py, which behaves like ``zenml
pipeline run`` on the Kubernetes orchestrator: a failed quality gate is recorded
in the run and the command still exits 0. That exit status is exactly what the
release must not trust, and what the run check replaces.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.tiny_training_pipeline import GATE_MESSAGE

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::FutureWarning")]
REPO_ROOT = Path(__file__).resolve().parents[1]
STACK_FILE = REPO_ROOT / "zenml_stack.yaml"


def run_python(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A ZenML store of this module's own, holding the MLflow secret the stack file refers to."""
    from steps.gcp_settings import MLFLOW_SECRET

    root = tmp_path_factory.mktemp("zenml-ci-store")
    env = {**os.environ, "ZENML_CONFIG_PATH": str(root / "config"), "ZENML_ANALYTICS_OPT_IN": "false"}
    env.pop("ZENML_STORE_URL", None)
    env.pop("ZENML_STORE_API_KEY", None)
    created = run_python(
        env, "-c",
        "import sys; from zenml.client import Client; "
        "Client().create_secret(sys.argv[1], values={'username': 'ci', 'password': 'not-a-password'})",
        MLFLOW_SECRET,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr[-3000:]
    return env


@pytest.fixture(scope="module")
def runs(store: dict[str, str]) -> dict[str, str]:
    """One training run whose quality gate failed, then one that passed: {name: id}."""
    ids = {}
    for name, flags in (("gate-failed", ["--fail"]), ("gate-passed", [])):
        result = run_python(store, "-m", "tests.tiny_training_pipeline", "--run-name", name, *flags)
        assert result.returncode == 0, result.stderr[-3000:]
        ids[name] = result.stdout.strip().splitlines()[-1].removeprefix("run_id=")
    return ids


def check_run(store: dict[str, str], name: str, *args: str) -> subprocess.CompletedProcess:
    return run_python(store, "-m", "steps.zenml_ci", "check-run", "--run-name", name, *args)


# --- check-run ---------------------------------------------------------------------------------


def test_a_completed_run_passes_and_hands_on_its_id(
    store: dict[str, str], runs: dict[str, str], tmp_path: Path
) -> None:
    outputs = tmp_path / "outputs"
    result = check_run(store, "gate-passed", "--outputs", str(outputs))
    assert result.returncode == 0, result.stderr
    assert outputs.read_text().splitlines() == [f"run_id={runs['gate-passed']}", "run_name=gate-passed"]


def test_a_failed_quality_gate_fails_naming_the_step_and_reason(
    store: dict[str, str], runs: dict[str, str], tmp_path: Path
) -> None:
    """Although the failed run was the older one and a newer run completed: this run decides."""
    outputs = tmp_path / "outputs"
    result = check_run(store, "gate-failed", "--outputs", str(outputs))
    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("zenml check-run:")]
    assert f"run gate-failed ({runs['gate-failed']}) is failed" in line
    assert f"step evaluate failed: {GATE_MESSAGE}" in line
    assert not outputs.exists()


def test_a_run_that_never_started_fails(store: dict[str, str], runs: dict[str, str]) -> None:
    result = check_run(store, "never-started")
    assert result.returncode == 1
    assert "no pipeline run 'never-started' on the ZenML server" in result.stderr


def test_a_run_of_another_pipeline_fails(store: dict[str, str], runs: dict[str, str]) -> None:
    result = check_run(store, "gate-passed", "--pipeline", "deployment_pipeline")
    assert result.returncode == 1
    assert "is a run of 'training_pipeline', not of 'deployment_pipeline'" in result.stderr


def test_the_deployment_refuses_a_named_run_that_failed(store: dict[str, str], runs: dict[str, str]) -> None:
    """pipelines.deployment.trained_bundle: the named run, only when it completed."""
    code = (
        "import sys\nfrom pipelines.deployment import trained_bundle\nprint(trained_bundle(sys.argv[1]).id)\n"
    )
    script = Path(store["ZENML_CONFIG_PATH"]).parent / "trained_bundle.py"
    script.write_text(code)
    env = {**store, "PYTHONPATH": str(REPO_ROOT)}
    passed = run_python(env, str(script), runs["gate-passed"])
    assert passed.returncode == 0, passed.stderr[-3000:]
    failed = run_python(env, str(script), "gate-failed")
    assert failed.returncode != 0
    assert "is failed: step evaluate failed" in failed.stderr


# --- sync-stack --------------------------------------------------------------------------------


def sync(store: dict[str, str], stack_file: Path) -> subprocess.CompletedProcess:
    return run_python(store, "-m", "steps.zenml_ci", "sync-stack", "--stack-file", str(stack_file))


def server_stack(store: dict[str, str], name: str) -> dict[str, dict[str, object]]:
    """{component type: {name, flavor, configuration}} of the server's stack ``name``."""
    code = (
        "import json, sys\n"
        "from zenml.client import Client\n"
        "stack = Client().get_stack(sys.argv[1], allow_name_prefix_match=False)\n"
        "print(json.dumps({\n"
        "    k.value: {'name': c.name, 'flavor': c.flavor_name, 'configuration': c.configuration}\n"
        "    for k, comps in stack.components.items() for c in comps\n"
        "}))\n"
    )
    result = run_python(store, "-c", code, name)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def file_stack(data: dict) -> dict[str, dict[str, object]]:
    return {
        kind: {"name": e["name"], "flavor": e["flavor"], "configuration": e["configuration"]}
        for kind, entries in data["components"].items()
        for e in entries
    }


def test_sync_creates_then_follows_every_edit_of_the_stack_file(
    store: dict[str, str], tmp_path: Path
) -> None:
    """The file is the truth: edits reach the server, without prompts, and a second sync is a no-op."""
    data = yaml.safe_load(STACK_FILE.read_text())
    name = data["stack_name"]
    first = sync(store, STACK_FILE)
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"created stack {name}" in first.stderr
    assert server_stack(store, name) == file_stack(data)

    again = sync(store, STACK_FILE)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "created" not in again.stderr and "updated" not in again.stderr

    # Edit the file: another namespace, a key dropped, a component type removed.
    orchestrator = data["components"]["orchestrator"][0]["configuration"]
    orchestrator["kubernetes_namespace"] = "catsdogs-edited"
    del orchestrator["synchronous"]
    del data["components"]["image_builder"]
    edited = tmp_path / "zenml_stack.yaml"
    edited.write_text(yaml.safe_dump(data))
    result = sync(store, edited)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "updated orchestrator catsdogs-gke (kubernetes_namespace, synchronous)" in result.stderr
    assert server_stack(store, name) == file_stack(data)


def test_sync_refuses_a_flavor_change_with_the_fix(store: dict[str, str], tmp_path: Path) -> None:
    data = yaml.safe_load(STACK_FILE.read_text())
    assert sync(store, STACK_FILE).returncode == 0
    data["components"]["orchestrator"][0]["flavor"] = "local"
    data["components"]["orchestrator"][0]["configuration"] = {}
    changed = tmp_path / "zenml_stack.yaml"
    changed.write_text(yaml.safe_dump(data))
    result = sync(store, changed)
    assert result.returncode == 1
    assert "has flavor 'kubernetes', the stack file says 'local'" in result.stderr
    assert "zenml orchestrator delete catsdogs-gke" in result.stderr
