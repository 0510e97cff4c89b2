#!/usr/bin/env bash
# End-to-end test on a throwaway kind cluster: build the serving image with a
# small model, load it into kind, deploy the kind overlay, smoke-test it (with
# automatic rollback on failure, via scripts/release.sh).
#
#   scripts/kind_e2e.sh [--cluster catsdogs-e2e] [--overlay k8s/overlays/kind]
#                       [--mar FILE] [--manifest-image catsdogs-serving]
#                       [--model-store /home/model-server/model-store]
#                       [-- EXTRA SMOKE TEST ARGS]
#
# Needs docker, kind and kubectl, and a running kind cluster (the workflow
# creates it with helm/kind-action; locally: `kind create cluster --name catsdogs-e2e`).
# Without --mar, a zero-shot EfficientNet-Lite0 `.mar` is built by
# scripts/build_e2e_mar.py (no data, no training). The `.mar` is copied into a
# layer on top of docker/serving.Dockerfile at the model store path, so the
# kind overlay serves it without any cloud storage. On failure the cluster
# state (pods, events, logs) is printed to help the diagnosis.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cluster="${KIND_CLUSTER_NAME:-catsdogs-e2e}"
overlay="k8s/overlays/kind"
mar=""
manifest_image="catsdogs-serving"
model_store="${E2E_MODEL_STORE:-/home/model-server/model-store}"
namespace="${K8S_NAMESPACE:-catsdogs}"
deployment="${K8S_DEPLOYMENT:-torchserve}"
python="${PYTHON:-python}"
smoke_args=()

die() { echo "kind_e2e: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --cluster) cluster="${2:?}"; shift 2 ;;
    --overlay) overlay="${2:?}"; shift 2 ;;
    --mar) mar="${2:?}"; shift 2 ;;
    --manifest-image) manifest_image="${2:?}"; shift 2 ;;
    --model-store) model_store="${2:?}"; shift 2 ;;
    --namespace) namespace="${2:?}"; shift 2 ;;
    --deployment) deployment="${2:?}"; shift 2 ;;
    --) shift; smoke_args=(-- "$@"); break ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done

for tool in docker kind kubectl; do
  command -v "$tool" > /dev/null || die "$tool is not installed"
done
[[ -f docker/serving.Dockerfile ]] || die "docker/serving.Dockerfile not found (run from the repository root)"
[[ -d "$overlay" ]] || die "overlay $overlay not found"
kind get clusters | grep -qx "$cluster" || die "no kind cluster named $cluster (kind create cluster --name $cluster)"

workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT
sha="$(git rev-parse --short=12 HEAD 2>/dev/null || echo local)"
image="catsdogs-serving:e2e-${sha}"

# 1. The small model.
if [[ -z "$mar" ]]; then
  mar="$("$python" "$here/build_e2e_mar.py" --out "$workdir/model" --version "e2e-${sha}" | tail -n 1)"
fi
[[ -f "$mar" ]] || die "model archive $mar not found"

# 2. The serving image, plus a layer with the model in its model store.
docker build --file docker/serving.Dockerfile --tag "${image}-base" .
cp "$mar" "$workdir/model.mar"
cat > "$workdir/Dockerfile" <<DOCKERFILE
FROM ${image}-base
COPY --chmod=0444 model.mar ${model_store}/$(basename "$mar")
DOCKERFILE
docker build --file "$workdir/Dockerfile" --tag "$image" "$workdir"

# 3. Into the cluster, then deploy + smoke test + rollback on failure.
kind load docker-image "$image" --name "$cluster"
kubectl config use-context "kind-${cluster}"

status=0
"$here/release.sh" --overlay "$overlay" --namespace "$namespace" --deployment "$deployment" \
  --image "${manifest_image}=${image}" --release "e2e-${sha}" --timeout 300s \
  "${smoke_args[@]}" || status=$?

if [[ $status -ne 0 ]]; then
  echo "kind_e2e: FAILED (exit ${status}); cluster state follows" >&2
  kubectl --namespace "$namespace" get all -o wide >&2 || true
  kubectl --namespace "$namespace" get events --sort-by=.lastTimestamp >&2 || true
  kubectl --namespace "$namespace" logs "deployment/${deployment}" --all-containers --tail=200 >&2 || true
  exit "$status"
fi
echo "kind_e2e: passed"
