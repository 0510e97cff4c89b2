"""The handler in-process, with TorchServe's real Context objects (no server, no mocks).

Fast checks of what the server tests cannot see directly, on a tiny model fitted
in the test and loaded from an unpacked ``.mar``: every request form TorchServe
hands a handler (it passes raw bodies as ``bytearray``, multipart fields under
their names, and has already parsed JSON bodies into dicts and text into str),
every bad input kind with its own status, odd-but-good images, a batch where one
bad item never touches its neighbours' answers, and the handler's tensor being
the training pipeline's tensor for the same real photo.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

from handlers.api_key import API_KEY_FILE_ENV, ApiKeyError
from handlers.cpu_limit import cpu_limit, threads_per_worker
from handlers.image_classifier import ImageClassifierHandler
from handlers.preprocessing import eval_transform
from handlers.serving_metrics import CUSTOM_METRICS
from steps.packaging import SERVING_MODULES, PackagingError, build_mar
from tests.torchserve_fixtures import *  # noqa: F403  (cat_photo, dog_photo: session fixtures)
from tests.torchserve_fixtures import (
    KNOWN_CAT,
    KNOWN_DOG,
    bad_images,
    encode,
    odd_images,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def unpacked_mar(tiny_mar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .mar unpacked the way TorchServe unpacks it into the model directory."""
    target = tmp_path_factory.mktemp("model_dir")
    zipfile.ZipFile(tiny_mar).extractall(target)
    return target


def _initialized_handler(model_dir: Path, metrics: Any = None) -> ImageClassifierHandler:
    """``initialize`` as TorchServe calls it: manifest, model-config.yaml and metrics from the .mar."""
    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    config = yaml.safe_load((model_dir / "model-config.yaml").read_text())
    context = Context("catsdogs", str(model_dir), manifest, 8, None, "0.12.0",
                      metrics=metrics, model_yaml_config=config)  # fmt: skip
    handler = ImageClassifierHandler()
    handler.initialize(context)
    return handler


@pytest.fixture(scope="module")
def handler(unpacked_mar: Path) -> ImageClassifierHandler:
    return _initialized_handler(unpacked_mar)


def _context(n: int) -> Context:
    context = Context("catsdogs", "", {}, n, None, "0.12.0")
    context.request_processor = [RequestProcessor({}) for _ in range(n)]
    return context


def _handle(handler: ImageClassifierHandler, rows: list[dict]) -> tuple[list[Any], list[int]]:
    """One batch through ``handle``: the answers and the per-item HTTP statuses."""
    context = _context(len(rows))
    answers = handler.handle(rows, context)
    assert len(answers) == len(rows)
    return answers, [context.get_response_status(i)[0] for i in range(len(rows))]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _check_answer(answer: dict, version: str = "test-1") -> None:
    assert set(answer) == {"label", "confidence", "probabilities", "model_version"}, answer
    assert set(answer["probabilities"]) == {"cat", "dog"}
    assert answer["confidence"] == answer["probabilities"][answer["label"]] >= 0.5
    assert abs(sum(answer["probabilities"].values()) - 1) < 1e-5
    assert answer["model_version"] == version


# ---------------------------------------------------------------- request forms

# How TorchServe's worker hands each client form to the handler (ts/protocol/otf_message_handler):
# raw body -> "body": bytearray; multipart -> one key per field; application/json -> parsed
# object; text/* -> str.
REQUEST_FORMS = {
    "raw body": lambda photo: {"body": bytearray(photo)},
    "raw body as bytes": lambda photo: {"body": photo},
    "multipart field data": lambda photo: {"data": bytearray(photo)},
    "multipart field file": lambda photo: {"file": bytearray(photo)},
    "json base64": lambda photo: {"body": {"image": _b64(photo)}},
    "json base64 data url": lambda photo: {"body": {"image": "data:image/jpeg;base64," + _b64(photo)}},
    "json sent as octet-stream": lambda photo: {
        "body": bytearray(json.dumps({"image": _b64(photo)}).encode())
    },
    "json sent as text/plain": lambda photo: {"body": json.dumps({"image": _b64(photo)})},
}


@pytest.mark.parametrize("form", list(REQUEST_FORMS))
def test_every_request_form_gives_the_same_answer(handler, cat_photo, dog_photo, form):
    build = REQUEST_FORMS[form]
    answers, statuses = _handle(handler, [build(cat_photo), build(dog_photo)])
    assert statuses == [200, 200]
    for answer in answers:
        _check_answer(answer)
    assert [a["label"] for a in answers] == ["cat", "dog"]
    reference, _ = _handle(handler, [{"body": cat_photo}, {"body": dog_photo}])
    assert answers == reference  # the form never changes the answer


# ---------------------------------------------------------------- bad inputs

