"""Test isolation: every test session gets its own ZenML and MLflow state.

The environment variables are set before ZenML or MLflow is imported, so a
test run never reads or writes the user's stacks, runs or experiments.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="catsdogs-tests-"))

os.environ["ZENML_CONFIG_PATH"] = str(_SESSION_DIR / "zenml")
os.environ["ZENML_ANALYTICS_OPT_IN"] = "false"
os.environ["ZENML_LOGGING_VERBOSITY"] = "WARN"
os.environ["ZENML_ENABLE_REPO_INIT_WARNINGS"] = "false"
os.environ["CATSDOGS_RUNS_DIR"] = str(_SESSION_DIR / "runs")
os.environ["CATSDOGS_CACHE_DIR"] = str(_SESSION_DIR / "cache")
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_SESSION_DIR / 'mlflow.db'}"
os.environ.setdefault("PYTORCH_NUM_THREADS", "2")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def petimages_dir() -> Path:
    """Real photos, read-only, from CATSDOGS_PETIMAGES (default ../shared/datasets/petimages)."""
    path = Path(os.environ.get("CATSDOGS_PETIMAGES", REPO_ROOT.parent / "shared" / "datasets" / "petimages"))
    if not (path / "Cat").is_dir():
        pytest.fail(f"real photos not found at {path}; set CATSDOGS_PETIMAGES to the petimages folder")
    return path
