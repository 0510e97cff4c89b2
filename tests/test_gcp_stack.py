"""The production stack: zenml_stack.yaml imports and validates, and configs/gcp.env is its one source.

``zenml stack import`` (the real CLI, with the gcp, kubernetes and mlflow
integrations installed) loads the file into this test session's throwaway ZenML
store (tests/conftest.py points ZENML_CONFIG_PATH at a temporary folder). Each
component's flavor and configuration is then read back through ZenML, and the
whole stack goes through ZenML's own stack validation, given a kubeconfig that
holds the context ``gcloud container clusters get-credentials`` would write
(it points at no server: validation only needs the context to exist).

Two prerequisites of a real import show up here too: the ZenML secret that the
MLflow tracker's credentials refer to must exist before the import (ZenML
resolves it while validating the component), and ZenML warns that remote
components registered in a local store cannot run (production registers the
stack on the ZenML server, see docs/gcp.md).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from steps.gcp_settings import (
    MLFLOW_SECRET,
    PIPELINE_KSA,
    PIPELINE_UID,
    RUN_CONFIG_FILE,
    STACK_FILE,
    STACK_NAME,
    GcpSettings,
    load_gcp_settings,
    rendered_files,
)

# google-api-core warns about Python 3.11's end of life on import; nothing to act on here.
pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::FutureWarning")]
REPO_ROOT = Path(__file__).resolve().parents[1]
GENERATED = (
    "zenml_stack.yaml", "configs/gcp.yaml", "k8s/overlays/gcp/settings.yaml", "k8s/zenml/values-gcp.yaml",
)  # fmt: skip
KUBERNETES_VERSION = "1.33.0"  # as tests/test_k8s_manifests.py
# Volume types the "restricted" Pod Security Standard allows.
RESTRICTED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected",
    "secret",
}  # fmt: skip


@pytest.fixture(scope="module")
def settings() -> GcpSettings:
    return load_gcp_settings(use_environ=False)


def zenml_cli() -> str:
    """The `zenml` command of the interpreter running the tests (the venv's, in CI setup-python's)."""
    beside = Path(sys.executable).with_name("zenml")
    found = str(beside) if beside.is_file() else shutil.which("zenml")
    assert found, "the zenml command is not installed: pip install -r requirements.txt"
    return found


def kubeconfig_with_context(path: Path, context: str) -> Path:
    """A kubeconfig as `gcloud container clusters get-credentials` leaves it, minus a reachable server."""
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": context, "cluster": {"server": "https://127.0.0.1:9"}}],
                "contexts": [{"name": context, "context": {"cluster": context, "user": context}}],
                "users": [{"name": context, "user": {"token": "not-a-real-token"}}],
                "current-context": context,
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def imported_stack() -> Iterator[Any]:
    """zenml_stack.yaml imported with the real CLI; removed again afterwards."""
    from zenml.client import Client
    from zenml.enums import StackComponentType

    client = Client()
    secret = client.create_secret(MLFLOW_SECRET, values={"username": "ci", "password": "not-a-password"})
    result = subprocess.run(
        [zenml_cli(), "stack", "import", STACK_NAME, "-f", str(STACK_FILE)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    try:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        yield client.get_stack(STACK_NAME)
    finally:
        try:
            stack = client.get_stack(STACK_NAME)
        except KeyError:
            stack = None
        if stack is not None:
            components = [c for comps in stack.components.values() for c in comps]
            client.delete_stack(stack.id)
            for component in components:
                client.delete_stack_component(component.id, StackComponentType(component.type))
        client.delete_secret(secret.id)


def component(stack: Any, kind: str) -> Any:
    from zenml.enums import StackComponentType

    (model,) = stack.components[StackComponentType(kind)]
    return model


def test_stack_file_names_each_component_once(imported_stack: Any) -> None:
    data = yaml.safe_load(STACK_FILE.read_text())
    assert data["stack_name"] == STACK_NAME
    kinds = {k.value for k in imported_stack.components}
    assert kinds == set(data["components"]) == {
        "artifact_store", "orchestrator", "container_registry", "image_builder", "experiment_tracker",
    }  # fmt: skip


def test_artifact_store_is_gcs_in_the_bucket(imported_stack: Any, settings: GcpSettings) -> None:
    store = component(imported_stack, "artifact_store")
    assert store.flavor_name == "gcp"
    assert store.configuration["path"] == f"gs://{settings.GCS_BUCKET}/zenml-artifacts"


def test_experiment_tracker_is_the_in_cluster_mlflow(imported_stack: Any, settings: GcpSettings) -> None:
    """The URI names the MLflow Service of k8s/base/mlflow.yaml, in the namespace the overlay uses."""
    from zenml.stack import StackComponent

    tracker = component(imported_stack, "experiment_tracker")
    assert tracker.flavor_name == "mlflow"
    uri = tracker.configuration["tracking_uri"]
    match = re.fullmatch(
        r"http://(?P<svc>[a-z0-9-]+)\.(?P<ns>[a-z0-9-]+)\.svc\.cluster\.local:(?P<port>\d+)", uri
    )
    assert match, uri
    services = [
        d for d in yaml.safe_load_all((REPO_ROOT / "k8s" / "base" / "mlflow.yaml").read_text())
        if d and d["kind"] == "Service" and d["metadata"]["name"] == match["svc"]
    ]  # fmt: skip
    assert services, f"no Service {match['svc']} in k8s/base/mlflow.yaml"
    assert int(match["port"]) in {p["port"] for p in services[0]["spec"]["ports"]}
    kustomization = yaml.safe_load((REPO_ROOT / "k8s" / "base" / "kustomization.yaml").read_text())
    assert match["ns"] == kustomization["namespace"] == settings.K8S_NAMESPACE
    # Credentials are secret references, resolved from the ZenML secret at run time.
    assert tracker.configuration["tracking_password"] == f"{{{{{MLFLOW_SECRET}.password}}}}"
    assert StackComponent.from_model(tracker).config.tracking_username == "ci"


def test_orchestrator_is_kubernetes_on_the_gke_cluster(imported_stack: Any, settings: GcpSettings) -> None:
    orchestrator = component(imported_stack, "orchestrator")
    assert orchestrator.flavor_name == "kubernetes"
    config = orchestrator.configuration
    assert config["kubernetes_context"] == (
        f"gke_{settings.GCP_PROJECT}_{settings.GCP_REGION}_{settings.GKE_CLUSTER}"
    )
    assert config["kubernetes_namespace"] == settings.K8S_NAMESPACE
    accounts = yaml.safe_load_all((REPO_ROOT / "k8s" / "base" / "serviceaccounts.yaml").read_text())
    assert config["service_account_name"] == PIPELINE_KSA
    assert PIPELINE_KSA in {d["metadata"]["name"] for d in accounts if d and d["kind"] == "ServiceAccount"}


def test_container_registry_is_artifact_registry(imported_stack: Any, settings: GcpSettings) -> None:
    registry = component(imported_stack, "container_registry")
    assert registry.flavor_name == "gcp"
    assert registry.configuration["uri"] == (
        f"{settings.GCP_REGION}-docker.pkg.dev/{settings.GCP_PROJECT}/{settings.AR_REPOSITORY}"
    )


def test_image_builder_is_cloud_build_in_the_project(imported_stack: Any, settings: GcpSettings) -> None:
    builder = component(imported_stack, "image_builder")
    assert builder.flavor_name == "gcp"
    assert builder.configuration["project"] == settings.GCP_PROJECT
    assert builder.configuration["location"] == settings.GCP_REGION


def test_stack_passes_zenml_validation(
    imported_stack: Any, settings: GcpSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ZenML's own validators: remote artifact store, registry and builder, kube context, secrets."""
    from zenml.stack import Stack

    monkeypatch.setenv(
        "KUBECONFIG", str(kubeconfig_with_context(tmp_path / "kubeconfig", settings.kube_context))
    )
    Stack.from_model(imported_stack).validate()


