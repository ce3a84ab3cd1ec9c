/* The virtio-net checks (ARP, ICMP echo, an address that must stay silent) and the UDP
 * benchmark. Queue 0 receives, queue 1 transmits; every buffer carries the 12-byte
 * virtio_net_hdr_v1 (VERSION_1 always has num_buffers) and no offload is negotiated, so frames
 * arrive whole and with their checksums. The guest also answers ARP and echo requests for its
 * own address, so the peer can ping it. */
#include "guest.h"

#define VIRTIO_NET_F_MAC (1ull << 5)
#define NET_HEADER 12
#define BUFFER 2048
#define RX_BUFFERS 128
#define TX_SLOTS 128
#define MAX_PINGS 64
#define ETH_MIN 60

struct net {
    struct virtio_device *dev;
    struct virtqueue *rx, *tx;
    u8 mac[6];
    u32 ip;
    u8 *rx_buffers, *tx_buffers;
    u16 tx_free[TX_SLOTS];
    int tx_free_count, tx_slots;
    u64 rx_frames, tx_frames, rx_foreign, tx_dropped;
    /* ARP: the address being resolved and what answered. */
    u32 arp_target;
    bool arp_answered;
    u8 arp_mac[6];
    /* ICMP echo. */
    u32 ping_target;
    u16 ping_id;
    u64 ping_sent[MAX_PINGS], ping_rtt[MAX_PINGS];
    bool ping_seen[MAX_PINGS];
    u32 ping_replies;
    u64 arp_answered_for_us, echo_answered;
};

static void put16(u8 *p, u16 v) {
    p[0] = (u8)(v >> 8);
    p[1] = (u8)v;
}
static void put32(u8 *p, u32 v) {
    put16(p, (u16)(v >> 16));
    put16(p + 2, (u16)v);
}
static u16 get16(const u8 *p) { return (u16)(p[0] << 8 | p[1]); }
static u32 get32(const u8 *p) { return (u32)get16(p) << 16 | get16(p + 2); }

static u16 checksum(const u8 *data, size_t length) {
    u32 sum = 0;
    for (size_t i = 0; i + 1 < length; i += 2) sum += (u32)(data[i] << 8 | data[i + 1]);
    if (length & 1) sum += (u32)data[length - 1] << 8;
    while (sum >> 16) sum = (sum & 0xFFFF) + (sum >> 16);
    return (u16)~sum;
}

