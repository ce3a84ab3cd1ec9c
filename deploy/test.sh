#!/usr/bin/env bash
# Runs the whole test suite. As root (CI is), the integration and attack tests create TAP
# devices and network namespaces; elsewhere they are skipped with a message saying why.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then source deploy/install-deps.sh; fi
swift build --build-tests
swift test --skip-build "$@"
