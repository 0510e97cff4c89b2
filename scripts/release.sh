#!/usr/bin/env bash
# Deploy, smoke-test, and roll back automatically when either fails: the whole
# release in one command (the kind end-to-end job and hand deployments use it;
# the GKE workflow runs the same three scripts as separate jobs).
#
#   scripts/release.sh --overlay DIR [deploy.sh options...] [-- EXTRA SMOKE TEST ARGS]
#
# Namespace and Deployment come from --namespace / --deployment (or
# K8S_NAMESPACE / K8S_DEPLOYMENT) and are shared by the three steps.
# Exit status: 0 released; otherwise the failing step's status (deploy.sh: 3 or
# 4, smoke.sh: its own), after the rollback has run.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
deploy_args=()
smoke_args=()
export K8S_NAMESPACE="${K8S_NAMESPACE:-catsdogs}"
export K8S_DEPLOYMENT="${K8S_DEPLOYMENT:-torchserve}"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --namespace) K8S_NAMESPACE="${2:?}"; shift 2 ;;
    --deployment) K8S_DEPLOYMENT="${2:?}"; shift 2 ;;
    --) shift; smoke_args=(-- "$@"); break ;;
    *) deploy_args+=("$1"); shift ;;
  esac
done

outputs="$(mktemp)"
trap 'rm -f "$outputs"' EXIT

rollback_and_exit() {
  local status=$1
  local previous
  previous="$(sed -n 's/^previous_revision=//p' "$outputs" | tail -n 1)"
  if [[ -z "$(sed -n '/^previous_revision=/p' "$outputs")" ]]; then
    echo "release: failed before the current revision was recorded; nothing was applied" >&2
    exit "$status"
  fi
  echo "release: rolling back to revision '${previous:-none}'" >&2
  "$here/rollback.sh" --to-revision "$previous" || echo "release: ROLLBACK FAILED" >&2
  exit "$status"
}

status=0
"$here/deploy.sh" "${deploy_args[@]}" --outputs "$outputs" || status=$?
[[ $status -eq 0 ]] || rollback_and_exit "$status"

"$here/smoke.sh" "${smoke_args[@]}" || status=$?
[[ $status -eq 0 ]] || rollback_and_exit "$status"
echo "release: ${K8S_NAMESPACE}/${K8S_DEPLOYMENT} released and verified"
