"""Ingest: turn a source of photos into a content-addressed manifest.

Every file is read, hashed (sha256 of its bytes) and fully decoded with the
same ``decode_image`` the server uses. Files that cannot be used are
quarantined with a reason instead of crashing the run; non-image files are
skipped and counted. The dataset version is a hash of the sorted
(content hash, label) pairs, so the same photos give the same version
wherever they come from.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
from tqdm.auto import tqdm
from zenml import log_metadata, step

from handlers.image_decoding import ImageDecodeError, decode_image
from handlers.model_spec import CLASS_NAMES
from steps.data_sources import (
    DataSourceError,
    SourceFile,
    cache_root,
    list_source,
    local_read_problem,
    prefetch,
    read_bytes,
    select_per_class,
)

logger = logging.getLogger(__name__)

MANIFEST_COLUMNS = [
    "sha256",
    "label",
    "uri",
    "version",
    "size_bytes",
    "width",
    "height",
    "format",
    "mode",
    "decoder_warnings",
]
QUARANTINE_COLUMNS = ["uri", "label", "reason", "message"]


@dataclass
class IngestResult:
    manifest: pd.DataFrame
    quarantine: pd.DataFrame
    report: dict[str, Any]


def inspect_file(f: SourceFile) -> dict[str, Any]:
    """Hash and decode one file; a dict for the manifest or for the quarantine."""
    problem = None if f.uri.startswith("gs://") else local_read_problem(Path(f.uri))
    if problem:
        return _quarantined(f, "unreadable", problem)
    try:
        data = read_bytes(f.uri, f.version)
    except FileNotFoundError:
        return _quarantined(f, "missing", "vanished after listing")
    except PermissionError as exc:
        return _quarantined(f, "permission_denied", str(exc))
    except OSError as exc:  # EIO, or a loop made after listing: one bad file never stops the run
        return _quarantined(f, "unreadable", f"{type(exc).__name__}: {exc}")
    try:
        decoded = decode_image(data)
    except ImageDecodeError as exc:
        return _quarantined(f, exc.code, exc.message)
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "label": f.label,
        "uri": f.uri,
        "version": f.version,
        "size_bytes": len(data),
        "width": decoded.width,
        "height": decoded.height,
        "format": decoded.source_format,
        "mode": decoded.source_mode,
        "decoder_warnings": decoded.decoder_warnings,
    }


def _quarantined(f: SourceFile, reason: str, message: str) -> dict[str, Any]:
    return {"uri": f.uri, "label": f.label, "reason": reason, "message": message}


def dataset_version(manifest: pd.DataFrame) -> str:
    """Content identity of the dataset: order-independent, location-independent."""
    digest = hashlib.sha256()
    for sha, label in sorted(zip(manifest["sha256"], manifest["label"], strict=True)):
        digest.update(f"{sha}:{label}\n".encode())
    return digest.hexdigest()[:12]


def _drop_duplicates(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """Keep one copy per content hash; the same bytes under both labels is a conflict."""
    labels_by_hash: dict[str, set[str]] = {}
    for r in records:
        labels_by_hash.setdefault(r["sha256"], set()).add(r["label"])
    kept, conflicts, seen = [], [], set()
    duplicates = 0
    for r in records:
        sha = r["sha256"]
        if len(labels_by_hash[sha]) > 1:
            conflicts.append(
                {
                    "uri": r["uri"],
                    "label": r["label"],
                    "reason": "conflicting_labels",
                    "message": f"the same image is filed under {sorted(labels_by_hash[sha])}",
                }
            )
        elif sha in seen:
            duplicates += 1
        else:
            seen.add(sha)
            kept.append(r)
    return kept, conflicts, duplicates


def ingest_source(
    source: str,
    limit_per_class: int | None = None,
    source_sha256: str | None = None,
    workers: int | None = None,
) -> IngestResult:
    """List, fetch, hash and decode every photo of ``source``; never raise for a bad file."""
    files, skipped = list_source(source, source_sha256)
    files = select_per_class(files, limit_per_class)
    failures = prefetch((f.uri, f.version) for f in files)
    unread = [f for f in files if f.uri in failures]
    readable = [f for f in files if f.uri not in failures]
    workers = workers or min(os.cpu_count() or 1, 4)
    with ProcessPoolExecutor(workers) as pool:
        jobs = pool.map(inspect_file, readable, chunksize=64)
        results = list(tqdm(jobs, total=len(readable), desc="ingest", unit="img"))
    good = [r for r in results if "sha256" in r]
    bad = [r for r in results if "sha256" not in r]
    bad += [{"uri": f.uri, "label": f.label, "reason": failures[f.uri].reason,
             "message": failures[f.uri].message} for f in unread]  # fmt: skip
    good, conflicts, duplicates = _drop_duplicates(good)
    bad += conflicts
    manifest = pd.DataFrame(good, columns=MANIFEST_COLUMNS)
    quarantine = pd.DataFrame(bad, columns=QUARANTINE_COLUMNS)
    _check_classes(manifest, source)
    report = {
        "source": source,
        "files_listed": len(files),
        "images_kept": len(manifest),
        "quarantined": len(quarantine),
        "quarantine_reasons": dict(Counter(quarantine["reason"])),
        "skipped_non_image_files": len(skipped),
        "duplicates_dropped": duplicates,
        "files_with_decoder_warnings": int((manifest["decoder_warnings"] > 0).sum()),
        "decoder_warnings": int(manifest["decoder_warnings"].sum()),
        "images_per_class": {k: int(v) for k, v in manifest["label"].value_counts().sort_index().items()},
        "source_formats": dict(Counter(manifest["format"])),
        "source_modes": dict(Counter(manifest["mode"])),
        "dataset_version": dataset_version(manifest),
    }
    logger.info(
        "ingest: %d kept, %d quarantined %s, %d non-image files skipped, %d duplicates, %d decoder warnings",
        report["images_kept"],
        report["quarantined"],
        report["quarantine_reasons"],
        report["skipped_non_image_files"],
        duplicates,
        report["decoder_warnings"],
    )
    return IngestResult(manifest, quarantine, report)


def _check_classes(manifest: pd.DataFrame, source: str) -> None:
    present = set(manifest["label"])
    if not present:
        raise DataSourceError(f"no usable image in {source}; check the folder holds Cat/ and Dog/ photos")
    missing = [c for c in CLASS_NAMES if c not in present]
    if missing:
        raise DataSourceError(
            f"{source} has no usable '{missing[0]}' images (only {sorted(present)}); "
            "both a Cat/ and a Dog/ folder with photos are needed"
        )


def copy_to_quarantine(quarantine: pd.DataFrame, dataset_key: str) -> Path:
    """Copy bad local files aside so a person can look at them; sources stay untouched."""
    folder = cache_root() / "quarantine" / dataset_key
    for row in quarantine.itertuples():
        src = Path(row.uri)
        if not row.uri.startswith("gs://") and src.is_file():
            dest = folder / row.reason / quarantine_name(row.label, row.uri)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
    return folder


def quarantine_name(label: str, uri: str) -> str:
    """``<label>-<8 hex of sha256(uri)>-<name>``: Cat/bad.jpg and cats/bad.jpg never overwrite each other.

    Keyed by the source path, not the bytes, so two identical bad files at two paths are both kept,
    and the name is the same on every run.
    """
    return f"{label}-{hashlib.sha256(uri.encode()).hexdigest()[:8]}-{Path(uri).name}"


# ---------------------------------------------------------------- ZenML step


@step
def ingest(
    source: str,
    source_fingerprint: str,
    limit_per_class: int | None = None,
    source_sha256: str | None = None,
) -> tuple[
    Annotated[pd.DataFrame, "manifest"],
    Annotated[pd.DataFrame, "quarantine"],
    Annotated[dict[str, Any], "ingest_report"],
]:
    """Cached on ``source_fingerprint``: unchanged data is not read again."""
    result = ingest_source(source, limit_per_class, source_sha256)
    folder = copy_to_quarantine(result.quarantine, source_fingerprint)
    result.report["quarantine_folder"] = str(folder)
    log_metadata(metadata={"ingest": result.report, "dataset_version": result.report["dataset_version"]})
    return result.manifest, result.quarantine, result.report
