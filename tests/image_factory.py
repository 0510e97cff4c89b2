"""Tiny images built in memory for the data-side unit tests (nothing is committed)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def noise_image(size: tuple[int, int] = (32, 32), seed: int = 0, mode: str = "RGB") -> Image.Image:
    """Random pixels: every seed gives different bytes (so different content hashes)."""
    rng = np.random.default_rng(seed)
    width, height = size
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    return image if mode == "RGB" else image.convert(mode)


def png_bytes(seed: int = 0, size: tuple[int, int] = (32, 32)) -> bytes:
    return encode(noise_image(size, seed), "PNG")


def jpeg_bytes(seed: int = 0, size: tuple[int, int] = (32, 32), quality: int = 90) -> bytes:
    return encode(noise_image(size, seed), "JPEG", quality=quality)


def patch_png_size(png: bytes, width: int, height: int) -> bytes:
    """Rewrite the IHDR width/height of a PNG and fix its CRC, leaving the pixel data as it was."""
    data = bytearray(png)
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF
    data[29:33] = struct.pack(">I", crc)
    return bytes(data)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_dataset(root: Path, per_class: int = 3, folders: tuple[str, str] = ("Cat", "Dog")) -> Path:
    """<root>/Cat/0.png.. and <root>/Dog/0.png..: distinct small PNGs (seeds never shared)."""
    for class_index, folder in enumerate(folders):
        for i in range(per_class):
            write(root / folder / f"{i}.png", png_bytes(seed=1000 * (class_index + 1) + i))
    return root
