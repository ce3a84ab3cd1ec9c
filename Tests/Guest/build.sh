#!/bin/sh
# Builds the test guest: Tests/Guest/build.sh OUTDIR writes OUTDIR/bhtest.bin (a flat image for
# 1 MiB that also carries a multiboot header, so QEMU's -kernel boots it) and prints its path.
# Needs only the system gcc and binutils; the output depends on nothing but the sources.
set -eu
if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
out=$1
mkdir -p "$out"
out=$(cd "$out" && pwd)
objects="$out/objects"
mkdir -p "$objects"

CC=${CC:-gcc}
OBJCOPY=${OBJCOPY:-objcopy}
# Freestanding, static, no PIC, no SSE (the guest never touches the FPU), no red zone, and no
# builtins turned into calls it does not have. -ffile-prefix-map keeps the build directory out.
cflags="-std=gnu11 -O2 -g0 -ffreestanding -fno-builtin -nostdlib -static -fno-pic -fno-pie -mno-red-zone
 -mgeneral-regs-only -mcmodel=small -fno-stack-protector -fno-asynchronous-unwind-tables -fno-unwind-tables
 -fno-tree-loop-distribute-patterns -fcf-protection=none -ffile-prefix-map=$here=.
 -Wall -Wextra -Werror -Wconversion -Wno-sign-conversion -Wshadow -Wstrict-prototypes -Wmissing-prototypes"

for source in boot.S lib.c pci.c virtio.c blk.c net.c hostile.c guest.c; do
    # shellcheck disable=SC2086
    $CC $cflags -c "$here/$source" -o "$objects/${source%.*}.o"
done
# shellcheck disable=SC2086
$CC $cflags -no-pie -Wl,--build-id=none -Wl,-n -Wl,--no-warn-rwx-segments -Wl,-z,noexecstack -Wl,-T,"$here/link.ld" -o "$out/bhtest.elf" \
    "$objects/boot.o" "$objects/lib.o" "$objects/pci.o" "$objects/virtio.o" "$objects/blk.o" \
    "$objects/net.o" "$objects/hostile.o" "$objects/guest.o"
$OBJCOPY -O binary "$out/bhtest.elf" "$out/bhtest.bin"
echo "$out/bhtest.bin"
