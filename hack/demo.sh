#!/usr/bin/env bash
# The gpupool demo: a local simulated AKS cluster on a real control plane, with the operator.
#
#   hack/demo.sh           # run until Ctrl-C, printing the pools as they converge
#   hack/demo.sh --check   # exit 0 once every example pool is where it should be (used by CI)
#
# What happens: builds (or reuses) the control plane (etcd, kube-apiserver, controller-manager,
# scheduler, kwok) and the operator, starts a cluster with a standard GPU pool `gpu` (3 nodes
# tainted sku=gpu:NoSchedule whose GPUs register ~20 s later, as a device plugin coming up
# does), a specialized-image pool `gpuspecial` (2 nodes), a gated pool `gpugated` (3 nodes that
# join with the readiness taint gpupool.io/gpu-not-ready; their GPUs register ~20 s later and a
# CUDA validation pod runs on each; the third node's GPU is broken, so it fails validation, stays
# tainted and is named in the status), an H100 pool `gpuh100` (2 Standard_ND96isr_H100_v5 nodes,
# one showing 7 of its 8 GPUs: gpupool knows 8 from the VM size alone and names it) and 2 CPU
# nodes, runs the operator, applies examples/, and
# shows `kubectl get gpupools`, the conditions and the gated nodes converging.
# Ctrl-C tears everything down and leaves no process behind.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

check=false
[[ "${1:-}" == "--check" ]] && check=true

log() { echo "[demo] $*" >&2; }

bin_dir=$(hack/build-control-plane.sh | tail -n 1)
export GPUPOOL_CONTROL_PLANE_BIN="$bin_dir"
kubectl="$bin_dir/kubectl"

log "building the operator and the simulated cluster"
cargo build -q --bin gpupool-operator
cargo build -q -p testenv --bin devcluster
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')

state=$(mktemp -d -t gpupool-demo-XXXXXX)
pids=()
cleanup() {
  trap - EXIT INT TERM
  log "tearing down"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$state"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$target_dir/debug/devcluster" --state-dir "$state" --ready-file "$state/ready" --register-gpus-after 20 \
  >"$state/devcluster.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 240); do
  [[ -s "$state/ready" ]] && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$state/devcluster.log" >&2; log "the cluster failed to start"; exit 1; }
  sleep 0.5
done
[[ -s "$state/ready" ]] || { cat "$state/devcluster.log" >&2; log "the cluster did not come up in 120 s"; exit 1; }
export KUBECONFIG="$state/kubeconfig"

"$kubectl" apply --server-side -f crds/gpupool.yaml >/dev/null
"$kubectl" wait --for=condition=Established --timeout=60s crd/gpupools.gpupool.io >/dev/null
"$kubectl" create namespace gpu-resources >/dev/null

"$target_dir/debug/gpupool-operator" run --metrics-addr 127.0.0.1:0 --gpu-grace-period 2m \
  >"$state/operator.log" 2>&1 &
pids+=($!)
"$kubectl" apply -f examples/

cat >&2 <<MSG

[demo] The cluster is up. In another shell:
    export KUBECONFIG=$KUBECONFIG
    $kubectl get gpupools -o wide
    $kubectl describe gpupool gpu
    $kubectl -n gpu-resources get daemonsets,pods -o wide
  Operator log: $state/operator.log
  The 'gpu' pool's GPUs register about 20 s after start; watch it go from WaitingForGpus to Ready.
  The 'gpugated' pool's nodes lose their gpupool.io/gpu-not-ready taint once validated; the third
  fails validation and keeps it:
    $kubectl get nodes -l kubernetes.azure.com/agentpool=gpugated -o custom-columns=NODE:.metadata.name,TAINTS:.spec.taints[*].key
    $kubectl get gpupool gpugated -o jsonpath='{.status.problemNodes}'
    $kubectl -n gpu-resources get pods -l app.kubernetes.io/component=gpu-validation
  The 'gpuh100' pool expects 8 GPUs per node from the VM size; one node shows 7:
    $kubectl get gpupool gpuh100 -o jsonpath='{.status.capacity}{"\n"}{.status.problemNodes}'

MSG

show() {
  echo "---- $(date +%T)"
  "$kubectl" get gpupools -o wide
  "$kubectl" get gpupools -o jsonpath='{range .items[*]}{.metadata.name}{": "}{range .status.conditions[*]}{.type}={.status}({.reason}) {end}{"\n"}{end}'
  "$kubectl" get nodes -l kubernetes.azure.com/agentpool=gpugated \
    -o custom-columns='GATED-NODE:.metadata.name,TAINTS:.spec.taints[*].key'
}

# The gated pool where it should end: two nodes validated and open, the broken one still
# tainted and named with the CUDA sample's error.
gated_as_expected() {
  local tainted problem
  tainted=$("$kubectl" get nodes -l kubernetes.azure.com/agentpool=gpugated \
    -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.spec.taints[*].key}{"\n"}{end}' \
    | grep 'gpupool.io/gpu-not-ready' | cut -d' ' -f1 | tr '\n' ' ')
  problem=$("$kubectl" get gpupool gpugated \
    -o jsonpath='{range .status.problemNodes[*]}{.name}{"="}{.reason}{": "}{.message}{"\n"}{end}')
  [[ "$tainted" == "aks-gpugated-14142135-vmss000002 " ]] \
    && grep -q '^aks-gpugated-14142135-vmss000002=ValidationFailed: .*no CUDA-capable device' <<<"$problem" \
    && [[ $("$kubectl" get gpupool gpugated -o jsonpath='{.status.validation.validated}') == 2 ]]
}

# The H100 pool: the node with 7 of 8 GPUs named against its VM size (progress for the
# operator's grace period, a failure after it).
h100_as_expected() {
  "$kubectl" get gpupool gpuh100 \
    -o jsonpath='{range .status.problemNodes[*]}{.name}{"="}{.reason}{": "}{.message}{"\n"}{end}' \
    | grep -Eq '^aks-gpuh100-17320508-vmss000001=(WaitingForGpus|FewerGpusThanExpected): has 7 of 8 nvidia.com/gpu expected for Standard_ND96isr_H100_v5'
}

deadline=$((SECONDS + 180))
while true; do
  show
  if $check; then
    ready=$("$kubectl" get gpupools -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c '^True$' || true)
    if [[ "$ready" == 2 ]] && gated_as_expected && h100_as_expected; then
      log "gpu and gpuspecial are Ready; gpugated opened its 2 validated nodes and keeps the broken one gated; gpuh100 names the node missing a GPU:"
      "$kubectl" get gpupools gpugated gpuh100 -o jsonpath='{range .items[*]}{range .status.problemNodes[*]}{.name}{": "}{.reason}{": "}{.message}{"\n"}{end}{end}' >&2
      exit 0
    fi
    if (( SECONDS > deadline )); then
      log "timed out waiting for the example pools to be Ready; operator log:"
      tail -n 40 "$state/operator.log" >&2
      exit 1
    fi
    sleep 2
  else
    sleep 5
  fi
done
