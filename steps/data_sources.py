"""Where photos come from: a local folder, a ``gs://`` prefix or an ``https://`` zip.

Each source is reduced to a list of ``SourceFile`` (uri + class folder), read
through ``read_bytes``. Remote bytes are fetched once into a local cache:
GCS objects keyed by their generation (a changed object is fetched again),
zips by URL and checksum. A fingerprint of the source is computed cheaply
(listing, sizes, mtimes or generations) so ZenML can cache ingest exactly when
the data did not change.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import stat
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tqdm.auto import tqdm

from handlers.model_spec import CLASS_NAMES

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
GCS_THREADS = 16
T = TypeVar("T")


class DataSourceError(RuntimeError):
    """The data source cannot be used; the message says what to do."""


@dataclass(frozen=True)
class SourceFile:
    uri: str  # local path or gs://bucket/object
    label: str  # one of CLASS_NAMES
    size: int
    version: str  # mtime for files, generation for GCS objects


def cache_root() -> Path:
    """Downloads and extracted archives live here (git-ignored, reused across runs)."""
    default = Path(__file__).resolve().parents[1] / "runs" / "cache"
    return Path(os.environ.get("CATSDOGS_CACHE_DIR", default))


def label_for_folder(name: str) -> str | None:
    """'Cat', 'cats', 'DOGS' -> 'cat' / 'dog'; anything else -> None."""
    key = name.strip().lower()
    for label in CLASS_NAMES:
        if key in (label, label + "s"):
            return label
    return None


def is_candidate_image(name: str) -> bool:
    """Image-named files are ingested (and sniffed); Thumbs.db, .DS_Store and the like are skipped."""
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES


def _natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


# ---------------------------------------------------------------- listing


def list_source(source: str, source_sha256: str | None = None) -> tuple[list[SourceFile], list[str]]:
    """All class-folder files of a source, plus the paths of skipped non-image files."""
    if source.startswith("gs://"):
        return _list_gcs(source)
    if source.startswith(("https://", "http://")):
        return _list_folder(_extracted_zip(source, source_sha256))
    return _list_folder(Path(source).expanduser())


def _require_both_classes(files: list[SourceFile], described: str, folders: list[str]) -> None:
    """Fail before any work when a class has no image files at all."""
    present = {f.label for f in files}
    for label in CLASS_NAMES:
        if label not in present:
            raise DataSourceError(
                f"no '{label}' images in {described} (class folders found: {sorted(folders)}); "
                "both a Cat/ and a Dog/ folder with photos are needed"
            )


def _no_class_folder(described: str, names: Iterable[str]) -> DataSourceError:
    return DataSourceError(
        f"no Cat/ or Dog/ folder in {described} (found: {sorted(names)[:10] or 'nothing'}); "
        "lay the photos out as <root>/Cat/*.jpg and <root>/Dog/*.jpg"
    )


def _class_folders(root: Path) -> dict[str, list[Path]]:
    """label -> class folders, at <root>/Cat or one level down (<root>/PetImages/Cat, the zip's layout).

    Every matching folder counts: ``Cat/`` and ``cats/`` side by side are both read.
    """
    top = sorted(p for p in root.iterdir() if p.is_dir())
    for candidate in (root, *top):
        matched: dict[str, list[Path]] = {}
        for folder in sorted(p for p in candidate.iterdir() if p.is_dir()):
            if label := label_for_folder(folder.name):
                matched.setdefault(label, []).append(folder)
        if matched:
            return matched
    raise _no_class_folder(str(root), (p.name for p in top))


def _list_folder(root: Path) -> tuple[list[SourceFile], list[str]]:
    if not root.exists():
        raise DataSourceError(
            f"data source {root} does not exist; pass DATA=<folder | gs://bucket/prefix | https://...zip>"
        )
    if not root.is_dir():
        raise DataSourceError(f"data source {root} is not a folder; pass the folder that holds Cat/ and Dog/")
    folders = _class_folders(root)
    files: list[SourceFile] = []
    skipped: list[str] = []
    for label, paths in sorted(folders.items()):
        # Not only regular files: a symlink loop, a dangling link or a FIFO named *.jpg is listed too,
        # so ingest quarantines it with a reason instead of it vanishing without trace.
        entries = [p for folder in paths for p in folder.iterdir() if not p.is_dir()]
        for path in sorted(entries, key=lambda p: _natural_key(p.name)):
            if not is_candidate_image(path.name):
                skipped.append(str(path))
                continue
            files.append(SourceFile(str(path), label, *_size_and_version(path)))
    _require_both_classes(files, str(root), [p.name for paths in folders.values() for p in paths])
    return files, skipped


def _size_and_version(path: Path) -> tuple[int, str]:
    """Size and mtime of a listed entry; (0, "unreadable") when even its target cannot be stat-ed."""
    try:
        info = path.stat()
    except OSError:
        return 0, "unreadable"
    return info.st_size, str(info.st_mtime_ns)


def local_read_problem(path: Path) -> str | None:
    """Why a listed local entry cannot be read as a photo, or None when it is a regular file (or gone).

    Checked before reading: a symlink loop raises an OSError nobody expects and a FIFO would block.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "broken symlink: its target does not exist" if path.is_symlink() else None
    except OSError as exc:
        return f"cannot open: {exc.strerror or type(exc).__name__}"
    return None if stat.S_ISREG(mode) else "not a regular file (FIFO, socket or device)"


def _gcs_filesystem() -> Any:
    import gcsfs  # training-side dependency only

    return gcsfs.GCSFileSystem()


def _list_gcs(source: str) -> tuple[list[SourceFile], list[str]]:
    fs = _gcs_filesystem()
    prefix = source.removeprefix("gs://").rstrip("/")
    try:
        entries = fs.find(prefix, detail=True)
    except FileNotFoundError as exc:
        raise DataSourceError(f"bucket or prefix {source} not found; check the name ({exc})") from None
    except Exception as exc:  # gcsfs raises many types: auth, HTTP, connection
        raise DataSourceError(
            f"cannot list {source}: {type(exc).__name__}: {exc}. Check the bucket name, your "
            "credentials (gcloud auth application-default login) or STORAGE_EMULATOR_HOST"
        ) from None
    by_folder: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    skipped: list[str] = []
    for name, info in entries.items():
        rel = name[len(prefix) :].lstrip("/")
        parts = rel.split("/")
        # <prefix>/Cat/x.jpg or <prefix>/PetImages/Cat/x.jpg
        folder_idx = next((i for i, p in enumerate(parts[:-1]) if label_for_folder(p)), None)
        if folder_idx is None:
            continue
        if not is_candidate_image(parts[-1]):
            skipped.append("gs://" + name)
            continue
        by_folder.setdefault(parts[folder_idx], []).append((name, info))
    if not by_folder:
        raise _no_class_folder(source, {n[len(prefix) :].lstrip("/").split("/")[0] for n in entries})
    files = []
    for folder, objects in sorted(by_folder.items()):
        label = label_for_folder(folder)
        for name, info in sorted(objects, key=lambda e: _natural_key(e[0])):
            version = str(info.get("generation") or info.get("md5Hash") or info.get("etag") or "")
            files.append(SourceFile("gs://" + name, label, int(info.get("size") or 0), version))
    _require_both_classes(files, source, list(by_folder))
    return files, skipped


def fingerprint(files: Iterable[SourceFile], extra: str = "") -> str:
    """Changes whenever any file is added, removed, resized, rewritten or relabelled."""
    digest = hashlib.sha256(extra.encode())
    for f in files:
        digest.update(f"{f.uri}\0{f.label}\0{f.size}\0{f.version}\n".encode())
    return digest.hexdigest()[:16]


def source_fingerprint(
    source: str, source_sha256: str | None = None, limit_per_class: int | None = None
) -> str:
    """Cheap identity of a source's current content, computed before the run starts."""
    if source.startswith(("https://", "http://")):
        return hashlib.sha256(f"{source}\0{source_sha256}".encode()).hexdigest()[:16]
    files, skipped = list_source(source)
    return fingerprint(select_per_class(files, limit_per_class), extra=f"{len(skipped)}")


def select_per_class(files: list[SourceFile], limit_per_class: int | None) -> list[SourceFile]:
    """The first N files of each class in listing order (which is natural file-name order)."""
    if limit_per_class is None:
        return files
    taken: dict[str, int] = {}
    chosen = []
    for f in files:
        if taken.get(f.label, 0) < limit_per_class:
            taken[f.label] = taken.get(f.label, 0) + 1
            chosen.append(f)
    return chosen


# ---------------------------------------------------------------- reading


def _gcs_cache_path(uri: str, version: str) -> Path:
    safe = hashlib.sha256(f"{uri}@{version}".encode()).hexdigest()
    return cache_root() / "gcs" / safe[:2] / safe


def with_retries(fn: Callable[[], T], what: str, attempts: int = 4, base_delay: float = 0.5) -> T:
    """Retry transient failures (HTTP 5xx, 408, 429, dropped connections) with exponential backoff."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts or not _is_transient(exc):
                raise
            delay = base_delay * 2 ** (attempt - 1)
            logger.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _is_transient(exc: Exception) -> bool:
    """Decided by the exception's type and status code, never by its text (which holds the path)."""
    if isinstance(exc, (FileNotFoundError, PermissionError)):
        return False
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    try:
        from gcsfs.retry import is_retriable
    except ImportError:
        return False
    return bool(is_retriable(exc))


def _read_gcs(uri: str) -> bytes:
    """One object's bytes; gcsfs's "Forbidden" OSError becomes a PermissionError."""
    try:
        return _gcs_filesystem().cat_file(uri.removeprefix("gs://"))
    except OSError as exc:
        if str(exc).startswith("Forbidden"):
            raise PermissionError(f"access denied to {uri}: {str(exc).splitlines()[-1]}") from None
        raise


def read_bytes(uri: str, version: str = "") -> bytes:
    """Bytes of a local file or GCS object (GCS: through the local cache)."""
    if not uri.startswith("gs://"):
        return Path(uri).read_bytes()
    cached = _gcs_cache_path(uri, version)
    if cached.exists():
        return cached.read_bytes()
    data = with_retries(lambda: _read_gcs(uri), f"reading {uri}")
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".part{os.getpid()}-{threading.get_ident()}")
    tmp.write_bytes(data)
    tmp.replace(cached)
    return data


