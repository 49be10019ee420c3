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
# one showing 7 of its 8 GPUs: gpupool knows 8 from the VM size alone and names it), a rollout
# pool `gpuroll` (3 nodes whose GPUs follow their device-plugin pod, as the kubelet's device
# manager has them), a DRA pool `gpudra` (2 H100 nodes served by a simulated NVIDIA GPU DRA
# driver publishing ResourceSlices) and 2 CPU nodes, runs the operator, applies examples/, and
# shows `kubectl get gpupools`, the conditions and the gated nodes converging.
# Once `gpuroll` is Ready on its v0.17.0 plugin, the demo rolls it to a broken plugin image
# (v0.18.2-broken: it runs and registers no GPU, like NVIDIA k8s-device-plugin #1645): the
# GPU-verified rollout replaces one node, sees no GPUs come back within
# spec.rollout.progressDeadlineSeconds (30 s) and halts there (DevicePluginReady False,
# PluginRolloutHalted naming the node; the other nodes keep their plugin pods and GPUs). Then it
# rolls the pool to a good image (v0.18.0), which goes node by node to Complete with every GPU
# back. `gpudra`'s nodes join gated; gpupool labels them gpupool.io/dra for the driver, whose
# kubelet plugin publishes their GPUs as ResourceSlices, validates each node through a
# ResourceClaim and opens it: Ready, with its 16 GPUs in status.capacity.dra.
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
  The 'gpuroll' pool gets a broken plugin once Ready, halts at its first node, then gets the fix:
    $kubectl get gpupool gpuroll -o jsonpath='{.status.devicePlugin.rollout}'
    $kubectl get nodes -l kubernetes.azure.com/agentpool=gpuroll -o custom-columns='NODE:.metadata.name,GPUS:.status.allocatable.nvidia\.com/gpu'
    $kubectl -n gpu-resources get pods -l gpupool.io/pool=gpuroll -o custom-columns='POD:.metadata.name,NODE:.spec.nodeName,IMAGE:.spec.containers[0].image'
  The 'gpudra' pool's GPUs come from the DRA driver's ResourceSlices:
    $kubectl get gpupool gpudra -o jsonpath='{.status.capacity.dra}'
    $kubectl get resourceslices --field-selector spec.driver=gpu.nvidia.com
    $kubectl -n dra-driver-nvidia-gpu get pods -o wide

MSG

jp() { "$kubectl" get "$@" 2>/dev/null || true; }

