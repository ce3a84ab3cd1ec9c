#!/usr/bin/env bash
# Builds Bulkhead (release) and runs the daemon on configs/demo.json in the foreground.
# Needs root (TAP devices, network namespaces). Stop it with Ctrl-C: it removes what it created.
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/install-deps.sh
swift build -c release --product bulkhead
exec .build/release/bulkhead run --config configs/demo.json "$@"
