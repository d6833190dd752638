"""UDP for the daemon: batch receive/send with the local address of every datagram.

:class:`BatchSocket` is one non-blocking UDP socket driven by the batch I/O of
``tunnel.io.offload.select_io()``: ``tunnel.io._io`` (Cython: recvmmsg/sendmmsg, UDP GRO on receive,
UDP GSO on send, GIL released) or, with ``WGPY_PURE=1`` or without the extension,
``tunnel.io.io_ref`` (the pure-Python twin). Its two batch methods are:

* ``recv_batch(bufs, lengths, sources) -> count``: datagram ``i`` at ``bufs[i][0:lengths[i]]``
  from ``sources[i]`` (an :class:`~tunnel.io.endpoint.Endpoint` whose ``local`` is the address it was
  sent to, IP_PKTINFO). With GRO a coalesced message is split into consecutive slots; segments
  that did not fit stay queued (:attr:`BatchSocket.pending`) and come first on the next call,
  which the owner must make even though the fd is no longer readable.
* ``send_batch(datagrams) -> count``: each datagram leaves from ``endpoint.local`` when set
  (sticky source); runs to one destination of one size leave as one GSO message. When sending
  from the sticky source fails (the address is gone: EINVAL, EADDRNOTAVAIL or ENETUNREACH) the
  datagram is retried once from any address and the endpoint is appended to
  :attr:`BatchSocket.lost_sources`, so the owner clears ``local`` on the peer.

Offloads the kernel refuses (GRO, GSO) are logged once at verbose (INFO) with the reason.

:class:`UdpBind` is what the interface holds: an IPv4 and an IPv6 socket on the same port, as
wireguard-go binds (the v6 one with IPV6_V6ONLY). Sockets are created, bound and closed here;
buffers belong to the caller and are never kept after a call returns.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections import Counter
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from tunnel.io import offload
from tunnel.io.endpoint import Endpoint

log = logging.getLogger(__name__)

IP_PKTINFO = 8
IPV6_RECVPKTINFO = 49
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
SO_MARK = 36
SOCKET_BUFFER = 7 << 20  # as wireguard-go's socketBufferSize

IO_NAME, _io = offload.select_io()

Payload = bytes | bytearray | memoryview
_endpoint_of = itemgetter(1)


class BatchSocket:
    """One non-blocking UDP socket with IP_PKTINFO (or IPV6_RECVPKTINFO) on.

    ``errors`` counts receive and send failures by errno name; ``lost_sources`` collects
    endpoints whose sticky source address was gone (the owner drains it after each
    :meth:`send_batch`). ``gro`` says whether the kernel accepted UDP_GRO.
    """

    def __init__(self, family: int, port: int, fwmark: int = 0, reuseport: bool = False) -> None:
        self.family = family
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if reuseport:  # before bind: one socket of a group sharing the port (workers N)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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
            fd = sock.fileno()
            self.gro: bool = bool(_io.enable_udp_gro(fd))
            self._io = _io.UdpBatch(fd, gso=True, gro=self.gro, make_source=Endpoint)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        kind = "IPv6" if family == socket.AF_INET6 else "IPv4"
        if not self.gro:
            log.info("%s UDP GRO (UDP_GRO) refused by the kernel: one datagram per message", kind)
        self._fallbacks_logged = 0
        self.log_fallbacks()
        log.debug("%s UDP socket on port %d: %s I/O, gso=%s gro=%s", kind, self.port, IO_NAME,
                  self._io.gso, self.gro)

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def io(self) -> Any:
        """The batch I/O object (for the interface's pump, which sends through it directly)."""
        return self._io

    @property
    def lost_sources(self) -> list[Endpoint]:
        """Endpoints whose sticky source was gone, appended by the batch I/O as it sends."""
        lost: list[Endpoint] = self._io.lost_sources
        return lost

    @lost_sources.setter
    def lost_sources(self, shared: list[Endpoint]) -> None:
        self._io.lost_sources = shared

    @property
    def pending(self) -> int:
        """Datagrams received (GRO) but not handed out yet: call :meth:`recv_batch` again."""
        return int(self._io.pending)

    @property
    def errors(self) -> Counter[str]:
        """Failures so far by ``recv:ERRNO`` / ``send:ERRNO`` (a fresh Counter)."""
        return Counter(self._io.errors)

    def set_mark(self, mark: int) -> None:
        """SO_MARK (0 clears it); needs CAP_NET_ADMIN. Raises OSError."""
        self.sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)

    def close(self) -> None:
        self._io.close()
        self.sock.close()

    def log_fallbacks(self) -> None:
        """Log (verbose) the offload fallbacks the batch I/O took since the last call."""
        fallbacks = self._io.fallbacks
        while self._fallbacks_logged < len(fallbacks):
            log.info("UDP port %d: %s", self.port, fallbacks[self._fallbacks_logged])
            self._fallbacks_logged += 1

    # ------------------------------------------------------------------ data path

    def recv_batch(self, bufs: Sequence[bytearray], lengths: list[int], sources: list[Endpoint]) -> int:
        """Receive until EAGAIN or ``len(bufs)`` datagrams; returns the count.

        ``lengths`` and ``sources`` must have ``len(bufs)`` slots; slot ``i`` is set for each
        datagram. A datagram longer than its buffer is truncated (and will fail authentication).
        Errors are counted, never raised (except a wrong call: ValueError).
        """
        return int(self._io.recv(bufs, lengths, sources))

    def send_batch(self, datagrams: Sequence[tuple[Payload, Endpoint]]) -> int:
        """Send each datagram to its endpoint, from ``endpoint.local`` when set; returns the count.

        Failures (a full buffer, unreachable networks, firewall) drop datagrams and are counted in
        :attr:`errors`; nothing raises. The payloads are only borrowed for the call.
        """
        sent = int(self._io.send(datagrams))
        if len(self._io.fallbacks) != self._fallbacks_logged:
            self.log_fallbacks()
        return sent


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
        self.lost_sources: list[Endpoint] = []
        for sock in sockets:  # one list for all: the owner checks a single attribute per batch
            sock.lost_sources = self.lost_sources

    @classmethod
    def open(cls, port: int, fwmark: int = 0, attempts: int = 100, reuseport: bool = False) -> UdpBind:
        """Bind both families on ``port`` (0: one free in both). Raises OSError (EADDRINUSE).

        ``reuseport``: SO_REUSEPORT on each socket, so that more sockets (a worker's each) can
        join the group on that port; off by default, so a second daemon on a port fails."""
        for _ in range(attempts if port == 0 else 1):
            v4: BatchSocket | None = None
            try:
                v4 = BatchSocket(socket.AF_INET, port, fwmark, reuseport)
            except OSError as exc:
                if exc.errno != errno.EAFNOSUPPORT:
                    raise
            chosen = v4.port if v4 is not None else port
            try:
                v6 = BatchSocket(socket.AF_INET6, chosen, fwmark, reuseport)
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

    @property
    def gro(self) -> bool:
        """True if every socket coalesces with UDP GRO (receive slots may then be small)."""
        return all(sock.gro for sock in self.sockets)

    @property
    def gso(self) -> bool:
        """True if every socket sends with UDP GSO (the kernel took UDP_SEGMENT)."""
        return all(bool(sock.io.gso) for sock in self.sockets)

    def set_mark(self, mark: int) -> None:
        for sock in self.sockets:
            sock.set_mark(mark)

    def send_batch(self, datagrams: Sequence[tuple[Payload, Endpoint]]) -> int:
        """Send each datagram on the socket of its endpoint's family; returns the count sent."""
        v4 = self.v4
        v6 = self.v6
        if v6 is None:
            return v4.send_batch(datagrams) if v4 is not None else 0
        if v4 is None:
            return v6.send_batch(datagrams)
        # A batch usually goes to one endpoint object (a lone datagram always does): compare
        # identities (hashing a dataclass costs more), else look at each distinct endpoint once.
        first = datagrams[0][1] if datagrams else None
        if first is None or all(d[1] is first for d in datagrams):
            if first is not None and first.is_ipv6:
                return v6.send_batch(datagrams)
            return v4.send_batch(datagrams)
        endpoints = list(map(_endpoint_of, datagrams))
        families = {e.is_ipv6 for e in {id(e): e for e in endpoints}.values()}
        if families == {False}:
            return v4.send_batch(datagrams)
        if families == {True}:
            return v6.send_batch(datagrams)
        return v4.send_batch([d for d in datagrams if not d[1].is_ipv6]) + v6.send_batch(
            [d for d in datagrams if d[1].is_ipv6]
        )

    def log_fallbacks(self) -> None:
        """Log offload fallbacks taken by sends that bypassed :meth:`send_batch` (the pump)."""
        for sock in self.sockets:
            sock.log_fallbacks()

    def take_lost_sources(self) -> list[Endpoint]:
        """The endpoints whose sticky source was gone since the last call (and forget them).

        :attr:`lost_sources` (shared by the sockets) is non-empty exactly when this has work.
        """
        if not self.lost_sources:
            return []
        lost = list(self.lost_sources)
        self.lost_sources.clear()
        return lost

    def errors(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for sock in self.sockets:
            total.update(sock.errors)
        return total

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
