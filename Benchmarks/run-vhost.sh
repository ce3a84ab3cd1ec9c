#!/usr/bin/env bash
# The vhost-user part of the system benchmark on its own (lib/vhost.sh; run-system.sh calls
# vhost_run too): frames/s between a vhost-user-net port and a TAP port of the same tenant.
#
#   Benchmarks/run-vhost.sh [--standalone] [--duration S] [--out DIR]
#
#   --standalone  against VhostTapLoop (the device looped to the TAP, no switch) instead of
#                 `bulkhead run`: the lines are vhost.standalone.NAME=N
#   --duration S  seconds per measurement (default 5), after 1 s of warm-up
#
# Environment: BULKHEAD_BINARY, NETLOAD_BINARY, VHOSTTAPLOOP_BINARY (use these, do not build).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib/common.sh
source "$REPO/Benchmarks/lib/common.sh"
# shellcheck source=lib/vhost.sh
source "$REPO/Benchmarks/lib/vhost.sh"

STANDALONE=0 DURATION=5 OUT_DIR=""
while (($#)); do
    case $1 in
        --standalone) STANDALONE=1 ;;
        --duration) DURATION=${2:?--duration needs seconds}; shift ;;
        --out) OUT_DIR=${2:?--out needs a directory}; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1'" ;;
    esac
    shift
done
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "--duration must be a whole number of seconds"
[ "$(id -u)" = 0 ] || die "must run as root (network namespace, TAP device)"

binary() {
    local product=$1 override=$2
    if [ -n "${!override:-}" ]; then printf '%s\n' "${!override}"; return; fi
    command -v swift >/dev/null || export PATH=/opt/swift/usr/bin:$PATH
    (cd "$REPO" && swift build -c release --product "$product" >&2) || die "the release build of $product failed"
    printf '%s\n' "$REPO/.build/release/$product"
}

WORK_DIR=$(mktemp -d /tmp/bulkhead-vhost-work.XXXXXX)
if [ -n "$OUT_DIR" ]; then mkdir -p "$OUT_DIR"; else OUT_DIR=$(mktemp -d /tmp/bulkhead-vhost.XXXXXX); fi
OUT_DIR=$(cd "$OUT_DIR" && pwd)
trap 'vhost_stop; rm -rf "$WORK_DIR"' EXIT
step "output directory: $OUT_DIR"

LOAD=$(binary NetLoad NETLOAD_BINARY)
if ((STANDALONE)); then
    vhost_run_standalone "$(binary VhostTapLoop VHOSTTAPLOOP_BINARY)" "$LOAD"
else
    vhost_run "$(binary bulkhead BULKHEAD_BINARY)" "$LOAD"
fi
