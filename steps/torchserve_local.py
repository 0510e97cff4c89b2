"""Start, find and stop a local TorchServe, deterministically.

Deterministic means the served model and version come from the model store
and the rendered config alone:
- the server is started with ``--ncs`` (no config snapshots), so nothing an
  earlier run registered comes back;
- it loads exactly the archive recorded in ``<run>/default_model.json`` (written
  by the deployment pipeline when a version passes its smoke test), or nothing;
- its working files (rendered ``config.properties``, logs, ``key_file.json``
  with the auth tokens, the pid file TorchServe would otherwise put in /tmp)
  all live in the git-ignored run folder ``$CATSDOGS_RUNS_DIR/torchserve``
  (default ``<repo>/runs/torchserve``).

Command line (``make serve`` / ``make stop``)::

    python -m steps.torchserve_local start   # start or reuse; prints URLs and token
    python -m steps.torchserve_local status
    python -m steps.torchserve_local stop
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from string import Template

import requests

from handlers.cpu_limit import cpu_limit

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVE_CONFIG = REPO_ROOT / "serve_config"
MIN_JAVA = 17


class TorchServeError(RuntimeError):
    """The local server cannot be started, reached or stopped."""


def default_run_dir() -> Path:
    """``$CATSDOGS_RUNS_DIR/torchserve``: git-ignored, shared by start, deploy and stop."""
    runs = Path(os.environ.get("CATSDOGS_RUNS_DIR", REPO_ROOT / "runs"))
    return runs / "torchserve"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_ports_free(settings: ServerSettings) -> None:
    """Refuse to start on a taken port: TorchServe would exit 0 with the reason only in its log."""
    for port in settings.ports:
        with socket.socket() as sock:
            # Like the JVM's listener: a just-stopped server's TIME_WAIT sockets do not count.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                raise TorchServeError(
                    f"port {port} is already in use (another TorchServe or program); stop it, "
                    f"or use five other ports: CATSDOGS_PORT=9080 make serve (likewise make run / deploy)"
                ) from None


def check_java() -> str:
    """Path of a Java >= 17, or TorchServeError with the one-line fix."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    fix = (
        "TorchServe 0.12 needs Java 17+: install it with "
        "`sudo apt-get install -y openjdk-17-jre-headless` (macOS: `brew install openjdk@17`) "
        "or set JAVA_HOME to a JDK 17+"
    )
    if java_home and not Path(java).exists():
        raise TorchServeError(
            f"JAVA_HOME is {java_home} but {java} does not exist: point JAVA_HOME at a JDK 17+ or unset it"
        )
    if not java or not Path(java).exists():
        raise TorchServeError(f"java not found. {fix}")
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):  # "1.8.0" style
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise TorchServeError(f"{java} is Java {major or '?'}. {fix}")
    return java


@dataclass
class ServerSettings:
    """Everything that decides how the server runs; saved as ``server.json`` for reuse."""

    run_dir: str = field(default_factory=lambda: str(default_run_dir()))
    inference_host: str = "127.0.0.1"
    inference_port: int = 8080
    management_port: int = 8081
    metrics_port: int = 8082
    # TorchServe always opens its gRPC APIs; they are unused here and bound to localhost.
    grpc_inference_port: int = 7070
    grpc_management_port: int = 7071
    enable_model_api: bool = True  # local development registers versions over HTTP
    job_queue_size: int = 100
    response_timeout: int = 30
    java_heap_mb: int = 1024
    # TorchServe's keys expire (default 60 min); a laptop server lives a working day.
    token_expiration_min: int = 1440
    pid: int | None = None

    @property
    def root(self) -> Path:
        return Path(self.run_dir)

    @property
    def model_store(self) -> Path:
        return self.root / "model-store"

    @property
    def inference_url(self) -> str:
        host = "127.0.0.1" if self.inference_host in ("0.0.0.0", "") else self.inference_host
        return f"http://{host}:{self.inference_port}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    @property
    def ports(self) -> tuple[int, ...]:
        """All five ports TorchServe binds (gRPC included, though unused)."""
        return (
            self.inference_port,
            self.management_port,
            self.metrics_port,
            self.grpc_inference_port,
            self.grpc_management_port,
        )

    @classmethod
    def local(cls, run_dir: str | Path | None = None, port: int | None = None) -> ServerSettings:
        """The developer's server: five consecutive ports from ``port`` ($CATSDOGS_PORT, else 8080).

        ``make serve`` and ``make deploy`` both build their settings here, so a server
        moved with ``CATSDOGS_PORT`` is the one the deployment pipeline finds or starts.
        """
        port = port or int(os.environ.get("CATSDOGS_PORT", 8080))
        return cls(
            run_dir=str(run_dir or default_run_dir()),
            inference_port=port,
            management_port=port + 1,
            metrics_port=port + 2,
            grpc_inference_port=port + 3,
            grpc_management_port=port + 4,
        )

    @classmethod
    def for_tests(cls, run_dir: Path, **overrides: object) -> ServerSettings:
        """Free ports, a private run folder: tests never touch a developer's server."""
        return cls(
            run_dir=str(run_dir),
            inference_port=free_port(),
            management_port=free_port(),
            metrics_port=free_port(),
            grpc_inference_port=free_port(),
            grpc_management_port=free_port(),
            **overrides,  # type: ignore[arg-type]
        )


