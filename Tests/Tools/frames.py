#!/usr/bin/python3
"""Crafted attack frames for Bulkhead's switch tests, and a marker-counting sniffer.

Run inside the sending tenant's network namespace (ip netns exec NS /usr/bin/python3 frames.py ...):

  send --iface IF --attack NAME [--count N] [--marker HEX]
      Crafts one attack's frames (ATTACKS below) and sends them raw at layer 2 with scapy's sendp
      (offload attacks: behind a virtio-net header, on a PACKET_VNET_HDR socket).
      Prints one JSON line: the attack, the drop reason the switch should count on the ingress
      port, and how many frames must be dropped ("dropped") and how many harmless companion
      frames were sent alongside ("companions", e.g. the allowed first fragment of an overlap).
  sniff --iface IF [--marker HEX ...] [--filter BPF] [--seconds S] [--ready-file PATH] [--json]
      Counts received frames (never the interface's own outgoing ones) that carry one of the
      markers anywhere in their bytes and/or match a BPF filter, until S seconds pass or SIGTERM /
      SIGINT arrives, then prints the count (with --json: {"total": n, "markers": {hex: n}}).
      --ready-file is created once the socket is bound and drained, so a caller can start sending.
  flood-macs --iface IF [--count 10000] [--rate PPS] [--marker HEX]
      Sends COUNT unicast frames, each from a different random (locally administered) source MAC,
      through one raw AF_PACKET socket, built once and paced at PPS. Prints sent frames and how many
      the interface itself dropped (tx_dropped), which then never reached the switch.
  list
      Prints the catalogue as JSON.

Markers: each frame that must be dropped carries the marker (default: 8 random bytes) in its
payload, or where there is no payload (ARP, ND, RA, tiny fragments) in trailing Ethernet padding
beyond the IP/ARP packet, which a switch forwards as it is; the sniffer finds it anywhere. A
companion frame carries the bitwise complement of the marker. The runt carries the first 7
bytes of the marker after its destination MAC (13 bytes in all).

Exit status: 0 sent; 2 usage; 3 the kernel refused to send a frame (said on stderr, e.g. a runt).
"""

import argparse
import errno
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_VNET_HDR = 15

# Demo topology (configs/demo.json), seen from tenant blue's port a.
DEFAULTS = {
    "own_mac": None,  # read from the interface
    "peer_mac": "02:00:00:00:01:02",
    "foreign_mac": "02:00:00:00:02:01",  # a port of another tenant (red/a)
    "own_ip": "10.0.0.1",
    "peer_ip": "10.0.0.2",
    "own_ip6": "fd00::1",
    "peer_ip6": "fd00::2",
}


def mac_bytes(mac):
    return bytes(int(part, 16) for part in mac.split(":"))


def link_local(mac):
    """The modified-EUI-64 link-local address of a MAC."""
    b = bytearray(mac_bytes(mac))
    b[0] ^= 0x02
    eui = bytes(b[:3]) + b"\xff\xfe" + bytes(b[3:])
    groups = [eui[i] << 8 | eui[i + 1] for i in range(0, 8, 2)]
    return "fe80::" + ":".join("%x" % g for g in groups)


class Context:
    """Addresses and markers an attack builder needs."""

    def __init__(self, args, marker):
        self.own_mac = args.own_mac or interface_mac(args.iface)
        self.peer_mac = args.peer_mac
        self.foreign_mac = args.foreign_mac
        self.own_ip, self.peer_ip = args.own_ip, args.peer_ip
        self.own_ip6, self.peer_ip6 = args.own_ip6, args.peer_ip6
        self.own_ll, self.peer_ll = link_local(self.own_mac), link_local(self.peer_mac)
        self.marker = marker
        self.companion = bytes(b ^ 0xFF for b in marker)


def interface_mac(iface):
    with open("/sys/class/net/%s/address" % iface) as f:
        return f.read().strip()


def tx_dropped(iface):
    try:
        with open("/sys/class/net/%s/statistics/tx_dropped" % iface) as f:
            return int(f.read())
    except OSError:
        return -1


# --- Attack builders ---------------------------------------------------------------------------
# Each returns a list of (frame bytes, must_drop). Frames use scapy; `raw(...) + marker` puts the
# marker after the IP/ARP packet (its length fields are computed first), i.e. in Ethernet padding.

def _scapy():
    import scapy.all as s  # noqa: F401  (slow import: only the sender needs it)
    return s


def udp_to_peer(c, s, src_mac=None, dst_mac=None, src_ip=None, dst_ip=None):
    return (s.Ether(src=src_mac or c.own_mac, dst=dst_mac or c.peer_mac)
            / s.IP(src=src_ip or c.own_ip, dst=dst_ip or c.peer_ip)
            / s.UDP(sport=40000, dport=9) / s.Raw(c.marker))


def udp6_to_peer(c, s, src_ip6, dst_ip6=None, dst_mac=None):
    return (s.Ether(src=c.own_mac, dst=dst_mac or c.peer_mac)
            / s.IPv6(src=src_ip6, dst=dst_ip6 or c.peer_ip6)
            / s.UDP(sport=40000, dport=9) / s.Raw(c.marker))


def build_mac_spoof(c, s):
    return [
        # The neighbour's MAC, broadcast: a learning switch would move the neighbour to this port.
        (udp_to_peer(c, s, src_mac=c.peer_mac, dst_mac="ff:ff:ff:ff:ff:ff", dst_ip="10.0.0.255"), True),
        # Another tenant's MAC.
        (udp_to_peer(c, s, src_mac=c.foreign_mac), True),
        # A MAC nobody has.
        (udp_to_peer(c, s, src_mac="02:de:ad:be:ef:01"), True),
    ]


