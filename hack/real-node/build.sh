#!/usr/bin/env bash
# Builds everything a real node needs (testenv's RealNode: a real kubelet + containerd + runc,
# running the real NVIDIA device plugin in a pod) into a cache folder outside the repo, keyed by
# versions, the way build-control-plane.sh builds the control plane. Idempotent: a second run
# only checks stamps. Prints the folder on its last line of stdout.
#
#   hack/real-node/build.sh          # build (or reuse) and print the folder
#
# The folder holds:
#   bin/kubelet                          k8s.io/kubernetes/cmd/kubelet (hack/versions.env), from the
#                                        control plane's wrapper module, same tags and ldflags
#   bin/nvidia-device-plugin             github.com/NVIDIA/k8s-device-plugin/cmd/nvidia-device-plugin
#                                        (versions.env here), cgo + glibc as upstream builds it
#   bin/nvidia-device-plugin-mockgpu     the same source with `go build -overlay`: NVML is go-nvml's
#                                        dgxa100 mock (8 x A100), see mock-nvml/mock_nvml.go
#   images/*.oci.tar, images.json        OCI archives (buildah, vfs, private storage) and their tags:
#                                        pause, busybox, the plugin (real and mock GPU) and the
#                                        validation image (a stand-in for the CUDA vectorAdd sample)
#   real-node.env                        the tags, for scripts
#
# Each piece prints one progress line; Go's and buildah's output goes to $CACHE/logs/real-node-*.log.
#
# Needs root (apt-get when packages are missing, buildah's storage) and, for the kubelet, the
# control plane's wrapper module: run after hack/build-control-plane.sh (which this runs first).
#
# Environment:
#   GPUPOOL_CACHE   cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/gpupool)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
HACK="$(cd "$HERE/.." && pwd)"
# shellcheck source=hack/versions.env
source "$HACK/versions.env"
# shellcheck source=hack/real-node/versions.env
source "$HERE/versions.env"
LOG_PREFIX=real-node # used by lib.sh
# shellcheck source=hack/lib.sh
source "$HACK/lib.sh"

require_go "the kubelet and the NVIDIA device plugin"
"$HERE/install.sh"

OUT="$CACHE/real-node/k8s-${KUBERNETES_VERSION}_device-plugin-${DEVICE_PLUGIN_VERSION}"
take_build_lock "$OUT"
mkdir -p "$OUT/bin" "$OUT/images" "$OUT/stage"
LOGS="$CACHE/logs"

# A stamp per piece: the hash of its inputs. A piece is rebuilt when its output or stamp is
# missing, or its inputs changed (a file here edited, a version bumped).
inputs_hash() { cat "$@" | sha256sum | cut -d' ' -f1; }
fresh() { # fresh NAME HASH OUTPUT...
  local name=$1 hash=$2 f
  shift 2
  [[ -f "$OUT/.stamp-$name" && "$(cat "$OUT/.stamp-$name")" == "$hash" ]] || return 1
  for f in "$@"; do [[ -e "$f" ]] || return 1; done
}
stamp() { echo "$2" >"$OUT/.stamp-$1"; }

# --- NVIDIA device plugin: real and mock GPU -----------------------------------------------------
DP_MODULE=github.com/NVIDIA/k8s-device-plugin
# go build -overlay cannot replace files inside GOMODCACHE ("Files beneath GOMODCACHE must not be
# replaced"), so both builds run in a verbatim copy of the module (downloaded and checksum-verified
# by the go command), built as the main module with its own go.mod and go.sum.
DP_SRC="$CACHE/src/k8s-device-plugin-${DEVICE_PLUGIN_VERSION}"
# As upstream's Makefile: cgo (go-nvml dlopens libnvidia-ml.so.1), these external linker flags,
# and the version in internal/info.
DP_LDFLAGS="-s -w '-extldflags=-Wl,--export-dynamic -Wl,--unresolved-symbols=ignore-in-object-files'"
DP_LDFLAGS+=" -X ${DP_MODULE}/internal/info.gitCommit=${DEVICE_PLUGIN_COMMIT} -X ${DP_MODULE}/internal/info.version=${DEVICE_PLUGIN_VERSION}"
MOCK_SRC="$HERE/mock-nvml/mock_nvml.go"

