"""Fetch one released ``.mar`` by model name and version, before TorchServe starts.

Runs as the serving pod's init container, inside the serving image, which has
no Google SDK (the image holds only what serving needs). So GCS is read through
its JSON API with Python's standard library: on GKE the access token comes from
the metadata server (Workload Identity); with STORAGE_EMULATOR_HOST set no
token is needed. Layout: ``<MODEL_STORE_URI>/<MODEL_NAME>/<MODEL_VERSION>/<MODEL_NAME>.mar``.
The download is checked against the object's MD5 and renamed into place, so a
half-written file is never served.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

LOGGER = logging.getLogger("fetch_model")
METADATA_TOKEN_URL = (
    "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token"
)
RETRIABLE = {429, 500, 502, 503, 504}


class FetchError(RuntimeError):
    """The model cannot be fetched; the message says what to fix."""


def model_uri(store: str, name: str, version: str) -> str:
    return f"{store.rstrip('/')}/{name}/{version}/{name}.mar"


def _gcs_endpoint() -> tuple[str, dict[str, str]]:
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:
        base = emulator if emulator.startswith("http") else f"http://{emulator}"
        return base.rstrip("/"), {}
    request = urllib.request.Request(METADATA_TOKEN_URL, headers={"Metadata-Flavor": "Google"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            token = json.load(response)["access_token"]
    except OSError as exc:
        raise FetchError(
            f"no Google credentials from the metadata server ({exc}); on GKE enable Workload "
            "Identity and annotate the pod's service account with iam.gke.io/gcp-service-account"
        ) from exc
    return "https://storage.googleapis.com", {"Authorization": f"Bearer {token}"}


def _open_with_retries(request: urllib.request.Request, what: str, attempts: int = 5):
    for attempt in range(1, attempts + 1):
        try:
            return urllib.request.urlopen(request, timeout=60)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise FetchError(f"{what} does not exist; check MODEL_NAME / MODEL_VERSION") from exc
            if exc.code in (401, 403):
                raise FetchError(
                    f"permission denied reading {what} (HTTP {exc.code}); grant the serving "
                    "Google service account roles/storage.objectViewer on the bucket"
                ) from exc
            if exc.code not in RETRIABLE or attempt == attempts:
                raise FetchError(f"reading {what} failed: HTTP {exc.code}") from exc
        except urllib.error.URLError as exc:
            if attempt == attempts:
                raise FetchError(f"reading {what} failed: {exc.reason}") from exc
        delay = min(2 ** (attempt - 1), 16)
        LOGGER.warning("reading %s failed (attempt %d); retrying in %ds", what, attempt, delay)
        time.sleep(delay)
    raise AssertionError("unreachable")


def _fetch_gcs(uri: str, target: Path) -> None:
    bucket, _, key = uri.removeprefix("gs://").partition("/")
    base, headers = _gcs_endpoint()
    quoted = urllib.parse.quote(key, safe="")
    meta_req = urllib.request.Request(f"{base}/storage/v1/b/{bucket}/o/{quoted}", headers=headers)
    with _open_with_retries(meta_req, uri) as response:
        meta = json.load(response)
    media_req = urllib.request.Request(
        f"{base}/download/storage/v1/b/{bucket}/o/{quoted}?alt=media&generation={meta['generation']}",
        headers=headers,
    )
    digest = hashlib.md5()
    with _open_with_retries(media_req, uri) as response, target.open("wb") as out:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    expected = meta.get("md5Hash")
    if expected and base64.b64encode(digest.digest()).decode() != expected:
        raise FetchError(f"{uri}: downloaded bytes do not match the object's MD5")
    LOGGER.info("fetched %s (generation %s, %s bytes)", uri, meta["generation"], meta.get("size"))


def fetch(uri: str, dest_dir: Path) -> Path:
    """Download ``uri`` into ``dest_dir`` atomically; return the final path."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / uri.rsplit("/", 1)[-1]
    partial = final.with_suffix(".part")
    if uri.startswith("gs://"):
        _fetch_gcs(uri, partial)
    elif uri.startswith("file://"):
        source = Path(uri.removeprefix("file://"))
        if not source.is_file():
            raise FetchError(f"{source} does not exist; check MODEL_STORE_URI / MODEL_VERSION")
        shutil.copyfile(source, partial)
    elif uri.startswith(("https://", "http://")):
        with _open_with_retries(urllib.request.Request(uri), uri) as response:
            partial.write_bytes(response.read())
    else:
        raise FetchError(f"unsupported MODEL_STORE_URI scheme in {uri}; use gs://, https:// or file://")
    partial.replace(final)
    return final


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    missing = [k for k in ("MODEL_STORE_URI", "MODEL_NAME", "MODEL_VERSION") if not os.environ.get(k)]
    if missing:
        LOGGER.error("set %s (the catsdogs-settings ConfigMap provides them)", ", ".join(missing))
        return 2
    uri = model_uri(os.environ["MODEL_STORE_URI"], os.environ["MODEL_NAME"], os.environ["MODEL_VERSION"])
    try:
        fetch(uri, Path(os.environ.get("MODEL_DIR", "/models")))
    except FetchError as exc:
        LOGGER.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