@dataclass(frozen=True)
class ReadFailure:
    reason: str  # "missing" | "permission_denied" | "unreadable"
    message: str


def prefetch(items: Iterable[tuple[str, str]]) -> dict[str, ReadFailure]:
    """Download (uri, version) GCS objects into the cache in parallel threads; local files are skipped.

    Run in the parent process before any worker process reads: gcsfs's event loop
    does not survive a fork, so workers must only ever read the cache. Objects
    that cannot be read are returned (uri -> why) instead of raised, so one bad
    object never stops a run of thousands.
    """
    remote = [(u, v) for u, v in items if u.startswith("gs://") and not _gcs_cache_path(u, v).exists()]
    failures: dict[str, ReadFailure] = {}
    if not remote:
        return failures
    with ThreadPoolExecutor(GCS_THREADS) as pool:
        jobs = pool.map(lambda item: (item[0], _prefetch_one(*item)), remote)
        for uri, failure in tqdm(jobs, total=len(remote), desc="download gs://", unit="file"):
            if failure is not None:
                failures[uri] = failure
    if failures:
        logger.warning("%d of %d GCS objects could not be read: %s", len(failures), len(remote),
                       dict(Counter(f.reason for f in failures.values())))  # fmt: skip
    return failures


def _prefetch_one(uri: str, version: str) -> ReadFailure | None:
    try:
        read_bytes(uri, version)
    except FileNotFoundError:
        return ReadFailure("missing", "vanished after listing (HTTP 404)")
    except PermissionError as exc:
        return ReadFailure("permission_denied", f"{exc}; grant storage.objects.get on the bucket")
    except Exception as exc:  # retries exhausted or a non-retriable HTTP error
        return ReadFailure("unreadable", f"{type(exc).__name__}: {exc}")
    return None


