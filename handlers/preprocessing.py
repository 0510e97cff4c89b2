"""Image -> tensor, the single code path used by training, evaluation and serving.

Serving calls ``preprocess_bytes``; training calls ``decode_image`` once at
ingest and then ``eval_transform`` (or ``train_transform`` for augmentation)
on the same RGB image. A test checks that both give the same tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torchvision import transforms

from handlers.image_decoding import decode_image

Transform = Callable[[Image.Image], torch.Tensor]


def eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> Transform:
    """Deterministic resize (whole image, no crop: a dog at the edge stays in) + normalise."""
    return transforms.Compose(
        [
            transforms.Resize((image_size, image_size), antialias=True),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def train_transform(image_size: int, mean: Sequence[float], std: Sequence[float], augment: bool) -> Transform:
    """Light augmentation around the eval transform; identical to it when augment is off."""
    if not augment:
        return eval_transform(image_size, mean, std)
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(
                (image_size, image_size), scale=(0.7, 1.0), ratio=(0.8, 1.25), antialias=True
            ),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def preprocess_bytes(
    data: bytes, image_size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Decode untrusted bytes and return a CHW float tensor; raises ImageDecodeError."""
    return eval_transform(image_size, mean, std)(decode_image(data).image)
