#define _GNU_SOURCE
#include "CNetlink.h"
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <linux/if_addr.h>
#include <net/if.h>
#include <netlink/netlink.h>
#include <netlink/route/link.h>
#include <netlink/route/link/veth.h>
#include <netlink/route/addr.h>

struct bh_nl { struct nl_sock *sock; };

const char *bh_nl_error(int err) { return nl_geterror(err < 0 ? -err : err); }

bh_nl *bh_nl_open(int netns_fd, int *err) {
    int saved = -1;
    *err = 0;
    if (netns_fd >= 0) {
        saved = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
        if (saved < 0) { *err = -NLE_FAILURE; return NULL; }
        if (setns(netns_fd, CLONE_NEWNET) < 0) { close(saved); *err = -NLE_PERM; return NULL; }
    }
    bh_nl *nl = calloc(1, sizeof *nl);
    int ret = -NLE_NOMEM;
    if (nl && (nl->sock = nl_socket_alloc())) {
        ret = nl_connect(nl->sock, NETLINK_ROUTE);
        if (ret < 0) { nl_socket_free(nl->sock); nl->sock = NULL; }
    }
    if (saved >= 0) {
        // Return the thread to its namespace; the socket stays bound to the one it was made in.
        if (setns(saved, CLONE_NEWNET) < 0) abort();
        close(saved);
    }
    if (!nl || !nl->sock) { free(nl); *err = ret; return NULL; }
    return nl;
}

void bh_nl_close(bh_nl *nl) {
    if (!nl) return;
    if (nl->sock) nl_socket_free(nl->sock);
    free(nl);
}

static int get_link(bh_nl *nl, const char *ifname, struct rtnl_link **out) {
    return rtnl_link_get_kernel(nl->sock, 0, ifname, out);
}

int bh_link_index(bh_nl *nl, const char *ifname) {
    struct rtnl_link *link = NULL;
    int err = get_link(nl, ifname, &link);
    if (err < 0) return err;
    int index = rtnl_link_get_ifindex(link);
    rtnl_link_put(link);
    return index;
}

int bh_link_set_netns(bh_nl *nl, const char *ifname, int netns_fd) {
    struct rtnl_link *link = NULL, *change = NULL;
    int err = get_link(nl, ifname, &link);
    if (err < 0) return err;
    change = rtnl_link_alloc();
    if (!change) { rtnl_link_put(link); return -NLE_NOMEM; }
    rtnl_link_set_ns_fd(change, (uint32_t)netns_fd);
    err = rtnl_link_change(nl->sock, link, change, 0);
    rtnl_link_put(change);
    rtnl_link_put(link);
    return err;
}

int bh_link_configure(bh_nl *nl, const char *ifname, const uint8_t *mac, unsigned mtu, int up) {
    struct rtnl_link *link = NULL, *change = NULL;
    int err = get_link(nl, ifname, &link);
    if (err < 0) return err;
    change = rtnl_link_alloc();
    if (!change) { rtnl_link_put(link); return -NLE_NOMEM; }
    if (mac) {
        struct nl_addr *lladdr = nl_addr_build(AF_LLC, mac, 6);
        if (!lladdr) { err = -NLE_NOMEM; goto out; }
        rtnl_link_set_addr(change, lladdr);
        nl_addr_put(lladdr);
    }
    if (mtu) rtnl_link_set_mtu(change, mtu);
    if (up) rtnl_link_set_flags(change, IFF_UP); else rtnl_link_unset_flags(change, IFF_UP);
    err = rtnl_link_change(nl->sock, link, change, 0);
out:
    rtnl_link_put(change);
    rtnl_link_put(link);
    return err;
}

int bh_addr_add(bh_nl *nl, const char *ifname, int family, const uint8_t *bytes, int prefixlen) {
    int index = bh_link_index(nl, ifname);
    if (index < 0) return index;
    struct rtnl_addr *addr = rtnl_addr_alloc();
    if (!addr) return -NLE_NOMEM;
    struct nl_addr *local = nl_addr_build(family, bytes, family == AF_INET ? 4 : 16);
    int err = -NLE_NOMEM;
    if (local) {
        nl_addr_set_prefixlen(local, prefixlen);
        rtnl_addr_set_ifindex(addr, index);
        rtnl_addr_set_local(addr, local);
        rtnl_addr_set_prefixlen(addr, prefixlen);
        if (family == AF_INET6) rtnl_addr_set_flags(addr, IFA_F_NODAD);
        err = rtnl_addr_add(nl->sock, addr, 0);
        nl_addr_put(local);
    }
    rtnl_addr_put(addr);
    return err;
}

int bh_link_delete(bh_nl *nl, const char *ifname) {
    struct rtnl_link *link = rtnl_link_alloc();
    if (!link) return -NLE_NOMEM;
    rtnl_link_set_name(link, ifname);
    int err = rtnl_link_delete(nl->sock, link);
    rtnl_link_put(link);
    return err;
}

int bh_veth_create(bh_nl *nl, const char *name, const char *peer) {
    struct rtnl_link *link = rtnl_link_veth_alloc();
    if (!link) return -NLE_NOMEM;
    rtnl_link_set_name(link, name);
    struct rtnl_link *p = rtnl_link_veth_get_peer(link);
    rtnl_link_set_name(p, peer);
    rtnl_link_put(p);
    int err = rtnl_link_add(nl->sock, link, NLM_F_CREATE | NLM_F_EXCL);
    rtnl_link_veth_release(link);
    return err;
}
