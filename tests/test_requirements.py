"""requirements.txt and `zenml integration` must agree, so neither installs over the other."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements.txt"


def pinned() -> dict[str, str]:
    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{line} is not pinned with =="
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def test_every_requirement_is_pinned_exactly_once() -> None:
    names = [
        canonicalize_name(Requirement(line.split("#")[0].strip()).name)
        for line in REQUIREMENTS.read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    assert len(names) == len(set(names))
    assert pinned()["torch"] == "2.14.1"
    assert pinned()["torchvision"] == "0.29.1"


@pytest.mark.parametrize("integration", ["mlflow", "gcp", "kubernetes", "pytorch"])
def test_zenml_integration_requirements_are_satisfied_by_the_pins(integration: str) -> None:
    from zenml.integrations.registry import integration_registry

    pins = pinned()
    for text in integration_registry.select_integration_requirements(integration):
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{integration} needs {text}, which requirements.txt does not pin"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{integration} needs {text}; requirements.txt pins {name}=={pins[name]}"
        )


@pytest.mark.parametrize("integration", ["mlflow", "gcp", "kubernetes", "pytorch"])
def test_zenml_sees_the_integration_installed(integration: str) -> None:
    from zenml.integrations.registry import integration_registry

    assert integration_registry.is_installed(integration)
