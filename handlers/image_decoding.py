"""Turn untrusted bytes into an RGB image, or a precise reason why not.

Training ingest and the TorchServe handler both call ``decode_image``, so a
photo that trains is a photo that serves, and a file ingest quarantines is a
request the server refuses with the same error code. The format is sniffed
from the bytes, never from a file name: the public dataset has PNGs and BMPs
behind ``.jpg`` names.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from handlers.model_spec import MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE

# Magic numbers of the formats we accept, checked in order.
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"BM", 0, "BMP"),
    (b"WEBP", 8, "WEBP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
)
ACCEPTED_FORMATS: tuple[str, ...] = tuple(sorted({fmt for _, _, fmt in _SIGNATURES}))


class ImageDecodeError(ValueError):
    """A bad image. ``code`` is stable and machine-readable; ``message`` is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image plus what it looked like before normalisation."""

    image: Image.Image
    source_format: str
    source_mode: str
    width: int
    height: int
    decoder_warnings: int


def sniff_format(data: bytes) -> str | None:
    """Return the image format named by the leading bytes, or None."""
    for magic, offset, fmt in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            if fmt == "WEBP" and data[:4] != b"RIFF":
                continue
            return fmt
    return None


def decode_image(
    data: bytes,
    max_pixels: int = MAX_IMAGE_PIXELS,
    min_side: int = MIN_IMAGE_SIDE,
) -> DecodedImage:
    """Decode, orient and convert to RGB; raise ImageDecodeError for anything unusable."""
    if not data:
        raise ImageDecodeError("empty_image", "the image is empty (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageDecodeError(
            "not_an_image",
            f"the bytes are not a supported image; send one of {', '.join(ACCEPTED_FORMATS)}",
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = _open_checked(data, fmt, max_pixels, min_side)
        source_mode = image.mode
        try:
            image.load()
            image = ImageOps.exif_transpose(image)
            rgb = to_rgb(image)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise _load_error(exc) from exc
    return DecodedImage(
        image=rgb,
        source_format=fmt,
        source_mode=source_mode,
        width=rgb.width,
        height=rgb.height,
        decoder_warnings=len(caught),
    )


def _open_checked(data: bytes, fmt: str, max_pixels: int, min_side: int) -> Image.Image:
    """Read only the header, so oversized images are refused before any pixel is decoded."""
    try:
        image = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as exc:
        # Pillow's own guard (about 179 megapixels) fired while reading the header; name our
        # limit too, or the message would suggest anything under Pillow's is accepted.
        raise ImageDecodeError(
            "image_too_large",
            f"{exc} The limit here is {max_pixels:,} pixels; resize the image before sending it",
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError("corrupt_image", f"the {fmt} header cannot be read ({exc})") from exc
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            "image_too_large",
            f"{width}x{height} is {width * height:,} pixels, over the limit of {max_pixels:,}; "
            "resize the image before sending it",
        )
    if min(width, height) < min_side:
        raise ImageDecodeError(
            "image_too_small",
            f"{width}x{height} is smaller than the minimum side of {min_side} pixels",
        )
    return image


def _load_error(exc: Exception) -> ImageDecodeError:
    text = str(exc)
    if "truncated" in text.lower() or isinstance(exc, EOFError):
        return ImageDecodeError("truncated_image", f"the image data ends early ({text})")
    return ImageDecodeError("corrupt_image", f"the image data cannot be decoded ({text})")


def to_rgb(image: Image.Image) -> Image.Image:
    """Normalise any Pillow mode to 8-bit RGB; transparency is flattened onto white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit and float greyscale: rescale the value range to 0..255.
        lo, hi = image.getextrema()
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        image = image.point(lambda v: (v - lo) * scale).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        rgba = image.convert("RGBA")
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")
