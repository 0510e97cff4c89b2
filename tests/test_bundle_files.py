"""Files that are not model bundles are refused in one line, before packaging or deploying."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import torch

from handlers.models import BundleError, ModelMetadata, SimpleCNN, load_bundle, make_bundle
from pipelines.deployment import main as deploy_main
from steps.packaging import PackagingError, build_mar

FIX = "pass the model.pt the training pipeline wrote"


def _bundle(**metadata_changes: object) -> dict:
    bundle = make_bundle(SimpleCNN(2), ModelMetadata(architecture="simple_cnn", image_size=32))
    bundle["metadata"].update(metadata_changes)
    return bundle


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    """What QA deployed by mistake: random bytes, a pickled object, a bundle with an extra key."""
    files = {name: tmp_path / f"{name}.pt" for name in ("random", "pickled", "extra_key")}
    files["random"].write_bytes(os.urandom(4096))
    torch.save({"format": argparse.Namespace(a=1)}, files["pickled"])
    torch.save(_bundle(trained_on="laptop"), files["extra_key"])
    return files


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("random", "not a file torch.save wrote"),
        ("pickled", "it holds objects other than tensors and plain data"),
        ("extra_key", "unknown metadata keys trained_on"),
    ],
)
def test_a_file_that_is_not_a_bundle_is_refused_in_one_line(tmp_path, name, reason):
    path = _bad_files(tmp_path)[name]
    with pytest.raises(BundleError) as info:
        load_bundle(path)
    message = str(info.value)
    assert message == f"{path} is not a model bundle ({reason}); {FIX}"


@pytest.mark.parametrize("names", [["cat", "dog", "bird"], ["cat"]])
def test_class_names_that_do_not_match_the_classifier_are_refused_before_packaging(tmp_path, names):
    """TorchServe would fail with 'Failed to start workers' and the cause only in its model log."""
    with pytest.raises(PackagingError) as info:
        build_mar(_bundle(class_names=names), tmp_path)
    message = str(info.value)
    assert f"has {len(names)} names but the classifier has 2 outputs" in message
    assert "\n" not in message
    assert not list(tmp_path.glob("*.mar"))


def test_packaging_refuses_a_file_that_is_not_a_bundle(tmp_path):
    with pytest.raises(PackagingError, match=r"random\.pt is not a model bundle"):
        build_mar(_bad_files(tmp_path)["random"], tmp_path / "out")


@pytest.mark.parametrize("flags", [[], ["--no-zenml"]])
def test_deploy_command_exits_2_with_one_line(tmp_path, caplog, flags):
    """Both the ZenML and plain paths check --bundle before any pipeline or server starts."""
    for path in _bad_files(tmp_path).values():
        caplog.clear()
        assert deploy_main(["--bundle", str(path), *flags]) == 2
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and errors[0].startswith(f"deployment failed: {path} is not a model bundle")
