/* The flooder of bench/flood.py: forged WireGuard initiations from several source ports,
 * interleaved datagram by datagram (as many senders would), at a fixed offered rate.
 *
 *   flood_sender DST_IP DST_PORT SRC_IP BASE_PORT PORTS RATE SECONDS MESSAGES_FILE
 *
 * MESSAGES_FILE holds 148-byte initiations (valid mac1, made by flood.py). Each is sent from
 * source port BASE_PORT + (i % PORTS) through one raw socket (IPPROTO_RAW: we write the IPv4
 * and UDP headers, so consecutive datagrams may carry different source ports, and sendmmsg
 * sends 64 per system call). PORTS UDP sockets are bound to those ports so the cookie replies
 * land somewhere (no ICMP back to the victim) and are counted. Paced by CLOCK_MONOTONIC; stops
 * after SECONDS (at most 60). Prints one JSON object. Root only (raw socket).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/ip.h>
#include <netinet/udp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MSG 148
#define BATCH 64
#define MAXPORTS 64
#define MAXPOOL 4096

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: %s DST_IP DST_PORT SRC_IP BASE_PORT PORTS RATE SECONDS MESSAGES_FILE\n", argv[0]);
        return 2;
    }
    struct in_addr dst, src;
    if (inet_pton(AF_INET, argv[1], &dst) != 1 || inet_pton(AF_INET, argv[3], &src) != 1) return 2;
    int dport = atoi(argv[2]), base = atoi(argv[4]), ports = atoi(argv[5]);
    double rate = atof(argv[6]), seconds = atof(argv[7]);
    if (ports < 1 || ports > MAXPORTS || rate <= 0 || seconds <= 0 || seconds > 60) return 2;

    static unsigned char pool[MAXPOOL][MSG];
    FILE *f = fopen(argv[8], "rb");
    if (!f) { perror("messages"); return 1; }
    int count = 0;
    while (count < MAXPOOL && fread(pool[count], MSG, 1, f) == 1) count++;
    fclose(f);
    if (count < BATCH) { fprintf(stderr, "need at least %d messages\n", BATCH); return 1; }

    int raw = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
    if (raw < 0) { perror("raw socket"); return 1; }
    int big = 4 << 20;
    setsockopt(raw, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof big);
    int rx[MAXPORTS];
    for (int p = 0; p < ports; p++) {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr = src, .sin_port = htons(base + p)};
        rx[p] = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        if (rx[p] < 0 || bind(rx[p], (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); return 1; }
        setsockopt(rx[p], SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big);
    }

    /* Packets: IPv4 header (the kernel fills in the checksum and id), UDP header (checksum 0:
       none, allowed over IPv4), the message. */
    enum { PKT = sizeof(struct iphdr) + sizeof(struct udphdr) + MSG };
    static unsigned char pkts[MAXPOOL][PKT];
    for (int i = 0; i < count; i++) {
        struct iphdr *ip = (struct iphdr *)pkts[i];
        struct udphdr *udp = (struct udphdr *)(pkts[i] + sizeof *ip);
        memset(pkts[i], 0, PKT);
        ip->version = 4; ip->ihl = 5; ip->ttl = 64; ip->protocol = IPPROTO_UDP;
        ip->tot_len = htons(PKT); ip->saddr = src.s_addr; ip->daddr = dst.s_addr;
        udp->source = htons(base + i % ports); udp->dest = htons(dport);
        udp->len = htons(sizeof *udp + MSG);
        memcpy(pkts[i] + sizeof *ip + sizeof *udp, pool[i], MSG);
    }
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_addr = dst};
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    static unsigned char rbuf[BATCH][256];
    struct mmsghdr rmsgs[BATCH];
    struct iovec riov[BATCH];
    for (int j = 0; j < BATCH; j++) {
        riov[j].iov_base = rbuf[j]; riov[j].iov_len = sizeof rbuf[j];
        memset(&rmsgs[j], 0, sizeof rmsgs[j]);
        rmsgs[j].msg_hdr.msg_iov = &riov[j]; rmsgs[j].msg_hdr.msg_iovlen = 1;
    }

    long long sent = 0, failed = 0, replies = 0;
    long long next = 0;
    double start = now(), end = start + seconds;
    for (long long turn = 0;; turn++) {
        double t = now();
        if (t >= end) break;
        long long due = (long long)((t - start) * rate);
        if (sent + failed >= due) {
            struct timespec nap = {0, (long)(1e9 * (sent + failed - due + 1) / rate)};
            if (nap.tv_nsec > 2000000) nap.tv_nsec = 2000000;
            nanosleep(&nap, NULL);
        } else {
            int n = BATCH;
            if (due - sent - failed < n) n = (int)(due - sent - failed);
            for (int j = 0; j < n; j++) {
                int k = (int)((next + j) % count);
                iov[j].iov_base = pkts[k]; iov[j].iov_len = PKT;
                memset(&msgs[j], 0, sizeof msgs[j]);
                msgs[j].msg_hdr.msg_name = &to; msgs[j].msg_hdr.msg_namelen = sizeof to;
                msgs[j].msg_hdr.msg_iov = &iov[j]; msgs[j].msg_hdr.msg_iovlen = 1;
            }
            int r = sendmmsg(raw, msgs, n, 0);
            if (r < 0) { failed += n; } else { sent += r; failed += n - r; }
            next += n;
        }
        if (turn % 32 == 0) {
            for (int p = 0; p < ports; p++) {
                int r;
                while ((r = recvmmsg(rx[p], rmsgs, BATCH, MSG_DONTWAIT, NULL)) > 0) {
                    for (int j = 0; j < r; j++)
                        if (rmsgs[j].msg_len == 64 && rbuf[j][0] == 3) replies++;
                    if (r < BATCH) break;
                }
            }
        }
    }
    double elapsed = now() - start;
    printf("{\"sent\": %lld, \"failed\": %lld, \"seconds\": %.3f, \"achieved_rate\": %.1f, "
           "\"cookie_replies\": %lld, \"interleaved\": true}\n",
           sent, failed, elapsed, sent / elapsed, replies);
    return 0;
}