def render_config(settings: ServerSettings, load_models: str) -> Path:
    """Write ``<run>/config.properties`` from ``serve_config/config.properties``."""
    cpus = cpu_limit()
    store = settings.model_store.resolve()
    values = {
        "inference_host": settings.inference_host,
        "inference_port": settings.inference_port,
        "management_port": settings.management_port,
        "metrics_port": settings.metrics_port,
        "grpc_inference_port": settings.grpc_inference_port,
        "grpc_management_port": settings.grpc_management_port,
        "enable_model_api": str(settings.enable_model_api).lower(),
        # Only archives inside the model store may be registered: a Java regex, with its
        # backslashes doubled because .properties files treat "\\" as an escape.
        "allowed_urls": ("file://" + re.escape(str(store)) + "/.*").replace("\\", "\\\\"),
        "model_store": str(store),
        "load_models": load_models,
        "workers": 1,
        "netty_threads": max(1, cpus),
        "job_queue_size": settings.job_queue_size,
        "response_timeout": settings.response_timeout,
        "metrics_config": str((SERVE_CONFIG / "metrics.yaml").resolve()),
        "java_heap_mb": settings.java_heap_mb,
        "token_expiration_min": settings.token_expiration_min,
    }
    template = Template((SERVE_CONFIG / "config.properties").read_text())
    target = settings.root / "config.properties"
    target.write_text(template.substitute(values))
    return target


DEFAULT_MODEL_KEYS = ("model_name", "version", "mar")


def default_model_file(settings: ServerSettings) -> Path:
    return settings.root / "default_model.json"


def read_default_model(settings: ServerSettings) -> dict | None:
    """``{"model_name", "version", "mar"}`` of the promoted version, or None."""
    path = default_model_file(settings)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = None  # truncated or not JSON: refused below like a record without its keys
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in DEFAULT_MODEL_KEYS):
        raise TorchServeError(
            f"{path} is unreadable (expected JSON with {', '.join(DEFAULT_MODEL_KEYS)}): delete it "
            "(the server then starts with no model) or redeploy (make deploy) to rewrite it"
        )
    return record if (settings.model_store / record["mar"]).exists() else None


