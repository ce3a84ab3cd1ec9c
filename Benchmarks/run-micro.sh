#!/usr/bin/env bash
# Runs the package-benchmark suites (forwarding decisions per second, allocations per frame).
#   bash Benchmarks/run-micro.sh [--short]
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--short" ]]; then export SWITCH_BENCH_SHORT=1; fi
swift package --scratch-path .build-bench --disable-sandbox benchmark --filter "Forwarding.*"
