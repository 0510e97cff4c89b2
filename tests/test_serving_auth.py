"""The cluster's authorization and process handling: shared API key, open /ping, graceful stop.

In a pod, ``docker/serving_entrypoint.py`` starts TorchServe with its token
authorization off and the handler requires the shared API key of the Secret
``torchserve-api-key`` (``handlers/api_key.py``). Checked here:
- the key rules alone (file, header casing, constant-time match, rotation);
- the entrypoint's rendering and its signal forwarding, with a fake server;
- a real TorchServe started by the real entrypoint, as in the pod: /ping open to
  probes, 401 without or with a wrong key, 200 with it, per-item 401s in a
  batch, the error metric, and SIGTERM stopping Java gracefully.
"""

from __future__ import annotations

import contextlib
import http.server
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import psutil
import pytest
import requests

from handlers.api_key import (
    API_KEY_FILE_ENV,
    ApiKeyError,
    authorization_problem,
    bearer_token,
    configured_api_keys,
    read_api_keys,
)
from steps.torchserve_local import free_port
from tests.service_wait import wait_until_answering
from tests.torchserve_fixtures import *  # noqa: F403  (tiny_mar, cat_photo, dog_photo)
from tests.torchserve_fixtures import KNOWN_CAT, KNOWN_DOG

REPO = Path(__file__).resolve().parents[1]
ENTRYPOINT = REPO / "docker" / "serving_entrypoint.py"
KEY = "k3y-" + "0123456789abcdef" * 3
OTHER_KEY = "n3w-" + "fedcba9876543210" * 3


def load_entrypoint() -> ModuleType:
    """docker/serving_entrypoint.py as a module (docker/ is not a package)."""
    spec = importlib.util.spec_from_file_location("serving_entrypoint", ENTRYPOINT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- the key rules


def test_key_file_holds_one_key_per_line(tmp_path: Path) -> None:
    path = tmp_path / "api-key"
    path.write_text(f"\n  {KEY}  \n\n{OTHER_KEY}\n")
    assert read_api_keys(path) == (KEY, OTHER_KEY)
    assert configured_api_keys({API_KEY_FILE_ENV: str(path)}) == (KEY, OTHER_KEY)
    assert configured_api_keys({}) == ()


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "cannot be read"), ("", "holds no API key"), (" \n\n", "holds no API key"),
     ("short", "shorter than 16")],
)  # fmt: skip
def test_unusable_key_file_is_a_clear_error(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "api-key"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ApiKeyError, match=message):
        configured_api_keys({API_KEY_FILE_ENV: str(path)})


@pytest.mark.parametrize("name", ["Authorization", "authorization", "AUTHORIZATION"])
@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
def test_bearer_token_whatever_the_header_casing(name: str, scheme: str) -> None:
    assert bearer_token({name: f"{scheme} {KEY}"}) == KEY
    assert authorization_problem({name: f"{scheme} {KEY}"}, (KEY,)) is None


def test_form_fields_are_not_headers() -> None:
    # TorchServe puts each form field's content type in the same dict, as a dict value.
    assert bearer_token({"authorization": {"content-type": "text/plain"}}) is None
    assert bearer_token({"Authorization": f"Basic {KEY}"}) is None
    assert bearer_token({"Authorization": "Bearer "}) is None


def test_missing_wrong_and_rotated_keys() -> None:
    assert "no API key sent" in str(authorization_problem({}, (KEY,)))
    assert "not accepted" in str(authorization_problem({"Authorization": "Bearer nope"}, (KEY,)))
    assert "not accepted" in str(authorization_problem({"Authorization": f"Bearer {KEY}x"}, (KEY,)))
    # During a rotation the file holds both keys: either is accepted.
    for key in (KEY, OTHER_KEY):
        assert authorization_problem({"Authorization": f"Bearer {key}"}, (KEY, OTHER_KEY)) is None


# ---------------------------------------------------------------- the entrypoint alone


