"""The in-cluster MLflow server accepts the names clients reach it by, and starts as configured.

MLflow 3 refuses (HTTP 403) any request whose Host header is not localhost or a
private IP, unless the server lists it in ``--allowed-hosts``. In the cluster the
ZenML stack calls ``http://mlflow.<namespace>.svc.cluster.local:5000``, so that
Host header must be allowed, or every tracked run fails. Here a real ``mlflow
server`` is started with the allowed hosts of the rendered gcp overlay and asked
with each Host header a client in the cluster may send; MLflow's own default list
shows that without the setting the same names are refused.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from steps.gcp_settings import load_gcp_settings
from tests.gcs_fixtures import free_port
from tests.service_wait import wait_until_answering

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[1]
MLFLOW = Path(sys.executable).with_name("mlflow")
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"


def mlflow_container() -> dict[str, Any]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is not installed; it renders the kustomize overlays"
    rendered = subprocess.run(
        [kubectl, "kustomize", str(REPO_ROOT / "k8s" / "overlays" / "gcp")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    (deployment,) = [
        d for d in yaml.safe_load_all(rendered)
        if d and d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow"
    ]  # fmt: skip
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "mlflow")


def allowed_hosts() -> str:
    env = {e["name"]: e for e in mlflow_container()["env"]}
    return env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"]


def in_cluster_hosts() -> list[str]:
    """Every name of the mlflow Service inside the cluster, bare and with the port."""
    uri = load_gcp_settings(use_environ=False).mlflow_tracking_uri
    match = re.fullmatch(r"http://(?P<svc>[^.]+)\.(?P<ns>[^.]+)\.svc\.cluster\.local:(?P<port>\d+)", uri)
    assert match, uri
    svc, ns, port = match["svc"], match["ns"], match["port"]
    names = [svc, f"{svc}.{ns}", f"{svc}.{ns}.svc", f"{svc}.{ns}.svc.cluster.local"]
    return names + [f"{name}:{port}" for name in names]


def test_every_in_cluster_name_is_allowed_and_no_other() -> None:
    from mlflow.server.security_utils import get_default_allowed_hosts, is_allowed_host_header

    allowed = [h.strip() for h in allowed_hosts().split(",")]
    assert "*" not in allowed, "allowing every Host header reopens DNS rebinding"
    for host in in_cluster_hosts():
        assert is_allowed_host_header(allowed, host), host
        # Why the setting exists: MLflow's default list refuses these names.
        assert not is_allowed_host_header(get_default_allowed_hosts(), host), host
    assert is_allowed_host_header(allowed, "localhost:5000"), "kubectl port-forward must keep working"
    assert not is_allowed_host_header(allowed, "evil.example.com")


def test_basic_auth_app_has_what_it_needs_to_start() -> None:
    """`--app-name=basic-auth` exits at start without Flask-WTF or a static CSRF secret key."""
    container = mlflow_container()
    assert "--app-name=basic-auth" in container["args"]
    env = {e["name"]: e for e in container["env"]}
    key = env["MLFLOW_FLASK_SERVER_SECRET_KEY"]["valueFrom"]["secretKeyRef"]
    assert key["name"] == "mlflow-auth" and key["key"]
    dockerfile = (REPO_ROOT / "docker" / "mlflow.Dockerfile").read_text()
    assert re.search(r"mlflow\[auth\]==", dockerfile), "the image needs mlflow[auth] for basic-auth"
    docs = (REPO_ROOT / "docs" / "gcp.md").read_text()
    assert f"--from-literal={key['key']}=" in docs, "docs/gcp.md must create the secret key"


def _start(port: int, workdir: Path, hosts: str | None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    if hosts is not None:
        env["MLFLOW_SERVER_ALLOWED_HOSTS"] = hosts
    workdir.mkdir()
    return subprocess.Popen(
        [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
         "--artifacts-destination", str(workdir / "artifacts")],
        cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=(workdir / "server.log").open("w"),
        start_new_session=True,  # its own process group: `mlflow server` runs uvicorn as a child
    )  # fmt: skip


def _stop(process: subprocess.Popen) -> None:
    """Stop the server and its uvicorn children (a throwaway store: no graceful shutdown needed)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def server_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A real MLflow server with the manifest's allowed hosts (the default app: the host
    check is the same middleware; basic-auth needs the image's extra packages)."""
    workdir = tmp_path_factory.mktemp("mlflow") / "server"
    port = free_port()
    process = _start(port, workdir, allowed_hosts())
    try:
        wait_until_answering(
            process,
            lambda: requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200,
            "mlflow server",
            timeout=90,
            log=workdir / "server.log",
        )
        yield port
    finally:
        _stop(process)


def _status(port: int, host: str) -> int:
    return requests.get(f"http://127.0.0.1:{port}{SEARCH}", headers={"Host": host}, timeout=10).status_code


def test_real_server_answers_the_in_cluster_names(server_port: int) -> None:
    for host in in_cluster_hosts():
        assert _status(server_port, host) == 200, host
    assert _status(server_port, "localhost:5000") == 200


def test_real_server_still_refuses_other_hosts(server_port: int) -> None:
    assert _status(server_port, "evil.example.com") == 403
    assert _status(server_port, "mlflow.other-namespace.svc.cluster.local:5000") == 403
