#!/usr/bin/env bash
# Run the training pipeline on the production (GCP) stack through the ZenML server.
#
#   ZENML_STORE_URL=https://zenml.example.com ZENML_STORE_API_KEY=... \
#     scripts/run_training_pipeline.sh [--config configs/gcp.yaml] [--stack-file zenml_stack.yaml] [--outputs FILE]
#
# ZenML reads ZENML_STORE_URL / ZENML_STORE_API_KEY (a service account API key)
# from the environment, so the key is never put on a command line or printed.
# First `python -m steps.gcp_preflight` checks, before any work starts, the
# settings, the stack file, the Google credentials, the bucket and its photos
# and the ZenML secrets, and stops with one line saying what to set. PYTHON is
# the interpreter with requirements.txt installed (default: python3).
# The stack named in the stack file is activated, imported first when the
# server does not have it yet. Then:
#
#   zenml pipeline run pipelines.training.training_pipeline -c configs/gcp.yaml
#
# whose quality gate fails the run when the model is below the minimum accuracy.
# On success `pipeline_passed=true` is appended to the outputs file (default:
# $GITHUB_OUTPUT), which is what lets the image build and the deploy start.
# Exit status: 0 passed; 2 bad usage, missing settings or a failed preflight; 6 the run failed
# (quality gate or error, see the log above).
set -euo pipefail

config="configs/gcp.yaml"
stack_file="zenml_stack.yaml"
pipeline="pipelines.training.training_pipeline"
python="${PYTHON:-python3}"
outputs="${GITHUB_OUTPUT:-/dev/null}"

die() { echo "run_training_pipeline: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --config) config="${2:?}"; shift 2 ;;
    --stack-file) stack_file="${2:?}"; shift 2 ;;
    --outputs) outputs="${2:?}"; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done

[[ -n "${ZENML_STORE_URL:-}" ]] || die "ZENML_STORE_URL is not set (the ZenML server URL; GitHub variable ZENML_STORE_URL)"
[[ -n "${ZENML_STORE_API_KEY:-}" ]] || die "ZENML_STORE_API_KEY is not set (a ZenML service account API key; GitHub secret ZENML_STORE_API_KEY)"
[[ -f "$config" ]] || die "run config $config not found"
[[ -f "$stack_file" ]] || die "stack file $stack_file not found"

"$python" -m steps.gcp_preflight --stack-file "$stack_file" --config "$config" || exit 2

stack="$("$python" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["stack_name"])' "$stack_file")" \
  || die "$stack_file has no stack_name"
[[ "$stack" =~ ^[A-Za-z0-9._-]+$ ]] || die "unexpected stack name in $stack_file: $stack"

if zenml stack set "$stack" > /dev/null 2>&1; then
  echo "run_training_pipeline: using stack ${stack} from the ZenML server"
else
  echo "run_training_pipeline: stack ${stack} is not on the server yet: importing ${stack_file}"
  zenml stack import "$stack" -f "$stack_file"
  zenml stack set "$stack"
fi

if ! zenml pipeline run "$pipeline" -c "$config"; then
  echo "run_training_pipeline: the training run failed (quality gate or error): nothing will be built or deployed" >&2
  exit 6
fi
echo "pipeline_passed=true" >> "$outputs"
echo "run_training_pipeline: the training run passed its quality gate"
