#!/usr/bin/env bash
# Builds the pinned packaging tools from Go modules (no Docker, no downloads besides the Go module
# proxy) into a cache folder outside the repo, keyed by versions, the way build-control-plane.sh
# builds Kubernetes. Idempotent: a second run only checks that the binaries exist. Prints the bin
# folder on its last line of stdout.
#
#   hack/build-tools.sh            # build (or reuse) and print the bin folder
#
# Each tool prints one progress line; Go's own output goes to a log per tool in $CACHE/logs/
# (printed, with its last lines, when a build fails).
#
# Tools:
#   helm      helm.sh/helm/v3 (lint, template and install the chart in charts/)
#   kstatus   hack/tools/kstatus/main.go: prints what sigs.k8s.io/cli-utils/pkg/kstatus/status
#             (the library Flux and kpt use to judge health) computes for an object read from
#             stdin (YAML or JSON): Current, InProgress, Failed, ... and the message
#   promtool  github.com/prometheus/prometheus/cmd/promtool (check and unit-test the alerting
#             rules in deploy/monitoring/)
#   prometheus-operator-crds/  the ServiceMonitor, PodMonitor and PrometheusRule CRDs, copied from
#             the github.com/prometheus-operator/prometheus-operator Go module: tests install
#             them so that the API server validates the monitoring objects gpupool ships
#
# Environment:
#   GPUPOOL_CACHE   cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/gpupool), shared with
#                   build-control-plane.sh
#   GPUPOOL_TOOLS_BIN  folder with existing `helm`, `kstatus` and `promtool` binaries and the
#                   `prometheus-operator-crds` folder: used as is
set -euo pipefail

# Pinned versions (bump here; the cache folder is keyed by them).
HELM_VERSION=v3.22.0
CLI_UTILS_VERSION=v0.37.2
# Prometheus tags its Go module v0.3MM.P for release v3.MM.P: v0.315.1 is Prometheus 3.15.1 (the
# newest whose go.mod asks for no more than Go 1.26.0, the README's minimum).
PROMETHEUS_VERSION=v0.315.1
PROMETHEUS_OPERATOR_VERSION=v0.85.0
MONITORING_CRDS="servicemonitors podmonitors prometheusrules"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KSTATUS_SRC="$ROOT/hack/tools/kstatus/main.go"
LOG_PREFIX=tools # used by lib.sh
# shellcheck source=hack/lib.sh
source "$ROOT/hack/lib.sh"

# (-x holds for a folder too: use_prebuilt checks the CRD folder is there.)
use_prebuilt GPUPOOL_TOOLS_BIN helm kstatus promtool prometheus-operator-crds
require_go "helm, kstatus and promtool"
[[ -f "$KSTATUS_SRC" ]] || die "missing $KSTATUS_SRC"

BIN="$CACHE/bin/tools_helm-${HELM_VERSION}_cli-utils-${CLI_UTILS_VERSION}_prometheus-${PROMETHEUS_VERSION}_prometheus-operator-${PROMETHEUS_OPERATOR_VERSION}"
take_build_lock "$BIN"

# Builds to helm.tmp and renames, so that a failed build never leaves a helm that looks usable.
build_helm() {
  local work="$CACHE/src/helm-${HELM_VERSION}"
  prepare_module "$work" helm-build "" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" || return 1
  local ldflags
  ldflags=$(helm_ldflags "$work") || { echo "cannot determine the k8s.io/client-go version helm ${HELM_VERSION} uses"; return 1; }
  (cd "$work" && go build -trimpath -ldflags "$ldflags" -o "$BIN/helm.tmp" helm.sh/helm/v3/cmd/helm) || return 1
  mv "$BIN/helm.tmp" "$BIN/helm"
  echo "$ldflags" > "$BIN/helm.ldflags"
}

