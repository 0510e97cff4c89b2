"""Start TorchServe in the serving container, configured from the repo's template.

serve_config/config.properties is the single TorchServe configuration (the
local server renders the same file). Here it is rendered for a pod: inference
on all interfaces, management on localhost only (reach it with
``kubectl port-forward``), and, because Google Managed Prometheus scrapes from
outside the pod, metrics on the pod IP, guarded by the NetworkPolicy.

Authorization: when ``$CATSDOGS_API_KEY_FILE`` names the shared API key (the
Kubernetes Secret ``torchserve-api-key``), the handler requires that key on every
prediction and TorchServe's own token authorization is switched off; see
``api_key_replaces_tokens``. Without it TorchServe's tokens stay on.

This process stays PID 1 and supervises TorchServe instead of exec'ing it: the
``torchserve`` command is a Python wrapper that starts Java and neither handles
nor forwards SIGTERM (as PID 1 it would even ignore it), so the pod would sit
out its whole grace period and be SIGKILLed. Here SIGTERM / SIGINT go to the
Java frontend, which stops its workers and exits, and this process exits with
the outcome. ``python serving_entrypoint.py healthcheck`` is the image's
HEALTHCHECK.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import string
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType

import psutil  # a TorchServe dependency: present wherever TorchServe is

try:  # the image copies handlers/ next to this file; in the repo it is a package at the root
    from handlers.api_key import API_KEY_FILE_ENV, ApiKeyError, read_api_keys
except ImportError:  # run as docker/serving_entrypoint.py from the repo (tests)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from handlers.api_key import API_KEY_FILE_ENV, ApiKeyError, read_api_keys

LOGGER = logging.getLogger("serving_entrypoint")
APP_DIR = Path(os.environ.get("APP_DIR", "/opt/catsdogs"))
RUN_DIR = Path(os.environ.get("TS_RUN_DIR", "/tmp/torchserve"))  # an emptyDir: rootfs is read-only


def render(template: str, env: dict[str, str]) -> str:
    """The pod's config.properties: the repo template with the pod's ports, hosts and auth."""
    values = {
        "inference_host": "0.0.0.0",
        "inference_port": env.get("TS_INFERENCE_PORT", "8080"),
        "management_port": env.get("TS_MANAGEMENT_PORT", "8081"),
        "metrics_port": env.get("TS_METRICS_PORT", "8082"),
        "grpc_inference_port": env.get("TS_GRPC_INFERENCE_PORT", "7070"),
        "grpc_management_port": env.get("TS_GRPC_MANAGEMENT_PORT", "7071"),
        "token_expiration_min": env.get("TS_TOKEN_EXPIRATION_MIN", "1440"),
        "enable_model_api": "false",
        "allowed_urls": "file:///models/.*",
        "model_store": env.get("MODEL_DIR", "/models"),
        "load_models": "all",
        "workers": env.get("TS_WORKERS", "1"),
        "netty_threads": env.get("TS_NETTY_THREADS", "2"),
        "job_queue_size": env.get("TS_JOB_QUEUE_SIZE", "100"),
        "response_timeout": env.get("TS_RESPONSE_TIMEOUT", "30"),
        "metrics_config": str(APP_DIR / "serve_config" / "metrics.yaml"),
        "java_heap_mb": env.get("TS_JAVA_HEAP_MB", "512"),
    }
    text = string.Template(template).substitute(values)
    metrics_host = env.get("TS_METRICS_HOST", "0.0.0.0")
    text = re.sub(
        r"^metrics_address=http://127\.0\.0\.1:",
        f"metrics_address=http://{metrics_host}:",
        text,
        flags=re.MULTILINE,
    )
    if env.get(API_KEY_FILE_ENV):
        text = api_key_replaces_tokens(text)
    return text


def api_key_replaces_tokens(text: str) -> str:
    """Switch TorchServe's token authorization off: the handler's shared API key replaces it.

    Why this is safe, and needed, in the pod:
    - TorchServe's keys are random per process and expire, so with several replicas
      behind one Service no client key works on every pod, and TorchServe 0.12 wants
      the inference key on /ping too, which kubelet's httpGet probes cannot send.
    - predictions still need a key: the handler refuses every item without the
      shared key from the Secret with a 401 (handlers/api_key.py);
    - the management API is bound to 127.0.0.1 (reachable only from inside the pod,
      i.e. by whoever may exec or port-forward into it) and its model API control
      (register / delete) stays off;
    - the metrics API carries no secrets and is reachable only from the cluster
      (NetworkPolicy: Managed Prometheus and this namespace).
    /ping then answers kubelet's probes and the image's HEALTHCHECK without a token.
    """
    text, count = re.subn(
        r"^disable_token_authorization=false$", "disable_token_authorization=true", text, flags=re.MULTILINE
    )
    if count != 1:
        raise RuntimeError("serve_config/config.properties has no 'disable_token_authorization=false' line")
    return text


def check_api_key_file(env: dict[str, str]) -> None:
    """Refuse to start when the key file is named but unusable: never serve open by mistake."""
    path = env.get(API_KEY_FILE_ENV)
    if not path:
        LOGGER.info("no $%s: TorchServe's token authorization stays on", API_KEY_FILE_ENV)
        return
    keys = read_api_keys(Path(path))
    LOGGER.info("shared API key from %s (%d key(s)); TorchServe token authorization off", path, len(keys))


def torchserve_command(config: Path) -> list[str]:
    """The ``torchserve`` of this Python's environment (a venv's bin need not be on PATH)."""
    sibling = Path(sys.executable).with_name("torchserve")
    program = str(sibling) if sibling.exists() else "torchserve"
    return [program, "--start", "--foreground", "--ncs", "--ts-config", str(config)]


def stop_server(wrapper: subprocess.Popen) -> None:
    """SIGTERM to the Java frontend (the wrapper's child); to the wrapper if Java is not up yet.

    Java runs its shutdown hook (stops the workers, closes the ports) and exits; the
    wrapper, which waits on Java, then exits too. Signalling the whole process group
    instead would kill the Python workers under a frontend that is still running.
    """
    try:
        frontends = psutil.Process(wrapper.pid).children()
    except psutil.Error:
        frontends = []
    for process in frontends:
        LOGGER.info("sending SIGTERM to TorchServe (pid %d)", process.pid)
        with contextlib.suppress(psutil.Error):  # it has just exited: nothing to stop
            process.send_signal(signal.SIGTERM)
    if not frontends and wrapper.poll() is None:
        wrapper.terminate()


def supervise(args: list[str], cwd: Path, env: dict[str, str]) -> int:
    """Run TorchServe, forward SIGTERM / SIGINT to it, return the container's exit status.

    0 after a requested stop; the server's own status when it ends by itself (1 if
    that status is 0: a server that stops unasked has failed), so the kubelet restarts it.
    """
    wrapper = subprocess.Popen(args, cwd=cwd, env=env)
    stopping: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        LOGGER.info("%s received: stopping TorchServe", signal.Signals(signum).name)
        stopping.append(signum)
        stop_server(wrapper)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    status = wrapper.wait()
    if stopping:
        LOGGER.info("TorchServe stopped (exit %d)", status)
        return 0
    LOGGER.error("TorchServe exited by itself (exit %d)", status)
    if status < 0:  # killed by a signal
        return 128 - status
    return status or 1


def healthcheck(run_dir: Path, env: dict[str, str]) -> int:
    """0 when /ping answers 200: the image's HEALTHCHECK, with TorchServe's token if it is on."""
    port = env.get("TS_INFERENCE_PORT", "8080")
    request = urllib.request.Request(f"http://127.0.0.1:{port}/ping")
    key_file = run_dir / "key_file.json"
    if not env.get(API_KEY_FILE_ENV) and key_file.exists():
        token = json.loads(key_file.read_text())["inference"]["key"]
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        LOGGER.error("unhealthy: %s", exc)
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    env = dict(os.environ)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if argv == ["healthcheck"]:
        return healthcheck(RUN_DIR, env)
    try:
        check_api_key_file(env)
    except ApiKeyError as exc:
        LOGGER.error("%s", exc)
        return 2
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    config = RUN_DIR / "config.properties"
    template = (APP_DIR / "serve_config" / "config.properties").read_text()
    config.write_text(render(template, env))
    # The wrapper keeps its pid file in the temp folder: one per run folder, so two
    # servers on one machine (tests) never mistake each other for "already running".
    tmp = RUN_DIR / "tmp"
    tmp.mkdir(exist_ok=True)
    env["TMPDIR"] = str(tmp)
    LOGGER.info("starting TorchServe with %s", config)
    # TorchServe writes key_file.json (tokens on) and its logs to its working directory.
    return supervise(torchserve_command(config), cwd=RUN_DIR, env=env)


if __name__ == "__main__":
    sys.exit(main())
