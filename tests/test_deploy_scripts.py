"""The deploy / smoke / rollback scripts, run against a fake kubectl.

There is no cluster here: tests/fake_kubectl.py is put first on PATH as
`kubectl`. It records every call and simulates rollout success or failure, so
these tests check the scripts' own logic: what they apply, when they roll
back, to which revision, and what they exit with. The manifests a script
applies are still rendered by the real `kubectl kustomize` when it is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import gcsfs
import pytest
import yaml

from tests.gcs_fixtures import GcsEmulator, gcs_emulator, gcs_env, upload_photos  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = REPO_ROOT / "scripts"
FAKE_KUBECTL = Path(__file__).with_name("fake_kubectl.py")
REAL_KUBECTL = shutil.which("kubectl")
FAKE_API_KEY = "fake-api-key-0123456789abcdef"  # what tests/fake_kubectl.py's Secret holds by default
OWN_SCRIPTS = [
    "deploy.sh",
    "rollback.sh",
    "smoke.sh",
    "release.sh",
    "kind_e2e.sh",
    "ci_env.sh",
    "run_training_pipeline.sh",
    "validate_manifests.sh",
    "fetch_test_photos.sh",
]

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: torchserve
  namespace: catsdogs
spec:
  selector:
    matchLabels: {app: torchserve}
  template:
    metadata:
      labels: {app: torchserve}
    spec:
      containers:
      - name: torchserve
        image: catsdogs-serving:0.1.0
"""

FAKE_SMOKE = """\
import json, os, sys
tokens = {k: os.environ.get(k) for k in ("TS_INFERENCE_TOKEN", "TS_MANAGEMENT_TOKEN")}
with open(os.environ["FAKE_SMOKE_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:] + [tokens]) + "\\n")
sys.exit(int(os.environ.get("FAKE_SMOKE_EXIT", "0")))
"""