def build_mac_invalid(c, s):
    return [(udp_to_peer(c, s, src_mac=m), True)
            for m in ("01:00:5e:00:00:01", "00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff")]


def build_ipv4_spoof(c, s):
    return [
        (udp_to_peer(c, s, src_ip=c.peer_ip), True),   # the neighbour's address
        (udp_to_peer(c, s, src_ip="10.0.0.99"), True),  # an address nobody owns
        (udp_to_peer(c, s, src_ip="0.0.0.0"), True),    # unspecified, not a DHCP client message
    ]


def build_ipv6_spoof(c, s):
    return [
        (udp6_to_peer(c, s, c.peer_ip6), True),
        (udp6_to_peer(c, s, "fd00::99"), True),
        (udp6_to_peer(c, s, c.peer_ll, dst_ip6=c.peer_ll), True),  # the neighbour's link-local
        (udp6_to_peer(c, s, "::"), True),
    ]


def build_arp_reply_spoof(c, s):
    # "10.0.0.2 is at <my MAC>", unicast to the neighbour.
    arp = (s.Ether(src=c.own_mac, dst=c.peer_mac)
           / s.ARP(op=2, hwsrc=c.own_mac, psrc=c.peer_ip, hwdst=c.peer_mac, pdst=c.peer_ip))
    return [(s.raw(arp) + c.marker, True)]


def build_arp_gratuitous(c, s):
    frames = []
    for op in (1, 2):  # gratuitous request and gratuitous reply, both broadcast
        arp = (s.Ether(src=c.own_mac, dst="ff:ff:ff:ff:ff:ff")
               / s.ARP(op=op, hwsrc=c.own_mac, psrc=c.peer_ip, hwdst="00:00:00:00:00:00"
                       if op == 1 else "ff:ff:ff:ff:ff:ff", pdst=c.peer_ip))
        frames.append((s.raw(arp) + c.marker, True))
    return frames


def build_arp_sender_mac_spoof(c, s):
    # Own Ethernet source and own IP, but the ARP body names the neighbour's MAC.
    arp = (s.Ether(src=c.own_mac, dst="ff:ff:ff:ff:ff:ff")
           / s.ARP(op=2, hwsrc=c.peer_mac, psrc=c.own_ip, hwdst="ff:ff:ff:ff:ff:ff", pdst=c.own_ip))
    return [(s.raw(arp) + c.marker, True)]


def build_vlan_8021q(c, s):
    frame = (s.Ether(src=c.own_mac, dst=c.peer_mac) / s.Dot1Q(vlan=5)
             / s.IP(src=c.own_ip, dst=c.peer_ip) / s.UDP(sport=40000, dport=9) / s.Raw(c.marker))
    return [(frame, True)]


def build_vlan_8021ad(c, s):
    inner = s.IP(src=c.own_ip, dst=c.peer_ip) / s.UDP(sport=40000, dport=9) / s.Raw(c.marker)
    return [
        # 802.1ad S-tag (0x88a8) over an 802.1Q C-tag.
        (s.Ether(src=c.own_mac, dst=c.peer_mac, type=0x88A8) / s.Dot1AD(vlan=100, type=0x8100)
         / s.Dot1Q(vlan=5) / inner, True),
        # The pre-standard QinQ ethertype 0x9100.
        (s.Ether(src=c.own_mac, dst=c.peer_mac, type=0x9100) / s.Dot1Q(vlan=100, type=0x8100)
         / s.Dot1Q(vlan=5) / inner, True),
    ]


def build_dhcp_offer(c, s):
    offer = (s.Ether(src=c.own_mac, dst="ff:ff:ff:ff:ff:ff")
             / s.IP(src=c.own_ip, dst="255.255.255.255") / s.UDP(sport=67, dport=68)
             / s.BOOTP(op=2, xid=0x1234, yiaddr="10.0.0.50", siaddr=c.own_ip, chaddr=mac_bytes(c.peer_mac))
             / s.DHCP(options=[("message-type", "offer"), ("server_id", c.own_ip), ("router", c.own_ip),
                               ("name_server", c.own_ip), ("lease_time", 3600), "end"]))
    return [(s.raw(offer) + c.marker, True)]


def build_dhcp_odd_source_port(c, s):
    # DHCP server messages need not come from the server port: NetworkManager's DHCPv4 client
    # (n-dhcp4, n_dhcp4_c_socket_packet_new) filters on UDP destination port 68, BOOTREPLY and the
    # magic cookie, never on the source port; a DHCPv6 client's socket on 546 takes any source.
    offer = (s.Ether(src=c.own_mac, dst="ff:ff:ff:ff:ff:ff")
             / s.IP(src=c.own_ip, dst="255.255.255.255") / s.UDP(sport=6767, dport=68)
             / s.BOOTP(op=2, xid=0x1234, yiaddr="10.0.0.50", siaddr=c.own_ip, chaddr=mac_bytes(c.peer_mac))
             / s.DHCP(options=[("message-type", "offer"), ("server_id", c.own_ip), ("router", c.own_ip),
                               ("lease_time", 3600), "end"]))
    adv = (s.Ether(src=c.own_mac, dst=c.peer_mac) / s.IPv6(src=c.own_ll, dst=c.peer_ll)
           / s.UDP(sport=5470, dport=546) / s.DHCP6_Advertise(trid=0x1234))
    return [(s.raw(offer) + c.marker, True), (s.raw(adv) + c.marker, True)]


