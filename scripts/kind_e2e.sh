#!/usr/bin/env bash
# End-to-end test on a throwaway kind cluster: a small model, the serving
# image, the kind overlay, the smoke test (with automatic rollback on failure,
# via scripts/release.sh).
#
#   scripts/kind_e2e.sh [--cluster catsdogs-e2e] [--overlay k8s/overlays/kind]
#                       [--mar FILE] [--model-name catsdogs] [--model-version 1]
#                       [--models-dir runs/kind-models] [-- EXTRA SMOKE TEST ARGS]
#
# 1. The model: without --mar, scripts/build_e2e_mar.py builds a zero-shot
#    EfficientNet-Lite0 `.mar` (no data, no training). It is put where the kind
#    overlay's init container looks for it: <models-dir>/<name>/<version>/<name>.mar,
#    <models-dir> being mounted into the kind node as /model-source
#    (MODEL_STORE_URI=file:///model-source in k8s/base/settings.yaml).
# 2. The cluster: created with that mount when it does not exist yet (kind
#    mounts are fixed at creation: an existing cluster must already have it).
# 3. docker/serving.Dockerfile is built as catsdogs-serving:e2e-<commit> and
#    loaded into the node (the overlay uses imagePullPolicy: Never).
# 4. The Secret torchserve-api-key (the clients' shared API key, which the pods
#    mount) is created with a random key unless the cluster has it already: no
#    key is ever in git or on a command line.
# 5. scripts/release.sh: apply -k, rollout, smoke test (through the Service, with
#    that key; when the model was built here, its answers must report its
#    version e2e-<commit>), rollback on failure.
# On failure the namespace's pods, events and logs are printed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cluster="${KIND_CLUSTER_NAME:-catsdogs-e2e}"
overlay="k8s/overlays/kind"
mar=""
model_name="catsdogs"
model_version="1"
models_dir="runs/kind-models"
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
    --model-name) model_name="${2:?}"; shift 2 ;;
    --model-version) model_version="${2:?}"; shift 2 ;;
    --models-dir) models_dir="${2:?}"; shift 2 ;;
    --namespace) namespace="${2:?}"; shift 2 ;;
    --deployment) deployment="${2:?}"; shift 2 ;;
    --) shift; smoke_args=(-- "$@"); break ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done

for tool in docker kind kubectl; do
  command -v "$tool" > /dev/null || die "$tool is not installed"
done
[[ -f docker/serving.Dockerfile ]] || die "docker/serving.Dockerfile not found (run from the repository root)"
[[ -d "$overlay" ]] || die "overlay $overlay not found"
[[ "$model_name" =~ ^[A-Za-z0-9._-]+$ && "$model_version" =~ ^[A-Za-z0-9._-]+$ ]] \
  || die "bad model name or version: $model_name $model_version"

sha="$(git rev-parse --short=12 HEAD 2>/dev/null || echo local)"
image="catsdogs-serving:e2e-${sha}"

# 1. The small model, where the init container will look for it.
target_dir="${models_dir}/${model_name}/${model_version}"
mkdir -p "$target_dir"
if [[ -z "$mar" ]]; then
  built="$("$python" "$here/build_e2e_mar.py" --out "$target_dir/build" \
    --model-name "$model_name" --version "e2e-${sha}" | tail -n 1)"
  mv "$built" "$target_dir/${model_name}.mar"
  rm -rf "$target_dir/build"
  # The smoke test fails unless this model answers (not an older one left in the cluster).
  export SMOKE_EXPECT_VERSION="${SMOKE_EXPECT_VERSION:-e2e-${sha}}"
else
  [[ -f "$mar" ]] || die "model archive $mar not found"
  cp "$mar" "$target_dir/${model_name}.mar"
fi
chmod 0644 "$target_dir/${model_name}.mar"
echo "kind_e2e: model at ${target_dir}/${model_name}.mar"

# 2. The cluster, with the models folder mounted as /model-source.
if kind get clusters | grep -qx "$cluster"; then
  echo "kind_e2e: reusing kind cluster ${cluster} (it must mount $(realpath "$models_dir") at /model-source)"
else
  config="$(mktemp)"
  trap 'rm -f "$config"' EXIT
  cat > "$config" <<KIND
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
    extraMounts:
      - hostPath: $(realpath "$models_dir")
        containerPath: /model-source
        readOnly: true
KIND
  kind create cluster --name "$cluster" --config "$config" --wait 120s
fi
kubectl config use-context "kind-${cluster}"

# 3. The serving image, into the node.
docker build --file docker/serving.Dockerfile --tag "$image" .
kind load docker-image "$image" --name "$cluster"

# 4. The clients' shared API key, random, made once per cluster (pods need it to start).
kubectl create namespace "$namespace" --dry-run=client -o yaml | kubectl apply -f - > /dev/null
if ! kubectl --namespace "$namespace" get secret torchserve-api-key > /dev/null 2>&1; then
  (
    key_file="$(mktemp)"  # mode 0600, removed whatever happens
    trap 'rm -f "$key_file"' EXIT
    "$python" -c 'import secrets, sys; sys.stdout.write(secrets.token_hex(32))' > "$key_file"
    kubectl --namespace "$namespace" create secret generic torchserve-api-key --from-file=api-key="$key_file"
  )
fi

# 5. Deploy, smoke test, roll back on failure.
status=0
"$here/release.sh" --overlay "$overlay" --namespace "$namespace" --deployment "$deployment" \
  --image "catsdogs-serving=${image}" --release "e2e-${sha}" --timeout 420s \
  "${smoke_args[@]}" || status=$?

if [[ $status -ne 0 ]]; then
  echo "kind_e2e: FAILED (exit ${status}); cluster state follows" >&2
  kubectl --namespace "$namespace" get all -o wide >&2 || true
  kubectl --namespace "$namespace" get events --sort-by=.lastTimestamp >&2 || true
  kubectl --namespace "$namespace" logs "deployment/${deployment}" --all-containers --tail=200 >&2 || true
  exit "$status"
fi
echo "kind_e2e: passed"
