#!/usr/bin/env bash
# Runs the package-benchmark suites: forwarding decisions per second and allocations per frame
# (SwitchBenchmarks), descriptor walk + virtio-blk request parsing per request (BlockBenchmarks).
#   bash Benchmarks/run-micro.sh [--short]
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--short" ]]; then export SWITCH_BENCH_SHORT=1 BLOCK_BENCH_SHORT=1; fi
# Name the suites: the plugin would also try to run BlockLoad (a load generator, not a suite).
swift package --scratch-path .build-bench --disable-sandbox benchmark --target SwitchBenchmarks --target BlockBenchmarks
