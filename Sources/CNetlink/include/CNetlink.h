#ifndef BULKHEAD_CNETLINK_H
#define BULKHEAD_CNETLINK_H
// Link and address management over libnl-route-3, reduced to what Bulkhead needs.
// Every function returns 0 or a negative libnl error code; bh_nl_error() describes it.
#include <stdint.h>

typedef struct bh_nl bh_nl;

/// Opens a NETLINK_ROUTE socket in the network namespace `netns_fd` (or the caller's when -1).
bh_nl *bh_nl_open(int netns_fd, int *err);
void bh_nl_close(bh_nl *nl);
/// A description of a libnl error code returned by these functions.
const char *bh_nl_error(int err);

/// Interface index of `ifname`, or a negative error.
int bh_link_index(bh_nl *nl, const char *ifname);
/// Moves `ifname` into the network namespace `netns_fd`.
int bh_link_set_netns(bh_nl *nl, const char *ifname, int netns_fd);
/// Sets the MAC address (6 bytes, may be NULL), MTU (0 keeps it) and brings the link up or down.
int bh_link_configure(bh_nl *nl, const char *ifname, const uint8_t *mac, unsigned mtu, int up);
/// Adds an address. `family` is AF_INET or AF_INET6; `addr` has 4 or 16 bytes.
/// IPv6 addresses are added without duplicate address detection (the switch enforces uniqueness).
int bh_addr_add(bh_nl *nl, const char *ifname, int family, const uint8_t *addr, int prefixlen);
/// Deletes a link (veth, bridge, vxlan).
int bh_link_delete(bh_nl *nl, const char *ifname);
/// Creates a veth pair.
int bh_veth_create(bh_nl *nl, const char *name, const char *peer);

#endif
