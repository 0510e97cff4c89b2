"""Wait for a service a test started: one loop for MLflow, Prometheus and TorchServe alike."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests


def wait_until_answering(
    process: subprocess.Popen,
    answers: Callable[[], bool],
    what: str,
    timeout: float,
    log: Path | None = None,
) -> None:
    """Poll ``answers`` until it is true; fail at once, with the log's tail, if the process dies."""

    def tail() -> str:
        return f":\n{log.read_text()[-3000:]}" if log and log.exists() else ""

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}{tail()}")
        try:
            if answers():
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    pytest.fail(f"{what} not ready after {timeout:.0f}s{tail()}")
