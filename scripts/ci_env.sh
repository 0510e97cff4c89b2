#!/usr/bin/env bash
# Print the deployment settings as KEY=VALUE lines, for "$GITHUB_ENV" or `export`.
#
#   scripts/ci_env.sh [--env-file configs/gcp.env] [--sha GIT_SHA] >> "$GITHUB_ENV"
#
# configs/gcp.env is the one place where the Google Cloud project, region,
# bucket, cluster, registry and namespace are named (zenml_stack.yaml,
# configs/gcp.yaml and k8s/overlays/gcp are rendered from it), so the workflows
# read it too instead of repeating the values as GitHub variables. Derived:
#   AR_REGISTRY         REGION-docker.pkg.dev (the Docker host to log in to)
#   SERVING_IMAGE_REPO  REGISTRY/PROJECT/REPOSITORY/catsdogs-serving
#   IMAGE_TAG           git-<first 12 hex digits of the commit> (immutable per commit)
#   KUBE_CONTEXT        the kubectl context name get-gke-credentials creates
# Values are checked for a safe character set, so they can never smuggle
# shell syntax or a second line into $GITHUB_ENV.
set -euo pipefail

env_file="configs/gcp.env"
sha="${GITHUB_SHA:-}"
image_name="${SERVING_IMAGE_NAME:-catsdogs-serving}"

die() { echo "ci_env: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --env-file) env_file="${2:?}"; shift 2 ;;
    --sha) sha="${2:?}"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done

[[ -f "$env_file" ]] || die "$env_file not found"
if [[ -z "$sha" ]]; then
  sha="$(git rev-parse HEAD 2>/dev/null)" || die "no --sha given, GITHUB_SHA unset and not in a git checkout"
fi
[[ "$sha" =~ ^[0-9a-f]{12,40}$ ]] || die "not a git commit sha: $sha"

required=(GCP_PROJECT GCP_REGION GCS_BUCKET GKE_CLUSTER AR_REPOSITORY K8S_NAMESPACE MODEL_NAME MODEL_VERSION)
declare -A values=()
while IFS= read -r line || [[ -n "$line" ]]; do
  line="${line%%#*}"
  [[ "$line" =~ ^[[:space:]]*$ ]] && continue
  [[ "$line" =~ ^([A-Z][A-Z0-9_]*)=(.*)$ ]] || die "$env_file: cannot parse line: $line"
  key="${BASH_REMATCH[1]}"
  value="${BASH_REMATCH[2]}"
  value="${value%"${value##*[![:space:]]}"}"
  [[ "$value" =~ ^[A-Za-z0-9._:/@-]*$ ]] || die "$env_file: $key has characters outside [A-Za-z0-9._:/@-]"
  values[$key]="$value"
done < "$env_file"

for key in "${required[@]}"; do
  [[ -n "${values[$key]:-}" ]] || die "$env_file: $key is missing or empty"
done

for key in "${!values[@]}"; do
  echo "${key}=${values[$key]}"
done | sort
registry="${values[GCP_REGION]}-docker.pkg.dev"
echo "AR_REGISTRY=${registry}"
echo "SERVING_IMAGE_REPO=${registry}/${values[GCP_PROJECT]}/${values[AR_REPOSITORY]}/${image_name}"
echo "IMAGE_TAG=git-${sha:0:12}"
echo "KUBE_CONTEXT=gke_${values[GCP_PROJECT]}_${values[GCP_REGION]}_${values[GKE_CLUSTER]}"
