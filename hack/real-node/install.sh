#!/usr/bin/env bash
# Installs the Debian packages a real node needs (hack/real-node/build.sh and testenv's RealNode):
#   containerd, runc                  the container runtime the kubelet talks to (CRI)
#   containernetworking-plugins       bridge, host-local and loopback CNI plugins (/usr/lib/cni)
#   buildah                           builds the node's images locally (no registry, no daemon)
#   busybox-static                    the shell and tools inside those images
#   gcc, libc6-dev                    the pause image's static program and the mock NVML stub
# Only what is missing is installed (apt-get update first, once); nothing is started (there is no
# systemd here: RealNode runs containerd itself). Needs root when something is missing.
#
#   hack/real-node/install.sh        # prints "[real-node] packages: ..." on stderr
set -euo pipefail

log() { echo "[real-node] $*" >&2; }
die() { echo "[real-node] error: $*" >&2; exit 1; }

PACKAGES=(containerd runc containernetworking-plugins buildah busybox-static gcc libc6-dev)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  log "packages: all present (${PACKAGES[*]})"
  exit 0
fi
command -v apt-get >/dev/null 2>&1 || die "missing packages ${missing[*]} and no apt-get to install them"
[[ $(id -u) -eq 0 ]] || die "missing packages ${missing[*]}; run this script as root (or: sudo apt-get install ${missing[*]})"
CACHE="${GPUPOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpupool}"
LOG="$CACHE/logs/real-node-apt.log"
mkdir -p "$(dirname "$LOG")"
log "packages: installing ${missing[*]} (apt-get; output in $LOG)"
start=$SECONDS
apt-get update >"$LOG" 2>&1 || die "apt-get update failed (see $LOG)"
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >>"$LOG" 2>&1 \
  || die "apt-get install ${missing[*]} failed (see $LOG)"
log "packages: installed ${missing[*]} in $((SECONDS - start))s"