def build_dhcpv6_advertise(c, s):
    adv = (s.Ether(src=c.own_mac, dst=c.peer_mac)
           / s.IPv6(src=c.own_ll, dst=c.peer_ll) / s.UDP(sport=547, dport=546)
           / s.DHCP6_Advertise(trid=0x1234))
    hidden = (s.Ether(src=c.own_mac, dst=c.peer_mac) / s.IPv6(src=c.own_ll, dst=c.peer_ll) / s.IPv6ExtHdrDestOpt()
              / s.UDP(sport=547, dport=546) / s.DHCP6_Advertise(trid=0x1235))
    return [(s.raw(adv) + c.marker, True), (s.raw(hidden) + c.marker, True)]


def build_ipv6_ra(c, s):
    ra = (s.Ether(src=c.own_mac, dst="33:33:00:00:00:01")
          / s.IPv6(src=c.own_ll, dst="ff02::1", hlim=255)
          / s.ICMPv6ND_RA(routerlifetime=1800)
          / s.ICMPv6NDOptSrcLLAddr(lladdr=c.own_mac)
          / s.ICMPv6NDOptPrefixInfo(prefix="fd66::", prefixlen=64))
    # The same behind hop-by-hop and destination options headers.
    hidden = (s.Ether(src=c.own_mac, dst="33:33:00:00:00:01")
              / s.IPv6(src=c.own_ll, dst="ff02::1", hlim=255) / s.IPv6ExtHdrHopByHop() / s.IPv6ExtHdrDestOpt()
              / s.ICMPv6ND_RA(routerlifetime=1800) / s.ICMPv6NDOptSrcLLAddr(lladdr=c.own_mac)
              / s.ICMPv6NDOptPrefixInfo(prefix="fd66::", prefixlen=64))
    return [(s.raw(ra) + c.marker, True), (s.raw(hidden) + c.marker, True)]


def build_redirects(c, s):
    v6 = (s.Ether(src=c.own_mac, dst=c.peer_mac)
          / s.IPv6(src=c.own_ll, dst=c.peer_ll, hlim=255)
          / s.ICMPv6ND_Redirect(tgt=c.own_ll, dst="fd00::99"))
    v4 = (s.Ether(src=c.own_mac, dst=c.peer_mac) / s.IP(src=c.own_ip, dst=c.peer_ip)
          / s.ICMP(type=5, code=1, gw=c.own_ip)
          / s.IP(src=c.peer_ip, dst="192.0.2.1") / s.UDP(sport=40000, dport=53))
    return [(s.raw(v6) + c.marker, True), (s.raw(v4) + c.marker, True)]


def build_nd_na_spoof(c, s):
    # Unsolicited override advertisement: "fd00::2 is at <my MAC>", to all nodes and to the neighbour.
    frames = []
    for dst_mac, dst_ip in (("33:33:00:00:00:01", "ff02::1"), (c.peer_mac, c.peer_ll)):
        na = (s.Ether(src=c.own_mac, dst=dst_mac)
              / s.IPv6(src=c.own_ll, dst=dst_ip, hlim=255)
              / s.ICMPv6ND_NA(tgt=c.peer_ip6, R=0, S=0, O=1)
              / s.ICMPv6NDOptDstLLAddr(lladdr=c.own_mac))
        frames.append((s.raw(na) + c.marker, True))
    return frames


def build_nd_lladdr_spoof(c, s):
    na = (s.Ether(src=c.own_mac, dst="33:33:00:00:00:01") / s.IPv6(src=c.own_ll, dst="ff02::1", hlim=255)
          / s.ICMPv6ND_NA(tgt=c.own_ip6, R=0, O=1) / s.ICMPv6NDOptDstLLAddr(lladdr=c.peer_mac))
    ns = (s.Ether(src=c.own_mac, dst=c.peer_mac) / s.IPv6(src=c.own_ll, dst=c.peer_ll, hlim=255)
          / s.ICMPv6ND_NS(tgt=c.peer_ll) / s.ICMPv6NDOptSrcLLAddr(lladdr=c.foreign_mac))
    dad = (s.Ether(src=c.own_mac, dst="33:33:ff:00:00:02") / s.IPv6(src="::", dst="ff02::1:ff00:2", hlim=255)
           / s.ICMPv6ND_NS(tgt=c.peer_ip6))
    rs = (s.Ether(src=c.own_mac, dst="33:33:00:00:00:02") / s.IPv6(src=c.own_ll, dst="ff02::2", hlim=255)
          / s.ICMPv6ND_RS() / s.ICMPv6NDOptSrcLLAddr(lladdr=c.peer_mac))
    return [(s.raw(f) + c.marker, True) for f in (na, ns, dad, rs)]


def _tcp_header(s, dport, flags):
    return s.raw(s.TCP(sport=40000, dport=dport, flags=flags, seq=1000, window=65535))


def build_frag_overlap(c, s):
    # RFC 1858 overlap: a first fragment to an allowed port (80) passes the ACL; a second fragment
    # at offset 1 (8 bytes) then rewrites TCP bytes 8.. (data offset, flags: here SYN). The ports
    # are bytes 0-3 of the TCP header, which only an offset-0 fragment can carry, and that one is a
    # first fragment the ACL checks (port 23 -> acl-ingress), so offset 1 is the lowest a rewrite
    # can start; the switch must drop every TCP fragment at offset < 16 bytes.
    ident = random.randint(1, 65535)
    ip = dict(src=c.own_ip, dst=c.peer_ip, proto=6, id=ident)
    first_payload = _tcp_header(s, 80, "A") + c.companion + b"\x00" * 4  # 32 bytes, a multiple of 8
    first = s.Ether(src=c.own_mac, dst=c.peer_mac) / s.IP(flags="MF", frag=0, **ip) / s.Raw(first_payload)
    rewrite = _tcp_header(s, 23, "S")[8:] + c.marker  # TCP bytes 8..19 (SYN), then data
    second = s.Ether(src=c.own_mac, dst=c.peer_mac) / s.IP(flags=0, frag=1, **ip) / s.Raw(rewrite)
    return [(first, False), (second, True)]


