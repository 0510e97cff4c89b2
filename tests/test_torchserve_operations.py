"""Operating a real TorchServe: metrics after traffic, auth on management, worker recovery."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import requests

from handlers.serving_metrics import CUSTOM_METRICS
from tests.torchserve_fixtures import *  # noqa: F403  (session fixtures: one shared server)
from tests.torchserve_fixtures import KNOWN_CAT, KNOWN_DOG, MODEL_NAME

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def photos(petimages_dir: Path) -> list[bytes]:
    return [(petimages_dir / KNOWN_CAT).read_bytes(), (petimages_dir / KNOWN_DOG).read_bytes()]


def test_metrics_endpoint_shows_every_custom_metric_after_traffic(ts_client, photos):
    for body in [*photos, b"", b"plain text"]:
        ts_client.predict_raw(MODEL_NAME, body)
    deadline = time.monotonic() + 20
    missing: list[str] = []
    while time.monotonic() < deadline:
        text = ts_client.metrics_text()
        missing = [name for name in CUSTOM_METRICS if name not in text]
        if not missing:
            break
        time.sleep(0.5)  # the frontend reads worker metrics from its log stream
    assert not missing, f"missing custom metrics {missing} in:\n{text[:3000]}"
    for builtin in ("ts_inference_requests_total", "ts_inference_latency_microseconds",
                    "ts_queue_latency_microseconds"):  # fmt: skip
        assert builtin in text
    assert 'Label="cat"' in text and 'Label="dog"' in text
    assert 'ErrorType="empty_image"' in text and 'ErrorType="not_an_image"' in text
    assert "catsdogs_preprocess_latency_seconds_bucket" in text  # a real histogram


def test_management_api_refuses_without_token(ts_client):
    url = f"{ts_client.management_url}/models"
    assert requests.get(url, timeout=10).status_code in (400, 401, 403)
    bad = {"Authorization": "Bearer not-the-key"}
    assert requests.get(url, headers=bad, timeout=10).status_code in (400, 401, 403)
    # The inference key is not a management key either.
    inference_key = {"Authorization": f"Bearer {ts_client.inference_token}"}
    assert requests.get(url, headers=inference_key, timeout=10).status_code in (400, 401, 403)
    assert ts_client.versions(MODEL_NAME) == ["test-1"]


def test_management_and_metrics_listen_on_localhost_only(torchserve_server):
    config = (torchserve_server.root / "config.properties").read_text()
    assert f"management_address=http://127.0.0.1:{torchserve_server.management_port}" in config
    assert f"metrics_address=http://127.0.0.1:{torchserve_server.metrics_port}" in config
    assert "disable_token_authorization=false" in config


def test_killed_worker_is_replaced_under_load(ts_client, photos):
    old_pid = ts_client.describe(MODEL_NAME)[0]["workers"][0]["pid"]
    results: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    response = ts_client.predict_raw(MODEL_NAME, photos[0], session=session)
                    results.append(response.status_code)
                except requests.RequestException:
                    results.append(-1)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        os.kill(old_pid, signal.SIGKILL)
        deadline = time.monotonic() + 90
        new_pid = old_pid
        while time.monotonic() < deadline:
            workers = ts_client.describe(MODEL_NAME)[0]["workers"]
            ready = [w for w in workers if w["status"] == "READY" and w["pid"] != old_pid]
            if ready:
                new_pid = ready[0]["pid"]
                break
            time.sleep(0.5)
        assert new_pid != old_pid, "TorchServe did not replace the killed worker"
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert results.count(200) > 0
    # After recovery every request succeeds again.
    for _ in range(10):
        response = ts_client.predict_raw(MODEL_NAME, photos[1])
        assert response.status_code == 200, response.text
        assert response.json()["label"] == "dog"