# ---------------------------------------------------------------- https zip


_OFFLINE_FIX = "without network pass a local copy: make run DATA=<folder with Cat/ and Dog/>"


def _download_dir(url: str) -> Path:
    return cache_root() / "downloads" / hashlib.sha256(url.encode()).hexdigest()[:16]


def _extracted_zip(url: str, expected_sha256: str | None) -> Path:
    """Download (once) and extract (once) a zip; verify its sha256 when one is pinned."""
    folder = _download_dir(url)
    archive, extracted = folder / "archive.zip", folder / "extracted"
    done = folder / "extracted.ok"
    if done.exists():
        return extracted
    folder.mkdir(parents=True, exist_ok=True)
    if not archive.exists():
        _download(url, archive)
    actual = _sha256_file(archive)
    recorded = folder / "archive.sha256"
    if expected_sha256 and actual != expected_sha256.lower():
        _forget_download(folder)
        raise DataSourceError(
            f"{url} downloaded with sha256 {actual}, expected {expected_sha256}; "
            "the file changed or the download is corrupt (deleted; run again)"
        )
    if recorded.exists() and recorded.read_text().strip() != actual:
        raise DataSourceError(f"cached {archive} no longer matches its recorded checksum; delete {folder}")
    logger.info("extracting %s (sha256 %s)", archive, actual)
    shutil.rmtree(extracted, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(extracted)
    except zipfile.BadZipFile:
        _forget_download(folder)
        raise DataSourceError(f"{url} is not a valid zip file (deleted the download; run again)") from None
    recorded.write_text(actual + "\n")  # only a good archive is recorded: a bad one never blocks a retry
    done.touch()
    return extracted


def _forget_download(folder: Path) -> None:
    """Drop the archive, its recorded checksum and any partial extract, so the next run starts clean."""
    for name in ("archive.zip", "archive.sha256"):
        (folder / name).unlink(missing_ok=True)
    shutil.rmtree(folder / "extracted", ignore_errors=True)


def check_reachable(source: str) -> None:
    """Before a run starts: a zip URL that is neither cached nor reachable fails in one line.

    Costs a HEAD request, never the download itself (that stays in ingest, where it is
    cached); so `make run` without network stops at once with the fix, not in a step.
    """
    if not source.startswith(("https://", "http://")):
        return
    if (_download_dir(source) / "extracted.ok").exists():
        return
    try:
        with urllib.request.urlopen(urllib.request.Request(source, method="HEAD"), timeout=10):
            pass
    except urllib.error.HTTPError as exc:
        raise DataSourceError(
            f"cannot download {source} (HTTP {exc.code} {exc.reason}); {_OFFLINE_FIX}"
        ) from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise DataSourceError(f"cannot download {source} ({exc}); {_OFFLINE_FIX}") from None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, target: Path) -> None:
    partial = target.with_suffix(".part")
    try:
        with urllib.request.urlopen(url, timeout=20) as response, partial.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {Path(url).name}") as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise DataSourceError(f"cannot download {url} ({exc}); {_OFFLINE_FIX}") from None
    partial.replace(target)