static void format_ip(char *out, u32 ip) {
    format(out, 16, "%u.%u.%u.%u", ip >> 24, (ip >> 16) & 0xFF, (ip >> 8) & 0xFF, ip & 0xFF);
}
static void format_mac(char *out, const u8 *mac) {
    format(out, 18, "%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
}

static u64 cycles_for(u64 ms) { return tsc_khz ? ms_to_cycles(ms) : ms * 4000000ull; }

/* ---- Transmit ---- */

static void reap_tx(struct net *n) {
    u64 token;
    u32 length;
    while (vq_get(n->tx, &token, &length)) {
        if (token < (u64)n->tx_slots && n->tx_free_count < n->tx_slots) n->tx_free[n->tx_free_count++] = (u16)token;
    }
}

/* Queues a frame (padded to the Ethernet minimum); the caller kicks. */
static bool send_frame(struct net *n, const u8 *frame, u32 length) {
    if (n->tx_free_count == 0) reap_tx(n);
    if (n->tx_free_count == 0 || length > BUFFER - NET_HEADER) {
        n->tx_dropped++;
        return false;
    }
    u16 slot = n->tx_free[--n->tx_free_count];
    u8 *buffer = n->tx_buffers + (u64)slot * BUFFER;
    memset(buffer, 0, NET_HEADER + ETH_MIN);
    memcpy(buffer + NET_HEADER, frame, length);
    if (length < ETH_MIN) length = ETH_MIN;
    struct vbuf b = {(u64)buffer, NET_HEADER + length, false};
    if (!vq_add(n->tx, &b, 1, slot)) {
        n->tx_free[n->tx_free_count++] = slot;
        n->tx_dropped++;
        return false;
    }
    n->tx_frames++;
    return true;
}

static void ethernet(u8 *frame, const u8 *destination, const u8 *source, u16 type) {
    memcpy(frame, destination, 6);
    memcpy(frame + 6, source, 6);
    put16(frame + 12, type);
}

static void send_arp(struct net *n, u16 operation, const u8 *target_mac, u32 target_ip) {
    static const u8 broadcast[6] = {0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF};
    u8 frame[ETH_MIN];
    memset(frame, 0, sizeof frame);
    ethernet(frame, operation == 1 ? broadcast : target_mac, n->mac, 0x0806);
    u8 *a = frame + 14;
    put16(a, 1);
    put16(a + 2, 0x0800);
    a[4] = 6;
    a[5] = 4;
    put16(a + 6, operation);
    memcpy(a + 8, n->mac, 6);
    put32(a + 14, n->ip);
    if (operation == 2) memcpy(a + 18, target_mac, 6);
    put32(a + 24, target_ip);
    send_frame(n, frame, sizeof frame);
}

/* An IPv4 header for `payload` bytes of `protocol` (no options, DF, TTL 64). */
static void ipv4(u8 *ip, u32 source, u32 destination, u8 protocol, u16 payload, u16 id) {
    ip[0] = 0x45;
    ip[1] = 0;
    put16(ip + 2, (u16)(20 + payload));
    put16(ip + 4, id);
    put16(ip + 6, 0x4000);
    ip[8] = 64;
    ip[9] = protocol;
    put16(ip + 10, 0);
    put32(ip + 12, source);
    put32(ip + 16, destination);
    put16(ip + 10, checksum(ip, 20));
}

static void send_echo_request(struct net *n, u16 sequence) {
    u8 frame[14 + 20 + 8 + 56];
    ethernet(frame, n->arp_mac, n->mac, 0x0800);
    ipv4(frame + 14, n->ip, n->ping_target, 1, 8 + 56, sequence);
    u8 *icmp = frame + 34;
    icmp[0] = 8;
    icmp[1] = 0;
    put16(icmp + 2, 0);
    put16(icmp + 4, n->ping_id);
    put16(icmp + 6, sequence);
    for (int i = 0; i < 56; i++) icmp[8 + i] = (u8)('a' + i % 26);
    put16(icmp + 2, checksum(icmp, 8 + 56));
    if (sequence < MAX_PINGS) n->ping_sent[sequence] = rdtsc();
    send_frame(n, frame, sizeof frame);
}

/* ---- Receive ---- */

static void handle_arp(struct net *n, const u8 *frame, u32 length) {
    if (length < 14 + 28) return;
    const u8 *a = frame + 14;
    if (get16(a) != 1 || get16(a + 2) != 0x0800 || a[4] != 6 || a[5] != 4) return;
    u16 operation = get16(a + 6);
    u32 sender = get32(a + 14), target = get32(a + 24);
    if (operation == 1 && target == n->ip && n->ip) {
        send_arp(n, 2, a + 8, sender);
        n->arp_answered_for_us++;
    } else if (operation == 2 && sender == n->arp_target && n->arp_target) {
        if (!n->arp_answered) memcpy(n->arp_mac, a + 8, 6);
        n->arp_answered = true;
    }
}

static void handle_ipv4(struct net *n, const u8 *frame, u32 length) {
    if (length < 14 + 20) return;
    const u8 *ip = frame + 14;
    u32 header = (u32)(ip[0] & 0xF) * 4;
    u32 total = get16(ip + 2);
    if ((ip[0] >> 4) != 4 || header < 20 || total < header || 14 + total > length) return;
    if (get32(ip + 16) != n->ip || ip[9] != 1 || total - header < 8) return;
    const u8 *icmp = ip + header;
    u32 icmp_length = total - header;
    if (icmp[0] == 0 && get16(icmp + 4) == n->ping_id && get32(ip + 12) == n->ping_target) {
        u16 sequence = get16(icmp + 6);
        if (sequence < MAX_PINGS && !n->ping_seen[sequence]) {
            n->ping_seen[sequence] = true;
            n->ping_rtt[sequence] = rdtsc() - n->ping_sent[sequence];
            n->ping_replies++;
        }
    } else if (icmp[0] == 8 && icmp_length <= 1400) {
        /* Echo the request back: the peer may ping the guest. */
        u8 reply[14 + 20 + 1400];
        ethernet(reply, frame + 6, n->mac, 0x0800);
        ipv4(reply + 14, n->ip, get32(ip + 12), 1, (u16)icmp_length, get16(ip + 4));
        memcpy(reply + 34, icmp, icmp_length);
        reply[34] = 0;
        put16(reply + 36, 0);
        put16(reply + 36, checksum(reply + 34, icmp_length));
        send_frame(n, reply, 34 + icmp_length);
        n->echo_answered++;
    }
}

/* Reaps transmitted and received buffers, handles frames, gives receive buffers back and kicks
 * each queue at most once. */
static void poll(struct net *n) {
    reap_tx(n);
    u64 token;
    u32 length;
    bool refilled = false;
    while (vq_get(n->rx, &token, &length)) {
        if (token >= RX_BUFFERS) continue;
        u8 *buffer = n->rx_buffers + token * BUFFER;
        n->rx_frames++;
        if (length > NET_HEADER + 14 && length <= BUFFER) {
            const u8 *frame = buffer + NET_HEADER;
            u32 frame_length = length - NET_HEADER;
            bool for_us = memcmp(frame, n->mac, 6) == 0 || (frame[0] & 1);
            if (!for_us) n->rx_foreign++;
            else if (get16(frame + 12) == 0x0806) handle_arp(n, frame, frame_length);
            else if (get16(frame + 12) == 0x0800) handle_ipv4(n, frame, frame_length);
        }
        struct vbuf b = {(u64)buffer, BUFFER, true};
        vq_add(n->rx, &b, 1, token);
        refilled = true;
    }
    if (refilled) vq_kick(n->rx);
    vq_kick(n->tx);
}

/* ---- Setup ---- */

static bool net_open(struct net *n, struct virtio_device *dev, const char **why) {
    memset(n, 0, sizeof *n);
    n->dev = dev;
    n->ip = options.ip;
    if (!virtio_negotiate(dev, VIRTIO_NET_F_MAC | VIRTIO_F_EVENT_IDX, why)) return false;
    virtio_configure_msix(dev, options.msix);
    if (!virtio_setup_queue(dev, 0, 256, why) || !virtio_setup_queue(dev, 1, 256, why)) return false;
    n->rx = &dev->queues[0];
    n->tx = &dev->queues[1];
    const char *source = "device";
    if (dev->driver_features & VIRTIO_NET_F_MAC) {
        for (u32 i = 0; i < 6; i++) n->mac[i] = virtio_config_read8(dev, i);
    } else if (options.have_mac) {
        memcpy(n->mac, options.mac, 6);
        source = "cmdline";
    } else {
        static const u8 fallback[6] = {0x52, 0x54, 0x00, 0xB4, 0x00, 0x01};
        memcpy(n->mac, fallback, 6);
        source = "default";
    }
    if (options.have_mac && (dev->driver_features & VIRTIO_NET_F_MAC) && memcmp(options.mac, n->mac, 6) != 0) {
        memcpy(n->mac, options.mac, 6);
        source = "cmdline";
    }
    virtio_driver_ok(dev);
    if (virtio_status(dev) & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED)) {
        *why = "net device failed at DRIVER_OK";
        return false;
    }
    n->rx_buffers = alloc_pages((u64)RX_BUFFERS * BUFFER);
    u16 rx_count = n->rx->size < RX_BUFFERS ? n->rx->size : RX_BUFFERS;
    for (u16 i = 0; i < rx_count; i++) {
        struct vbuf b = {(u64)(n->rx_buffers + (u64)i * BUFFER), BUFFER, true};
        vq_add(n->rx, &b, 1, i);
    }
    vq_kick(n->rx);
    n->tx_slots = n->tx->size < TX_SLOTS ? n->tx->size : TX_SLOTS;
    n->tx_buffers = alloc_pages((u64)n->tx_slots * BUFFER);
    for (int i = 0; i < n->tx_slots; i++) n->tx_free[i] = (u16)(n->tx_slots - 1 - i);
    n->tx_free_count = n->tx_slots;
    n->ping_id = (u16)(rdtsc() >> 4);
    char mac[18], ip[16];
    format_mac(mac, n->mac);
    format_ip(ip, n->ip);
    struct pci_function *p = dev->pci;
    say("net %02x:%02x.%x mac=%s mac_source=%s ip=%s features=0x%llx queue_size=%u/%u event_idx=%d msix=%d", p->bus,
        p->device, p->function, mac, source, ip, dev->driver_features, n->rx->size, n->tx->size,
        n->rx->event_idx ? 1 : 0, dev->msix_enabled ? 1 : 0);
    return true;
}

