"""Check the production (GCP) set-up before any work starts: one clear line per problem.

A training run on GKE first builds an image with Cloud Build and starts pods, so
a wrong bucket or a missing secret would otherwise surface many minutes (and a
long traceback) later. ``scripts/run_training_pipeline.sh`` runs this first::

    python -m steps.gcp_preflight [--stack-file zenml_stack.yaml] [--config configs/gcp.yaml] [--no-zenml]

In order, stopping at the first problem (exit status 2, one line naming what is
missing and how to set it):

1. ``configs/gcp.env`` (and environment overrides): every value set and well formed;
2. the files rendered from it are up to date;
3. the stack file: every component type and flavor is one ZenML knows, with its
   integration installed;
4. Google credentials exist (skipped for the GCS emulator, ``STORAGE_EMULATOR_HOST``,
   which needs none);
5. the bucket exists and these credentials may read it, and the run config's data
   source holds photos of both classes;
6. (unless ``--no-zenml``) the ZenML server answers and holds every secret the
   stack file refers to (the MLflow user), with the keys it names.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from steps.gcp_settings import (
    RUN_CONFIG_FILE,
    STACK_FILE,
    GcpSettings,
    GcpSettingsError,
    load_gcp_settings,
    log_plainly_to_stderr,
    rendered_files,
)

LOGGER = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[1]
STORAGE_SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
CREDENTIALS_HELP = (
    "run `gcloud auth application-default login` (laptop), authenticate with "
    "google-github-actions/auth (CI) or Workload Identity (GKE), or set "
    "GOOGLE_APPLICATION_CREDENTIALS to a service account key file"
)


class PreflightError(RuntimeError):
    """One problem with the set-up; the message names it and how to fix it, on one line."""


def _one_line(text: object) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()


def check_settings() -> GcpSettings:
    """configs/gcp.env plus environment overrides, validated (names, bucket form)."""
    try:
        return load_gcp_settings()
    except GcpSettingsError as exc:
        raise PreflightError(_one_line(exc)) from None


def check_rendered_files() -> None:
    """The stack file, run config and k8s settings must be what configs/gcp.env renders to."""
    for path, text in rendered_files(load_gcp_settings(use_environ=False)).items():
        if not path.is_file() or path.read_text() != text:
            raise PreflightError(
                f"{path.relative_to(REPO_ROOT)} is out of date with configs/gcp.env: "
                "run `python -m steps.gcp_settings render` and commit the result"
            )


def _known_flavors() -> dict[tuple[str, str], Any]:
    from zenml.stack.flavor_registry import FlavorRegistry

    registry = FlavorRegistry()
    known = {}
    for flavor_class in registry.builtin_flavors + registry.integration_flavors:
        flavor = flavor_class()
        known[(str(getattr(flavor.type, "value", flavor.type)), str(flavor.name))] = flavor
    return known


def _integration_of(flavor: Any) -> str | None:
    """The ZenML integration a flavor belongs to (zenml.integrations.<name>....), if any."""
    match = re.match(r"zenml\.integrations\.([a-z0-9_]+)\.", type(flavor).__module__)
    return match[1] if match else None


def check_stack_file(path: Path) -> dict[str, Any]:
    """Every component type and flavor in the stack file is known to ZenML and installed."""
    from zenml.enums import StackComponentType
    from zenml.integrations.registry import integration_registry

    if not path.is_file():
        raise PreflightError(
            f"stack file {path} not found; render it with `python -m steps.gcp_settings render`"
        )
    data = yaml.safe_load(path.read_text()) or {}
    components = data.get("components")
    if not data.get("stack_name") or not isinstance(components, dict) or not components:
        raise PreflightError(f"{path} is not a `zenml stack export` file (stack_name and components)")
    types = sorted(t.value for t in StackComponentType)
    known = _known_flavors()
    for kind, entries in components.items():
        if kind not in types:
            raise PreflightError(
                f"{path.name}: unknown stack component type {kind!r} (known: {', '.join(types)}); "
                "fix render_stack in steps/gcp_settings.py and re-render"
            )
        for entry in entries:
            name, flavor_name = entry.get("name"), entry.get("flavor")
            flavor = known.get((kind, str(flavor_name)))
            if flavor is None:
                choices = sorted(f for k, f in known if k == kind)
                raise PreflightError(
                    f"{path.name}: {kind} {name!r} has flavor {flavor_name!r}, which ZenML does not "
                    f"know for {kind} (known: {', '.join(choices)}); fix render_stack in "
                    "steps/gcp_settings.py and re-render"
                )
            integration = _integration_of(flavor)
            if integration and not integration_registry.is_installed(integration):
                raise PreflightError(
                    f"{path.name}: {kind} {name!r} (flavor {flavor_name}) needs the ZenML "
                    f"{integration!r} integration, which is not installed: pip install -r requirements.txt"
                )
    return data


def check_credentials() -> Any:
    """Application default credentials for GCS, or None for the emulator (which needs none)."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:
        LOGGER.info("gcp preflight: GCS emulator at %s, no credentials needed", emulator)
        return None
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        credentials, _ = google.auth.default(scopes=[STORAGE_SCOPE])
    except DefaultCredentialsError:
        raise PreflightError(f"no Google credentials found: {CREDENTIALS_HELP}") from None
    return credentials


