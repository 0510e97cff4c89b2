#!/usr/bin/env bash
# Roll the TorchServe Deployment back to the revision that served before a release.
#
#   scripts/rollback.sh --to-revision N [--namespace catsdogs] [--deployment torchserve] [--timeout 300s]
#
# N is the `previous_revision` recorded by scripts/deploy.sh before it applied
# anything. The rollback is safe to run whatever happened to the release:
#   - the Deployment is still at N (the release never got applied): nothing to undo, exit 0;
#   - it moved past N: `kubectl rollout undo --to-revision=N`, wait for it, exit 0;
#   - N is empty (the failed release was the first deployment): nothing to go
#     back to, exit 1 so the failure stays visible;
#   - the undo itself does not roll out in time: exit 1.
set -euo pipefail

to_revision=""
to_revision_set=false
namespace="${K8S_NAMESPACE:-catsdogs}"
deployment="${K8S_DEPLOYMENT:-torchserve}"
timeout="${ROLLOUT_TIMEOUT:-300s}"

die() { echo "rollback: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --to-revision) to_revision="${2-}"; to_revision_set=true; shift 2 ;;
    --namespace) namespace="${2:?}"; shift 2 ;;
    --deployment) deployment="${2:?}"; shift 2 ;;
    --timeout) timeout="${2:?}"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done

$to_revision_set || die "--to-revision N is required (use the previous_revision output of deploy.sh)"
[[ -z "$to_revision" || "$to_revision" =~ ^[0-9]+$ ]] || die "--to-revision must be a number, got: $to_revision"

if [[ -z "$to_revision" ]]; then
  echo "rollback: no previous revision of ${namespace}/${deployment} was recorded (first deployment?): nothing to roll back to" >&2
  exit 1
fi

current="$(kubectl --namespace "$namespace" get deployment "$deployment" \
  -o jsonpath='{.metadata.annotations.deployment\.kubernetes\.io/revision}')"
if [[ "$current" == "$to_revision" ]]; then
  echo "rollback: ${namespace}/${deployment} is still at revision ${to_revision}: the release was never applied, nothing to undo"
  exit 0
fi

echo "rollback: ${namespace}/${deployment} is at revision ${current}; rolling back to revision ${to_revision}"
kubectl --namespace "$namespace" rollout undo "deployment/${deployment}" --to-revision="$to_revision"
if ! kubectl --namespace "$namespace" rollout status "deployment/${deployment}" --timeout="$timeout"; then
  echo "rollback: the rollback of ${namespace}/${deployment} did not complete within ${timeout}" >&2
  exit 1
fi
echo "rollback: ${namespace}/${deployment} is serving the previous release again"
