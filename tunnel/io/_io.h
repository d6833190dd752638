/* The C side of tunnel/io/_io.pyx (batched UDP and TUN I/O): socket addresses and control
 * messages, the TCP segmentation of TUN/TAP super-packets and the coalescing of segments
 * (GRO), checksums. Static functions, included by the one module that uses them; the contract
 * of each is in its comment and in tunnel/io/io_ref.py; tunnel/io/segment_ref.py mirrors the TCP parts.
 * Everything here runs without the GIL and touches no Python object. */

#ifndef WGPY_IO_H
#define WGPY_IO_H

#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>
#include <errno.h>
#include <string.h>
#include <stdint.h>
#include <stddef.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#define WGPY_CONTROL 64          /* control bytes per message: in6_pktinfo + one int */
#define WGPY_GRO_MESSAGE 65536   /* scratch per coalesced UDP message */
#define WGPY_SUPER 65536         /* the largest IP packet, plus one */

typedef union {
    struct sockaddr sa;
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
} wgpy_sockaddr;

/* Where a datagram came from; zeroed before filling so that memcmp compares values. */
typedef struct {
    int family;
    int port;
    unsigned char addr[16];
    int local_family;
    unsigned char local[16];
    int gro;                     /* UDP_GRO segment size, 0 if not coalesced */
} wgpy_source;

/* The bytes of a wgpy_source that say who sent it (everything before ``gro``): the key of
   the receive side's source-object cache. The segment size varies from one datagram of a
   peer to the next (a lone datagram: 0, a coalesced run: its size) and must not make the
   same sender a new object. */
#define WGPY_SOURCE_KEY offsetof(wgpy_source, gro)

/* Where a datagram goes (and from which local address); zeroed before filling. */
typedef struct {
    wgpy_sockaddr addr;
    socklen_t addrlen;
    int local_family;            /* 0: let the route choose */
    unsigned char local[16];
} wgpy_dest;

static void wgpy_read_source(const struct msghdr *m, wgpy_source *s) {
    struct cmsghdr *c;
    const wgpy_sockaddr *a = (const wgpy_sockaddr *)m->msg_name;
    memset(s, 0, sizeof(*s));
    if (m->msg_namelen >= sizeof(struct sockaddr_in) && a->sa.sa_family == AF_INET) {
        s->family = AF_INET;
        s->port = ntohs(a->v4.sin_port);
        memcpy(s->addr, &a->v4.sin_addr, 4);
    } else if (m->msg_namelen >= sizeof(struct sockaddr_in6) && a->sa.sa_family == AF_INET6) {
        s->family = AF_INET6;
        s->port = ntohs(a->v6.sin6_port);
        memcpy(s->addr, &a->v6.sin6_addr, 16);
    }
    for (c = CMSG_FIRSTHDR((struct msghdr *)m); c != NULL; c = CMSG_NXTHDR((struct msghdr *)m, c)) {
        if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO
                && c->cmsg_len >= CMSG_LEN(sizeof(struct in_pktinfo))) {
            struct in_pktinfo info;
            memcpy(&info, CMSG_DATA(c), sizeof(info));
            s->local_family = AF_INET;
            memcpy(s->local, &info.ipi_spec_dst, 4);
        } else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO
                && c->cmsg_len >= CMSG_LEN(sizeof(struct in6_pktinfo))) {
            struct in6_pktinfo info6;
            memcpy(&info6, CMSG_DATA(c), sizeof(info6));
            s->local_family = AF_INET6;
            memcpy(s->local, &info6.ipi6_addr, 16);
        } else if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO
                && c->cmsg_len >= CMSG_LEN(sizeof(int))) {
            int size;
            memcpy(&size, CMSG_DATA(c), sizeof(size));
            s->gro = size > 0 ? size : 0;
        }
    }
}

/* Text forms of a source (buffers of INET6_ADDRSTRLEN); local[0] == 0 if there is none. */
static void wgpy_source_text(const wgpy_source *s, char *ip, char *local) {
    ip[0] = 0;
    local[0] = 0;
    if (s->family)
        inet_ntop(s->family, s->addr, ip, INET6_ADDRSTRLEN);
    if (s->local_family)
        inet_ntop(s->local_family, s->local, local, INET6_ADDRSTRLEN);
}

