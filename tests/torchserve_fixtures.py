"""Shared fixtures for the serving tests: a tiny model, its .mar and ONE real TorchServe.

Starting TorchServe (Java) and a worker costs seconds on 2 cores, so the server
is session-scoped and shared by every serving test. Tests that change server
state (killing a worker) restore it before they return.

Use from a test module with ``from tests.torchserve_fixtures import *  # noqa: F403``
or register it once in conftest.py with ``pytest_plugins = ["tests.torchserve_fixtures"]``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from handlers.models import ModelMetadata, build_model, make_bundle
from handlers.preprocessing import preprocess_bytes

# What ``from tests.torchserve_fixtures import *`` brings in: the fixtures only.
__all__ = ["cat_photo", "dog_photo", "tiny_bundle", "tiny_mar", "torchserve_server", "ts_client"]

MODEL_NAME = "catsdogs"
TEST_IMAGE_SIZE = 64
# Photos the tiny test model is fitted on, so answers about them are known.
KNOWN_CAT = "Cat/1.jpg"
KNOWN_DOG = "Dog/1.jpg"


def fitted_tiny_bundle(petimages: Path, version: str = "test-1", swap_labels: bool = False) -> dict:
    """A simple_cnn fitted on the two known photos: cheap, deterministic, and it answers them
    correctly, which is all the serving tests and the smoke test need from a model.
    ``swap_labels`` makes a model that gets both wrong (a regression the smoke test must catch)."""
    torch.manual_seed(0)
    metadata = ModelMetadata(architecture="simple_cnn", image_size=TEST_IMAGE_SIZE, version=version)
    model = build_model("simple_cnn", 2)
    x = torch.stack(
        [
            preprocess_bytes((petimages / name).read_bytes(), TEST_IMAGE_SIZE, metadata.mean,
                             metadata.std)
            for name in (KNOWN_CAT, KNOWN_DOG)
        ]
    )  # fmt: skip
    y = torch.tensor([1, 0] if swap_labels else [0, 1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(40):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    return make_bundle(model, metadata)


@pytest.fixture(scope="session")
def cat_photo(petimages_dir: Path) -> bytes:
    """The real photo the tiny model is fitted to call a cat."""
    return (petimages_dir / KNOWN_CAT).read_bytes()


@pytest.fixture(scope="session")
def dog_photo(petimages_dir: Path) -> bytes:
    """The real photo the tiny model is fitted to call a dog."""
    return (petimages_dir / KNOWN_DOG).read_bytes()


# Several modules star-import these fixtures, and pytest then keeps one copy of each
# session fixture per module. So what costs seconds is built once per test session
# here: the fitted model, its .mar and the server (the first start wins, the last
# teardown stops it).
_SHARED: dict = {"settings": None, "users": 0, "bundle": None, "mar": None}


@pytest.fixture(scope="session")
def tiny_bundle(petimages_dir: Path) -> dict:
    if _SHARED["bundle"] is None:
        _SHARED["bundle"] = fitted_tiny_bundle(petimages_dir)
    return _SHARED["bundle"]


@pytest.fixture(scope="session")
def tiny_mar(tiny_bundle: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from steps.packaging import build_mar

    if _SHARED["mar"] is None:
        _SHARED["mar"] = build_mar(tiny_bundle, tmp_path_factory.mktemp("mar"), model_name=MODEL_NAME)
    return _SHARED["mar"]


@pytest.fixture(scope="session")
def torchserve_server(tiny_mar: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A real TorchServe on free ports with the tiny model registered as the default."""
    from steps import torchserve_local

    if _SHARED["settings"] is None:
        _SHARED["settings"] = _start_test_server(tiny_mar, tmp_path_factory)
    _SHARED["users"] += 1
    try:
        yield _SHARED["settings"]
    finally:
        _SHARED["users"] -= 1
        if _SHARED["users"] == 0:
            torchserve_local.stop(_SHARED["settings"])
            _SHARED["settings"] = None


def _start_test_server(tiny_mar: Path, tmp_path_factory: pytest.TempPathFactory):
    from steps import torchserve_local
    from steps.torchserve_client import TorchServeClient

    settings = torchserve_local.ServerSettings.for_tests(
        tmp_path_factory.mktemp("torchserve"), job_queue_size=64
    )
    settings.model_store.mkdir(parents=True, exist_ok=True)
    shutil.copy2(tiny_mar, settings.model_store / tiny_mar.name)
    settings = torchserve_local.start(settings)
    try:
        client = TorchServeClient.for_local(settings)
        client.register(tiny_mar.name, initial_workers=1)
        client.wait_for_workers(MODEL_NAME, "test-1")
    except Exception:
        torchserve_local.stop(settings)
        raise
    return settings


@pytest.fixture(scope="session")
def ts_client(torchserve_server):
    from steps.torchserve_client import TorchServeClient

    return TorchServeClient.for_local(torchserve_server)


# ---------------------------------------------------------------- test images


def encode(image, fmt: str, **save_kwargs) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_kwargs)
    return buffer.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height: a decompression bomb's calling card."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def odd_images(photo: bytes) -> dict[str, bytes]:
    """The same photo in every format and mode the handler must accept."""
    import io

    from PIL import Image

    rgb = Image.open(io.BytesIO(photo)).convert("RGB")
    rgb.thumbnail((160, 160))
    gray16 = rgb.convert("L").point(lambda v: v * 256).convert("I;16")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    return {
        "jpeg": photo,
        "png": encode(rgb, "PNG"),
        "gif": encode(rgb.convert("P"), "GIF"),
        "webp": encode(rgb, "WEBP"),
        "bmp": encode(rgb, "BMP"),
        "tiff": encode(rgb, "TIFF"),
        "grayscale": encode(rgb.convert("L"), "JPEG"),
        "cmyk": encode(rgb.convert("CMYK"), "JPEG"),
        "palette_alpha": encode(rgb.convert("RGBA").convert("P"), "PNG"),
        "rgba": encode(rgb.convert("RGBA"), "PNG"),
        "gray16": encode(gray16, "PNG"),
        "exif_rotated": encode(rgb, "JPEG", exif=exif),
    }


def bad_images(photo: bytes) -> dict[str, tuple[bytes, str, int]]:
    """name -> (body, expected error code, expected HTTP status)."""

    from PIL import Image

    tiny = encode(Image.new("RGB", (8, 8), "white"), "PNG")
    return {
        "empty": (b"", "empty_image", 400),
        "text": (b"hello, I am not a photo", "not_an_image", 415),
        "truncated": (photo[: len(photo) // 3], "truncated_image", 400),
        "corrupt": (photo[:20] + b"\x00" * 2000, "corrupt_image", 400),
        "too_small": (tiny, "image_too_small", 400),
        "bomb": (png_claiming_size(20_000, 20_000), "image_too_large", 413),
        "pdf": (b"%PDF-1.4\n" + b"0" * 100, "not_an_image", 415),
    }
