#!/usr/bin/env bash
# Run the training pipeline on the production (GCP) stack through the ZenML server.
#
#   ZENML_STORE_URL=https://zenml.example.com ZENML_STORE_API_KEY=... \
#     scripts/run_training_pipeline.sh [--config configs/gcp.yaml] [--stack-file zenml_stack.yaml] \
#       [--run-name NAME] [--outputs FILE]
#
# ZenML reads ZENML_STORE_URL / ZENML_STORE_API_KEY (a service account API key)
# from the environment, so the key is never put on a command line or printed.
# First `python -m steps.gcp_preflight` checks, before any work starts, the
# settings, the stack file, the Google credentials, the bucket and its photos
# and the ZenML secrets, and stops with one line saying what to set. PYTHON is
# the interpreter with requirements.txt installed (default: python3).
# Then `python -m steps.zenml_ci sync-stack` makes the server's stack exactly
# what the stack file says (creates it, or updates the components that differ;
# never prompts), and the pipeline runs on that stack, under a run name of its own:
#
#   zenml pipeline run pipelines.training.training_pipeline -c <configs/gcp.yaml + run_name> -s <stack>
#
# The run name is --run-name, else STACK-gh<GITHUB_RUN_ID>-<GITHUB_RUN_ATTEMPT> in
# GitHub Actions, else STACK-<UTC time>-<random>. The exit status of `zenml
# pipeline run` does not say whether the run passed (with the Kubernetes
# orchestrator a failed step still exits 0), so that run is then looked up by
# name (`python -m steps.zenml_ci check-run`): it must be `completed`, or the
# failed step and its reason (the quality gate's accuracy, an error) are printed.
# On success `run_id=<uuid>`, `run_name=<name>` and `pipeline_passed=true` are
# appended to the outputs file (default: $GITHUB_OUTPUT): the image build and the
# deploy start only then, and `python -m steps.model_publish --run-id <uuid>`
# publishes exactly this run's model.
# Exit status: 0 passed; 2 bad usage, missing settings, a failed preflight or a
# stack the server cannot take; 6 the run failed (quality gate or error, see above).
set -euo pipefail

config="configs/gcp.yaml"
stack_file="zenml_stack.yaml"
pipeline="pipelines.training.training_pipeline"
python="${PYTHON:-python3}"
outputs="${GITHUB_OUTPUT:-/dev/null}"
run_name=""

die() { echo "run_training_pipeline: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --config) config="${2:?}"; shift 2 ;;
    --stack-file) stack_file="${2:?}"; shift 2 ;;
    --outputs) outputs="${2:?}"; shift 2 ;;
    --run-name) run_name="${2:?}"; shift 2 ;;
    -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done

[[ -n "${ZENML_STORE_URL:-}" ]] || die "ZENML_STORE_URL is not set (the ZenML server URL; GitHub variable ZENML_STORE_URL)"
[[ -n "${ZENML_STORE_API_KEY:-}" ]] || die "ZENML_STORE_API_KEY is not set (a ZenML service account API key; GitHub secret ZENML_STORE_API_KEY)"
[[ -f "$config" ]] || die "run config $config not found"
[[ -f "$stack_file" ]] || die "stack file $stack_file not found"
[[ -z "$run_name" || "$run_name" =~ ^[A-Za-z0-9._-]+$ ]] || die "--run-name must match [A-Za-z0-9._-]: $run_name"

"$python" -m steps.gcp_preflight --stack-file "$stack_file" --config "$config" || exit 2

stack="$("$python" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["stack_name"])' "$stack_file")" \
  || die "$stack_file has no stack_name"
[[ "$stack" =~ ^[A-Za-z0-9._-]+$ ]] || die "unexpected stack name in $stack_file: $stack"

if [[ -z "$run_name" ]]; then
  if [[ -n "${GITHUB_RUN_ID:-}" ]]; then
    run_name="${stack}-gh${GITHUB_RUN_ID}-${GITHUB_RUN_ATTEMPT:-1}"
  else
    run_name="${stack}-$(date -u +%Y%m%d-%H%M%S)-${RANDOM}"
  fi
fi
[[ "$run_name" =~ ^[A-Za-z0-9._-]+$ ]] || die "the run name must match [A-Za-z0-9._-]: $run_name"

# The server's stack = the stack file (created or updated; `zenml stack import` would prompt).
"$python" -m steps.zenml_ci sync-stack --stack-file "$stack_file" || exit 2

# The run config with this run's name: the file's own run_name is a date template,
# which could not be looked up afterwards. Outside the repository (no build context).
workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT
run_config="${workdir}/$(basename "$config")"
"$python" - "$config" "$run_name" > "$run_config" <<'PY'
import sys

import yaml

with open(sys.argv[1]) as f:
    config = yaml.safe_load(f) or {}
config["run_name"] = sys.argv[2]
yaml.safe_dump(config, sys.stdout, sort_keys=False)
PY

echo "run_training_pipeline: running ${pipeline} on stack ${stack} as run ${run_name}"
zenml_status=0
zenml pipeline run "$pipeline" -c "$run_config" -s "$stack" || zenml_status=$?

# Whatever `zenml pipeline run` exited with: did THIS run complete?
if ! "$python" -m steps.zenml_ci check-run --run-name "$run_name" --pipeline "${pipeline##*.}" \
    --outputs "$outputs"; then
  echo "run_training_pipeline: the training run failed (quality gate or error): nothing will be built or deployed" >&2
  exit 6
fi
if [[ "$zenml_status" -ne 0 ]]; then
  echo "run_training_pipeline: zenml pipeline run exited ${zenml_status} although run ${run_name} completed: nothing will be built or deployed" >&2
  exit 6
fi
echo "pipeline_passed=true" >> "$outputs"
echo "run_training_pipeline: the training run ${run_name} passed its quality gate"
