// A UDP generator for the vhost part of Benchmarks/run-system.sh: sends datagrams of PAYLOAD
// bytes to DST_IP:DST_PORT as fast as the socket takes them, in batches of 64 with sendmmsg(2),
// for SECONDS, then prints "udpflood sent=N errors=E seconds=S". Errors (ENOBUFS from a full
// queue, ECONNREFUSED after an ICMP error) are counted and the flood goes on.
//
//   cc -O2 -o udp-flood udp-flood.c
//   ip netns exec NS ./udp-flood 10.88.0.2 9 22 5
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s DST_IP DST_PORT PAYLOAD_BYTES SECONDS\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[2]), payload = atoi(argv[3]);
    double seconds = atof(argv[4]);
    if (port <= 0 || port > 65535 || payload < 0 || payload > 1472 || seconds <= 0) {
        fprintf(stderr, "udp-flood: bad arguments\n");
        return 2;
    }
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    if (inet_pton(AF_INET, argv[1], &to.sin_addr) != 1) {
        fprintf(stderr, "udp-flood: bad address %s\n", argv[1]);
        return 2;
    }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&to, sizeof to) != 0) {
        perror("udp-flood: socket/connect");
        return 1;
    }
    int buffer = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buffer, sizeof buffer);

    static char data[1472];
    for (int i = 0; i < payload; i++) data[i] = (char)(i * 7 + 1);
    struct iovec iov[BATCH];
    struct mmsghdr messages[BATCH];
    memset(messages, 0, sizeof messages);
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = data;
        iov[i].iov_len = (size_t)payload;
        messages[i].msg_hdr.msg_iov = &iov[i];
        messages[i].msg_hdr.msg_iovlen = 1;
    }
    unsigned long long sent = 0, errors = 0;
    double start = now(), end = start + seconds;
    unsigned rounds = 0;
    while (1) {
        if ((++rounds & 15) == 0 && now() >= end) break;
        int n = sendmmsg(fd, messages, BATCH, 0);
        if (n > 0) sent += (unsigned long long)n;
        else if (errno != EINTR) errors++;
    }
    printf("udpflood sent=%llu errors=%llu seconds=%.3f\n", sent, errors, now() - start);
    return 0;
}
