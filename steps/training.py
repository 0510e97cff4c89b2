"""Train: fine-tune a pretrained backbone, or train a small CNN from scratch.

A pretrained EfficientNet-Lite0 is split at a cut point: the frozen trunk runs
once per image (``extract_features``, cached by ZenML per dataset version) and
only the tail (the last ``trainable_blocks`` blocks, the head convolution and
the classifier; with 0, just the classifier on pooled features) is trained
for several epochs on the cached tensors. That makes an epoch cost a fraction
of a forward pass over the photos, which is what lets 20,000 photos train in
minutes on two CPU cores. Other architectures train end to end on images.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from zenml import get_step_context, log_metadata, step

from handlers.cpu_limit import cpu_limit
from handlers.image_decoding import decode_image
from handlers.model_spec import CLASS_NAMES, INFERENCE_BATCH_SIZE
from handlers.models import EfficientNetLite0, ModelMetadata, build_model, make_bundle
from handlers.preprocessing import Transform, eval_transform, train_transform
from steps import tracking
from steps.config import ModelConfig, RunConfig, TrainingConfig
from steps.data_sources import DataSourceError, prefetch, read_bytes
from steps.materializers import ModelBundleMaterializer
from steps.pretrained import load_pretrained

logger = logging.getLogger(__name__)


def configure_threads() -> int:
    threads = cpu_limit()
    torch.set_num_threads(threads)
    return threads


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def uses_cached_trunk(model: ModelConfig) -> bool:
    return model.architecture == "efficientnet_lite0" and model.pretrained_weights is not None


# ---------------------------------------------------------------- data


class ImageDataset(Dataset):
    """Manifest rows -> (tensor, label index), decoded with the serving decoder."""

    def __init__(self, frame: pd.DataFrame, transform: Transform) -> None:
        self.items = list(zip(frame["uri"], frame["version"], frame["label"], strict=True))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        uri, version, label = self.items[index]
        image = decode_image(read_bytes(uri, version)).image
        return self.transform(image), CLASS_NAMES.index(label)


def image_loader(
    frame: pd.DataFrame, transform: Transform, batch_size: int, shuffle: bool, seed: int = 0
) -> DataLoader:
    """One worker decodes while the main process computes; more would fight for two cores.

    GCS photos are downloaded first, here in the parent (a step on a fresh pod has an
    empty cache): the loader's forked worker must only read the local cache.
    """
    failures = prefetch(zip(frame["uri"], frame["version"], strict=True))
    if failures:
        uri, failure = next(iter(failures.items()))
        raise DataSourceError(
            f"{len(failures)} photo(s) of the manifest can no longer be read, e.g. {uri}: "
            f"{failure.message}; restore them or re-run ingest on the current data"
        )
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        ImageDataset(frame, transform),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=1 if len(frame) > batch_size else 0,
        generator=generator,
    )


def labels_of(frame: pd.DataFrame) -> torch.Tensor:
    return torch.tensor([CLASS_NAMES.index(label) for label in frame["label"]])


# ---------------------------------------------------------------- trunk / tail split


def build_pretrained(model_cfg: ModelConfig) -> nn.Module:
    model = build_model(model_cfg.architecture, len(CLASS_NAMES))
    load_pretrained(model, model_cfg.architecture, model_cfg.pretrained_weights)
    return model


def trunk_output(model: EfficientNetLite0, x: torch.Tensor, trainable_blocks: int) -> torch.Tensor:
    """What the frozen part produces: a feature map, or pooled features when only the classifier trains."""
    n_blocks = len(model._blocks)
    if trainable_blocks == 0:
        h = model.forward_trunk(x, n_blocks)
        return F.relu6(model._bn1(model._conv_head(h))).mean(dim=(2, 3))
    return model.forward_trunk(x, n_blocks - trainable_blocks)


def tail_forward(model: EfficientNetLite0, h: torch.Tensor, trainable_blocks: int) -> torch.Tensor:
    if trainable_blocks == 0:
        return model.classifier(model.dropout(h))
    return model.forward_tail(h, len(model._blocks) - trainable_blocks)


def tail_modules(model: EfficientNetLite0, trainable_blocks: int) -> list[nn.Module]:
    if trainable_blocks == 0:
        return [model.classifier]
    return model.tail_modules(len(model._blocks) - trainable_blocks)


def extract_trunk_features(
    split_manifest: pd.DataFrame, model_cfg: ModelConfig, batch_size: int = INFERENCE_BATCH_SIZE
) -> np.ndarray:
    """Frozen-trunk outputs for every manifest row, float16, in manifest order."""
    configure_threads()
    model = build_pretrained(model_cfg).eval()
    metadata = ModelMetadata(architecture=model_cfg.architecture, image_size=model_cfg.image_size)
    transform = eval_transform(metadata.image_size, metadata.mean, metadata.std)
    outputs = []
    loader = image_loader(split_manifest, transform, batch_size, shuffle=False)
    with torch.inference_mode():
        for images, _ in tqdm(loader, desc="extract features", unit="batch"):
            outputs.append(trunk_output(model, images, model_cfg.trainable_blocks).half().numpy())
    return np.concatenate(outputs)


# ---------------------------------------------------------------- fitting


@dataclass
class TrainResult:
    model: nn.Module
    metadata: ModelMetadata
    history: list[dict[str, float]]


Batches = Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]


def tensor_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, generator: torch.Generator, flip: bool
) -> Batches:
    """Mini-batches over cached tensors; ``flip`` mirrors feature maps (horizontal-flip augmentation)."""

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(x), generator=generator) if shuffle else torch.arange(len(x))
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            xb = x[idx].float()
            if flip and xb.dim() == 4:
                mask = torch.rand(len(idx), generator=generator) < 0.5
                xb[mask] = xb[mask].flip(3)
            yield xb, y[idx]

    return batches


def loader_batches(loader: DataLoader) -> Batches:
    return lambda: iter(loader)


def run_epoch(
    forward: Callable[[torch.Tensor], torch.Tensor],
    batches: Batches,
    optimizer: torch.optim.Optimizer | None,
    label_smoothing: float,
    desc: str,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> tuple[float, float]:
    """One pass; trains when an optimizer is given. Returns (mean loss, accuracy)."""
    total_loss, correct, seen = 0.0, 0, 0
    with torch.set_grad_enabled(optimizer is not None):
        for xb, yb in tqdm(batches(), desc=desc, unit="batch", leave=False):
            logits = forward(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=label_smoothing if optimizer else 0.0)
            if optimizer is not None:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
            total_loss += loss.item() * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(yb)
    return total_loss / max(seen, 1), correct / max(seen, 1)


def fit(
    modules: list[nn.Module],
    forward: Callable[[torch.Tensor], torch.Tensor],
    train: Batches,
    val: Batches,
    cfg: TrainingConfig,
    steps_per_epoch: int,
) -> list[dict[str, float]]:
    """AdamW + cosine schedule; keeps the weights of the best validation epoch."""
    params = [p for m in modules for p in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.learning_rate, total_steps=cfg.epochs * max(steps_per_epoch, 1), pct_start=0.15
    )

    history: list[dict[str, float]] = []
    best_acc, best_state = -1.0, None
    for epoch in tqdm(range(1, cfg.epochs + 1), desc="train", unit="epoch"):
        for m in modules:
            m.train()
        train_loss, train_acc = run_epoch(
            forward, train, optimizer, cfg.label_smoothing, f"epoch {epoch}", scheduler
        )
        for m in modules:
            m.eval()
        val_loss, val_acc = run_epoch(forward, val, None, 0.0, "validate")
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_accuracy": train_acc,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
        }
        history.append(row)
        tracking.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
        logger.info(
            "epoch %d: train loss %.4f acc %.4f | val loss %.4f acc %.4f",
            epoch,
            train_loss,
            train_acc,
            val_loss,
            val_acc,
        )
        if val_acc > best_acc:
            best_acc, best_state = val_acc, [copy.deepcopy(m.state_dict()) for m in modules]
    if best_state is not None:
        for m, state in zip(modules, best_state, strict=True):
            m.load_state_dict(state)
    return history


def train_model(
    split_manifest: pd.DataFrame, config: RunConfig, features: np.ndarray | None = None
) -> TrainResult:
    """Train per ``config``; ``features`` are the cached trunk outputs when the backbone is pretrained."""
    configure_threads()
    set_seed(config.training.seed)
    model_cfg, cfg = config.model, config.training
    model = build_pretrained(model_cfg)
    metadata = ModelMetadata(architecture=model_cfg.architecture, image_size=model_cfg.image_size)
    train_rows = (split_manifest["split"] == "train").to_numpy()
    val_rows = (split_manifest["split"] == "val").to_numpy()
    generator = torch.Generator().manual_seed(cfg.seed)
    if uses_cached_trunk(model_cfg):
        if features is None or len(features) != len(split_manifest):
            raise ValueError("cached trunk features are missing or do not match the manifest")
        lite = model
        assert isinstance(lite, EfficientNetLite0)
        for p in lite.parameters():
            p.requires_grad_(False)
        modules = tail_modules(lite, model_cfg.trainable_blocks)
        for m in modules:
            for p in m.parameters():
                p.requires_grad_(True)
        # Artifacts load read-only; torch wants a writable buffer.
        x, y = torch.from_numpy(np.require(features, requirements="W")), labels_of(split_manifest)
        train = tensor_batches(x[train_rows], y[train_rows], cfg.batch_size, True, generator, cfg.augment)
        val = tensor_batches(x[val_rows], y[val_rows], 256, False, generator, False)
        k = model_cfg.trainable_blocks

        def forward(h: torch.Tensor) -> torch.Tensor:
            return tail_forward(lite, h, k)
    else:
        modules = [model]
        train_tf = train_transform(metadata.image_size, metadata.mean, metadata.std, cfg.augment)
        eval_tf = eval_transform(metadata.image_size, metadata.mean, metadata.std)
        train = loader_batches(
            image_loader(split_manifest[train_rows], train_tf, cfg.batch_size, True, cfg.seed)
        )
        val = loader_batches(image_loader(split_manifest[val_rows], eval_tf, 128, False))
        forward = model
    steps = -(-int(train_rows.sum()) // cfg.batch_size)
    history = fit(modules, forward, train, val, cfg, steps)
    model.eval()
    return TrainResult(model, metadata, history)


def weights_digest(model: nn.Module) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def git_commit() -> str:
    """The commit the code came from: CI's variable, else git, else 'unknown'."""
    for var in ("GITHUB_SHA", "GIT_COMMIT"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ---------------------------------------------------------------- ZenML steps


@step
def extract_features(
    split_manifest: pd.DataFrame, model_config: ModelConfig
) -> Annotated[np.ndarray, "trunk_features"]:
    """The expensive forward pass over every photo, done once per dataset version and model cut.

    Takes only the model section of the config, so changing epochs or the
    learning rate reuses the cached features.
    """
    return extract_trunk_features(split_manifest, model_config)


@step(output_materializers={"model_bundle": ModelBundleMaterializer})
def train(
    split_manifest: pd.DataFrame,
    config: RunConfig,
    ingest_report: dict[str, Any],
    features: np.ndarray | None = None,
) -> tuple[Annotated[dict[str, Any], "model_bundle"], Annotated[list[dict[str, float]], "history"]]:
    dataset_version = ingest_report["dataset_version"]
    tracking.log_json(config.model_dump(), "config.json")
    tracking.log_params(
        {
            "architecture": config.model.architecture,
            "image_size": config.model.image_size,
            "pretrained_weights": config.model.pretrained_weights,
            "trainable_blocks": config.model.trainable_blocks,
            **config.training.model_dump(),
            "dataset_version": dataset_version,
        }
    )
    result = train_model(split_manifest, config, features)
    context = get_step_context()
    result.metadata.version = weights_digest(result.model)[:12]
    result.metadata.lineage = {
        "dataset_version": dataset_version,
        "git_commit": git_commit(),
        "zenml_pipeline_run": context.pipeline_run.name,
        "zenml_pipeline_run_id": str(context.pipeline_run.id),
    }
    tracking.set_tags({"model_version": result.metadata.version, **result.metadata.lineage})
    log_metadata(metadata={"model_version": result.metadata.version, "lineage": result.metadata.lineage})
    log_metadata(
        metadata={"model_version": result.metadata.version, **result.metadata.lineage},
        run_id_name_or_prefix=context.pipeline_run.id,
    )
    return make_bundle(result.model, result.metadata), result.history
