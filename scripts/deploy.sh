#!/usr/bin/env bash
# Apply a kustomize overlay and wait for the TorchServe Deployment to roll out.
#
#   scripts/deploy.sh --overlay k8s/overlays/gcp \
#       [--namespace catsdogs] [--deployment torchserve] \
#       [--image catsdogs-serving=REGISTRY/catsdogs-serving@sha256:...]... \
#       [--release ID] [--model-version V] [--timeout 600s] [--outputs FILE] [--record-only]
#
# Before applying, the Deployment's current revision is recorded as
# `previous_revision=N` and `recorded=true` in the outputs file (default:
# $GITHUB_OUTPUT, so a later job can roll back to it with
# scripts/rollback.sh --to-revision N). N is empty on the very first
# deployment. --record-only stops there (a workflow records in its own step,
# so the rollback target is known even when the apply step fails).
#
# --image NAME=REF overrides an image of the overlay (kustomize `images:`);
# --release ID is written into the pod template as the annotation
# catsdogs.io/release, so every release makes a new ReplicaSet (a new revision
# to roll back from) and `kubectl rollout history` shows what was deployed.
# --model-version V sets MODEL_VERSION in the pod template of the serving
# container and of the init container that fetches the .mar (names:
# --containers torchserve,fetch-model). In the pod template, not only in the
# settings ConfigMap, so that `kubectl rollout undo` brings the previous model
# back along with the previous image.
#
# Exit status: 0 rolled out; 2 bad usage (or an --image NAME that matches no
# image of the overlay); 3 render or apply failed; 4 rollout did not
# complete in time. This script never rolls back by itself: see rollback.sh and
# release.sh.
set -euo pipefail

overlay=""
namespace="${K8S_NAMESPACE:-catsdogs}"
deployment="${K8S_DEPLOYMENT:-torchserve}"
timeout="${ROLLOUT_TIMEOUT:-600s}"
release=""
outputs="${GITHUB_OUTPUT:-/dev/null}"
images=()
record_only=false
model_version=""
containers="torchserve,fetch-model"

die() { echo "deploy: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --overlay) overlay="${2:?}"; shift 2 ;;
    --namespace) namespace="${2:?}"; shift 2 ;;
    --deployment) deployment="${2:?}"; shift 2 ;;
    --image) images+=("${2:?}"); shift 2 ;;
    --release) release="${2:?}"; shift 2 ;;
    --timeout) timeout="${2:?}"; shift 2 ;;
    --outputs) outputs="${2:?}"; shift 2 ;;
    --record-only) record_only=true; shift ;;
    --model-version) model_version="${2:?}"; shift 2 ;;
    --containers) containers="${2:?}"; shift 2 ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done

[[ -n "$overlay" ]] || die "--overlay DIR is required"
[[ -f "$overlay/kustomization.yaml" || -f "$overlay/kustomization.yml" || -f "$overlay/Kustomization" ]] \
  || die "$overlay has no kustomization.yaml"
[[ "$release" =~ ^[A-Za-z0-9._-]*$ ]] || die "--release must match [A-Za-z0-9._-]: $release"
[[ "$model_version" =~ ^[A-Za-z0-9._-]*$ ]] || die "--model-version must match [A-Za-z0-9._-]: $model_version"
IFS=',' read -r serving_container init_container <<< "$containers"

# 1. Record the revision that is serving now (empty on the first deployment).
previous_revision="$(kubectl --namespace "$namespace" get deployment "$deployment" \
  --ignore-not-found \
  -o jsonpath='{.metadata.annotations.deployment\.kubernetes\.io/revision}')"
{
  echo "previous_revision=${previous_revision}"
  echo "recorded=true"
} >> "$outputs"
echo "deploy: ${namespace}/${deployment} is at revision '${previous_revision:-none}' before this release"
$record_only && exit 0

# 2. Layer the image overrides and the release annotation over the overlay, in
#    a throwaway kustomization (kustomize only accepts relative paths to it).
target="$overlay"
if [[ ${#images[@]} -gt 0 || -n "$release" || -n "$model_version" ]]; then
  workdir="$(mktemp -d)"
  trap 'rm -rf "$workdir"' EXIT
  relative="$(realpath --relative-to="$workdir" "$overlay")"
  {
    echo "apiVersion: kustomize.config.k8s.io/v1beta1"
    echo "kind: Kustomization"
    echo "resources:"
    echo "- ${relative}"
    if [[ ${#images[@]} -gt 0 ]]; then
      echo "images:"
      for spec in "${images[@]}"; do
        name="${spec%%=*}"
        ref="${spec#*=}"
        [[ -n "$name" && -n "$ref" && "$spec" == *=* ]] || die "--image wants NAME=REF, got: $spec"
        echo "- name: ${name}"
        if [[ "$ref" == *@sha256:* ]]; then
          echo "  newName: ${ref%@*}"
          echo "  digest: ${ref#*@}"
        elif [[ "${ref##*/}" == *:* ]]; then
          echo "  newName: ${ref%:*}"
          echo "  newTag: \"${ref##*:}\""
        else
          echo "  newName: ${ref}"
        fi
      done
    fi
    if [[ -n "$release" || -n "$model_version" ]]; then
      cat <<PATCH
patches:
- target:
    kind: Deployment
    name: ${deployment}
  patch: |-
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: ${deployment}
    spec:
      template:
PATCH
      if [[ -n "$release" ]]; then
        cat <<PATCH
        metadata:
          annotations:
            catsdogs.io/release: "${release}"
PATCH
      fi
      if [[ -n "$model_version" ]]; then
        cat <<PATCH
        spec:
          containers:
          - name: ${serving_container}
            env:
            - {name: MODEL_VERSION, value: "${model_version}"}
PATCH
        if [[ -n "$init_container" ]]; then
          cat <<PATCH
          initContainers:
          - name: ${init_container}
            env:
            - {name: MODEL_VERSION, value: "${model_version}"}
PATCH
        fi
      fi
    fi
  } > "$workdir/kustomization.yaml"
  target="$workdir"
fi

# 3. Check that every image override matched an image of the overlay: a name
#    that matches nothing would silently redeploy the old image.
if [[ ${#images[@]} -gt 0 ]]; then
  rendered="$(kubectl kustomize "$target")" || { echo "deploy: $overlay does not render" >&2; exit 3; }
  for spec in "${images[@]}"; do
    if ! grep -qF -- "image: ${spec#*=}" <<< "$rendered"; then
      echo "deploy: no image named '${spec%%=*}' in ${overlay}: the override would not apply" >&2
      exit 2
    fi
  done
fi

# 4. Apply.
if ! kubectl apply -k "$target"; then
  echo "deploy: kubectl apply -k $overlay failed" >&2
  exit 3
fi

# 5. Wait for the new pods to be ready.
if ! kubectl --namespace "$namespace" rollout status "deployment/${deployment}" --timeout="$timeout"; then
  echo "deploy: ${namespace}/${deployment} did not roll out within ${timeout}" >&2
  kubectl --namespace "$namespace" get pods -o wide >&2 || true
  exit 4
fi
current="$(kubectl --namespace "$namespace" get deployment "$deployment" \
  -o jsonpath='{.metadata.annotations.deployment\.kubernetes\.io/revision}')"
echo "deploy: ${namespace}/${deployment} rolled out, now at revision ${current}"