BAD_REQUESTS: dict[str, tuple[dict, str, int]] = {
    "no field at all": ({}, "bad_request", 400),
    "wrong multipart field": ({"photo": bytearray(b"\xff\xd8\xff")}, "bad_request", 400),
    "null body": ({"body": None}, "bad_request", 400),
    "bad base64": ({"body": {"image": "***not base64***"}}, "bad_request", 400),
    "json without image": ({"body": {"picture": "abc"}}, "bad_request", 400),
    "json image not a string": ({"body": {"image": 42}}, "bad_request", 400),
    "bad json as octet-stream": ({"body": bytearray(b'{"image": "abc')}, "bad_request", 400),
    "text that is not json": ({"body": "hello there"}, "bad_request", 400),
    "base64 of text": ({"body": {"image": _b64(b"hello, not a photo")}}, "not_an_image", 415),
}


def test_every_bad_input_kind_gets_its_code_status_and_message(handler, cat_photo):
    """Decoder refusals (empty, truncated, bomb, ...) and request refusals, all in one batch."""
    cases = {name: ({"body": bytearray(body)}, code, status)
             for name, (body, code, status) in bad_images(cat_photo).items()}  # fmt: skip
    cases.update(BAD_REQUESTS)
    assert {"empty", "truncated", "text", "bomb", "too_small"} <= set(cases)
    answers, statuses = _handle(handler, [row for row, _, _ in cases.values()])
    for (name, (_row, code, status)), answer, got in zip(cases.items(), answers, statuses, strict=True):
        assert (got, answer.get("error")) == (status, code), f"{name}: {answer}"
        assert set(answer) == {"error", "message"}, name
        assert len(answer["message"]) > 10, name


def test_decompression_bomb_is_refused_from_the_header(handler):
    """A 2.5-gigapixel PNG header over a few bytes of data: refused without decoding pixels."""
    from tests.torchserve_fixtures import png_claiming_size

    bomb = png_claiming_size(50_000, 50_000)
    assert len(bomb) < 200
    answers, statuses = _handle(handler, [{"body": bytearray(bomb)}])
    assert statuses == [413]
    assert answers[0]["error"] == "image_too_large"
    assert "2500000000 pixels" in answers[0]["message"]
    assert "limit here is 40,000,000 pixels" in answers[0]["message"]


# ---------------------------------------------------------------- odd but good images


def test_every_odd_but_good_image_is_answered(handler, cat_photo):
    """Grayscale, CMYK, palette, alpha, 16-bit, EXIF-rotated; PNG, GIF, WebP, BMP, TIFF."""
    images = odd_images(cat_photo)
    assert {"grayscale", "cmyk", "palette_alpha", "rgba", "gray16", "exif_rotated",
            "png", "gif", "webp", "bmp"} <= set(images)  # fmt: skip
    answers, statuses = _handle(handler, [{"body": bytearray(b)} for b in images.values()])
    for name, answer, status in zip(images, answers, statuses, strict=True):
        assert status == 200, f"{name}: {answer}"
        _check_answer(answer)


def test_lossless_formats_give_the_tensor_of_the_pixels(handler, cat_photo):
    """PNG, BMP, TIFF and lossless WebP of one RGB image are the same tensor."""
    rgb = Image.open(io.BytesIO(cat_photo)).convert("RGB")
    expected = handler.transform(rgb)
    for fmt, kwargs in (("PNG", {}), ("BMP", {}), ("TIFF", {}), ("WEBP", {"lossless": True})):
        tensor = handler.preprocess_one({"body": encode(rgb, fmt, **kwargs)})
        assert torch.equal(tensor, expected), fmt


def test_exif_orientation_is_applied_before_the_transform(handler, cat_photo):
    """Orientation 6 (camera held upright): the model sees the photo turned 90 degrees clockwise."""
    rgb = Image.open(io.BytesIO(cat_photo)).convert("RGB").crop((0, 0, 200, 120))
    exif = Image.Exif()
    exif[0x0112] = 6
    plain = encode(rgb, "JPEG", quality=95)
    rotated = encode(rgb, "JPEG", quality=95, exif=exif)
    upright = Image.open(io.BytesIO(plain)).convert("RGB").transpose(Image.Transpose.ROTATE_270)
    assert upright.size == (120, 200)
    assert torch.equal(handler.preprocess_one({"body": rotated}), handler.transform(upright))


def test_transparent_pixels_are_flattened_onto_white(handler):
    clear = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # black, fully transparent
    white = Image.new("RGB", (64, 64), (255, 255, 255))
    tensor = handler.preprocess_one({"body": encode(clear, "PNG")})
    assert torch.equal(tensor, handler.transform(white))


# ---------------------------------------------------------------- batches


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


