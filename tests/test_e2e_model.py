"""scripts/build_e2e_mar.py: the kind job's small model tells cats from dogs without training."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "scripts"))

from build_e2e_mar import main, zero_shot_model  # noqa: E402

from handlers.image_decoding import ImageDecodeError  # noqa: E402
from handlers.models import ModelMetadata  # noqa: E402
from handlers.preprocessing import preprocess_bytes  # noqa: E402


def test_zero_shot_model_answers_real_photos(petimages_dir: Path) -> None:
    model = zero_shot_model()
    meta = ModelMetadata(architecture="efficientnet_lite0")
    right = total = 0
    for label, folder in enumerate(("Cat", "Dog")):
        for path in sorted((petimages_dir / folder).glob("*.jpg"))[:15]:
            try:
                x = preprocess_bytes(path.read_bytes(), meta.image_size, meta.mean, meta.std)
            except ImageDecodeError:
                continue
            with torch.no_grad():
                right += int(model(x[None]).argmax(1).item() == label)
            total += 1
    assert total >= 20
    assert right / total >= 0.85, f"zero-shot accuracy {right}/{total}"


@pytest.mark.slow
def test_build_e2e_mar_packages_the_real_handler(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path), "--version", "e2e-test"]) == 0
    (mar,) = tmp_path.glob("*.mar")
    assert mar.name == "catsdogs_e2e-test.mar"
    names = zipfile.ZipFile(mar).namelist()
    assert "MAR-INF/MANIFEST.json" in names
    assert any(n.endswith("index_to_name.json") for n in names)
