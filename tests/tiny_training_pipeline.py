"""A seconds-long stand-in for the training pipeline, for the tests of the run check and of publishing.

It has the real pipeline's name (``training_pipeline``), its ``train`` step with the
``model_bundle`` output (stored by the real ModelBundleMaterializer) and an
``evaluate`` step that fails like the quality gate. Run as a command it behaves
like ``zenml pipeline run`` with the Kubernetes orchestrator: a failed step is
recorded in the run and the command still exits 0::

    python -m tests.tiny_training_pipeline --run-name NAME [--bundle model.pt] [--fail]

It prints ``run_id=<uuid>`` of the run it started (the run is found by its name).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Annotated, Any

import torch
from zenml import pipeline, step

from steps.materializers import ModelBundleMaterializer

GATE_MESSAGE = "quality gate failed: test accuracy 0.5000 is below the minimum 0.9000"


@step(enable_cache=False, output_materializers={"model_bundle": ModelBundleMaterializer})
def train(bundle_path: str = "") -> Annotated[dict[str, Any], "model_bundle"]:
    """The bundle file given, or an empty bundle when the test does not publish it."""
    if bundle_path:
        return torch.load(bundle_path, map_location="cpu", weights_only=True)
    return {"state_dict": {}, "metadata": {}}


@step(enable_cache=False)
def evaluate(bundle: dict[str, Any], fail: bool = False) -> None:
    """The quality gate, decided by the test."""
    if fail:
        raise RuntimeError(GATE_MESSAGE)


@pipeline(name="training_pipeline", enable_cache=False)
def tiny_training_pipeline(bundle_path: str = "", fail: bool = False) -> None:
    evaluate(train(bundle_path), fail)


def run(run_name: str, bundle_path: str = "", fail: bool = False) -> str:
    """Run it under ``run_name``; the failure, if any, is only recorded in the run (as on Kubernetes)."""
    from zenml.client import Client

    with contextlib.suppress(RuntimeError):
        tiny_training_pipeline.with_options(run_name=run_name)(bundle_path=bundle_path, fail=fail)
    return str(Client().get_pipeline_run(run_name, allow_name_prefix_match=False).id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-name", required=True)
    parser.add_argument("--bundle", default="")
    parser.add_argument("--fail", action="store_true")
    args = parser.parse_args(argv)
    print(f"run_id={run(args.run_name, args.bundle, args.fail)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