def _data_source(config: Path, settings: GcpSettings) -> str:
    """The source the run will read: the run config's `parameters.source`, else the settings' default."""
    if config.is_file():
        data = yaml.safe_load(config.read_text()) or {}
        source = (data.get("parameters") or {}).get("source")
        if source:
            return str(source)
    return settings.raw_data_uri


def check_bucket_and_data(settings: GcpSettings, credentials: Any, source: str) -> int:
    """The bucket exists and is readable; a gs:// source holds both classes. Returns the photo count."""
    import gcsfs

    from steps.data_sources import DataSourceError, list_source

    bucket = settings.GCS_BUCKET
    fs = gcsfs.GCSFileSystem(project=settings.GCP_PROJECT, token=credentials or "anon")
    try:
        fs.info(bucket)
    except FileNotFoundError:
        raise PreflightError(
            f"bucket gs://{bucket} does not exist: create it (gcloud storage buckets create gs://{bucket} "
            f"--project={settings.GCP_PROJECT} --location={settings.GCP_REGION} "
            "--uniform-bucket-level-access) or fix GCS_BUCKET in configs/gcp.env"
        ) from None
    except Exception as exc:  # gcsfs: PermissionError / OSError / HttpError for 401, 403, network
        text = _one_line(exc)
        if isinstance(exc, PermissionError) or re.search(r"\b40[13]\b|Forbidden|Unauthorized", text):
            raise PreflightError(
                f"no access to gs://{bucket} ({text[:200]}): grant the account you run as "
                "roles/storage.objectAdmin on the bucket, or fix GCS_BUCKET in configs/gcp.env; "
                + CREDENTIALS_HELP
            ) from None
        raise PreflightError(f"cannot reach gs://{bucket}: {text[:300]}") from None
    if not source.startswith("gs://"):
        return 0
    gcsfs.GCSFileSystem.clear_instance_cache()
    try:
        files, _ = list_source(source)
    except DataSourceError as exc:
        raise PreflightError(
            f"data source {source}: {_one_line(exc)}; upload the photos "
            f"(gcloud storage cp -r PetImages/Cat PetImages/Dog {source.rstrip('/')}/) or fix "
            "parameters.source in the run config"
        ) from None
    return len(files)


def check_zenml_secrets(stack: dict[str, Any]) -> None:
    """The ZenML server answers and holds every secret the stack file refers to, with its keys."""
    from zenml.client import Client
    from zenml.utils import secret_utils

    try:
        client = Client()
        url = client.zen_store.url
    except Exception as exc:
        raise PreflightError(
            f"cannot connect to the ZenML server ({_one_line(exc)[:200]}): set ZENML_STORE_URL and "
            "ZENML_STORE_API_KEY, or run `zenml login <server url>`"
        ) from None
    for kind, entries in stack["components"].items():
        for entry in entries:
            for field, value in (entry.get("configuration") or {}).items():
                if not secret_utils.is_secret_reference(value):
                    continue
                ref = secret_utils.parse_secret_reference(value)
                where = f"{kind} {entry.get('name')!r} ({field})"
                try:
                    keys = client.get_secret(ref.name).secret_values.keys()
                except KeyError:
                    raise PreflightError(
                        f"ZenML secret {ref.name!r} used by {where} does not exist on {url}: create it "
                        f"with `zenml secret create {ref.name} --username=<user> --password=<password>`"
                    ) from None
                if ref.key not in keys:
                    raise PreflightError(
                        f"ZenML secret {ref.name!r} has no key {ref.key!r} (needed by {where}): "
                        f"`zenml secret update {ref.name} --{ref.key}=<value>`"
                    )


def preflight(stack_file: Path = STACK_FILE, config: Path = RUN_CONFIG_FILE, zenml: bool = True) -> None:
    """Run every check in order; raise PreflightError at the first problem."""
    settings = check_settings()
    check_rendered_files()
    stack = check_stack_file(stack_file)
    credentials = check_credentials()
    source = _data_source(config, settings)
    photos = check_bucket_and_data(settings, credentials, source)
    if zenml:
        check_zenml_secrets(stack)
    LOGGER.info(
        "gcp preflight: settings, %s, bucket gs://%s and %s (%d photos) are ready",
        stack_file.name, settings.GCS_BUCKET, source, photos,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack-file", type=Path, default=STACK_FILE)
    parser.add_argument("--config", type=Path, default=RUN_CONFIG_FILE, help="run config (parameters.source)")
    parser.add_argument("--no-zenml", action="store_true", help="skip the ZenML server checks")
    args = parser.parse_args(argv)
    log_plainly_to_stderr(LOGGER)
    try:
        preflight(args.stack_file, args.config, zenml=not args.no_zenml)
    except PreflightError as exc:
        LOGGER.error("gcp preflight: %s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
