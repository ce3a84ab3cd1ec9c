#!/usr/bin/env bash
# Builds the initramfs of the guest-driver tests (Tests/IntegrationTests/GuestDriverTests.swift):
# a static busybox, the modules a Debian kernel needs to drive a virtio-blk PCI disk (with the
# modules they depend on, in load order), and Tests/Tools/guest-init.sh as /init.
#
# Usage: guest-initramfs.sh KERNEL_VERSION OUT.cpio.gz
#   KERNEL_VERSION  a directory under /lib/modules, e.g. 6.1.0-57-cloud-amd64
#   BUSYBOX=PATH    a static busybox to use instead of busybox-static's /bin/busybox
#   GUEST_MODULES   the modules to load instead of "virtio_pci virtio_blk"
#   GUEST_INIT=PATH the /init to use instead of guest-init.sh
set -euo pipefail

die() { echo "guest-initramfs: $*" >&2; exit 1; }
(($# == 2)) || die "usage: $0 KERNEL_VERSION OUT.cpio.gz"
kernel_version=$1
out=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
module_dir=/lib/modules/$kernel_version
[[ -r $module_dir/modules.dep ]] || die "no $module_dir/modules.dep (is linux-image-$kernel_version installed?)"

# A dynamically linked busybox (Debian's `busybox` package) would not run in an initramfs that
# has no libc: only busybox-static's will do.
if [[ -n ${BUSYBOX:-} ]]; then
  busybox=$BUSYBOX
else
  dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "install ok installed" \
    || die "busybox-static is not installed (deploy/install-deps.sh installs it)"
  busybox=/bin/busybox
fi
[[ -x $busybox ]] || die "$busybox is not an executable"

# The drivers the guest loads, roots only: their dependencies come from modules.dep.
read -r -a wanted <<<"${GUEST_MODULES:-virtio_pci virtio_blk}"

# modules.dep lines read "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko ...",
# listing every module the first one needs (directly or not).
module_path() {
  local line
  line=$(grep -E "(^|/)$1\.ko(\.(xz|zst|gz))?:" "$module_dir/modules.dep" | head -n 1) \
    || die "module $1 is not in $module_dir/modules.dep (built in? then drop it from the list)"
  echo "${line%%:*}"
}
order=()
declare -A seen=()
add_module() {  # dependencies first, each once
  local path=$1 dependency
  [[ -n ${seen[$path]:-} ]] && return
  seen[$path]=1
  for dependency in $(grep -E "^$path:" "$module_dir/modules.dep" | cut -d: -f2-); do
    add_module "$dependency"
  done
  order+=("$path")
}
for name in "${wanted[@]}"; do
  path=$(module_path "$name")
  add_module "$path"
done

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,dev,proc,sys,tmp,etc,lib/modules}
cp "$busybox" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
cp "${GUEST_INIT:-$here/guest-init.sh}" "$root/init"
chmod 755 "$root/init" "$root/bin/busybox"

# busybox insmod loads plain .ko files only: decompress where the kernel ships them compressed.
: >"$root/etc/modules"
for path in "${order[@]}"; do
  file=$(basename "$path")
  name=${file%%.ko*}
  case $file in
    *.ko) cp "$module_dir/$path" "$root/lib/modules/$name.ko" ;;
    *.ko.xz) xz -dc "$module_dir/$path" >"$root/lib/modules/$name.ko" ;;
    *.ko.zst) zstd -qdc "$module_dir/$path" >"$root/lib/modules/$name.ko" ;;
    *.ko.gz) gzip -dc "$module_dir/$path" >"$root/lib/modules/$name.ko" ;;
    *) die "unexpected module file $path" ;;
  esac
  echo "$name" >>"$root/etc/modules"
done

# busybox's own cpio writes the newc format the kernel unpacks; no cpio package needed.
mkdir -p "$(dirname "$out")"
(cd "$root" && find . -mindepth 1 | sort | "$root/bin/busybox" cpio -o -H newc 2>/dev/null) | gzip -6 >"$out.partial"
mv "$out.partial" "$out"
echo "guest-initramfs: $out with modules: $(tr '\n' ' ' <"$root/etc/modules")"