def build_frag_tiny(c, s):
    # A first fragment with only 8 bytes of TCP header (ports, sequence: no flags, no data offset),
    # and the rest of the header at offset 1 (8 bytes).
    ident = random.randint(1, 65535)
    ip = dict(src=c.own_ip, dst=c.peer_ip, proto=6, id=ident)
    tcp = _tcp_header(s, 23, "S")
    tiny = s.Ether(src=c.own_mac, dst=c.peer_mac) / s.IP(flags="MF", frag=0, **ip) / s.Raw(tcp[:8])
    rest = s.Ether(src=c.own_mac, dst=c.peer_mac) / s.IP(flags=0, frag=1, **ip) / s.Raw(tcp[8:] + c.marker)
    return [(s.raw(tiny) + c.marker, True), (rest, True)]


def build_frag_nonfirst(c, s):
    # A lone TCP fragment at offset 64 bytes: it carries no ports, so only "deny tcp dport 23"
    # catching every non-first TCP fragment keeps it out.
    ip = s.IP(src=c.own_ip, dst=c.peer_ip, proto=6, id=random.randint(1, 65535), flags=0, frag=8)
    return [(s.Ether(src=c.own_mac, dst=c.peer_mac) / ip / s.Raw(c.marker * 4), True)]


def build_frag6(c, s):
    ident = random.randint(1, 2 ** 32 - 1)
    eth = s.Ether(src=c.own_mac, dst=c.peer_mac)
    ip6 = s.IPv6(src=c.own_ip6, dst=c.peer_ip6)
    tcp = _tcp_header(s, 23, "S")
    # First fragment with 8 bytes of TCP header.
    tiny = eth / ip6 / s.IPv6ExtHdrFragment(nh=6, offset=0, m=1, id=ident) / s.Raw(tcp[:8])
    # First fragment whose header chain (a 16-byte destination options header) is cut (RFC 7112).
    cut = (eth / ip6 / s.IPv6ExtHdrFragment(nh=60, offset=0, m=1, id=ident + 1)
           / s.Raw(bytes([6, 1]) + b"\x01\x04\x00\x00\x00\x00"))  # says 16 bytes, holds 8
    # TCP fragment at offset 8 bytes (rewrites flags).
    low = eth / ip6 / s.IPv6ExtHdrFragment(nh=6, offset=1, m=0, id=ident) / s.Raw(tcp[8:] + c.marker)
    # Neighbor discovery in a fragment (RFC 6980).
    nd = (eth / s.IPv6(src=c.own_ll, dst=c.peer_ll, hlim=255) / s.IPv6ExtHdrFragment(nh=58, offset=0, m=1, id=ident + 2)
          / s.ICMPv6ND_NA(tgt=c.own_ll, R=0) / s.ICMPv6NDOptDstLLAddr(lladdr=c.own_mac))
    return [(s.raw(tiny) + c.marker, True), (s.raw(cut) + c.marker, True), (low, True),
            (s.raw(nd) + c.marker, True)]


def build_frag6_nonfirst(c, s):
    # A lone IPv6 TCP fragment at offset 64 bytes: the IPv6 twin of frag-nonfirst.
    frag = s.IPv6ExtHdrFragment(nh=6, offset=8, m=0, id=random.randint(1, 2 ** 32 - 1))
    return [(s.Ether(src=c.own_mac, dst=c.peer_mac) / s.IPv6(src=c.own_ip6, dst=c.peer_ip6) / frag
             / s.Raw(c.marker * 4), True)]


def build_frag6_overlap_exthdr(c, s):
    # The first fragment's fragmentable part is an 8-byte destination options header, then TCP to
    # port 80: it passes the ACL. Every fragment header says "next header 60" (the first header of
    # the fragmentable part, RFC 8200), so the second fragment, at offset 1 (8 bytes), starts
    # exactly on the TCP header and rewrites its ports to 23, yet its fragment header never says
    # TCP. A reassembler that lets later fragments overwrite earlier ones yields a SYN to port 23.
    ident = random.randint(1, 2 ** 32 - 1)
    eth, ip6 = s.Ether(src=c.own_mac, dst=c.peer_mac), s.IPv6(src=c.own_ip6, dst=c.peer_ip6)
    dest_opts = bytes([6, 0, 1, 4, 0, 0, 0, 0])  # next header TCP, 8 bytes, PadN
    first = (eth / ip6 / s.IPv6ExtHdrFragment(nh=60, offset=0, m=1, id=ident)
             / s.Raw(dest_opts + _tcp_header(s, 80, "A") + c.companion + b"\x00" * 4))
    second = (eth / ip6 / s.IPv6ExtHdrFragment(nh=60, offset=1, m=0, id=ident)
              / s.Raw(_tcp_header(s, 23, "S") + c.marker))
    return [(first, False), (second, True)]


def build_frag6_overlap_nh_lie(c, s):
    # The IPv6 twin of frag-overlap, with the second fragment's header claiming UDP: receivers take
    # the upper-layer protocol from the first fragment only (RFC 8200 4.5) and key reassembly on
    # addresses and identification alone, so the label is free for the attacker to choose.
    ident = random.randint(1, 2 ** 32 - 1)
    eth, ip6 = s.Ether(src=c.own_mac, dst=c.peer_mac), s.IPv6(src=c.own_ip6, dst=c.peer_ip6)
    first = (eth / ip6 / s.IPv6ExtHdrFragment(nh=6, offset=0, m=1, id=ident)
             / s.Raw(_tcp_header(s, 80, "A") + c.companion + b"\x00" * 4))
    second = (eth / ip6 / s.IPv6ExtHdrFragment(nh=17, offset=1, m=0, id=ident)
              / s.Raw(_tcp_header(s, 23, "S")[8:] + c.marker))
    return [(first, False), (second, True)]


