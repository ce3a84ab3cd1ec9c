/*
 * plain-forwarder: the cost floor of moving frames through user space, a peer of Bulkhead's
 * switch in Benchmarks/run-system.sh.
 *
 * It creates two TAP devices the way Bulkhead's TapQueue does (IFF_TAP | IFF_NO_PI |
 * IFF_VNET_HDR | IFF_MULTI_QUEUE, a 12-byte virtio-net header, checksum and TSO offloads), and
 * copies every frame read from one, virtio-net header included, to the other: no parsing, no
 * MAC learning, no checks, no counters but its own. GSO super-frames of up to 64 KB pass whole,
 * as through Bulkhead. What Bulkhead spends beyond this is the cost of its policy and its engine.
 *
 *   plain-forwarder [--queues N] [--thread-per-direction] IFNAME_A IFNAME_B
 *
 *   --queues N               queues per device (default 1). Worker i owns queue i of both
 *                            devices: a frame read on queue i of one is written to queue i of
 *                            the other, so workers share nothing (Bulkhead's worker layout).
 *   --thread-per-direction   two threads per queue, each a blocking read-then-write loop for
 *                            one direction, instead of one poll(2) loop per queue for both.
 *
 * The devices are not persistent: they go when the process exits. It prints
 * "plain-forwarder ready" once both exist (the caller then moves them into namespaces and
 * configures them), and the frames and bytes it forwarded on SIGTERM or SIGINT, then exits 0.
 *
 * Build: cc -O2 -pthread -o plain-forwarder plain-forwarder.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define VNET_HDR_SIZE 12          /* struct virtio_net_hdr_mrg_rxbuf, as Bulkhead uses */
#define MAX_QUEUES 64
/* A GSO super-frame is at most 64 KB of IP packet plus its Ethernet header; the header and
 * some slack on top. A read into a smaller buffer would truncate the frame. */
#define FRAME_BUFFER (VNET_HDR_SIZE + 65536 + 256)
/* Frames a poll loop reads from one side before it looks at the other. */
#define BURST 64

struct direction_counters {
    _Atomic uint64_t frames;
    _Atomic uint64_t bytes;
    _Atomic uint64_t write_errors;
};

/* Index 0: from A to B, 1: from B to A. */
static struct direction_counters counters[MAX_QUEUES][2];

static void fail(const char *what, const char *name) {
    fprintf(stderr, "plain-forwarder: %s %s: %s\n", what, name, strerror(errno));
    exit(1);
}

/* Opens one more queue of TAP device `name` (the first call creates the device). */
static int tap_queue_open(const char *name) {
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) fail("open /dev/net/tun for", name);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE;
    if (strlen(name) >= IFNAMSIZ) { errno = ENAMETOOLONG; fail("interface name", name); }
    strcpy(ifr.ifr_name, name);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) fail("ioctl(TUNSETIFF)", name);
    int header_size = VNET_HDR_SIZE;
    if (ioctl(fd, TUNSETVNETHDRSZ, &header_size) < 0) fail("ioctl(TUNSETVNETHDRSZ)", name);
    /* The same offloads as Bulkhead's TAP queues: the kernel hands over (and accepts) GSO
     * super-frames with a partial checksum; nothing is segmented or checksummed here. */
    unsigned int offloads = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
    if (ioctl(fd, TUNSETOFFLOAD, offloads) < 0) fail("ioctl(TUNSETOFFLOAD)", name);
    return fd;
}

/* Writes one frame; a failed write drops the frame (as a full queue of a NIC would) and is
 * counted. */
static void forward(int to, const unsigned char *frame, ssize_t length, struct direction_counters *c) {
    ssize_t w;
    do { w = write(to, frame, (size_t)length); } while (w < 0 && errno == EINTR);
    if (w < 0) { atomic_fetch_add_explicit(&c->write_errors, 1, memory_order_relaxed); return; }
    atomic_fetch_add_explicit(&c->frames, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&c->bytes, (uint64_t)(length - VNET_HDR_SIZE), memory_order_relaxed);
}

struct worker {
    int queue;
    int fd[2];        /* queue `queue` of A and of B */
    int direction;    /* thread-per-direction mode: 0 reads A, 1 reads B; -1: poll both */
};

/* One direction: blocking read, write. */
static void *direction_loop(void *arg) {
    struct worker *w = arg;
    unsigned char *frame = malloc(FRAME_BUFFER);
    if (frame == NULL) { fprintf(stderr, "plain-forwarder: out of memory\n"); exit(1); }
    int from = w->fd[w->direction], to = w->fd[1 - w->direction];
    struct direction_counters *c = &counters[w->queue][w->direction];
    for (;;) {
        ssize_t n = read(from, frame, FRAME_BUFFER);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            fail("read from queue of", w->direction ? "B" : "A");
        }
        if (n > VNET_HDR_SIZE) forward(to, frame, n, c);
    }
    return NULL;
}

