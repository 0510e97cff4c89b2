"""list_source for local folders: layouts, class-folder matching, skipped files, fingerprints, errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from steps.data_sources import (
    DataSourceError,
    SourceFile,
    _is_transient,
    check_reachable,
    fingerprint,
    is_candidate_image,
    label_for_folder,
    list_source,
    prefetch,
    read_bytes,
    select_per_class,
    source_fingerprint,
    with_retries,
)
from tests.image_factory import make_dataset, png_bytes, write


def labels_and_names(files: list[SourceFile]) -> list[tuple[str, str]]:
    return [(f.label, Path(f.uri).name) for f in files]


# ---------------------------------------------------------------- folder names


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("Cat", "cat"),
        ("cat", "cat"),
        ("CATS", "cat"),
        ("cats", "cat"),
        ("Dog", "dog"),
        ("dogs", "dog"),
        ("DOGS", "dog"),
        (" Dog ", "dog"),
        ("PetImages", None),
        ("catdog", None),
        ("kittens", None),
        ("Cat_old", None),
        ("", None),
    ],
)
def test_label_for_folder(name: str, label: str | None) -> None:
    assert label_for_folder(name) == label


@pytest.mark.parametrize(
    ("name", "candidate"),
    [
        ("1.jpg", True),
        ("1.JPG", True),
        ("a.jpeg", True),
        ("a.png", True),
        ("a.gif", True),
        ("a.bmp", True),
        ("a.webp", True),
        ("a.tif", True),
        ("a.TIFF", True),
        ("Thumbs.db", False),
        (".DS_Store", False),
        (".hidden.jpg", False),
        ("notes.txt", False),
        ("README", False),
        ("archive.zip", False),
    ],
)
def test_is_candidate_image(name: str, candidate: bool) -> None:
    assert is_candidate_image(name) is candidate


# ---------------------------------------------------------------- listing


def test_lists_both_classes_in_natural_order(tmp_path: Path) -> None:
    for name in ("10.jpg", "2.jpg", "1.jpg"):
        write(tmp_path / "Cat" / name, png_bytes(1))
    write(tmp_path / "Dog" / "5.png", png_bytes(2))
    files, skipped = list_source(str(tmp_path))
    assert labels_and_names(files) == [
        ("cat", "1.jpg"),
        ("cat", "2.jpg"),
        ("cat", "10.jpg"),
        ("dog", "5.png"),
    ]
    assert skipped == []
    cat = files[0]
    assert cat.size == len(png_bytes(1))
    assert cat.version == str(Path(cat.uri).stat().st_mtime_ns)
    assert read_bytes(cat.uri, cat.version) == png_bytes(1)


@pytest.mark.parametrize(("cat", "dog"), [("cats", "dogs"), ("CAT", "Dogs"), ("Cats", "DOG")])
def test_class_folders_match_case_insensitively_with_plurals(tmp_path: Path, cat: str, dog: str) -> None:
    make_dataset(tmp_path, per_class=2, folders=(cat, dog))
    files, _ = list_source(str(tmp_path))
    assert [f.label for f in files] == ["cat", "cat", "dog", "dog"]


def test_petimages_layout_is_accepted(tmp_path: Path) -> None:
    make_dataset(tmp_path / "PetImages", per_class=2)
    (tmp_path / "readme.txt").write_text("the public zip has a licence file next to PetImages")
    files, _ = list_source(str(tmp_path))
    assert [f.label for f in files] == ["cat", "cat", "dog", "dog"]
    assert all("PetImages" in f.uri for f in files)


def test_other_folders_next_to_the_class_folders_are_ignored(tmp_path: Path) -> None:
    make_dataset(tmp_path, per_class=1)
    write(tmp_path / "Birds" / "0.png", png_bytes(9))
    files, skipped = list_source(str(tmp_path))
    assert [f.label for f in files] == ["cat", "dog"]
    assert skipped == []


def test_non_image_files_are_skipped_and_reported(tmp_path: Path) -> None:
    make_dataset(tmp_path, per_class=1)
    for junk in ("Thumbs.db", ".DS_Store", "notes.txt", ".hidden.jpg"):
        write(tmp_path / "Cat" / junk, b"junk")
    write(tmp_path / "Dog" / "Thumbs.db", b"junk")
    (tmp_path / "Cat" / "subfolder").mkdir()
    files, skipped = list_source(str(tmp_path))
    assert [Path(f.uri).name for f in files] == ["0.png", "0.png"]
    assert sorted(Path(s).name for s in skipped) == sorted(
        [".DS_Store", ".hidden.jpg", "Thumbs.db", "Thumbs.db", "notes.txt"]
    )
    assert all(Path(s).is_absolute() or os.sep in s for s in skipped)


def test_image_named_files_are_listed_whatever_their_bytes(tmp_path: Path) -> None:
    # Listing goes by name; sniffing the bytes is ingest's job (it quarantines).
    make_dataset(tmp_path, per_class=1)
    write(tmp_path / "Cat" / "fake.jpg", b"text, not a photo")
    write(tmp_path / "Cat" / "empty.jpg", b"")
    files, skipped = list_source(str(tmp_path))
    assert {Path(f.uri).name for f in files if f.label == "cat"} == {"0.png", "fake.jpg", "empty.jpg"}
    assert skipped == []


def test_tilde_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    make_dataset(tmp_path / "photos", per_class=1)
    files, _ = list_source("~/photos")
    assert len(files) == 2


# ---------------------------------------------------------------- errors


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match="does not exist"):
        list_source(str(tmp_path / "nowhere"))


def test_file_instead_of_folder_is_a_clear_error(tmp_path: Path) -> None:
    path = write(tmp_path / "photos.zip", b"PK")
    with pytest.raises(DataSourceError, match="is not a folder"):
        list_source(str(path))


def test_folder_without_class_folders_is_a_clear_error(tmp_path: Path) -> None:
    write(tmp_path / "kittens" / "0.png", png_bytes())
    write(tmp_path / "puppies" / "0.png", png_bytes(1))
    with pytest.raises(DataSourceError) as info:
        list_source(str(tmp_path))
    message = str(info.value)
    assert "no Cat/ or Dog/ folder" in message
    assert "<root>/Cat" in message  # tells the user the expected layout


def test_no_class_folder_error_names_the_folders_that_are_there(tmp_path: Path) -> None:
    write(tmp_path / "kittens" / "0.png", png_bytes())
    (tmp_path / "puppies").mkdir()
    with pytest.raises(DataSourceError) as info:
        list_source(str(tmp_path))
    assert "kittens" in str(info.value) and "puppies" in str(info.value)


def test_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match=r"no Cat/ or Dog/ folder"):
        list_source(str(tmp_path))


def test_only_one_class_folder_is_a_clear_error_when_listing(tmp_path: Path) -> None:
    write(tmp_path / "Cat" / "0.png", png_bytes())
    with pytest.raises(DataSourceError, match=r"(?i)dog"):
        list_source(str(tmp_path))


# ---------------------------------------------------------------- selection


def test_select_per_class_takes_the_first_n_of_each_class(tmp_path: Path) -> None:
    for i in (1, 2, 3, 10, 20):
        write(tmp_path / "Cat" / f"{i}.jpg", png_bytes(i))
        write(tmp_path / "Dog" / f"{i}.jpg", png_bytes(100 + i))
    files, _ = list_source(str(tmp_path))
    chosen = select_per_class(files, 3)
    assert labels_and_names(chosen) == [
        ("cat", "1.jpg"),
        ("cat", "2.jpg"),
        ("cat", "3.jpg"),
        ("dog", "1.jpg"),
        ("dog", "2.jpg"),
        ("dog", "3.jpg"),
    ]
    assert select_per_class(files, None) == files
    assert select_per_class(files, 100) == files
    assert select_per_class([], 2) == []


def test_select_per_class_with_interleaved_labels() -> None:
    files = [SourceFile(f"/x/{i}", "cat" if i % 2 else "dog", 1, "v") for i in range(10)]
    chosen = select_per_class(files, 2)
    assert [f.uri for f in chosen] == ["/x/0", "/x/1", "/x/2", "/x/3"]


# ---------------------------------------------------------------- fingerprints


def test_fingerprint_is_stable_and_sensitive_to_each_field() -> None:
    base = [SourceFile("/a/1.jpg", "cat", 10, "1"), SourceFile("/a/2.jpg", "dog", 20, "2")]
    fp = fingerprint(base)
    assert fp == fingerprint(list(base))
    assert len(fp) == 16
    variants = [
        [SourceFile("/a/1b.jpg", "cat", 10, "1"), base[1]],  # renamed
        [SourceFile("/a/1.jpg", "dog", 10, "1"), base[1]],  # relabelled
        [SourceFile("/a/1.jpg", "cat", 11, "1"), base[1]],  # resized
        [SourceFile("/a/1.jpg", "cat", 10, "9"), base[1]],  # rewritten
        base[:1],  # removed
        [*base, SourceFile("/a/3.jpg", "cat", 1, "3")],  # added
    ]
    for files in variants:
        assert fingerprint(files) != fp
    assert fingerprint(base, extra="1") != fp


def test_source_fingerprint_is_stable_for_unchanged_data(tmp_path: Path) -> None:
    make_dataset(tmp_path, per_class=2)
    assert source_fingerprint(str(tmp_path)) == source_fingerprint(str(tmp_path))


def test_source_fingerprint_changes_when_a_file_is_added(tmp_path: Path) -> None:
    make_dataset(tmp_path, per_class=2)
    before = source_fingerprint(str(tmp_path))
    write(tmp_path / "Dog" / "new.png", png_bytes(77))
    assert source_fingerprint(str(tmp_path)) != before


def test_source_fingerprint_changes_when_a_file_is_removed(tmp_path: Path) -> None:
    make_dataset(tmp_path, per_class=2)
    before = source_fingerprint(str(tmp_path))
    (tmp_path / "Cat" / "1.png").unlink()
    assert source_fingerprint(str(tmp_path)) != before


def test_source_fingerprint_changes_when_a_file_changes_size(tmp_path: Path) -> None:
    make_dataset(tmp_path, per_class=2)
    before = source_fingerprint(str(tmp_path))
    write(tmp_path / "Cat" / "0.png", png_bytes(0, size=(40, 40)))
    assert source_fingerprint(str(tmp_path)) != before


def test_source_fingerprint_changes_when_a_file_is_rewritten_with_the_same_size(tmp_path: Path) -> None:
    make_dataset(tmp_path, per_class=2)
    path = tmp_path / "Cat" / "0.png"
    stat = path.stat()
    before = source_fingerprint(str(tmp_path))
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert path.stat().st_size == stat.st_size
    assert source_fingerprint(str(tmp_path)) != before


def test_source_fingerprint_changes_when_a_file_moves_class(tmp_path: Path) -> None:
    make_dataset(tmp_path, per_class=2)
    before = source_fingerprint(str(tmp_path))
    (tmp_path / "Cat" / "1.png").rename(tmp_path / "Dog" / "cat-1.png")
    assert source_fingerprint(str(tmp_path)) != before


def test_source_fingerprint_counts_skipped_files(tmp_path: Path) -> None:
    make_dataset(tmp_path, per_class=2)
    before = source_fingerprint(str(tmp_path))
    write(tmp_path / "Cat" / "Thumbs.db", b"junk")
    assert source_fingerprint(str(tmp_path)) != before


def test_source_fingerprint_with_a_limit_ignores_files_past_the_limit(tmp_path: Path) -> None:
    make_dataset(tmp_path, per_class=2)
    before = source_fingerprint(str(tmp_path), limit_per_class=2)
    write(tmp_path / "Cat" / "99.png", png_bytes(99))  # sorts after 0.png, 1.png
    assert source_fingerprint(str(tmp_path), limit_per_class=2) == before
    assert source_fingerprint(str(tmp_path), limit_per_class=3) != before


def test_source_fingerprint_of_a_url_needs_no_network() -> None:
    url = "https://example.invalid/photos.zip"
    assert source_fingerprint(url) == source_fingerprint(url)
    assert source_fingerprint(url, "a" * 64) != source_fingerprint(url, "b" * 64)


@pytest.fixture()
def http_server():
    """A real HTTP server on localhost that has /photos.zip and nothing else."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.send_response(200 if self.path == "/photos.zip" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture()
