#!/usr/bin/env bash
# Installs the Debian packages Bulkhead builds against and tests with. Idempotent: does nothing
# when everything is already there.
set -euo pipefail
packages=(
  liburing-dev libnl-3-dev libnl-route-3-dev   # build: the C shims
  libssl-dev                                    # build: libcrypto's SHA-256 (measured launch)
  iproute2 iputils-ping arping tcpdump ethtool  # namespaces, links and probes used by the tests
  iperf3 fio bridge-utils                       # benchmark peers
  openvswitch-switch                            # benchmark peer: OVS's userspace datapath (run privately)
  qemu-system-x86                               # QEMU as an independent vhost-user-blk frontend
  linux-image-cloud-amd64 busybox-static        # a Linux guest (kernel, initramfs) under that QEMU
  python3-scapy python3-jsonschema              # crafted frames in attack tests; schema check
  socat curl                                    # the management API's fuzzing bridge and raw calls in tests
  dpdk-dev                                      # dpdk-testpmd: an independent vhost-user-net frontend
  etcd-server etcd-client                       # the fleet map in fleet tests (the tests start their own etcd)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # No service may start on install: run-system.sh runs its own Open vSwitch from a private
  # directory, and a system one (openvswitch-switch starts it where an init system runs) would
  # take CPU and share the netdev datapath's device. Maintainer scripts start services through
  # invoke-rc.d or deb-systemd-invoke, which both obey /usr/sbin/policy-rc.d; exit status 101
  # there denies every start. The host's own policy-rc.d is kept; one added here is removed.
  policy=/usr/sbin/policy-rc.d added_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# deploy/install-deps.sh: no service starts during its install\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    added_policy=1
  fi
  install_status=0
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || install_status=$?
  if ((added_policy)); then rm -f "$policy"; fi
  ((install_status == 0)) || { echo "apt-get failed with status $install_status" >&2; exit "$install_status"; }
fi
if pgrep -x ovs-vswitchd >/dev/null; then
  echo "warning: a system ovs-vswitchd runs; Benchmarks/run-system.sh's own OVS shares the CPUs with it" >&2
fi
command -v swift >/dev/null || export PATH=/opt/swift/usr/bin:$PATH
command -v swift >/dev/null || { echo "swift toolchain not found (expected at /opt/swift)" >&2; exit 1; }