class Cluster:
    """The fake cluster's state, the calls kubectl received and the smoke test's calls."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir()
        self.state_file = root / "state.json"
        self.log_file = root / "kubectl.log"
        self.smoke_log = root / "smoke.log"
        self.outputs = root / "github_output"
        kubectl = self.bin / "kubectl"
        kubectl.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE_KUBECTL} "$@"\n')
        kubectl.chmod(kubectl.stat().st_mode | stat.S_IEXEC)
        smoke = root / "fake_smoke.py"
        smoke.write_text(FAKE_SMOKE)
        self.overlay = root / "k8s" / "overlays" / "test"
        self.overlay.mkdir(parents=True)
        (self.overlay / "deployment.yaml").write_text(DEPLOYMENT)
        (self.overlay / "kustomization.yaml").write_text("resources:\n- deployment.yaml\n")
        self.env = {
            **os.environ,
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "FAKE_KUBECTL_STATE": str(self.state_file),
            "FAKE_KUBECTL_LOG": str(self.log_file),
            "FAKE_SMOKE_LOG": str(self.smoke_log),
            "SMOKE_CMD": f"{sys.executable} {smoke}",
            "GITHUB_OUTPUT": str(self.outputs),
        }
        self.env.pop("GITHUB_ACTIONS", None)
        if REAL_KUBECTL:
            self.env["REAL_KUBECTL"] = REAL_KUBECTL

    def set(self, **state: object) -> None:
        self.state_file.write_text(json.dumps(state))

    @property
    def state(self) -> dict:
        return json.loads(self.state_file.read_text())

    def calls(self) -> list[list[str]]:
        if not self.log_file.exists():
            return []
        return [json.loads(line) for line in self.log_file.read_text().splitlines()]

    def verbs(self) -> list[str]:
        """Each call as 'verb subverb' without the namespace flag, e.g. 'rollout undo'."""
        out = []
        for call in self.calls():
            args = list(call)
            if "--namespace" in args:
                i = args.index("--namespace")
                del args[i : i + 2]
            out.append(" ".join(args[:2]))
        return out

    def smoke_calls(self) -> list[list[str]]:
        if not self.smoke_log.exists():
            return []
        return [json.loads(line) for line in self.smoke_log.read_text().splitlines()]

    def run(self, script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(SCRIPTS / script), *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO_ROOT,
        )


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    return Cluster(tmp_path)


# --- deploy.sh ---------------------------------------------------------------------------


def test_deploy_records_previous_revision_applies_and_waits(cluster: Cluster) -> None:
    cluster.set(exists=True, revision=7)
    result = cluster.run("deploy.sh", "--overlay", str(cluster.overlay))
    assert result.returncode == 0, result.stderr
    assert "previous_revision=7" in cluster.outputs.read_text().splitlines()
    verbs = cluster.verbs()
    assert verbs.index("apply -k") < verbs.index("rollout status")
    assert cluster.state["revision"] == 8
    assert "rollout undo" not in verbs


def test_deploy_record_only_touches_nothing(cluster: Cluster) -> None:
    cluster.set(exists=True, revision=5)
    result = cluster.run("deploy.sh", "--overlay", str(cluster.overlay), "--record-only")
    assert result.returncode == 0, result.stderr
    assert cluster.outputs.read_text().splitlines() == ["previous_revision=5", "recorded=true"]
    assert cluster.verbs() == ["get deployment"]


def test_deploy_first_time_records_empty_previous_revision(cluster: Cluster) -> None:
    cluster.set(exists=False)
    result = cluster.run("deploy.sh", "--overlay", str(cluster.overlay))
    assert result.returncode == 0, result.stderr
    assert "previous_revision=" in cluster.outputs.read_text().splitlines()


def test_deploy_overrides_image_and_stamps_release(cluster: Cluster) -> None:
    cluster.set(exists=True, revision=1)
    ref = "europe-west1-docker.pkg.dev/p/r/catsdogs-serving@sha256:" + "a" * 64
    result = cluster.run(
        "deploy.sh",
        "--overlay",
        str(cluster.overlay),
        "--image",
        f"catsdogs-serving={ref}",
        "--release",
        "abc123",
    )
    assert result.returncode == 0, result.stderr
    kustomization = yaml.safe_load(cluster.state["applied_kustomization"])
    assert kustomization["images"] == [
        {
            "name": "catsdogs-serving",
            "newName": "europe-west1-docker.pkg.dev/p/r/catsdogs-serving",
            "digest": "sha256:" + "a" * 64,
        }
    ]
    if REAL_KUBECTL:
        (deployment,) = yaml.safe_load_all(cluster.state["applied_manifests"])
        template = deployment["spec"]["template"]
        assert template["spec"]["containers"][0]["image"] == ref
        assert template["metadata"]["annotations"]["catsdogs.io/release"] == "abc123"


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


@pytest.mark.skipif(not REAL_KUBECTL, reason="needs kubectl kustomize")
def test_deploy_puts_the_model_version_in_the_pod_template(cluster: Cluster) -> None:
    cluster.set(exists=True, revision=1)
    result = cluster.run(
        "deploy.sh", "--overlay", str(cluster.overlay), "--model-version", "7", "--containers", "torchserve,"
    )
    assert result.returncode == 0, result.stderr
    (deployment,) = yaml.safe_load_all(cluster.state["applied_manifests"])
    spec = deployment["spec"]["template"]["spec"]
    assert env_of(spec["containers"][0])["MODEL_VERSION"] == "7"
    assert "initContainers" not in spec


@pytest.mark.skipif(not REAL_KUBECTL, reason="needs kubectl kustomize")
def test_deploy_on_the_real_gcp_overlay(cluster: Cluster) -> None:
    """What the pipeline's deploy step applies: image by digest, model version, release."""
    overlay = REPO_ROOT / "k8s" / "overlays" / "gcp"
    if not (overlay / "kustomization.yaml").is_file():
        pytest.skip("k8s/overlays/gcp not there")
    settings = subprocess.run(
        ["bash", str(SCRIPTS / "ci_env.sh"), "--sha", "b" * 40],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
    ).stdout
    repo = dict(line.split("=", 1) for line in settings.splitlines())["SERVING_IMAGE_REPO"]
    ref = f"{repo}@sha256:{'c' * 64}"
    cluster.set(exists=True, revision=3)
    result = cluster.run(
        "deploy.sh", "--overlay", str(overlay), "--image", f"{repo}={ref}",
        "--model-version", "42", "--release", "git-bbbbbbbbbbbb",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (deployment,) = [
        d
        for d in yaml.safe_load_all(cluster.state["applied_manifests"])
        if d and d["kind"] == "Deployment" and d["metadata"]["name"] == "torchserve"
    ]
    template = deployment["spec"]["template"]
    assert template["metadata"]["annotations"]["catsdogs.io/release"] == "git-bbbbbbbbbbbb"
    pods = template["spec"]["containers"] + template["spec"]["initContainers"]
    assert {c["name"] for c in pods} >= {"torchserve", "fetch-model"}
    for container in pods:
        assert container["image"] == ref
        assert env_of(container)["MODEL_VERSION"] == "42"


def test_deploy_image_with_tag(cluster: Cluster) -> None:
    cluster.set(exists=True, revision=1)
    result = cluster.run(
        "deploy.sh",
        "--overlay",
        str(cluster.overlay),
        "--image",
        "catsdogs-serving=localhost:5000/catsdogs-serving:e2e",
    )
    assert result.returncode == 0, result.stderr
    kustomization = yaml.safe_load(cluster.state["applied_kustomization"])
    assert kustomization["images"][0]["newName"] == "localhost:5000/catsdogs-serving"
    assert kustomization["images"][0]["newTag"] == "e2e"


def test_deploy_rollout_timeout_exits_4_without_rolling_back(cluster: Cluster) -> None:
    cluster.set(exists=True, revision=3, rollout_fails=True)
    result = cluster.run("deploy.sh", "--overlay", str(cluster.overlay))
    assert result.returncode == 4
    assert "did not roll out" in result.stderr
    assert "rollout undo" not in cluster.verbs()


def test_deploy_apply_failure_exits_3(cluster: Cluster) -> None:
    cluster.set(exists=True, revision=3, apply_fails=True)
    result = cluster.run("deploy.sh", "--overlay", str(cluster.overlay))
    assert result.returncode == 3
    assert "rollout status" not in cluster.verbs()


def test_deploy_refuses_an_image_override_that_matches_nothing(cluster: Cluster) -> None:
    cluster.set(exists=True, revision=1)
    result = cluster.run(
        "deploy.sh", "--overlay", str(cluster.overlay), "--image", "not-in-overlay=registry/x:1"
    )
    assert result.returncode == 2
    assert "no image named 'not-in-overlay'" in result.stderr
    assert "apply -k" not in cluster.verbs()


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--overlay", "/nonexistent"],
        ["--overlay", "OVERLAY", "--image", "no-equals-sign"],
        ["--overlay", "OVERLAY", "--release", "bad release; rm -rf /"],
        ["--overlay", "OVERLAY", "--model-version", "1\nkind: Secret"],
        ["--bogus"],
    ],
)
def test_deploy_bad_usage_exits_2_before_touching_the_cluster(cluster: Cluster, args) -> None:
    cluster.set(exists=True, revision=1)
    args = [str(cluster.overlay) if a == "OVERLAY" else a for a in args]
    result = cluster.run("deploy.sh", *args)
    assert result.returncode == 2, result.stderr
    assert "apply -k" not in cluster.verbs()