/* ARP requests every `interval_ms` until an answer or `tries` run out; polls meanwhile. */
static bool resolve(struct net *n, u32 target, int tries, u64 interval_ms, u64 *waited_us) {
    n->arp_target = target;
    n->arp_answered = false;
    u64 start = rdtsc();
    for (int attempt = 0; attempt < tries && !n->arp_answered; attempt++) {
        send_arp(n, 1, NULL, target);
        vq_kick(n->tx);
        u64 sent = rdtsc();
        while (!n->arp_answered && rdtsc() - sent < cycles_for(interval_ms)) {
            poll(n);
            cpu_relax();
        }
    }
    *waited_us = cycles_to_us(rdtsc() - start);
    return n->arp_answered;
}

static void net_summary(struct net *n) {
    say("net doorbells=%llu tx=%llu rx=%llu rx_foreign=%llu tx_dropped=%llu suppressed=%llu answered_arp=%llu "
        "answered_echo=%llu",
        n->rx->doorbells + n->tx->doorbells, n->tx_frames, n->rx_frames, n->rx_foreign, n->tx_dropped,
        n->rx->suppressed + n->tx->suppressed, n->arp_answered_for_us, n->echo_answered);
}

bool net_test(struct virtio_device *dev, const char **why) {
    static struct net n;
    if (!net_open(&n, dev, why)) return false;
    char ip[16], mac[18];
    u64 timeout = options.timeout_ms;

    if (options.have_ping) {
        u64 waited;
        format_ip(ip, options.ping);
        if (!resolve(&n, options.ping, 3, timeout, &waited)) {
            say("net arp %s no-reply us=%llu", ip, waited);
            *why = "net no ARP reply from the peer";
            return false;
        }
        format_mac(mac, n.arp_mac);
        say("net arp %s is-at %s us=%llu", ip, mac, waited);

        u64 count = options.pings ? options.pings : 4;
        if (count > MAX_PINGS) count = MAX_PINGS;
        n.ping_target = options.ping;
        for (u16 s = 0; s < count; s++) send_echo_request(&n, s);
        vq_kick(n.tx);
        u64 start = rdtsc();
        while (n.ping_replies < count && rdtsc() - start < cycles_for(timeout)) {
            poll(&n);
            cpu_relax();
        }
        u64 best = ~0ull, worst = 0;
        for (u16 s = 0; s < count; s++) {
            if (!n.ping_seen[s]) continue;
            if (n.ping_rtt[s] < best) best = n.ping_rtt[s];
            if (n.ping_rtt[s] > worst) worst = n.ping_rtt[s];
        }
        if (n.ping_replies < count) {
            say("net ping %s replies=%u/%llu", ip, n.ping_replies, count);
            *why = "net echo replies missing";
            return false;
        }
        say("net ping %s ok replies=%u/%llu rtt_us_min=%llu rtt_us_max=%llu", ip, n.ping_replies, count,
            cycles_to_us(best), cycles_to_us(worst));
    }

    /* Addresses that must not answer: two requests, `timeout` apart, and nothing back. */
    for (int i = 0; i < options.isolated_count; i++) {
        u64 waited;
        format_ip(ip, options.isolated[i]);
        if (resolve(&n, options.isolated[i], 2, timeout, &waited)) {
            format_mac(mac, n.arp_mac);
            say("net isolated %s answered-by %s", ip, mac);
            *why = "net isolated address answered";
            return false;
        }
        say("net isolated %s ok no-reply us=%llu", ip, waited);
    }
    net_summary(&n);
    virtio_reset(dev);
    return true;
}

