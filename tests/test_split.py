"""split_manifest: content-hash based, deterministic, stable when photos are added, stratified."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from steps.split import SPLITS, assign_split, split_counts, split_manifest, split_position


def fake_manifest(n_per_class: int, start: int = 0, labels: tuple[str, ...] = ("cat", "dog")) -> pd.DataFrame:
    rows = [
        {
            "sha256": hashlib.sha256(f"{label}-{i}".encode()).hexdigest(),
            "label": label,
            "uri": f"/{label}/{i}",
        }
        for label in labels
        for i in range(start, start + n_per_class)
    ]
    return pd.DataFrame(rows)


def split_of(frame: pd.DataFrame) -> dict[str, str]:
    return dict(zip(frame["sha256"], frame["split"], strict=True))


def test_split_position_is_uniform_in_unit_interval_and_deterministic() -> None:
    shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(2000)]
    positions = [split_position(s) for s in shas]
    assert all(0.0 <= p < 1.0 for p in positions)
    assert positions == [split_position(s) for s in shas]
    assert 0.45 < sum(positions) / len(positions) < 0.55
    assert len(set(positions)) == len(positions)


def test_assign_split_follows_the_fractions() -> None:
    sha = hashlib.sha256(b"x").hexdigest()
    p = split_position(sha)
    assert assign_split(sha, 0.1, p + 1e-9) == "test"
    assert assign_split(sha, p + 1e-9, 0.0) == "val"
    assert assign_split(sha, 0.0, 0.0) == "train"


def test_split_is_deterministic() -> None:
    manifest = fake_manifest(200)
    a, b = split_manifest(manifest), split_manifest(manifest)
    pd.testing.assert_frame_equal(a, b)
    assert set(a["split"]) == set(SPLITS)


def test_split_does_not_modify_its_input() -> None:
    manifest = fake_manifest(50)
    before = manifest.copy()
    split_manifest(manifest)
    pd.testing.assert_frame_equal(manifest, before)
    assert "split" not in manifest.columns


def test_split_depends_only_on_the_content_hash() -> None:
    manifest = fake_manifest(200)
    base = split_of(split_manifest(manifest))
    shuffled = manifest.sample(frac=1.0, random_state=3).reset_index(drop=True)
    moved = shuffled.assign(uri=[f"/elsewhere/{i}" for i in range(len(shuffled))])
    assert split_of(split_manifest(moved)) == base


def test_adding_images_never_moves_existing_images() -> None:
    old = fake_manifest(200)
    grown = pd.concat([old, fake_manifest(300, start=200)], ignore_index=True)
    before, after = split_of(split_manifest(old)), split_of(split_manifest(grown))
    assert all(after[sha] == split for sha, split in before.items())
    assert len(after) == 1000


def test_removing_images_never_moves_the_remaining_ones() -> None:
    full = fake_manifest(300)
    before = split_of(split_manifest(full))
    kept = full.iloc[::2].reset_index(drop=True)
    assert all(before[sha] == split for sha, split in split_of(split_manifest(kept)).items())


def test_split_is_roughly_stratified() -> None:
    result = split_manifest(fake_manifest(2000), val_fraction=0.1, test_fraction=0.2)
    for label in ("cat", "dog"):
        shares = result[result["label"] == label]["split"].value_counts(normalize=True)
        assert shares["test"] == pytest.approx(0.2, abs=0.03)
        assert shares["val"] == pytest.approx(0.1, abs=0.03)
        assert shares["train"] == pytest.approx(0.7, abs=0.03)


def test_unbalanced_classes_keep_their_proportions_in_each_split() -> None:
    manifest = pd.concat([fake_manifest(1500, labels=("cat",)), fake_manifest(500, labels=("dog",))])
    result = split_manifest(manifest, 0.15, 0.15)
    for name in SPLITS:
        part = result[result["split"] == name]
        assert (part["label"] == "cat").mean() == pytest.approx(0.75, abs=0.05)


def test_too_few_images_is_a_clear_error() -> None:
    with pytest.raises(ValueError) as info:
        split_manifest(fake_manifest(2), 0.1, 0.1)
    message = str(info.value)
    assert "too few" in message
    assert "4 images" in message
    assert "limit_per_class" in message


def test_split_counts() -> None:
    result = split_manifest(fake_manifest(300))
    counts = split_counts(result)
    assert set(counts) == set(SPLITS)
    assert sum(n for per_label in counts.values() for n in per_label.values()) == 600
    for name in SPLITS:
        assert set(counts[name]) == {"cat", "dog"}
        assert counts[name]["cat"] == int(((result["split"] == name) & (result["label"] == "cat")).sum())


def test_split_of_a_real_ingest(tmp_path) -> None:
    from steps.ingest import ingest_source
    from tests.image_factory import make_dataset

    make_dataset(tmp_path, per_class=40)
    manifest = ingest_source(str(tmp_path), workers=1).manifest
    result = split_manifest(manifest, 0.2, 0.2)
    assert len(result) == 80
    assert list(result.columns) == [*manifest.columns, "split"]