def test_pod_config_turns_tokens_off_only_with_a_shared_key() -> None:
    entrypoint = load_entrypoint()
    template = (REPO / "serve_config" / "config.properties").read_text()
    with_key = entrypoint.render(template, {API_KEY_FILE_ENV: "/etc/catsdogs/api-key/api-key"})
    assert "\ndisable_token_authorization=true\n" in with_key
    without = entrypoint.render(template, {})
    assert "\ndisable_token_authorization=false\n" in without
    for text in (with_key, without):
        assert "management_address=http://127.0.0.1:8081" in text
        assert "enable_model_api=false" in text


def test_entrypoint_refuses_a_missing_key_file(tmp_path: Path) -> None:
    env = {**os.environ, API_KEY_FILE_ENV: str(tmp_path / "absent"), "TS_RUN_DIR": str(tmp_path / "run")}
    done = subprocess.run([sys.executable, str(ENTRYPOINT)], env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert f"${API_KEY_FILE_ENV} names {tmp_path / 'absent'}" in done.stderr
    assert not (tmp_path / "run").exists(), "nothing may start"


# A stand-in for the `torchserve` wrapper: it ignores SIGTERM (as the real one does
# as PID 1) and waits on a child "frontend" that records the signal and exits.
FAKE_WRAPPER = """\
import signal, subprocess, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
frontend = subprocess.Popen([sys.executable, sys.argv[1], *sys.argv[2:]])
sys.exit(frontend.wait() and 0)  # like TorchServe's wrapper: 0 whatever Java returned
"""
FAKE_FRONTEND = """\
import pathlib, signal, sys, time
marker = pathlib.Path(sys.argv[1])
mode = sys.argv[2]
def stop(signum, frame):
    marker.write_text("SIGTERM")
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
marker.write_text("started")
time.sleep(0.5 if mode == "exit" else 60)
"""


def _supervise_fake(tmp_path: Path, mode: str) -> tuple[subprocess.Popen, Path]:
    (tmp_path / "wrapper.py").write_text(FAKE_WRAPPER)
    (tmp_path / "frontend.py").write_text(FAKE_FRONTEND)
    marker = tmp_path / "frontend.state"
    code = (
        "import importlib.util, logging, os, sys; sys.path.insert(0, sys.argv[1]);"
        "logging.basicConfig(level=logging.INFO);"
        "spec = importlib.util.spec_from_file_location('entrypoint', sys.argv[2]);"
        "e = importlib.util.module_from_spec(spec); spec.loader.exec_module(e);"
        "sys.exit(e.supervise(sys.argv[3:], cwd=e.Path('.'), env=dict(os.environ)))"
    )
    wrapper = [sys.executable, str(tmp_path / "wrapper.py"), str(tmp_path / "frontend.py"), str(marker), mode]
    cmd = [sys.executable, "-c", code, str(REPO), str(ENTRYPOINT), *wrapper]
    process = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the fake frontend never started"
    return process, marker


def test_sigterm_reaches_the_frontend_and_the_entrypoint_exits_0(tmp_path: Path) -> None:
    process, marker = _supervise_fake(tmp_path, "serve")
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=20)
    assert marker.read_text() == "SIGTERM", output
    assert process.returncode == 0, output
    assert "SIGTERM received: stopping TorchServe" in output


def test_a_server_that_stops_by_itself_is_a_failure(tmp_path: Path) -> None:
    process, _ = _supervise_fake(tmp_path, "exit")
    output, _ = process.communicate(timeout=20)
    assert process.returncode == 1, output
    assert "exited by itself" in output


# ---------------------------------------------------------------- a real TorchServe, as in the pod


@dataclass
class PodServer:
    url: str
    management_url: str
    metrics_url: str
    process: subprocess.Popen
    env: dict[str, str]
    log: Path


