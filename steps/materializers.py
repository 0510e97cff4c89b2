"""Store model bundles as a torch file that loads with ``weights_only=True``.

ZenML's default for a dict of tensors would be cloudpickle, which executes
code on load and ties the artifact to library versions; a bundle is only
tensors, strings and numbers, so it is written and read as plain data.
"""

from __future__ import annotations

import io
import os
from typing import Any, ClassVar

import torch
from zenml.enums import ArtifactType
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer
from zenml.metadata.metadata_types import MetadataType

BUNDLE_FILE = "model.pt"


class ModelBundleMaterializer(BaseMaterializer):
    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (dict,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.MODEL

    def load(self, data_type: type[Any]) -> dict[str, Any]:
        with fileio.open(os.path.join(self.uri, BUNDLE_FILE), "rb") as fh:
            return torch.load(io.BytesIO(fh.read()), map_location="cpu", weights_only=True)

    def save(self, data: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(data, buffer)
        with fileio.open(os.path.join(self.uri, BUNDLE_FILE), "wb") as fh:
            fh.write(buffer.getvalue())

    def extract_metadata(self, data: dict[str, Any]) -> dict[str, MetadataType]:
        meta = data.get("metadata", {})
        return {
            "architecture": str(meta.get("architecture")),
            "model_version": str(meta.get("version")),
            "image_size": int(meta.get("image_size", 0)),
            "class_names": ",".join(meta.get("class_names", [])),
        }