prepare_dp_source() {
  [[ -f "$DP_SRC/go.mod" ]] && return 0
  local dir
  dir=$(go mod download -json "${DP_MODULE}@${DEVICE_PLUGIN_VERSION}" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [[ -n "$dir" && -f "$dir/go.mod" ]] || { echo "cannot download ${DP_MODULE}@${DEVICE_PLUGIN_VERSION}"; return 1; }
  rm -rf "$DP_SRC.tmp"
  cp -r "$dir" "$DP_SRC.tmp"
  chmod -R u+w "$DP_SRC.tmp"
  mv "$DP_SRC.tmp" "$DP_SRC"
}

build_device_plugin() {
  prepare_dp_source || return 1
  cd "$DP_SRC"
  CGO_ENABLED=1 go build -trimpath -ldflags "$DP_LDFLAGS" -o "$OUT/bin/nvidia-device-plugin.tmp" ./cmd/nvidia-device-plugin
  "$OUT/bin/nvidia-device-plugin.tmp" --version
  mv "$OUT/bin/nvidia-device-plugin.tmp" "$OUT/bin/nvidia-device-plugin"
}

# The overlay: main.go with its one `nvml.New(` (in startPlugins) turned into `newMockNvml(`, and
# mock_nvml.go added to the package. Fails if upstream's main.go no longer has exactly one.
build_device_plugin_mockgpu() {
  prepare_dp_source || return 1
  local pkg="$DP_SRC/cmd/nvidia-device-plugin" ov="$OUT/stage/overlay"
  mkdir -p "$ov"
  local count
  count=$(grep -c 'nvml\.New(' "$pkg/main.go" || true)
  [[ "$count" == 1 ]] || { echo "expected exactly one 'nvml.New(' in $pkg/main.go, found $count"; return 1; }
  sed 's/\bnvml\.New(/newMockNvml(/' "$pkg/main.go" >"$ov/main.go"
  echo "== overlay: the one change to main.go"
  diff "$pkg/main.go" "$ov/main.go" || true
  printf '{"Replace": {"%s": "%s", "%s": "%s"}}\n' \
    "$pkg/main.go" "$ov/main.go" "$pkg/mock_nvml.go" "$MOCK_SRC" >"$ov/overlay.json"
  cd "$DP_SRC"
  CGO_ENABLED=1 go build -trimpath -overlay "$ov/overlay.json" -ldflags "$DP_LDFLAGS" \
    -o "$OUT/bin/nvidia-device-plugin-mockgpu.tmp" ./cmd/nvidia-device-plugin
  mv "$OUT/bin/nvidia-device-plugin-mockgpu.tmp" "$OUT/bin/nvidia-device-plugin-mockgpu"
}

DP_HASH=$(echo "dp ${DEVICE_PLUGIN_VERSION} ${DEVICE_PLUGIN_COMMIT} ${DP_LDFLAGS}" | sha256sum | cut -d' ' -f1)
if ! fresh device-plugin "$DP_HASH" "$OUT/bin/nvidia-device-plugin"; then
  build_step "nvidia-device-plugin ${DEVICE_PLUGIN_VERSION}" \
    "$LOGS/real-node-device-plugin-${DEVICE_PLUGIN_VERSION}.log" build_device_plugin
  stamp device-plugin "$DP_HASH"
fi
MOCK_HASH=$(echo "$DP_HASH $(inputs_hash "$MOCK_SRC")" | sha256sum | cut -d' ' -f1)
if ! fresh device-plugin-mockgpu "$MOCK_HASH" "$OUT/bin/nvidia-device-plugin-mockgpu"; then
  build_step "nvidia-device-plugin ${DEVICE_PLUGIN_VERSION} over mock NVML (dgxa100)" \
    "$LOGS/real-node-device-plugin-mockgpu-${DEVICE_PLUGIN_VERSION}.log" build_device_plugin_mockgpu
  stamp device-plugin-mockgpu "$MOCK_HASH"
fi

# --- images --------------------------------------------------------------------------------------
STORAGE="$CACHE/buildah-real-node"
BUILDAH=(buildah --storage-driver vfs --root "$STORAGE/root" --runroot "$STORAGE/runroot")
export BUILDAH_ISOLATION=chroot
PATH_ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
STAGE="$OUT/stage"

# A root filesystem with busybox (static) at /bin/busybox and a symlink per applet in /bin.
stage_busybox() {
  local root=$1 applet
  mkdir -p "$root/bin" "$root/tmp" "$root/etc"
  cp /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [[ "$applet" == busybox ]] || ln -sf busybox "$root/bin/$applet"
  done
  chmod 1777 "$root/tmp"
  echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
  echo "root:x:0:" >"$root/etc/group"
}

# The shared libraries a dynamic binary needs (glibc), at their paths, as in upstream's
# distroless base.
stage_libs() {
  local root=$1 binary=$2 lib
  for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}

# build_image TAG ARCHIVE ROOTFS CONFIG_ARGS...: an image of ROOTFS on scratch, saved as ARCHIVE.
build_image() {
  local tag=$1 archive=$2 rootfs=$3
  shift 3
  local ctr
  ctr=$("${BUILDAH[@]}" from --pull-never scratch)
  "${BUILDAH[@]}" copy "$ctr" "$rootfs" / >/dev/null
  "${BUILDAH[@]}" config "$@" "$ctr"
  "${BUILDAH[@]}" commit --quiet --rm --format oci --timestamp 0 "$ctr" "$tag" >/dev/null
  rm -f "$archive.tmp"
  "${BUILDAH[@]}" push --quiet "$tag" "oci-archive:$archive.tmp:$tag"
  "${BUILDAH[@]}" rmi "$tag" >/dev/null
  mv "$archive.tmp" "$archive"
  echo "saved $tag as $archive ($(du -h "$archive" | cut -f1))"
}

image_pause() {
  local root="$STAGE/pause"
  rm -rf "$root" && mkdir -p "$root"
  gcc -static -Os -o "$root/pause" "$HERE/images/pause.c"
  build_image "$PAUSE_IMAGE" "$OUT/images/pause.oci.tar" "$root" --entrypoint '["/pause"]'
}

image_busybox() {
  local root="$STAGE/busybox"
  rm -rf "$root" && mkdir -p "$root"
  stage_busybox "$root"
  build_image "$BUSYBOX_IMAGE" "$OUT/images/busybox.oci.tar" "$root" \
    --env "$PATH_ENV" --cmd '["sh"]' --entrypoint '[]'
}

# As upstream's deployments/container/Dockerfile: the binary at /usr/bin/nvidia-device-plugin,
# entrypoint `nvidia-device-plugin` (found on PATH), its environment and labels, the LICENSE, and
# a busybox shell (upstream's base is distroless/go "-dev", which has busybox).
stage_plugin() {
  local root=$1 binary=$2
  rm -rf "$root" && mkdir -p "$root/usr/bin" "$root/licenses"
  stage_busybox "$root"
  cp "$binary" "$root/usr/bin/nvidia-device-plugin"
  stage_libs "$root" "$binary"
  cp "$DP_SRC/LICENSE" "$root/licenses/"
}
PLUGIN_CONFIG=(--entrypoint '["nvidia-device-plugin"]' --cmd '[]' --env "$PATH_ENV"
  --env NVIDIA_DISABLE_REQUIRE=true --env NVIDIA_VISIBLE_DEVICES=all
  --env NVIDIA_DRIVER_CAPABILITIES=compute,utility
  --label "io.k8s.display-name=NVIDIA Device Plugin" --label "name=NVIDIA Device Plugin"
  --label vendor=NVIDIA --label "version=${DEVICE_PLUGIN_VERSION}"
  --label "com.nvidia.git-commit=${DEVICE_PLUGIN_COMMIT}"
  --label "summary=NVIDIA device plugin for Kubernetes")

image_device_plugin() {
  stage_plugin "$STAGE/device-plugin" "$OUT/bin/nvidia-device-plugin"
  build_image "$DEVICE_PLUGIN_IMAGE" "$OUT/images/device-plugin.oci.tar" "$STAGE/device-plugin" "${PLUGIN_CONFIG[@]}"
}

# The mock build at the same path, plus a stub libnvidia-ml.so.1 (an empty shared object) where
# the driver would put it: go-nvlib's platform detection (HasNvml) dlopens that file to decide
# that this is an NVML system; the mock never calls into it.
image_device_plugin_mockgpu() {
  local root="$STAGE/device-plugin-mockgpu"
  stage_plugin "$root" "$OUT/bin/nvidia-device-plugin-mockgpu"
  mkdir -p "$root/usr/lib/x86_64-linux-gnu"
  echo '/* stub NVML for the mock-GPU device plugin image (hack/real-node/build.sh) */' >"$STAGE/nvml-stub.c"
  gcc -shared -fPIC -nostdlib -Wl,-soname,libnvidia-ml.so.1 -o "$root/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1" "$STAGE/nvml-stub.c"
  build_image "$MOCKGPU_DEVICE_PLUGIN_IMAGE" "$OUT/images/device-plugin-mockgpu.oci.tar" "$root" \
    "${PLUGIN_CONFIG[@]}" --label "gpupool.io/mock-nvml=dgxa100"
}

image_cuda_sample() {
  local root="$STAGE/cuda-sample"
  rm -rf "$root" && mkdir -p "$root/cuda-samples"
  stage_busybox "$root"
  cp "$HERE/images/vectorAdd" "$root/cuda-samples/vectorAdd"
  build_image "$CUDA_SAMPLE_IMAGE" "$OUT/images/cuda-sample.oci.tar" "$root" \
    --env "$PATH_ENV" --workingdir /cuda-samples --entrypoint '[]' --cmd '["./vectorAdd"]'
}

IMAGES_HASH_BASE=$(inputs_hash "$HERE/build.sh" "$HERE/versions.env")
image_step() { # image_step NAME FUNCTION INPUT_FILE...
  local name=$1 fn=$2
  shift 2
  local hash
  hash=$(echo "$IMAGES_HASH_BASE $(inputs_hash "$@")" | sha256sum | cut -d' ' -f1)
  fresh "image-$name" "$hash" "$OUT/images/$name.oci.tar" && return 0
  mkdir -p "$STORAGE/root" "$STORAGE/runroot"
  build_step "image $name" "$LOGS/real-node-image-$name.log" "$fn"
  stamp "image-$name" "$hash"
}
image_step pause image_pause "$HERE/images/pause.c"
image_step busybox image_busybox /bin/busybox
image_step device-plugin image_device_plugin "$OUT/bin/nvidia-device-plugin"
image_step device-plugin-mockgpu image_device_plugin_mockgpu "$OUT/bin/nvidia-device-plugin-mockgpu"
image_step cuda-sample image_cuda_sample "$HERE/images/vectorAdd" /bin/busybox

# --- kubelet (last: it waits for a running control-plane build) -------------------------------
CP_BIN="$CACHE/bin/k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}"
K8S_WORK="$CACHE/src/kubernetes-${KUBERNETES_VERSION}"

build_kubelet() {
  # The control plane's wrapper module (all staging modules pinned): `go get` adds the kubelet's
  # own dependencies to its go.sum, under the control-plane build's lock so the two never edit
  # go.mod at once. Versions do not move: they all come from k8s.io/kubernetes's go.mod.
  mkdir -p "$CP_BIN"
  exec 8>"$CP_BIN/.lock"
  flock 8
  [[ -f "$K8S_WORK/go.mod" ]] || { echo "missing $K8S_WORK/go.mod: run hack/build-control-plane.sh first"; return 1; }
  cd "$K8S_WORK"
  go get "k8s.io/kubernetes/cmd/kubelet@${KUBERNETES_VERSION}"
  local minor=${KUBERNETES_VERSION#v1.}
  minor=${minor%%.*}
  local date ldflags="-s -w" pkg
  date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=${KUBERNETES_VERSION} -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor}"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=${date}"
  done
  go build -trimpath -tags selinux,notest,grpcnotrace -ldflags "$ldflags" -o "$OUT/bin/kubelet.tmp" k8s.io/kubernetes/cmd/kubelet
  "$OUT/bin/kubelet.tmp" --version
  mv "$OUT/bin/kubelet.tmp" "$OUT/bin/kubelet"
}

KUBELET_HASH=$(echo "kubelet ${KUBERNETES_VERSION} ${KUBERNETES_STAGING_MODULES}" | sha256sum | cut -d' ' -f1)
if ! fresh kubelet "$KUBELET_HASH" "$OUT/bin/kubelet"; then
  if [[ ! -f "$K8S_WORK/go.mod" ]]; then
    log "the kubelet is built in the control plane's wrapper module: running hack/build-control-plane.sh first"
    "$HACK/build-control-plane.sh" >/dev/null
  fi
  build_step "kubelet ${KUBERNETES_VERSION}" "$LOGS/real-node-kubelet-${KUBERNETES_VERSION}.log" build_kubelet
  stamp kubelet "$KUBELET_HASH"
fi

# --- what RealNode reads -------------------------------------------------------------------------
cat >"$OUT/images.json.tmp" <<EOF
{
  "pause": {"tag": "$PAUSE_IMAGE", "archive": "$OUT/images/pause.oci.tar"},
  "busybox": {"tag": "$BUSYBOX_IMAGE", "archive": "$OUT/images/busybox.oci.tar"},
  "device_plugin": {"tag": "$DEVICE_PLUGIN_IMAGE", "archive": "$OUT/images/device-plugin.oci.tar"},
  "device_plugin_mockgpu": {"tag": "$MOCKGPU_DEVICE_PLUGIN_IMAGE", "archive": "$OUT/images/device-plugin-mockgpu.oci.tar"},
  "cuda_sample": {"tag": "$CUDA_SAMPLE_IMAGE", "archive": "$OUT/images/cuda-sample.oci.tar"}
}
EOF
mv "$OUT/images.json.tmp" "$OUT/images.json"
cat >"$OUT/real-node.env" <<EOF
PAUSE_IMAGE=$PAUSE_IMAGE
BUSYBOX_IMAGE=$BUSYBOX_IMAGE
DEVICE_PLUGIN_IMAGE=$DEVICE_PLUGIN_IMAGE
MOCKGPU_DEVICE_PLUGIN_IMAGE=$MOCKGPU_DEVICE_PLUGIN_IMAGE
CUDA_SAMPLE_IMAGE=$CUDA_SAMPLE_IMAGE
EOF
for b in kubelet nvidia-device-plugin nvidia-device-plugin-mockgpu; do
  [[ -x "$OUT/bin/$b" ]] || die "$OUT/bin/$b is missing after the build"
done
log "real node ready in $OUT"
echo "$OUT"
