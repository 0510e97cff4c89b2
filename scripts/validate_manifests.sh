#!/usr/bin/env bash
# Render every kustomize overlay and validate the result offline.
#
#   scripts/validate_manifests.sh [OVERLAY_DIR...]     (default: k8s/overlays/*)
#
# Each overlay must render with `kubectl kustomize`; the rendered objects are
# then checked against the Kubernetes OpenAPI schemas by `kubernetes-validate`
# (PyPI, no cluster or network needed). Custom resources without a bundled
# schema (PodMonitoring...) are reported as skipped by kubernetes-validate,
# never as valid. Exit status: 0 all valid, 1 any overlay failed.
set -euo pipefail

k8s_version="${K8S_SCHEMA_VERSION:-1.31.0}"
overlays=("$@")
if [[ ${#overlays[@]} -eq 0 ]]; then
  for dir in k8s/overlays/*/; do
    [[ -f "${dir}kustomization.yaml" ]] && overlays+=("${dir%/}")
  done
fi
[[ ${#overlays[@]} -gt 0 ]] || { echo "validate_manifests: no overlays found under k8s/overlays" >&2; exit 1; }
command -v kubernetes-validate > /dev/null \
  || { echo "validate_manifests: kubernetes-validate not installed (pip install kubernetes-validate)" >&2; exit 1; }

workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT
failed=0
for overlay in "${overlays[@]}"; do
  rendered="$workdir/$(basename "$overlay").yaml"
  if ! kubectl kustomize "$overlay" > "$rendered"; then
    echo "validate_manifests: ${overlay} does not render" >&2
    failed=1
    continue
  fi
  if kubernetes-validate --strict --quiet -k "$k8s_version" "$rendered"; then
    echo "validate_manifests: ${overlay} OK ($(grep -c '^kind:' "$rendered") objects)"
  else
    echo "validate_manifests: ${overlay} has invalid objects" >&2
    failed=1
  fi
done
exit "$failed"
