#!/usr/bin/env bash
# Builds the gpupool-operator container image without a daemon and without pulling anything:
# a statically linked binary (glibc, +crt-static) copied onto `scratch` (see Dockerfile), built
# with buildah (Debian package, vfs storage, chroot isolation), then checked:
#   - the image config: entrypoint /gpupool-operator, cmd run, non-root user 65532, port 8080
#   - the root filesystem holds the binary and nothing else (no shell, no libc, no package manager)
#   - the entrypoint runs in that root filesystem as UID 65532 (`--version`, and `crd` prints
#     exactly crds/gpupool.yaml)
# and saved as an OCI archive (target/image/gpupool-operator-<version>.oci.tar) that any registry
# client can push (skopeo copy, crane push, podman load, buildah push).
#
#   hack/build-image.sh                        # build, check, save; tag ghcr.io/gpupool/gpupool-operator:<version>
#   hack/build-image.sh --tag registry.example.com/gpupool-operator:0.1.0
#   hack/build-image.sh --tag registry.example.com/gpupool-operator:0.1.0 --push
#                                              # then push with buildah (log in first: buildah login registry.example.com)
#
# Idempotent and CI-safe: installs buildah with apt-get when missing (needs root), keeps its
# storage in the cache folder (never touches /var/lib/containers), removes its working containers
# and dangling images, and fails with a message naming the step.
#
# Environment:
#   GPUPOOL_CACHE   cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/gpupool); buildah storage
#                   lives in $GPUPOOL_CACHE/buildah
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { echo "[image] $*" >&2; }
die() { echo "[image] error: $*" >&2; exit 1; }

VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -1)
[[ -n "$VERSION" ]] || die "cannot read the package version from Cargo.toml"
TAG="ghcr.io/gpupool/gpupool-operator:${VERSION}"
PUSH=false
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tag) [[ $# -ge 2 ]] || die "--tag needs a value"; TAG=$2; shift 2 ;;
    --tag=*) TAG=${1#--tag=}; shift ;;
    --push) PUSH=true; shift ;;
    -h|--help) sed -n '2,25p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

TARGET=x86_64-unknown-linux-gnu
BINARY="target/${TARGET}/release/gpupool-operator"
CACHE="${GPUPOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpupool}"
STORAGE="$CACHE/buildah"
OUT_DIR="$ROOT/target/image"
ARCHIVE="$OUT_DIR/gpupool-operator-${VERSION}.oci.tar"
started=$SECONDS
step_start=$SECONDS
step() { log "$1: done in $((SECONDS - step_start))s"; step_start=$SECONDS; }

# --- buildah -----------------------------------------------------------------------------------
if ! command -v buildah >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || die "buildah is not installed and apt-get is unavailable; install buildah (https://buildah.io)"
  [[ $(id -u) -eq 0 ]] || die "buildah is not installed; install it (sudo apt-get install -y buildah) or run this script as root"
  log "installing buildah (apt-get)"
  apt-get update -qq >/dev/null || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah >/dev/null \
    || die "apt-get install buildah failed"
  step "installing buildah"
fi
mkdir -p "$STORAGE/root" "$STORAGE/runroot" "$OUT_DIR"
# vfs needs no overlay or fuse support; chroot isolation needs no runtime (the Dockerfile has
# no RUN step anyway). Rootless users need /etc/subuid; root (CI containers) needs nothing.
BUILDAH=(buildah --storage-driver vfs --root "$STORAGE/root" --runroot "$STORAGE/runroot")
export BUILDAH_ISOLATION=chroot
"${BUILDAH[@]}" version >/dev/null 2>&1 || die "buildah does not work here: $("${BUILDAH[@]}" version 2>&1 | tail -3)"

# --- the static binary -------------------------------------------------------------------------
log "building a static ${BINARY} (release)"
# --target keeps RUSTFLAGS off build scripts and proc macros, which must stay dynamic.
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$TARGET" --bin gpupool-operator \
  || die "cargo build of the static binary failed"
[[ -x "$BINARY" ]] || die "$BINARY was not produced"
if readelf -lW "$BINARY" | grep -q 'Requesting program interpreter'; then
  die "$BINARY is dynamically linked (it needs a program interpreter); it would not run on scratch"
fi
readelf -dW "$BINARY" | grep -q '(NEEDED)' && die "$BINARY needs shared libraries: $(readelf -dW "$BINARY" | grep NEEDED)"
log "static binary: $(du -h "$BINARY" | cut -f1)"
step "static binary"