# As helm's Makefile: the version, and the Kubernetes version `helm template` and `helm lint`
# assume without a cluster (client-go v0.X.Y -> 1.X; the default otherwise is 1.20, which fails
# charts that declare a kubeVersion).
helm_ldflags() {
  local client_go
  client_go=$(cd "$1" && go list -m -f '{{.Version}}' k8s.io/client-go) || return 1
  local minor=${client_go#v0.}; minor=${minor%%.*}
  local ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
  ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  local pkg
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X ${pkg}.k8sVersionMajor=1 -X ${pkg}.k8sVersionMinor=${minor}"
  done
  echo "$ldflags"
}

have_helm() {
  [[ -x "$BIN/helm" && -f "$BIN/helm.ldflags" && -f "$CACHE/src/helm-${HELM_VERSION}/go.mod" ]] || return 1
  [[ "$(cat "$BIN/helm.ldflags")" == "$(helm_ldflags "$CACHE/src/helm-${HELM_VERSION}")" ]]
}

src_hash() { sha256sum "$KSTATUS_SRC" | cut -d' ' -f1; }

have_kstatus() {
  [[ -x "$BIN/kstatus" && -f "$BIN/kstatus.src.sha256" && "$(cat "$BIN/kstatus.src.sha256")" == "$(src_hash)" ]]
}

build_kstatus() {
  local work="$CACHE/src/kstatus-cli-utils-${CLI_UTILS_VERSION}"
  mkdir -p "$work"
  cp "$KSTATUS_SRC" "$work/main.go"
  # go.sum marks a module resolved for main.go's imports (go mod tidy after go get).
  if [[ ! -f "$work/go.sum" ]]; then
    rm -f "$work/go.mod"
    if ! { prepare_module "$work" kstatus "" "sigs.k8s.io/cli-utils@${CLI_UTILS_VERSION}" &&
      (cd "$work" && go mod tidy); }; then
      rm -f "$work/go.mod" "$work/go.sum"
      return 1
    fi
  fi
  if ! (cd "$work" && go build -trimpath -ldflags "-s -w" -o "$BIN/kstatus.tmp" .); then
    echo "if you changed $KSTATUS_SRC's imports, remove $work/go.sum to re-resolve"
    return 1
  fi
  mv "$BIN/kstatus.tmp" "$BIN/kstatus"
  src_hash > "$BIN/kstatus.src.sha256"
}

# promtool's release version (v0.315.1 -> 3.15.1), shown by `promtool --version`.
promtool_ldflags() {
  local minor_patch=${PROMETHEUS_VERSION#v0.3}
  local minor=${minor_patch%%.*} patch=${minor_patch#*.}
  echo "-s -w -X github.com/prometheus/common/version.Version=3.$((10#$minor)).${patch}"
}

have_promtool() {
  [[ -x "$BIN/promtool" && -f "$BIN/promtool.ldflags" && "$(cat "$BIN/promtool.ldflags")" == "$(promtool_ldflags)" ]]
}

# Only the rule checking and testing commands are used; promtool links every service discovery
# too, and the build tag remove_all_sd leaves them out (a smaller, faster build).
build_promtool() {
  local work="$CACHE/src/promtool-${PROMETHEUS_VERSION}"
  prepare_module "$work" promtool-build "" "github.com/prometheus/prometheus/cmd/promtool@${PROMETHEUS_VERSION}" || return 1
  (cd "$work" && go build -trimpath -tags remove_all_sd -ldflags "$(promtool_ldflags)" \
    -o "$BIN/promtool.tmp" github.com/prometheus/prometheus/cmd/promtool) || return 1
  mv "$BIN/promtool.tmp" "$BIN/promtool"
  promtool_ldflags > "$BIN/promtool.ldflags"
}

have_monitoring_crds() {
  local crd
  for crd in $MONITORING_CRDS; do
    [[ -f "$BIN/prometheus-operator-crds/monitoring.coreos.com_${crd}.yaml" ]] || return 1
  done
}

# The CRDs as prometheus-operator publishes them in its module (example/prometheus-operator-crd/).
fetch_monitoring_crds() {
  local module=github.com/prometheus-operator/prometheus-operator
  go mod download "${module}@${PROMETHEUS_OPERATOR_VERSION}" || return 1
  local src
  src="$(go env GOMODCACHE)/${module}@${PROMETHEUS_OPERATOR_VERSION}/example/prometheus-operator-crd"
  rm -rf "$BIN/prometheus-operator-crds.tmp"
  mkdir -p "$BIN/prometheus-operator-crds.tmp"
  local crd
  for crd in $MONITORING_CRDS; do
    cp "$src/monitoring.coreos.com_${crd}.yaml" "$BIN/prometheus-operator-crds.tmp/" || return 1
  done
  rm -rf "$BIN/prometheus-operator-crds"
  mv "$BIN/prometheus-operator-crds.tmp" "$BIN/prometheus-operator-crds"
}

have_helm || build_step "helm ${HELM_VERSION}" "$CACHE/logs/helm-${HELM_VERSION}.log" build_helm
have_kstatus || build_step "kstatus (cli-utils ${CLI_UTILS_VERSION})" \
  "$CACHE/logs/kstatus-cli-utils-${CLI_UTILS_VERSION}.log" build_kstatus
have_promtool || build_step "promtool (prometheus ${PROMETHEUS_VERSION})" \
  "$CACHE/logs/promtool-${PROMETHEUS_VERSION}.log" build_promtool
have_monitoring_crds || build_step "prometheus-operator ${PROMETHEUS_OPERATOR_VERSION} CRDs" \
  "$CACHE/logs/prometheus-operator-crds-${PROMETHEUS_OPERATOR_VERSION}.log" fetch_monitoring_crds

"$BIN/helm" version --short >/dev/null 2>&1 || die "$BIN/helm does not run (remove it to rebuild)"
"$BIN/promtool" --version >/dev/null 2>&1 || die "$BIN/promtool does not run (remove it to rebuild)"
log "tools ready in $BIN"
echo "$BIN"
