"""The GKE manifests render with kustomize and pass offline schema validation.

No cluster here, so correctness is checked statically: every rendered object is
validated against the Kubernetes OpenAPI schemas of the target version
(kubernetes-validate, strict: unknown fields fail), PodMonitoring against a
schema written from the Managed Prometheus CRD, and the properties the design
promises (probes, limits, non-root, ports, scaling) are asserted on the output.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from steps.gcp_settings import ZENML_SERVER_KSA, ZENML_SERVER_VALUES_FILE, load_gcp_settings

REPO_ROOT = Path(__file__).resolve().parents[1]
K8S = REPO_ROOT / "k8s"
OVERLAYS = ["base", "overlays/gcp", "overlays/kind"]
# GKE's regular channel; native sidecars need >= 1.29.
KUBERNETES_VERSION = "1.33.0"
NAMESPACE = "catsdogs"
# Kinds that live outside any namespace; every other object must name NAMESPACE.
CLUSTER_SCOPED_KINDS = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}

# From the monitoring.googleapis.com/v1 PodMonitoring CRD (the fields used here).
PODMONITORING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.googleapis.com/v1"},
        "kind": {"const": "PodMonitoring"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "properties": {"matchLabels": {"type": "object"}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": ["string", "integer"]},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": r"^\d+[smh]$"},
                            "timeout": {"type": "string", "pattern": r"^\d+[smh]$"},
                        },
                    },
                },
                "targetLabels": {
                    "type": "object",
                    "properties": {
                        "metadata": {
                            "type": "array",
                            "items": {
                                "enum": [
                                    "pod",
                                    "container",
                                    "node",
                                    "top_level_controller_name",
                                    "top_level_controller_type",
                                ]
                            },
                        }
                    },
                },
            },
        },
    },
}


# The ZenML Helm chart's values layout (its values.yaml): pod-level settings at the top,
# server settings under `zenml:`. A key elsewhere is silently ignored by Helm.
ZENML_CHART_TOP_LEVEL = {
    "imagePullSecrets", "nameOverride", "fullnameOverride", "zenml", "serviceAccount", "podAnnotations",
    "podSecurityContext", "securityContext", "resources", "autoscaling", "nodeSelector", "tolerations",
    "affinity",
}  # fmt: skip
ZENML_CHART_SERVER = {
    "replicaCount", "image", "serverURL", "dashboardURL", "debug", "analyticsOptIn", "deploymentType",
    "auth", "rootUrlPath", "defaultProject", "defaultUsername", "defaultPassword",
    "enableImplicitAuthMethods", "database", "secretsStore", "backupSecretsStore", "secure_headers",
    "environment", "secretEnvironment", "service", "ingress", "threadPoolSize", "proxy",
}  # fmt: skip


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not installed; it renders the kustomize overlays (apt: kubectl)")
    done = subprocess.run(
        [kubectl, "kustomize", str(K8S / overlay)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def find(docs: list[dict], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert matches, f"no {kind}/{name} rendered"
    return matches[0]


def container(deployment: dict, name: str, init: bool = False) -> dict[str, Any]:
    key = "initContainers" if init else "containers"
    return next(c for c in deployment["spec"]["template"]["spec"][key] if c["name"] == name)


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def test_every_object_passes_schema_validation(rendered: tuple[str, list[dict]]) -> None:
    overlay, docs = rendered
    assert docs
    for doc in docs:
        where = f"{overlay}: {doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"].startswith("monitoring.googleapis.com/"):
            jsonschema.validate(doc, PODMONITORING_SCHEMA)
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {exc.message} at {list(exc.path)}")


def test_every_namespaced_object_names_the_namespace(rendered: tuple[str, list[dict]]) -> None:
    """An object without a namespace lands in the kubectl context's namespace (usually
    `default`): a PodMonitoring there selects no TorchServe pod and nothing is scraped."""
    overlay, docs = rendered
    for doc in docs:
        where = f"{overlay}: {doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in CLUSTER_SCOPED_KINDS:
            assert "namespace" not in doc["metadata"], where
        else:
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{where} has no namespace {NAMESPACE}"
    assert find(docs, "Namespace", NAMESPACE)


def test_torchserve_deployment_is_production_ready(rendered: tuple[str, list[dict]]) -> None:
    _, docs = rendered
    deployment = find(docs, "Deployment", "torchserve")
    pod = deployment["spec"]["template"]["spec"]
    server = container(deployment, "torchserve")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"]["path"] == "/ping", probe
    limits, requests = server["resources"]["limits"], server["resources"]["requests"]
    assert {"cpu", "memory"} <= set(limits) and {"cpu", "memory"} <= set(requests)
    assert pod["securityContext"]["runAsNonRoot"] is True
    for c in pod["containers"] + pod.get("initContainers", []):
        assert c["securityContext"]["readOnlyRootFilesystem"] is True, c["name"]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False, c["name"]
    assert pod["terminationGracePeriodSeconds"] >= 30
    assert server["lifecycle"]["preStop"]
    assert container(deployment, "fetch-model", init=True)["command"][-1].endswith("fetch_model.py")


def test_torchserve_threads_fit_the_cpu_limit(rendered: tuple[str, list[dict]]) -> None:
    """Workers x intra-op threads and the frontend threads must not exceed the CPU limit."""
    _, docs = rendered
    server = container(find(docs, "Deployment", "torchserve"), "torchserve")
    cpu = server["resources"]["limits"]["cpu"]
    cpu_limit = float(cpu[:-1]) / 1000 if str(cpu).endswith("m") else float(cpu)
    env = {e["name"]: e.get("value") for e in server["env"]}
    model_config = yaml.safe_load((REPO_ROOT / "serve_config" / "model-config.yaml").read_text())
    workers = int(env.get("TS_WORKERS") or model_config["minWorkers"])
    assert workers == model_config["minWorkers"] == model_config["maxWorkers"]
    assert workers <= cpu_limit, "more TorchServe workers than CPUs"
    assert int(env["TS_NETTY_THREADS"]) <= max(1, cpu_limit)
    # The handler takes cpu_limit // workers intra-op threads (handlers/cpu_limit.py).
    assert cpu_limit // workers >= 1


def test_only_inference_is_public(rendered: tuple[str, list[dict]]) -> None:
    overlay, docs = rendered
    public = find(docs, "Service", "torchserve")
    assert [p["targetPort"] for p in public["spec"]["ports"]] == ["inference"]
    internal = find(docs, "Service", "torchserve-internal")
    assert internal["spec"]["type"] == "ClusterIP"
    assert "inference" not in {p["targetPort"] for p in internal["spec"]["ports"]}
    if overlay == "overlays/gcp":
        assert public["spec"]["type"] == "LoadBalancer"
    policy = find(docs, "NetworkPolicy", "torchserve")
    metrics_rule = next(r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == "metrics")
    namespaces = [
        f["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for f in metrics_rule["from"]
        if "namespaceSelector" in f
    ]
    # Managed collection (Autopilot and Standard) scrapes from gke-gmp-system;
    # self-deployed collection from gmp-system.
    assert sorted(namespaces) == ["gke-gmp-system", "gmp-system"]
    assert metrics_rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    find(docs, "NetworkPolicy", "default-deny-ingress")


def test_scaling_and_disruption_budget(rendered: tuple[str, list[dict]]) -> None:
    _, docs = rendered
    hpa = find(docs, "HorizontalPodAutoscaler", "torchserve")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "torchserve",
    }
    pdb = find(docs, "PodDisruptionBudget", "torchserve")
    # A node drain must be able to evict at least one pod at the minimum scale.
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"] or hpa["spec"]["minReplicas"] == 1


def test_gcp_overlay_uses_the_settings_file() -> None:
    settings = load_gcp_settings(use_environ=False)
    docs = render("overlays/gcp")
    serving = find(docs, "Deployment", "torchserve")
    assert container(serving, "torchserve")["image"] == settings.serving_image
    assert container(serving, "fetch-model", init=True)["image"] == settings.serving_image
    assert container(find(docs, "Deployment", "mlflow"), "mlflow")["image"] == settings.mlflow_image
    for name in ("torchserve", "mlflow", "zenml-pipelines"):
        annotation = find(docs, "ServiceAccount", name)["metadata"]["annotations"]
        email = annotation["iam.gke.io/gcp-service-account"]
        assert email.endswith(f"@{settings.GCP_PROJECT}.iam.gserviceaccount.com")
    config = find(docs, "ConfigMap", "catsdogs-settings")["data"]
    assert config["MODEL_STORE_URI"] == settings.model_store_uri
    monitor = find(docs, "PodMonitoring", "torchserve")
    # A PodMonitoring only selects pods of its own namespace.
    assert monitor["metadata"]["namespace"] == serving["metadata"]["namespace"] == settings.K8S_NAMESPACE
    ports = {p["name"] for p in container(serving, "torchserve")["ports"]}
    assert monitor["spec"]["endpoints"][0]["port"] in ports
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        serving["spec"]["template"]["metadata"]["labels"].items()
    )


def test_zenml_server_helm_values() -> None:
    values = yaml.safe_load((K8S / "zenml" / "values.yaml").read_text())
    stack = yaml.safe_load((REPO_ROOT / "zenml_stack.yaml").read_text())
    assert values["zenml"]["image"]["tag"] == stack["zenml_version"]
    assert values["zenml"]["database"]["url"] == "", "the database URL is passed at install time"
    assert set(values) <= ZENML_CHART_TOP_LEVEL, set(values) - ZENML_CHART_TOP_LEVEL
    misplaced = set(values["zenml"]) - ZENML_CHART_SERVER
    assert not misplaced, f"not server settings of the chart (top-level keys?): {misplaced}"
    assert values["resources"]["limits"] and values["resources"]["requests"]
    assert values["zenml"]["debug"] is False and values["zenml"]["analyticsOptIn"] is False


def test_zenml_server_has_workload_identity_from_the_settings_file() -> None:
    """values-gcp.yaml (generated from configs/gcp.env) annotates the server's service account."""
    values = yaml.safe_load((K8S / "zenml" / "values.yaml").read_text())
    generated = yaml.safe_load(ZENML_SERVER_VALUES_FILE.read_text())
    assert ZENML_SERVER_VALUES_FILE.read_text().startswith("# GENERATED from configs/gcp.env")
    assert set(generated) <= ZENML_CHART_TOP_LEVEL
    account = {**values["serviceAccount"], **generated["serviceAccount"]}  # helm merges -f files in order
    assert account["create"] is True and account["name"] == ZENML_SERVER_KSA
    email = load_gcp_settings(use_environ=False).google_service_account("zenml")
    assert account["annotations"] == {"iam.gke.io/gcp-service-account": email}
