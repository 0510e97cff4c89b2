"""What the train-and-deploy workflow asks the ZenML server: no prompts, no guessing which run.

    python -m steps.zenml_ci sync-stack --stack-file zenml_stack.yaml
    python -m steps.zenml_ci check-run --run-name NAME [--pipeline training_pipeline] [--outputs FILE]

``sync-stack`` makes the server's stack exactly what the stack file says: missing
components and the stack are created, a component whose configuration differs
is updated to the file's (keys the file dropped are removed), and the stack is
set to the file's components. ``zenml stack import`` cannot do this: it prompts
(``click.prompt``; with no stdin in CI: "Aborted!") when a component of the same
name exists with another configuration, and refuses a stack that exists, so edits
of zenml_stack.yaml would never reach the server. A component whose *flavor*
differs cannot be updated in place: that stops with the command that fixes it.

``check-run`` decides whether the training run passed. The exit status of
``zenml pipeline run`` cannot: with the Kubernetes orchestrator (synchronous) the
orchestrator pod records a failed step, marks the run failed and then ends
normally, so the command exits 0 (ZenML 0.98,
``zenml/integrations/kubernetes/orchestrators/kubernetes_orchestrator_entrypoint.py``).
The run is looked up by the unique name the workflow gave it (run names are
unique per ZenML project), it must be a run of ``--pipeline`` and ``completed``;
otherwise the one-line verdict names each failed step and its exception. On
success ``run_id=<uuid>`` and ``run_name=<name>`` are appended to ``--outputs``,
so exactly this run's model is published (``python -m steps.model_publish --run-id``).

Exit status: 0 in sync / completed; 1 otherwise (the reason on stderr, one line).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from steps.gcp_settings import log_plainly_to_stderr

logger = logging.getLogger(__name__)

TRAINING_PIPELINE = "training_pipeline"
MAX_REASON_CHARS = 400


class ZenmlCiError(RuntimeError):
    """The server's stack or run is not what the release needs; the message says what to do."""


def _one_line(text: object, limit: int = MAX_REASON_CHARS) -> str:
    """Collapse whitespace so a reason fits one CI log line."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _cli_name(kind: Any) -> str:
    """``artifact_store`` -> ``artifact-store``, the ZenML CLI's command group."""
    return str(kind.value).replace("_", "-")


# --- the stack ---------------------------------------------------------------------------


def read_stack_file(path: Path) -> tuple[str, dict[Any, list[dict[str, Any]]]]:
    """(stack name, {component type: [component entries]}) from a `zenml stack export` file."""
    from zenml.enums import StackComponentType

    data = yaml.safe_load(path.read_text()) or {}
    name, components = data.get("stack_name"), data.get("components")
    if not name or not isinstance(components, dict) or not components:
        raise ZenmlCiError(f"{path} is not a `zenml stack export` file (stack_name and components)")
    wanted: dict[Any, list[dict[str, Any]]] = {}
    for kind, entries in components.items():
        entries = entries if isinstance(entries, list) else [entries]
        wanted[StackComponentType(kind)] = [
            {"name": e["name"], "flavor": e["flavor"], "configuration": dict(e.get("configuration") or {})}
            for e in entries
        ]
    return str(name), wanted


def sync_component(client: Any, kind: Any, entry: dict[str, Any]) -> tuple[Any, str]:
    """(component id, what was done) after making the named component match ``entry``."""
    name, flavor, config = entry["name"], entry["flavor"], entry["configuration"]
    try:
        existing = client.get_stack_component(
            component_type=kind, name_id_or_prefix=name, allow_name_prefix_match=False
        )
    except KeyError:
        created = client.create_stack_component(
            name=name, component_type=kind, flavor=flavor, configuration=config
        )
        return created.id, f"created {kind.value} {name}"
    if existing.flavor_name != flavor:
        raise ZenmlCiError(
            f"{kind.value} {name} on the ZenML server has flavor {existing.flavor_name!r}, the stack file "
            f"says {flavor!r}, and ZenML cannot change a flavor in place: remove it from the stack "
            f"(`zenml stack remove-component`) and delete it (`zenml {_cli_name(kind)} delete {name}`), "
            "or give the component another name in steps/gcp_settings.py and re-render"
        )
    if existing.configuration == config:
        return existing.id, f"{kind.value} {name} unchanged"
    # update_stack_component merges into the stored configuration and drops keys set to None.
    dropped = {key: None for key in existing.configuration if key not in config}
    client.update_stack_component(
        name_id_or_prefix=name, component_type=kind, configuration={**dropped, **config}
    )
    changed = sorted(
        key
        for key in {*existing.configuration, *config}
        if existing.configuration.get(key) != config.get(key)
    )
    return existing.id, f"updated {kind.value} {name} ({', '.join(changed)})"