# --- rollback.sh -------------------------------------------------------------------------


def test_rollback_undoes_to_recorded_revision(cluster: Cluster) -> None:
    cluster.set(exists=True, revision=8)
    result = cluster.run("rollback.sh", "--to-revision", "7")
    assert result.returncode == 0, result.stderr
    assert cluster.state["undone_to"] == 7
    assert cluster.verbs()[-1] == "rollout status"


def test_rollback_is_a_no_op_when_release_was_never_applied(cluster: Cluster) -> None:
    cluster.set(exists=True, revision=7)
    result = cluster.run("rollback.sh", "--to-revision", "7")
    assert result.returncode == 0, result.stderr
    assert "rollout undo" not in cluster.verbs()
    assert "nothing to undo" in result.stdout


def test_rollback_without_previous_revision_fails_visibly(cluster: Cluster) -> None:
    cluster.set(exists=True, revision=1)
    result = cluster.run("rollback.sh", "--to-revision", "")
    assert result.returncode == 1
    assert "nothing to roll back to" in result.stderr
    assert "rollout undo" not in cluster.verbs()


def test_rollback_that_does_not_roll_out_fails(cluster: Cluster) -> None:
    cluster.set(exists=True, revision=8, rollout_fails="after_undo")
    result = cluster.run("rollback.sh", "--to-revision", "7")
    assert result.returncode == 1
    assert cluster.state["undone_to"] == 7


@pytest.mark.parametrize("args", [[], ["--to-revision", "seven"], ["--what"]])
def test_rollback_bad_usage(cluster: Cluster, args) -> None:
    cluster.set(exists=True, revision=8)
    assert cluster.run("rollback.sh", *args).returncode == 2
    assert "rollout undo" not in cluster.verbs()


# --- smoke.sh ----------------------------------------------------------------------------


