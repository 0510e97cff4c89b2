"""ingest_source: manifest, quarantine reasons, duplicates, label conflicts, dataset version."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from steps.data_sources import DataSourceError, SourceFile
from steps.ingest import (
    MANIFEST_COLUMNS,
    QUARANTINE_COLUMNS,
    copy_to_quarantine,
    dataset_version,
    ingest_source,
    inspect_file,
    quarantine_name,
)
from tests.image_factory import (
    encode,
    jpeg_bytes,
    make_dataset,
    noise_image,
    patch_png_size,
    png_bytes,
    write,
)


def ingest(root: Path, **kwargs: object):
    return ingest_source(str(root), workers=1, **kwargs)


def by_name(frame: pd.DataFrame) -> dict[str, dict]:
    return {Path(row["uri"]).name: row for row in frame.to_dict("records")}


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """One folder with every bad-file kind and every odd-but-good kind, ingested once."""
    root = tmp_path_factory.mktemp("messy")
    cat, dog = root / "Cat", root / "Dog"
    jpeg = jpeg_bytes(seed=1, size=(64, 64), quality=95)
    # bad
    write(cat / "empty.jpg", b"")
    write(cat / "random.jpg", np.random.default_rng(0).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    write(cat / "half.jpg", jpeg[: len(jpeg) // 2])
    write(cat / "text.jpg", b"I am a text file with a .jpg name\n")
    write(cat / "tiny.png", encode(Image.new("RGB", (8, 8)), "PNG"))
    write(cat / "huge.png", patch_png_size(png_bytes(seed=2), 100_000, 100_000))
    write(cat / "badheader.jpg", b"\xff\xd8\xff" + b"\x00\x11garbage" * 20)
    # skipped, never read
    write(cat / "Thumbs.db", b"junk")
    write(dog / ".DS_Store", b"junk")
    write(dog / "notes.txt", b"junk")
    # odd but good
    write(cat / "gray.png", encode(noise_image(seed=3, mode="L"), "PNG"))
    write(cat / "cmyk.jpg", encode(Image.new("CMYK", (32, 32), (0, 200, 200, 0)), "JPEG"))
    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    write(cat / "palette.png", encode(palette, "PNG", transparency=0))
    write(cat / "rgba.png", encode(noise_image(seed=4, mode="RGBA"), "PNG"))
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    write(dog / "sixteen.png", encode(Image.fromarray(ramp), "PNG"))
    rotated = noise_image((40, 20), seed=5)
    exif = rotated.getexif()
    exif[0x0112] = 6
    write(dog / "rotated.jpg", encode(rotated, "JPEG", exif=exif.tobytes()))
    write(dog / "png_named.jpg", png_bytes(seed=6))
    write(dog / "anim.gif", encode(noise_image(seed=7), "GIF"))
    write(dog / "bitmap.bmp", encode(noise_image(seed=8), "BMP"))
    write(dog / "modern.webp", encode(noise_image(seed=9), "WEBP"))
    write(dog / "plain.jpg", jpeg)
    return root, ingest(root)


BAD = {
    "empty.jpg": "empty_image",
    "random.jpg": "not_an_image",
    "half.jpg": "truncated_image",
    "text.jpg": "not_an_image",
    "tiny.png": "image_too_small",
    "huge.png": "image_too_large",
    "badheader.jpg": "corrupt_image",
}
GOOD = {
    "gray.png": ("PNG", "L"),
    "cmyk.jpg": ("JPEG", "CMYK"),
    "palette.png": ("PNG", "P"),
    "rgba.png": ("PNG", "RGBA"),
    "sixteen.png": ("PNG", None),  # I;16 or I depending on Pillow
    "rotated.jpg": ("JPEG", "RGB"),
    "png_named.jpg": ("PNG", "RGB"),
    "anim.gif": ("GIF", "P"),
    "bitmap.bmp": ("BMP", "RGB"),
    "modern.webp": ("WEBP", "RGB"),
    "plain.jpg": ("JPEG", "RGB"),
}


def test_every_bad_file_is_quarantined_with_its_reason(messy) -> None:
    _, result = messy
    quarantine = by_name(result.quarantine)
    assert {name: row["reason"] for name, row in quarantine.items()} == BAD
    assert all(row["message"] for row in quarantine.values())
    assert {row["label"] for row in quarantine.values()} == {"cat"}
    assert list(result.quarantine.columns) == QUARANTINE_COLUMNS


def test_every_odd_but_good_image_is_kept(messy) -> None:
    _, result = messy
    manifest = by_name(result.manifest)
    assert set(manifest) == set(GOOD)
    for name, (fmt, mode) in GOOD.items():
        assert manifest[name]["format"] == fmt, name
        if mode is not None:
            assert manifest[name]["mode"] == mode, name
    assert manifest["sixteen.png"]["mode"].startswith("I")
    assert list(result.manifest.columns) == MANIFEST_COLUMNS


def test_manifest_rows_describe_the_file(messy) -> None:
    root, result = messy
    manifest = by_name(result.manifest)
    plain = manifest["plain.jpg"]
    data = (root / "Dog" / "plain.jpg").read_bytes()
    assert plain["sha256"] == hashlib.sha256(data).hexdigest()
    assert plain["label"] == "dog"
    assert plain["size_bytes"] == len(data)
    assert (plain["width"], plain["height"]) == (64, 64)
    assert plain["version"] == str((root / "Dog" / "plain.jpg").stat().st_mtime_ns)
    # EXIF orientation 6: a 40x20 photo is recorded upright, 20x40.
    assert (manifest["rotated.jpg"]["width"], manifest["rotated.jpg"]["height"]) == (20, 40)
    assert result.manifest["sha256"].is_unique


def test_report_counts(messy) -> None:
    _, result = messy
    report = result.report
    assert report["files_listed"] == len(BAD) + len(GOOD)
    assert report["images_kept"] == len(GOOD)
    assert report["quarantined"] == len(BAD)
    assert report["quarantine_reasons"] == {
        "empty_image": 1,
        "not_an_image": 2,
        "truncated_image": 1,
        "image_too_small": 1,
        "image_too_large": 1,
        "corrupt_image": 1,
    }
    assert report["skipped_non_image_files"] == 3
    assert report["duplicates_dropped"] == 0
    assert report["images_per_class"] == {"cat": 4, "dog": 7}
    assert report["source_formats"]["PNG"] == 5  # gray, palette, rgba, 16-bit, png_named.jpg
    assert report["dataset_version"] == dataset_version(result.manifest)
    assert isinstance(report["decoder_warnings"], int)


def test_decoder_warnings_are_counted_in_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_dataset(tmp_path, per_class=2)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600)  # 32x32 = 1024 pixels: a bomb *warning*
    result = ingest(tmp_path)  # the worker process is forked with the patched limit
    assert result.report["images_kept"] == 4
    assert (result.manifest["decoder_warnings"] >= 1).all()
    assert result.report["files_with_decoder_warnings"] == 4
    assert result.report["decoder_warnings"] >= 4


# ---------------------------------------------------------------- duplicates and conflicts


def test_duplicates_within_a_class_are_dropped(tmp_path: Path) -> None:
    make_dataset(tmp_path, per_class=2)
    write(tmp_path / "Cat" / "copy-of-0.png", (tmp_path / "Cat" / "0.png").read_bytes())
    write(tmp_path / "Cat" / "another-copy.png", (tmp_path / "Cat" / "0.png").read_bytes())
    result = ingest(tmp_path)
    assert result.report["duplicates_dropped"] == 2
    assert result.report["images_kept"] == 4
    assert result.report["quarantined"] == 0
    assert result.manifest["sha256"].is_unique
    # The first copy in listing order is the one kept.
    kept = set(result.manifest[result.manifest["label"] == "cat"]["uri"].map(lambda u: Path(u).name))
    assert kept == {"0.png", "1.png"}


def test_same_bytes_under_both_labels_is_a_conflict(tmp_path: Path) -> None:
    make_dataset(tmp_path, per_class=2)
    shared = png_bytes(seed=555)
    write(tmp_path / "Cat" / "who.png", shared)
    write(tmp_path / "Dog" / "who-am-i.png", shared)
    write(tmp_path / "Dog" / "who-again.png", shared)
    result = ingest(tmp_path)
    sha = hashlib.sha256(shared).hexdigest()
    assert sha not in set(result.manifest["sha256"])  # neither label is trusted
    conflicts = result.quarantine[result.quarantine["reason"] == "conflicting_labels"]
    assert sorted(Path(u).name for u in conflicts["uri"]) == ["who-again.png", "who-am-i.png", "who.png"]
    assert all("cat" in m and "dog" in m for m in conflicts["message"])
    assert result.report["quarantine_reasons"] == {"conflicting_labels": 3}
    assert result.report["images_kept"] == 4


# ---------------------------------------------------------------- dataset version


def test_dataset_version_is_content_based_and_location_independent(tmp_path: Path) -> None:
    a = make_dataset(tmp_path / "a", per_class=3)
    b = tmp_path / "b" / "PetImages"
    for path in sorted(a.rglob("*.png")):
        # Different folder layout, folder spelling and file names; same bytes and labels.
        folder = "cats" if path.parent.name == "Cat" else "DOGS"
        write(b / folder / f"renamed-{path.name}", path.read_bytes())
    va = ingest(a).report["dataset_version"]
    vb = ingest(tmp_path / "b").report["dataset_version"]
    assert va == vb
    assert len(va) == 12


def test_dataset_version_is_order_independent() -> None:
    frame = pd.DataFrame({"sha256": ["a" * 64, "b" * 64, "c" * 64], "label": ["cat", "dog", "cat"]})
    shuffled = frame.iloc[[2, 0, 1]].reset_index(drop=True)
    assert dataset_version(frame) == dataset_version(shuffled)


def test_dataset_version_changes_with_content_or_labels() -> None:
    frame = pd.DataFrame({"sha256": ["a" * 64, "b" * 64], "label": ["cat", "dog"]})
    base = dataset_version(frame)
    assert dataset_version(frame.assign(label=["dog", "dog"])) != base
    assert dataset_version(frame.assign(sha256=["a" * 64, "d" * 64])) != base
    assert dataset_version(frame.iloc[:1]) != base


def test_dataset_version_changes_when_an_image_is_added(tmp_path: Path) -> None:
    make_dataset(tmp_path, per_class=2)
    before = ingest(tmp_path).report["dataset_version"]
    write(tmp_path / "Dog" / "9.png", png_bytes(seed=999))
    assert ingest(tmp_path).report["dataset_version"] != before


def test_dataset_version_ignores_quarantined_and_skipped_files(tmp_path: Path) -> None:
    make_dataset(tmp_path, per_class=2)
    before = ingest(tmp_path).report["dataset_version"]
    write(tmp_path / "Cat" / "broken.jpg", b"not an image")
    write(tmp_path / "Cat" / "Thumbs.db", b"junk")
    assert ingest(tmp_path).report["dataset_version"] == before


# ---------------------------------------------------------------- limits and errors


def test_limit_per_class(tmp_path: Path) -> None:
    make_dataset(tmp_path, per_class=4)
    result = ingest(tmp_path, limit_per_class=2)
    assert result.report["files_listed"] == 4
    assert result.report["images_per_class"] == {"cat": 2, "dog": 2}
    assert sorted(Path(u).name for u in result.manifest["uri"]) == ["0.png", "0.png", "1.png", "1.png"]


def test_two_workers_give_the_same_manifest(tmp_path: Path) -> None:
    make_dataset(tmp_path, per_class=4)
    one = ingest_source(str(tmp_path), workers=1)
    two = ingest_source(str(tmp_path), workers=2)
    pd.testing.assert_frame_equal(one.manifest, two.manifest)


def test_empty_class_folder_is_an_error(tmp_path: Path) -> None:
    make_dataset(tmp_path, per_class=2)
    for path in (tmp_path / "Dog").iterdir():
        path.unlink()
    with pytest.raises(DataSourceError, match="no 'dog' images"):
        ingest(tmp_path)


def test_class_with_only_bad_files_is_an_error(tmp_path: Path) -> None:
    make_dataset(tmp_path, per_class=2)
    for path in (tmp_path / "Cat").iterdir():
        path.write_bytes(b"broken")
    with pytest.raises(DataSourceError, match="no usable 'cat' images"):
        ingest(tmp_path)


def test_single_class_source_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "Cat" / "0.png", png_bytes())
    with pytest.raises(DataSourceError) as info:
        ingest(tmp_path)
    assert "'dog'" in str(info.value) and "Dog/" in str(info.value)


def test_no_usable_image_at_all_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "Cat" / "a.jpg", b"")
    write(tmp_path / "Dog" / "b.jpg", b"nope")
    with pytest.raises(DataSourceError, match="no usable image"):
        ingest(tmp_path)


def test_missing_source_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match="does not exist"):
        ingest(tmp_path / "missing")


# ---------------------------------------------------------------- single files


def test_inspect_file_reports_a_vanished_file(tmp_path: Path) -> None:
    row = inspect_file(SourceFile(str(tmp_path / "gone.jpg"), "cat", 10, "1"))
    assert row["reason"] == "missing"
    assert "sha256" not in row


def test_inspect_file_of_a_good_image(tmp_path: Path) -> None:
    path = write(tmp_path / "x.jpg", jpeg_bytes(seed=3))
    row = inspect_file(SourceFile(str(path), "dog", path.stat().st_size, "v1"))
    assert set(row) == set(MANIFEST_COLUMNS)
    assert (row["label"], row["version"], row["format"]) == ("dog", "v1", "JPEG")


def test_copy_to_quarantine_copies_bad_files_aside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATSDOGS_CACHE_DIR", str(tmp_path / "cache"))
    make_dataset(tmp_path / "data", per_class=1)
    write(tmp_path / "data" / "Cat" / "broken.jpg", b"broken")
    result = ingest(tmp_path / "data")
    folder = copy_to_quarantine(result.quarantine, "key123")
    (copied,) = (folder / "not_an_image").iterdir()
    assert copied.name.startswith("cat-") and copied.name.endswith("-broken.jpg")
    assert copied.read_bytes() == b"broken"
    assert (tmp_path / "data" / "Cat" / "broken.jpg").exists()  # the source is untouched
    assert folder.is_relative_to(tmp_path / "cache")


def test_same_named_bad_files_in_two_cat_folders_are_both_kept_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CATSDOGS_CACHE_DIR", str(tmp_path / "cache"))
    make_dataset(tmp_path / "data", per_class=1)
    for folder, seed in (("Cat", 1), ("cats", 2)):
        good = jpeg_bytes(seed=seed, size=(64, 64))
        write(tmp_path / "data" / folder / "bad.jpg", good[: len(good) // 2])  # truncated
    result = ingest(tmp_path / "data")
    assert len(result.quarantine) == 2
    folder = copy_to_quarantine(result.quarantine, "key123")
    copies = sorted(p for p in folder.rglob("*") if p.is_file())
    assert len(copies) == 2 and all(p.name.startswith("cat-") and p.name.endswith("-bad.jpg") for p in copies)
    sources = {(tmp_path / "data" / f / "bad.jpg").read_bytes() for f in ("Cat", "cats")}
    assert {p.read_bytes() for p in copies} == sources  # no evidence overwritten


def test_quarantine_name_is_stable_and_unique_per_source_path() -> None:
    assert quarantine_name("cat", "/d/Cat/bad.jpg") == quarantine_name("cat", "/d/Cat/bad.jpg")
    assert quarantine_name("cat", "/d/Cat/bad.jpg") != quarantine_name("cat", "/d/cats/bad.jpg")


def test_symlink_loop_and_dangling_link_are_quarantined_as_unreadable(tmp_path: Path) -> None:
    make_dataset(tmp_path, per_class=2)
    dog = tmp_path / "Dog"
    (dog / "loop_a.jpg").symlink_to("loop_b.jpg")
    (dog / "loop_b.jpg").symlink_to("loop_a.jpg")
    (dog / "dangling.jpg").symlink_to("nowhere.jpg")
    result = ingest(tmp_path)
    quarantine = by_name(result.quarantine)
    assert {name: row["reason"] for name, row in quarantine.items()} == {
        "loop_a.jpg": "unreadable",
        "loop_b.jpg": "unreadable",
        "dangling.jpg": "unreadable",
    }
    assert "symbolic links" in quarantine["loop_a.jpg"]["message"]
    assert "broken symlink" in quarantine["dangling.jpg"]["message"]
    assert result.report["quarantine_reasons"] == {"unreadable": 3}
    assert result.report["files_listed"] == 7 and result.report["images_kept"] == 4


def test_a_fifo_named_like_a_photo_is_quarantined_not_read(tmp_path: Path) -> None:
    import os

    make_dataset(tmp_path, per_class=1)
    os.mkfifo(tmp_path / "Cat" / "pipe.jpg")  # reading it would block forever
    result = ingest(tmp_path)
    row = by_name(result.quarantine)["pipe.jpg"]
    assert (row["reason"], row["message"]) == ("unreadable", "not a regular file (FIFO, socket or device)")
