#!/usr/bin/env bash
# Compares two builds of the decision harness, alternating them so that a change of load on a
# shared machine hits both alike. Per-thread CPU time, best of ROUNDS rounds of MILLIONS decisions.
#   bash Benchmarks/DecisionHarness/compare.sh BEFORE_BINARY AFTER_BINARY [pairs] [millions] [rounds] [both|unicast|arp]
set -euo pipefail
before=$1 after=$2 pairs=${3:-3} millions=${4:-10} rounds=${5:-3} only=${6:-both}
for _ in $(seq "$pairs"); do
    "$before" "$millions" "$rounds" before "$only"
    "$after" "$millions" "$rounds" after "$only"
done
