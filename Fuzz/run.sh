#!/usr/bin/env bash
# Builds a libFuzzer target with ASan and runs it for a bounded time.
#
#   bash Fuzz/run.sh TARGET SECONDS     build, then fuzz TARGET for SECONDS; non-zero on a finding
#   bash Fuzz/run.sh --list             the targets
#
# The modules under test are compiled from Sources/ as separate Swift modules (one object file
# and .swiftmodule each, whole-module, instrumented for coverage and ASan) into .build-fuzz/, so
# no SwiftPM build is involved. Corpus: .build-fuzz/corpus-TARGET (seeded on first use);
# findings: .build-fuzz/artifacts-TARGET/.
set -euo pipefail
cd "$(dirname "$0")/.."

targets="switch vhostuser virtio blockdevice"
if [[ "${1:-}" == "--list" ]]; then echo "$targets"; exit 0; fi
target="${1:?usage: Fuzz/run.sh TARGET SECONDS | --list}"
seconds="${2:-30}"
[[ "$seconds" =~ ^[0-9]+$ ]] || { echo "SECONDS must be a whole number" >&2; exit 2; }

SWIFTC="${SWIFTC:-swiftc}"
command -v "$SWIFTC" >/dev/null || SWIFTC=/opt/swift/usr/bin/swiftc
SWIFTC="$(command -v "$SWIFTC")"
# The clang that ships with the Swift toolchain: its libFuzzer and ASan runtimes match swiftc's.
CLANG="${CLANG:-$(dirname "$SWIFTC")/clang}"
out=.build-fuzz
modules="$out/modules"
mkdir -p "$modules"
sanitize=(-sanitize=fuzzer,address -gline-tables-only -Onone -swift-version 6 -parse-as-library)

# Search paths for the C modules compiled so far (their generated module maps); every later
# swiftc call gets them, since importing HostOS means importing CLinux too.
cmodule_paths=()
# Extra link inputs and libraries (the C objects, -luring).
link_extra=()

