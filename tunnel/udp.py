"""UDP for the daemon: batch receive/send with the local address of every datagram.

:class:`BatchSocket` is one non-blocking UDP socket. Its two batch methods are the seam where a
Cython recvmmsg/sendmmsg version will replace the per-datagram loop, so their shape is fixed:

* ``recv_batch(bufs, lengths, sources) -> count``: datagram ``i`` at ``bufs[i][0:lengths[i]]``
  from ``sources[i]``, whose ``local`` is the address it was sent to (IP_PKTINFO);
* ``send_batch(datagrams) -> count``: each datagram leaves from ``endpoint.local`` when set
  (sticky source). When sending from it fails (the address is gone: EINVAL, EADDRNOTAVAIL or
  ENETUNREACH) the datagram is retried once from any address and, if that works, the endpoint
  is appended to :attr:`BatchSocket.lost_sources`, so the owner clears ``local`` on the peer
  (the peer's next datagram teaches a new one).

:class:`UdpBind` is what the interface holds: an IPv4 and an IPv6 socket on the same port, as
wireguard-go binds (the v6 one with IPV6_V6ONLY). Sockets are created, bound and closed here;
buffers belong to the caller and are never kept.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
from collections import Counter
from collections.abc import Sequence

from tunnel.endpoint import Endpoint

log = logging.getLogger(__name__)

IP_PKTINFO = 8
IPV6_RECVPKTINFO = 49
IPV6_PKTINFO = 50
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
SO_MARK = 36
SOCKET_BUFFER = 7 << 20  # as wireguard-go's socketBufferSize

_IN_PKTINFO = struct.Struct("=i4s4s")  # ifindex, spec_dst, addr
_IN6_PKTINFO = struct.Struct("=16si")  # addr, ifindex
_ANC4 = socket.CMSG_SPACE(_IN_PKTINFO.size)
_ANC6 = socket.CMSG_SPACE(_IN6_PKTINFO.size)
# A sticky source that is no longer local fails with EINVAL, EADDRNOTAVAIL or (IPv4 with no
# interface index) ENETUNREACH; a full buffer says nothing about the source address.
_NOT_SOURCE = frozenset({errno.EAGAIN, errno.ENOBUFS, errno.EMSGSIZE, errno.EPERM, errno.EINTR})

Payload = bytes | bytearray | memoryview


class BatchSocket:
    """One non-blocking UDP socket with IP_PKTINFO (or IPV6_RECVPKTINFO) on.

    ``errors`` counts send failures by errno name; ``lost_sources`` collects endpoints whose
    sticky source address was gone (the owner drains it after each :meth:`send_batch`).
    """

    def __init__(self, family: int, port: int, fwmark: int = 0) -> None:
        self.family = family
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
                sock.bind(("::", port))
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
                sock.bind(("0.0.0.0", port))
            sock.setblocking(False)
            _set_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF)
            _set_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF)
            if fwmark:
                sock.setsockopt(socket.SOL_SOCKET, SO_MARK, fwmark)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self.errors: Counter[str] = Counter()
        self.lost_sources: list[Endpoint] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def set_mark(self, mark: int) -> None:
        """SO_MARK (0 clears it); needs CAP_NET_ADMIN. Raises OSError."""
        self.sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)

    def close(self) -> None:
        self.sock.close()

    # ------------------------------------------------------------------ receive

    def recv_batch(self, bufs: Sequence[bytearray], lengths: list[int], sources: list[Endpoint]) -> int:
        """Receive until EAGAIN or ``len(bufs)`` datagrams; returns the count.

        ``lengths`` and ``sources`` must have ``len(bufs)`` slots; slot ``i`` is set for each
        datagram. A datagram longer than its buffer is truncated (and will fail authentication).
        """
        recvmsg_into = self.sock.recvmsg_into
        v6 = self.family == socket.AF_INET6
        anc_size = _ANC6 if v6 else _ANC4
        count = 0
        for buf in bufs:
            try:
                n, ancdata, _flags, address = recvmsg_into([buf], anc_size)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ECONNREFUSED from an earlier ICMP error: not fatal
                self.errors[f"recv:{errno.errorcode.get(exc.errno or 0, exc.errno)}"] += 1
                if count:
                    break
                continue
            local: str | None = None
            for level, kind, data in ancdata:
                if v6 and level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO:
                    addr6, _ = _IN6_PKTINFO.unpack_from(data)
                    local = str(ipaddress.IPv6Address(addr6))
                elif not v6 and level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                    _, spec_dst, _ = _IN_PKTINFO.unpack_from(data)
                    local = socket.inet_ntoa(spec_dst)
            host: str = address[0]
            if v6 and "%" in host:
                host = host.split("%", 1)[0]
            lengths[count] = n
            sources[count] = Endpoint(host, address[1], local)
            count += 1
        return count

    # ------------------------------------------------------------------ send

    def send_batch(self, datagrams: Sequence[tuple[Payload, Endpoint]]) -> int:
        """Send each datagram to its endpoint, from ``endpoint.local`` when set; returns the count.

        Failures (EAGAIN with a full buffer, unreachable networks, firewall) drop that datagram
        and are counted in :attr:`errors`; nothing raises.
        """
        sendmsg = self.sock.sendmsg
        v6 = self.family == socket.AF_INET6
        sent = 0
        for data, endpoint in datagrams:
            address: tuple[str, int] | tuple[str, int, int, int]
            address = (endpoint.ip, endpoint.port, 0, 0) if v6 else (endpoint.ip, endpoint.port)
            ancdata = _source_cmsg(endpoint.local, v6) if endpoint.local else []
            try:
                sendmsg([data], ancdata, 0, address)
                sent += 1
                continue
            except OSError as exc:
                code = exc.errno
                if not ancdata or code in _NOT_SOURCE:
                    self.errors[f"send:{errno.errorcode.get(code or 0, code)}"] += 1
                    continue
            # The sticky source address may have disappeared: let the route pick one instead.
            try:
                sendmsg([data], [], 0, address)
                sent += 1
                self.lost_sources.append(endpoint)
            except OSError as exc:
                self.errors[f"send:{errno.errorcode.get(exc.errno or 0, exc.errno)}"] += 1
        return sent


def _source_cmsg(local: str, v6: bool) -> list[tuple[int, int, bytes]]:
    try:
        packed = ipaddress.ip_address(local).packed
    except ValueError:
        return []
    if v6:
        if len(packed) != 16:
            return []
        return [(socket.IPPROTO_IPV6, IPV6_PKTINFO, _IN6_PKTINFO.pack(packed, 0))]
    if len(packed) != 4:
        return []
    return [(socket.IPPROTO_IP, IP_PKTINFO, _IN_PKTINFO.pack(0, packed, bytes(4)))]


def _set_buffer(sock: socket.socket, force: int, plain: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
    except OSError:  # not root: the plain option, capped by net.core.[rw]mem_max
        try:
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
        except OSError:
            log.debug("cannot enlarge the socket buffer", exc_info=True)


class UdpBind:
    """The listening sockets of one interface: IPv4 and IPv6 on the same port.

    Either family may be missing (a host without IPv6); at least one is bound. ``port`` is the
    port actually bound. :meth:`send_batch` routes each datagram to the socket of its family.
    """

    def __init__(self, sockets: list[BatchSocket]) -> None:
        if not sockets:
            raise ValueError("a bind needs at least one socket")
        self.sockets = sockets
        self.v4 = next((s for s in sockets if s.family == socket.AF_INET), None)
        self.v6 = next((s for s in sockets if s.family == socket.AF_INET6), None)
        self.port = sockets[0].port

    @classmethod
    def open(cls, port: int, fwmark: int = 0, attempts: int = 100) -> UdpBind:
        """Bind both families on ``port`` (0: one free in both). Raises OSError (EADDRINUSE)."""
        for _ in range(attempts if port == 0 else 1):
            v4: BatchSocket | None = None
            try:
                v4 = BatchSocket(socket.AF_INET, port, fwmark)
            except OSError as exc:
                if exc.errno != errno.EAFNOSUPPORT:
                    raise
            chosen = v4.port if v4 is not None else port
            try:
                v6 = BatchSocket(socket.AF_INET6, chosen, fwmark)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE and port == 0 and v4 is not None:
                    v4.close()  # the random port is taken in IPv6 only: pick another
                    continue
                if exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL) and v4 is not None:
                    return cls([v4])
                if v4 is not None:
                    v4.close()
                raise
            return cls([s for s in (v4, v6) if s is not None])
        raise OSError(errno.EADDRINUSE, "no port free in both IPv4 and IPv6")

    def set_mark(self, mark: int) -> None:
        for sock in self.sockets:
            sock.set_mark(mark)

    def send_batch(self, datagrams: Sequence[tuple[Payload, Endpoint]]) -> int:
        """Send each datagram on the socket of its endpoint's family; returns the count sent."""
        v4 = self.v4
        v6 = self.v6
        if v6 is None or (v4 is not None and not any(e.is_ipv6 for _, e in datagrams)):
            return v4.send_batch(datagrams) if v4 is not None else 0
        if v4 is None or all(e.is_ipv6 for _, e in datagrams):
            return v6.send_batch(datagrams)
        return v4.send_batch([d for d in datagrams if not d[1].is_ipv6]) + v6.send_batch(
            [d for d in datagrams if d[1].is_ipv6]
        )

    def take_lost_sources(self) -> list[Endpoint]:
        """The endpoints whose sticky source was gone since the last call (and forget them)."""
        lost: list[Endpoint] = []
        for sock in self.sockets:
            if sock.lost_sources:
                lost.extend(sock.lost_sources)
                sock.lost_sources.clear()
        return lost

    def errors(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for sock in self.sockets:
            total.update(sock.errors)
        return total

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
