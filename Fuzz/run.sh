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

targets="switch vhostuser virtio blockdevice vhostnet devices audit"
# The management API (request decoding, authorization, read answers).
targets+=" api"
# The VXLAN uplink's frame helpers: software TSO and checksums, ARP/ND answers, the VXLAN header.
targets+=" vxlan"
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
common=(-sanitize=fuzzer,address -gline-tables-only -swift-version 6 -parse-as-library)
# The modules under test: -Onone for the parsers' targets. The block device target drives a worker
# thread and io_uring per input, and at -Onone its descriptor walks take three times as long: its
# modules are built with -O, which keeps Swift's runtime checks (bounds, overflow, preconditions).
# So are the vhost-user-net device's: the same descriptor walks, and a per-byte checksum loop over
# frames of up to 64 KiB.
# The fuzz entry point itself is always -Onone, so its precondition messages are printed.
optimize=-Onone
[[ "$target" == blockdevice || "$target" == vhostnet ]] && optimize=-O

# Search paths for the C modules compiled so far (their generated module maps); every later
# swiftc call gets them, since importing HostOS means importing CLinux too.
cmodule_paths=()
# Extra link inputs and libraries (the C objects, -luring).
link_extra=()

# compile_module NAME DEPENDENCIES...: Sources/NAME/*.swift -> $modules/NAME.o + NAME.swiftmodule
compile_module() {
  local name="$1"
  echo "fuzz: compiling module $name" >&2
  "$SWIFTC" "${common[@]}" "$optimize" -wmo -module-name "$name" -I "$modules" "${cmodule_paths[@]}" \
    -emit-module -emit-module-path "$modules/$name.swiftmodule" \
    -c -o "$modules/$name.o" Sources/"$name"/*.swift
}

# compile_files NAME FILES...: the given files as module NAME (for a module's pure part)
compile_files() {
  local name="$1"; shift
  echo "fuzz: compiling module $name from $*" >&2
  "$SWIFTC" "${common[@]}" "$optimize" -wmo -module-name "$name" -I "$modules" "${cmodule_paths[@]}" \
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
  echo "fuzz: compiling module Logging (swift-log)" >&2
  # Not instrumented for coverage: its edges would only be noise. `package` members need a package name.
  "$SWIFTC" -sanitize=address -gline-tables-only "$optimize" -swift-version 6 -parse-as-library -package-name swift_log \
    -wmo -module-name Logging -emit-module -emit-module-path "$modules/Logging.swiftmodule" \
    -c -o "$modules/Logging.o" "${files[@]}"
}

case "$target" in
  switch|vxlan)
    # The forwarding plane; vxlan: the uplink's pure helpers (segmentation, ARP/ND answers, header).
    compile_module Virtio
    compile_module Config
    compile_module Metering
    compile_module FleetModel
    compile_module Switch
    objects=("$modules/Virtio.o" "$modules/Config.o" "$modules/Metering.o" "$modules/FleetModel.o" "$modules/Switch.o")
    main=Fuzz/SwitchFuzz/FuzzMain.swift
    [[ "$target" == vxlan ]] && main=Fuzz/VXLANFuzz/FuzzMain.swift
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
    # Config only describes the volumes here; at -O it takes twice as long to compile.
    optimize=-Onone compile_module Config
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
  vhostnet)
    # The virtio-net device with what it imports: the C shims, HostOS, swift-log and VhostUser.
    compile_c CLinux
    compile_module Virtio
    compile_module Metering
    compile_module HostOS
    compile_logging
    compile_module VhostUser
    compile_module VhostNet
    objects=("$modules/Virtio.o" "$modules/Metering.o" "$modules/HostOS.o" "$modules/Logging.o" "$modules/VhostUser.o"
             "$modules/VhostNet.o")
    main=Fuzz/VhostNetFuzz/FuzzMain.swift
    ;;
  devices)
    # The VMM's device models: PCI bus, virtio-pci transport, MSI-X (pure Swift).
    compile_module Virtio
    compile_module Devices
    objects=("$modules/Virtio.o" "$modules/Devices.o")
    main=Fuzz/DevicesFuzz/FuzzMain.swift
    ;;
  audit)
    # The audit record codec and verifier alone (no HostOS: AuditLog is not compiled), with
    # libcrypto's SHA-256 through CDigest.
    compile_c CDigest
    compile_files Audit Sources/Audit/AuditRecord.swift Sources/Audit/AuditVerifier.swift
    objects=("$modules/Audit.o")
    link_extra+=(-lcrypto)
    main=Fuzz/AuditFuzz/FuzzMain.swift
    ;;
  api)
    # The management API's pure part: decoding, authorization, answers (ManagementModel).
    compile_module Virtio
    compile_module Config
    compile_module Metering
    compile_module FleetModel
    compile_module Switch
    compile_module ManagementModel
    objects=("$modules/Virtio.o" "$modules/Config.o" "$modules/Metering.o" "$modules/FleetModel.o" "$modules/Switch.o"
             "$modules/ManagementModel.o")
    main=Fuzz/APIFuzz/FuzzMain.swift
    ;;
  *) echo "unknown fuzz target '$target' (known: $targets)" >&2; exit 2 ;;
esac

binary="$out/$target-fuzzer"
echo "fuzz: linking $binary" >&2
# gold warns once per ASan helper symbol; the warnings are harmless, keep the log readable.
"$SWIFTC" "${common[@]}" -Onone -module-name "${target^}Fuzz" -I "$modules" "${cmodule_paths[@]}" "$main" "${objects[@]}" \
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
  # Offloads as Linux sends them (TSO6, USO4, a partial UDP checksum), for the offload checks to
  # mutate from: port 1 (blue/b, 10.0.0.2 / fd00::2: no rate limit to run dry) to blue/a.
  python3 - "$corpus" <<'PY'
import struct, sys
def header(flags, gso, hdr_len, size, start, offset):
    return bytes([1]) + struct.pack("<BBHHHHH", flags, gso, hdr_len, size, start, offset, 0)
ether = lambda kind: bytes.fromhex("020000000001" "020000000002") + struct.pack("!H", kind)
def ipv4(proto, payload):
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0x1234, 0, 64, proto, 0,
                       bytes([10, 0, 0, 2]), bytes([10, 0, 0, 1])) + payload
def ipv6(nh, payload):
    return struct.pack("!IHBB", 0x60000000, len(payload), nh, 64) + bytes.fromhex("fd00" + "00" * 13 + "02") \
        + bytes.fromhex("fd00" + "00" * 13 + "01") + payload
tcp = lambda data: struct.pack("!HHIIBBHHH", 40000, 80, 1, 0, 0x50, 0x18, 65535, 0, 0) + data
udp = lambda data: struct.pack("!HHHH", 40000, 443, 8 + len(data), 0) + data
seeds = {
    "tso6": header(1, 4, 74, 1428, 54, 16) + ether(0x86DD) + ipv6(6, tcp(bytes(200))),
    "uso4": header(1, 5, 42, 1400, 34, 6) + ether(0x0800) + ipv4(17, udp(bytes(1600))),
    "csum-udp": header(1, 0, 0, 0, 34, 6) + ether(0x0800) + ipv4(17, udp(bytes(64))),
}
for name, data in seeds.items():
    open(f"{sys.argv[1]}/seed-{name}", "wb").write(data)
PY
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

if [[ "$target" == blockdevice && -z "$(ls -A "$corpus")" ]]; then
  # Seeds: a 4-byte header (volume and eventfd choices, queue size and features, start index),
  # then steps (Fuzz/BlockDeviceFuzz/FuzzMain.swift). Data slot N is guest address
  # 0x104000 + 16 N: header at slot 0, status at slot 1, ranges at slot 2, data at slot 32
  # (sector-aligned, so O_DIRECT takes it).
  python3 - "$corpus" <<'PY'
import struct, sys
DESC, HEADER, RANGE, APPEND, PUBLISH, KICK, WAIT, RESTART, POKE, FLAGS, INDIRECT, FILL = range(12)
NEXT, WRITE, INDIRECT_FLAG = 1, 2, 4
def desc(index, flags, slot, length, nxt):       # a descriptor pointing at a data slot
    return bytes([DESC, index, flags]) + struct.pack("<HHB", slot, length, nxt)
def entry(flags, slot, length, nxt):              # the same, inside an indirect table
    return bytes([flags]) + struct.pack("<HHB", slot, length, nxt)
def header(type_selector, sector):
    return bytes([HEADER]) + struct.pack("<HBBH", 0, type_selector, 1, sector)
def submit(*heads):
    return bytes([APPEND, len(heads) - 1, *heads, PUBLISH, 0, KICK, 0, WAIT, 7])
SECTORS = lambda n: 0x8000 | n                    # a length of n sectors
def chain(type_selector, sector, data=None, writable=False, head=0):
    out = header(type_selector, sector) + desc(head, NEXT, 0, 16, head + 1)
    if data is not None:
        out += desc(head + 1, NEXT | (WRITE if writable else 0), 32, data, head + 2)
        return out + desc(head + 2, WRITE, 1, 1, 0)
    return out + desc(head + 1, WRITE, 1, 1, 0)
seeds = {
    # rw volume, queue of 16, EVENT_IDX and INDIRECT_DESC, start index 0.
    "read": b"\x00\x34\x00\x00" + chain(0, 8, SECTORS(8), writable=True) + submit(0),
    "write": b"\x00\x34\x00\x00" + bytes([FILL]) + struct.pack("<HBH", 32, 0xAB, 4096)
             + chain(1, 16, SECTORS(8)) + submit(0),
    "flush": b"\x00\x14\x00\x00" + chain(2, 0) + submit(0),
    "discard": b"\x00\x34\x00\x00" + header(4, 0) + desc(0, NEXT, 0, 16, 1) + desc(1, NEXT, 2, 16, 2)
               + desc(2, WRITE, 1, 1, 0) + bytes([RANGE]) + struct.pack("<HBHBHB", 2, 1, 64, 1, 16, 0) + submit(0),
    "get-id": b"\x00\x05\x00\x00" + chain(3, 0, 20, writable=True) + submit(0),
    # Indirect: descriptor 0 points at a 3-entry table at slot 64.
    "indirect-read": b"\x00\x34\xfe\xff" + bytes([INDIRECT]) + struct.pack("<HB", 64, 2)
                     + entry(NEXT, 0, 16, 1) + entry(NEXT | WRITE, 32, SECTORS(1), 2) + entry(WRITE, 1, 1, 0)
                     + header(0, 3) + desc(0, INDIRECT_FLAG, 64, 48, 0) + submit(0),
    # Two requests, a stop and resume with one still unpublished, then the second.
    "restart": b"\x00\x03\x10\x00" + chain(1, 24, SECTORS(1)) + submit(0) + bytes([RESTART, 0])
               + bytes([APPEND, 0, 0, RESTART, 0, PUBLISH, 0, KICK, 0, WAIT, 7]),
    # A write still in flight when the device is reset (header bit 0x40: end with reset()).
    "reset-in-flight": b"\x40\x04\x00\x00" + chain(1, 40, SECTORS(16)) + bytes([APPEND, 0, 0, PUBLISH, 0, KICK, 0]),
    # QoS volume: eight reads of the same chain at once.
    "qos-burst": b"\x06\x38\x00\x00" + chain(0, 0, SECTORS(64), writable=True) + submit(0, 0, 0, 0, 0, 0, 0, 0),
    # Read-only volume: a write is refused.
    "readonly-write": b"\x05\x04\x00\x00" + chain(1, 0, SECTORS(1)) + submit(0),
}
for name, data in seeds.items():
    open(f"{sys.argv[1]}/seed-{name}", "wb").write(data)
PY
fi

if [[ "$target" == vhostnet && -z "$(ls -A "$corpus")" ]]; then
  # Seeds: a 7-byte header (features, queue sizes, start indices), then steps
  # (Fuzz/VhostNetFuzz/FuzzMain.swift). Data slot N is guest address 0x104000 + 16 N.
  python3 - "$corpus" <<'PY'
import struct, sys
DESC, INDIRECT, APPEND, PUBLISH, POKE, FILL, EVENT, TRANSMIT, DELIVER, FLUSH, KICK, RESTART = range(12)
V1, MRG, EVT, IND, CSUM, GCSUM, HTSO4, HTSO6, GTSO4, GTSO6 = (1 << i for i in range(10))
NEXT, WRITE, INDIRECT_FLAG = 1, 2, 4
RX, TX = 0, 1
def head(features, rx_size=16, tx_size=16, rx_start=0, tx_start=0):
    exp = lambda n: n.bit_length() - 1
    return struct.pack("<HBHH", features, exp(rx_size) | exp(tx_size) << 4, rx_start, tx_start)
def entry(flags, slot, length, nxt=0):             # a descriptor pointing at a data slot
    code = length if length < 0x8000 else 0x8000 | length // 64
    return bytes([flags]) + struct.pack("<HHB", slot, code, nxt)
def desc(q, index, flags, slot, length, nxt=0):
    return bytes([DESC, q, index]) + entry(flags, slot, length, nxt)
def table(slot, *entries):
    return bytes([INDIRECT]) + struct.pack("<HB", slot, len(entries) - 1) + b"".join(entries)
def post(q, *heads):
    return bytes([APPEND, q, len(heads) - 1, *heads, PUBLISH, q, 0])
def poke(slot, data):
    offset = 0x4000 + 16 * slot
    return bytes([POKE]) + struct.pack("<HB", offset & 0xFFFF, offset >> 16) + bytes([len(data) - 1]) + data
def fill(slot, value, length):
    return bytes([FILL]) + struct.pack("<HBH", slot, value, length)
def vnet(flags=0, gso=0, hdr_len=0, gso_size=0, start=0, offset=0):
    return struct.pack("<BBHHHHH", flags, gso, hdr_len, gso_size, start, offset, 0)
def deliver(header, length, prefix=b"", copies=1, seed=0x33):
    gso = [0, 1, 4, 3, 5, 0x81, 0x84, 0x80].index(header[1])
    return bytes([DELIVER, copies - 1, header[0], gso]) + header[2:] + struct.pack("<HBB", length, seed, len(prefix)) + prefix
ether = bytes.fromhex("020000000001" "020000000002" "0800")
udp_headers = ether + bytes.fromhex("4500002e12340000401100000a0000010a000002" "9c400035001a0000")
transmit = bytes([KICK, 1, 5, TRANSMIT, FLUSH])
seeds = {
    # A frame in two descriptors (header, then 60 bytes).
    "tx-split": head(V1 | EVT | IND | CSUM | HTSO4 | HTSO6) + desc(TX, 0, NEXT, 0, 12, 1) + desc(TX, 1, 0, 16, 60)
                + fill(16, 2, 60) + post(TX, 0) + transmit,
    # A TSO4 frame with a partial checksum, through an indirect table.
    "tx-indirect-tso": head(V1 | EVT | IND | CSUM | HTSO4) + table(512, entry(NEXT, 0, 12, 1), entry(0, 16, 1514))
                       + desc(TX, 0, INDIRECT_FLAG, 512, 32) + poke(0, vnet(1, 1, 54, 1448, 34, 16)) + fill(16, 2, 1514)
                       + post(TX, 0) + transmit,
    # Legacy 10-byte header, taken and stopped before the worker flushed.
    "tx-legacy-stop": head(EVT) + desc(TX, 3, 0, 0, 74) + post(TX, 3) + bytes([TRANSMIT, RESTART, 1, 0]),
    # One receive buffer, one frame.
    "rx-one": head(V1 | EVT | IND | GCSUM | GTSO4 | GTSO6) + desc(RX, 0, WRITE, 128, 2048) + post(RX, 0)
              + deliver(vnet(), 60, ether) + bytes([FLUSH]),
    # Mergeable buffers: a 1500-byte frame over four 512-byte buffers.
    "rx-mergeable": head(V1 | MRG | EVT | GCSUM) + desc(RX, 0, WRITE, 128, 512) + desc(RX, 1, WRITE, 160, 512)
                    + desc(RX, 2, WRITE, 192, 512) + desc(RX, 3, WRITE, 224, 512) + post(RX, 0, 1, 2, 3)
                    + deliver(vnet(), 1500, ether) + bytes([FLUSH]),
    # A partial UDP checksum the guest cannot complete (no GUEST_CSUM): the device does.
    "rx-csum-complete": head(V1) + desc(RX, 0, WRITE, 128, 2048) + post(RX, 0)
                        + deliver(vnet(1, 0, 0, 0, 34, 6), 60, udp_headers) + bytes([FLUSH]),
    # Kicks that bring nothing, until the kick descriptor is paused.
    "kick-pause": head(V1 | EVT) + bytes([KICK, 1, 7]) * 70,
}
for name, data in seeds.items():
    open(f"{sys.argv[1]}/seed-{name}", "wb").write(data)
PY
fi

if [[ "$target" == devices && -z "$(ls -A "$corpus")" ]]; then
  # Seeds: byte 0 = the backend's and platform's answers, then operations (device, opcode,
  # operands; Fuzz/DevicesFuzz/FuzzMain.swift): a driver's start of queue 0 with MSI-X on.
  python3 - "$corpus" <<'PY'
import struct, sys
NEGOTIATE, QUEUE, STATUS, MSIX, DOORBELL = 6, 7, 8, 10, 11
start = bytes([0, NEGOTIATE, 0]) + bytes([0, QUEUE, 0, 4, 0]) + struct.pack("<QQQ", 0x100000, 0x101000, 0x102000) \
    + bytes([0, STATUS, 0xF, 0, DOORBELL, 0, 1, 0])
seeds = {
    "start": bytes([0]) + start,
    "start-msix": bytes([0]) + bytes([0, MSIX, 0x80]) + start + bytes([1, NEGOTIATE, 0, 1, STATUS, 0xF]),
    "refused": bytes([1]) + start,
    "probe": bytes([0]) + bytes([0, 0]) + struct.pack("<I", 0x80000810) + bytes([0, 1, 4, 2, 0]),
}
for name, data in seeds.items():
    open(f"{sys.argv[1]}/seed-{name}", "wb").write(data)
PY
fi

if [[ "$target" == audit && -z "$(ls -A "$corpus")" ]]; then
  # Seeds: byte 0 = flags (bit 0 no head, bit 1 rehash lines, bit 2 chain them), bytes 1-2 = the
  # head's length, then the log, then the head (Fuzz/AuditFuzz/FuzzMain.swift): a log of five
  # records as AuditLog writes it, and tampered copies of it.
  python3 - "$corpus" <<'PY'
import hashlib, struct, sys
def record(seq, prev, principal="alice", uid="1000", action="partition.start", target="blue/guest",
           outcome="allowed", reason="null", detail='{"image":"sha256"}'):
    body = (f'{{"seq":{seq},"time":"2025-01-0{seq % 9 + 1}T12:00:00.{seq:03d}Z","principal":"{principal}","uid":{uid},'
            f'"action":"{action}","target":"{target}","outcome":"{outcome}","reason":{reason},"detail":{detail},'
            f'"prev":"{prev}"').encode()
    digest = hashlib.sha256(body).hexdigest()
    return body + f',"hash":"{digest}"}}\n'.encode(), digest
lines, prev = [], "0" * 64
kinds = [dict(), dict(principal="bulkhead", uid="null", action="launch.measured", target=""),
         dict(outcome="denied", reason='"role auditor is read-only"'), dict(outcome="failed", reason='"exit status 1"', detail="{}"),
         dict(principal="unknown", uid="4242", action="api.status", target="", detail='{"a":"x\\ty","b":""}')]
for seq in range(1, 6):
    line, prev = record(seq, prev, **kinds[seq - 1])
    lines.append(line)
head = f'{{"seq":5,"hash":"{prev}"}}\n'.encode()
def seed(name, log, head=head, flags=0):
    open(f"{sys.argv[1]}/seed-{name}", "wb").write(bytes([flags]) + struct.pack("<H", len(head)) + log + head)
seed("intact", b"".join(lines))
seed("removed", b"".join(lines[:2] + lines[3:]))
seed("swapped", b"".join(lines[:1] + [lines[2], lines[1]] + lines[3:]))
seed("cut", b"".join(lines[:3]))
seed("torn", b"".join(lines) + lines[0][:30])
seed("no-head", b"".join(lines), b"", flags=1)
seed("rehash", b"".join(lines[:2] + [lines[2].replace(b"denied", b"failed")] + lines[3:]), flags=2)
seed("rechain", b"".join(lines[:2] + lines[3:]), flags=6)
seed("anchored", b"".join(lines), flags=8)
PY
fi
if [[ "$target" == api && -z "$(ls -A "$corpus")" ]]; then
  # Seeds: byte 0 = caller (bits 0-2), method (bits 3-5), query follows (bit 6); path, newline,
  # query, newline, body (Fuzz/APIFuzz/FuzzMain.swift).
  printf '\x02/v1/tenants/blue/ports/a\n' > "$corpus/seed-show-port"
  printf '\x03/v1/tenants/red\n' > "$corpus/seed-other-tenant"
  printf '\x4a/v1/counters\ntenant=blue\n' > "$corpus/seed-counters"
  printf '\x0a/v1/tenants/blue/partitions/guest/stop\n' > "$corpus/seed-stop"
  printf '\x10/v1/configuration\n{"host": {"stateDirectory": "/x"}, "tenants": [{"id": "blue"}]}' > "$corpus/seed-apply"
  printf '\x50/v1/configuration\ndryRun=true\n{"host": {}}' > "$corpus/seed-dry-run"
  printf '\x44/v1/audit\nafter=3&limit=10\n' > "$corpus/seed-audit"
fi

if [[ "$target" == vxlan && -z "$(ls -A "$corpus")" ]]; then
  # Seeds: byte 0 = buffer sizes (bit 7: small output; bits 0-6: reply buffer), 12-byte
  # virtio-net header, headroom byte, then the frame (Fuzz/VXLANFuzz/FuzzMain.swift): TSO over
  # IPv4 and IPv6, a partial UDP checksum, an ARP request and a neighbour solicitation for
  # addresses the harness's map knows (odd last byte), a plain frame.
  python3 - "$corpus" <<'PY'
import struct, sys
def header(flags=0, gso=0, hdr_len=0, size=0, start=0, offset=0):
    return struct.pack("<BBHHHHH", flags, gso, hdr_len, size, start, offset, 0)
ether = lambda kind, dst="020000000002": bytes.fromhex(dst + "020000000001") + struct.pack("!H", kind)
v4a, v4b = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 3])
v6a, v6b = bytes.fromhex("fd00" + "00" * 13 + "01"), bytes.fromhex("fd00" + "00" * 13 + "03")
def ipv4(proto, payload):
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0x1234, 0x4000, 64, proto, 0, v4a, v4b) + payload
def ipv6(nh, payload, hop=64, dst=v6b):
    return struct.pack("!IHBB", 0x60000000, len(payload), nh, hop) + v6a + dst + payload
tcp = lambda data: struct.pack("!HHIIBBHHH", 40000, 5201, 0xFFFFF000, 1, 0x50, 0x19, 501, 0, 0) + data
udp = lambda data: struct.pack("!HHHH", 40000, 4789, 8 + len(data), 0) + data
payload = bytes(i * 7 & 0xFF for i in range(3000))
arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, bytes.fromhex("020000000001"), v4a, bytes(6), v4b)
solicited = bytes.fromhex("ff02" + "00" * 9 + "01ff000003")
ns = bytes([135, 0, 0, 0, 0, 0, 0, 0]) + v6b + bytes([1, 1]) + bytes.fromhex("020000000001")
seeds = {
    "tso4": bytes([0x00]) + header(1, 1, 54, 1000, 34, 16) + bytes([8]) + ether(0x0800) + ipv4(6, tcp(payload)),
    "tso6-ecn": bytes([0x00]) + header(1, 0x84, 74, 1200, 54, 16) + bytes([8]) + ether(0x86DD) + ipv6(6, tcp(payload)),
    "tso4-small-output": bytes([0x80]) + header(1, 1, 54, 100, 34, 16) + bytes([8]) + ether(0x0800) + ipv4(6, tcp(payload[:900])),
    "csum-udp4": bytes([0x00]) + header(1, 0, 0, 0, 34, 6) + bytes([8]) + ether(0x0800) + ipv4(17, udp(payload[:200])),
    "arp": bytes([0x40]) + header() + bytes([8]) + ether(0x0806, "ffffffffffff") + arp,
    "ns": bytes([0x60]) + header() + bytes([8]) + ether(0x86DD, "3333ff000003") + ipv6(58, ns, 255, solicited),
    "vxlan-header": bytes([0x08, 0, 0, 0, 0, 0, 0x2A, 0]) + bytes(20),
}
for name, data in seeds.items():
    open(f"{sys.argv[1]}/seed-{name}", "wb").write(data)
PY
fi

if [[ "$target" == blockdevice ]]; then
  # The volumes live under .build-fuzz (a disk file system, so O_DIRECT is used), one temporary
  # directory per fuzzer process; what a crashed run left behind goes now.
  export BLOCKDEVICE_FUZZ_STATE="$PWD/$out/blockdevice-state"
  rm -rf "$BLOCKDEVICE_FUZZ_STATE"
fi

echo "fuzz: running $target for ${seconds}s" >&2
# A trap is reported by libFuzzer's own handler; Swift's backtracer, which would run first, can
# take minutes to symbolicate an instrumented binary.
export SWIFT_BACKTRACE="${SWIFT_BACKTRACE:-enable=no}"
# libFuzzer exits non-zero on a crash, a sanitizer report, a leak or a timeout; set -e passes it on.
"$binary" "$corpus" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
  -artifact_prefix="$artifacts/"
echo "fuzz: $target: no findings in ${seconds}s" >&2
