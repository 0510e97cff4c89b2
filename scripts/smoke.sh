#!/usr/bin/env bash
# Smoke-test the TorchServe Deployment that is running in the cluster.
#
#   scripts/smoke.sh [--namespace catsdogs] [--deployment torchserve] [--container torchserve]
#                    [--ports 8080,8081,8082] [--key-file /tmp/torchserve/key_file.json] [--no-token]
#                    [-- EXTRA SMOKE TEST ARGS]
#
# Picks one ready pod of the Deployment and port-forwards its inference,
# management and metrics ports to free local ports (port-forward reaches the
# pod's own localhost, so the management and metrics APIs, which are never
# exposed through the Service, can be checked too). The inference token is read
# from the pod's TorchServe key file (TorchServe writes it to its working
# directory, TS_RUN_DIR in docker/serving_entrypoint.py) and handed to the smoke test in
# TS_INFERENCE_TOKEN / TS_MANAGEMENT_TOKEN; masked in GitHub Actions logs,
# never printed. Then it runs the smoke test command, by default
#
#   python -m steps.smoke_test --url http://127.0.0.1:P [--management-url ...] [--metrics-url ...]
#
# (override the command with SMOKE_CMD). Exit status: the smoke test's, 2 for
# bad usage, 5 when no ready pod or port-forward could be set up.
set -euo pipefail

namespace="${K8S_NAMESPACE:-catsdogs}"
deployment="${K8S_DEPLOYMENT:-torchserve}"
container="${SMOKE_CONTAINER:-torchserve}"
ports="${SMOKE_PORTS:-8080,8081,8082}"
key_file="${SMOKE_KEY_FILE:-/tmp/torchserve/key_file.json}"
use_token=true
smoke_cmd="${SMOKE_CMD:-python -m steps.smoke_test}"
extra=()

die() { echo "smoke: $*" >&2; exit 2; }
fail() { echo "smoke: $*" >&2; exit 5; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --namespace) namespace="${2:?}"; shift 2 ;;
    --deployment) deployment="${2:?}"; shift 2 ;;
    --container) container="${2:?}"; shift 2 ;;
    --ports) ports="${2:?}"; shift 2 ;;
    --key-file) key_file="${2:?}"; shift 2 ;;
    --no-token) use_token=false; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done

IFS=',' read -r inference_port management_port metrics_port <<< "$ports"
[[ "$inference_port" =~ ^[0-9]+$ ]] || die "--ports wants INFERENCE[,MANAGEMENT[,METRICS]], got: $ports"

kc() { kubectl --namespace "$namespace" "$@"; }

# 1. One ready, not terminating pod of the Deployment.
selector="$(kc get deployment "$deployment" -o json | python3 -c '
import json, sys
labels = json.load(sys.stdin)["spec"]["selector"].get("matchLabels", {})
print(",".join(f"{k}={v}" for k, v in sorted(labels.items())))
')"
[[ -n "$selector" ]] || fail "deployment ${namespace}/${deployment} has no selector labels"
pod="$(kc get pods -l "$selector" -o json | python3 -c '
import json, sys
for item in json.load(sys.stdin)["items"]:
    conditions = item.get("status", {}).get("conditions", [])
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
    if ready and not item["metadata"].get("deletionTimestamp"):
        print(item["metadata"]["name"])
        break
')"
[[ -n "$pod" ]] || fail "no ready pod of ${namespace}/${deployment} (selector ${selector})"
echo "smoke: testing pod ${namespace}/${pod}"

# 2. Port-forward to free local ports (":PORT" lets kubectl pick them).
forward_args=(":${inference_port}")
[[ -n "${management_port:-}" ]] && forward_args+=(":${management_port}")
[[ -n "${metrics_port:-}" ]] && forward_args+=(":${metrics_port}")
pf_log="$(mktemp)"
kc port-forward "pod/${pod}" "${forward_args[@]}" > "$pf_log" 2>&1 &
pf_pid=$!
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() { kill "$pf_pid" 2>/dev/null || true; wait "$pf_pid" 2>/dev/null || true; rm -f "$pf_log"; }
trap cleanup EXIT

local_port() {
  sed -n "s/^Forwarding from 127\.0\.0\.1:\([0-9][0-9]*\) -> $1\$/\1/p" "$pf_log" | head -n 1
}
last_port="${metrics_port:-${management_port:-$inference_port}}"
for _ in $(seq 1 60); do
  [[ -n "$(local_port "$last_port")" ]] && break
  kill -0 "$pf_pid" 2>/dev/null || { cat "$pf_log" >&2; fail "kubectl port-forward exited"; }
  sleep 0.5
done
[[ -n "$(local_port "$last_port")" ]] || { cat "$pf_log" >&2; fail "port-forward to ${pod} not ready after 30s"; }

args=(--url "http://127.0.0.1:$(local_port "$inference_port")")
[[ -n "${management_port:-}" ]] && args+=(--management-url "http://127.0.0.1:$(local_port "$management_port")")
[[ -n "${metrics_port:-}" ]] && args+=(--metrics-url "http://127.0.0.1:$(local_port "$metrics_port")")

# 3. The tokens from the pod's key file, handed over in the environment
#    (TS_INFERENCE_TOKEN / TS_MANAGEMENT_TOKEN, read by steps.smoke_test): never
#    on a command line, never echoed, masked in GitHub Actions logs.
if $use_token; then
  exec_args=()
  [[ -n "$container" ]] && exec_args+=(--container "$container")
  keys="$(kc exec "$pod" "${exec_args[@]}" -- cat "$key_file" | python3 -c '
import json, sys
keys = json.load(sys.stdin)
print(keys["inference"]["key"])
print(keys.get("management", {}).get("key", ""))
')" || fail "could not read the TorchServe keys from ${key_file} in ${pod}"
  { read -r inference_token; read -r management_token; } <<< "$keys"
  unset keys
  [[ -n "$inference_token" ]] || fail "empty inference key in ${key_file} of ${pod}"
  if [[ "${GITHUB_ACTIONS:-}" == "true" ]]; then
    echo "::add-mask::${inference_token}"
    [[ -n "$management_token" ]] && echo "::add-mask::${management_token}"
  fi
  export TS_INFERENCE_TOKEN="$inference_token"
  export TS_MANAGEMENT_TOKEN="$management_token"
fi

# 4. The smoke test itself.
read -r -a cmd <<< "$smoke_cmd"
set +e
"${cmd[@]}" "${args[@]}" "${extra[@]}"
status=$?
set -e
if [[ $status -eq 0 ]]; then
  echo "smoke: ${namespace}/${deployment} passed the smoke test"
else
  echo "smoke: ${namespace}/${deployment} FAILED the smoke test (exit ${status})" >&2
fi
exit "$status"