@pytest.fixture(scope="module")
def pod_server(
    tiny_mar: Path, cat_photo: bytes, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PodServer]:
    """docker/serving_entrypoint.py with the shared key configured: TorchServe as the pod runs it."""
    root = tmp_path_factory.mktemp("pod")
    models = root / "models"
    models.mkdir()
    (models / tiny_mar.name).write_bytes(tiny_mar.read_bytes())
    key_file = root / "api-key"
    key_file.write_text(KEY + "\n")
    port_names = ("INFERENCE", "MANAGEMENT", "METRICS", "GRPC_INFERENCE", "GRPC_MANAGEMENT")
    ports = {f"TS_{name}_PORT": str(free_port()) for name in port_names}
    env = {
        **os.environ,
        **ports,
        "APP_DIR": str(REPO),  # serve_config/ of the repo, as the image has it under /opt/catsdogs
        "MODEL_DIR": str(models),
        "TS_RUN_DIR": str(root / "run"),
        "TS_METRICS_HOST": "127.0.0.1",
        "TS_JAVA_HEAP_MB": "256",
        API_KEY_FILE_ENV: str(key_file),
    }
    log = root / "entrypoint.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, str(ENTRYPOINT)], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    server = PodServer(
        url=f"http://127.0.0.1:{ports['TS_INFERENCE_PORT']}",
        management_url=f"http://127.0.0.1:{ports['TS_MANAGEMENT_PORT']}",
        metrics_url=f"http://127.0.0.1:{ports['TS_METRICS_PORT']}",
        process=process,
        env=env,
        log=log,
    )
    try:
        wait_until_answering(
            server.process,
            lambda: _predict(server, cat_photo, {"Authorization": f"Bearer {KEY}"}).status_code == 200,
            "the entrypoint",
            timeout=180,
            log=server.log,
        )
        yield server
    finally:
        _kill_tree(process)


def _kill_tree(process: subprocess.Popen) -> None:
    """What a failed test may leave: the entrypoint, the wrapper, Java and its workers."""
    try:
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.Error:
        return
    for member in tree:
        with contextlib.suppress(psutil.Error):
            member.kill()
    process.wait()