def zip_server():
    """A real HTTP server whose GET /photos.zip answers ``served["body"]``; a test swaps the bytes."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    served = {"body": b"<html>Service unavailable, try later</html>"}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = served["body"]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/photos.zip", served
    server.shutdown()


def zip_of_photos() -> bytes:
    """A valid zip in the Microsoft layout: PetImages/Cat/*.png and PetImages/Dog/*.png."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for i, folder in enumerate(("Cat", "Dog")):
            zf.writestr(f"PetImages/{folder}/0.png", png_bytes(seed=i))
    return buffer.getvalue()


def test_a_bad_download_leaves_nothing_that_blocks_the_retry(
    zip_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CATSDOGS_CACHE_DIR", str(tmp_path))
    url, served = zip_server
    with pytest.raises(DataSourceError, match="not a valid zip"):
        list_source(url)
    served["body"] = zip_of_photos()  # the server recovers
    files, _ = list_source(url)
    assert labels_and_names(files) == [("cat", "0.png"), ("dog", "0.png")]
    assert list_source(url)[0] == files  # and the extract is reused


def test_a_pinned_checksum_mismatch_leaves_nothing_that_blocks_the_retry(
    zip_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    monkeypatch.setenv("CATSDOGS_CACHE_DIR", str(tmp_path))
    url, served = zip_server
    good = zip_of_photos()
    with pytest.raises(DataSourceError, match="expected"):
        list_source(url, hashlib.sha256(good).hexdigest())
    served["body"] = good
    files, _ = list_source(url, hashlib.sha256(good).hexdigest())
    assert {f.label for f in files} == {"cat", "dog"}


def test_check_reachable_accepts_a_url_that_answers(http_server: str) -> None:
    check_reachable(f"{http_server}/photos.zip")


def test_check_reachable_names_the_http_error_and_the_fix(http_server: str) -> None:
    with pytest.raises(DataSourceError, match=r"HTTP 404.*make run DATA="):
        check_reachable(f"{http_server}/gone.zip")


def test_check_reachable_without_network_says_to_pass_data() -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DataSourceError, match=r"cannot download .*make run DATA=<folder"):
        check_reachable(f"http://127.0.0.1:{port}/photos.zip")


def test_check_reachable_ignores_folders_and_buckets(tmp_path: Path) -> None:
    check_reachable(str(tmp_path / "missing"))  # the listing reports folders, with its own message
    check_reachable("gs://bucket/prefix")


def test_training_cli_stops_before_the_run_when_the_zip_is_unreachable(http_server: str, capsys) -> None:
    from pipelines.training import main

    assert main(["--config", "configs/quick.yaml", "--data", f"{http_server}/gone.zip"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot download") and "make run DATA=" in err[0]


def test_source_fingerprint_of_a_missing_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError):
        source_fingerprint(str(tmp_path / "missing"))


def test_two_folders_for_the_same_class_are_not_silently_dropped(tmp_path: Path) -> None:
    write(tmp_path / "Cat" / "0.png", png_bytes(0))
    write(tmp_path / "cats" / "1.png", png_bytes(1))
    write(tmp_path / "Dog" / "0.png", png_bytes(2))
    try:
        files, _ = list_source(str(tmp_path))
    except DataSourceError:
        return  # refusing the ambiguous layout is fine too
    assert sorted(Path(f.uri).name for f in files if f.label == "cat") == ["0.png", "1.png"]


# ---------------------------------------------------------------- retry policy


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (TimeoutError("read timed out"), True),
        (ConnectionResetError("reset by peer"), True),
        (FileNotFoundError("bucket/Cat/503.jpg"), False),
        (PermissionError("bucket/Cat/500.jpg"), False),
        # gcsfs's 403: the object's name holds "500", which must not make it look like a 5xx.
        (OSError("Forbidden: bucket/Cat/500.jpg\nno access"), False),
        (ValueError("Bad Request: bucket/Dog/429.jpg"), False),
    ],
    ids=["timeout", "reset", "404", "permission", "403-with-code-like-name", "400"],
)
def test_retry_is_decided_by_error_type_not_by_digits_in_the_path(exc: Exception, transient: bool) -> None:
    assert _is_transient(exc) is transient


def test_http_5xx_and_429_from_gcsfs_are_transient_4xx_are_not() -> None:
    from gcsfs.retry import HttpError

    assert _is_transient(HttpError({"code": 503, "message": "backend unavailable"}))
    assert _is_transient(HttpError({"code": 429, "message": "slow down"}))
    assert not _is_transient(HttpError({"code": 401, "message": "Cat/500.jpg unauthorised"}))


def test_with_retries_gives_up_at_once_on_a_permanent_error() -> None:
    calls: list[int] = []

    def forbidden() -> bytes:
        calls.append(1)
        raise PermissionError("access denied to gs://b/Cat/500.jpg")

    with pytest.raises(PermissionError):
        with_retries(forbidden, "reading", base_delay=0)
    assert len(calls) == 1


def test_prefetch_of_local_files_downloads_nothing_and_reports_nothing(tmp_path: Path) -> None:
    make_dataset(tmp_path, per_class=1)
    files, _ = list_source(str(tmp_path))
    assert prefetch((f.uri, f.version) for f in files) == {}


def test_a_symlink_loop_is_listed_so_ingest_can_report_it(tmp_path: Path) -> None:
    make_dataset(tmp_path, per_class=1)
    (tmp_path / "Dog" / "loop_a.jpg").symlink_to("loop_b.jpg")
    (tmp_path / "Dog" / "loop_b.jpg").symlink_to("loop_a.jpg")
    files, skipped = list_source(str(tmp_path))
    loops = [f for f in files if f.uri.endswith(("loop_a.jpg", "loop_b.jpg"))]
    assert [(f.label, f.size, f.version) for f in loops] == [("dog", 0, "unreadable")] * 2
    assert skipped == []
