#!/usr/bin/env bash
# Proves that an installed Bulkhead needs no Swift toolchain:
#   1. ldd: neither binary loads a Swift runtime library (libswift*, libFoundation*, libdispatch,
#      libBlocksRuntime) or anything from the toolchain, and every library it does load exists;
#   2. in a private mount namespace with the toolchain hidden under an empty tmpfs (and no Swift
#      library left in the loader's cache), `bulkhead --help`, `bulkhead validate --config
#      deploy/host.json` and `bulkhead-vmm --help` run and say what they should;
#   3. a control: in that namespace the toolchain's swift and libswiftCore.so are really gone,
#      and a binary that does load the runtime dynamically (the debug build, if there is one)
#      fails there, so the checks above could fail;
#   4. the installed unit passes `systemd-analyze verify` where systemd-analyze exists.
# Usage: deploy/check-installed.sh PREFIX [TOOLCHAIN]   (TOOLCHAIN: default /opt/swift)
# Needs root (unshare -m, mount). Exit status 0 only when every check passed.
set -euo pipefail
prefix=${1:?usage: deploy/check-installed.sh PREFIX [TOOLCHAIN]}
toolchain=${2:-/opt/swift}
cd "$(dirname "$0")/.."
repo=$(pwd)
[ "$(id -u)" = 0 ] || { echo "check-installed.sh: run as root (it unshares a mount namespace)" >&2; exit 1; }

failures=0
pass() { printf 'ok    %s\n' "$*"; }
fail() { printf 'FAIL  %s\n' "$*"; failures=$((failures + 1)); }

runtime_pattern='libswift|libFoundation|lib_Foundation|libdispatch|libBlocksRuntime|libicu.*swift'
for product in bulkhead bulkhead-vmm; do
  binary=$prefix/bin/$product
  if [ ! -x "$binary" ]; then fail "$binary is not an installed executable"; continue; fi
  libraries=$(ldd "$binary" 2>&1 || true)
  if grep -Eq "$runtime_pattern" <<<"$libraries"; then
    fail "$product loads the Swift runtime dynamically: $(grep -E "$runtime_pattern" <<<"$libraries" | awk '{print $1}' | tr '\n' ' ')"
  elif grep -Fq "$toolchain/" <<<"$libraries"; then
    fail "$product loads a library from $toolchain: $(grep -F "$toolchain/" <<<"$libraries" | tr '\n' ';')"
  elif grep -q 'not found' <<<"$libraries"; then
    fail "$product needs libraries this host lacks: $(grep 'not found' <<<"$libraries" | tr '\n' ';')"
  else
    pass "$product loads no Swift runtime; its libraries: $(awk '{print $1}' <<<"$libraries" | tr '\n' ' ')"
  fi
done

# The control binary: linked against the toolchain's shared runtime (a debug build is).
control=""
for candidate in "$repo/.build/debug/bulkhead" "$repo/.build/release/bulkhead"; do
  if [ -x "$candidate" ] && ldd "$candidate" 2>/dev/null | grep -q "libswiftCore.so => $toolchain/"; then
    control=$candidate; break
  fi
done

# Everything below runs in its own mount namespace: the tmpfs over the toolchain is gone when it ends.
# Its output is the checks' lines; its exit status the number of failures.
inner=$(mktemp)
trap 'rm -f "$inner"' EXIT
cat >"$inner" <<'INNER'
set -uo pipefail
prefix=$1 toolchain=$2 repo=$3 control=$4
failures=0
pass() { printf 'ok    %s\n' "$*"; }
fail() { printf 'FAIL  %s\n' "$*"; failures=$((failures + 1)); }
mount --make-rprivate /
if [ -d "$toolchain" ]; then
  mount -t tmpfs -o ro,size=4k bulkhead-no-toolchain "$toolchain"
