""".dockerignore keeps what the Dockerfiles COPY and nothing heavy or private.

Every image is built with the repository root as context (`docker build -f
docker/<image>.Dockerfile .`, and ZenML's Cloud Build builds with
`build_context_root: .`). The rules are evaluated with docker-py's matcher, the
one ZenML uses to assemble the context it uploads to Cloud Build.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from docker.utils.build import PatternMatcher, exclude_paths

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((REPO_ROOT / "docker").glob("*.Dockerfile"))
# Must never reach a build context: environments, run outputs, history, models.
NEVER = [".venv/bin/python", ".venv/lib/python3.11/site-packages/torch/__init__.py", "runs/model.pt",
         "runs/kind-models/catsdogs/1/catsdogs.mar", ".git/HEAD", ".git/objects/ab/cdef", "model.mar",
         "handlers/model.pt", "serve_config/catsdogs.mar", "handlers/__pycache__/models.cpython-311.pyc",
         ".pytest_cache/v/cache/lastfailed", "mlruns/0/meta.yaml", "key_file.json"]  # fmt: skip


def patterns() -> list[str]:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def copy_sources(dockerfile: Path) -> list[str]:
    """The build-context paths of every COPY / ADD (not those copied from another stage)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    sources = []
    for line in text.splitlines():
        match = re.match(r"^\s*(COPY|ADD)\s+(.*)$", line, re.IGNORECASE)
        if not match:
            continue
        flags = [w for w in match[2].split() if w.startswith("--")]
        if any(flag.startswith("--from") for flag in flags):
            continue
        words = [w for w in match[2].split() if not w.startswith("--")]
        sources += [w.rstrip("/") for w in words[:-1]]
    return sources


def tracked_files(under: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", "--", under], cwd=REPO_ROOT, capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    return [p for p in out.split() if not p.endswith(".pyc")]


def test_dockerfiles_copy_something() -> None:
    assert DOCKERFILES
    assert copy_sources(REPO_ROOT / "docker" / "serving.Dockerfile")
    assert "requirements.txt" in copy_sources(REPO_ROOT / "docker" / "trainer.Dockerfile")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copy_source_is_in_the_context(dockerfile: Path) -> None:
    included = exclude_paths(str(REPO_ROOT), patterns())
    for source in copy_sources(dockerfile):
        assert (REPO_ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such path"
        files = tracked_files(source) if (REPO_ROOT / source).is_dir() else [source]
        assert files, f"{dockerfile.name}: COPY {source}: nothing tracked there"
        missing = [f for f in files if f not in included]
        assert not missing, f"{dockerfile.name}: COPY {source}: .dockerignore drops {missing}"


@pytest.mark.parametrize("path", NEVER)
def test_heavy_and_private_paths_are_excluded(path: str) -> None:
    assert PatternMatcher(patterns()).matches(path), f"{path} would be uploaded with the build context"


def test_the_context_is_small() -> None:
    """What ZenML would upload to Cloud Build today, on this checkout."""
    included = [p for p in exclude_paths(str(REPO_ROOT), patterns()) if (REPO_ROOT / p).is_file()]
    assert not [p for p in included if p.split("/")[0] in {".venv", "runs", ".git", "tests", "docs"}]
    size = sum((REPO_ROOT / p).stat().st_size for p in included)
    assert size < 5 * 1024 * 1024, f"build context is {size / 1e6:.1f} MB"
