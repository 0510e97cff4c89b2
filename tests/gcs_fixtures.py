"""A real GCS API on localhost, with a fault-injecting proxy in front of it.

``gcp-storage-emulator`` speaks the GCS JSON API that gcsfs and
google-cloud-storage use, but it never fails. ``FaultyGcsProxy`` forwards every
request to it and can answer chosen object paths with 503 (a few times, then
recover), 403 or 404 instead, so retry, permission and vanished-object
behaviour is tested against real HTTP, not mocks.
"""

from __future__ import annotations

import http.client
import logging
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

LOGGER = logging.getLogger(__name__)
TEST_BUCKET = "catsdogs-test"
RAW_PREFIX = "datasets/cats-dogs/raw"
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@dataclass
class FaultRules:
    """Object path fragment -> HTTP status to answer instead of the emulator.

    ``transient`` entries hold a count: that many failures, then real answers.
    """

    transient: dict[str, int] = field(default_factory=dict)
    permanent: dict[str, int] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def status_for(self, method: str, path: str) -> int | None:
        decoded = urllib.parse.unquote(path)
        with self.lock:
            self.requests.append(f"{method} {decoded}")
            for fragment, status in self.permanent.items():
                if fragment in decoded:
                    return status
            for fragment, left in self.transient.items():
                if fragment in decoded and left > 0:
                    self.transient[fragment] = left - 1
                    return 503
        return None

    def reset(self) -> None:
        with self.lock:
            self.transient.clear()
            self.permanent.clear()
            self.requests.clear()


def _proxy_handler(upstream_port: int, rules: FaultRules) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            LOGGER.debug("proxy: " + format, *args)

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            status = rules.status_for(self.command, self.path)
            if status is not None:
                payload = (f'{{"error": {{"code": {status}, "message": "injected {status}"}}}}').encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in _HOP_HEADERS:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            conn.close()

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    return Handler


@dataclass
class GcsEmulator:
    """Where the emulator and its proxy listen, and the proxy's fault rules."""

    emulator_url: str
    proxy_url: str
    rules: FaultRules


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsEmulator]:
    """gcp-storage-emulator (in memory) plus a fault proxy, both on free localhost ports."""
    port = free_port()
    workdir: Path = tmp_path_factory.mktemp("gcs-emulator")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gcp_storage_emulator",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--in-memory",
            "--quiet",
            "--default-bucket",
            TEST_BUCKET,
        ],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rules = FaultRules()
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _proxy_handler(port, rules))
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    try:
        wait_for_port(port, process)
        thread.start()
        yield GcsEmulator(
            emulator_url=f"http://127.0.0.1:{port}",
            proxy_url=f"http://127.0.0.1:{proxy.server_address[1]}",
            rules=rules,
        )
    finally:
        proxy.shutdown()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture
def gcs_env(gcs_emulator: GcsEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[GcsEmulator]:
    """Point gcsfs and google-cloud-storage at the proxy; fresh gcsfs instances per test."""
    import gcsfs

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.proxy_url)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    # Off GCP, gcsfs's credential chain spends ~15 s on the metadata server before
    # it falls back to anonymous access; the emulator needs none, so say so up front
    # (fsspec config for this process, the env var for subprocesses).
    import fsspec.config

    monkeypatch.setenv("FSSPEC_GCS_TOKEN", "anon")
    monkeypatch.setitem(fsspec.config.conf, "gcs", {"token": "anon"})
    from google.auth.compute_engine import _metadata

    monkeypatch.setenv("NO_GCE_CHECK", "true")
    monkeypatch.setattr(_metadata, "_NO_GCE_CHECK", True)
    gcsfs.GCSFileSystem.clear_instance_cache()
    gcs_emulator.rules.reset()
    yield gcs_emulator
    gcs_emulator.rules.reset()
    gcsfs.GCSFileSystem.clear_instance_cache()


def upload_photos(petimages_dir: Path, bucket: str, prefix: str, per_class: int) -> dict[str, Path]:
    """Upload the first ``per_class`` real photos of each class; return object -> local file."""
    import gcsfs

    fs = gcsfs.GCSFileSystem(token="anon")
    uploaded: dict[str, Path] = {}
    for label in ("Cat", "Dog"):
        photos = sorted((petimages_dir / label).glob("*.jpg"), key=lambda p: int(p.stem))
        for photo in photos[:per_class]:
            key = f"{bucket}/{prefix}/{label}/{photo.name}"
            fs.pipe_file(key, photo.read_bytes())
            uploaded[key] = photo
    return uploaded
