#!/usr/bin/env bash
# Smoke-test the TorchServe Deployment that is running in the cluster.
#
#   scripts/smoke.sh [--namespace catsdogs] [--deployment torchserve] [--service torchserve]
#                    [--service-port 80] [--pod-ports 8081,8082] [--secret torchserve-api-key]
#                    [--no-token] [--expect-version V] [-- EXTRA SMOKE TEST ARGS]
#
# Predictions go through the Service, as clients' requests do (`kubectl
# port-forward svc/torchserve`: kubectl forwards to one ready pod behind it).
# The management and metrics APIs are never exposed by the Service (management
# listens on the pod's localhost), so they are checked on one ready pod of the
# Deployment through a second port-forward (--pod-ports "": skip them).
# The client key is the shared API key of the Secret torchserve-api-key (key
# api-key), handed to the smoke test in TS_INFERENCE_TOKEN: never on a command
# line, never printed, masked in GitHub Actions logs. --expect-version V (or
# SMOKE_EXPECT_VERSION) fails the test when an answer reports another
# model_version: the version just deployed must be the one answering. Then it runs
#
#   python -m steps.smoke_test --url http://127.0.0.1:P [--management-url ...]
#                              [--metrics-url ...] [--expect-version V]
#
# (override the command with SMOKE_CMD). Exit status: the smoke test's, 2 for
# bad usage, 5 when no ready pod, key or port-forward could be set up.
set -euo pipefail

namespace="${K8S_NAMESPACE:-catsdogs}"
deployment="${K8S_DEPLOYMENT:-torchserve}"
service="${SMOKE_SERVICE:-torchserve}"
service_port="${SMOKE_SERVICE_PORT:-80}"
pod_ports="${SMOKE_POD_PORTS-8081,8082}"
secret="${SMOKE_API_KEY_SECRET:-torchserve-api-key}"
expect_version="${SMOKE_EXPECT_VERSION:-}"
use_token=true
smoke_cmd="${SMOKE_CMD:-python -m steps.smoke_test}"
extra=()

die() { echo "smoke: $*" >&2; exit 2; }
fail() { echo "smoke: $*" >&2; exit 5; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --namespace) namespace="${2:?}"; shift 2 ;;
    --deployment) deployment="${2:?}"; shift 2 ;;
    --service) service="${2:?}"; shift 2 ;;
    --service-port) service_port="${2:?}"; shift 2 ;;
    --pod-ports) pod_ports="${2?}"; shift 2 ;;
    --secret) secret="${2:?}"; shift 2 ;;
    --no-token) use_token=false; shift ;;
    --expect-version) expect_version="${2:?}"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done

[[ "$service_port" =~ ^[0-9]+$ ]] || die "--service-port wants a number, got: $service_port"
IFS=',' read -r management_port metrics_port <<< "$pod_ports"
[[ "${management_port:-0}${metrics_port:-0}" =~ ^[0-9]+$ ]] \
  || die "--pod-ports wants MANAGEMENT[,METRICS] (or \"\"), got: $pod_ports"

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
echo "smoke: predictions through service ${namespace}/${service}, pod checks on ${pod}"

# 2. The shared API key from the Secret, handed over in the environment
#    (TS_INFERENCE_TOKEN, read by steps.smoke_test): never on a command line,
#    never echoed, masked in GitHub Actions logs. The first key when a rotation
#    has put two in the Secret. (Management needs no token: TorchServe's own
#    token authorization is off in the pod, docker/serving_entrypoint.py.)
if $use_token; then
  inference_token="$(kc get secret "$secret" -o json | python3 -c '
import base64, json, sys
try:
    encoded = json.load(sys.stdin).get("data", {}).get("api-key", "")
except ValueError:  # kubectl failed and said why on stderr
    encoded = ""
keys = base64.b64decode(encoded).decode("utf-8").split()
print(keys[0] if keys else "")
')" || fail "could not read the API key from Secret ${namespace}/${secret}"
  [[ -n "$inference_token" ]] || fail "Secret ${namespace}/${secret} holds no key 'api-key'"
  if [[ "${GITHUB_ACTIONS:-}" == "true" ]]; then
    echo "::add-mask::${inference_token}"
  fi
  export TS_INFERENCE_TOKEN="$inference_token"
fi

# 3. Port-forwards to free local ports (":PORT" lets kubectl pick them): the
#    Service for predictions, the pod for management and metrics.
forward_pids=()
forward_logs=()
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  local pid
  for pid in "${forward_pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  rm -f "${forward_logs[@]}"
}
trap cleanup EXIT

# The local ports kubectl chose, in the order the remote ports were given (for a
# Service it names the pod's target port, not the Service port, after the arrow).
local_ports() { sed -n 's/^Forwarding from 127\.0\.0\.1:\([0-9][0-9]*\) -> .*$/\1/p' "$1"; }

# port_forward TARGET PORT...: start kubectl port-forward and wait until it listens;
# its output (with the local ports) is then in $forward_log.
port_forward() {
  local target="$1" pid remote
  shift
  local specs=()
  for remote in "$@"; do specs+=(":${remote}"); done
  forward_log="$(mktemp)"
  forward_logs+=("$forward_log")
  kc port-forward "$target" "${specs[@]}" > "$forward_log" 2>&1 &
  pid=$!
  forward_pids+=("$pid")
  for _ in $(seq 1 60); do
    [[ "$(local_ports "$forward_log" | wc -l)" -ge $# ]] && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$forward_log" >&2; fail "kubectl port-forward ${target} exited"; }
    sleep 0.5
  done
  cat "$forward_log" >&2
  fail "port-forward to ${target} not ready after 30s"
}
nth_local_port() { local_ports "$forward_log" | sed -n "${1}p"; }

port_forward "svc/${service}" "$service_port"
args=(--url "http://127.0.0.1:$(nth_local_port 1)")
pod_flags=()
pod_remote=()
if [[ -n "${management_port:-}" ]]; then pod_flags+=(--management-url); pod_remote+=("$management_port"); fi
if [[ -n "${metrics_port:-}" ]]; then pod_flags+=(--metrics-url); pod_remote+=("$metrics_port"); fi
if [[ ${#pod_remote[@]} -gt 0 ]]; then
  port_forward "pod/${pod}" "${pod_remote[@]}"
  for i in "${!pod_flags[@]}"; do
    args+=("${pod_flags[$i]}" "http://127.0.0.1:$(nth_local_port $((i + 1)))")
  done
fi
if [[ -n "$expect_version" ]]; then
  args+=(--expect-version "$expect_version")
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
