#!/usr/bin/env bash
# Builds Bulkhead (release) and the test guest, and runs the daemon on configs/demo.json in the
# foreground. Needs root (TAP devices, network namespaces, /dev/kvm). Stop it with Ctrl-C: it
# removes what it created.
#
# The demo's partitions boot the test guest (Tests/Guest) from /var/lib/bulkhead/images; the
# configuration names its SHA-256 and the partition refuses to boot anything else. The guest
# builds reproducibly, so the digest in configs/demo.json holds where the compiler is the one it
# was built with; where it is not, a copy of the configuration with this build's digest is run
# instead, and this script says so.
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/install-deps.sh
# The daemon, and the VMM it starts for each partition (next to it: bulkhead-vmm).
swift build -c release --product bulkhead
swift build -c release --product bulkhead-vmm
images=/var/lib/bulkhead/images
mkdir -p "$images"
guest=$(bash Tests/Guest/build.sh "$(mktemp -d)")
install -m 0644 "$guest" "$images/bhtest.bin"
digest=$(sha256sum "$images/bhtest.bin" | cut -d' ' -f1)
config=configs/demo.json
if ! grep -q "\"sha256\": \"$digest\"" "$config"; then
  config=/var/lib/bulkhead/demo.json
  python3 - "$digest" >"$config" <<'PY'
import json, sys
document = json.load(open("configs/demo.json"))
for tenant in document["tenants"]:
    for partition in tenant.get("partitions", []):
        if "image" in partition:
            partition["image"]["sha256"] = sys.argv[1]
json.dump(document, sys.stdout, indent=2)
PY
  echo "demo.sh: this compiler built a test guest that measures $digest, not the digest in configs/demo.json;" \
       "running $config, a copy with this digest" >&2
fi
# The management API's socket belongs to group 64990 (host.controlSocketGroup): its members may
# connect, and each call is then authorised by the caller's uid (the demo's principals are uids
# 64991-64995; `useradd -u 64992 -G bulkhead-api blue-admin` makes one a login).
getent group 64990 >/dev/null || groupadd -g 64990 bulkhead-api
exec .build/release/bulkhead run --config "$config" "$@"