show() {
  echo "---- $(date +%T)"
  "$kubectl" get gpupools -o wide
  "$kubectl" get gpupools -o jsonpath='{range .items[*]}{.metadata.name}{": "}{range .status.conditions[*]}{.type}={.status}({.reason}) {end}{"\n"}{end}'
  "$kubectl" get nodes -l kubernetes.azure.com/agentpool=gpugated \
    -o custom-columns='GATED-NODE:.metadata.name,TAINTS:.spec.taints[*].key'
  roll_nodes
  echo "gpudra: $(jp gpupool gpudra -o jsonpath='{.status.capacity.dra}')"
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

# A pool's condition as "Status Reason", for the pool's current generation only (empty while the
# operator has not caught up with a spec change).
condition() {
  local pool=$1 type=$2
  jp gpupool "$pool" -o jsonpath="{.metadata.generation} {.status.observedGeneration} {.status.conditions[?(@.type==\"$type\")].status} {.status.conditions[?(@.type==\"$type\")].reason}" \
    | awk '$1 == $2 { print $3, $4 }'
}

# The DRA pool: Ready from the driver's slices, its 2 nodes' 16 H100s counted in
# status.capacity.dra, no device plugin, the gate open on both nodes.
dra_as_expected() {
  [[ $(condition gpudra Ready) == "True "* ]] \
    && [[ $(jp gpupool gpudra -o jsonpath='{.status.capacity.dra.driver} {.status.capacity.dra.nodes} {.status.capacity.dra.gpus} {.status.capacity.dra.usable} {.status.devicePlugin.reason} {.status.readinessGate.gatedNodes}') \
      == "gpu.nvidia.com 2 16 16 DraAllocationRequested 0" ]]
}

# ---- The GPU-verified rollout of 'gpuroll': v0.17.0 (the example) -> a broken plugin that
# halts at its first node -> the fix, node by node, to Complete.
roll_plugin=nvcr.io/nvidia/k8s-device-plugin
roll_broken=$roll_plugin:v0.18.2-broken   # runs, registers no GPU (k8s-device-plugin #1645)
roll_fixed=$roll_plugin:v0.18.0
roll_gpus=6                               # 3 nodes x 2 GPUs
roll_stage=start                          # start -> halting -> fixing -> done
roll_before=""                            # node=plugin pod uid, before the broken update

roll_nodes() {
  "$kubectl" get nodes -l kubernetes.azure.com/agentpool=gpuroll \
    -o custom-columns='ROLL-NODE:.metadata.name,GPUS:.status.allocatable.nvidia\.com/gpu'
  "$kubectl" -n gpu-resources get pods -l gpupool.io/pool=gpuroll \
    -o custom-columns='PLUGIN-POD:.metadata.name,NODE:.spec.nodeName,IMAGE:.spec.containers[0].image,PHASE:.status.phase' 2>/dev/null || true
  echo "gpuroll rollout: $(jp gpupool gpuroll -o jsonpath='{.status.devicePlugin.rollout}')"
}

# "node uid image" of every plugin pod of gpuroll (not terminating), sorted by node.
roll_pods() {
  jp -n gpu-resources pods -l gpupool.io/pool=gpuroll \
    -o jsonpath='{range .items[*]}{.spec.nodeName}{" "}{.metadata.uid}{" "}{.spec.containers[0].image}{" "}{.metadata.deletionTimestamp}{"\n"}{end}' \
    | awk 'NF == 3 { print $1, $2, $3 }' | sort
}

roll_allocatable() {
  jp gpupool gpuroll -o jsonpath='{.status.gpusAllocatable}'
}

set_roll_image() {
  "$kubectl" patch gpupool gpuroll --type merge \
    -p "{\"spec\":{\"devicePlugin\":{\"image\":\"$1\"}}}" >/dev/null
}

roll_fail() {
  log "gpuroll: $*"
  "$kubectl" get gpupool gpuroll -o yaml >&2 || true
  roll_pods >&2
  tail -n 40 "$state/operator.log" >&2
  exit 1
}

# One step of the rollout story; returns 0 once it is done.
advance_rollout() {
  case $roll_stage in
  start)
    # The example's plugin on every node, every GPU registered.
    [[ $(condition gpuroll Ready) == "True "* && $(roll_allocatable) == "$roll_gpus" ]] || return 1
    roll_before=$(roll_pods)
    [[ $(wc -l <<<"$roll_before") == 3 ]] || return 1
    log "gpuroll is Ready with $roll_gpus GPUs on $roll_plugin:v0.17.0; rolling it to $roll_broken"
    log "  (it runs and registers no GPU: the rollout must halt at the first node it replaces)"
    set_roll_image "$roll_broken"
    roll_stage=halting
    return 1
    ;;
  halting)
    [[ $(jp gpupool gpuroll -o jsonpath='{.metadata.generation} {.status.observedGeneration} {.status.devicePlugin.rollout.state}' \
      | awk '$1 == $2 { print $3 }') == Halted ]] || return 1
    local plugin halted node others now
    plugin=$(condition gpuroll DevicePluginReady)
    halted=$(jp gpupool gpuroll -o jsonpath='{range .status.devicePlugin.rollout.halted[*]}{.name}{"\n"}{end}')
    [[ "$plugin" == "False PluginRolloutHalted" ]] || roll_fail "halted, but DevicePluginReady is '$plugin'"
    [[ $(wc -l <<<"$halted") == 1 && -n "$halted" ]] || roll_fail "halted at '$halted', not at one node"
    node=$halted
    jp gpupool gpuroll -o jsonpath='{.status.conditions[?(@.type=="DevicePluginReady")].message}' \
      | grep -q "$node" || roll_fail "DevicePluginReady does not name $node"
    # Every other node untouched: the very plugin pod it had before, its GPUs still there.
    others=$(grep -v "^$node " <<<"$roll_before")
    now=$(roll_pods)
    [[ $(grep -v "^$node " <<<"$now") == "$others" ]] || roll_fail "a node other than $node lost its plugin pod"
    grep -q "^$node .* $roll_broken\$" <<<"$now" || roll_fail "$node does not run $roll_broken"
    [[ $(roll_allocatable) == $((roll_gpus - 2)) ]] || roll_fail "$(roll_allocatable) GPUs allocatable, not $((roll_gpus - 2))"
    log "gpuroll halted at $node (DevicePluginReady False, PluginRolloutHalted):"
    jp gpupool gpuroll -o jsonpath='  {.status.conditions[?(@.type=="DevicePluginReady")].message}{"\n"}' >&2
    log "  the other 2 nodes kept their v0.17.0 plugin pods and GPUs; rolling the fix, $roll_fixed"
    set_roll_image "$roll_fixed"
    roll_stage=fixing
    return 1
    ;;
  fixing)
    [[ $(jp gpupool gpuroll -o jsonpath='{.metadata.generation} {.status.observedGeneration} {.status.devicePlugin.rollout.state} {.status.devicePlugin.rollout.updated} {.status.devicePlugin.rollout.left}' \
      | awk '$1 == $2 { print $3, $4, $5 }') == "Complete 3 0" ]] || return 1
    [[ $(condition gpuroll Ready) == "True "* && $(roll_allocatable) == "$roll_gpus" ]] || return 1
    [[ $(roll_pods | grep -c " $roll_fixed\$") == 3 ]] || return 1
    log "gpuroll rollout Complete: 3 nodes on $roll_fixed, $roll_gpus GPUs allocatable, Ready True"
    roll_stage=done
    ;;
  done) ;;
  esac
}

deadline=$((SECONDS + 240))
while true; do
  show
  advance_rollout || true
  if $check; then
    if [[ $(condition gpu Ready) == "True "* && $(condition gpuspecial Ready) == "True "* ]] \
      && gated_as_expected && h100_as_expected && [[ $roll_stage == done ]] && dra_as_expected; then
      log "gpu and gpuspecial are Ready; gpugated opened its 2 validated nodes and keeps the broken one gated; gpuh100 names the node missing a GPU:"
      "$kubectl" get gpupools gpugated gpuh100 -o jsonpath='{range .items[*]}{range .status.problemNodes[*]}{.name}{": "}{.reason}{": "}{.message}{"\n"}{end}{end}' >&2
      log "gpuroll halted at one node on the broken plugin and completed on the fix; gpudra is Ready on DRA:"
      "$kubectl" get gpupool gpudra -o jsonpath='  {.status.capacity.dra}{"\n"}' >&2
      log "done in ${SECONDS} s"
      exit 0
    fi
    if (( SECONDS > deadline )); then
      log "timed out waiting for the example pools (gpuroll rollout at stage '$roll_stage'); operator log:"
      tail -n 40 "$state/operator.log" >&2
      exit 1
    fi
    sleep 2
  else
    sleep 5
  fi
done