/* Fill a destination from text; 0 on success, -1 if an address does not parse. */
static int wgpy_dest_parse(wgpy_dest *d, const char *ip, long port, const char *local) {
    memset(d, 0, sizeof(*d));
    if (port < 0 || port > 65535)
        return -1;
    if (inet_pton(AF_INET, ip, &d->addr.v4.sin_addr) == 1) {
        d->addr.v4.sin_family = AF_INET;
        d->addr.v4.sin_port = htons((uint16_t)port);
        d->addrlen = sizeof(struct sockaddr_in);
    } else if (inet_pton(AF_INET6, ip, &d->addr.v6.sin6_addr) == 1) {
        d->addr.v6.sin6_family = AF_INET6;
        d->addr.v6.sin6_port = htons((uint16_t)port);
        d->addrlen = sizeof(struct sockaddr_in6);
    } else {
        return -1;
    }
    if (local != NULL && local[0]) {
        if (inet_pton(AF_INET, local, d->local) == 1)
            d->local_family = AF_INET;
        else if (inet_pton(AF_INET6, local, d->local) == 1)
            d->local_family = AF_INET6;
    }
    return 0;
}

/* Control messages of one outgoing message: the source address (if the socket's family
   matches) and the GSO segment size (if not 0). Returns the control length. */
static size_t wgpy_put_control(unsigned char *ctl, const wgpy_dest *d, int family,
                               int use_local, int segment) {
    struct msghdr m;
    struct cmsghdr *c;
    size_t used = 0;
    memset(ctl, 0, WGPY_CONTROL);
    memset(&m, 0, sizeof(m));
    m.msg_control = ctl;
    m.msg_controllen = WGPY_CONTROL;
    c = CMSG_FIRSTHDR(&m);
    if (use_local && d->local_family == AF_INET && family == AF_INET) {
        struct in_pktinfo info;
        memset(&info, 0, sizeof(info));
        memcpy(&info.ipi_spec_dst, d->local, 4);
        c->cmsg_level = IPPROTO_IP;
        c->cmsg_type = IP_PKTINFO;
        c->cmsg_len = CMSG_LEN(sizeof(info));
        memcpy(CMSG_DATA(c), &info, sizeof(info));
        used += CMSG_SPACE(sizeof(info));
        c = (struct cmsghdr *)(ctl + used);
    } else if (use_local && d->local_family == AF_INET6 && family == AF_INET6) {
        struct in6_pktinfo info6;
        memset(&info6, 0, sizeof(info6));
        memcpy(&info6.ipi6_addr, d->local, 16);
        c->cmsg_level = IPPROTO_IPV6;
        c->cmsg_type = IPV6_PKTINFO;
        c->cmsg_len = CMSG_LEN(sizeof(info6));
        memcpy(CMSG_DATA(c), &info6, sizeof(info6));
        used += CMSG_SPACE(sizeof(info6));
        c = (struct cmsghdr *)(ctl + used);
    }
    if (segment > 0) {
        uint16_t size = (uint16_t)segment;
        c->cmsg_level = SOL_UDP;
        c->cmsg_type = UDP_SEGMENT;
        c->cmsg_len = CMSG_LEN(sizeof(size));
        memcpy(CMSG_DATA(c), &size, sizeof(size));
        used += CMSG_SPACE(sizeof(size));
    }
    return used;
}

/* --- Internet checksum ------------------------------------------------------------- */

/* One's complement sums. The sums below add 32-bit words (host order) into 64-bit accumulators
   (no carry is lost below 2^32 words) and fold at the end; wgpy_fold_tail finishes any sum: it
   adds the words of the tail p[0:len] to acc, folds to 16 bits, converts the host-order sum to
   network order and adds initial (a folded network-order sum). The odd byte is the high half
   of a word. */