def build_tcp_telnet(c, s):
    tcp = s.TCP(sport=40000, dport=23, flags="S", seq=1000) / s.Raw(c.marker)
    eth = s.Ether(src=c.own_mac, dst=c.peer_mac)
    return [
        (eth / s.IP(src=c.own_ip, dst=c.peer_ip) / tcp, True),
        # With IPv4 options (IHL 6): the TCP header is not at byte 20.
        (eth / s.IP(src=c.own_ip, dst=c.peer_ip, options=[s.IPOption_Router_Alert()]) / tcp, True),
        (eth / s.IPv6(src=c.own_ip6, dst=c.peer_ip6) / tcp, True),
        # Behind hop-by-hop and destination options headers.
        (eth / s.IPv6(src=c.own_ip6, dst=c.peer_ip6) / s.IPv6ExtHdrHopByHop() / s.IPv6ExtHdrDestOpt() / tcp, True),
    ]


def build_truncated_ip(c, s):
    v4 = (s.Ether(src=c.own_mac, dst=c.peer_mac) / s.IP(src=c.own_ip, dst=c.peer_ip, len=400)
          / s.UDP(sport=40000, dport=9) / s.Raw(c.marker))
    v6 = (s.Ether(src=c.own_mac, dst=c.peer_mac) / s.IPv6(src=c.own_ip6, dst=c.peer_ip6, plen=400)
          / s.UDP(sport=40000, dport=9) / s.Raw(c.marker))
    bad_ihl = (s.Ether(src=c.own_mac, dst=c.peer_mac) / s.IP(src=c.own_ip, dst=c.peer_ip, ihl=3)
               / s.UDP(sport=40000, dport=9) / s.Raw(c.marker))
    return [(v4, True), (v6, True), (bad_ihl, True)]


def build_runt(c, s):
    return [(mac_bytes(c.peer_mac) + c.marker[:7], True)]  # 13 bytes: no source MAC, no ethertype


def build_giant(c, s):
    frame = udp_to_peer(c, s)
    pad = 4000 - len(s.raw(frame))
    return [(udp_to_peer(c, s) / s.Raw(b"\x00" * pad), True)]


def build_ethertype_unknown(c, s):
    frames = [(s.raw(s.Ether(src=c.own_mac, dst=c.peer_mac, type=t)) + c.marker + b"\x00" * 38, True)
              for t in (0x88B5, 0x8863, 0x0842)]  # local experimental, PPPoE discovery, Wake-on-LAN
    # LLDP, and an 802.3/LLC spanning-tree BPDU claiming the root bridge (a length, not an ethertype).
    lldp = s.Ether(src=c.own_mac, dst="01:80:c2:00:00:0e", type=0x88CC) / s.Raw(c.marker + b"\x00" * 38)
    bpdu = (s.Dot3(src=c.own_mac, dst="01:80:c2:00:00:00") / s.LLC(dsap=0x42, ssap=0x42, ctrl=3)
            / s.STP(rootid=0, rootmac=c.own_mac, bridgeid=0, bridgemac=c.own_mac) / s.Raw(c.marker))
    return frames + [(lldp, True), (bpdu, True)]


# --- Offload headers (virtio-net header via PACKET_VNET_HDR) -----------------------------------
# The kernel turns the header a packet socket gives (virtio_net_hdr_to_skb) into the skb's offload
# state, and the TAP device turns that back into the header the switch reads. Some lies do not
# survive the trip, so they are not here: a GSO type for another IP version, ECN without TCP GSO
# and a TCP csum_offset other than 16 under GSO are refused (EINVAL); GSO on UDP, ICMP or another
# protocol and a GSO csum_start off the transport header are dropped by the kernel on transmit;
# hdr_len is rewritten (the TAP reports its linear head, which holds every header: Linux pulls
# them in); DATA_VALID is ignored on send. Those cases are covered by OffloadCheckTests.

NEEDS_CSUM = 1
GSO_TCPV4, GSO_TCPV6, GSO_ECN = 1, 4, 0x80


class Offloaded:
    """A frame to be sent behind a virtio-net header: the offloads the tenant claims for it."""

    def __init__(self, frame, flags=NEEDS_CSUM, gso_type=0, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0):
        self.frame = frame
        self.header = struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)

    def __len__(self):
        return len(self.frame)


def _tcp_frame(c, s, payload, v6=False, **ip):
    l3 = s.IPv6(src=c.own_ip6, dst=c.peer_ip6) if v6 else s.IP(src=c.own_ip, dst=c.peer_ip, **ip)
    return s.raw(s.Ether(src=c.own_mac, dst=c.peer_mac) / l3 / s.TCP(sport=40000, dport=80, flags="PA")
                 / s.Raw(payload))


def _udp_frame(c, s, payload, **ip):
    return s.raw(s.Ether(src=c.own_mac, dst=c.peer_mac) / s.IP(src=c.own_ip, dst=c.peer_ip, **ip)
                 / s.UDP(sport=40000, dport=9) / s.Raw(payload))


