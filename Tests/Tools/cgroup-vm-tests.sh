#!/usr/bin/env bash
# Runs HostOSTests.CGroupTests inside a QEMU guest (TCG) whose kernel has a pure cgroup v2
# hierarchy with the memory, cpu and pids controllers: where this project's machines (hybrid
# hosts: those controllers are held by cgroup v1) make the limit tests skip.
#
# The guest runs the already built test bundle three times, once per layout the daemon meets:
#   root     the test process in the hierarchy's root with the kernel threads (the shared-group
#            fallback: <own>/bulkhead/{daemon,...}, controllers enabled in the root)
#   service  alone in a group of its own with the controllers delegated (systemd's Delegate=yes:
#            <own>/{daemon,...})
#   shared   in a non-root group with another process (prepare must refuse, naming it)
#
# Usage: cgroup-vm-tests.sh [KERNEL_VERSION]   (after `swift build --build-tests`)
#   KERNEL_VERSION  /boot/vmlinuz-KERNEL_VERSION, default: the newest /boot/vmlinuz-*
#   VM_TIMEOUT=S    seconds the guest may take (default 600; about 20 s here)
#   KEEP=1          keep the work directory (initramfs, console log)
# Needs qemu-system-x86, busybox-static, a C compiler and a Linux image (linux-image-cloud-amd64).
# Prints the guest's test output; exits 0 when every run printed its "BH-RUN ... passed" line.
set -euo pipefail

die() { echo "cgroup-vm-tests: $*" >&2; exit 1; }
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
bundle=$repo/.build/debug/BulkheadPackageTests.xctest
[[ -x $bundle ]] || die "no $bundle: run swift build --build-tests first"
kernel_version=${1:-$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1 | sed 's|/boot/vmlinuz-||')}
kernel=/boot/vmlinuz-$kernel_version
[[ -r $kernel ]] || die "no kernel $kernel (apt-get install linux-image-cloud-amd64)"
[[ -x /bin/busybox ]] || die "needs busybox-static's /bin/busybox"
command -v qemu-system-x86_64 >/dev/null || die "needs qemu-system-x86"

work=$(mktemp -d)
trap '[[ -n ${KEEP:-} ]] && echo "kept $work" || rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,tmp,etc,usr/bin}
cp /bin/busybox "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
ln -s ../../bin/busybox "$root/usr/bin/env"

# The bundle at a fixed path (the guest mounts a tmpfs on /tmp, where a checkout may live), with
# every library it loads (and the loader).
guest_bundle=/opt/bulkhead-tests/BulkheadPackageTests.xctest
mkdir -p "$root$(dirname "$guest_bundle")"
cp "$bundle" "$root$guest_bundle"
for library in $(ldd "$bundle" | awk '/=> \// { print $3 } /^\t\/lib/ { print $1 }'); do
  mkdir -p "$root$(dirname "$library")"
  cp -L "$library" "$root$library"
done
mkdir -p "$root/lib64"
cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"

# The guest has no compiler: the tests take the probe built here ($BULKHEAD_CGROUP_PROBE).
cc -O1 -o "$root/bin/cgroup-probe" "$here/cgroup-probe.c"

cat >"$root/init" <<EOF
#!/bin/sh
export PATH=/bin:/usr/bin BULKHEAD_CGROUP_PROBE=/bin/cgroup-probe
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
exec </dev/console >/dev/console 2>&1
echo 4 >/proc/sys/kernel/printk
echo "BH-KERNEL \$(uname -r) controllers: \$(cat /sys/fs/cgroup/cgroup.controllers)"
# A run that hangs shows where: every process's state, wait channel and cgroup after 120 s.
(
  sleep 120
  for dir in /proc/[0-9]*; do
    [ -r \$dir/cmdline ] && [ -n "\$(tr -d '\\0' <\$dir/cmdline 2>/dev/null)" ] || continue
    for task in \$dir/task/*; do
      echo "BH-HUNG \${dir#/proc/}/\${task##*/} \$(tr '\\0' ' ' <\$dir/cmdline | cut -c1-60) \$(grep State: \$task/status) wchan=\$(cat \$task/wchan) \$(grep ^0:: \$dir/cgroup)"
    done
  done
) &
run() {  # NAME: the bundle's CGroupTests, then a marker line with its outcome
  { $guest_bundle HostOSTests.CGroupTests; echo \$? >/tmp/rc; } 2>&1 | tee /tmp/out
  [ "\$(cat /tmp/rc)" = 0 ] && result=passed || result=failed
  echo "BH-RUN \$1 \$result"
}
run root
echo "BH-LEFT root: \$(ls /sys/fs/cgroup | grep -v '^cgroup\.\|^cpu\|^io\.\|^memory\.\|^misc\|^pids\|^irq\|^hugetlb\|^rdma\|^cpuset' | tr '\n' ' ') subtree_control: \$(cat /sys/fs/cgroup/cgroup.subtree_control)"
echo "+memory +cpu +pids" >/sys/fs/cgroup/cgroup.subtree_control
mkdir /sys/fs/cgroup/service
# A process of its own in the group, then exec: the bundle alone in "service".
{ sh -c 'echo \$\$ >/sys/fs/cgroup/service/cgroup.procs; exec $guest_bundle HostOSTests.CGroupTests'; echo \$? >/tmp/rc; } 2>&1 | tee /tmp/out
[ "\$(cat /tmp/rc)" = 0 ] && result=passed || result=failed
echo "BH-RUN service \$result"
echo "BH-LEFT service: \$(ls -d /sys/fs/cgroup/service/*/ 2>/dev/null | tr '\n' ' ') subtree_control: \$(cat /sys/fs/cgroup/service/cgroup.subtree_control)"
mkdir /sys/fs/cgroup/shared
echo \$\$ >/sys/fs/cgroup/shared/cgroup.procs
sleep 600 &
run shared
poweroff -f
EOF
chmod 755 "$root/init"

(cd "$root" && find . -mindepth 1 | sort | /bin/busybox cpio -o -H newc 2>/dev/null) | gzip -1 >"$work/initramfs.gz"
timeout "${VM_TIMEOUT:-600}" qemu-system-x86_64 -machine q35,accel=tcg -cpu max -smp 2 -m 2048 -nographic -no-reboot \
  -kernel "$kernel" -initrd "$work/initramfs.gz" \
  -append "console=ttyS0 rdinit=/init panic=-1 quiet" </dev/null | tee "$work/console" \
  | grep -E --line-buffered "BH-|cgroup:|error|skipped|Executed|passed \(|failed \(" || true
runs=$(grep -c "^BH-RUN .* passed" "$work/console" || true)
[[ $runs == 3 ]] || die "$((3 - runs)) of 3 guest runs did not pass"
echo "cgroup-vm-tests: all 3 guest runs passed"