static inline uint32_t wgpy_fold_tail(uint64_t acc, const unsigned char *p, size_t len, uint32_t initial) {
    uint64_t v;
    uint32_t w;
    uint16_t h;
    while (len >= 8) {
        memcpy(&v, p, 8);
        acc += (v & 0xFFFFFFFFu) + (v >> 32);
        p += 8;
        len -= 8;
    }
    if (len >= 4) {
        memcpy(&w, p, 4);
        acc += w;
        p += 4;
        len -= 4;
    }
    if (len >= 2) {
        memcpy(&h, p, 2);
        acc += h;
        p += 2;
        len -= 2;
    }
    if (len)
        acc += ntohs((uint16_t)(p[0] << 8));   /* the odd byte is the high half of a word */
    /* Fixed folds, no loop (a loop's varying trip count costs a mispredicted branch on the
       short sums, headers and pseudo-headers, that every segment takes several of): 64 -> 33
       -> 32 bits, then 32 -> 17 -> 16. */
    acc = (acc & 0xFFFFFFFFu) + (acc >> 32);
    acc = (acc & 0xFFFFFFFFu) + (acc >> 32);
    acc = (acc & 0xFFFF) + (acc >> 16);
    acc = (acc & 0xFFFF) + (acc >> 16);
    acc = (uint64_t)ntohs((uint16_t)acc) + initial;  /* host-order words -> network order */
    acc = (acc & 0xFFFF) + (acc >> 16);        /* initial < 2^32: two folds suffice */
    acc = (acc & 0xFFFF) + (acc >> 16);
    return (uint32_t)acc;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define WGPY_SUM_BLOCK 64
#define WGPY_SUM_VECTOR 256        /* shorter sums stay scalar (headers, small frames) */

/* Whether this CPU has AVX2 (asked once; a benign race: every thread writes the same value). */
static int wgpy_avx2(void) {
    static int have = -1;
    if (have < 0) {
        __builtin_cpu_init();
        have = __builtin_cpu_supports("avx2") ? 1 : 0;
    }
    return have;
}

/* The 32-bit-word sum (as wgpy_fold_tail's acc) of the whole 64-byte blocks of src[0:*len];
   with dst, the blocks are also copied to dst (one read of src: copy and sum fused). *len
   becomes the length of the tail left over (< 64). Eight 64-bit lanes: each lane gets at
   most len / 32 words of < 2^32, no carry is lost below 2^32 words. */
__attribute__((target("avx2")))
static uint64_t wgpy_sum_blocks_avx2(const unsigned char *src, unsigned char *dst, size_t *len) {
    size_t n = *len;
    const __m256i low = _mm256_set1_epi64x(0xFFFFFFFF);
    __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
    __m256i b0 = _mm256_setzero_si256(), b1 = _mm256_setzero_si256();
    uint64_t lanes[4];
    while (n >= WGPY_SUM_BLOCK) {
        __m256i v = _mm256_loadu_si256((const __m256i *)src);
        __m256i w = _mm256_loadu_si256((const __m256i *)(src + 32));
        if (dst) {
            _mm256_storeu_si256((__m256i *)dst, v);
            _mm256_storeu_si256((__m256i *)(dst + 32), w);
            dst += WGPY_SUM_BLOCK;
        }
        a0 = _mm256_add_epi64(a0, _mm256_and_si256(v, low));
        b0 = _mm256_add_epi64(b0, _mm256_srli_epi64(v, 32));
        a1 = _mm256_add_epi64(a1, _mm256_and_si256(w, low));
        b1 = _mm256_add_epi64(b1, _mm256_srli_epi64(w, 32));
        src += WGPY_SUM_BLOCK;
        n -= WGPY_SUM_BLOCK;
    }
    a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(b0, b1));
    _mm256_storeu_si256((__m256i *)lanes, a0);
    *len = n;
    return (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
}
#endif

/* One's complement sum of p[0:len] (not complemented), in network order, plus initial.
   With AVX2 (long sums) eight 64-bit lanes; else four independent 64-bit accumulators over
   32-byte blocks, which let the CPU overlap the adds (~2.5x faster than one chain). */
static uint32_t wgpy_sum(const unsigned char *p, size_t len, uint32_t initial) {
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    uint64_t v, v1, v2, v3;
    size_t rest;
#ifdef WGPY_SUM_VECTOR
    if (len >= WGPY_SUM_VECTOR && wgpy_avx2()) {
        rest = len;
        a0 = wgpy_sum_blocks_avx2(p, NULL, &rest);
        return wgpy_fold_tail(a0, p + (len - rest), rest, initial);
    }
#endif
    while (len >= 32) {
        memcpy(&v, p, 8);
        memcpy(&v1, p + 8, 8);
        memcpy(&v2, p + 16, 8);
        memcpy(&v3, p + 24, 8);
        a0 += (v & 0xFFFFFFFFu) + (v >> 32);
        a1 += (v1 & 0xFFFFFFFFu) + (v1 >> 32);
        a2 += (v2 & 0xFFFFFFFFu) + (v2 >> 32);
        a3 += (v3 & 0xFFFFFFFFu) + (v3 >> 32);
        p += 32;
        len -= 32;
    }
    (void)rest;
    return wgpy_fold_tail((a0 + a1) + (a2 + a3), p, len, initial);
}

/* memcpy(dst, src, len) and return wgpy_sum(src, len, initial), reading src once where the
   CPU allows (AVX2: the blocks are summed as they are copied; the segment's payload is then
   read from memory once instead of once by the copy and again by the sum). */
static uint32_t wgpy_copy_sum(unsigned char *dst, const unsigned char *src, size_t len,
                              uint32_t initial) {
#ifdef WGPY_SUM_VECTOR
    size_t rest;
    uint64_t acc;
    if (len >= WGPY_SUM_VECTOR && wgpy_avx2()) {
        rest = len;
        acc = wgpy_sum_blocks_avx2(src, dst, &rest);
        memcpy(dst + (len - rest), src + (len - rest), rest);
        return wgpy_fold_tail(acc, src + (len - rest), rest, initial);
    }
#endif
    memcpy(dst, src, len);
    return wgpy_sum(dst, len, initial);
}

static void wgpy_put16(unsigned char *p, uint32_t v) { p[0] = (v >> 8) & 0xFF; p[1] = v & 0xFF; }
static uint32_t wgpy_get16(const unsigned char *p) { return ((uint32_t)p[0] << 8) | p[1]; }
static uint32_t wgpy_get32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static void wgpy_put32(unsigned char *p, uint32_t v) {
    p[0] = v >> 24; p[1] = (v >> 16) & 0xFF; p[2] = (v >> 8) & 0xFF; p[3] = v & 0xFF;
}

/* Finish a VIRTIO_NET_HDR_F_NEEDS_CSUM checksum in place; 0 if out of range. */
static int wgpy_complete_csum(unsigned char *pkt, size_t len, size_t start, size_t offset) {
    uint32_t value;
    if (start >= len || start + offset + 2 > len)
        return 0;
    value = (~wgpy_sum(pkt + start, len - start, 0)) & 0xFFFF;
    if (value == 0 && offset == 6)
        value = 0xFFFF;        /* UDP: 0 means "no checksum" */
    wgpy_put16(pkt + start + offset, value);
    return 1;
}

/* --- TCP segmentation of a GSO super-packet ------------------------------------------ */

typedef struct {
    const unsigned char *pkt;
    size_t len;
    size_t l4;         /* offset of the TCP header */
    size_t header;     /* IP + TCP header bytes copied into every segment */
    size_t mss;
    size_t next;       /* offset of the next segment's payload */
    uint32_t index;
} wgpy_super;

/* hdr: the 10-byte virtio_net_hdr (host order). Returns 0 if the packet is not usable. */
static int wgpy_parse_super(wgpy_super *w, const unsigned char *pkt, size_t len,
                            const unsigned char *hdr, size_t mtu) {
    uint16_t gso_size, csum_start;
    int flags = hdr[0], kind = hdr[1] & 0x7F;
    size_t l4, ihl, header, mss;
    memcpy(&gso_size, hdr + 4, 2);
    memcpy(&csum_start, hdr + 6, 2);
    if (len < 20)
        return 0;
    if (kind == 1 && (pkt[0] >> 4) == 4) {
        ihl = (size_t)(pkt[0] & 15) * 4;
        if (ihl < 20 || pkt[9] != 6)
            return 0;
        l4 = (flags & 1) && csum_start >= ihl ? csum_start : ihl;
    } else if (kind == 4 && (pkt[0] >> 4) == 6) {
        l4 = (flags & 1) && csum_start >= 40 ? csum_start : 40;
    } else {
        return 0;
    }
    if (l4 + 20 > len)
        return 0;
    header = l4 + (size_t)(pkt[l4 + 12] >> 4) * 4;
    if (header < l4 + 20 || header > len || header >= mtu)
        return 0;
    mss = gso_size ? gso_size : mtu - header;
    if (mss > mtu - header)
        mss = mtu - header;
    w->pkt = pkt;
    w->len = len;
    w->l4 = l4;
    w->header = header;
    w->mss = mss;
    w->next = header;
    w->index = 0;
    return 1;
}

/* Write the next segment into out[0:room]; returns its length, 0 if it does not fit. */
static size_t wgpy_cut(wgpy_super *w, unsigned char *out, size_t room) {
    const unsigned char *pkt = w->pkt;
    size_t l4 = w->l4, header = w->header, start = w->next;
    size_t end = start + w->mss < w->len ? start + w->mss : w->len;
    size_t size = header + end - start;
    int last = end >= w->len;
    uint32_t pseudo, flags;
    if (size > room)
        return 0;
    memcpy(out, pkt, header);
    if ((pkt[0] >> 4) == 4) {
        size_t ihl = (size_t)(pkt[0] & 15) * 4;
        wgpy_put16(out + 2, (uint32_t)size);
        wgpy_put16(out + 4, (wgpy_get16(pkt + 4) + w->index) & 0xFFFF);
        wgpy_put16(out + 10, 0);
        wgpy_put16(out + 10, (~wgpy_sum(out, ihl, 0)) & 0xFFFF);
        pseudo = wgpy_sum(out + 12, 8, 6 + (uint32_t)(size - l4));
    } else {
        wgpy_put16(out + 4, (uint32_t)(size - 40));
        pseudo = wgpy_sum(out + 8, 32, 6 + (uint32_t)(size - l4));
    }
    wgpy_put32(out + l4 + 4, wgpy_get32(pkt + l4 + 4) + (uint32_t)(start - header));
    flags = pkt[l4 + 13];
    if (!last)
        flags &= ~0x09u;       /* FIN and PSH only on the last segment */
    if (w->index)
        flags &= ~0x80u;       /* CWR only on the first */
    out[l4 + 13] = (unsigned char)flags;
    wgpy_put16(out + l4 + 16, 0);
    /* The TCP header (header - l4 bytes: a multiple of 4, so the payload's words line up
       with the segment's), then the payload, summed as it is copied. */
    pseudo = wgpy_sum(out + l4, header - l4, pseudo);
    pseudo = wgpy_copy_sum(out + header, pkt + start, end - start, pseudo);
    wgpy_put16(out + l4 + 16, (~pseudo) & 0xFFFF);
    w->next = end;
    w->index++;
    return size;
}

/* How many segments wgpy_cut will still write for w. */
static size_t wgpy_segments_left(const wgpy_super *w) {
    return w->next >= w->len ? 0 : (w->len - w->next + w->mss - 1) / w->mss;
}

/* --- TCP coalescing on the way into the TUN device (GRO) ------------------------------ */

typedef struct {
    int version;       /* 4 or 6; 0: not a data segment we coalesce */
    size_t l4;         /* IP header bytes */
    size_t header;     /* IP + TCP header bytes */
    size_t payload;    /* TCP payload bytes */
} wgpy_tcpinfo;

/* A plain TCP data segment: no IP options or extension headers, not a fragment, lengths
   consistent, flags ACK (maybe PSH) and nothing else, a non-empty payload. */
static void wgpy_tcp_info(const unsigned char *p, size_t len, wgpy_tcpinfo *t) {
    size_t l4, header;
    t->version = 0;
    if (len < 40 || len > 65535)
        return;
    if (p[0] == 0x45) {
        if (p[9] != 6 || wgpy_get16(p + 2) != len || (wgpy_get16(p + 6) & 0x3FFF))
            return;
        l4 = 20;
    } else if ((p[0] >> 4) == 6) {
        if (len < 60 || p[6] != 6 || wgpy_get16(p + 4) + 40 != len)
            return;
        l4 = 40;
    } else {
        return;
    }
    header = l4 + (size_t)(p[l4 + 12] >> 4) * 4;
    if (header < l4 + 20 || header >= len)
        return;
    if ((p[l4 + 13] & ~0x08) != 0x10)
        return;
    t->version = p[0] >> 4;
    t->l4 = l4;
    t->header = header;
    t->payload = len - header;
}

/* May segment q follow prev in the run that starts with first? Same addresses, ports, IP
   and TCP header fields (TOS, TTL, DF / traffic class, flow label, hop limit; ack, flags
   byte 12, window, urgent pointer, options), no larger payload, and the next sequence. */
static int wgpy_tcp_follows(const unsigned char *first, const wgpy_tcpinfo *tf,
                            const unsigned char *prev, const wgpy_tcpinfo *tp,
                            const unsigned char *q, const wgpy_tcpinfo *tq) {
    size_t l4 = tf->l4;
    if (tq->version != tf->version || tq->header != tf->header || tq->payload > tf->payload)
        return 0;
    if (tf->version == 4) {
        if (q[1] != first[1] || ((q[6] ^ first[6]) & 0x40) || q[8] != first[8]
                || memcmp(q + 12, first + 12, 8))
            return 0;
    } else if (memcmp(q, first, 4) || q[7] != first[7] || memcmp(q + 8, first + 8, 32)) {
        return 0;
    }
    if (memcmp(q + l4, first + l4, 4) || memcmp(q + l4 + 8, first + l4 + 8, 5)
            || memcmp(q + l4 + 14, first + l4 + 14, 2) || memcmp(q + l4 + 18, first + l4 + 18, 2)
            || memcmp(q + l4 + 20, first + l4 + 20, tf->header - l4 - 20))
        return 0;
    return wgpy_get32(q + l4 + 4) == (uint32_t)(wgpy_get32(prev + l4 + 4) + (uint32_t)tp->payload);
}

/* The header of a super-packet of length total: first's IP and TCP headers with the IP
   length (and IPv4 header checksum) rewritten, PSH from the last segment, and the TCP
   checksum left partial (pseudo-header sum) for the kernel; vnet gets the virtio-net header
   (NEEDS_CSUM, TCPV4/TCPV6, gso_size = the first segment's payload). */
static void wgpy_tcp_super(unsigned char *out, unsigned char *vnet, const unsigned char *first,
                           const wgpy_tcpinfo *tf, const unsigned char *last, size_t total) {
    size_t l4 = tf->l4;
    uint32_t pseudo;
    uint16_t v;
    memcpy(out, first, tf->header);
    if (tf->version == 4) {
        wgpy_put16(out + 2, (uint32_t)total);
        wgpy_put16(out + 10, 0);
        wgpy_put16(out + 10, (~wgpy_sum(out, 20, 0)) & 0xFFFF);
        pseudo = wgpy_sum(out + 12, 8, 6 + (uint32_t)(total - l4));
    } else {
        wgpy_put16(out + 4, (uint32_t)(total - 40));
        pseudo = wgpy_sum(out + 8, 32, 6 + (uint32_t)(total - l4));
    }
    out[l4 + 13] |= last[l4 + 13] & 0x08;
    wgpy_put16(out + l4 + 16, pseudo);
    memset(vnet, 0, 10);
    vnet[0] = 1;
    vnet[1] = tf->version == 4 ? 1 : 4;
    v = (uint16_t)tf->header;
    memcpy(vnet + 2, &v, 2);
    v = (uint16_t)tf->payload;
    memcpy(vnet + 4, &v, 2);
    v = (uint16_t)l4;
    memcpy(vnet + 6, &v, 2);
    v = 16;
    memcpy(vnet + 8, &v, 2);
}

/* The IP packet of a frame behind an l2-byte link header (0: none; 14: Ethernet, whose
   EtherType must match the IP version); NULL if there is none. */
static const unsigned char *wgpy_l3(const unsigned char *p, size_t len, size_t l2) {
    uint32_t type;
    if (l2 == 0)
        return p;
    if (len < l2 + 20)
        return NULL;
    type = wgpy_get16(p + l2 - 2);
    if ((type == 0x0800 && (p[l2] >> 4) == 4) || (type == 0x86DD && (p[l2] >> 4) == 6))
        return p + l2;
    return NULL;
}

/* Is the TCP checksum of a TCP packet (no IP options / extension headers: t from
   wgpy_tcp_info) right? */
static int wgpy_tcp_csum_ok(const unsigned char *p, const wgpy_tcpinfo *t) {
    size_t len = t->header + t->payload;
    uint32_t pseudo;
    if (t->version == 4)
        pseudo = wgpy_sum(p + 12, 8, 6 + (uint32_t)(len - t->l4));
    else
        pseudo = wgpy_sum(p + 8, 32, 6 + (uint32_t)(len - t->l4));
    return wgpy_sum(p + t->l4, len - t->l4, pseudo) == 0xFFFF;
}

/* --- Partial checksums left by the sender's kernel (CHECKSUM_PARTIAL) ----------------
 *
 * Facts (Linux): a stack that relies on checksum offload stores in the L4 checksum field only
 * the folded pseudo-header sum, not complemented (udp4_hwcsum / udp_set_csum:
 * ``uh->check = ~csum_tcpudp_magic(saddr, daddr, len, IPPROTO_UDP, 0)``; TCP likewise with
 * ``~tcp_v4_check(len, saddr, daddr, 0)``, IPv6 with ``~csum_ipv6_magic(..., 0)``) and marks the
 * skb CHECKSUM_PARTIAL with csum_start/csum_offset for the device to finish. The vxlan device
 * offers NETIF_F_HW_CSUM, so the inner packet keeps that state through the encapsulation (the
 * outer UDP checksum is computed as if the inner one were finished: local checksum offload,
 * lco_csum). veth passes the state across namespaces unchanged (it does not touch ip_summed,
 * so a bad checksum is never turned into a good one), and a UDP socket's receive path does not
 * finish it either: udp_rcv_segment segments a tunnel GSO skb with NETIF_F_IP_CSUM |
 * NETIF_F_IPV6_CSUM, leaving each inner segment partial, and recvmsg copies the bytes as they
 * are. A kernel vxlan receiver keeps the skb partial and its stack trusts it; a userspace
 * receiver reads an inner packet whose checksum field holds the pseudo-header sum, which the
 * local stack drops as bad (flannel #1279, #2152: "ethtool -K flannel.1 tx off" workarounds).
 *
 * A receiver cannot tell such a field from a wrong one except by comparing it with the
 * pseudo-header sum P of the packet (source, destination, protocol, L4 length), which is never
 * 0 (protocol + length > 0): the field is partial if it equals P, 0xFFFF and 0 being the same
 * one's complement zero (TCP only: a UDP field of 0 means "no checksum" over IPv4 and is
 * invalid over IPv6). If a packet is partial AND happens to verify as complete, finishing it
 * rewrites the same value (sum(data) + 2P = 0xFFFF gives ~(sum(data) + P) = P), so the two
 * readings never disagree. Anything else (complete and valid, or simply wrong) is left alone.
 * What the partial field cannot give is integrity: nothing checked those bytes in flight (the
 * outer UDP checksum, which covers them, is checked by the receiving kernel only when it is
 * not itself partial), which is exactly the trust a kernel vxlan receiver gives them too. */

/* Is the L4 checksum of the IP packet p[0:len] (IPv4 without fragmentation, or IPv6 with TCP
   or UDP as the first next header) exactly its pseudo-header sum? Fills *start (the L4 offset),
   *offset (16 TCP, 6 UDP) and *iplen (the IP packet's own length, <= len: trailing link
   padding is not summed) and returns 1; returns 0 otherwise (including malformed packets). */
static int wgpy_csum_partial(const unsigned char *p, size_t len, size_t *start, size_t *offset,
                             size_t *iplen) {
    size_t l4, total;
    uint32_t proto, field, pseudo;
    if (len < 20)
        return 0;
    if ((p[0] >> 4) == 4) {
        l4 = (size_t)(p[0] & 15) * 4;
        total = wgpy_get16(p + 2);
        if (l4 < 20 || total < l4 || total > len || (wgpy_get16(p + 6) & 0x3FFF))
            return 0;
        proto = p[9];
    } else if ((p[0] >> 4) == 6 && len >= 40) {
        l4 = 40;
        total = 40 + wgpy_get16(p + 4);
        if (total > len)
            return 0;
        proto = p[6];
    } else {
        return 0;
    }
    if (proto == 6 && total >= l4 + 20)
        *offset = 16;
    else if (proto == 17 && total >= l4 + 8)
        *offset = 6;
    else
        return 0;
    field = wgpy_get16(p + l4 + *offset);
    if (field == 0 && proto == 17)
        return 0;
    if ((p[0] >> 4) == 4)
        pseudo = wgpy_sum(p + 12, 8, proto + (uint32_t)(total - l4));
    else
        pseudo = wgpy_sum(p + 8, 32, proto + (uint32_t)(total - l4));
    if (field == 0)
        field = 0xFFFF;
    if (field != pseudo)
        return 0;
    *start = l4;
    *iplen = total;
    return 1;
}

/* Is the TCP checksum of a TCP segment (t from wgpy_tcp_info) exactly its pseudo-header sum? */
static int wgpy_tcp_csum_partial(const unsigned char *p, const wgpy_tcpinfo *t) {
    size_t start, offset, iplen;
    return wgpy_csum_partial(p, t->header + t->payload, &start, &offset, &iplen);
}

/* --- Oversized TCP frames on the way into a TAP (VXLAN receive) ---------------------
 *
 * A kernel vxlan peer whose stack relied on TSO can hand our UDP socket one VXLAN datagram
 * carrying a whole TCP super-packet (up to 64 KiB in one inner frame). Larger than the TAP's
 * MTU, it would be dropped by a bridge behind the TAP, so it is written as a GSO super-frame
 * (virtio-net header) for the kernel to segment, or cut into MTU-sized frames with wgpy_cut. */

/* The IP packet p[0:len] of an oversized frame as a TCP super-packet to cut into segments of
   at most mtu bytes: IPv4 (any header length) without fragmentation, or IPv6 with TCP as the
   first next header, its IP length exactly len. Returns 0 if it is not such a packet (or no
   segment of mtu bytes can carry payload); else fills *w (mss = mtu - IP/TCP headers) and
   *partial (the TCP checksum holds the pseudo-header sum, see wgpy_csum_partial) and returns
   1 if the TCP checksum is right or partial, 2 if it is neither (integrity is never papered
   over: such a packet is written as it is, for the stack to drop). */
static int wgpy_tso_frame(wgpy_super *w, const unsigned char *p, size_t len, size_t mtu,
                          int *partial) {
    unsigned char hdr[10];
    size_t start, offset, iplen;
    uint32_t pseudo;
    *partial = 0;
    if (len < 20 || len > 65535)
        return 0;
    memset(hdr, 0, 10);
    if ((p[0] >> 4) == 4) {
        if (wgpy_get16(p + 2) != len || (wgpy_get16(p + 6) & 0x3FFF) || p[9] != 6)
            return 0;
        hdr[1] = 1;
    } else if ((p[0] >> 4) == 6 && len >= 40) {
        if (wgpy_get16(p + 4) + 40 != len || p[6] != 6)
            return 0;
        hdr[1] = 4;
    } else {
        return 0;
    }
    if (!wgpy_parse_super(w, p, len, hdr, mtu))
        return 0;
    if (wgpy_csum_partial(p, len, &start, &offset, &iplen) && start == w->l4) {
        *partial = 1;
        return 1;
    }
    if ((p[0] >> 4) == 4)
        pseudo = wgpy_sum(p + 12, 8, 6 + (uint32_t)(len - w->l4));
    else
        pseudo = wgpy_sum(p + 8, 32, 6 + (uint32_t)(len - w->l4));
    return wgpy_sum(p + w->l4, len - w->l4, pseudo) == 0xFFFF ? 1 : 2;
}

/* The virtio-net header and the IP+TCP header (into out, l2 link bytes first) of the GSO
   super-frame for w (from wgpy_tso_frame) behind frame's l2-byte link header: TCPV4/TCPV6,
   +ECN if CWR is set (as tcp_gro_complete marks it), gso_size w->mss, NEEDS_CSUM at the TCP
   checksum, which gets the pseudo-header sum of the whole packet (the kernel's segmentation
   adjusts it per segment). */
static void wgpy_tso_header(unsigned char *out, unsigned char *vnet, const unsigned char *frame,
                            size_t l2, const wgpy_super *w) {
    const unsigned char *p = w->pkt;
    size_t l4 = w->l4;
    uint32_t pseudo;
    uint16_t v;
    memcpy(out, frame, l2 + w->header);
    if ((p[0] >> 4) == 4)
        pseudo = wgpy_sum(p + 12, 8, 6 + (uint32_t)(w->len - l4));
    else
        pseudo = wgpy_sum(p + 8, 32, 6 + (uint32_t)(w->len - l4));
    wgpy_put16(out + l2 + l4 + 16, pseudo);
    memset(vnet, 0, 10);
    vnet[0] = 1;
    vnet[1] = (unsigned char)(((p[0] >> 4) == 4 ? 1 : 4) | (p[l4 + 13] & 0x80 ? 0x80 : 0));
    v = (uint16_t)(l2 + w->header);
    memcpy(vnet + 2, &v, 2);
    v = (uint16_t)w->mss;
    memcpy(vnet + 4, &v, 2);
    v = (uint16_t)(l2 + l4);
    memcpy(vnet + 6, &v, 2);
    v = 16;
    memcpy(vnet + 8, &v, 2);
}

/* EBADFD, EBADF, EIO, ENXIO, ENODEV: the device behind a TUN fd is (or may be) gone. */
static int wgpy_tun_gone(int code) {
    return code == EBADFD || code == EBADF || code == EIO || code == ENXIO || code == ENODEV;
}

#endif /* WGPY_IO_H */