def test_derived_files_match_the_settings_file() -> None:
    """What `python -m steps.gcp_settings render` would write is what is committed."""
    for path, text in rendered_files(load_gcp_settings(use_environ=False)).items():
        assert path.read_text() == text, f"{path} is out of date: run python -m steps.gcp_settings render"


def test_render_check_command_agrees() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "steps.gcp_settings", "check"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_another_project_changes_every_derived_name(tmp_path: Path, settings: GcpSettings) -> None:
    """Nothing project-specific is baked into the renderer: another env file, no trace of ours."""
    env = tmp_path / "gcp.env"
    env.write_text(
        "GCP_PROJECT=other-proj-123\nGCP_REGION=us-central1\nGCS_BUCKET=other-bucket\n"
        "GKE_CLUSTER=other-cluster\nAR_REPOSITORY=other-repo\nK8S_NAMESPACE=catsdogs\n"
        "MODEL_NAME=catsdogs\nMODEL_VERSION=7\nSERVING_IMAGE_TAG=9.9.9\n"
    )
    texts = "\n".join(rendered_files(load_gcp_settings(env, use_environ=False)).values())
    for ours in (settings.GCP_PROJECT, settings.GCS_BUCKET, settings.GCP_REGION):
        assert ours not in texts
    assert "gs://other-bucket/zenml-artifacts" in texts
    assert "gke_other-proj-123_us-central1_other-cluster" in texts
    assert "us-central1-docker.pkg.dev/other-proj-123/other-repo" in texts


def test_project_id_is_written_in_one_place_only(settings: GcpSettings) -> None:
    """configs/gcp.env names the project; only the files rendered from it repeat it (docs included)."""
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert "configs/gcp.env" in tracked
    offenders = [
        path for path in tracked
        if path not in {*GENERATED, "configs/gcp.env"}
        and (REPO_ROOT / path).is_file()
        and settings.GCP_PROJECT in (REPO_ROOT / path).read_text(errors="ignore")
    ]  # fmt: skip
    assert not offenders, f"project id {settings.GCP_PROJECT!r} hard-coded in {offenders}"


