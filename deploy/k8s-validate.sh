#!/usr/bin/env bash
# Validates deploy/kubernetes/ against the Kubernetes schemas of a fixed version, strictly (an
# unknown field is an error), with the `kubernetes-validate` package (PyPI), installed into a
# virtual environment under .build-tools/ on first use. Then renders every host configuration of
# the role ConfigMaps with the init container's own script (configmap-render.yaml) for a sample
# node, and checks each with `bulkhead validate`; configs/fleet-*.json (README, "Running a fleet")
# as well.
#
#   deploy/k8s-validate.sh [--kubernetes-version 1.30.0]
#
# Environment: BULKHEAD_BINARY (the bulkhead used for `validate`; default .build/debug/bulkhead,
# else .build/release/bulkhead, else built with `swift build --product bulkhead`).
# Exit status 0 only when every manifest and every configuration passed.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
K8S_VERSION=1.30.0
while (($#)); do
    case $1 in
        --kubernetes-version) K8S_VERSION=${2:?--kubernetes-version needs a version}; shift ;;
        *) echo "usage: $0 [--kubernetes-version X.Y.Z]" >&2; exit 2 ;;
    esac
    shift
done
MANIFESTS=$REPO/deploy/kubernetes
VENV=$REPO/.build-tools/k8s-validate
say() { printf '%s\n' "$*" >&2; }

if [ ! -x "$VENV/bin/kubernetes-validate" ]; then
    say "installing kubernetes-validate into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate
fi

say "=== Kubernetes $K8S_VERSION schemas, strict: $MANIFESTS"
status=0
"$VENV/bin/kubernetes-validate" --kubernetes-version "$K8S_VERSION" --strict "$MANIFESTS"/*.yaml || status=1

# --- the host configurations the init container would write ---------------------------------------
BIN=${BULKHEAD_BINARY:-}
if [ -z "$BIN" ]; then
    for candidate in "$REPO/.build/debug/bulkhead" "$REPO/.build/release/bulkhead"; do
        if [ -x "$candidate" ]; then BIN=$candidate; break; fi
    done
fi
if [ -z "$BIN" ]; then
    command -v swift >/dev/null || export PATH=/opt/swift/usr/bin:$PATH
    say "building bulkhead (swift build --product bulkhead) for its validate command"
    (cd "$REPO" && swift build --product bulkhead >&2)
    BIN=$REPO/.build/debug/bulkhead
fi

WORK=$(mktemp -d /tmp/bulkhead-k8s-validate.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
# Each ConfigMap's keys as files (what the pod's mount shows), and the Secret's endpoints.json.
"$VENV/bin/python" - "$MANIFESTS" "$WORK" <<'PY'
import os, sys, yaml
manifests, work = sys.argv[1], sys.argv[2]
for name in sorted(os.listdir(manifests)):
    if not name.endswith(".yaml"):
        continue
    with open(os.path.join(manifests, name)) as f:
        for doc in yaml.safe_load_all(f):
            if not doc:
                continue
            kind, meta = doc.get("kind"), doc.get("metadata", {})
            data = doc.get("data") or doc.get("stringData") or {}
            if kind in ("ConfigMap", "Secret"):
                directory = os.path.join(work, meta["name"])
                os.makedirs(directory, exist_ok=True)
                for key, value in data.items():
                    with open(os.path.join(directory, key), "w") as out:
                        out.write(value)
PY
RENDER=$WORK/bulkhead-render/render.sh
[ -f "$RENDER" ] || { say "no render.sh in a ConfigMap bulkhead-render"; exit 1; }
[ -f "$WORK/bulkhead-etcd/endpoints.json" ] || { say "no endpoints.json in the Secret bulkhead-etcd"; exit 1; }
roles=0
for role_dir in "$WORK"/bulkhead-*/; do
    role_dir=${role_dir%/}
    [ -f "$role_dir/host.json" ] || continue
    roles=$((roles + 1))
    for file in "$role_dir"/*.json; do
        key=$(basename "$file" .json)
        # The role's default is rendered for a node without a key of its own.
        node=$key; [ "$key" != host ] || node=node-without-own-key
        say "=== $(basename "$role_dir")/$key.json for node $node"
        if ! NODE_NAME=$node NODE_IP=10.99.0.1 ROLE_DIR=$role_dir ETCD_DIR=$WORK/bulkhead-etcd \
            OUT=$WORK/rendered-$(basename "$role_dir")-$key.json BULKHEAD=$BIN sh "$RENDER"; then
            say "FAILED: $(basename "$role_dir")/$key.json"
            status=1
        fi
    done
done
((roles > 0)) || { say "no role ConfigMap with a host.json key"; status=1; }
# The README's example fleet hosts (plain files, no placeholders).
for file in "$REPO"/configs/fleet-*.json; do
    [ -f "$file" ] || continue
    say "=== ${file#"$REPO"/}"
    "$BIN" validate --config "$file" || { say "FAILED: ${file#"$REPO"/}"; status=1; }
done
if ((status == 0)); then say "k8s-validate: all manifests and host configurations passed"; else say "k8s-validate: FAILED"; fi
exit "$status"
