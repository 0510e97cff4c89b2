"""EDA: class balance, image sizes and a grid of sample photos.

Run on the split manifest so the balance is shown per split; the pictures are
ZenML artifacts (dashboard visualizations) and MLflow images.
"""

from __future__ import annotations

import random
from typing import Annotated, Any

import pandas as pd
from PIL import Image
from zenml import step

from handlers.image_decoding import decode_image
from steps import plots, tracking
from steps.data_sources import read_bytes


def sample_grid(manifest: pd.DataFrame, per_class: int = 6, seed: int = 0) -> Image.Image:
    rng = random.Random(seed)
    images, titles = [], []
    for label, group in manifest.groupby("label"):
        rows = group.sample(n=min(per_class, len(group)), random_state=rng.randrange(2**31))
        for row in rows.itertuples():
            image = decode_image(read_bytes(row.uri, row.version)).image
            image.thumbnail((160, 160))
            images.append(image)
            titles.append(f"{label} {row.width}x{row.height} {row.format}")
    return plots.image_grid(images, titles)


@step
def eda(
    manifest: pd.DataFrame,
    quarantine: pd.DataFrame,
    ingest_report: dict[str, Any],
) -> tuple[
    Annotated[Image.Image, "class_balance"],
    Annotated[Image.Image, "size_distribution"],
    Annotated[Image.Image, "sample_images"],
]:
    balance = plots.class_balance(manifest)
    sizes = plots.size_distribution(manifest)
    grid = sample_grid(manifest)
    for image, name in (
        (balance, "eda/class_balance.png"),
        (sizes, "eda/size_distribution.png"),
        (grid, "eda/sample_images.png"),
    ):
        tracking.log_image(image, name)
    tracking.log_json(ingest_report, "data/ingest_report.json")
    tracking.log_dataframe_csv(quarantine, "quarantine.csv")
    tracking.set_tags({"dataset_version": ingest_report["dataset_version"]})
    tracking.log_metrics(
        {"images_kept": ingest_report["images_kept"], "images_quarantined": ingest_report["quarantined"]}
    )
    return balance, sizes, grid