# ------------------------------------------------------------------ pipeline pods


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What the "restricted" Pod Security Standard (k8s/base/namespace.yaml enforces it) refuses in a pod."""
    spec = pod["spec"]
    pod_context = spec.get("securityContext") or {}
    problems = [f"spec.{flag}" for flag in ("hostNetwork", "hostPID", "hostIPC") if spec.get(flag)]
    if pod_context.get("runAsUser") == 0:
        problems.append("pod runAsUser 0")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']}: {sorted(kinds)}")
    for c in spec["containers"] + (spec.get("initContainers") or []):
        ctx = c.get("securityContext") or {}
        where = f"container {c['name']}"
        capabilities = ctx.get("capabilities") or {}
        if ctx.get("privileged"):
            problems.append(f"{where}: privileged")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{where}: capabilities do not drop ALL")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{where}: adds capabilities {capabilities['add']}")
        if ctx.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        if ctx.get("runAsUser") == 0:
            problems.append(f"{where}: runAsUser 0")
        seccomp = (ctx.get("seccompProfile") or pod_context.get("seccompProfile") or {}).get("type")
        if seccomp not in {"RuntimeDefault", "Localhost"}:
            problems.append(f"{where}: seccompProfile {seccomp}")
    return problems


def _without_nulls(node: Any) -> Any:
    """Drop null fields, as the API server does: ZenML merges its own container context
    with ours through to_dict(), which adds every unset field as a snake_case null."""
    if isinstance(node, dict):
        return {k: _without_nulls(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [_without_nulls(item) for item in node]
    return node


def zenml_pod(pod_settings: Any, privileged: bool = False) -> dict[str, Any]:
    """The pod ZenML's Kubernetes orchestrator builds with these settings, as sent to the API server."""
    from kubernetes.client import ApiClient
    from zenml.integrations.kubernetes.manifest_utils import build_pod_manifest

    manifest = build_pod_manifest(
        pod_name="pipeline-pod", image_name="trainer", command=["python", "-m", "zenml"], args=[],
        privileged=privileged, pod_settings=pod_settings, service_account_name=PIPELINE_KSA,
    )  # fmt: skip
    return _without_nulls(ApiClient().sanitize_for_serialization(manifest))


def test_pipeline_pods_meet_the_restricted_pod_security_standard() -> None:
    """Step and orchestrator pods, read from configs/gcp.yaml by ZenML's own settings models."""
    import kubernetes_validate
    from zenml.integrations.kubernetes.flavors.kubernetes_orchestrator_flavor import (
        KubernetesOrchestratorSettings,
    )

    run_config = yaml.safe_load(RUN_CONFIG_FILE.read_text())
    settings = KubernetesOrchestratorSettings.model_validate(run_config["settings"]["orchestrator"])
    pods = {"step": settings.pod_settings, "orchestrator": settings.orchestrator_pod_settings}
    for role, pod_settings in pods.items():
        assert pod_settings is not None, f"configs/gcp.yaml sets no {role} pod settings"
        pod = zenml_pod(pod_settings, privileged=settings.privileged)
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
        assert restricted_violations(pod) == [], role
        (main,) = pod["spec"]["containers"]
        assert main["securityContext"]["runAsUser"] == PIPELINE_UID
        assert pod["spec"]["securityContext"]["runAsUser"] == PIPELINE_UID
    assert settings.pod_settings.resources["limits"], "step pods need CPU and memory limits"


def test_restricted_check_refuses_zenml_default_pods() -> None:
    """Without our settings ZenML's pods break the standard: the check above can fail."""
    from zenml.integrations.kubernetes.pod_settings import KubernetesPodSettings

    problems = " | ".join(restricted_violations(zenml_pod(KubernetesPodSettings())))
    for expected in ("allowPrivilegeEscalation", "drop ALL", "runAsNonRoot", "seccompProfile"):
        assert expected in problems


def test_pipeline_image_runs_as_the_pods_user() -> None:
    """ZenML's pipeline image (built FROM docker/trainer.Dockerfile) ends as PIPELINE_UID.

    ZenML's generated Dockerfile runs `RUN chmod -R a+rw .` on root-owned files, so the
    trainer image must leave the user at root and let settings.docker.user switch last.
    """
    from zenml.config import DockerSettings
    from zenml.utils.pipeline_docker_image_builder import PipelineDockerImageBuilder

    trainer = (REPO_ROOT / "docker" / "trainer.Dockerfile").read_text()
    assert re.search(rf"^RUN .*useradd --uid {PIPELINE_UID} ", trainer, re.MULTILINE | re.DOTALL)
    assert [u for u in re.findall(r"^USER\s+(\S+)", trainer, re.MULTILINE) if u not in {"root", "0"}] == []

    docker = DockerSettings.model_validate(yaml.safe_load(RUN_CONFIG_FILE.read_text())["settings"]["docker"])
    lines = PipelineDockerImageBuilder._generate_zenml_pipeline_dockerfile(
        parent_image="trainer", docker_settings=docker
    ).splitlines()
    users = [i for i, line in enumerate(lines) if line.startswith("USER ")]
    assert users and lines[users[-1]] == f"USER {PIPELINE_UID}", lines
    assert users[-1] > lines.index("RUN chmod -R a+rw ."), "ZenML's root-only steps must run before USER"