# --- the image ---------------------------------------------------------------------------------
ctr=""
cleanup() {
  if [[ -n "$ctr" ]]; then
    "${BUILDAH[@]}" umount "$ctr" >/dev/null 2>&1 || true
    "${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

log "building image $TAG"
"${BUILDAH[@]}" bud --isolation chroot --layers=false --pull=never --format oci \
  --timestamp 0 --build-arg "BINARY=$BINARY" -f Dockerfile -t "$TAG" . >&2 \
  || die "buildah bud failed"
"${BUILDAH[@]}" rmi --prune >/dev/null 2>&1 || true
step "image build"

# --- checks: config --------------------------------------------------------------------------
if ! command -v jq >/dev/null 2>&1; then
  [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1 || die "jq is needed to check the image config; install it"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null || die "apt-get install jq failed"
fi
config=$("${BUILDAH[@]}" inspect --type image "$TAG" | jq -c .OCIv1.config) \
  || die "cannot inspect $TAG"
check_config() {
  local what=$1 want=$2 got
  got=$(jq -c "$what" <<<"$config")
  [[ "$got" == "$want" ]] || die "image config $what is $got, expected $want"
}
check_config .Entrypoint '["/gpupool-operator"]'
check_config .Cmd '["run"]'
check_config .User '"65532:65532"'
check_config '.ExposedPorts | keys' '["8080/tcp"]'
log "config: entrypoint $(jq -c .Entrypoint <<<"$config"), cmd $(jq -c .Cmd <<<"$config"), user $(jq -r .User <<<"$config")"

# --- checks: root filesystem and entrypoint -----------------------------------------------------
ctr=$("${BUILDAH[@]}" from --pull-never "$TAG") || die "buildah from $TAG failed"
mnt=$("${BUILDAH[@]}" mount "$ctr") || die "buildah mount failed (rootless? run it under 'buildah unshare')"
files=$(cd "$mnt" && find . -mindepth 1 \( -type f -o -type l \) | sort | tr '\n' ' ')
[[ "$files" == "./gpupool-operator " ]] || die "the image should hold only /gpupool-operator, found: $files"
[[ ! -e "$mnt/bin/sh" ]] || die "the image has a shell"
# The entrypoint in the image: with `buildah run` (chroot isolation, the image's user and root
# filesystem), or, where buildah cannot run containers (some sandboxes), with chroot into the
# mounted root filesystem as the image's user (root only), else straight from it.
entry=$(jq -r '.Entrypoint[0]' <<<"$config")
user=$(jq -r .User <<<"$config")
CHROOT=$(command -v chroot || true)
if "${BUILDAH[@]}" run --isolation chroot "$ctr" -- "$entry" --version >/dev/null 2>&1; then
  how="buildah run"
  run_in_image() { "${BUILDAH[@]}" run --isolation chroot "$ctr" -- "$entry" "$@"; }
elif [[ $(id -u) -eq 0 && -n "$CHROOT" ]]; then
  how="chroot into the image's root filesystem"
  # An empty environment, as in a container: no KUBECONFIG or $HOME/.kube leaks in.
  run_in_image() { env -i "$CHROOT" --userspec="$user" "$mnt" "$entry" "$@"; }
else
  how="the binary in the mounted root filesystem"
  run_in_image() { env -i HOME=/nonexistent "$mnt$entry" "$@"; }
fi
log "running the entrypoint with $how"
version_out=$(run_in_image --version) || die "'$entry --version' failed in the image's root filesystem"
[[ "$version_out" == "gpupool-operator ${VERSION}" ]] || die "unexpected --version output: $version_out"
run_in_image crd > "$OUT_DIR/crd.yaml" || die "'$entry crd' failed in the image's root filesystem"
cmp -s "$OUT_DIR/crd.yaml" crds/gpupool.yaml \
  || die "'gpupool-operator crd' in the image differs from crds/gpupool.yaml (run: cargo run -- crd > crds/gpupool.yaml)"
rm -f "$OUT_DIR/crd.yaml"
# `run` without a cluster must fail cleanly (an error message, exit 1), not crash.
if run_in_image run --metrics-addr 127.0.0.1:0 </dev/null >/dev/null 2>"$OUT_DIR/run.err"; then
  die "'$entry run' without a cluster should fail"
fi
grep -q "cannot reach the cluster" "$OUT_DIR/run.err" || die "'$entry run' without a cluster: $(cat "$OUT_DIR/run.err")"
rm -f "$OUT_DIR/run.err"
log "entrypoint runs as $user in the image ($how): '$version_out'; crd matches crds/gpupool.yaml"
cleanup
ctr=""
step "image checks"

# --- output ------------------------------------------------------------------------------------
rm -f "$ARCHIVE"
"${BUILDAH[@]}" push --quiet "$TAG" "oci-archive:${ARCHIVE}:${TAG}" || die "saving $ARCHIVE failed"
log "saved $ARCHIVE ($(du -h "$ARCHIVE" | cut -f1))"
if $PUSH; then
  "${BUILDAH[@]}" push "$TAG" "docker://$TAG" || die "pushing $TAG failed (log in first: buildah login ${TAG%%/*})"
  log "pushed $TAG"
fi
step "save"
log "image $TAG ready in $((SECONDS - started))s"
echo "$TAG"
