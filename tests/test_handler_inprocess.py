"""The handler in-process, with TorchServe's real Context objects (no server, no mocks).

Fast checks of what the server tests cannot see directly: the handler's tensor is
the training pipeline's tensor, a batch answers item by item with per-item
statuses, and a label map that disagrees with the model is refused at load.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from ts.context import Context, RequestProcessor

from handlers.cpu_limit import cpu_limit, threads_per_worker
from handlers.image_classifier import ImageClassifierHandler
from handlers.preprocessing import eval_transform
from handlers.serving_metrics import CUSTOM_METRICS
from steps.packaging import SERVING_MODULES, PackagingError, build_mar
from tests.torchserve_fixtures import KNOWN_CAT, KNOWN_DOG, fitted_tiny_bundle

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(petimages_dir: Path) -> dict:
    return fitted_tiny_bundle(petimages_dir)


@pytest.fixture(scope="module")
def unpacked_mar(bundle: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .mar unpacked the way TorchServe unpacks it into the model directory."""
    mar = build_mar(bundle, tmp_path_factory.mktemp("mar"))
    target = tmp_path_factory.mktemp("model_dir")
    zipfile.ZipFile(mar).extractall(target)
    return target


@pytest.fixture(scope="module")
def handler(unpacked_mar: Path) -> ImageClassifierHandler:
    manifest = json.loads((unpacked_mar / "MAR-INF" / "MANIFEST.json").read_text())
    config = yaml.safe_load((unpacked_mar / "model-config.yaml").read_text())
    context = Context("catsdogs", str(unpacked_mar), manifest, 8, None, "0.12.0",
                      model_yaml_config=config)  # fmt: skip
    handler = ImageClassifierHandler()
    handler.initialize(context)
    return handler


def _context(n: int) -> Context:
    context = Context("catsdogs", "", {}, n, None, "0.12.0")
    context.request_processor = [RequestProcessor({}) for _ in range(n)]
    return context


def test_handler_tensor_equals_training_tensor(handler, petimages_dir: Path):
    """Same photo, same tensor: training's dataset class vs the handler's request path."""
    from steps.training import ImageDataset

    for name, label in ((KNOWN_CAT, "cat"), (KNOWN_DOG, "dog")):
        path = petimages_dir / name
        frame = pd.DataFrame({"uri": [str(path)], "version": ["1"], "label": [label]})
        meta = handler.metadata
        # Training builds its transform from the bundle metadata, the handler from the .mar.
        dataset = ImageDataset(frame, eval_transform(meta.image_size, meta.mean, meta.std))
        training_tensor, _ = dataset[0]
        serving_tensor = handler.preprocess_one({"body": path.read_bytes()})
        assert serving_tensor.shape == (3, meta.image_size, meta.image_size)
        assert torch.equal(training_tensor, serving_tensor)


def test_batch_answers_each_item_with_its_own_status(handler, petimages_dir: Path):
    cat = (petimages_dir / KNOWN_CAT).read_bytes()
    dog = (petimages_dir / KNOWN_DOG).read_bytes()
    rows = [{"body": cat}, {"body": b""}, {"data": dog}, {"body": cat[:200]}, {"nothing": b"x"}]
    context = _context(len(rows))
    answers = handler.handle(rows, context)
    statuses = [context.get_response_status(i)[0] for i in range(len(rows))]
    assert statuses == [200, 400, 200, 400, 400]
    assert answers[0]["label"] == "cat" and answers[2]["label"] == "dog"
    assert answers[1]["error"] == "empty_image"
    assert answers[3]["error"] in ("truncated_image", "corrupt_image")
    assert answers[4]["error"] == "bad_request"
    assert all(context.get_response_content_type(i) == "application/json" for i in range(5))


def test_all_bad_batch_never_calls_the_model(handler):
    context = _context(2)
    answers = handler.handle([{"body": b""}, {"body": b"xx"}], context)
    assert [a["error"] for a in answers] == ["empty_image", "not_an_image"]


def test_label_map_must_match_training_class_order(bundle: dict, unpacked_mar: Path, tmp_path):
    (tmp_path / "index_to_name.json").write_text(json.dumps({"0": "dog", "1": "cat"}))
    with pytest.raises(RuntimeError, match="index_to_name"):
        ImageClassifierHandler().load(unpacked_mar / "model.pt", tmp_path / "index_to_name.json")


def test_mar_holds_only_serving_files(unpacked_mar: Path):
    names = {p.relative_to(unpacked_mar).as_posix() for p in unpacked_mar.rglob("*") if p.is_file()}
    expected = {"image_classifier.py", "model.pt", "model-config.yaml", "index_to_name.json",
                "MAR-INF/MANIFEST.json", *(f"handlers/{m}" for m in SERVING_MODULES)}  # fmt: skip
    assert names == expected
    assert json.loads((unpacked_mar / "index_to_name.json").read_text()) == {"0": "cat", "1": "dog"}
    manifest = json.loads((unpacked_mar / "MAR-INF" / "MANIFEST.json").read_text())
    assert manifest["model"]["modelVersion"] == "test-1"
    for module in SERVING_MODULES:
        source = (unpacked_mar / "handlers" / module).read_text()
        assert "import zenml" not in source and "import mlflow" not in source, module


def test_packaging_refuses_what_is_not_a_bundle(tmp_path):
    with pytest.raises(PackagingError, match="not a model bundle"):
        build_mar({"state_dict": {}}, tmp_path)


def test_metrics_yaml_declares_every_custom_metric():
    config = yaml.safe_load((REPO / "serve_config" / "metrics.yaml").read_text())
    declared = {
        entry["name"]: (kind, entry["unit"], entry["dimensions"])
        for kind, entries in config["model_metrics"].items()
        for entry in entries
    }
    for name, spec in CUSTOM_METRICS.items():
        assert declared.get(name) == spec, name
    assert config["ts_metrics"]["counter"]  # TorchServe's own metrics stay on


@pytest.mark.parametrize(
    ("files", "affinity", "expected"),
    [
        ({"sys/fs/cgroup/cpu.max": "150000 100000"}, 8, 2),  # v2, 1.5 CPUs -> 2
        ({"sys/fs/cgroup/cpu.max": "max 100000"}, 4, 4),  # v2 unlimited -> affinity
        ({"sys/fs/cgroup/cpu/cpu.cfs_quota_us": "100000",
          "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000"}, 64, 1),  # v1, 1 CPU
        ({}, 3, 3),  # no cgroup files
    ],
)  # fmt: skip
def test_cpu_limit_comes_from_cgroup_not_node(tmp_path, monkeypatch, files, affinity, expected):
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.delenv("CATSDOGS_CPU_LIMIT", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(affinity)))
    assert cpu_limit(tmp_path) == expected


def test_workers_times_threads_never_exceed_the_limit():
    for cpus in (1, 2, 3, 8):
        for workers in (1, 2, 4):
            threads = threads_per_worker(workers, cpus)
            assert threads >= 1
            assert workers * threads <= max(cpus, workers)