def _predict(server: PodServer, photo: bytes, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(f"{server.url}/predictions/catsdogs", data=photo, timeout=30,
                         headers={"Content-Type": "image/jpeg", **(headers or {})})  # fmt: skip


def test_ping_needs_no_token_so_probes_and_healthcheck_work(pod_server: PodServer) -> None:
    response = requests.get(f"{pod_server.url}/ping", timeout=5)
    assert response.status_code == 200 and response.json()["status"] == "Healthy"
    healthcheck = subprocess.run([sys.executable, str(ENTRYPOINT), "healthcheck"], env=pod_server.env,
                                 capture_output=True, text=True, timeout=30)  # fmt: skip
    assert healthcheck.returncode == 0, healthcheck.stderr


@pytest.mark.parametrize(
    ("headers", "message"),
    [({}, "no API key sent"), ({"Authorization": "Bearer wrong-key-0123456789"}, "not accepted"),
     ({"Authorization": f"Basic {KEY}"}, "no API key sent")],
)  # fmt: skip
def test_predictions_without_the_key_get_401(
    pod_server: PodServer, cat_photo: bytes, headers, message
) -> None:
    response = _predict(pod_server, cat_photo, headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    body = response.json()
    assert body["error"] == "unauthorized" and message in body["message"]
    assert KEY not in response.text


@pytest.mark.parametrize("name", ["Authorization", "authorization"])
def test_predictions_with_the_key_are_answered(pod_server: PodServer, cat_photo, dog_photo, name) -> None:
    for photo, label in ((cat_photo, "cat"), (dog_photo, "dog")):
        response = _predict(pod_server, photo, {name: f"Bearer {KEY}"})
        assert response.status_code == 200, response.text
        assert response.json()["label"] == label


def test_unauthorized_items_in_a_batch_never_fail_their_neighbours(pod_server, cat_photo, dog_photo) -> None:
    """16 concurrent requests (batches of up to 8), every other one without a valid key."""
    cases = [(cat_photo if i % 4 < 2 else dog_photo, i % 2 == 0) for i in range(16)]

    def call(case: tuple[bytes, bool]) -> requests.Response:
        photo, authorized = case
        return _predict(pod_server, photo, {"Authorization": f"Bearer {KEY if authorized else 'x' * 20}"})

    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(call, cases))
    for (photo, authorized), response in zip(cases, responses, strict=True):
        if authorized:
            assert response.status_code == 200, response.text
            assert response.json()["label"] == ("cat" if photo is cat_photo else "dog")
        else:
            assert response.status_code == 401 and response.json()["error"] == "unauthorized"


def test_refusals_are_counted_by_error_type(pod_server: PodServer, cat_photo: bytes) -> None:
    _predict(pod_server, cat_photo)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        text = requests.get(f"{pod_server.metrics_url}/metrics", timeout=5).text
        lines = [line for line in text.splitlines() if line.startswith("catsdogs_request_errors_total")]
        if any('ErrorType="unauthorized"' in line for line in lines):
            return
        time.sleep(0.5)
    pytest.fail(f"no unauthorized error counted: {lines}")


@pytest.mark.parametrize(("version", "passes"), [("test-1", True), ("v-old", False)])
def test_cluster_smoke_test_with_the_shared_key(pod_server, petimages_dir, caplog, version, passes) -> None:
    """What scripts/smoke.sh runs after a deploy: key from the Secret, no management token."""
    from steps.smoke_test import main

    args = ["--url", pod_server.url, "--token", KEY, "--expect-version", version,
            "--management-url", pod_server.management_url, "--metrics-url", pod_server.metrics_url,
            "--cat", str(petimages_dir / KNOWN_CAT), "--dog", str(petimages_dir / KNOWN_DOG)]  # fmt: skip
    with caplog.at_level(logging.INFO, logger="steps.smoke_test"):
        assert main(args) == (0 if passes else 1)
    report = caplog.text
    for check in ("model status", "request without key refused with 4xx", "custom metrics exposed"):
        assert f"smoke ok    {check}" in report
    if not passes:
        assert "smoke FAIL  answers come from version v-old: model_version ['test-1', 'test-1']" in report
    assert KEY not in report


def test_healthcheck_sends_torchserves_token_when_tokens_are_on(tmp_path: Path) -> None:
    """Plain `docker run` without the shared key: /ping needs TorchServe's inference token."""
    seen: list[str | None] = []

    class Ping(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.send_response(200 if seen[-1] == "Bearer ts-token" else 400)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Ping)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        entrypoint = load_entrypoint()
        env = {"TS_INFERENCE_PORT": str(server.server_port)}
        assert entrypoint.healthcheck(tmp_path, env) == 1  # no key file yet: no token, refused
        (tmp_path / "key_file.json").write_text(json.dumps({"inference": {"key": "ts-token"}}))
        assert entrypoint.healthcheck(tmp_path, env) == 0
        # With the shared key configured TorchServe's tokens are off: none is sent.
        assert entrypoint.healthcheck(tmp_path, {**env, API_KEY_FILE_ENV: "/etc/key"}) == 1
        assert seen == [None, "Bearer ts-token", None]
    finally:
        server.shutdown()


def test_sigterm_stops_torchserve_gracefully(pod_server: PodServer) -> None:
    """Last in this module: the pod's shutdown. Java stops, the entrypoint exits 0 in seconds."""
    java = [p for p in psutil.Process(pod_server.process.pid).children(recursive=True)
            if "org.pytorch.serve.ModelServer" in " ".join(p.cmdline())]  # fmt: skip
    assert len(java) == 1
    started = time.monotonic()
    pod_server.process.send_signal(signal.SIGTERM)
    assert pod_server.process.wait(timeout=45) == 0, pod_server.log.read_text()[-3000:]
    assert time.monotonic() - started < 45  # well inside the pod's 60 s grace period
    java[0].wait(timeout=10)
    assert not java[0].is_running()
    assert "TorchServe stopped" in pod_server.log.read_text()