def test_one_bad_item_never_changes_its_neighbours_answers(handler, cat_photo, dog_photo):
    """A full batch of 8 with one bad item: the 7 good answers are those each gets alone."""
    goods = [cat_photo, dog_photo, *odd_images(cat_photo).values()][:7]
    rows: list[dict] = [{"body": bytearray(b)} for b in goods]
    rows.insert(3, {"body": bytearray(b"%PDF-1.4 not a photo")})
    answers, statuses = _handle(handler, rows)
    assert statuses == [200, 200, 200, 415, 200, 200, 200, 200]
    assert answers[3]["error"] == "not_an_image"
    alone = [_handle(handler, [{"body": bytearray(b)}])[0][0] for b in goods]
    batched = answers[:3] + answers[4:]
    for single, in_batch in zip(alone, batched, strict=True):
        assert single["label"] == in_batch["label"]
        for name in ("cat", "dog"):
            assert in_batch["probabilities"][name] == pytest.approx(single["probabilities"][name], abs=1e-4)


def test_all_bad_batch_never_calls_the_model(handler, monkeypatch):
    def no_model(_batch: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the model must not run for a batch without a good image")

    monkeypatch.setattr(handler, "predict", no_model)
    answers, statuses = _handle(handler, [{"body": b""}, {"body": b"xx"}])
    assert [a["error"] for a in answers] == ["empty_image", "not_an_image"]
    assert statuses == [400, 415]


# ---------------------------------------------------------------- shared API key (cluster)

API_KEY = "test-api-key-" + "0123456789abcdef" * 2


def _keyed_handler(model_dir: Path, key_file: Path, metrics: Any = None) -> ImageClassifierHandler:
    """The handler as the pod loads it: $CATSDOGS_API_KEY_FILE names the Secret's file."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(API_KEY_FILE_ENV, str(key_file))
        return _initialized_handler(model_dir, metrics)


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "api-key"
    path.write_text(API_KEY + "\n")
    return path


def _handle_with_headers(handler: ImageClassifierHandler, rows: list[dict], headers: list[dict]):
    """``_handle`` with per-item request headers, as TorchServe's worker passes them."""
    context = Context("catsdogs", "", {}, len(rows), None, "0.12.0")
    context.request_processor = [RequestProcessor(h) for h in headers]
    answers = handler.handle(rows, context)
    return answers, [context.get_response_status(i)[0] for i in range(len(rows))], context


def test_without_a_key_file_no_key_is_asked_for(handler, cat_photo):
    assert handler.api_keys == ()
    answers, statuses, _ = _handle_with_headers(handler, [{"body": cat_photo}], [{}])
    assert statuses == [200] and answers[0]["label"] == "cat"


def test_shared_key_is_checked_per_item_whatever_the_header_casing(
    unpacked_mar, key_file, cat_photo, dog_photo
):
    handler = _keyed_handler(unpacked_mar, key_file)
    form_field = {"content-type": "image/jpeg"}  # TorchServe's per-field entry: not a header
    headers = [
        {"Authorization": f"Bearer {API_KEY}"},
        {},
        {"authorization": f"bearer {API_KEY}"},
        {"Authorization": "Bearer not-the-key-0123456789"},
        {"AUTHORIZATION": f"Bearer {API_KEY}", "data": form_field},
        {"authorization": form_field},
    ]
    rows = [{"body": cat_photo}, {"body": cat_photo}, {"body": dog_photo}, {"body": dog_photo},
            {"data": dog_photo}, {"authorization": cat_photo}]  # fmt: skip
    answers, statuses, context = _handle_with_headers(handler, rows, headers)
    assert statuses == [200, 401, 200, 401, 200, 401]
    assert [a.get("label") for a in answers] == ["cat", None, "dog", None, "dog", None]
    assert answers[1] == {"error": "unauthorized", "message": answers[1]["message"]}
    assert "no API key sent" in answers[1]["message"] and "not accepted" in answers[3]["message"]
    assert context.get_response_status(1) == (401, "unauthorized")
    assert context.get_response_headers(1)["WWW-Authenticate"].startswith("Bearer")
    assert all(context.get_response_content_type(i) == "application/json" for i in range(len(rows)))
    assert API_KEY not in json.dumps(answers)


def test_unauthorized_items_are_never_decoded(unpacked_mar, key_file, monkeypatch):
    handler = _keyed_handler(unpacked_mar, key_file)

    def no_decoding(_row: dict) -> torch.Tensor:
        raise AssertionError("an unauthorized upload must not be decoded")

    monkeypatch.setattr(handler, "preprocess_one", no_decoding)
    monkeypatch.setattr(handler, "predict", no_decoding)
    answers, statuses, _ = _handle_with_headers(handler, [{"body": b"x"}, {"body": b"y"}], [{}, {}])
    assert statuses == [401, 401] and {a["error"] for a in answers} == {"unauthorized"}


@pytest.mark.parametrize("content", ["", "\n \n", "too-short"])
def test_a_named_but_unusable_key_file_fails_the_load(unpacked_mar, tmp_path, content):
    path = tmp_path / "api-key"
    path.write_text(content)
    with pytest.raises(ApiKeyError, match=str(path)):
        _keyed_handler(unpacked_mar, path)
    with pytest.raises(ApiKeyError, match="cannot be read"):
        _keyed_handler(unpacked_mar, tmp_path / "absent")


def test_custom_metrics_are_emitted_through_torchserves_cache(unpacked_mar, cat_photo, caplog):
    """What the frontend turns into Prometheus series: by label, by error type, histograms."""
    cache = MetricsCacheYamlImpl(str(REPO / "serve_config" / "metrics.yaml"))
    cache.initialize_cache()
    handler = _initialized_handler(unpacked_mar, metrics=cache)
    with caplog.at_level(logging.INFO, logger="ts.metrics.caching_metric"):
        _handle(handler, [{"body": cat_photo}, {"body": b""}, {"body": b"plain text"}])
    # The worker's metric line: [METRICS]<name>.<unit>:<value>|#<dim>:<v>,...|#type:...
    line = re.compile(r"\[METRICS\](\w+)\.\w+:([^|]+)\|#([^|]*)\|")
    emitted = [m.groups() for r in caplog.records if (m := line.match(r.getMessage()))]
    assert {name for name, _, _ in emitted} == set(CUSTOM_METRICS)
    assert all(dims.startswith("ModelName:catsdogs,ModelVersion:test-1") for _, _, dims in emitted)
    counters = sorted((name, dims.split(",")[-1]) for name, value, dims in emitted
                      if name.endswith("_total") and float(value) == 1)  # fmt: skip
    assert counters == [("catsdogs_predictions_total", "Label:cat"),
                        ("catsdogs_request_errors_total", "ErrorType:empty_image"),
                        ("catsdogs_request_errors_total", "ErrorType:not_an_image")]  # fmt: skip


def test_unauthorized_items_are_counted_as_errors_by_type(unpacked_mar, key_file, cat_photo, caplog):
    cache = MetricsCacheYamlImpl(str(REPO / "serve_config" / "metrics.yaml"))
    cache.initialize_cache()
    handler = _keyed_handler(unpacked_mar, key_file, metrics=cache)
    with caplog.at_level(logging.INFO, logger="ts.metrics.caching_metric"):
        _handle_with_headers(handler, [{"body": cat_photo}] * 2, [{"Authorization": f"Bearer {API_KEY}"}, {}])
    errors = [r.getMessage() for r in caplog.records if "catsdogs_request_errors_total" in r.getMessage()]
    assert len(errors) == 1 and "ErrorType:unauthorized" in errors[0], errors


def test_label_map_must_match_training_class_order(unpacked_mar: Path, tmp_path):
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


# Run in a fresh interpreter that can only see the unpacked .mar (as TorchServe's worker
# does: the model directory is on sys.path) and cannot import training-side packages.
SERVE_FROM_ARCHIVE_ONLY = """
import json, sys
model_dir = sys.argv[1]
for blocked in ("zenml", "mlflow", "steps", "pipelines", "pandas", "sklearn"):
    sys.modules[blocked] = None  # any import of these now raises ImportError
sys.path.insert(0, model_dir)
from ts.context import Context, RequestProcessor
import image_classifier
manifest = json.load(open(model_dir + "/MAR-INF/MANIFEST.json"))
context = Context("catsdogs", model_dir, manifest, 1, None, "0.12.0")
handler = image_classifier.ImageClassifierHandler()
handler.initialize(context)
context.request_processor = [RequestProcessor({})]
answer = handler.handle([{"body": bytearray(open(sys.argv[2], "rb").read())}], context)[0]
loaded = sorted({m.split(".")[0] for m in sys.modules if sys.modules[m] is not None})
print(json.dumps({"answer": answer, "handlers_file": sys.modules["handlers"].__file__,
                  "loaded": loaded}))
"""


def test_archive_serves_without_training_packages(unpacked_mar: Path, petimages_dir: Path):
    """Serving needs torch, torchvision and the archive's own files: no ZenML, MLflow or steps."""
    photo = petimages_dir / KNOWN_CAT
    out = subprocess.run(
        [sys.executable, "-I", "-c", SERVE_FROM_ARCHIVE_ONLY, str(unpacked_mar), str(photo)],
        cwd=unpacked_mar, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["answer"]["label"] == "cat"
    assert Path(result["handlers_file"]).resolve().is_relative_to(unpacked_mar.resolve())
    assert not {"zenml", "mlflow", "steps", "pipelines"} & set(result["loaded"])


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
