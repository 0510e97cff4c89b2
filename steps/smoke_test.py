"""Smoke test a TorchServe deployment: is it up, and does it tell a cat from a dog?

Run after every deploy: by the deployment pipeline against the *candidate*
version before it becomes the default, and by CI against a cluster::

    python -m steps.smoke_test --url http://127.0.0.1:8080 --token <key> --expect-version <version>
    python -m steps.smoke_test --key-file runs/torchserve/key_file.json  # local server

The key (``--token`` / ``$TS_INFERENCE_TOKEN``) is sent as ``Authorization:
Bearer``: the cluster's shared API key (Secret ``torchserve-api-key``) or, for a
local server, TorchServe's inference token.

Checks: ping; model status (workers READY, when the management API is given);
a known cat and a known dog photo answered correctly (and by the expected model
version, when given); a bad input answered with a 4xx and a JSON error; with a
key, a request without it refused with a 4xx (the server is not open); the
metrics endpoint exposes the custom metrics (when the metrics URL is given).
Every check runs; the report lists each failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from handlers.serving_metrics import CUSTOM_METRICS
from steps.torchserve_client import TorchServeAPIError, TorchServeClient

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "catsdogs"


def default_photo(label: str) -> Path:
    """``$CATSDOGS_SMOKE_CAT`` / ``_DOG``, else Cat/1.jpg / Dog/1.jpg of the petimages set."""
    override = os.environ.get(f"CATSDOGS_SMOKE_{label.upper()}")
    if override:
        return Path(override)
    root = Path(os.environ.get("CATSDOGS_PETIMAGES", REPO_ROOT.parent / "shared" / "datasets" / "petimages"))
    return root / label.capitalize() / "1.jpg"


class SmokeTestError(RuntimeError):
    """At least one smoke check failed; the message lists all of them."""


@dataclass
class SmokeReport:
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def check(self, name: str, condition: bool, detail: str = "") -> None:
        (self.passed if condition else self.failed).append(
            name if condition or not detail else f"{name}: {detail}"
        )


def run_smoke_test(
    client: TorchServeClient,
    model: str = DEFAULT_MODEL,
    version: str | None = None,
    cat_photo: Path | None = None,
    dog_photo: Path | None = None,
    metrics_wait_s: float = 15.0,
    expect_version: str | None = None,
) -> SmokeReport:
    """Run every check against ``model`` (``version``: a candidate not yet default).

    ``expect_version``: the model version every answer must report, so a deploy
    that is still (or again) served by the old version fails instead of passing.
    """
    report = SmokeReport()
    try:
        status = client.ping().get("status")
        report.check("ping", status == "Healthy", f"status {status!r}")
    except (requests.RequestException, TorchServeAPIError) as exc:
        report.check("ping", False, str(exc))
        return report  # nothing else can work

    # No management token is needed in the pod (TorchServe's tokens are off there).
    if client.management_url:
        try:
            workers = client.describe(model, version)[0].get("workers", [])
            ready = sum(w.get("status") == "READY" for w in workers)
            report.check("model status", ready > 0, f"workers {[w.get('status') for w in workers]}")
        except (requests.RequestException, TorchServeAPIError) as exc:
            report.check("model status", False, str(exc))

    versions: list[object] = []
    for label, photo in (("cat", cat_photo or default_photo("cat")),
                         ("dog", dog_photo or default_photo("dog"))):  # fmt: skip
        name = f"known {label} photo"
        if not photo.is_file():
            report.check(name, False, f"{photo} not found (set CATSDOGS_SMOKE_{label.upper()})")
            continue
        try:
            response = client.predict_raw(model, photo.read_bytes(), "image/jpeg", version)
            body = response.json()
            versions.append(body.get("model_version"))
            report.check(
                name,
                response.status_code == 200 and body.get("label") == label,
                f"HTTP {response.status_code} {json.dumps(body)[:300]}",
            )
        except (requests.RequestException, ValueError) as exc:
            report.check(name, False, str(exc))
    if expect_version is not None:
        report.check(
            f"answers come from version {expect_version}",
            bool(versions) and all(v == expect_version for v in versions),
            f"model_version {versions}",
        )

    try:
        response = client.predict_raw(model, b"this is not an image", "image/jpeg", version)
        error = response.json().get("error") if response.content else None
        report.check(
            "bad input refused with 4xx",
            400 <= response.status_code < 500 and bool(error),
            f"HTTP {response.status_code} {response.text[:200]}",
        )
    except (requests.RequestException, ValueError) as exc:
        report.check("bad input refused with 4xx", False, str(exc))

    if client.inference_token:
        _check_key_required(report, client, model, version, cat_photo or default_photo("cat"))

    if client.metrics_url:
        missing = list(CUSTOM_METRICS)
        deadline = time.monotonic() + metrics_wait_s
        while missing and time.monotonic() < deadline:
            try:
                text = client.metrics_text()
                missing = [name for name in CUSTOM_METRICS if name not in text]
            except (requests.RequestException, TorchServeAPIError) as exc:
                missing = [f"metrics endpoint: {exc}"]
            if missing:
                time.sleep(0.5)
        report.check("custom metrics exposed", not missing, f"missing {missing}")
    return report


def _check_key_required(
    report: SmokeReport, client: TorchServeClient, model: str, version: str | None, photo: Path
) -> None:
    """A prediction without the key must be refused (401 from the handler, 400 from TorchServe)."""
    name = "request without key refused with 4xx"
    if not photo.is_file():
        report.check(name, False, f"{photo} not found")
        return
    keyless = dataclasses.replace(client, inference_token=None)
    try:
        response = keyless.predict_raw(model, photo.read_bytes(), "image/jpeg", version)
        report.check(
            name, 400 <= response.status_code < 500, f"HTTP {response.status_code} {response.text[:200]}"
        )
    except requests.RequestException as exc:
        report.check(name, False, str(exc))


def assert_smoke_test(client: TorchServeClient, **kwargs: object) -> SmokeReport:
    """``run_smoke_test`` that raises SmokeTestError listing every failed check."""
    report = run_smoke_test(client, **kwargs)  # type: ignore[arg-type]
    for name in report.passed:
        logger.info("smoke ok    %s", name)
    for name in report.failed:
        logger.error("smoke FAIL  %s", name)
    if not report.ok:
        raise SmokeTestError("smoke test failed: " + "; ".join(report.failed))
    return report


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description="Smoke test a TorchServe deployment")
    parser.add_argument(
        "--url",
        default=f"http://127.0.0.1:{os.environ.get('CATSDOGS_PORT', '8080')}",
        help="inference API base URL (default: the local server, port $CATSDOGS_PORT or 8080)",
    )
    parser.add_argument("--token", default=os.environ.get("TS_INFERENCE_TOKEN"),
                        help="inference key (default $TS_INFERENCE_TOKEN)")  # fmt: skip
    parser.add_argument("--management-url", help="management API (checks model status)")
    parser.add_argument("--management-token", default=os.environ.get("TS_MANAGEMENT_TOKEN"))
    parser.add_argument("--metrics-url", help="metrics API base URL (checks custom metrics)")
    parser.add_argument("--key-file", type=Path,
                        help="TorchServe key_file.json to read both tokens from")  # fmt: skip
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--version", help="check this version instead of the default one")
    parser.add_argument("--expect-version", help="fail unless the answers report this model_version")
    parser.add_argument("--cat", type=Path, help="a photo the model must call a cat")
    parser.add_argument("--dog", type=Path, help="a photo the model must call a dog")
    args = parser.parse_args(argv)
    token, management_token = args.token, args.management_token
    if args.key_file:
        keys = json.loads(args.key_file.read_text())
        token = token or keys.get("inference", {}).get("key")
        management_token = management_token or keys.get("management", {}).get("key")
    client = TorchServeClient(
        inference_url=args.url.rstrip("/"),
        management_url=args.management_url,
        metrics_url=args.metrics_url,
        inference_token=token,
        management_token=management_token,
    )
    try:
        assert_smoke_test(
            client,
            model=args.model,
            version=args.version,
            cat_photo=args.cat,
            dog_photo=args.dog,
            expect_version=args.expect_version,
        )
    except SmokeTestError as exc:
        logger.error("%s", exc)
        return 1
    logger.info("smoke test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