def test_smoke_predicts_through_the_service_and_checks_a_ready_pod(cluster: Cluster) -> None:
    cluster.set(exists=True, revision=2)
    result = cluster.run("smoke.sh", "--", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    service, pod = [c for c in cluster.calls() if "port-forward" in c]
    assert service[-2:] == ["svc/torchserve", ":80"]  # predictions as clients send them
    assert pod[-3:] == ["pod/torchserve-new", ":8081", ":8082"]  # the terminating pod is skipped
    (args,) = cluster.smoke_calls()
    assert args[args.index("--url") + 1] == "http://127.0.0.1:28080"
    assert args[args.index("--management-url") + 1] == "http://127.0.0.1:18080"
    assert args[args.index("--metrics-url") + 1] == "http://127.0.0.1:18081"
    assert "--expect-version" not in args
    # The shared key comes from the Secret, travels in the environment, never on a
    # command line, never printed; management needs no token in the pod.
    assert [c[2:] for c in cluster.calls() if "secret" in c] == [
        ["get", "secret", "torchserve-api-key", "-o", "json"]
    ]
    assert args[-1] == {"TS_INFERENCE_TOKEN": FAKE_API_KEY, "TS_MANAGEMENT_TOKEN": None}
    assert args[-3:-1] == ["--timeout", "30"]
    assert not any(FAKE_API_KEY in str(a) for a in args[:-1])
    assert FAKE_API_KEY not in result.stdout + result.stderr
    assert not any(FAKE_API_KEY in " ".join(c) for c in cluster.calls())
    assert "exec" not in cluster.verbs()


def test_smoke_uses_the_first_key_of_a_rotation(cluster: Cluster) -> None:
    cluster.set(exists=True, revision=2, api_key="new-key-0123456789abcdef\nold-key-0123456789abcdef\n")
    assert cluster.run("smoke.sh").returncode == 0
    (args,) = cluster.smoke_calls()
    assert args[-1]["TS_INFERENCE_TOKEN"] == "new-key-0123456789abcdef"


def test_smoke_masks_the_key_in_github_actions(cluster: Cluster) -> None:
    cluster.set(exists=True, revision=2)
    result = cluster.run("smoke.sh", GITHUB_ACTIONS="true")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"::add-mask::{FAKE_API_KEY}" in lines
    assert sum(FAKE_API_KEY in line for line in lines) == 1


@pytest.mark.parametrize(
    ("args", "env"), [(["--expect-version", "v7"], {}), ([], {"SMOKE_EXPECT_VERSION": "v7"})]
)
def test_smoke_expects_the_deployed_version(cluster: Cluster, args: list[str], env: dict[str, str]) -> None:
    cluster.set(exists=True, revision=2)
    result = cluster.run("smoke.sh", *args, **env)
    assert result.returncode == 0, result.stderr
    (smoke_args,) = cluster.smoke_calls()
    assert smoke_args[smoke_args.index("--expect-version") + 1] == "v7"


def test_smoke_without_the_secret_exits_5_before_testing(cluster: Cluster) -> None:
    cluster.set(exists=True, revision=2, api_key=None)
    result = cluster.run("smoke.sh")
    assert result.returncode == 5
    assert "Secret catsdogs/torchserve-api-key" in result.stderr
    assert cluster.smoke_calls() == []
    assert "port-forward" not in " ".join(cluster.verbs())


def test_smoke_without_token_or_pod_checks(cluster: Cluster) -> None:
    cluster.set(exists=True, revision=2)
    result = cluster.run("smoke.sh", "--no-token", "--pod-ports", "")
    assert result.returncode == 0, result.stderr
    (args,) = cluster.smoke_calls()
    assert "--management-url" not in args and "--metrics-url" not in args
    assert args[-1] == {"TS_INFERENCE_TOKEN": None, "TS_MANAGEMENT_TOKEN": None}
    assert "get secret" not in cluster.verbs()
    assert [c[-2:] for c in cluster.calls() if "port-forward" in c] == [["svc/torchserve", ":80"]]


def test_smoke_failure_propagates_exit_status(cluster: Cluster) -> None:
    cluster.set(exists=True, revision=2)
    result = cluster.run("smoke.sh", FAKE_SMOKE_EXIT="3")
    assert result.returncode == 3
    assert "FAILED the smoke test" in result.stderr


def test_smoke_without_ready_pod_exits_5(cluster: Cluster) -> None:
    cluster.set(exists=True, revision=2, pod_ready=False)
    result = cluster.run("smoke.sh")
    assert result.returncode == 5
    assert cluster.smoke_calls() == []


# --- release.sh: deploy, smoke, automatic rollback ---------------------------------------


def test_release_success_does_not_roll_back(cluster: Cluster) -> None:
    cluster.set(exists=True, revision=4)
    result = cluster.run("release.sh", "--overlay", str(cluster.overlay), "--release", "r1")
    assert result.returncode == 0, result.stderr
    assert len(cluster.smoke_calls()) == 1
    assert "rollout undo" not in cluster.verbs()
    assert cluster.state["revision"] == 5


def test_release_rolls_back_when_rollout_fails(cluster: Cluster) -> None:
    cluster.set(exists=True, revision=4, rollout_fails="until_undo")
    result = cluster.run("release.sh", "--overlay", str(cluster.overlay))
    assert result.returncode == 4
    assert cluster.state["undone_to"] == 4
    assert cluster.smoke_calls() == []
    assert "rolling back to revision '4'" in result.stderr


def test_release_rolls_back_when_smoke_test_fails(cluster: Cluster) -> None:
    cluster.set(exists=True, revision=4)
    result = cluster.run("release.sh", "--overlay", str(cluster.overlay), FAKE_SMOKE_EXIT="1")
    assert result.returncode == 1
    assert cluster.state["undone_to"] == 4
    verbs = cluster.verbs()
    assert verbs.index("port-forward pod/torchserve-new") < verbs.index("rollout undo")


def test_release_first_deployment_failure_has_nothing_to_roll_back(cluster: Cluster) -> None:
    cluster.set(exists=False)
    result = cluster.run("release.sh", "--overlay", str(cluster.overlay), FAKE_SMOKE_EXIT="1")
    assert result.returncode == 1
    assert "nothing to roll back to" in result.stderr
    assert "rollout undo" not in cluster.verbs()


# --- ci_env.sh ---------------------------------------------------------------------------

GCP_ENV = """\
# comment
GCP_PROJECT=my-proj
GCP_REGION=us-central1
GCS_BUCKET=my-bucket
GKE_CLUSTER=prod
AR_REPOSITORY=images
K8S_NAMESPACE=catsdogs
MODEL_NAME=catsdogs
MODEL_VERSION=3
"""


def run_ci_env(tmp_path: Path, text: str, *args: str) -> subprocess.CompletedProcess:
    env_file = tmp_path / "gcp.env"
    env_file.write_text(text)
    return subprocess.run(
        ["bash", str(SCRIPTS / "ci_env.sh"), "--env-file", str(env_file), *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO_ROOT,
    )


def test_ci_env_derives_registry_image_and_context(tmp_path: Path) -> None:
    result = run_ci_env(tmp_path, GCP_ENV, "--sha", "0123456789abcdef0123456789abcdef01234567")
    assert result.returncode == 0, result.stderr
    values = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert values["GCP_PROJECT"] == "my-proj"
    assert values["AR_REGISTRY"] == "us-central1-docker.pkg.dev"
    assert values["SERVING_IMAGE_REPO"] == "us-central1-docker.pkg.dev/my-proj/images/catsdogs-serving"
    assert values["IMAGE_TAG"] == "git-0123456789ab"
    assert values["KUBE_CONTEXT"] == "gke_my-proj_us-central1_prod"


def test_ci_env_reads_the_real_settings_file() -> None:
    result = subprocess.run(
        ["bash", str(SCRIPTS / "ci_env.sh"), "--sha", "a" * 40],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "IMAGE_TAG=git-aaaaaaaaaaaa" in result.stdout.splitlines()


@pytest.mark.parametrize(
    "text",
    [
        GCP_ENV.replace("GKE_CLUSTER=prod\n", ""),  # missing key
        GCP_ENV + "EXTRA=$(curl evil)\n",  # shell syntax
        GCP_ENV.replace("prod", "prod x"),  # a space
        GCP_ENV + "not a line\n",
    ],
)
def test_ci_env_rejects_bad_settings(tmp_path: Path, text: str) -> None:
    result = run_ci_env(tmp_path, text, "--sha", "a" * 40)
    assert result.returncode == 2
    assert result.stdout == ""


def test_ci_env_rejects_a_bad_sha(tmp_path: Path) -> None:
    assert run_ci_env(tmp_path, GCP_ENV, "--sha", "main; rm -rf /").returncode == 2


# --- run_training_pipeline.sh --------------------------------------------------------------

# `zenml pipeline run` as it behaves with the Kubernetes orchestrator: the run (a real, tiny
# one named training_pipeline, in the test's ZenML store) records a failed quality gate, and
# the command still exits 0 (FAKE_PIPELINE_EXIT). Any other zenml call is a mistake here.
FAKE_ZENML = """\
import json, os, sys
import yaml
args = sys.argv[1:]
with open(os.environ["FAKE_ZENML_LOG"], "a") as log:
    log.write(" ".join(args) + "\\n")
if args[:2] != ["pipeline", "run"]:
    sys.exit("fake zenml: only `zenml pipeline run` is expected, got: " + " ".join(args))
with open(args[args.index("-c") + 1]) as f:
    config = yaml.safe_load(f)
with open(os.environ["FAKE_ZENML_CONFIGS"], "a") as out:
    out.write(json.dumps(config) + "\\n")
if os.environ.get("FAKE_PIPELINE_STARTS", "1") == "1":
    sys.path.insert(0, os.getcwd())
    from tests.tiny_training_pipeline import run
    run(config["run_name"], fail=os.environ.get("FAKE_PIPELINE_FAIL") == "1")
sys.exit(int(os.environ.get("FAKE_PIPELINE_EXIT", "0")))
"""


@pytest.fixture(scope="module")
def zenml_store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A real, throwaway ZenML store holding the MLflow secret the stack refers to (for the preflight)."""
    from steps.gcp_settings import MLFLOW_SECRET

    root = tmp_path_factory.mktemp("zenml-store")
    env = {
        "ZENML_CONFIG_PATH": str(root / "config"),
        "ZENML_STORE_URL": f"sqlite:///{root / 'zenml.db'}",
        "ZENML_ANALYTICS_OPT_IN": "false",
    }
    cli = Path(sys.executable).with_name("zenml")
    subprocess.run(
        [str(cli) if cli.is_file() else "zenml", "secret", "create", MLFLOW_SECRET,
         "--username=ci", "--password=not-a-password"],
        env={**os.environ, **env}, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return env


@pytest.fixture
def zenml(
    tmp_path: Path,
    zenml_store: dict[str, str],
    gcs_env: GcsEmulator,  # noqa: F811  (the fixture imported above)
    petimages_dir: Path,
) -> dict[str, str]:
    """A fake `zenml` CLI first on PATH; the rest runs for real in a throwaway ZenML store: the
    preflight (the production bucket name with photos in the GCS emulator, the MLflow secret),
    the stack sync and the run check. Each test is another GitHub run (GITHUB_RUN_ID)."""
    from steps.gcp_settings import RAW_DATA_PREFIX, load_gcp_settings

    bucket = load_gcp_settings(use_environ=False).GCS_BUCKET
    fs = gcsfs.GCSFileSystem(token="anon")
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    upload_photos(petimages_dir, bucket, RAW_DATA_PREFIX, per_class=2)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "fake_zenml.py").write_text(FAKE_ZENML)
    fake = bin_dir / "zenml"
    fake.write_text(f'#!/bin/sh\nexec {sys.executable} {tmp_path / "fake_zenml.py"} "$@"\n')
    fake.chmod(0o755)
    return {
        **os.environ,
        **zenml_store,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHON": sys.executable,
        "FAKE_ZENML_LOG": str(tmp_path / "zenml.log"),
        "FAKE_ZENML_CONFIGS": str(tmp_path / "zenml_configs.jsonl"),
        "GITHUB_OUTPUT": str(tmp_path / "outputs"),
        "GITHUB_RUN_ID": uuid.uuid4().hex[:12],
        "GITHUB_RUN_ATTEMPT": "3",
        "ZENML_STORE_API_KEY": "zenml-key-never-printed",
    }


def run_pipeline_script(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPTS / "run_training_pipeline.sh"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )


def zenml_calls(env: dict[str, str]) -> list[str]:
    log = Path(env["FAKE_ZENML_LOG"])
    return log.read_text().splitlines() if log.exists() else []


def outputs_of(env: dict[str, str]) -> list[str]:
    outputs = Path(env["GITHUB_OUTPUT"])
    return outputs.read_text().splitlines() if outputs.exists() else []


def test_pipeline_syncs_the_stack_and_runs_this_run_on_it(zenml: dict[str, str]) -> None:
    """The stack goes to the server without prompts, the run gets a name of its own, is run on
    that stack explicitly, and its id is handed on for publishing."""
    stack = yaml.safe_load((REPO_ROOT / "zenml_stack.yaml").read_text())["stack_name"]
    run_name = f"{stack}-gh{zenml['GITHUB_RUN_ID']}-3"
    result = run_pipeline_script(zenml)
    assert result.returncode == 0, result.stderr[-3000:]
    (call,) = zenml_calls(zenml)
    config_path = call.split(" -c ")[1].split(" ")[0]
    assert call == f"pipeline run pipelines.training.training_pipeline -c {config_path} -s {stack}"
    (config,) = [json.loads(line) for line in Path(zenml["FAKE_ZENML_CONFIGS"]).read_text().splitlines()]
    expected = yaml.safe_load((REPO_ROOT / "configs" / "gcp.yaml").read_text())
    assert config == {**expected, "run_name": run_name}
    assert not Path(config_path).exists(), "the temporary run config is removed"
    outputs = outputs_of(zenml)
    assert f"run_name={run_name}" in outputs and "pipeline_passed=true" in outputs
    (run_id,) = [line.removeprefix("run_id=") for line in outputs if line.startswith("run_id=")]
    assert len(run_id) == 36
    synced = [line for line in result.stderr.splitlines() if line.startswith("zenml stack:")]
    assert any(f"stack {stack}" in line for line in synced), result.stderr  # created, updated or unchanged
    assert "zenml-key-never-printed" not in result.stdout + result.stderr
    # Another run of the workflow: the stack is on the server already; still no prompt.
    again = run_pipeline_script({**zenml, "GITHUB_RUN_ID": zenml["GITHUB_RUN_ID"] + "2"})
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"zenml stack: stack {stack} unchanged" in again.stderr


def test_failed_quality_gate_stops_the_release_although_zenml_exits_0(zenml: dict[str, str]) -> None:
    """With the Kubernetes orchestrator `zenml pipeline run` exits 0 after a failed step."""
    result = run_pipeline_script({**zenml, "FAKE_PIPELINE_FAIL": "1", "FAKE_PIPELINE_EXIT": "0"})
    assert result.returncode == 6
    assert "step evaluate failed: quality gate failed: test accuracy 0.5000" in result.stderr
    assert "nothing will be built or deployed" in result.stderr
    assert not any(line.startswith(("pipeline_passed", "run_id")) for line in outputs_of(zenml))


def test_a_run_that_never_started_stops_the_release(zenml: dict[str, str]) -> None:
    result = run_pipeline_script({**zenml, "FAKE_PIPELINE_STARTS": "0", "FAKE_PIPELINE_EXIT": "1"})
    assert result.returncode == 6
    assert "the run never started" in result.stderr
    assert outputs_of(zenml) == []


def test_a_bad_run_name_is_refused_before_anything_runs(zenml: dict[str, str]) -> None:
    result = run_pipeline_script(zenml, "--run-name", "main; rm -rf /")
    assert result.returncode == 2
    assert "--run-name must match" in result.stderr
    assert zenml_calls(zenml) == []


def test_failed_preflight_stops_before_any_zenml_call(zenml: dict[str, str], tmp_path: Path) -> None:
    """A bucket that does not exist: one line saying so, and nothing imported, set or run."""
    result = run_pipeline_script({**zenml, "GCS_BUCKET": "catsdogs-no-such-bucket"})
    assert result.returncode == 2
    said = [line for line in result.stderr.splitlines() if "catsdogs-no-such-bucket" in line]
    assert len(said) == 1
    assert said[0].startswith("gcp preflight: bucket gs://catsdogs-no-such-bucket does not exist")
    assert zenml_calls(zenml) == []
    outputs = tmp_path / "outputs"
    assert not outputs.exists() or "pipeline_passed" not in outputs.read_text()


@pytest.mark.parametrize("missing", ["ZENML_STORE_URL", "ZENML_STORE_API_KEY"])
def test_pipeline_needs_the_zenml_server(zenml: dict[str, str], missing: str) -> None:
    env = dict(zenml)
    del env[missing]
    result = run_pipeline_script(env)
    assert result.returncode == 2
    assert missing in result.stderr
    assert zenml_calls(env) == []


# --- kind_e2e.sh -----------------------------------------------------------------------------


# Stands in for `python scripts/build_e2e_mar.py --out DIR --version V ...`; anything else runs.
FAKE_PYTHON = """\
#!/bin/sh
case "$1" in
  *build_e2e_mar.py)
    echo "build_e2e_mar $*" >> "$TOOLS_LOG"
    while [ $# -gt 0 ]; do [ "$1" = --out ] && out="$2"; shift; done
    mkdir -p "$out" && printf 'PK built here' > "$out/catsdogs.mar" && echo "$out/catsdogs.mar" ;;
  *) exec "$REAL_PYTHON" "$@" ;;
esac
"""


@pytest.mark.parametrize("with_mar", [True, False])
def test_kind_e2e_places_the_model_creates_the_cluster_and_releases(
    cluster: Cluster, tmp_path: Path, with_mar: bool
) -> None:
    """The whole kind flow with fake docker and kind, in a scratch checkout."""
    checkout = tmp_path / "checkout"
    (checkout / "docker").mkdir(parents=True)
    (checkout / "docker" / "serving.Dockerfile").write_text("FROM scratch\n")
    shutil.copytree(cluster.overlay, checkout / "k8s" / "overlays" / "kind")
    mar = tmp_path / "some.mar"
    mar.write_bytes(b"PK fake archive")
    tools_log = tmp_path / "tools.log"
    for tool, body in {
        "docker": 'echo "docker $*" >> "$TOOLS_LOG"',
        # No cluster yet; `create` shows the config it was given.
        "kind": 'echo "kind $*" >> "$TOOLS_LOG"; '
        'if [ "$2" = cluster ]; then while [ $# -gt 0 ]; do '
        '[ "$1" = --config ] && cat "$2" >> "$TOOLS_LOG"; shift; done; fi; true',
        "python": FAKE_PYTHON.removeprefix("#!/bin/sh\n"),
    }.items():
        path = cluster.bin / tool
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    # `kubectl config use-context` is not in the fake kubectl: wrap it.
    (cluster.bin / "kubectl").rename(cluster.bin / "kubectl-fake")
    wrapper = cluster.bin / "kubectl"
    wrapper.write_text(
        '#!/bin/sh\n[ "$1" = config ] && { echo "kubectl $*" >> "$TOOLS_LOG"; exit 0; }\n'
        f'exec {cluster.bin / "kubectl-fake"} "$@"\n'
    )
    wrapper.chmod(0o755)
    cluster.set(exists=True, revision=2, api_key=None)  # a new cluster: no Secret yet
    result = subprocess.run(
        ["bash", str(SCRIPTS / "kind_e2e.sh"), *(["--mar", str(mar)] if with_mar else [])],
        env={
            **cluster.env,
            "TOOLS_LOG": str(tools_log),
            "PYTHON": str(cluster.bin / "python"),
            "REAL_PYTHON": sys.executable,
        },
        capture_output=True,
        text=True,
        timeout=120,
        cwd=checkout,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    placed = checkout / "runs" / "kind-models" / "catsdogs" / "1" / "catsdogs.mar"
    assert placed.read_bytes() == (b"PK fake archive" if with_mar else b"PK built here")
    log = tools_log.read_text()
    assert "kind create cluster --name catsdogs-e2e --config" in log
    assert f"hostPath: {checkout / 'runs' / 'kind-models'}" in log
    assert "containerPath: /model-source" in log
    assert "kubectl config use-context kind-catsdogs-e2e" in log
    assert "docker build --file docker/serving.Dockerfile --tag catsdogs-serving:e2e-local ." in log
    assert "kind load docker-image catsdogs-serving:e2e-local --name catsdogs-e2e" in log
    assert log.index("kind create cluster") < log.index("kind load")
    kustomization = yaml.safe_load(cluster.state["applied_kustomization"])
    assert kustomization["images"] == [
        {"name": "catsdogs-serving", "newName": "catsdogs-serving", "newTag": "e2e-local"}
    ]
    # The Secret with a random key, made before the release; never on a command line.
    key = cluster.state["api_key"]
    assert len(key) == 64 and int(key, 16) >= 0
    verbs = cluster.verbs()
    assert verbs.index("create secret") < verbs.index("apply -k")
    assert not any(key in " ".join(call) for call in cluster.calls())
    assert key not in result.stdout + result.stderr
    (smoke,) = cluster.smoke_calls()
    assert smoke[-1]["TS_INFERENCE_TOKEN"] == key
    # A model built here must be the one answering: its version is expected.
    if with_mar:
        assert "--expect-version" not in smoke
    else:
        assert "--version e2e-local" in log
        assert smoke[smoke.index("--expect-version") + 1] == "e2e-local"


def test_kind_overlay_matches_the_e2e_script() -> None:
    """The names kind_e2e.sh relies on are the ones the real kind overlay renders."""
    overlay = REPO_ROOT / "k8s" / "overlays" / "kind"
    if not REAL_KUBECTL or not overlay.is_dir():
        pytest.skip("needs kubectl and k8s/overlays/kind")
    rendered = subprocess.run(
        [REAL_KUBECTL, "kustomize", str(overlay)], capture_output=True, text=True, check=True
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "torchserve"]
    assert deployment["metadata"]["namespace"] == "catsdogs"
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["image"].split(":")[0] for c in containers if c["name"] == "torchserve"] == ["catsdogs-serving"]
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {"path": "/model-source", "type": "Directory"} in [v.get("hostPath") for v in volumes]
    settings = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "catsdogs-settings"
    )
    assert settings["data"]["MODEL_STORE_URI"] == "file:///model-source"
    assert (settings["data"]["MODEL_NAME"], settings["data"]["MODEL_VERSION"]) == ("catsdogs", "1")


def test_gcp_overlay_image_is_the_one_the_pipeline_overrides() -> None:
    overlay = REPO_ROOT / "k8s" / "overlays" / "gcp"
    if not REAL_KUBECTL or not (overlay / "kustomization.yaml").is_file():
        pytest.skip("needs kubectl and k8s/overlays/gcp")
    env = dict(
        line.split("=", 1)
        for line in subprocess.run(
            ["bash", str(SCRIPTS / "ci_env.sh"), "--sha", "a" * 40],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO_ROOT,
        ).stdout.splitlines()
    )
    rendered = subprocess.run(
        [REAL_KUBECTL, "kustomize", str(overlay)], capture_output=True, text=True, check=True
    ).stdout
    (deployment,) = [
        d
        for d in yaml.safe_load_all(rendered)
        if d and d["kind"] == "Deployment" and d["metadata"]["name"] == "torchserve"
    ]
    assert deployment["metadata"]["namespace"] == env["K8S_NAMESPACE"]
    images = [c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]]
    assert all(i.rsplit(":", 1)[0] == env["SERVING_IMAGE_REPO"] for i in images), images


@pytest.mark.parametrize(
    "args", [["--model-version", "1; rm -rf /"], ["--overlay", "/nonexistent"], ["--bogus"]]
)
def test_kind_e2e_bad_usage_exits_2_before_doing_anything(cluster: Cluster, args) -> None:
    tools_log = cluster.root / "tools.log"
    for tool in ("docker", "kind"):
        path = cluster.bin / tool
        path.write_text(f'#!/bin/sh\necho "{tool} $*" >> {tools_log}\n')
        path.chmod(0o755)
    result = cluster.run("kind_e2e.sh", *args)
    assert result.returncode == 2, result.stderr
    assert not tools_log.exists()
    assert cluster.calls() == []


# --- fetch_test_photos.sh ------------------------------------------------------------------


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("unzip")), reason="needs curl, unzip")
def test_fetch_test_photos_extracts_petimages_once(tmp_path: Path) -> None:
    import zipfile

    archive = tmp_path / "kagglecatsanddogs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("PetImages/Cat/1.jpg", b"cat")
        zf.writestr("PetImages/Dog/1.jpg", b"dog")
        zf.writestr("readme[1].txt", b"not extracted")
    dest = tmp_path / "photos"
    env = {**os.environ, "PETIMAGES_URL": archive.as_uri()}
    script = str(SCRIPTS / "fetch_test_photos.sh")
    first = subprocess.run(["bash", script, str(dest)], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert (dest / "PetImages" / "Cat" / "1.jpg").read_bytes() == b"cat"
    assert not (dest / "readme[1].txt").exists()
    archive.unlink()  # a second run must not download again
    second = subprocess.run(["bash", script, str(dest)], env=env, capture_output=True, text=True)
    assert second.returncode == 0 and "already" in second.stdout


# --- hygiene -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", OWN_SCRIPTS)
def test_script_is_strict_and_executable(name: str) -> None:
    path = SCRIPTS / name
    assert path.exists(), f"scripts/{name} missing"
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert os.access(path, os.X_OK), f"scripts/{name} is not executable"
    assert "set -x" not in text, "tracing would print tokens and secrets"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck_clean() -> None:
    scripts = [str(SCRIPTS / name) for name in OWN_SCRIPTS if (SCRIPTS / name).exists()]
    result = subprocess.run(["shellcheck", "--severity=style", *scripts], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
