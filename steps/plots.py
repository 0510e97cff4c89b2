"""Figures a person would rather look at than read; returned as PIL images.

PIL images show up as visualizations in the ZenML dashboard and are logged
to MLflow as images, so the same picture is in both places.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image


def figure_to_image(fig: plt.Figure) -> Image.Image:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def class_balance(manifest: pd.DataFrame) -> Image.Image:
    counts = manifest.groupby(["split", "label"]).size().unstack(fill_value=0)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    counts.plot.bar(ax=ax, rot=0)
    ax.set_title("Images per class and split")
    ax.set_ylabel("images")
    return figure_to_image(fig)


def size_distribution(manifest: pd.DataFrame) -> Image.Image:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    for label, group in manifest.groupby("label"):
        ax1.scatter(group["width"], group["height"], s=4, alpha=0.4, label=label)
        ax2.hist(group["size_bytes"] / 1024, bins=40, alpha=0.5, label=label)
    ax1.set(title="Image dimensions", xlabel="width (px)", ylabel="height (px)")
    ax2.set(title="File size", xlabel="KiB", ylabel="images")
    ax1.legend()
    ax2.legend()
    return figure_to_image(fig)


def image_grid(images: Sequence[Image.Image], titles: Sequence[str], columns: int = 6) -> Image.Image:
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2 * columns, 2.2 * rows))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, image, title in zip(np.atleast_1d(axes).ravel(), images, titles, strict=False):
        ax.imshow(image)
        ax.set_title(title, fontsize=8)
    return figure_to_image(fig)


def confusion_matrix(matrix: np.ndarray, class_names: Sequence[str]) -> Image.Image:
    fig, ax = plt.subplots(figsize=(4, 3.5))
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(class_names))
    ax.set(
        xticks=ticks,
        yticks=ticks,
        xticklabels=class_names,
        yticklabels=class_names,
        xlabel="predicted",
        ylabel="true",
        title="Confusion matrix (test)",
    )
    for i in ticks:
        for j in ticks:
            color = "white" if matrix[i, j] > matrix.max() / 2 else "black"
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center", color=color)
    return figure_to_image(fig)


def training_curves(history: list[dict[str, float]]) -> Image.Image:
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], marker="o", label="val")
    ax2.plot(epochs, [h["train_accuracy"] for h in history], marker="o", label="train")
    ax2.plot(epochs, [h["val_accuracy"] for h in history], marker="o", label="val")
    ax1.set(title="Loss", xlabel="epoch")
    ax2.set(title="Accuracy", xlabel="epoch")
    ax1.legend()
    ax2.legend()
    return figure_to_image(fig)
