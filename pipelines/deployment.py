"""The deployment pipeline: trained bundle -> .mar -> local TorchServe, promoted only if healthy.

    package_model -> register_candidate -> smoke_test_candidate -> promote_candidate

A new version is registered next to the serving one, smoke tested through its
own version URL and only then made the default; on failure it is unregistered,
the previous default keeps serving and the run fails with the reason.

Run it::

    zenml pipeline run pipelines.deployment.deployment_pipeline        # latest trained model
    python -m pipelines.deployment --bundle runs/model.pt              # a bundle file
    python -m pipelines.deployment --training-run RUN_ID_OR_NAME       # that training run's model
    python -m pipelines.deployment --no-zenml --bundle runs/model.pt   # plain functions only
    python -m pipelines.deployment --publish gs://BUCKET/model-store    # + publish for GKE

The model comes from ``bundle_path``, else from the ``model_bundle`` output of
the training run ``training_run`` (id or name), else of your latest *completed*
training run on the active stack (completed = it passed the evaluation quality
gate; a named run that did not complete is refused). ZenML lookups happen when
the pipeline is built, never at import.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from zenml import pipeline, step

from handlers.models import BundleError, load_bundle, read_bundle_file
from steps import deployment, torchserve_local
from steps.materializers import ModelBundleMaterializer
from steps.model_publish import publish_model
from steps.packaging import DEFAULT_MODEL_NAME, mlflow_tracker_name, package_model
from steps.zenml_ci import latest_failure_reason

logger = logging.getLogger(__name__)

TRAINING_PIPELINE = "training_pipeline"
TRAINING_STEP = "train"
BUNDLE_OUTPUT = "model_bundle"


def trained_bundle(training_run: str = "") -> Any:
    """The ``model_bundle`` artifact of one completed training run.

    ``training_run`` (a run id or name) names the run: what CI passes, so that the
    model published is the one its own run trained and evaluated. Without it: the
    newest completed run of the current user on the active stack, never another
    user's or another stack's run (a shared ZenML server holds both).
    """
    from zenml.client import Client

    from steps.zenml_ci import completed_run

    if training_run:
        run = completed_run(training_run, TRAINING_PIPELINE)
    else:
        client = Client()
        runs = client.list_pipeline_runs(
            pipeline=TRAINING_PIPELINE,
            status="completed",
            stack_id=client.active_stack_model.id,
            user=client.active_user.id,
            sort_by="desc:created",
            size=1,
        )
        if not runs.items:
            raise RuntimeError(
                f"no completed training run of yours on stack {client.active_stack_model.name}: "
                "run `make run` (or the training pipeline) first, or pass bundle_path or training_run"
            )
        run = runs.items[0]
    outputs = run.steps[TRAINING_STEP].outputs[BUNDLE_OUTPUT]
    return outputs[0] if isinstance(outputs, list) else outputs


@step(enable_cache=False, output_materializers={"model_bundle": ModelBundleMaterializer})
def load_bundle_file(bundle_path: str) -> Annotated[dict, "model_bundle"]:
    """A bundle file (``model.pt``) as the pipeline's model input.

    Stored like training's bundle: ZenML's default for a dict would pickle every
    tensor as an artifact of its own (minutes, and not loadable weights-only).
    """
    return read_bundle_file(bundle_path)


@step(enable_cache=False)
def register_candidate(mar: Path, run_dir: str = "") -> Annotated[dict, "candidate"]:
    """Start or reuse the local TorchServe and register the archive as a candidate version."""
    return asdict(deployment.register_candidate(mar, run_dir or None))


@step(enable_cache=False)
def smoke_test_candidate(candidate: dict) -> Annotated[dict, "smoke_tested_candidate"]:
    """Fail the run (and unregister the candidate) unless the smoke test passes."""
    deployment.smoke_test_candidate(deployment.Candidate(**candidate))
    return candidate


@step(enable_cache=False)
def promote_candidate(candidate: dict) -> Annotated[dict, "deployment"]:
    """Make the smoke-tested version the default; log the ready-to-paste curl."""
    result = deployment.promote_candidate(deployment.Candidate(**candidate))
    logger.info("try it: %s", result["curl"])
    return result


@pipeline(enable_cache=False)
def deployment_pipeline(
    bundle_path: str = "",
    model_name: str = DEFAULT_MODEL_NAME,
    run_dir: str = "",
    publish_to: str = "",
    training_run: str = "",
) -> None:
    bundle = load_bundle_file(bundle_path) if bundle_path else trained_bundle(training_run)
    tracker = mlflow_tracker_name()
    packager = package_model.with_options(experiment_tracker=tracker) if tracker else package_model
    mar = packager(bundle, model_name=model_name)
    candidate = register_candidate(mar, run_dir=run_dir)
    checked = smoke_test_candidate(candidate)
    promote_candidate(checked)
    if publish_to:  # the smoke-tested archive, to the model store the GKE pods fetch from
        publish_model(mar, checked, store_uri=publish_to)


def print_curl(curl: str) -> None:
    """The last line of ``make run`` / ``make deploy``: the curl alone on stdout.

    Written plainly, not logged: ZenML's log handler colours URLs, and escape codes
    in a line copied from a CI log would break it as a command.
    """
    sys.stdout.write(f"{curl}\n")
    sys.stdout.flush()


def bundle_is_usable(path: str) -> bool:
    """Check a --bundle file before any pipeline runs: a wrong file fails in one line, not a traceback."""
    try:
        load_bundle(path)
    except BundleError as exc:
        logger.error("deployment failed: %s", exc)
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description="Deploy a trained model to local TorchServe")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--bundle", default="", help="model.pt bundle (default: your latest training run)")
    source.add_argument("--training-run", default="", metavar="RUN",
                        help="id or name of the completed training run whose model to deploy")  # fmt: skip
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME)
    parser.add_argument("--no-zenml", action="store_true",
                        help="deploy with the plain functions (needs --bundle)")  # fmt: skip
    parser.add_argument("--publish", default="", metavar="gs://BUCKET/model-store",
                        help="also publish the smoke-tested .mar there (steps/model_publish.py)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.publish and args.no_zenml:
        parser.error("--publish runs as a step of the ZenML pipeline; drop --no-zenml")
    if args.bundle and not bundle_is_usable(args.bundle):
        return 2
    try:
        if args.no_zenml:
            if not args.bundle:
                parser.error("--no-zenml needs --bundle")
            result = deployment.deploy_latest(Path(args.bundle), model_name=args.model_name)
            curl = result["curl"]
        else:
            deployment_pipeline(
                bundle_path=args.bundle,
                model_name=args.model_name,
                publish_to=args.publish,
                training_run=args.training_run,
            )
            settings = torchserve_local.load_running()
            if settings is None:
                raise deployment.DeploymentError("the pipeline finished but no local TorchServe answers")
            curl = deployment.curl_command(settings, args.model_name)
    except Exception as exc:  # the step's DeploymentError, or ZenML's wrapper around it
        reason = None if args.no_zenml else latest_failure_reason("deployment_pipeline")
        logger.error("deployment failed: %s", reason or exc)
        return 1
    logger.info("serving %s; try it:", args.model_name)
    print_curl(curl)
    return 0


if __name__ == "__main__":
    sys.exit(main())