bool net_bench(struct virtio_device *dev, const char **why) {
    static struct net n;
    if (!net_open(&n, dev, why)) return false;
    if (!options.have_udp) {
        *why = "bench=udp needs udp=IP:PORT";
        return false;
    }
    char ip[16], mac[18];
    format_ip(ip, options.udp_ip);
    u64 waited;
    if (!resolve(&n, options.udp_ip, 3, options.timeout_ms, &waited)) {
        say("net arp %s no-reply us=%llu", ip, waited);
        *why = "net no ARP reply from the UDP target";
        return false;
    }
    format_mac(mac, n.arp_mac);
    say("net arp %s is-at %s us=%llu", ip, mac, waited);

    /* 60 bytes: Ethernet 14, IPv4 20, UDP 8, payload 18 (64 on the wire with the FCS). */
    u8 frame[ETH_MIN];
    ethernet(frame, n.arp_mac, n.mac, 0x0800);
    ipv4(frame + 14, n.ip, options.udp_ip, 17, 8 + 18, 0);
    u8 *udp = frame + 34;
    put16(udp, 40000);
    put16(udp + 2, options.udp_port);
    put16(udp + 4, 8 + 18);
    put16(udp + 6, 0); /* no checksum (IPv4 allows it) */
    memcpy(udp + 8, "bhtest-udp", 10);

    u64 count = options.count, limit = options.seconds ? options.seconds * 1000ull * tsc_khz : 0;
    if (!count && !limit) count = 100000;
    if (options.seconds && !tsc_khz) {
        *why = "bench seconds= needs a TSC frequency";
        return false;
    }
    struct exit_counts before = exits;
    u64 doorbells_before = n.tx->doorbells + n.rx->doorbells;
    u64 sent = 0, start = rdtsc(), last_progress = start, stall = cycles_for(10000);
    while (true) {
        u64 now = rdtsc();
        bool more = (!count || sent < count) && (!limit || now - start < limit);
        if (!more) break;
        int free_before = n.tx_free_count;
        reap_tx(&n);
        if (n.tx_free_count != free_before) last_progress = now;
        bool queued = false;
        while (n.tx_free_count > 0 && (!count || sent < count)) {
            for (int i = 0; i < 8; i++) udp[18 + i] = (u8)(sent >> (8 * i));
            if (!send_frame(&n, frame, sizeof frame)) break;
            sent++;
            queued = true;
        }
        if (queued) {
            vq_kick(n.tx);
            last_progress = rdtsc();
        } else if (now - last_progress > stall) {
            *why = "net transmit stalled";
            return false;
        }
        /* Keep receive flowing (the peer's ARP requests get answers). */
        poll(&n);
    }
    /* Wait for the device to take the last frames. */
    u64 drain = rdtsc();
    while (n.tx_free_count < n.tx_slots && rdtsc() - drain < cycles_for(5000)) {
        reap_tx(&n);
        cpu_relax();
    }
    u64 cycles = rdtsc() - start;
    u64 doorbells = n.tx->doorbells + n.rx->doorbells - doorbells_before;
    u64 exit_count = (exits.pio - before.pio) + (exits.mmio - before.mmio);
    u64 us = cycles_to_us(cycles);
    u64 pps = us ? sent * 1000000ull / us : 0;
    u64 per = sent ? doorbells * 1000 / sent : 0;
    say("bench udp frames=%llu bytes=%u cycles=%llu seconds=%llu.%03llu pps=%llu doorbells=%llu "
        "doorbells_per_frame=%llu.%03llu exits=%llu",
        sent, ETH_MIN, cycles, us / 1000000, us / 1000 % 1000, pps, doorbells, per / 1000, per % 1000, exit_count);
    net_summary(&n);
    virtio_reset(dev);
    return true;
}
