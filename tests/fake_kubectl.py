"""A stand-in for `kubectl`, used by tests/test_deploy_scripts.py.

There is no cluster here, so the deploy scripts run against this fake placed
first on PATH. It keeps a tiny Deployment state in the JSON file named by
FAKE_KUBECTL_STATE, appends every call to FAKE_KUBECTL_LOG (one JSON list per
line) and simulates what the scripts rely on: the revision annotation, apply
(rendered with the real kubectl when REAL_KUBECTL is set), rollout status
success or failure, rollout undo, pod listing, port-forward (to a pod or a
Service), the API key Secret, and creating a namespace.

State keys: exists, revision, apply_fails, rollout_fails (bool; "after_undo"
fails only the rollback's rollout, "until_undo" only the release's), pod_ready,
api_key (the Secret torchserve-api-key's api-key; None: no such Secret; absent:
a fake key), applied_stdin (what `apply -f -` read).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ["FAKE_KUBECTL_STATE"])
LOG = Path(os.environ["FAKE_KUBECTL_LOG"])


def load() -> dict:
    return json.loads(STATE.read_text()) if STATE.exists() else {}


def save(state: dict) -> None:
    STATE.write_text(json.dumps(state))


FAKE_API_KEY = "fake-api-key-0123456789abcdef"


def main(argv: list[str]) -> int:
    with LOG.open("a") as log:
        log.write(json.dumps(argv) + "\n")
    state = load()
    args = list(argv)
    # Drop the global --namespace flag wherever it is.
    if "--namespace" in args:
        i = args.index("--namespace")
        del args[i : i + 2]
    verb = args[0] if args else ""

    if verb == "get" and args[1] == "deployment":
        if not state.get("exists", True):
            if "--ignore-not-found" in args:
                return 0
            print(
                f'Error from server (NotFound): deployments.apps "{args[2]}" not found',
                file=sys.stderr,
            )
            return 1
        if "json" in args:
            print(json.dumps({"spec": {"selector": {"matchLabels": {"app": "torchserve"}}}}))
        else:
            print(state.get("revision", 1), end="")
        return 0

    if verb == "get" and args[1] == "pods":
        ready = "True" if state.get("pod_ready", True) else "False"
        items = [
            {
                "metadata": {"name": "torchserve-old", "deletionTimestamp": "2026-01-01T00:00:00Z"},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]},
            },
            {
                "metadata": {"name": "torchserve-new"},
                "status": {"conditions": [{"type": "Ready", "status": ready}]},
            },
        ]
        print(json.dumps({"items": items}))
        return 0

    if verb == "kustomize":
        real = os.environ.get("REAL_KUBECTL")
        if real:
            return subprocess.run([real, "kustomize", args[1]], check=False).returncode
        # Without a real kubectl: the images the overlay's deployment.yaml names,
        # with the throwaway kustomization's overrides applied by name.
        import yaml

        kustomization = yaml.safe_load((Path(args[1]) / "kustomization.yaml").read_text())
        for image in kustomization.get("images", []):
            if image["name"] == "catsdogs-serving":
                ref = image["newName"] + (
                    "@" + image["digest"] if "digest" in image else ":" + image.get("newTag", "")
                )
                print(f"        image: {ref}")
        return 0

    if verb == "apply" and args[1] == "-k":
        target = Path(args[2])
        state["applied_kustomization"] = (target / "kustomization.yaml").read_text()
        real = os.environ.get("REAL_KUBECTL")
        if real:
            rendered = subprocess.run([real, "kustomize", str(target)], capture_output=True, text=True)
            if rendered.returncode != 0:
                print(rendered.stderr, file=sys.stderr)
                save(state)
                return 1
            state["applied_manifests"] = rendered.stdout
        if state.get("apply_fails"):
            save(state)
            print("error: the server rejected the manifests", file=sys.stderr)
            return 1
        state["revision"] = state.get("revision", 0) + 1 if state.get("exists", True) else 1
        state["exists"] = True
        state["last_action"] = "apply"
        save(state)
        print("deployment.apps/torchserve configured")
        return 0

    if verb == "rollout" and args[1] == "status":
        fails = state.get("rollout_fails", False)
        after_undo = state.get("last_action") == "undo"
        failing = (
            fails is True
            or (fails == "after_undo" and after_undo)
            or (fails == "until_undo" and not after_undo)
        )
        if failing:
            print("error: timed out waiting for the condition", file=sys.stderr)
            return 1
        print('deployment "torchserve" successfully rolled out')
        return 0

    if verb == "rollout" and args[1] == "undo":
        target = next(a.split("=", 1)[1] for a in args if a.startswith("--to-revision="))
        state["undone_to"] = int(target)
        state["revision"] = state.get("revision", 0) + 1
        state["last_action"] = "undo"
        save(state)
        print("deployment.apps/torchserve rolled back")
        return 0

    if verb == "port-forward":
        # Like kubectl: a Service's port is shown as the pod's target port after the arrow.
        service = args[1].startswith("svc/")
        base = 28080 if service else 18080
        for offset, spec in enumerate(args[2:]):
            remote = "8080" if service else spec.lstrip(":")
            print(f"Forwarding from 127.0.0.1:{base + offset} -> {remote}", flush=True)
            print(f"Forwarding from [::1]:{base + offset} -> {remote}", flush=True)
        time.sleep(120)
        return 0

    if verb == "get" and args[1] == "secret":
        key = state.get("api_key", FAKE_API_KEY)
        if key is None:
            print(f'Error from server (NotFound): secrets "{args[2]}" not found', file=sys.stderr)
            return 1
        if "json" in args:
            print(json.dumps({"data": {"api-key": base64.b64encode(key.encode()).decode()}}))
        return 0

    if verb == "create" and args[1] == "secret":
        source = next(a for a in args if a.startswith("--from-file=api-key="))
        state["api_key"] = Path(source.split("=", 2)[2]).read_text()
        save(state)
        print(f"secret/{args[3]} created")
        return 0

    if verb == "create" and args[1] == "namespace":
        print(f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {args[2]}")
        return 0

    if verb == "apply" and args[1:3] == ["-f", "-"]:
        state["applied_stdin"] = sys.stdin.read()
        save(state)
        return 0

    print(f"fake kubectl: unsupported call {argv}", file=sys.stderr)
    return 99


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
