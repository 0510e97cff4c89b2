"""Split: train / val / test assigned from each image's content hash.

An image's split depends only on its own bytes, so re-running gives the same
split and adding photos never moves an existing one. Each class is split by
the same rule, which keeps the classes in proportion (stratified) up to
sampling noise.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Annotated, Any

import pandas as pd
from zenml import log_metadata, step

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_SALT = b"catsdogs-split-v1"


def split_position(sha256: str) -> float:
    """A uniform number in [0, 1) derived from the content hash alone."""
    digest = hashlib.sha256(_SALT + sha256.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(sha256: str, val_fraction: float, test_fraction: float) -> str:
    position = split_position(sha256)
    if position < test_fraction:
        return "test"
    if position < test_fraction + val_fraction:
        return "val"
    return "train"


def split_manifest(
    manifest: pd.DataFrame, val_fraction: float = 0.1, test_fraction: float = 0.1
) -> pd.DataFrame:
    """The manifest with a ``split`` column."""
    out = manifest.copy()
    out["split"] = [assign_split(s, val_fraction, test_fraction) for s in out["sha256"]]
    for name in SPLITS:
        for label in sorted(out["label"].unique()):
            if not ((out["split"] == name) & (out["label"] == label)).any():
                raise ValueError(
                    f"the {name} split has no '{label}' image: {len(out)} images are too few "
                    "for the configured fractions; add photos or raise limit_per_class"
                )
    return out


def split_counts(manifest: pd.DataFrame) -> dict[str, Any]:
    counts = manifest.groupby(["split", "label"]).size()
    return {split: {label: int(n) for label, n in counts[split].items()} for split in SPLITS}


@step
def split(
    manifest: pd.DataFrame, val_fraction: float = 0.1, test_fraction: float = 0.1
) -> Annotated[pd.DataFrame, "split_manifest"]:
    result = split_manifest(manifest, val_fraction, test_fraction)
    counts = split_counts(result)
    logger.info("split: %s", counts)
    log_metadata(metadata={"split_counts": counts})
    return result
