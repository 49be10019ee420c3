# shellcheck shell=bash
# Helpers shared by hack/build-control-plane.sh and hack/build-tools.sh (sourced, not run).
#
# The sourcing script sets LOG_PREFIX (e.g. "control-plane") before sourcing, and gets:
#   log, die                   messages on stderr, "[prefix] ..."
#   CACHE                      the cache root: $GPUPOOL_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/gpupool
#   use_prebuilt VAR NAME...   if $VAR is set: checks its executables, prints it and exits
#   require_go WHAT            dies unless Go is on PATH
#   take_build_lock DIR        one build at a time per DIR (waits for a running one)
#   prepare_module DIR NAME GO_MOD_TAIL GO_GET_ARG...
#                              a wrapper Go module to build pinned upstream commands from
#   build_step WHAT LOG CMD... runs CMD with all its output in LOG and prints one progress line

log() { echo "[${LOG_PREFIX}] $*" >&2; }
die() { echo "[${LOG_PREFIX}] error: $*" >&2; exit 1; }

# shellcheck disable=SC2034 # used by the sourcing scripts
CACHE="${GPUPOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpupool}"

# Reproducible, self-contained Go builds: the local toolchain, no workspace, static binaries.
export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS=-buildvcs=false

# When the environment variable VAR names a folder of prebuilt binaries, checks that it has an
# executable for every NAME, prints the folder (the scripts' answer) and exits: nothing is built.
use_prebuilt() {
  local var=$1
  shift
  local dir=${!var:-}
  [[ -n "$dir" ]] || return 0
  local name
  for name in "$@"; do
    [[ -x "$dir/$name" ]] || die "$var=$dir has no executable '$name'"
  done
  log "using the binaries in $var=$dir"
  echo "$dir"
  exit 0
}

require_go() {
  command -v go >/dev/null 2>&1 || die "Go is not installed (need Go >= 1.26 on PATH to build $1)"
}

# Holds an exclusive lock on DIR/.lock until the script exits, so that two callers (tests of
# several binaries start at once) never build into the same folder together; the second waits
# and then finds everything built.
take_build_lock() {
  local dir=$1
  mkdir -p "$dir"
  exec 9>"$dir/.lock"
  if ! flock -n 9; then
    log "another build into $dir is running; waiting for it"
    flock 9
  fi
}

# Writes DIR/go.mod (module gpupool.local/NAME, then GO_MOD_TAIL) and resolves GO_GET_ARGs into
# it, unless DIR/go.mod exists already. On failure go.mod is removed, so the next run retries.
prepare_module() {
  local dir=$1 name=$2 tail=$3
  shift 3
  [[ -f "$dir/go.mod" ]] && return 0
  mkdir -p "$dir"
  echo "== preparing wrapper module $dir: go get $*"
  if ! (cd "$dir" &&
    printf 'module gpupool.local/%s\n\ngo 1.26.0\n%s' "$name" "$tail" >go.mod.tmp &&
    mv go.mod.tmp go.mod &&
    go get "$@"); then
    rm -f "$dir/go.mod"
    return 1
  fi
}

# Runs CMD (a command or shell function) with stdout and stderr in LOG instead of the terminal
# (`go get` alone prints hundreds of "go: downloading" lines), printing
#   [prefix] WHAT: building... done in 61s
# with a dot every 30 s meanwhile. On failure it prints the log's path and last 30 lines, and exits.
build_step() {
  local what=$1 log_file=$2
  shift 2
  mkdir -p "$(dirname "$log_file")"
  : >"$log_file"
  local start=$SECONDS
  printf '[%s] %s: building…' "$LOG_PREFIX" "$what" >&2
  ("$@") >>"$log_file" 2>&1 &
  local pid=$! seconds=0
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    seconds=$((seconds + 1))
    if ((seconds % 30 == 0)); then printf '.' >&2; fi
  done
  if wait "$pid"; then
    printf ' done in %ss\n' "$((SECONDS - start))" >&2
    return 0
  fi
  printf ' failed after %ss\n' "$((SECONDS - start))" >&2
  log "full log: $log_file; its last 30 lines:"
  tail -n 30 "$log_file" >&2
  die "$what failed"
}