# compile_module NAME DEPENDENCIES...: Sources/NAME/*.swift -> $modules/NAME.o + NAME.swiftmodule
compile_module() {
  local name="$1"
  echo "fuzz: compiling module $name" >&2
  "$SWIFTC" "${sanitize[@]}" -wmo -module-name "$name" -I "$modules" "${cmodule_paths[@]}" \
    -emit-module -emit-module-path "$modules/$name.swiftmodule" \
    -c -o "$modules/$name.o" Sources/"$name"/*.swift
}

# compile_files NAME FILES...: the given files as module NAME (for a module's pure part)
compile_files() {
  local name="$1"; shift
  echo "fuzz: compiling module $name from $*" >&2
  "$SWIFTC" "${sanitize[@]}" -wmo -module-name "$name" -I "$modules" "${cmodule_paths[@]}" \
    -emit-module -emit-module-path "$modules/$name.swiftmodule" \
    -c -o "$modules/$name.o" "$@"
}

# compile_c NAME: Sources/NAME/*.c -> $modules/NAME.c.o (ASan, coverage), plus the module map
# SwiftPM would synthesize for Sources/NAME/include/NAME.h, so Swift can `import NAME`.
compile_c() {
  local name="$1" map="$modules/cmodules/$1"
  echo "fuzz: compiling C module $name" >&2
  mkdir -p "$map"
  printf 'module %s {\n  header "%s"\n  export *\n}\n' "$name" "$PWD/Sources/$name/include/$name.h" > "$map/module.modulemap"
  "$CLANG" -fsanitize=fuzzer-no-link,address -g -O1 -I "Sources/$name/include" \
    -c -o "$modules/$name.c.o" Sources/"$name"/*.c
  cmodule_paths+=(-I "$map")
  link_extra+=("$modules/$name.c.o")
}

# compile_logging: swift-log's Logging module from SwiftPM's checkout (resolved when missing).
compile_logging() {
  local checkout=.build/checkouts/swift-log/Sources/Logging
  if [[ ! -d "$checkout" ]]; then
    echo "fuzz: resolving packages for swift-log" >&2
    "${SWIFTC%swiftc}swift" package resolve
  fi
  local files
  mapfile -t files < <(find "$checkout" -name '*.swift' | sort)
  compile_files Logging "${files[@]}"
}

case "$target" in
  switch)
    compile_module Virtio
    compile_module Config
    compile_module Metering
    compile_module Switch
    objects=("$modules/Virtio.o" "$modules/Config.o" "$modules/Metering.o" "$modules/Switch.o")
    main=Fuzz/SwitchFuzz/FuzzMain.swift
    ;;
  vhostuser)
    # The codec alone, as module VhostUser: no HostOS, no swift-log.
    compile_files VhostUser Sources/VhostUser/Message.swift Sources/VhostUser/VhostUserError.swift
    objects=("$modules/VhostUser.o")
    main=Fuzz/VhostUserFuzz/FuzzMain.swift
    ;;
  virtio)
    compile_module Virtio
    objects=("$modules/Virtio.o")
    main=Fuzz/VirtioFuzz/FuzzMain.swift
    ;;
  blockdevice)
    # The whole block backend: C shims, the syscall modules, swift-log and the device itself.
    compile_c CLinux
    compile_c CURing
    compile_module Virtio
    compile_module Config
    compile_module Metering
    compile_module HostOS
    compile_module URing
    compile_logging
    compile_module VhostUser
    compile_module Block
    objects=("$modules/Virtio.o" "$modules/Config.o" "$modules/Metering.o" "$modules/HostOS.o" "$modules/URing.o"
             "$modules/Logging.o" "$modules/VhostUser.o" "$modules/Block.o")
    link_extra+=(-luring)
    main=Fuzz/BlockDeviceFuzz/FuzzMain.swift
    ;;
  *) echo "unknown fuzz target '$target' (known: $targets)" >&2; exit 2 ;;
esac

binary="$out/$target-fuzzer"
echo "fuzz: linking $binary" >&2
# gold warns once per ASan helper symbol; the warnings are harmless, keep the log readable.
"$SWIFTC" "${sanitize[@]}" -module-name "${target^}Fuzz" -I "$modules" "${cmodule_paths[@]}" "$main" "${objects[@]}" \
  "${link_extra[@]}" -o "$binary" 2>&1 \
  | { grep -v "Cannot export local symbol" || true; }

corpus="$out/corpus-$target"
artifacts="$out/artifacts-$target"
mkdir -p "$corpus" "$artifacts"
if [[ "$target" == switch && -z "$(ls -A "$corpus")" ]]; then
  # Seeds: byte 0 = ingress port, 12-byte virtio-net header, then the frame.
  printf '\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00\x45\x00\x00\x20\x12\x34\x00\x00\x40\x11\x00\x00\x0a\x00\x00\x01\x0a\x00\x00\x02\x9c\x40\x00\x35\x00\x0c\x00\x00\x61\x62\x63\x64' > "$corpus/seed-udp"
  printf '\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00\x45\x00\x00\x28\x12\x34\x20\x00\x40\x06\x00\x00\x0a\x00\x00\x01\x0a\x00\x00\x02\x04\xd2\x00\x50\x00\x00\x00\x01\x00\x00\x00\x00\x50\x02\xff\xff\x00\x00\x00\x00' > "$corpus/seed-tcpfrag"
  printf '\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff\xff\xff\xff\xff\x02\x00\x00\x00\x00\x01\x08\x06\x00\x01\x08\x00\x06\x04\x00\x01\x02\x00\x00\x00\x00\x01\x0a\x00\x00\x01\x00\x00\x00\x00\x00\x00\x0a\x00\x00\x02' > "$corpus/seed-arp"
  printf '\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x86\xdd\x60\x00\x00\x00\x00\x20\x3a\xff\xfd\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\xfd\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x87\x00\x00\x00\x00\x00\x00\x00\xfd\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x01\x01\x02\x00\x00\x00\x00\x01' > "$corpus/seed-ns"
  printf '\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x86\xdd\x60\x00\x00\x00\x00\x28\x2c\xff\xfd\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\xfd\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x3a\x00\x00\x00\x00\x00\x00\x01\x87\x00\x00\x00\x00\x00\x00\x00\xfd\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x01\x01\x02\x00\x00\x00\x00\x01' > "$corpus/seed-v6frag"
  printf '\x80\x01\x01\x36\x00\xe8\x03\x22\x00\x10\x00\x00\x00\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00\x45\x00\x0b\xe0\x12\x34\x00\x00\x40\x06\x00\x00\x0a\x00\x00\x01\x0a\x00\x00\x02\x04\xd2\x00\x50\x00\x00\x00\x01\x00\x00\x00\x00\x50\x02\xff\xff\x00\x00\x00\x00' > "$corpus/seed-gso"; head -c 3000 /dev/zero >> "$corpus/seed-gso"
fi

if [[ "$target" == vhostuser && -z "$(ls -A "$corpus")" ]]; then
  # Seeds: byte 0 = descriptor count (| 0x10: decode as a reply), then header and payload.
  printf '\x00\x01\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00' > "$corpus/seed-get-features"
  printf '\x01\x05\x00\x00\x00\x09\x00\x00\x00\x28\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x40\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x7f\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00' > "$corpus/seed-mem-table"
  printf '\x00\x09\x00\x00\x00\x01\x00\x00\x00\x28\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x10\x00\x00\x00\x7f\x00\x00\x00\x30\x00\x00\x00\x7f\x00\x00\x00\x20\x00\x00\x00\x7f\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00' > "$corpus/seed-vring-addr"
  printf '\x01\x0c\x00\x00\x00\x01\x00\x00\x00\x08\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00' > "$corpus/seed-kick"
  printf '\x00\x18\x00\x00\x00\x01\x00\x00\x00\x14\x00\x00\x00\x00\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00' > "$corpus/seed-get-config"
  printf '\x10\x0b\x00\x00\x00\x05\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00\x00\x2a\x00\x00\x00' > "$corpus/seed-reply-vring-base"
fi

if [[ "$target" == virtio && -z "$(ls -A "$corpus")" ]]; then
  # Seeds: 16 bytes of queue choices (size 16, rings at 0x10000/0x11000/0x12000 in guest memory,
  # EVENT_IDX + indirect, capacity 64 Ki sectors), then the memory image: one 4 KiB read chain.
  python3 - "$corpus/seed-read" <<'PY'
import struct, sys
memory = bytearray(0x3000)
head = 0x2800
struct.pack_into("<QIHH", memory, 0x000, 0x10000 + head, 16, 1, 1)            # header
struct.pack_into("<QIHH", memory, 0x010, 0x10000 + head + 0x100, 4096, 3, 2)  # data, writable
struct.pack_into("<QIHH", memory, 0x020, 0x10000 + head + 0x80, 1, 2, 0)      # status
struct.pack_into("<QIHH", memory, 0x030, 0x10000 + head + 0x40, 48, 4, 0)     # indirect table
struct.pack_into("<QIHH", memory, head + 0x40, 0x10000 + head, 16, 1, 1)
struct.pack_into("<QIHH", memory, head + 0x50, 0x10000 + head + 0x100, 512, 3, 2)
struct.pack_into("<QIHH", memory, head + 0x60, 0x10000 + head + 0x80, 1, 2, 0)
struct.pack_into("<HHHH", memory, 0x1000, 0, 2, 0, 3)                             # avail: heads 0, 3
struct.pack_into("<IIQ", memory, head, 0, 0, 8)                                   # read sector 8
choices = bytes([4, 0x00, 0x00, 0x10, 0x00, 0x20, 0x00, 3, 0, 0, 1, 0, 4, 2, 1, 0x40])
open(sys.argv[1], "wb").write(choices + bytes(memory))
PY
fi

echo "fuzz: running $target for ${seconds}s" >&2
# libFuzzer exits non-zero on a crash, a sanitizer report, a leak or a timeout; set -e passes it on.
"$binary" "$corpus" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
  -artifact_prefix="$artifacts/"
echo "fuzz: $target: no findings in ${seconds}s" >&2
