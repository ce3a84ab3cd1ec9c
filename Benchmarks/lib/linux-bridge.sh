# The peer topology of Benchmarks/run-system.sh: namespaces brb-a and brb-b, each with one end
# of a veth pair (named like the namespace, MAC and address as on the Bulkhead side); the other
# ends (brb-a-p, brb-b-p) are ports of the bridge brb-br0 in the root namespace. Sourced.
# shellcheck shell=bash

BRB_BRIDGE=brb-br0
BRB_NAMESPACES=(brb-a brb-b)

# Removes everything the bridge topology creates; safe when none or part of it exists.
linux_bridge_teardown() {
    local ns
    for ns in "${BRB_NAMESPACES[@]}"; do
        # The bridge-side end first: deleting it removes the pair at once, whereas a deleted
        # namespace takes its links with it only later (the kernel cleans up asynchronously),
        # and a setup right after would then find brb-a-p still there.
        ip link delete "$ns-p" 2>/dev/null || true
        ip link delete "$ns" 2>/dev/null || true  # a veth end not moved yet
        netns_remove "$ns"
    done
    ip link delete "$BRB_BRIDGE" 2>/dev/null || true
}

# linux_bridge_setup MAC_A IP_A MAC_B IP_B (IP with prefix length)
linux_bridge_setup() {
    local macs=("$1" "$3") ips=("$2" "$4") i ns
    ip link add "$BRB_BRIDGE" type bridge || return 1
    # No STP, no forwarding delay: the ports forward as soon as they are up. Leave the bridge's
    # netfilter hooks (bridge-nf-call-iptables) as the host has them.
    ip link set "$BRB_BRIDGE" type bridge stp_state 0 forward_delay 0 || return 1
    ip link set "$BRB_BRIDGE" up || return 1
    for i in 0 1; do
        ns=${BRB_NAMESPACES[$i]}
        ip netns add "$ns" || return 1
        ip link add "$ns" type veth peer name "$ns-p" || return 1
        ip link set "$ns-p" master "$BRB_BRIDGE" || return 1
        ip link set "$ns-p" up || return 1
        ip link set "$ns" netns "$ns" || return 1
        ip -n "$ns" link set lo up || return 1
        ip -n "$ns" link set "$ns" address "${macs[$i]}" || return 1
        ip -n "$ns" addr add "${ips[$i]}" dev "$ns" || return 1
        ip -n "$ns" link set "$ns" up || return 1
    done
}
