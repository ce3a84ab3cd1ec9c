#!/usr/bin/env bash
# Runs the management API's property-based fuzzing (Tests/Tools/api-fuzz.sh, schemathesis)
# against a real daemon on the demo topology (without its partitions), as a host-admin and as a
# tenant-admin, then checks that the daemon is still running and that the audit log of every
# call it answered verifies.
#
#   Tests/Tools/api-fuzz-daemon.sh [MAX_EXAMPLES]     (as root, after swift build)
set -euo pipefail
cd "$(dirname "$0")/../.."
examples="${1:-50}"
bulkhead=.build/debug/bulkhead
[[ -x $bulkhead ]] || { echo "api-fuzz-daemon: no $bulkhead: run swift build first" >&2; exit 2; }
state=$(mktemp -d /tmp/bh-apifuzz.XXXXXX)
config=$state.json
python3 - "$state" >"$config" <<'PY'
import json, sys
document = json.load(open("configs/demo.json"))
document["host"] = {"stateDirectory": sys.argv[1], "controlSocketGroup": 64990}
for tenant in document["tenants"]:
    tenant["partitions"] = []
    for port in tenant["ports"]:
        if port.get("kind") != "vhost-user":
            port["netns"] = "af-%s-%s" % (tenant["id"], port["id"])
            port["ifname"] = "af-%s-%s" % (tenant["id"], port["id"])
json.dump(document, sys.stdout, indent=2)
PY
"$bulkhead" run --config "$config" >"$state.log" 2>&1 &
daemon=$!
cleanup() {
  kill -TERM "$daemon" 2>/dev/null || true
  wait "$daemon" 2>/dev/null || true
  rm -rf "$state" "$config" "$state.log"
}
trap cleanup EXIT
status=0
bash Tests/Tools/api-fuzz.sh "$state/control.sock" "$examples" || status=$?
API_FUZZ_AS=64992:64990 bash Tests/Tools/api-fuzz.sh "$state/control.sock" "$examples" || status=$?
if ! kill -0 "$daemon" 2>/dev/null; then
  echo "api-fuzz-daemon: the daemon died under the fuzzer:" >&2
  tail -40 "$state.log" >&2
  exit 1
fi
kill -TERM "$daemon"; wait "$daemon" || true
"$bulkhead" audit verify "$state/audit.log" || status=1
echo "api-fuzz-daemon: $(wc -l <"$state/audit.log") calls and events audited" >&2
exit $status
