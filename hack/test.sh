#!/usr/bin/env bash
# Runs every test: unit tests of the pure decisions, and integration tests against a real,
# private control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok nodes) that
# is built from Go modules on first use (tens of minutes cold, seconds when cached), and on a real
# node (kubelet, containerd, the NVIDIA device plugin over a mock NVML; hack/real-node/).
#
#   hack/test.sh                 # all tests
#   hack/test.sh --test operator # one integration test binary (any cargo test arguments)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bin_dir=$(hack/build-control-plane.sh | tail -n 1)
export GPUPOOL_CONTROL_PLANE_BIN="$bin_dir"
echo "[test] control plane binaries: $bin_dir" >&2
# The real node's packages, kubelet, device plugin and images (testenv's RealNode; skipped with
# GPUPOOL_SKIP_REAL_NODE=1, as its tests are).
if [[ "${GPUPOOL_SKIP_REAL_NODE:-}" != 1 ]]; then
  GPUPOOL_REAL_NODE_DIR=$(hack/real-node/build.sh | tail -n 1)
  export GPUPOOL_REAL_NODE_DIR
fi
exec cargo test --workspace "$@"