def build_offload_csum(c, s):
    data, good = c.marker + b"\x00" * 32, c.companion + b"\x00" * 32
    tcp, udp = _tcp_frame(c, s, data), _udp_frame(c, s, data)
    icmp = s.raw(s.Ether(src=c.own_mac, dst=c.peer_mac) / s.IP(src=c.own_ip, dst=c.peer_ip) / s.ICMP() / s.Raw(data))
    fragment = _udp_frame(c, s, data, flags="MF")
    arp = s.raw(s.Ether(src=c.own_mac, dst="ff:ff:ff:ff:ff:ff")
                / s.ARP(op=1, hwsrc=c.own_mac, psrc=c.own_ip, pdst=c.peer_ip)) + c.marker
    return [
        # Over the TCP ports: a receiver that forwards would write the checksum there, after the ACL.
        (Offloaded(tcp, csum_start=34, csum_offset=2), True),
        (Offloaded(udp, csum_start=34, csum_offset=0), True),   # the UDP source port
        (Offloaded(udp, csum_start=42, csum_offset=2), True),   # inside the payload
        (Offloaded(udp, csum_start=24, csum_offset=4), True),   # the IP source address
        (Offloaded(icmp, csum_start=34, csum_offset=2), True),  # ICMP: no stack offloads it
        (Offloaded(fragment, csum_start=34, csum_offset=6), True),  # a fragment's checksum is not its own
        (Offloaded(arp, csum_start=20, csum_offset=2), True),
        # What Linux sends: the TCP and UDP checksum fields.
        (Offloaded(_tcp_frame(c, s, good), csum_start=34, csum_offset=16), False),
        (Offloaded(_udp_frame(c, s, good), csum_start=34, csum_offset=6), False),
    ]


def build_offload_gso_size(c, s):
    data, good = c.marker + b"\x00" * 3000, c.companion + b"\x00" * 3000
    tcp4, tcp6 = _tcp_frame(c, s, data), _tcp_frame(c, s, data, v6=True)

    def tso4(frame, size):
        return Offloaded(frame, gso_type=GSO_TCPV4, hdr_len=54, gso_size=size, csum_start=34, csum_offset=16)
    return [
        (tso4(tcp4, 1), True),     # 3000 segments of one byte each
        (tso4(tcp4, 87), True),    # below Linux's TCP_MIN_MSS
        (tso4(tcp4, 1461), True),  # 1501-byte segments on a 1500-byte segment MTU
        (Offloaded(tcp6, gso_type=GSO_TCPV6, hdr_len=74, gso_size=1441, csum_start=54, csum_offset=16), True),
        (tso4(_tcp_frame(c, s, good), 1448), False),
    ]


def build_offload_gso_mismatch(c, s):
    data, good = c.marker + b"\x00" * 3000, c.companion + b"\x00" * 3000
    fragment = _tcp_frame(c, s, data, flags="MF")  # TCP segments cut from a first fragment
    return [
        (Offloaded(fragment, gso_type=GSO_TCPV4, hdr_len=54, gso_size=1448, csum_start=34, csum_offset=16), True),
        (Offloaded(fragment, gso_type=GSO_TCPV4 | GSO_ECN, hdr_len=54, gso_size=1448, csum_start=34,
                   csum_offset=16), True),
        (Offloaded(_tcp_frame(c, s, good), gso_type=GSO_TCPV4 | GSO_ECN, hdr_len=54, gso_size=1448,
                   csum_start=34, csum_offset=16), False),
    ]


# The catalogue: name -> (drop reason counted on the ingress port, builder, what it is).
ATTACKS = {
    "mac-spoof": ("source-mac-spoofed", build_mac_spoof, "source MAC of the neighbour, of another tenant, of nobody"),
    "mac-invalid": ("source-mac-invalid", build_mac_invalid, "multicast, zero and broadcast source MACs"),
    "ipv4-spoof": ("source-ip-spoofed", build_ipv4_spoof, "IPv4 from the neighbour's, an unowned, and 0.0.0.0"),
    "ipv6-spoof": ("source-ip-spoofed", build_ipv6_spoof, "IPv6 from the neighbour's global and link-local, an unowned, and ::"),
    "arp-reply-spoof": ("arp-spoofed", build_arp_reply_spoof, "ARP reply: the neighbour's IP is at my MAC"),
    "arp-gratuitous": ("arp-spoofed", build_arp_gratuitous, "gratuitous ARP request and reply for the neighbour's IP"),
    "arp-sender-mac-spoof": ("arp-spoofed", build_arp_sender_mac_spoof, "ARP sender MAC differs from the Ethernet source"),
    "vlan-8021q": ("vlan-tagged", build_vlan_8021q, "802.1Q-tagged frame"),
    "vlan-8021ad": ("vlan-tagged", build_vlan_8021ad, "802.1ad (0x88a8) and 0x9100 double-tagged frames"),
    "dhcp-offer": ("dhcp-server", build_dhcp_offer, "rogue DHCPv4 offer, UDP 67 -> 68, broadcast"),
    "dhcp-odd-source-port": ("dhcp-server", build_dhcp_odd_source_port, "DHCPv4 offer 6767 -> 68 and DHCPv6 advertise 5470 -> 546"),
    "dhcpv6-advertise": ("dhcp-server", build_dhcpv6_advertise, "rogue DHCPv6 advertise, UDP 547 -> 546, plain and behind a destination options header"),
    "ipv6-ra": ("router-advertisement", build_ipv6_ra, "IPv6 router advertisement with a prefix, plain and behind extension headers"),
    "redirects": ("router-advertisement", build_redirects, "ICMPv6 redirect and ICMPv4 redirect"),
    "nd-na-spoof": ("nd-spoofed", build_nd_na_spoof, "neighbour advertisement claiming the neighbour's fd00::2"),
    "nd-lladdr-spoof": ("nd-spoofed", build_nd_lladdr_spoof, "NA/NS/RS with a foreign link-layer option; DAD for the neighbour's address"),
    "frag-overlap": ("fragment-invalid", build_frag_overlap, "first fragment to port 80, then a rewrite at offset 1 (companion: the first fragment)"),
    "frag-tiny": ("fragment-invalid", build_frag_tiny, "first fragment with 8 bytes of TCP header, rest at offset 1"),
    "frag-nonfirst": ("acl-ingress", build_frag_nonfirst, "lone non-first TCP fragment (caught by deny tcp dport 23)"),
    "frag6": ("fragment-invalid", build_frag6, "IPv6: tiny TCP first fragment, cut header chain, offset-8 TCP fragment, fragmented ND"),
    "frag6-nonfirst": ("acl-ingress", build_frag6_nonfirst, "lone non-first IPv6 TCP fragment (caught by deny tcp dport 23)"),
    "frag6-overlap-exthdr": ("fragment-invalid", build_frag6_overlap_exthdr, "IPv6: first fragment (dest opts + TCP to 80), then TCP ports rewritten to 23 at offset 1 under next header 60 (companion: the first fragment)"),
    "frag6-overlap-nh-lie": ("fragment-invalid", build_frag6_overlap_nh_lie, "IPv6: first fragment TCP to 80, then a rewrite at offset 1 whose fragment header says UDP (companion: the first fragment)"),
    "tcp-telnet": ("acl-ingress", build_tcp_telnet, "TCP SYN to port 23: IPv4, IPv4 with options, IPv6, IPv6 behind extension headers"),
    "truncated-ip": ("malformed-header", build_truncated_ip, "IPv4 total length / IPv6 payload length past the frame; IPv4 IHL 3"),
    "runt": ("malformed-runt", build_runt, "13-byte frame, shorter than an Ethernet header (sent on a raw socket, not sendp)"),
    "giant": ("malformed-giant", build_giant, "4000-byte non-GSO frame (needs the interface MTU raised)"),
    "ethertype-unknown": ("ethertype-not-allowed", build_ethertype_unknown, "ethertypes 0x88b5, 0x8863, 0x0842, LLDP; an 802.3/LLC STP BPDU"),
    "offload-csum": ("offload-csum-mismatch", build_offload_csum, "NEEDS_CSUM at the TCP ports, the UDP source port, the payload, the IP header; on ICMP, a fragment, ARP (companions: TCP and UDP checksums as Linux sets them)"),
    "offload-gso-size": ("offload-gso-size", build_offload_gso_size, "TSO4 gso_size 1 and 87; TSO4 and TSO6 segments of 1501 bytes (companion: TSO4 of 1448)"),
    "offload-gso-mismatch": ("offload-gso-mismatch", build_offload_gso_mismatch, "TSO4, with and without ECN, on an IPv4 first fragment (companion: TSO4 with ECN on a whole packet)"),
}