def sync_stack(stack_file: Path) -> list[str]:
    """Make the server's stack match ``stack_file``; returns what was done, one line per component."""
    from zenml.client import Client

    client = Client()
    stack_name, wanted = read_stack_file(stack_file)
    done: list[str] = []
    wanted_ids: dict[Any, list[Any]] = {}
    for kind, entries in wanted.items():
        for entry in entries:
            component_id, action = sync_component(client, kind, entry)
            wanted_ids.setdefault(kind, []).append(component_id)
            done.append(action)
    try:
        stack = client.get_stack(name_id_or_prefix=stack_name, allow_name_prefix_match=False)
    except KeyError:
        client.create_stack(name=stack_name, components=wanted_ids)
        return [*done, f"created stack {stack_name}"]
    current = {kind: [c.id for c in comps] for kind, comps in stack.components.items() if comps}
    if current == wanted_ids:
        return [*done, f"stack {stack_name} unchanged"]
    updates = {**{kind: [] for kind in current if kind not in wanted_ids}, **wanted_ids}
    client.update_stack(name_id_or_prefix=stack.id, component_updates=updates)
    return [*done, f"updated stack {stack_name} to the file's components"]


# --- the run -----------------------------------------------------------------------------


def step_reason(step_run: Any) -> str:
    """The exception message a failed step recorded, on one line ('' when none was)."""
    info = step_run.exception_info
    if info is None:
        return ""
    return _one_line(info.message or (info.traceback.strip().splitlines() or [""])[-1])


def latest_failure_reason(pipeline_name: str) -> str | None:
    """Why the newest run of a pipeline failed: ``step: message`` for each failed step.

    ZenML's own error only names the failed step; the useful part (which photos,
    which check, which version keeps serving) is in the step's exception info.
    """
    from zenml.client import Client

    runs = Client().list_pipeline_runs(pipeline_name=pipeline_name, sort_by="desc:created", size=1)
    if not runs.items:
        return None
    reasons = [
        f"{name}: {step_reason(step_run)}"
        for name, step_run in runs.items[0].steps.items()
        if step_run.exception_info is not None
    ]
    return "; ".join(reasons) or None


def failure_summary(run: Any) -> str:
    """Each failed step with its exception's message; or which steps never finished."""
    failed, unfinished = [], []
    for name, step_run in run.steps.items():
        status = str(step_run.status.value)
        if status == "failed":
            failed.append(f"step {name} failed: {step_reason(step_run) or 'no exception recorded'}")
        elif status not in {"completed", "cached", "skipped"}:
            unfinished.append(f"step {name} is {status}")
    if failed:
        return "; ".join(failed)
    if unfinished:
        return "; ".join(unfinished)
    return "no step failed; see the orchestrator's log above (kubectl logs of the orchestrator pod)"


def completed_run(name_or_id: str, pipeline_name: str = TRAINING_PIPELINE) -> Any:
    """The run ``name_or_id`` of ``pipeline_name``, if it completed; else ZenmlCiError saying why."""
    from zenml.client import Client

    try:
        run = Client().get_pipeline_run(name_id_or_prefix=name_or_id, allow_name_prefix_match=False)
    except KeyError:
        raise ZenmlCiError(
            f"no pipeline run {name_or_id!r} on the ZenML server: the run never started (see the log above)"
        ) from None
    actual = run.pipeline.name if run.pipeline is not None else None
    if actual != pipeline_name:
        raise ZenmlCiError(f"run {run.name} is a run of {actual!r}, not of {pipeline_name!r}")
    status = str(run.status.value)
    if status != "completed":
        raise ZenmlCiError(f"{pipeline_name} run {run.name} ({run.id}) is {status}: {failure_summary(run)}")
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sync = commands.add_parser("sync-stack", help="make the server's stack match the stack file")
    sync.add_argument("--stack-file", type=Path, required=True)
    check = commands.add_parser("check-run", help="require that one named run completed")
    check.add_argument("--run-name", required=True, help="the run's unique name (or its id)")
    check.add_argument("--pipeline", default=TRAINING_PIPELINE)
    check.add_argument("--outputs", type=Path, help="append run_id=<uuid> and run_name=<name> to this file")
    args = parser.parse_args(argv)
    log_plainly_to_stderr(logger)
    try:
        if args.command == "sync-stack":
            for line in sync_stack(args.stack_file):
                logger.info("zenml stack: %s", line)
            return 0
        run = completed_run(args.run_name, args.pipeline)
    except Exception as exc:  # ZenmlCiError, or ZenML's own (server unreachable, invalid config...)
        logger.error("zenml %s: %s", args.command, _one_line(exc, 1000))
        return 1
    if args.outputs:
        with args.outputs.open("a") as out:
            out.write(f"run_id={run.id}\nrun_name={run.name}\n")
    logger.info("zenml check-run: %s run %s (%s) completed", args.pipeline, run.name, run.id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
