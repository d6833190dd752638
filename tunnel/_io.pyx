# cython: language_level=3, wraparound=False, boundscheck=False, cdivision=True, initializedcheck=False
"""Batched UDP and TUN I/O in Cython (the fast path of ``tunnel/io_ref.py``, same API).

UDP: one ``recvmmsg``/``sendmmsg`` per batch, UDP GRO receive (coalesced messages split into
consecutive slots) and UDP GSO send (runs of same-size datagrams to one destination leave as one
message of several iovecs with a UDP_SEGMENT control message: no copy). TUN: ``readv`` with the
virtio-net header, TCP super-packets cut into MTU-sized packets and partial checksums completed;
``writev`` behind a zeroed header (``write`` takes a list of packets, ``write_slots`` the selected
slots of a batch, with no Python object per packet; both fill the same C arrays of packet
addresses and lengths). The full contract is in the docstring of ``tunnel/io_ref.py``.

How the GIL is used: every buffer of the batch is pinned with the buffer protocol while the GIL
is held (nobody can resize a bytearray under us), addresses are converted to C structs, then the
syscalls and all per-packet byte work (cmsg parsing, splitting, checksums) run in one
``with nogil:`` section; results go back into the Python lists afterwards. A source Python object
is made only when the source differs from the previous datagram's (a batch from one peer makes
one). Single-threaded: one event loop owns an object; a second thread gets RuntimeError.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.errno cimport EAGAIN, EINTR, EINVAL, errno
from libc.stdint cimport uint16_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy, memset
from posix.uio cimport iovec, readv, writev

from tunnel._socket cimport (
    getsockopt, mmsghdr, msghdr, recvmmsg, sendmmsg, sendmsg, setsockopt, socklen_t,
)

import errno as _errno


cdef extern from *:
    """
    #include <sys/socket.h>
    #include <sys/uio.h>
    #include <netinet/in.h>
    #include <arpa/inet.h>
    #include <unistd.h>
    #include <errno.h>
    #include <string.h>
    #include <stdint.h>

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

    /* One's complement sum of p[0:len] (not complemented), in network order, plus initial. */
    static uint32_t wgpy_sum(const unsigned char *p, size_t len, uint32_t initial) {
        uint64_t acc = 0;
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
        while (acc >> 16)
            acc = (acc & 0xFFFF) + (acc >> 16);
        acc = ntohs((uint16_t)acc);                /* host-order words -> network-order sum */
        acc += initial;
        while (acc >> 16)
            acc = (acc & 0xFFFF) + (acc >> 16);
        return (uint32_t)acc;
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
        memcpy(out + header, pkt + start, end - start);
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
        wgpy_put16(out + l4 + 16, (~wgpy_sum(out + l4, size - l4, pseudo)) & 0xFFFF);
        w->next = end;
        w->index++;
        return size;
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

    /* EBADFD, EBADF, EIO, ENXIO, ENODEV: the device behind a TUN fd is (or may be) gone. */
    static int wgpy_tun_gone(int code) {
        return code == EBADFD || code == EBADF || code == EIO || code == ENXIO || code == ENODEV;
    }

    static int wgpy_socket_family(int fd) {
        int family = 0;
        socklen_t len = sizeof(family);
        if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &family, &len) != 0)
            return -1;
        return family;
    }
    """
    ctypedef struct wgpy_sockaddr:
        pass
    ctypedef struct wgpy_source:
        int family
        int port
        unsigned char addr[16]
        int local_family
        unsigned char local[16]
        int gro
    ctypedef struct wgpy_dest:
        wgpy_sockaddr addr
        socklen_t addrlen
        int local_family
        unsigned char local[16]
    ctypedef struct wgpy_super:
        const unsigned char *pkt
        size_t len
        size_t next
        size_t mss
    ctypedef struct wgpy_tcpinfo:
        int version
        size_t l4
        size_t header
        size_t payload

    enum:
        SOL_UDP
        UDP_SEGMENT
        UDP_GRO
        MSG_DONTWAIT
        AF_INET
        AF_INET6
        INET6_ADDRSTRLEN
        WGPY_CONTROL
        WGPY_GRO_MESSAGE
        WGPY_SUPER

    void wgpy_read_source(const msghdr *m, wgpy_source *s) nogil
    void wgpy_source_text(const wgpy_source *s, char *ip, char *local) nogil
    int wgpy_dest_parse(wgpy_dest *d, const char *ip, long port, const char *local) nogil
    size_t wgpy_put_control(unsigned char *ctl, const wgpy_dest *d, int family, int use_local,
                            int segment) nogil
    int wgpy_complete_csum(unsigned char *pkt, size_t len, size_t start, size_t offset) nogil
    int wgpy_parse_super(wgpy_super *w, const unsigned char *pkt, size_t len,
                         const unsigned char *hdr, size_t mtu) nogil
    size_t wgpy_cut(wgpy_super *w, unsigned char *out, size_t room) nogil
    int wgpy_socket_family(int fd) nogil
    void wgpy_tcp_info(const unsigned char *p, size_t len, wgpy_tcpinfo *t) nogil
    int wgpy_tcp_follows(const unsigned char *first, const wgpy_tcpinfo *tf,
                         const unsigned char *prev, const wgpy_tcpinfo *tp,
                         const unsigned char *q, const wgpy_tcpinfo *tq) nogil
    void wgpy_tcp_super(unsigned char *out, unsigned char *vnet, const unsigned char *first,
                        const wgpy_tcpinfo *tf, const unsigned char *last, size_t total) nogil
    int wgpy_tun_gone(int code) nogil
    const unsigned char *wgpy_l3(const unsigned char *p, size_t len, size_t l2) nogil
    int wgpy_tcp_csum_ok(const unsigned char *p, const wgpy_tcpinfo *t) nogil


# --- Public constants (identical values in tunnel/io_ref.py) ---
VNET_HDR_LEN = 10
VNET_F_NEEDS_CSUM = 1
VNET_F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_ECN = 0x80
MAX_GSO_SEGMENTS = 64
MAX_GSO_BYTES = 65000
GRO_MESSAGE = 65536
SUPER_PACKET = 65536
SOURCE_GONE = frozenset({_errno.EINVAL, _errno.EADDRNOTAVAIL, _errno.ENETUNREACH})
GSO_REFUSED = frozenset({_errno.EIO, _errno.EINVAL})
TUN_GONE = frozenset({_errno.EBADFD, _errno.EBADF, _errno.EIO, _errno.ENXIO, _errno.ENODEV})

cdef enum:
    C_MAX_SEGMENTS = 64
    C_MAX_GSO_BYTES = 65000
    C_VNET = 10
    C_GRO_SEGMENTS = 64       # segments per coalesced TUN write
    C_GRO_BYTES = 65535       # the largest IP packet
    C_ETH = 14                # an Ethernet header (TunBatch l2 on a TAP)
    MAX_BATCH = 1024          # UIO_MAXIOV: the most messages one recvmmsg/sendmmsg takes


cdef str _errname(int code):
    return _errno.errorcode.get(code, str(code))


def enable_udp_gro(int fd) -> bool:
    """Turn UDP_GRO on for the socket ``fd``; False if the kernel refuses (older than 5.0)."""
    cdef int one = 1
    return setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof(one)) == 0


def probe_udp_gso(int fd) -> bool:
    """True if the kernel knows UDP_SEGMENT on this socket (4.18+)."""
    cdef int value = 0
    cdef socklen_t size = sizeof(value)
    return getsockopt(fd, SOL_UDP, UDP_SEGMENT, &value, &size) == 0


def _tuple_source(ip, port, local):
    return (ip, port, local)


cdef inline void release_views(Py_buffer *views, Py_ssize_t count) noexcept:
    cdef Py_ssize_t i
    for i in range(count):
        PyBuffer_Release(&views[i])


cdef class UdpBatch:
    """Batch receive/send on one UDP socket fd; see tunnel/io_ref.py for the contract."""

    cdef readonly int fd
    cdef readonly int family
    cdef readonly bint gso
    cdef readonly bint gro
    cdef readonly list fallbacks
    cdef readonly dict errors
    cdef readonly list lost_sources
    cdef object _make
    cdef bint _busy
    # receive side
    cdef Py_ssize_t _rcap
    cdef mmsghdr *_rmsgs
    cdef iovec *_riov
    cdef char *_rnames          # sockaddr storage, 32 bytes per message
    cdef unsigned char *_rctl
    cdef wgpy_source *_rsrc
    cdef Py_buffer *_rviews
    cdef Py_ssize_t *_slot_len
    cdef int *_slot_msg
    cdef unsigned char *_scratch
    cdef Py_ssize_t _scratch_msgs
    cdef int _pend_msg          # GRO: next message to hand out, its offset, how many messages
    cdef Py_ssize_t _pend_off
    cdef int _pend_count
    cdef wgpy_source _last_src
    cdef object _last_obj
    # send side
    cdef Py_ssize_t _scap
    cdef mmsghdr *_smsgs
    cdef iovec *_siov
    cdef unsigned char *_sctl
    cdef Py_buffer *_sviews
    cdef int *_sdest
    cdef wgpy_dest *_dests
    cdef int *_mfirst
    cdef int *_mcount
    cdef object _last_ep
    cdef wgpy_dest _last_dest
    cdef bint _last_dest_ok

    def __cinit__(self, int fd, *, bint gso=True, bint gro=False, make_source=None) -> None:
        self._rcap = 0
        self._scap = 0
        self._rmsgs = NULL
        self._riov = NULL
        self._rnames = NULL
        self._rctl = NULL
        self._rsrc = NULL
        self._rviews = NULL
        self._slot_len = NULL
        self._slot_msg = NULL
        self._scratch = NULL
        self._scratch_msgs = 0
        self._smsgs = NULL
        self._siov = NULL
        self._sctl = NULL
        self._sviews = NULL
        self._sdest = NULL
        self._dests = NULL
        self._mfirst = NULL
        self._mcount = NULL
        self.fd = fd
        self.family = wgpy_socket_family(fd)
        if self.family not in (AF_INET, AF_INET6):
            raise OSError(_errno.ENOTSOCK, "not an IPv4 or IPv6 socket")
        self._make = make_source if make_source is not None else _tuple_source
        self.fallbacks = []
        self.errors = {}
        self.lost_sources = []
        self.gso = gso and probe_udp_gso(fd)
        if gso and not self.gso:
            self.fallbacks.append("UDP GSO (UDP_SEGMENT) is not supported by this kernel")
        self.gro = gro
        self._pend_msg = 0
        self._pend_off = 0
        self._pend_count = 0
        self._last_obj = None
        self._last_ep = None
        self._last_dest_ok = False
        self._busy = False
        memset(&self._last_src, 0, sizeof(wgpy_source))

    def __dealloc__(self) -> None:
        PyMem_Free(self._rmsgs)
        PyMem_Free(self._riov)
        PyMem_Free(self._rnames)
        PyMem_Free(self._rctl)
        PyMem_Free(self._rsrc)
        PyMem_Free(self._rviews)
        PyMem_Free(self._slot_len)
        PyMem_Free(self._slot_msg)
        free(self._scratch)
        PyMem_Free(self._smsgs)
        PyMem_Free(self._siov)
        PyMem_Free(self._sctl)
        PyMem_Free(self._sviews)
        PyMem_Free(self._sdest)
        PyMem_Free(self._dests)
        PyMem_Free(self._mfirst)
        PyMem_Free(self._mcount)

    def close(self) -> None:
        """Nothing to release but memory (the caller owns the fd); kept for API parity."""

    @property
    def pending(self) -> int:
        """Datagrams received but not yet handed out (GRO segments past the last batch)."""
        return self._pending_segments()

    cdef void _count(self, str key):
        self.errors[key] = self.errors.get(key, 0) + 1

    cdef int _enter(self) except -1:
        if self._busy:
            raise RuntimeError("UdpBatch used from two threads at once")
        self._busy = True
        return 0

    cdef int _reserve_recv(self, Py_ssize_t n) except -1:
        # realloc keeps the contents: GRO messages still pending live in _rmsgs/_rsrc.
        cdef void *p
        if n <= self._rcap:
            return 0
        p = PyMem_Realloc(self._rmsgs, n * sizeof(mmsghdr))
        if p == NULL:
            raise MemoryError()
        self._rmsgs = <mmsghdr *>p
        p = PyMem_Realloc(self._rsrc, n * sizeof(wgpy_source))
        if p == NULL:
            raise MemoryError()
        self._rsrc = <wgpy_source *>p
        PyMem_Free(self._riov)
        PyMem_Free(self._rnames)
        PyMem_Free(self._rctl)
        PyMem_Free(self._rviews)
        PyMem_Free(self._slot_len)
        PyMem_Free(self._slot_msg)
        self._riov = <iovec *>PyMem_Malloc(n * sizeof(iovec))
        self._rnames = <char *>PyMem_Malloc(n * 32)
        self._rctl = <unsigned char *>PyMem_Malloc(n * WGPY_CONTROL)
        self._rviews = <Py_buffer *>PyMem_Malloc(n * sizeof(Py_buffer))
        self._slot_len = <Py_ssize_t *>PyMem_Malloc(n * sizeof(Py_ssize_t))
        self._slot_msg = <int *>PyMem_Malloc(n * sizeof(int))
        if (self._riov == NULL or self._rnames == NULL or self._rctl == NULL
                or self._rviews == NULL or self._slot_len == NULL or self._slot_msg == NULL):
            self._rcap = 0
            raise MemoryError()
        self._rcap = n
        return 0

    cdef object _source_object(self, wgpy_source *s):
        cdef char ip[64]
        cdef char local[64]
        if self._last_obj is not None and memcmp(s, &self._last_src, sizeof(wgpy_source)) == 0:
            return self._last_obj
        wgpy_source_text(s, ip, local)
        obj = self._make(ip.decode("ascii"), s.port, local.decode("ascii") if local[0] else None)
        memcpy(&self._last_src, s, sizeof(wgpy_source))
        self._last_obj = obj
        return obj

    cdef void _prepare(self, Py_ssize_t j, void *base, size_t size) noexcept nogil:
        cdef mmsghdr *m = &self._rmsgs[j]
        self._riov[j].iov_base = base
        self._riov[j].iov_len = size
        m.msg_hdr.msg_name = self._rnames + 32 * j
        m.msg_hdr.msg_namelen = 32
        m.msg_hdr.msg_iov = &self._riov[j]
        m.msg_hdr.msg_iovlen = 1
        m.msg_hdr.msg_control = self._rctl + WGPY_CONTROL * j
        m.msg_hdr.msg_controllen = WGPY_CONTROL
        m.msg_hdr.msg_flags = 0
        m.msg_len = 0

    cdef Py_ssize_t _drain(self, Py_ssize_t count, Py_ssize_t n) noexcept nogil:
        """GRO: copy pending segments into slots count.. ; returns the new count."""
        cdef Py_ssize_t size, seg, take, room
        cdef int m
        cdef unsigned char *data
        while self._pend_msg < self._pend_count and count < n:
            m = self._pend_msg
            size = self._rmsgs[m].msg_len
            data = self._scratch + <Py_ssize_t>m * WGPY_GRO_MESSAGE
            seg = self._rsrc[m].gro if self._rsrc[m].gro > 0 else size
            if size == 0:
                self._slot_len[count] = 0
                self._slot_msg[count] = m
                count += 1
                self._pend_msg += 1
                self._pend_off = 0
                continue
            while self._pend_off < size and count < n:
                take = size - self._pend_off
                if take > seg:
                    take = seg
                room = self._rviews[count].len
                if take > room:
                    take = room
                memcpy(self._rviews[count].buf, data + self._pend_off, take)
                self._slot_len[count] = take
                self._slot_msg[count] = m
                count += 1
                self._pend_off += seg
            if self._pend_off >= size:
                self._pend_msg += 1
                self._pend_off = 0
        return count

    def recv(self, bufs not None, list lengths not None, list sources not None) -> int:
        """Receive until EAGAIN or every slot is used; returns the count (see io_ref).

        Slots are pinned only as they are needed (with GRO: as many as the received segments
        fill; without: 2, then 8, 32, ...), so a lone datagram touches one or two buffers.
        """
        cdef Py_ssize_t n = len(bufs)
        cdef Py_ssize_t i, count = 0, pinned = 0, need, limit = 0
        cdef int r = 0, err = 0, attempts
        cdef bint gro = self.gro
        if len(lengths) < n or len(sources) < n:
            raise ValueError("lengths or sources is shorter than bufs")
        if n == 0:
            return 0
        if n > MAX_BATCH:
            n = MAX_BATCH
        self._enter()
        try:
            self._reserve_recv(n)
            if gro and self._scratch == NULL:
                # Allocated once and never moved (pending segments live in it); pages are
                # touched only as far as datagrams fill them.
                self._scratch = <unsigned char *>malloc(<size_t>n * WGPY_GRO_MESSAGE)
                if self._scratch == NULL:
                    raise MemoryError()
                self._scratch_msgs = n
            if gro:
                # segments left from the last call first, then one recvmmsg into the scratch
                need = min(n, count + self._pending_segments())
                pinned = self._pin(bufs, pinned, need)
                with nogil:
                    count = self._drain(count, need)
                for attempts in range(8):
                    if count >= n:
                        break
                    with nogil:
                        self._gro_receive(n - count, &r, &err)
                    need = min(n, count + self._pending_segments())
                    pinned = self._pin(bufs, pinned, need)
                    with nogil:
                        count = self._drain(count, need)
                    if r >= 0 or err == EAGAIN or err == EINTR:
                        break
                    self._count("recv:" + _errname(err))
                    if count:
                        break
            else:
                while True:
                    limit = n if limit * 4 >= n or n <= 2 else (2 if limit == 0 else limit * 4)
                    pinned = self._pin(bufs, pinned, limit)
                    for attempts in range(8):
                        with nogil:
                            count = self._recv_plain(count, limit, &r, &err)
                        if r >= 0 or err == EAGAIN or err == EINTR:
                            break
                        self._count("recv:" + _errname(err))
                        if count:
                            break
                    if count < limit or limit == n or r < 0:
                        break
            for i in range(count):
                lengths[i] = self._slot_len[i]
                sources[i] = self._source_object(&self._rsrc[self._slot_msg[i]])
            return count
        finally:
            release_views(self._rviews, pinned)
            self._busy = False

    cdef Py_ssize_t _pin(self, bufs, Py_ssize_t pinned, Py_ssize_t upto) except -1:
        """Pin slots pinned..upto-1 (writable); returns the new pinned count."""
        cdef Py_ssize_t i
        for i in range(pinned, upto):
            PyObject_GetBuffer(bufs[i], &self._rviews[i], PyBUF_WRITABLE)
            pinned = i + 1
        return pinned

    cdef Py_ssize_t _pending_segments(self) noexcept:
        """GRO segments received but not handed out yet."""
        cdef int m
        cdef Py_ssize_t total = 0, size, seg, off
        for m in range(self._pend_msg, self._pend_count):
            size = self._rmsgs[m].msg_len
            seg = self._rsrc[m].gro if self._rsrc[m].gro > 0 else (size if size > 0 else 1)
            off = self._pend_off if m == self._pend_msg else 0
            total += 1 if size == 0 else (size - off + seg - 1) // seg
        return total

    cdef Py_ssize_t _recv_plain(self, Py_ssize_t count, Py_ssize_t n, int *result,
                                int *err) noexcept nogil:
        """Without GRO: recvmmsg straight into the pinned slots count..n-1; the new count."""
        cdef Py_ssize_t j
        cdef int r
        result[0] = 0
        for j in range(count, n):
            self._prepare(j, self._rviews[j].buf, self._rviews[j].len)
        r = self._recvmmsg(self._rmsgs + count, n - count)
        result[0] = r
        if r < 0:
            err[0] = errno
            return count
        for j in range(count, count + r):
            wgpy_read_source(&self._rmsgs[j].msg_hdr, &self._rsrc[j])
            self._slot_len[j] = self._rmsgs[j].msg_len
            self._slot_msg[j] = <int>j
        return count + r

    cdef int _recvmmsg(self, mmsghdr *msgs, Py_ssize_t count) noexcept nogil:
        """recvmmsg without blocking, retried on EINTR; its result (errno set when < 0)."""
        cdef int r
        while True:
            r = recvmmsg(self.fd, msgs, <unsigned int>count, MSG_DONTWAIT, NULL)
            if r < 0 and errno == EINTR:
                continue
            return r

    cdef void _gro_receive(self, Py_ssize_t want, int *result, int *err) noexcept nogil:
        """With GRO (nothing pending): one recvmmsg of up to ``want`` messages into the
        scratch; they become the pending messages."""
        cdef Py_ssize_t j
        cdef int r
        result[0] = 0
        if want > self._scratch_msgs:
            want = self._scratch_msgs
        for j in range(want):
            self._prepare(j, self._scratch + j * WGPY_GRO_MESSAGE, WGPY_GRO_MESSAGE)
        r = self._recvmmsg(self._rmsgs, want)
        result[0] = r
        if r < 0:
            err[0] = errno
            return
        for j in range(r):
            wgpy_read_source(&self._rmsgs[j].msg_hdr, &self._rsrc[j])
        self._pend_msg = 0
        self._pend_off = 0
        self._pend_count = r

    # -- send --------------------------------------------------------------------------------

    cdef int _reserve_send(self, Py_ssize_t n) except -1:
        if n <= self._scap:
            return 0
        PyMem_Free(self._smsgs)
        PyMem_Free(self._siov)
        PyMem_Free(self._sctl)
        PyMem_Free(self._sviews)
        PyMem_Free(self._sdest)
        PyMem_Free(self._dests)
        PyMem_Free(self._mfirst)
        PyMem_Free(self._mcount)
        self._scap = 0
        self._smsgs = <mmsghdr *>PyMem_Malloc(n * sizeof(mmsghdr))
        self._siov = <iovec *>PyMem_Malloc(n * sizeof(iovec))
        self._sctl = <unsigned char *>PyMem_Malloc(n * WGPY_CONTROL)
        self._sviews = <Py_buffer *>PyMem_Malloc(n * sizeof(Py_buffer))
        self._sdest = <int *>PyMem_Malloc(n * sizeof(int))
        self._dests = <wgpy_dest *>PyMem_Malloc(n * sizeof(wgpy_dest))
        self._mfirst = <int *>PyMem_Malloc(n * sizeof(int))
        self._mcount = <int *>PyMem_Malloc(n * sizeof(int))
        if (self._smsgs == NULL or self._siov == NULL or self._sctl == NULL or self._sviews == NULL
                or self._sdest == NULL or self._dests == NULL or self._mfirst == NULL
                or self._mcount == NULL):
            raise MemoryError()
        self._scap = n
        return 0

    cdef int _parse_endpoint(self, endpoint) except -1:
        """Fill self._last_dest from ``endpoint``; sets _last_dest_ok."""
        cdef bytes ip_b, local_b
        if type(endpoint) is tuple:
            ip = endpoint[0]
            port = endpoint[1]
            local = endpoint[2] if len(<tuple>endpoint) > 2 else None
        else:
            ip = endpoint.ip
            port = endpoint.port
            local = endpoint.local
        ip_b = ip.encode("ascii") if isinstance(ip, str) else b""
        local_b = local.encode("ascii") if isinstance(local, str) else b""
        self._last_dest_ok = wgpy_dest_parse(&self._last_dest, ip_b, port, local_b) == 0
        self._last_ep = endpoint
        return 0

    def send(self, datagrams not None) -> int:
        """Send each datagram (GSO runs as one message); returns how many left (see io_ref)."""
        cdef Py_ssize_t n = len(datagrams)
        cdef Py_ssize_t i, pinned = 0, index = 0, sent = 0
        cdef int ndest = 0, nmsgs, r, code, code2, group
        cdef bint stop
        if n == 0:
            return 0
        self._enter()
        try:
            self._reserve_send(n)
            for i in range(n):
                payload, endpoint = datagrams[i]
                PyObject_GetBuffer(payload, &self._sviews[i], PyBUF_SIMPLE)
                pinned = i + 1
                if endpoint is not self._last_ep:
                    self._parse_endpoint(endpoint)
                if not self._last_dest_ok:
                    self._sdest[i] = -1
                elif ndest and memcmp(&self._dests[ndest - 1], &self._last_dest, sizeof(wgpy_dest)) == 0:
                    self._sdest[i] = ndest - 1
                else:
                    memcpy(&self._dests[ndest], &self._last_dest, sizeof(wgpy_dest))
                    self._sdest[i] = ndest
                    ndest += 1
            while index < n:
                if self._sdest[index] < 0:
                    self._count("send:bad_address")
                    index += 1
                    continue
                with nogil:
                    nmsgs = self._build(index, n)
                    while True:
                        r = sendmmsg(self.fd, self._smsgs, <unsigned int>nmsgs, MSG_DONTWAIT)
                        if r < 0 and errno == EINTR:
                            continue
                        break
                    code = errno if r < 0 else 0
                if r > 0:
                    for i in range(r):
                        sent += self._mcount[i]
                    index = self._mfirst[r - 1] + self._mcount[r - 1]
                    continue
                if code == EAGAIN:
                    self._count("send:EAGAIN")
                    return sent
                group = self._mcount[0]
                # Retry the first datagram alone without GSO, then decide whose fault it was.
                code2 = self._send_single(index, True)
                stop = False
                if code2 == 0:
                    if group > 1 and code in GSO_REFUSED:
                        self.gso = False
                        self.fallbacks.append(
                            f"UDP GSO refused by the kernel ({_errname(code)}): "
                            "sending datagrams one by one")
                    sent += 1
                elif code2 == EAGAIN:
                    stop = True
                    self._count("send:EAGAIN")
                elif code2 in SOURCE_GONE and self._dests[self._sdest[index]].local_family:
                    code2 = self._send_single(index, False)
                    if code2 == 0:
                        self.lost_sources.append(datagrams[index][1])
                        sent += 1
                    elif code2 == EAGAIN:
                        stop = True
                        self._count("send:EAGAIN")
                    else:
                        self._count("send:" + _errname(code2))
                else:
                    self._count("send:" + _errname(code2))
                if stop:
                    return sent
                index += 1
            return sent
        finally:
            release_views(self._sviews, pinned)
            self._busy = False

    cdef int _build(self, Py_ssize_t start, Py_ssize_t n) noexcept nogil:
        """Fill the messages for datagrams start..n-1 (stops before a bad address)."""
        cdef int nm = 0, count, dest
        cdef Py_ssize_t i = start, k, size, length, total
        cdef mmsghdr *m
        cdef wgpy_dest *d
        while i < n and nm < MAX_BATCH:
            dest = self._sdest[i]
            if dest < 0:
                break
            size = self._sviews[i].len
            count = 1
            total = size
            k = i + 1
            if self.gso and size > 0:
                while k < n and count < C_MAX_SEGMENTS:
                    length = self._sviews[k].len
                    if self._sdest[k] != dest or length > size or length == 0:
                        break
                    if total + length > C_MAX_GSO_BYTES:
                        break
                    count += 1
                    total += length
                    k += 1
                    if length < size:
                        break
            for k in range(i, i + count):
                self._siov[k].iov_base = self._sviews[k].buf
                self._siov[k].iov_len = self._sviews[k].len
            d = &self._dests[dest]
            m = &self._smsgs[nm]
            m.msg_hdr.msg_name = &d.addr
            m.msg_hdr.msg_namelen = d.addrlen
            m.msg_hdr.msg_iov = &self._siov[i]
            m.msg_hdr.msg_iovlen = count
            m.msg_hdr.msg_control = self._sctl + WGPY_CONTROL * nm
            m.msg_hdr.msg_controllen = wgpy_put_control(self._sctl + WGPY_CONTROL * nm, d,
                                                        self.family, 1,
                                                        <int>size if count > 1 else 0)
            if m.msg_hdr.msg_controllen == 0:
                m.msg_hdr.msg_control = NULL
            m.msg_hdr.msg_flags = 0
            m.msg_len = 0
            self._mfirst[nm] = <int>i
            self._mcount[nm] = count
            nm += 1
            i += count
        return nm

    cdef int _send_single(self, Py_ssize_t index, bint use_local):
        """One datagram, no GSO; returns 0 or the errno."""
        cdef msghdr m
        cdef iovec iov
        cdef unsigned char ctl[WGPY_CONTROL]
        cdef wgpy_dest *d = &self._dests[self._sdest[index]]
        cdef ssize_t r
        cdef int code = 0
        with nogil:
            memset(&m, 0, sizeof(msghdr))
            iov.iov_base = self._sviews[index].buf
            iov.iov_len = self._sviews[index].len
            m.msg_name = &d.addr
            m.msg_namelen = d.addrlen
            m.msg_iov = &iov
            m.msg_iovlen = 1
            m.msg_controllen = wgpy_put_control(ctl, d, self.family, use_local, 0)
            m.msg_control = ctl if m.msg_controllen else NULL
            while True:
                r = sendmsg(self.fd, &m, MSG_DONTWAIT)
                if r < 0 and errno == EINTR:
                    continue
                break
            if r < 0:
                code = errno
        return code


cdef class TunBatch:
    """Batch read/write on one TUN fd; see tunnel/io_ref.py for the contract."""

    cdef readonly int fd
    cdef readonly bint vnet_hdr
    cdef readonly dict errors
    cdef readonly long super_packets
    cdef readonly bint gro
    cdef readonly long coalesced
    cdef readonly list fallbacks
    cdef int _gro_refused
    cdef unsigned char _shdr[192]
    cdef readonly int l2
    cdef readonly bint verify
    cdef unsigned char _svnet[C_VNET]
    cdef bint _busy
    cdef unsigned char *_scratch     # one super-packet: 2 x 64 KiB (slot head + overflow)
    cdef unsigned char _hdr[C_VNET]
    cdef wgpy_super _work
    cdef bint _has_work
    cdef readonly bint hold_oversized
    cdef bint _has_big              # an oversized packet held in the scratch (hold_oversized)
    cdef Py_ssize_t _big_len
    cdef Py_buffer *_views          # the pinned buffers of the call (released at its end)
    cdef Py_ssize_t *_lens          # read: lengths out; write: packet i's length
    cdef unsigned char **_ptrs      # write: packet i's first byte (in a pinned buffer)
    cdef int *_codes
    cdef Py_ssize_t _cap
    # per-call error tallies (read side), turned into ``errors`` entries with the GIL
    cdef int _too_big
    cdef int _short
    cdef int _bad_gso
    cdef int _bad_csum

    def __cinit__(self, int fd, *, bint vnet_hdr=True, bint gro=False,
                  bint hold_oversized=False, int l2=0, bint verify=False) -> None:
        if l2 != 0 and l2 != C_ETH:
            raise ValueError("l2 must be 0 (TUN) or 14 (TAP: Ethernet)")
        self.l2 = l2
        self.verify = verify
        self.fd = fd
        self.hold_oversized = hold_oversized and vnet_hdr
        self._has_big = False
        self._big_len = 0
        self.vnet_hdr = vnet_hdr
        self.gro = gro and vnet_hdr
        self.coalesced = 0
        self.fallbacks = []
        self._gro_refused = 0
        self.errors = {}
        self.super_packets = 0
        self._busy = False
        self._has_work = False
        self._views = NULL
        self._lens = NULL
        self._ptrs = NULL
        self._codes = NULL
        self._cap = 0
        self._scratch = <unsigned char *>malloc(2 * WGPY_SUPER)
        if self._scratch == NULL:
            raise MemoryError()

    def __dealloc__(self) -> None:
        free(self._scratch)
        PyMem_Free(self._views)
        PyMem_Free(self._lens)
        PyMem_Free(self._ptrs)
        PyMem_Free(self._codes)

    @property
    def pending(self) -> int:
        """Segments of a super-packet cut but not handed out yet (or 1: a held packet)."""
        if self._has_big:
            return 1
        if not self._has_work:
            return 0
        return (self._work.len - self._work.next + self._work.mss - 1) // self._work.mss

    @property
    def needed(self) -> int:
        """Bytes (after the headroom) the held oversized packet needs in a slot; 0 if none."""
        return self._big_len if self._has_big else 0

    cdef int _reserve(self, Py_ssize_t n) except -1:
        if n <= self._cap:
            return 0
        PyMem_Free(self._views)
        PyMem_Free(self._lens)
        PyMem_Free(self._ptrs)
        PyMem_Free(self._codes)
        self._cap = 0
        self._views = <Py_buffer *>PyMem_Malloc(n * sizeof(Py_buffer))
        self._lens = <Py_ssize_t *>PyMem_Malloc(n * sizeof(Py_ssize_t))
        self._ptrs = <unsigned char **>PyMem_Malloc(n * sizeof(unsigned char *))
        self._codes = <int *>PyMem_Malloc(n * sizeof(int))
        if self._views == NULL or self._lens == NULL or self._ptrs == NULL or self._codes == NULL:
            raise MemoryError()
        self._cap = n
        return 0

    cdef int _enter(self) except -1:
        if self._busy:
            raise RuntimeError("TunBatch used from two threads at once")
        self._busy = True
        return 0

    cdef void _tally(self, str key, int amount):
        if amount:
            self.errors[key] = self.errors.get(key, 0) + amount

    def read(self, bufs not None, list lengths not None, Py_ssize_t headroom, Py_ssize_t mtu) -> int:
        """Read packets into ``bufs[i][headroom:]`` until EAGAIN or the batch is full."""
        cdef Py_ssize_t n = len(bufs)
        cdef Py_ssize_t i, pinned = 0, count = 0, limit, want
        cdef int err = 0
        if len(lengths) < n:
            raise ValueError("lengths is shorter than bufs")
        if headroom < 0 or mtu <= 0:
            raise ValueError("headroom must be >= 0 and mtu > 0")
        if n == 0:
            return 0
        self._enter()
        try:
            self._reserve(n)
            self._too_big = self._short = self._bad_gso = self._bad_csum = 0
            # Slots are pinned as the batch fills (2, then 8, 32, ...): a lone packet (a ping)
            # touches two buffers, not the whole batch.
            limit = 0
            while True:
                want = n if limit * 4 >= n or n <= 2 else (2 if limit == 0 else limit * 4)
                for i in range(pinned, want):
                    PyObject_GetBuffer(bufs[i], &self._views[i], PyBUF_WRITABLE)
                    pinned = i + 1
                    if self._views[i].len < headroom:
                        raise ValueError(f"buffer {i} is shorter than the headroom")
                limit = want
                with nogil:
                    count = self._read_nogil(count, limit, headroom, mtu, &err)
                if count < limit or limit == n or err:
                    break
            for i in range(count):
                lengths[i] = self._lens[i]
            self._tally("read:too_big", self._too_big)
            self._tally("read:short", self._short)
            self._tally("read:bad_gso", self._bad_gso)
            self._tally("read:bad_csum", self._bad_csum)
            if err and count == 0:
                raise OSError(err, _errname(err))
            return count
        finally:
            release_views(self._views, pinned)
            self._busy = False

    cdef Py_ssize_t _drain(self, Py_ssize_t count, Py_ssize_t n, Py_ssize_t headroom) noexcept nogil:
        cdef size_t size = 0
        cdef size_t l2 = <size_t>self.l2
        cdef unsigned char *slot
        while self._has_work and count < n:
            slot = <unsigned char *>self._views[count].buf + headroom
            if <size_t>(self._views[count].len - headroom) > l2:
                size = wgpy_cut(&self._work, slot + l2, self._views[count].len - headroom - l2)
            else:
                size = 0
            if size == 0:
                self._too_big += 1
                self._has_work = False
                break
            if l2:
                memcpy(slot, self._scratch, l2)   # the link header of the super-frame
            self._lens[count] = size + l2
            count += 1
            if self._work.next >= self._work.len:
                self._has_work = False
        return count

    cdef Py_ssize_t _read_nogil(self, Py_ssize_t count, Py_ssize_t n, Py_ssize_t headroom,
                                Py_ssize_t mtu, int *err) noexcept nogil:
        """Fill slots count..n-1 (pinned); returns the new count. Stops at EAGAIN (count < n),
        an error (``err``), a held oversized packet, or a full batch."""
        cdef iovec iov[3]
        cdef ssize_t got
        cdef Py_ssize_t room, size, head
        cdef unsigned char *slot
        cdef uint16_t csum_start, csum_offset
        if self._has_big and count == 0:
            # The packet held last time: now it fits, or it is dropped (never held twice).
            self._has_big = False
            if self._big_len <= self._views[0].len - headroom:
                memcpy(<unsigned char *>self._views[0].buf + headroom, self._scratch, self._big_len)
                self._lens[0] = self._big_len
                count = 1
            else:
                self._too_big += 1
        count = self._drain(count, n, headroom)
        while count < n and not self._has_work:
            slot = <unsigned char *>self._views[count].buf + headroom
            room = self._views[count].len - headroom
            if not self.vnet_hdr:
                iov[0].iov_base = slot
                iov[0].iov_len = room
                got = readv(self.fd, iov, 1)
            else:
                iov[0].iov_base = self._hdr
                iov[0].iov_len = C_VNET
                iov[1].iov_base = slot
                iov[1].iov_len = room
                iov[2].iov_base = self._scratch + (room if room < WGPY_SUPER else WGPY_SUPER)
                iov[2].iov_len = WGPY_SUPER
                got = readv(self.fd, iov, 3)
            if got < 0:
                if errno == EINTR:
                    continue
                if errno != EAGAIN:
                    err[0] = errno
                break
            if not self.vnet_hdr:
                self._lens[count] = got
                count += 1
                continue
            if got < C_VNET:
                self._short += 1
                continue
            size = got - C_VNET
            if (self._hdr[1] & 0x7F) == 0:
                if size > room:
                    if self.hold_oversized:
                        # Keep it (contiguous in the scratch) for a call with larger slots.
                        memcpy(self._scratch, slot, room)
                        self._big_len = size
                        self._has_big = True
                        break
                    self._too_big += 1
                    continue
                if self._hdr[0] & 1:
                    memcpy(&csum_start, self._hdr + 6, 2)
                    memcpy(&csum_offset, self._hdr + 8, 2)
                    if not wgpy_complete_csum(slot, size, csum_start, csum_offset):
                        self._bad_csum += 1
                        continue
                self._lens[count] = size
                count += 1
                continue
            # A super-packet: make it contiguous in the scratch (the overflow is already there).
            head = size if size < room else room
            memcpy(self._scratch, slot, head)
            if not self._parse(size, mtu):
                self._bad_gso += 1
                continue
            self._has_work = True
            self.super_packets += 1
            count = self._drain(count, n, headroom)
        return count

    cdef int _parse(self, size_t size, size_t mtu) noexcept nogil:
        """Parse the super-packet (frame, with l2) in the scratch into self._work."""
        cdef unsigned char hdr[C_VNET]
        cdef uint16_t start
        cdef size_t l2 = <size_t>self.l2
        if l2 == 0:
            return wgpy_parse_super(&self._work, self._scratch, size, self._hdr, mtu)
        if wgpy_l3(self._scratch, size, l2) == NULL:
            return 0
        memcpy(hdr, self._hdr, C_VNET)
        if hdr[0] & 1:
            memcpy(&start, hdr + 6, 2)
            if start < l2:
                return 0
            start = <uint16_t>(start - l2)   # csum_start counts from the frame's start
            memcpy(hdr + 6, &start, 2)
        return wgpy_parse_super(&self._work, self._scratch + l2, size - l2, hdr, mtu)

    def write(self, packets not None) -> int:
        """Write each packet (behind a zeroed virtio-net header if on); returns how many went.

        With ``gro`` on, runs of consecutive TCP segments of one flow leave as one super-packet
        (one writev: header, then each segment's payload in place; see io_ref.coalesce_run).
        """
        cdef Py_ssize_t n = len(packets)
        cdef Py_ssize_t i, pinned = 0, done = 0
        if n == 0:
            return 0
        self._enter()
        try:
            self._reserve(n)
            for i in range(n):
                PyObject_GetBuffer(packets[i], &self._views[i], PyBUF_SIMPLE)
                pinned = i + 1
                self._ptrs[i] = <unsigned char *>self._views[i].buf
                self._lens[i] = self._views[i].len
            with nogil:
                done = self._write_nogil(n)
            return self._written(done)
        finally:
            release_views(self._views, pinned)
            self._busy = False

    def write_slots(self, bufs not None, lengths not None, Py_ssize_t offset, verdicts not None,
                    Py_ssize_t count) -> int:
        """Write ``bufs[i][offset:lengths[i]]`` for each ``i < count`` with ``verdicts[i] == 0``;
        the same as ``write`` on the list of those slices (see io_ref.TunBatch.write_slots).

        No Python object per packet: each selected buffer is pinned and its packet's address and
        length go into C arrays that the write path reads.
        """
        cdef Py_buffer verdict_view
        cdef bint verdicts_pinned = False
        cdef const unsigned char *verdict
        cdef Py_ssize_t i, end, size, pinned = 0, done = 0
        if offset < 0:
            raise ValueError("offset must be >= 0")
        if count < 0 or count > len(bufs) or count > len(lengths) or count > len(verdicts):
            raise ValueError("count must be >= 0 and at most len(bufs), len(lengths), len(verdicts)")
        if count == 0:
            return 0
        self._enter()
        try:
            PyObject_GetBuffer(verdicts, &verdict_view, PyBUF_SIMPLE)
            verdicts_pinned = True
            if verdict_view.len < count:
                raise ValueError("verdicts is shorter than count")
            verdict = <const unsigned char *>verdict_view.buf
            self._reserve(count)
            for i in range(count):
                if verdict[i]:
                    continue
                end = lengths[i]
                PyObject_GetBuffer(bufs[i], &self._views[pinned], PyBUF_SIMPLE)
                size = self._views[pinned].len
                if end > size:
                    end = size
                self._ptrs[pinned] = <unsigned char *>self._views[pinned].buf + (offset if offset < size else size)
                self._lens[pinned] = end - offset if end > offset else 0
                pinned += 1
            if pinned == 0:
                return 0
            with nogil:
                done = self._write_nogil(pinned)
            return self._written(done)
        finally:
            release_views(self._views, pinned)
            if verdicts_pinned:
                PyBuffer_Release(&verdict_view)
            self._busy = False

    cdef Py_ssize_t _written(self, Py_ssize_t done) except -1:
        """After _write_nogil: note a GRO refusal, tally errors, raise if the device is gone;
        returns how many packets went."""
        cdef Py_ssize_t i, written = 0
        cdef int code
        if self._gro_refused:
            self.fallbacks.append(
                f"TUN GRO (coalesced TCP writes) refused by the kernel "
                f"({_errname(self._gro_refused)}): writing packets one by one")
            self._gro_refused = 0
        for i in range(done):
            code = self._codes[i]
            if code == 0:
                written += 1
            elif code in TUN_GONE:
                raise OSError(code, _errname(code))
            else:
                self._tally("write:" + _errname(code), 1)
        return written

    cdef Py_ssize_t _run(self, Py_ssize_t i, Py_ssize_t n, wgpy_tcpinfo *tf, size_t *total) noexcept nogil:
        """How many packets from i on coalesce into one TCP super-packet (1: none)."""
        cdef wgpy_tcpinfo tp, tq
        cdef size_t l2 = <size_t>self.l2
        cdef const unsigned char *frame = self._ptrs[i]
        cdef const unsigned char *first = wgpy_l3(frame, <size_t>self._lens[i], l2)
        cdef const unsigned char *prev = first
        cdef const unsigned char *q
        cdef const unsigned char *qf
        cdef Py_ssize_t k = i + 1, count = 1
        cdef size_t size = <size_t>self._lens[i] - l2
        if first == NULL:
            return 1
        wgpy_tcp_info(first, size, tf)
        if tf.version == 0 or first[tf.l4 + 13] & 0x08:
            return 1
        if self.verify and not wgpy_tcp_csum_ok(first, tf):
            return 1
        tp = tf[0]
        while k < n and count < C_GRO_SEGMENTS:
            qf = self._ptrs[k]
            q = wgpy_l3(qf, <size_t>self._lens[k], l2)
            if q == NULL or (l2 and memcmp(qf, frame, l2)):
                break
            wgpy_tcp_info(q, <size_t>self._lens[k] - l2, &tq)
            if tq.version == 0 or not wgpy_tcp_follows(first, tf, prev, &tp, q, &tq):
                break
            if self.verify and not wgpy_tcp_csum_ok(q, &tq):
                break
            if size + tq.payload > C_GRO_BYTES:
                break
            size += tq.payload
            count += 1
            k += 1
            if tq.payload < tf.payload or q[tf.l4 + 13] & 0x08:
                break
            prev = q
            tp = tq
        total[0] = size
        return count

    cdef Py_ssize_t _write_nogil(self, Py_ssize_t n) noexcept nogil:
        cdef iovec iov[C_GRO_SEGMENTS + 2]
        cdef unsigned char zero[C_VNET]
        cdef Py_ssize_t i = 0, k, count
        cdef ssize_t r
        cdef int code
        cdef wgpy_tcpinfo tf
        cdef size_t total = 0
        cdef size_t l2 = <size_t>self.l2
        cdef uint16_t v16
        memset(zero, 0, C_VNET)
        while i < n:
            if self.gro and n - i > 1:
                count = self._run(i, n, &tf, &total)
                if count > 1:
                    wgpy_tcp_super(self._shdr + l2, self._svnet,
                                   self._ptrs[i] + l2, &tf, self._ptrs[i + count - 1] + l2, total)
                    if l2:
                        memcpy(self._shdr, self._ptrs[i], l2)
                        memcpy(&v16, self._svnet + 2, 2)     # hdr_len
                        v16 = <uint16_t>(v16 + l2)
                        memcpy(self._svnet + 2, &v16, 2)
                        memcpy(&v16, self._svnet + 6, 2)     # csum_start
                        v16 = <uint16_t>(v16 + l2)
                        memcpy(self._svnet + 6, &v16, 2)
                    iov[0].iov_base = self._svnet
                    iov[0].iov_len = C_VNET
                    iov[1].iov_base = self._shdr
                    iov[1].iov_len = l2 + tf.header
                    for k in range(count):
                        iov[2 + k].iov_base = self._ptrs[i + k] + l2 + tf.header
                        iov[2 + k].iov_len = <size_t>self._lens[i + k] - l2 - tf.header
                    while True:
                        r = writev(self.fd, iov, <int>(count + 2))
                        if r < 0 and errno == EINTR:
                            continue
                        break
                    code = errno if r < 0 else 0
                    if code == EINVAL:
                        # The kernel does not take our super-packets: write packets one by one.
                        self.gro = False
                        self._gro_refused = code
                        continue
                    for k in range(count):
                        self._codes[i + k] = code
                    i += count
                    if code == 0:
                        self.coalesced += 1
                    elif wgpy_tun_gone(code):
                        return i
                    continue
            iov[0].iov_base = zero
            iov[0].iov_len = C_VNET
            iov[1].iov_base = self._ptrs[i]
            iov[1].iov_len = <size_t>self._lens[i]
            while True:
                if self.vnet_hdr:
                    r = writev(self.fd, iov, 2)
                else:
                    r = writev(self.fd, &iov[1], 1)
                if r < 0 and errno == EINTR:
                    continue
                break
            code = errno if r < 0 else 0
            self._codes[i] = code
            i += 1
            if code and wgpy_tun_gone(code):
                return i
        return n