def _write_json(path: Path, data: dict) -> None:
    """Write temp + rename: a crash mid-write never leaves a truncated file under the real name."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def write_default_model(settings: ServerSettings, model_name: str, version: str, mar: str) -> None:
    """Record the promoted version: the only one a fresh start will load."""
    _write_json(default_model_file(settings), {"model_name": model_name, "version": version, "mar": mar})


def read_tokens(settings: ServerSettings) -> dict[str, str]:
    """The inference and management keys TorchServe wrote to ``key_file.json``."""
    path = settings.root / "key_file.json"
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):  # TorchServe is still writing it
        return {}
    return {name: entry["key"] for name, entry in data.items() if isinstance(entry, dict)}


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _healthy(settings: ServerSettings, timeout: float = 2.0) -> bool:
    """``/ping`` answers 200; with token authorization on it needs the inference key."""
    token = read_tokens(settings).get("inference")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = requests.get(f"{settings.inference_url}/ping", headers=headers, timeout=timeout)
        return response.status_code == 200
    except requests.RequestException:
        return False


def load_running(run_dir: Path | None = None) -> ServerSettings | None:
    """The server recorded in ``<run>/server.json`` if its process is alive and answers."""
    settings = _recorded(run_dir or default_run_dir())
    if settings is None:
        return None
    if _pid_alive(settings.pid) and _healthy(settings):
        return settings
    return None


def start(
    settings: ServerSettings | None = None, wait_s: float = 120.0, load_default: bool = True
) -> ServerSettings:
    """Start TorchServe (or return the healthy one already recorded for this run folder)."""
    settings = settings or ServerSettings()
    running = load_running(settings.root)
    if running is not None:
        logger.info("reusing TorchServe (pid %s) at %s", running.pid, running.inference_url)
        return running
    check_java()
    check_ports_free(settings)
    root = settings.root
    for sub in ("model-store", "logs", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "key_file.json").unlink(missing_ok=True)  # fresh keys every start
    default = read_default_model(settings) if load_default else None
    load_models = f"{default['model_name']}={default['mar']}" if default else ""
    config = render_config(settings, load_models or "")
    env = dict(os.environ)
    env.update(
        {
            # TorchServe puts its pid file in tempfile.gettempdir(): keep it per run folder
            # so a test server and a developer's server never see each other.
            "TMPDIR": str(root / "tmp"),
            "TEMP": str(root / "tmp"),
            "LOG_LOCATION": str(root / "logs"),
            "METRICS_LOCATION": str(root / "logs"),
            # One OpenMP pool per worker sized by the handler, not one per node core.
            "OMP_NUM_THREADS": "1",
        }
    )
    torchserve = Path(sys.executable).with_name("torchserve")
    cmd = [
        str(torchserve) if torchserve.exists() else "torchserve",
        "--start", "--foreground", "--ncs",
        "--ts-config", str(config),
        "--model-store", str(settings.model_store),
    ]  # fmt: skip
    log = (root / "logs" / "torchserve.out").open("ab")
    process = subprocess.Popen(
        cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    settings.pid = process.pid
    _write_json(root / "server.json", asdict(settings))
    try:
        _wait_until_up(settings, process, wait_s)
    except BaseException:
        stop(settings)  # never leave a half-started Java behind
        raise
    logger.info("TorchServe pid %s up at %s", process.pid, settings.inference_url)
    return settings


def _wait_until_up(settings: ServerSettings, process: subprocess.Popen, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise TorchServeError(
                f"TorchServe exited with {process.returncode}; see {settings.root / 'logs'}"
            )
        if read_tokens(settings) and _healthy(settings):
            return
        time.sleep(0.5)
    raise TorchServeError(
        f"TorchServe did not answer /ping within {wait_s:.0f}s; see {settings.root / 'logs'}"
    )


def _group_alive(pgid: int) -> bool:
    """Whether any process of the server's process group (CLI, Java, workers) is left."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)  # reap our own child if it already exited
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(settings: ServerSettings | None = None, timeout: float = 30.0) -> bool:
    """Stop the server of a run folder and wait until its whole process group is gone.

    Waiting for Java itself (not only the CLI that started it) matters: TorchServe
    refuses to start while its pid file names a live Java process.
    """
    settings = settings or _recorded(default_run_dir())
    if settings is None or not settings.pid or not _group_alive(settings.pid):
        return False
    pgid = settings.pid
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            logger.warning("TorchServe did not stop within %.0fs; killing it", timeout)
            os.killpg(pgid, signal.SIGKILL)
            deadline = time.monotonic() + 10
        time.sleep(0.2)
    (settings.root / "server.json").unlink(missing_ok=True)
    (settings.root / "tmp" / ".model_server.pid").unlink(missing_ok=True)
    return True


def _recorded(run_dir: Path) -> ServerSettings | None:
    """The settings in ``<run>/server.json``; an unreadable file counts as no server recorded.

    A truncated file (a crash, a full disk) must not turn ``status`` and ``stop``
    into tracebacks; the warning names it so a still-running server can be found.
    """
    path = run_dir / "server.json"
    if not path.exists():
        return None
    try:
        return ServerSettings(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        logger.warning("ignoring unreadable %s (%s): treating it as no server recorded", path, exc)
        return None


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description="Local TorchServe for catsdogs")
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--port", type=int, help="first of five ports (default $CATSDOGS_PORT or 8080)")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            settings = start(ServerSettings.local(port=args.port))
            tokens = read_tokens(settings)
            default = read_default_model(settings)
            logger.info("inference  %s", settings.inference_url)
            logger.info("management %s (localhost only)", settings.management_url)
            logger.info("metrics    %s/metrics (localhost only)", settings.metrics_url)
            logger.info("model      %s", default or "none yet: run the deployment pipeline")
            logger.info("tokens     %s", settings.root / "key_file.json")
            if default and tokens.get("inference"):
                from steps.deployment import curl_command  # imports this module: not at the top

                logger.info("try: %s", curl_command(settings, default["model_name"]))
        elif args.command == "stop":
            logger.info("stopped" if stop() else "no local TorchServe running")
        else:
            running = load_running()
            logger.info(f"running at {running.inference_url}" if running else "not running")
            return 0 if running else 1
    except TorchServeError as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
