#!/usr/bin/env bash
# Builds the pinned control-plane binaries from Go modules (no Docker, no downloads besides the
# Go module proxy) into a cache folder outside the repo, keyed by versions. Idempotent: a second
# run only checks that the binaries exist. Prints the bin folder on its last line of stdout.
#
#   hack/build-control-plane.sh            # build (or reuse) and print the bin folder
#
# Each component prints one progress line; Go's own output goes to a log per component in
# $CACHE/logs/ (printed, with its last lines, when a build fails).
#
# Environment:
#   GPUPOOL_CACHE       cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/gpupool)
#   KUBEBUILDER_ASSETS  folder with existing etcd, kube-apiserver, kube-controller-manager,
#                       kube-scheduler, kubectl and kwok binaries: used as is, nothing is built
set -euo pipefail

HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/versions.env
source "$HACK/versions.env"
LOG_PREFIX=control-plane # used by lib.sh
# shellcheck source=hack/lib.sh
source "$HACK/lib.sh"

BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok)

use_prebuilt KUBEBUILDER_ASSETS "${BINARIES[@]}"
require_go "the control plane"

BIN="$CACHE/bin/k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}"
take_build_lock "$BIN"

have_all() { for b in "$@"; do [[ -x "$BIN/$b" ]] || return 1; done; }

build_kubernetes() {
  local work="$CACHE/src/kubernetes-${KUBERNETES_VERSION}"
  local staging_version="v0.${KUBERNETES_VERSION#v1.}"
  # k8s.io/kubernetes requires its staging modules at v0.0.0: pin them to the matching release.
  local tail
  tail=$(
    printf '\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "$KUBERNETES_VERSION"
    for m in $KUBERNETES_STAGING_MODULES; do
      printf '\tk8s.io/%s => k8s.io/%s %s\n' "$m" "$m" "$staging_version"
    done
    printf ')\n'
  )
  local packages=(k8s.io/kubernetes/cmd/{kube-apiserver,kube-controller-manager,kube-scheduler,kubectl})
  prepare_module "$work" kubernetes-build "$tail" "${packages[@]/%/@${KUBERNETES_VERSION}}" || return 1
  local minor=${KUBERNETES_VERSION#v1.}
  minor=${minor%%.*}
  local date
  date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=${KUBERNETES_VERSION} -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor}"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=${date}"
  done
  cd "$work" && go build -trimpath -tags selinux,notest,grpcnotrace -ldflags "$ldflags" -o "$BIN/" "${packages[@]}"
}

build_etcd() {
  local work="$CACHE/src/etcd-${ETCD_VERSION}"
  prepare_module "$work" etcd-build "" "go.etcd.io/etcd/server/v3@${ETCD_VERSION}" || return 1
  cd "$work" && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3
}

build_kwok() {
  local work="$CACHE/src/kwok-${KWOK_VERSION}"
  prepare_module "$work" kwok-build "" "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}" || return 1
  cd "$work" && go build -trimpath -ldflags "-s -w" -o "$BIN/kwok" sigs.k8s.io/kwok/cmd/kwok
}

# kwok needs its Stage definitions at run time; copy exactly the ones the test harness uses next to
# the binary (not the kustomization.yaml files that sit beside them: they are not kwok config).
KWOK_STAGES=(node-initialize.yaml node-heartbeat-with-lease.yaml pod-ready.yaml pod-complete.yaml pod-delete.yaml)

have_kwok_stages() {
  for f in "${KWOK_STAGES[@]}"; do [[ -f "$BIN/kwok-stages/$f" ]] || return 1; done
  [[ ! -e "$BIN/kwok-stages/kustomization.yaml" ]]
}

install_kwok_stages() {
  local work="$CACHE/src/kwok-${KWOK_VERSION}"
  [[ -f "$work/go.mod" ]] || die "kwok wrapper module missing in $work (remove $BIN/kwok to rebuild it)"
  local moddir
  moddir=$(cd "$work" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok) || die "cannot locate the sigs.k8s.io/kwok module"
  rm -rf "$BIN/kwok-stages.tmp"
  mkdir -p "$BIN/kwok-stages.tmp"
  cp "$moddir"/kustomize/stage/node/fast/node-initialize.yaml \
     "$moddir"/kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
     "$moddir"/kustomize/stage/pod/fast/pod-ready.yaml \
     "$moddir"/kustomize/stage/pod/fast/pod-complete.yaml \
     "$moddir"/kustomize/stage/pod/fast/pod-delete.yaml \
     "$BIN/kwok-stages.tmp/" || die "copying kwok stages from $moddir failed"
  chmod u+w "$BIN"/kwok-stages.tmp/*
  rm -rf "$BIN/kwok-stages"
  mv "$BIN/kwok-stages.tmp" "$BIN/kwok-stages"
  log "kwok stages installed in $BIN/kwok-stages"
}

have_all etcd || build_step "etcd ${ETCD_VERSION}" "$CACHE/logs/etcd-${ETCD_VERSION}.log" build_etcd
have_all kwok || build_step "kwok ${KWOK_VERSION}" "$CACHE/logs/kwok-${KWOK_VERSION}.log" build_kwok
have_kwok_stages || install_kwok_stages
have_all kube-apiserver kube-controller-manager kube-scheduler kubectl ||
  build_step "kube-apiserver, kube-controller-manager, kube-scheduler, kubectl ${KUBERNETES_VERSION}" \
    "$CACHE/logs/kubernetes-${KUBERNETES_VERSION}.log" build_kubernetes

have_all "${BINARIES[@]}" || die "some binaries are missing from $BIN after the build"
log "control plane binaries ready in $BIN"
echo "$BIN"