def frame_bytes(s, frame):
    return frame if isinstance(frame, (bytes, bytearray, Offloaded)) else s.raw(frame)


def send_offloaded(iface, frames):
    """Sends each Offloaded frame behind its virtio-net header on a PACKET_VNET_HDR socket; returns
    an error message when the kernel refuses one (virtio_net_hdr_to_skb says EINVAL)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    sock.bind((iface, 0))
    for f in frames:
        try:
            sock.send(f.header + f.frame)
        except OSError as e:
            return "kernel refused a %d-byte frame behind virtio-net header %s on %s: %s" % (
                len(f.frame), f.header.hex(), iface, e)
    return None


def command_send(args):
    if args.attack not in ATTACKS:
        print("unknown attack %r; known: %s" % (args.attack, ", ".join(ATTACKS)), file=sys.stderr)
        return 2
    reason, build, _ = ATTACKS[args.attack]
    marker = bytes.fromhex(args.marker) if args.marker else os.urandom(8)
    s = _scapy()
    c = Context(args, marker)
    built = [(frame_bytes(s, f), must_drop) for f, must_drop in build(c, s)]
    frames = [f for f, _ in built] * args.count
    offloaded = [f for f in frames if isinstance(f, Offloaded)]
    if offloaded:
        refused = send_offloaded(args.iface, offloaded)
        if refused:
            print(refused, file=sys.stderr)
            return 3
    frames = [f for f in frames if not isinstance(f, Offloaded)]
    short = [f for f in frames if len(f) < 14]
    if short:
        # Not sendp: on EINVAL for a short frame scapy's L2Socket quietly pads it to 60 bytes and
        # sends that instead, which would test something else. Say what the kernel says.
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            sock.bind((args.iface, 0))
            for f in short:
                sock.send(f)
        except OSError as e:
            print("kernel refused to send a %d-byte frame on %s: %s" % (len(short[0]), args.iface, e),
                  file=sys.stderr)
            return 3
    normal = [f for f in frames if len(f) >= 14]
    if normal:
        try:
            s.sendp([s.Raw(f) for f in normal], iface=args.iface, verbose=False)
        except OSError as e:
            print("sending on %s failed: %s" % (args.iface, e), file=sys.stderr)
            return 3
    print(json.dumps({
        "attack": args.attack, "reason": reason, "marker": marker.hex(),
        "dropped": sum(1 for _, d in built if d) * args.count,
        "companions": sum(1 for _, d in built if not d) * args.count,
        "sizes": [len(f) for f, _ in built],
    }))
    return 0


def compile_filter(expression, iface):
    """BPF bytecode for a tcpdump expression, as a sock_fprog-ready byte string."""
    import subprocess
    out = subprocess.run(["tcpdump", "-i", iface, "-ddd", expression], check=True,
                         capture_output=True, text=True).stdout.split()
    count, numbers = int(out[0]), [int(x) for x in out[1:]]
    insns = b"".join(struct.pack("HBBI", *numbers[i:i + 4]) for i in range(0, 4 * count, 4))
    return count, insns


def command_sniff(args):
    import ctypes
    markers = [bytes.fromhex(m) for m in args.marker]
    if not markers and not args.filter:
        print("give --marker or --filter", file=sys.stderr)
        return 2
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((args.iface, ETH_P_ALL))
    if args.filter:
        count, insns = compile_filter(args.filter, args.iface)
        buffer = ctypes.create_string_buffer(insns)
        fprog = struct.pack("HL", count, ctypes.addressof(buffer))
        sock.setsockopt(socket.SOL_SOCKET, 26, fprog)  # SO_ATTACH_FILTER
    # Whatever was queued before the filter was attached is not counted.
    sock.setblocking(False)
    try:
        while True:
            sock.recv(65536)
    except BlockingIOError:
        pass
    stop = [False]

    def on_signal(signum, frame):
        stop[0] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.ready_file:
        with open(args.ready_file, "w") as f:
            f.write("ready\n")
    counts = {m.hex(): 0 for m in markers}
    total = 0
    deadline = time.monotonic() + args.seconds
    while not stop[0] and time.monotonic() < deadline:
        try:
            ready, _, _ = select.select([sock], [], [], 0.05)
        except InterruptedError:
            continue
        if not ready:
            continue
        while True:
            try:
                data, address = sock.recvfrom(65536)
            except BlockingIOError:
                break
            if address[2] == PACKET_OUTGOING:
                continue
            if not markers:
                total += 1
                continue
            hit = False
            for m in markers:
                if m in data:
                    counts[m.hex()] += 1
                    hit = True
            total += hit
    if args.json:
        print(json.dumps({"total": total, "markers": counts}))
    else:
        print(total)
    return 0


def command_flood(args):
    marker = bytes.fromhex(args.marker) if args.marker else os.urandom(8)
    peer = mac_bytes(args.peer_mac)
    src_ip, dst_ip = socket.inet_aton(args.own_ip), socket.inet_aton(args.peer_ip)
    payload = marker + b"\x00" * 10
    udp = struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0, src_ip, dst_ip)
    checksum = 0
    for i in range(0, 20, 2):
        checksum += header[i] << 8 | header[i + 1]
    while checksum > 0xFFFF:
        checksum = (checksum & 0xFFFF) + (checksum >> 16)
    header = header[:10] + struct.pack("!H", ~checksum & 0xFFFF) + header[12:]
    tail = b"\x08\x00" + header + udp

    own = mac_bytes(args.own_mac or interface_mac(args.iface))
    seen = {own, peer}
    frames = []
    while len(frames) < args.count:
        mac = bytearray(os.urandom(6))
        mac[0] = (mac[0] & 0xFC) | 0x02  # unicast, locally administered
        mac = bytes(mac)
        if mac in seen:
            continue
        seen.add(mac)
        frames.append(peer + mac + tail)

    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.bind((args.iface, 0))
    dropped_before = tx_dropped(args.iface)
    start = time.monotonic()
    batch = 64
    sent = 0
    for i in range(0, len(frames), batch):
        for f in frames[i:i + batch]:
            while True:
                try:
                    sock.send(f)
                    break
                except OSError as e:
                    if e.errno not in (errno.ENOBUFS, errno.EAGAIN):
                        raise
                    time.sleep(0.0005)
            sent += 1
        if args.rate > 0:
            ahead = start + sent / args.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    seconds = time.monotonic() - start
    time.sleep(0.2)
    print(json.dumps({"sent": sent, "seconds": round(seconds, 3), "marker": marker.hex(),
                      "tx_dropped": tx_dropped(args.iface) - dropped_before}))
    return 0


def command_list(args):
    print(json.dumps({name: {"reason": reason, "what": what} for name, (reason, _, what) in ATTACKS.items()},
                     indent=2))
    return 0


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def addresses(p):
        p.add_argument("--own-mac", default=DEFAULTS["own_mac"], help="default: the interface's MAC")
        p.add_argument("--peer-mac", default=DEFAULTS["peer_mac"])
        p.add_argument("--foreign-mac", default=DEFAULTS["foreign_mac"])
        p.add_argument("--own-ip", default=DEFAULTS["own_ip"])
        p.add_argument("--peer-ip", default=DEFAULTS["peer_ip"])
        p.add_argument("--own-ip6", default=DEFAULTS["own_ip6"])
        p.add_argument("--peer-ip6", default=DEFAULTS["peer_ip6"])

    send = sub.add_parser("send", help="send one attack's frames")
    send.add_argument("--iface", required=True)
    send.add_argument("--attack", required=True, help="one of: " + ", ".join(ATTACKS))
    send.add_argument("--count", type=int, default=1, help="rounds: each sends all of the attack's frames")
    send.add_argument("--marker", help="hex; default 8 random bytes")
    addresses(send)

    sniff = sub.add_parser("sniff", help="count received frames carrying a marker")
    sniff.add_argument("--iface", required=True)
    sniff.add_argument("--marker", action="append", default=[], help="hex; repeatable")
    sniff.add_argument("--filter", help="BPF expression (tcpdump syntax)")
    sniff.add_argument("--seconds", type=float, default=5.0)
    sniff.add_argument("--ready-file")
    sniff.add_argument("--json", action="store_true")

    flood = sub.add_parser("flood-macs", help="unicast frames from many random source MACs")
    flood.add_argument("--iface", required=True)
    flood.add_argument("--count", type=int, default=10000)
    flood.add_argument("--rate", type=float, default=20000, help="frames per second; 0: as fast as possible")
    flood.add_argument("--marker", help="hex; default 8 random bytes")
    addresses(flood)

    sub.add_parser("list", help="print the attack catalogue")

    args = parser.parse_args(argv)
    return {"send": command_send, "sniff": command_sniff, "flood-macs": command_flood,
            "list": command_list}[args.command](args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