fi
# The loader's cache could still name a Swift runtime outside the toolchain: then it is not out of reach.
if ldconfig -p | grep -Eq 'libswiftCore|libFoundation\.so'; then
  fail "the loader cache still lists a Swift runtime: $(ldconfig -p | grep -E 'libswiftCore|libFoundation\.so' | head -n3 | tr '\n' ';')"
fi
if [ -e "$toolchain/usr/bin/swift" ] || [ -e "$toolchain/usr/lib/swift/linux/libswiftCore.so" ] \
   || env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin sh -c 'command -v swift' >/dev/null; then
  fail "the toolchain is still reachable in the namespace ($toolchain, or swift in PATH)"
else
  pass "toolchain out of reach: $toolchain is an empty tmpfs, no swift in PATH"
fi
# A clean environment: no LD_LIBRARY_PATH or PATH entry can bring the runtime back.
run() { env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"; }

if out=$(run "$prefix/bin/bulkhead" --help 2>&1) && grep -q 'USAGE: bulkhead' <<<"$out" && grep -q 'validate' <<<"$out"; then
  pass "bulkhead --help"
else
  fail "bulkhead --help: $(head -n5 <<<"$out")"
fi
if out=$(run "$prefix/bin/bulkhead" validate --config "$repo/deploy/host.json" 2>&1) && grep -q ': valid (' <<<"$out"; then
  pass "bulkhead validate --config deploy/host.json: $out"
else
  fail "bulkhead validate --config deploy/host.json: $(head -n5 <<<"$out")"
fi
# And the refusal path: an invalid file is reported with its JSON path, exit status 1.
bad=$(mktemp)
printf '{"host": {"stateDirectory": "relative"}, "tenants": []}' >"$bad"
out=$(run "$prefix/bin/bulkhead" validate --config "$bad" 2>&1); status=$?
rm -f "$bad"
if [ "$status" = 1 ] && grep -q '\$.host.stateDirectory' <<<"$out"; then
  pass "bulkhead validate refuses an invalid configuration (status 1, names \$.host.stateDirectory)"
else
  fail "bulkhead validate on an invalid configuration: status $status: $(head -n5 <<<"$out")"
fi
if out=$(run "$prefix/bin/bulkhead-vmm" --help 2>&1) && grep -q -- '--config' <<<"$out" && grep -q -- '--tenant' <<<"$out"; then
  pass "bulkhead-vmm --help"
else
  fail "bulkhead-vmm --help: $(head -n5 <<<"$out")"
fi
if [ -n "$control" ]; then
  if out=$(run "$control" --help 2>&1); then
    fail "control: $control (dynamically linked) still runs with the toolchain hidden: the hiding does not work"
  elif grep -Eq 'error while loading shared libraries: (libswift|libFoundation|lib_Foundation|libdispatch|libBlocksRuntime)' <<<"$out"; then
    pass "control: $control (dynamically linked) fails there: $(head -n1 <<<"$out")"
  else
    fail "control: $control failed for another reason: $(head -n3 <<<"$out")"
  fi
else
  echo "note  no dynamically linked build in $repo/.build to use as a control"
fi
exit "$failures"
INNER
inner_status=0
unshare --mount --propagation private bash "$inner" "$prefix" "$toolchain" "$repo" "$control" || inner_status=$?
failures=$((failures + inner_status))

unit=$prefix/share/bulkhead/bulkhead.service
if [ ! -f "$unit" ]; then
  fail "$unit is missing (install.sh installs it)"
elif command -v systemd-analyze >/dev/null; then
  if out=$(systemd-analyze verify "$unit" 2>&1); then
    pass "systemd-analyze verify $unit"
  else
    fail "systemd-analyze verify $unit: $out"
  fi
else
  echo "note  systemd-analyze is not installed: the unit's syntax was not verified"
fi

if ((failures)); then
  echo "check-installed.sh: $failures check(s) failed" >&2
  exit 1
fi
echo "check-installed.sh: every check passed"
