"""Register and activate the ZenML stack 'local'; running it again changes nothing.

local = local orchestrator + local artifact store + MLflow experiment tracker
whose tracking store (SQLite) lives inside the local artifact store.
``--tracking-uri`` prints only that store's URI (for ``make mlflow-ui``): run from a
file, not ``python -c``, since ZenML needs a main module with a file to find its root.
"""

from __future__ import annotations

import logging
import sys

from zenml.client import Client
from zenml.enums import StackComponentType

STACK = "local"
TRACKER = "mlflow_tracker"
logger = logging.getLogger("setup_local_stack")


def ensure_component(client: Client, kind: StackComponentType, name: str, flavor: str) -> None:
    existing = {c.name: c for c in client.list_stack_components(type=kind, size=1000).items}
    if name in existing:
        if existing[name].flavor_name != flavor:
            raise SystemExit(
                f"error: a {kind.value} named '{name}' exists with flavor "
                f"'{existing[name].flavor_name}', expected '{flavor}'; rename or delete it"
            )
        return
    client.create_stack_component(name=name, flavor=flavor, component_type=kind, configuration={})
    logger.info("registered %s '%s' (%s)", kind.value, name, flavor)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    client = Client()
    if "--tracking-uri" in (sys.argv[1:] if argv is None else argv):
        tracker = client.active_stack.experiment_tracker
        if tracker is None:
            print(
                f"error: the active stack has no experiment tracker; run `make stack` ({STACK})",
                file=sys.stderr,
            )
            return 2
        print(tracker.get_tracking_uri())
        return 0
    ensure_component(client, StackComponentType.ORCHESTRATOR, "default", "local")
    ensure_component(client, StackComponentType.ARTIFACT_STORE, "default", "local")
    ensure_component(client, StackComponentType.EXPERIMENT_TRACKER, TRACKER, "mlflow")
    stacks = {s.name for s in client.list_stacks(size=1000).items}
    if STACK not in stacks:
        client.create_stack(
            name=STACK,
            components={
                StackComponentType.ORCHESTRATOR: "default",
                StackComponentType.ARTIFACT_STORE: "default",
                StackComponentType.EXPERIMENT_TRACKER: TRACKER,
            },
        )
        logger.info("registered stack '%s'", STACK)
    if client.active_stack_model.name != STACK:
        client.activate_stack(STACK)
    logger.info(
        "active stack: %s (MLflow store: %s)",
        STACK,
        client.active_stack.experiment_tracker.get_tracking_uri(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
