#!/usr/bin/env bash
# Builds the pinned control-plane binaries from Go modules (no Docker, no downloads besides the
# Go module proxy) into a cache folder outside the repo, keyed by versions. Idempotent: a second
# run only checks that the binaries exist. Prints the bin folder on its last line of stdout.
#
#   hack/build-control-plane.sh            # build (or reuse) and print the bin folder
#
# Environment:
#   GPUPOOL_CACHE       cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/gpupool)
#   KUBEBUILDER_ASSETS  folder with existing etcd, kube-apiserver, kube-controller-manager,
#                       kube-scheduler, kubectl and kwok binaries: used as is, nothing is built
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/versions.env"

log() { echo "[control-plane] $*" >&2; }
die() { echo "[control-plane] error: $*" >&2; exit 1; }

BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok)

if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
  for b in "${BINARIES[@]}"; do
    [[ -x "$KUBEBUILDER_ASSETS/$b" ]] || die "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS has no executable '$b'"
  done
  log "using binaries from KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi

command -v go >/dev/null 2>&1 || die "Go is not installed (need Go >= 1.26 on PATH to build the control plane)"

CACHE="${GPUPOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpupool}"
BIN="$CACHE/bin/k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}"
mkdir -p "$BIN"

export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS=-buildvcs=false

have_all() { for b in "$@"; do [[ -x "$BIN/$b" ]] || return 1; done; }

# Runs a long command while printing a heartbeat, so a cold build does not look hung.
with_progress() {
  local what=$1; shift
  local start=$SECONDS
  "$@" &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 30 &
    wait $! 2>/dev/null || true
    kill -0 "$pid" 2>/dev/null && log "$what: still building ($((SECONDS - start))s)"
  done
  wait "$pid" || die "$what failed"
  log "$what: done in $((SECONDS - start))s"
}

build_kubernetes() {
  local work="$CACHE/src/kubernetes-${KUBERNETES_VERSION}"
  mkdir -p "$work"
  local staging_version="v0.${KUBERNETES_VERSION#v1.}"
  if [[ ! -f "$work/go.mod" ]]; then
    log "preparing wrapper module for k8s.io/kubernetes ${KUBERNETES_VERSION} (staging ${staging_version})"
    (
      cd "$work"
      {
        echo "module gpupool.local/kubernetes-build"
        echo
        echo "go 1.26.0"
        echo
        echo "require k8s.io/kubernetes ${KUBERNETES_VERSION}"
        echo
        echo "replace ("
        for m in $KUBERNETES_STAGING_MODULES; do
          echo "	k8s.io/$m => k8s.io/$m ${staging_version}"
        done
        echo ")"
      } > go.mod.tmp
      mv go.mod.tmp go.mod
      go get "k8s.io/kubernetes/cmd/kube-apiserver@${KUBERNETES_VERSION}" \
        "k8s.io/kubernetes/cmd/kube-controller-manager@${KUBERNETES_VERSION}" \
        "k8s.io/kubernetes/cmd/kube-scheduler@${KUBERNETES_VERSION}" \
        "k8s.io/kubernetes/cmd/kubectl@${KUBERNETES_VERSION}" >&2
    ) || { rm -f "$work/go.mod"; die "resolving k8s.io/kubernetes modules failed"; }
  fi
  local minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
  local date; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=${KUBERNETES_VERSION} -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor}"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=${date}"
  done
  cd "$work"
  with_progress "kube-apiserver, kube-controller-manager, kube-scheduler, kubectl ${KUBERNETES_VERSION}" \
    go build -trimpath -tags selinux,notest,grpcnotrace -ldflags "$ldflags" -o "$BIN/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler \
      k8s.io/kubernetes/cmd/kubectl
}

build_etcd() {
  local work="$CACHE/src/etcd-${ETCD_VERSION}"
  mkdir -p "$work"
  if [[ ! -f "$work/go.mod" ]]; then
    log "preparing wrapper module for etcd ${ETCD_VERSION}"
    (
      cd "$work"
      printf 'module gpupool.local/etcd-build\n\ngo 1.26.0\n' > go.mod
      go get "go.etcd.io/etcd/server/v3@${ETCD_VERSION}" >&2
    ) || { rm -f "$work/go.mod"; die "resolving etcd modules failed"; }
  fi
  cd "$work"
  with_progress "etcd ${ETCD_VERSION}" go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3
}

build_kwok() {
  local work="$CACHE/src/kwok-${KWOK_VERSION}"
  mkdir -p "$work"
  if [[ ! -f "$work/go.mod" ]]; then
    log "preparing wrapper module for kwok ${KWOK_VERSION}"
    (
      cd "$work"
      printf 'module gpupool.local/kwok-build\n\ngo 1.26.0\n' > go.mod
      go get "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}" >&2
    ) || { rm -f "$work/go.mod"; die "resolving kwok modules failed"; }
  fi
  cd "$work"
  with_progress "kwok ${KWOK_VERSION}" go build -trimpath -ldflags "-s -w" -o "$BIN/kwok" sigs.k8s.io/kwok/cmd/kwok
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

have_all etcd || build_etcd
have_all kwok || build_kwok
have_kwok_stages || install_kwok_stages
have_all kube-apiserver kube-controller-manager kube-scheduler kubectl || build_kubernetes

have_all "${BINARIES[@]}" || die "some binaries are missing from $BIN after the build"
log "control plane binaries ready in $BIN"
echo "$BIN"