/* Both directions of one queue: poll, then up to BURST frames from each readable side. */
static void *poll_loop(void *arg) {
    struct worker *w = arg;
    unsigned char *frame = malloc(FRAME_BUFFER);
    if (frame == NULL) { fprintf(stderr, "plain-forwarder: out of memory\n"); exit(1); }
    for (int i = 0; i < 2; i++) {
        int flags = fcntl(w->fd[i], F_GETFL);
        if (flags < 0 || fcntl(w->fd[i], F_SETFL, flags | O_NONBLOCK) < 0) fail("fcntl(O_NONBLOCK) on", i ? "B" : "A");
    }
    struct pollfd p[2] = { { .fd = w->fd[0], .events = POLLIN }, { .fd = w->fd[1], .events = POLLIN } };
    for (;;) {
        int r = poll(p, 2, -1);
        if (r < 0) {
            if (errno == EINTR) continue;
            fail("poll", "");
        }
        for (int d = 0; d < 2; d++) {
            if (!(p[d].revents & POLLIN)) continue;
            for (int k = 0; k < BURST; k++) {
                ssize_t n = read(w->fd[d], frame, FRAME_BUFFER);
                if (n < 0) {
                    if (errno == EINTR) continue;
                    if (errno == EAGAIN) break;
                    fail("read from queue of", d ? "B" : "A");
                }
                if (n > VNET_HDR_SIZE) forward(w->fd[1 - d], frame, n, &counters[w->queue][d]);
            }
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    int queues = 1, per_direction = 0, i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "--queues") == 0 && i + 1 < argc) {
            char *end;
            long q = strtol(argv[++i], &end, 10);
            if (*end != 0 || q < 1 || q > MAX_QUEUES) { fprintf(stderr, "plain-forwarder: --queues 1...%d\n", MAX_QUEUES); return 2; }
            queues = (int)q;
        } else if (strcmp(argv[i], "--thread-per-direction") == 0) {
            per_direction = 1;
        } else {
            break;
        }
    }
    if (argc - i != 2) {
        fprintf(stderr, "usage: plain-forwarder [--queues N] [--thread-per-direction] IFNAME_A IFNAME_B\n");
        return 2;
    }
    const char *names[2] = { argv[i], argv[i + 1] };

    /* SIGTERM and SIGINT are taken by sigwait in the main thread; the workers inherit the mask. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);

    static struct worker workers[MAX_QUEUES * 2];
    int nworkers = 0;
    for (int q = 0; q < queues; q++) {
        int a = tap_queue_open(names[0]), b = tap_queue_open(names[1]);
        if (per_direction) {
            workers[nworkers++] = (struct worker){ .queue = q, .fd = { a, b }, .direction = 0 };
            workers[nworkers++] = (struct worker){ .queue = q, .fd = { a, b }, .direction = 1 };
        } else {
            workers[nworkers++] = (struct worker){ .queue = q, .fd = { a, b }, .direction = -1 };
        }
    }
    for (int k = 0; k < nworkers; k++) {
        pthread_t t;
        void *(*loop)(void *) = workers[k].direction < 0 ? poll_loop : direction_loop;
        if ((errno = pthread_create(&t, NULL, loop, &workers[k])) != 0) fail("pthread_create", "");
        char name[16];
        snprintf(name, sizeof name, "fwd-q%d%s", workers[k].queue,
                 workers[k].direction < 0 ? "" : workers[k].direction ? "-ba" : "-ab");
        pthread_setname_np(t, name);
    }
    printf("plain-forwarder ready: %s <-> %s, %d queue(s), %s\n", names[0], names[1], queues,
           per_direction ? "a thread per direction" : "one poll loop per queue");
    fflush(stdout);

    int sig = 0;
    while (sigwait(&stop, &sig) != 0) {}
    uint64_t total[2][3] = { { 0 } };
    for (int q = 0; q < queues; q++)
        for (int d = 0; d < 2; d++) {
            total[d][0] += atomic_load_explicit(&counters[q][d].frames, memory_order_relaxed);
            total[d][1] += atomic_load_explicit(&counters[q][d].bytes, memory_order_relaxed);
            total[d][2] += atomic_load_explicit(&counters[q][d].write_errors, memory_order_relaxed);
        }
    printf("plain-forwarder stopped (signal %d): %s->%s frames=%llu bytes=%llu write_errors=%llu; "
           "%s->%s frames=%llu bytes=%llu write_errors=%llu\n", sig,
           names[0], names[1], (unsigned long long)total[0][0], (unsigned long long)total[0][1], (unsigned long long)total[0][2],
           names[1], names[0], (unsigned long long)total[1][0], (unsigned long long)total[1][1], (unsigned long long)total[1][2]);
    fflush(stdout);
    _exit(0);
}
