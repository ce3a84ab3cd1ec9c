#!/usr/bin/env bash
# Builds the decision harness against the Switch sources of a checkout, one module per target
# as SwiftPM's release build does (swiftc -O -wmo each).
#   bash Benchmarks/DecisionHarness/build.sh [checkout] [output directory]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src="$(cd "${1:-$here/../..}" && pwd)"
out="${2:-$src/.build-harness}"
mkdir -p "$out"
export PATH=/opt/swift/usr/bin:$PATH
flags=(-O -wmo -swift-version 6 -parse-as-library -I "$out")
# A module whose sources (and the modules before it) did not change is not rebuilt.
stamp=""
module() {
    local name=$1
    stamp+="$(cat "$src/Sources/$name"/*.swift | sha1sum | cut -c1-40)"
    if [[ -f "$out/$name.o" && "$(cat "$out/$name.stamp" 2>/dev/null)" == "$stamp" ]]; then return; fi
    swiftc "${flags[@]}" -module-name "$name" -emit-module -emit-module-path "$out/$name.swiftmodule" \
        -c -o "$out/$name.o" "$src/Sources/$name"/*.swift
    echo "$stamp" > "$out/$name.stamp"
}
module Config
module Virtio
module Metering
module Switch
swiftc -O -wmo -swift-version 6 -I "$out" -module-name DecisionHarness -o "$out/decision-harness" \
    "$here/main.swift" "$out"/{Config,Virtio,Metering,Switch}.o
echo "$out/decision-harness"
