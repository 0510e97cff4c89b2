"""The shared API key of the cluster deployment, checked by the handler on every request item.

Why the handler checks a key and not TorchServe: TorchServe's own token
authorization makes random keys per process (``key_file.json`` in its working
folder) that expire, so behind one Service with several replicas no client key
works on every pod, nothing renews them, and kubelet's ``httpGet /ping`` probes
cannot send one. In the pod, the key comes from the Kubernetes Secret
``torchserve-api-key`` mounted as a file named by ``$CATSDOGS_API_KEY_FILE``;
TorchServe's token authorization is then switched off by the entrypoint
(``docker/serving_entrypoint.py``). Without that variable (``make serve``)
nothing here is active and TorchServe's tokens protect the local server.

The file holds one key per line (blank lines ignored): during a rotation it
holds the old and the new key, so clients can move over without downtime.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

API_KEY_FILE_ENV = "CATSDOGS_API_KEY_FILE"
# `openssl rand -hex 32` gives 64 characters; refuse keys short enough to guess.
MIN_KEY_LENGTH = 16
HOW_TO_SEND = "send the header 'Authorization: Bearer <API key>'"


class ApiKeyError(RuntimeError):
    """The configured key file cannot be used: the server must not start open by mistake."""


def read_api_keys(path: Path) -> tuple[str, ...]:
    """The keys in ``path``, one per line; ApiKeyError when there is none or one is too short."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ApiKeyError(f"${API_KEY_FILE_ENV} names {path}, which cannot be read ({exc})") from exc
    keys = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not keys:
        raise ApiKeyError(f"${API_KEY_FILE_ENV} names {path}, which holds no API key")
    if any(len(key) < MIN_KEY_LENGTH for key in keys):
        raise ApiKeyError(
            f"an API key in {path} is shorter than {MIN_KEY_LENGTH} characters; "
            "make one with `openssl rand -hex 32`"
        )
    return keys


def configured_api_keys(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The keys of the file named by ``$CATSDOGS_API_KEY_FILE``; () when it is not set."""
    environ = os.environ if environ is None else environ
    path = environ.get(API_KEY_FILE_ENV, "").strip()
    return read_api_keys(Path(path)) if path else ()


def bearer_token(headers: Mapping[str, Any]) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header, whatever the header name's case.

    TorchServe hands the handler the header names exactly as the client wrote them
    (``Authorization`` from requests, ``authorization`` from HTTP/2 clients or curl
    -H "authorization: ..."), in the same dict as the form fields' content types
    (dict values): only string values are headers.
    """
    for name, value in headers.items():
        if isinstance(name, str) and name.lower() == "authorization" and isinstance(value, str):
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def authorization_problem(headers: Mapping[str, Any], keys: Sequence[str]) -> str | None:
    """None when the request carries one of ``keys``; otherwise the message for the 401."""
    token = bearer_token(headers)
    if token is None:
        return f"no API key sent; {HOW_TO_SEND}"
    sent = token.encode("utf-8")
    # Compare with every key in constant time, so timing tells nothing about any key.
    matches = [hmac.compare_digest(sent, key.encode("utf-8")) for key in keys]
    return None if any(matches) else f"API key not accepted; {HOW_TO_SEND}"
