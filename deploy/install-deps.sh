#!/usr/bin/env bash
# Installs the Debian packages Bulkhead builds against and tests with. Idempotent: does nothing
# when everything is already there.
set -euo pipefail
packages=(
  liburing-dev libnl-3-dev libnl-route-3-dev   # build: the C shims
  iproute2 iputils-ping arping tcpdump ethtool  # namespaces, links and probes used by the tests
  iperf3 fio bridge-utils                       # benchmark peers
  qemu-system-x86                               # QEMU as an independent vhost-user-blk frontend
  linux-image-cloud-amd64 busybox-static        # a Linux guest (kernel, initramfs) under that QEMU
  python3-scapy python3-jsonschema              # crafted frames in attack tests; schema check
  dpdk-dev                                      # dpdk-testpmd: an independent vhost-user-net frontend
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v swift >/dev/null || export PATH=/opt/swift/usr/bin:$PATH
command -v swift >/dev/null || { echo "swift toolchain not found (expected at /opt/swift)" >&2; exit 1; }
