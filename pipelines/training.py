"""The training pipeline: photos in, evaluated model bundle out, tracked in MLflow.

Run it either way (both validate the same ``RunConfig``):

    zenml pipeline run pipelines.training.training_pipeline -c configs/quick.yaml
    python -m pipelines.training --config configs/local.yaml --data ../shared/datasets/petimages
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from zenml import pipeline

from steps.config import ConfigError, RunConfig, load_run_file
from steps.data_sources import DataSourceError, check_reachable, source_fingerprint
from steps.eda import eda
from steps.evaluate import evaluate
from steps.ingest import ingest
from steps.split import split
from steps.training import extract_features, train, uses_cached_trunk
from steps.zenml_ci import latest_failure_reason

logger = logging.getLogger(__name__)
DEFAULT_CONFIG = RunConfig()


def _tracked(step_fn: Any) -> Any:
    """Attach the active stack's experiment tracker, if it has one (looked up at run time)."""
    from zenml.client import Client

    tracker = Client().active_stack.experiment_tracker
    return step_fn.with_options(experiment_tracker=tracker.name) if tracker else step_fn


@pipeline(enable_cache=True)
def training_pipeline(config: RunConfig = DEFAULT_CONFIG) -> None:
    data = config.data
    # Computed while the run is compiled: ingest (and all after it) is cached
    # exactly when the photos did not change.
    fingerprint = source_fingerprint(data.source, data.source_sha256, data.limit_per_class)
    manifest, quarantine, report = ingest(
        source=data.source,
        source_fingerprint=fingerprint,
        limit_per_class=data.limit_per_class,
        source_sha256=data.source_sha256,
    )
    split_manifest = split(manifest, val_fraction=data.val_fraction, test_fraction=data.test_fraction)
    _tracked(eda)(split_manifest, quarantine, report)
    features = extract_features(split_manifest, config.model) if uses_cached_trunk(config.model) else None
    bundle, history = _tracked(train)(split_manifest, config, report, features)
    _tracked(evaluate)(bundle, split_manifest, history, config)


# ---------------------------------------------------------------- command line


def run_training(config: RunConfig, zenml_options: dict[str, Any]) -> Any:
    """Run the pipeline with extra ZenML options (settings, run_name...) from the YAML file."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        yaml.safe_dump(zenml_options, fh)
    try:
        return training_pipeline.with_options(config_path=fh.name)(config=config)
    finally:
        Path(fh.name).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/local.yaml", help="run config YAML (configs/*.yaml)")
    parser.add_argument(
        "--data", default=None, help="override data.source: folder, gs://prefix or https://...zip"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config, options = load_run_file(args.config)
        if args.data:
            config = config.model_copy(update={"data": config.data.model_copy(update={"source": args.data})})
            config = RunConfig.model_validate(config.model_dump())
        check_reachable(config.data.source)
        source_fingerprint(config.data.source, config.data.source_sha256, config.data.limit_per_class)
    except (ConfigError, DataSourceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        run = run_training(config, options)
    except Exception as exc:  # the failed step's own message is the useful part
        reason = latest_failure_reason("training_pipeline")
        print(f"error: training failed: {reason or exc}", file=sys.stderr)
        return 1
    print(f"training run {getattr(run, 'name', run)} finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
