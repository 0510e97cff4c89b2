"""A small client for TorchServe's inference, management and metrics APIs.

Used by the deployment pipeline, the smoke test, the tests and the benchmark,
so every caller sends the token header the same way and gets the server's own
error message back instead of a bare status code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import requests


class TorchServeAPIError(RuntimeError):
    """A management or inference call failed; the message carries TorchServe's reason."""

    def __init__(self, what: str, response: requests.Response) -> None:
        try:
            reason = response.json().get("message", response.text)
        except ValueError:
            reason = response.text
        super().__init__(f"{what}: HTTP {response.status_code}: {reason}")
        self.status_code = response.status_code


@dataclass
class TorchServeClient:
    inference_url: str
    management_url: str | None = None
    metrics_url: str | None = None
    inference_token: str | None = None
    management_token: str | None = None
    timeout: float = 30.0

    @classmethod
    def for_local(cls, settings: Any) -> TorchServeClient:
        """Client for a server started by ``steps.torchserve_local`` (reads its key file)."""
        from steps.torchserve_local import read_tokens

        tokens = read_tokens(settings)
        return cls(
            inference_url=settings.inference_url,
            management_url=settings.management_url,
            metrics_url=settings.metrics_url,
            inference_token=tokens.get("inference"),
            management_token=tokens.get("management"),
        )

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _auth(token: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _management(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        if not self.management_url:
            raise ValueError("no management URL configured")
        kwargs.setdefault("timeout", self.timeout)
        response = requests.request(
            method, f"{self.management_url}{path}",
            headers=self._auth(self.management_token), **kwargs,
        )  # fmt: skip
        if response.status_code >= 400:
            raise TorchServeAPIError(what, response)
        return response.json() if response.content else None

    # ------------------------------------------------------------------ inference API

    def ping(self) -> dict[str, Any]:
        response = requests.get(
            f"{self.inference_url}/ping", headers=self._auth(self.inference_token), timeout=5
        )
        if response.status_code != 200:
            raise TorchServeAPIError("ping", response)
        return response.json()

    def predict_raw(
        self,
        model: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        version: str | None = None,
        session: requests.Session | None = None,
    ) -> requests.Response:
        """POST the raw image bytes; returns the response whatever its status."""
        path = f"/predictions/{model}" + (f"/{version}" if version else "")
        headers = {**self._auth(self.inference_token), "Content-Type": content_type}
        return (session or requests).post(
            f"{self.inference_url}{path}", data=data, headers=headers, timeout=self.timeout
        )

    # ------------------------------------------------------------------ management API

    def register(
        self, mar_name: str, initial_workers: int = 1, response_timeout: int | None = None
    ) -> dict[str, Any]:
        """Register an archive from the model store and wait until its workers are up."""
        params: dict[str, Any] = {
            "url": mar_name,
            "initial_workers": initial_workers,
            "synchronous": "true",
        }
        if response_timeout:
            params["response_timeout"] = response_timeout
        return self._management("POST", "/models", f"registering {mar_name}", params=params, timeout=300)

    def describe(self, model: str, version: str | None = None) -> list[dict[str, Any]]:
        path = f"/models/{model}" + (f"/{version}" if version else "")
        return self._management("GET", path, f"describing {model} {version or ''}".strip())

    def versions(self, model: str) -> list[str]:
        """Registered versions of a model, or [] when it is not registered."""
        try:
            return [entry["modelVersion"] for entry in self.describe(model, "all")]
        except TorchServeAPIError as exc:
            if exc.status_code == 404:
                return []
            raise

    def default_version(self, model: str) -> str | None:
        try:
            return self.describe(model)[0]["modelVersion"]
        except TorchServeAPIError as exc:
            if exc.status_code == 404:
                return None
            raise

    def set_default(self, model: str, version: str) -> None:
        self._management("PUT", f"/models/{model}/{version}/set-default", f"promoting {model} {version}")

    def unregister(self, model: str, version: str) -> None:
        self._management("DELETE", f"/models/{model}/{version}", f"removing {model} {version}")

    def wait_for_workers(
        self, model: str, version: str, count: int = 1, timeout: float = 120.0
    ) -> list[dict[str, Any]]:
        """Block until ``count`` workers of a version report READY."""
        deadline = time.monotonic() + timeout
        workers: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            workers = self.describe(model, version)[0].get("workers", [])
            if sum(w.get("status") == "READY" for w in workers) >= count:
                return workers
            time.sleep(0.5)
        raise TimeoutError(
            f"{model} {version}: {count} READY worker(s) expected within {timeout:.0f}s, "
            f"have {[w.get('status') for w in workers]}"
        )

    # ------------------------------------------------------------------ metrics API

    def metrics_text(self) -> str:
        if not self.metrics_url:
            raise ValueError("no metrics URL configured")
        response = requests.get(f"{self.metrics_url}/metrics", timeout=10)
        if response.status_code != 200:
            raise TorchServeAPIError("metrics", response)
        return response.text
