#!/usr/bin/env bash
# Runs every test: unit tests of the pure decisions, and integration tests against a real,
# private control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok nodes) that
# is built from Go modules on first use (tens of minutes cold, seconds when cached).
#
#   hack/test.sh                 # all tests
#   hack/test.sh --test operator # one integration test binary (any cargo test arguments)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bin_dir=$(hack/build-control-plane.sh | tail -n 1)
export GPUPOOL_CONTROL_PLANE_BIN="$bin_dir"
echo "[test] control plane binaries: $bin_dir" >&2
exec cargo test --workspace "$@"
