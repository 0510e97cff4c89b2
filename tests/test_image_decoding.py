"""decode_image: every bad-file kind gets its stable code; odd-but-good images come out as RGB."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from handlers import image_decoding
from handlers.image_decoding import (
    ACCEPTED_FORMATS,
    ImageDecodeError,
    decode_image,
    sniff_format,
    to_rgb,
)
from handlers.model_spec import MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE
from handlers.preprocessing import eval_transform, preprocess_bytes, train_transform
from tests.image_factory import encode, jpeg_bytes, noise_image, patch_png_size, png_bytes


def decode_error(data: bytes, **kwargs: int) -> ImageDecodeError:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, **kwargs)
    return info.value


# ---------------------------------------------------------------- sniffing


@pytest.mark.parametrize(
    ("fmt", "kwargs"),
    [("JPEG", {}), ("PNG", {}), ("GIF", {}), ("BMP", {}), ("WEBP", {}), ("TIFF", {})],
)
def test_sniff_format_names_every_accepted_format(fmt: str, kwargs: dict) -> None:
    assert sniff_format(encode(noise_image(), fmt, **kwargs)) == fmt
    assert fmt in ACCEPTED_FORMATS


@pytest.mark.parametrize(
    "data",
    [b"", b"hello world", b"RIFF\x00\x00\x00\x00WAVEfmt ", b"\x00\x00\x00WEBP", b"%PDF-1.4", b"\xff\xd8"],
)
def test_sniff_format_rejects_other_bytes(data: bytes) -> None:
    assert sniff_format(data) is None


def test_sniff_format_ignores_the_file_name_and_uses_bytes_only() -> None:
    # GIF87a and big-endian TIFF are recognised as well as the common variants.
    assert sniff_format(b"GIF87a" + b"\x00" * 20) == "GIF"
    assert sniff_format(b"MM\x00*" + b"\x00" * 20) == "TIFF"


# ---------------------------------------------------------------- bad files


def test_zero_bytes_is_empty_image() -> None:
    err = decode_error(b"")
    assert err.code == "empty_image"
    assert "0 bytes" in err.message


def test_random_bytes_are_not_an_image() -> None:
    data = np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert sniff_format(data) is None
    err = decode_error(data)
    assert err.code == "not_an_image"
    # The message tells the sender what to send instead.
    assert "JPEG" in err.message and "PNG" in err.message


def test_text_file_named_jpg_is_not_an_image() -> None:
    assert decode_error(b"this is a text file, not a photo\n" * 10).code == "not_an_image"


def test_jpeg_cut_in_half_is_truncated() -> None:
    data = jpeg_bytes(size=(64, 64), quality=95)
    err = decode_error(data[: len(data) // 2])
    assert err.code == "truncated_image"


def test_png_cut_short_is_truncated_or_corrupt() -> None:
    data = png_bytes(size=(64, 64))
    assert decode_error(data[: len(data) // 2]).code in {"truncated_image", "corrupt_image"}


def test_jpeg_magic_followed_by_garbage_is_a_corrupt_header() -> None:
    garbage = np.random.default_rng(3).integers(0, 256, 300, dtype=np.uint8).tobytes()
    err = decode_error(b"\xff\xd8\xff" + garbage)
    assert err.code == "corrupt_image"
    assert "JPEG" in err.message


def test_png_with_broken_header_crc_is_corrupt() -> None:
    data = bytearray(png_bytes())
    data[20] ^= 0xFF  # inside the IHDR chunk: its CRC no longer matches
    assert decode_error(bytes(data)).code == "corrupt_image"


def test_tiny_image_is_too_small() -> None:
    err = decode_error(encode(Image.new("RGB", (8, 8)), "PNG"))
    assert err.code == "image_too_small"
    assert "8x8" in err.message and str(MIN_IMAGE_SIDE) in err.message


def test_one_short_side_is_enough_to_be_too_small() -> None:
    assert decode_error(encode(Image.new("RGB", (200, MIN_IMAGE_SIDE - 1)), "PNG")).code == "image_too_small"
    # Exactly the minimum side is fine.
    decoded = decode_image(encode(Image.new("RGB", (MIN_IMAGE_SIDE, MIN_IMAGE_SIDE)), "PNG"))
    assert decoded.width == MIN_IMAGE_SIDE


def test_min_side_is_a_parameter() -> None:
    data = encode(Image.new("RGB", (20, 20)), "PNG")
    assert decode_error(data, min_side=21).code == "image_too_small"
    assert decode_image(data, min_side=20).width == 20


@pytest.mark.parametrize(("width", "height"), [(100_000, 100_000), (8000, 6000)])
def test_huge_png_header_is_refused_before_decoding(
    width: int, height: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 32x32 PNG whose header claims a huge size: decoding it would fail as truncated,
    # so image_too_large proves the size is checked from the header first.
    data = patch_png_size(png_bytes(), width, height)
    assert width * height > MAX_IMAGE_PIXELS

    def no_load(self: Image.Image) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(Image.Image, "load", no_load)
    err = decode_error(data)
    assert err.code == "image_too_large"


def test_over_max_pixels_message_names_size_and_limit() -> None:
    err = decode_error(patch_png_size(png_bytes(), 8000, 6000))
    assert "8000x6000" in err.message and "40,000,000" in err.message


def test_max_pixels_is_a_parameter() -> None:
    data = png_bytes(size=(32, 32))
    err = decode_error(data, max_pixels=32 * 32 - 1)
    assert err.code == "image_too_large"
    assert decode_image(data, max_pixels=32 * 32).width == 32


def test_error_string_starts_with_the_code() -> None:
    err = decode_error(b"nope")
    assert str(err).startswith("not_an_image: ")
    assert isinstance(err, ValueError)


# ---------------------------------------------------------------- odd but good


def assert_rgb(decoded: image_decoding.DecodedImage, size: tuple[int, int] = (32, 32)) -> None:
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == size
    assert (decoded.width, decoded.height) == size
    assert np.asarray(decoded.image).shape == (size[1], size[0], 3)


def test_plain_rgb_jpeg() -> None:
    decoded = decode_image(jpeg_bytes())
    assert_rgb(decoded)
    assert (decoded.source_format, decoded.source_mode, decoded.decoder_warnings) == ("JPEG", "RGB", 0)


def test_grayscale_is_kept_as_rgb_with_equal_channels() -> None:
    decoded = decode_image(encode(noise_image(mode="L"), "PNG"))
    assert_rgb(decoded)
    assert decoded.source_mode == "L"
    pixels = np.asarray(decoded.image)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def test_grayscale_jpeg() -> None:
    decoded = decode_image(encode(noise_image(mode="L"), "JPEG"))
    assert_rgb(decoded)
    assert (decoded.source_format, decoded.source_mode) == ("JPEG", "L")


def test_cmyk_jpeg_is_converted() -> None:
    decoded = decode_image(encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95))
    assert_rgb(decoded)
    assert (decoded.source_format, decoded.source_mode) == ("JPEG", "CMYK")
    r, g, b = np.asarray(decoded.image).reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60  # no magenta-cyan channel mix-up: it is red


def test_palette_png_with_transparency_is_flattened_on_white() -> None:
    image = Image.new("P", (32, 32), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    for x in range(16):
        for y in range(32):
            image.putpixel((x, y), 0)  # left half: transparent index
    decoded = decode_image(encode(image, "PNG", transparency=0))
    assert_rgb(decoded)
    assert decoded.source_mode == "P"
    pixels = np.asarray(decoded.image)
    assert (pixels[:, :16] == 255).all()  # transparent -> white, not black
    assert (pixels[:, 16:] == [255, 0, 0]).all()


def test_palette_gif_with_transparency() -> None:
    image = Image.new("P", (32, 32), 0)
    image.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    decoded = decode_image(encode(image, "GIF", transparency=0))
    assert_rgb(decoded)
    assert decoded.source_format == "GIF"
    assert (np.asarray(decoded.image) == 255).all()


def test_rgba_png_is_flattened_on_white() -> None:
    pixels = np.zeros((32, 32, 4), dtype=np.uint8)
    pixels[..., 1] = 255  # green
    pixels[:, 16:, 3] = 255  # right half opaque, left half fully transparent
    decoded = decode_image(encode(Image.fromarray(pixels, "RGBA"), "PNG"))
    assert_rgb(decoded)
    assert decoded.source_mode == "RGBA"
    out = np.asarray(decoded.image)
    assert (out[:, :16] == 255).all()
    assert (out[:, 16:] == [0, 255, 0]).all()


def test_la_png_is_flattened() -> None:
    decoded = decode_image(encode(noise_image(mode="LA"), "PNG"))
    assert_rgb(decoded)
    assert decoded.source_mode == "LA"


def test_16_bit_png_is_rescaled_to_8_bit() -> None:
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    decoded = decode_image(encode(Image.fromarray(ramp), "PNG"))
    assert_rgb(decoded)
    assert decoded.source_mode.startswith("I")
    out = np.asarray(decoded.image)[..., 0].astype(int)
    # The full 16-bit range maps onto the full 8-bit range (not clipped to white).
    assert out.min() <= 1 and out.max() >= 254
    assert (np.diff(out.reshape(-1)) >= 0).all()  # monotonic ramp stays monotonic


def test_16_bit_png_with_narrow_range_is_stretched() -> None:
    ramp = np.linspace(1000, 3000, 32 * 32).reshape(32, 32).astype(np.uint16)
    out = np.asarray(decode_image(encode(Image.fromarray(ramp), "PNG")).image)
    assert out.min() <= 1 and out.max() >= 254


def test_constant_16_bit_png_does_not_divide_by_zero() -> None:
    flat = np.full((32, 32), 5000, dtype=np.uint16)
    decoded = decode_image(encode(Image.fromarray(flat), "PNG"))
    assert_rgb(decoded)


def test_exif_rotated_jpeg_is_turned_upright() -> None:
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = image.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    decoded = decode_image(encode(image, "JPEG", exif=exif.tobytes()))
    assert (decoded.width, decoded.height) == (20, 40)
    assert decoded.image.size == (20, 40)
    assert decoded.image.mode == "RGB"


def test_exif_orientation_1_keeps_the_size() -> None:
    image = Image.new("RGB", (40, 20))
    exif = image.getexif()
    exif[0x0112] = 1
    assert decode_image(encode(image, "JPEG", exif=exif.tobytes())).image.size == (40, 20)


def test_png_behind_a_jpg_name_is_detected_as_png(tmp_path) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(png_bytes())
    decoded = decode_image(path.read_bytes())
    assert decoded.source_format == "PNG"
    assert_rgb(decoded)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "WEBP", "TIFF"])
def test_other_formats_decode(fmt: str) -> None:
    decoded = decode_image(encode(noise_image(), fmt))
    assert decoded.source_format == fmt
    assert_rgb(decoded)


def test_decoder_warnings_are_counted_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pillow warns (DecompressionBombWarning) between MAX_IMAGE_PIXELS and twice that.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600)
    data = png_bytes(size=(30, 30))  # 900 pixels: a warning, not an error
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a leaked warning would fail the test
        decoded = decode_image(data)
    assert decoded.decoder_warnings >= 1
    assert_rgb(decoded, (30, 30))


def test_pillow_bomb_error_is_image_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert decode_error(png_bytes(size=(32, 32))).code == "image_too_large"


def test_decoding_is_deterministic() -> None:
    data = jpeg_bytes(seed=5)
    a, b = decode_image(data).image, decode_image(data).image
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF"])
def test_damaged_files_only_ever_raise_image_decode_error(fmt: str) -> None:
    """Flipped bytes, cut files and spliced garbage: a stable code or a good RGB image, never a crash."""
    base = encode(noise_image((40, 40), seed=1), fmt)
    rng = np.random.default_rng(sum(map(ord, fmt)))
    codes = set()
    for trial in range(40):
        data = bytearray(base)
        if trial % 3 == 0:
            for i in rng.integers(0, len(data), int(rng.integers(1, 8))):
                data[i] = int(rng.integers(0, 256))
        elif trial % 3 == 1:
            data = data[: int(rng.integers(1, len(data)))]
        else:
            i = int(rng.integers(0, len(data)))
            data[i : i + 20] = rng.integers(0, 256, int(rng.integers(0, 40)), dtype=np.uint8).tobytes()
        try:
            assert decode_image(bytes(data)).image.mode == "RGB"
        except ImageDecodeError as exc:
            codes.add(exc.code)
    assert codes <= {"not_an_image", "corrupt_image", "truncated_image", "image_too_small", "image_too_large"}


# ---------------------------------------------------------------- to_rgb


@pytest.mark.parametrize("mode", ["RGB", "L", "1", "CMYK", "YCbCr", "RGBA", "LA", "P", "I", "F", "I;16"])
def test_to_rgb_handles_every_mode(mode: str) -> None:
    if mode in ("I", "F", "I;16"):
        image = Image.fromarray(np.arange(256, dtype=np.uint16).reshape(16, 16)).convert(mode)
    else:
        image = noise_image((16, 16)).convert(mode)
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == (16, 16)


def test_to_rgb_returns_rgb_images_unchanged() -> None:
    image = noise_image()
    assert to_rgb(image) is image


def test_to_rgb_palette_without_transparency() -> None:
    image = Image.new("P", (16, 16), 1)
    image.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    assert (np.asarray(to_rgb(image)) == [10, 20, 30]).all()


# ---------------------------------------------------------------- preprocessing


def test_preprocess_bytes_matches_decode_then_eval_transform() -> None:
    data = jpeg_bytes(seed=11, size=(48, 40))
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    served = preprocess_bytes(data, 32, mean, std)
    trained = eval_transform(32, mean, std)(decode_image(data).image)
    assert served.shape == (3, 32, 32)
    assert served.dtype == torch.float32
    assert torch.equal(served, trained)
    assert served.min() >= -1.0 and served.max() <= 1.0


def test_train_transform_without_augment_is_the_eval_transform() -> None:
    image = noise_image((40, 30), seed=2)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    assert torch.equal(
        train_transform(32, mean, std, augment=False)(image), eval_transform(32, mean, std)(image)
    )
    augmented = train_transform(32, mean, std, augment=True)(image)
    assert augmented.shape == (3, 32, 32)


def test_preprocess_bytes_raises_the_decode_error() -> None:
    with pytest.raises(ImageDecodeError) as info:
        preprocess_bytes(b"not an image", 32, (0.5,) * 3, (0.5,) * 3)
    assert info.value.code == "not_an_image"
