#!/bin/sh
# /init of the vhost-user-net guest test (Tests/VhostNetTests/GuestNetTests.swift), built by
# guest-initramfs.sh with GUEST_INIT=this file and GUEST_MODULES="virtio_pci virtio_net": busybox
# sh as PID 1 of a Linux guest whose NIC eth0 is a virtio-net device served over vhost-user by
# our VhostNetDevice, which the test loops to a TAP device in a namespace (10.77.0.1).
# The guest pings the TAP side, downloads a blob over HTTP (TSO frames into the guest), uploads
# one (TSO frames from the guest), and reports:
#   BH-FEATURES <virtio feature bits>  BH-PING ok|fail  BH-DOWN <md5>  BH-UP <md5 sent> <md5 host got>
#   BH-RESULT ok | BH-RESULT fail WHY
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
echo 4 >/proc/sys/kernel/printk

fail() {
  echo "BH-RESULT fail $*"
  poweroff -f
  sleep 1000
}

for module in $(cat /etc/modules); do
  insmod "/lib/modules/$module.ko" || fail "insmod $module"
done
waited=0
while [ ! -e /sys/class/net/eth0 ]; do
  waited=$((waited + 1))
  [ $waited -gt 300 ] && fail "no eth0 30 s after loading $(cat /etc/modules | tr '\n' ' ')"
  sleep 0.1
done
echo "BH-FEATURES $(cat /sys/class/net/eth0/device/features)"
# The addresses come from the kernel command line (bh.ip=ADDRESS/LENGTH bh.peer=ADDRESS), by
# default those of the device test.
address=10.77.0.2/24
peer=10.77.0.1
for word in $(cat /proc/cmdline); do
  case "$word" in
    bh.ip=*) address=${word#bh.ip=} ;;
    bh.peer=*) peer=${word#bh.peer=} ;;
  esac
done
ip link set lo up
ip link set eth0 up
ip addr add "$address" dev eth0
if ping -c 3 -W 5 "$peer" >/tmp/ping 2>&1; then echo "BH-PING ok"; else cat /tmp/ping; echo "BH-PING fail"; fi
down=$(wget -q -O - "http://$peer:8080/blob" | md5sum | cut -d' ' -f1)
echo "BH-DOWN $down"
# busybox wget posts text (it stops at a NUL byte): 3 MiB of random bytes as base64, about 4 MiB.
dd if=/dev/urandom bs=1024 count=3072 2>/dev/null | base64 >/tmp/up
sent=$(md5sum /tmp/up | cut -d' ' -f1)
got=$(wget -q -O - --post-file=/tmp/up "http://$peer:8080/upload")
echo "BH-UP $sent $got"
echo "BH-RESULT ok"
poweroff -f
sleep 1000
