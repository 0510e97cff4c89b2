"""The facts that training and serving must agree on, kept in one place.

Class order, input size, normalisation and decoding limits live here so that
the training pipeline, the TorchServe handler and the benchmarks can never
drift apart. The trained model carries a copy of these values in its metadata
(see ``handlers.models.ModelMetadata``) and serving reads them from there.
"""

from __future__ import annotations

# Index i of the model's output is CLASS_NAMES[i]. Folder names are matched
# case-insensitively, with plural forms accepted ("Cat", "cats", "DOGS").
CLASS_NAMES: tuple[str, ...] = ("cat", "dog")

DEFAULT_IMAGE_SIZE = 192

# Batch size for offline forward passes (feature extraction, evaluation). On a CPU
# small batches are much faster per image: the early feature maps of a large batch
# no longer fit in cache. Measured on EfficientNet-Lite0 at 192 px, 2 threads:
# 60-90 images/s at batch 4-8, 50 at 16, 21 at 64.
INFERENCE_BATCH_SIZE = 8

# Images smaller than this (either side) carry too little signal to learn from
# or to answer about; ingest quarantines them and the handler refuses them.
MIN_IMAGE_SIDE = 16

# Pillow's decompression-bomb guard: refuse images with more pixels than this
# before decoding them in full (about 40 megapixels, e.g. 8000 x 5000).
MAX_IMAGE_PIXELS = 40_000_000

# Per-backbone input normalisation (mean, std) in RGB order on a 0..1 scale.
IMAGENET_NORMALIZATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# EfficientNet-Lite was trained in TensorFlow on inputs scaled to [-1, 1].
SYMMETRIC_NORMALIZATION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

ARCHITECTURE_NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "efficientnet_lite0": SYMMETRIC_NORMALIZATION,
    "simple_cnn": SYMMETRIC_NORMALIZATION,
}


def normalization_for(architecture: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Return (mean, std) for an architecture; torchvision backbones use ImageNet's."""
    return ARCHITECTURE_NORMALIZATION.get(architecture, IMAGENET_NORMALIZATION)
