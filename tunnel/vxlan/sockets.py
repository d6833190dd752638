"""The VXLAN shell's underlay sockets: one UDP socket bound to ``dstport`` that receives (with
UDP GRO when the kernel has it), and a sender that puts the datagrams on the wire.

Source ports. The kernel's vxlan hashes the inner flow into the ``srcport`` range, so that ECMP
and RSS spread flows while one flow keeps one port; the engine does the same (``sports[i]``).
A UDP socket sends from the one port it is bound to, so the senders differ in how they honour it:

- :class:`PoolSender` (the default): a pool of ``POOL_SIZE`` send-only UDP sockets, each bound
  to a port the kernel picks from ``ip_local_port_range`` (the kernel's own default for VXLAN
  source ports), or, when ``srcport`` is configured, to free ports of that range. Frame ``i``
  leaves from socket ``sports[i] % POOL_SIZE``: one flow keeps one source port, flows spread over
  16. Being UDP sockets, they can use UDP GSO: ``fast.GsoBatch`` sends a run of equal-sized
  datagrams to one remote as one ``sendmmsg`` message with UDP_SEGMENT, so a 64 KiB TCP
  super-frame read from the TAP crosses the underlay stack once (and reaches a GRO-enabled
  receiver, such as our own, as one buffer). The sockets receive nothing (a one-instruction BPF
  filter, ``ret #0``), and take 16 ephemeral ports as any client program would.
- :class:`RawSender` (``WGPY_VXLAN_SENDER=raw``): one ``SOCK_RAW``/``IPPROTO_UDP`` socket; we
  write the 8-byte UDP header ourselves, so each flow gets exactly its hashed port over the whole
  range, as the kernel does; the kernel writes the IP header. No GSO: every datagram crosses the
  stack alone (under half the pool's throughput). The UDP checksum is ours to compute over IPv4
  (one big-integer remainder: the one's complement sum of 16-bit words is the number mod 0xFFFF),
  and the kernel's over IPv6 (``IPV6_CHECKSUM``). A raw IPPROTO_UDP socket would also get a copy
  of every UDP datagram of the namespace; the same BPF filter keeps its receive queue empty.

TTL, multicast interface and loop options apply to both as for the kernel's UDP sockets. With
``noudpcsum`` (IPv4) the pool sockets set SO_NO_CHECK, which the kernel does not allow with GSO:
those datagrams go one by one.

Batches. The daemon's data path calls ``sender.send_batch(bufs, lengths, headroom, verdicts,
sports, items)`` once per batch with the engine's ``TxPlan.items``: both senders hand the plan
to their native batch (``fast.GsoBatch`` / ``fast.RawBatch``: one sendmmsg per socket run; the
VXLAN header, and for the raw sender the UDP header with the IPv4 checksum, built per message,
the frames sent in place, nothing written into the caller's buffers). Both return ``(sent,
dropped_full, errors)`` and never raise for a per-datagram error.

Who calls what: the daemon builds the sockets once (``open_receiver``, ``make_sender``), then
calls ``send_batch`` (or ``send(payload, (ip, port), sport)`` for one datagram, which raises
``OSError`` on a failed send) from the event loop thread.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import logging
import os
import random
import socket
import struct
from array import array
from collections.abc import Sequence
from types import ModuleType
from typing import Any, Protocol, TypeAlias

from .config import DEFAULT_PORT_RANGE, VxlanConfig
from .fast import select as select_fast
from .fdb import Remote

log = logging.getLogger("wg-py.vxlan")

Buffer: TypeAlias = bytes | bytearray | memoryview

POOL_SIZE = 16  # outer source ports (sockets) of the pool sender
SO_NO_CHECK = 11
SO_ATTACH_FILTER = 26
IP_MULTICAST_ALL = 49
_UDP = struct.Struct(">HHHH")
_MREQN = struct.Struct("=4s4si")  # struct ip_mreqn: multiaddr, address, ifindex
_MREQ6 = struct.Struct("=16sI")  # struct ipv6_mreq: multiaddr, ifindex


class Sender(Protocol):
    """Sends one VXLAN payload to ``addr`` from UDP source port ``sport`` (if it can)."""

    mode: str

    @property
    def source_port(self) -> str:
        """How the outer source port is chosen, for ``show``."""
        ...

    def send(self, payload: Buffer, addr: tuple[str, int], sport: int) -> None: ...

    def send_batch(
        self, bufs: Sequence[bytearray], lengths: Sequence[int], headroom: int,
        verdicts: bytearray, sports: array[int], items: Sequence[tuple[int, int, Remote]],
        batch: Any = None,
    ) -> tuple[int, int, int]: ...

    def dest(self, remote: Remote) -> Any: ...

    def new_batch(self) -> Any: ...

    @property
    def batch(self) -> Any:
        """The sender's own native batch."""
        ...

    def close(self) -> None: ...


_SENDABLE = (0, 2)  # fast.TX_OK, fast.TX_ARP


def family_of(config: VxlanConfig) -> socket.AddressFamily:
    return socket.AF_INET6 if config.ipv6 else socket.AF_INET


def ifindex(dev: str) -> int:
    """The interface index of ``dev`` in this namespace (``OSError`` if there is none)."""
    return socket.if_nametoindex(dev)


def _multicast_options(sock: socket.socket, config: VxlanConfig) -> None:
    """Outgoing multicast: interface ``dev``, TTL (1 unless configured), no loopback."""
    ttl = config.ttl or 1
    if config.ipv6:
        if config.dev:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex(config.dev))
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ttl)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        if config.ttl:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, config.ttl)
    else:
        if config.dev:
            mreqn = _MREQN.pack(bytes(4), bytes(4), ifindex(config.dev))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        if config.ttl:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, config.ttl)


def join_group(sock: socket.socket, config: VxlanConfig) -> None:
    """Join ``config.group`` on ``config.dev`` (IGMP / MLD); no-op without a group."""
    if config.group is None:
        return
    index = ifindex(config.dev) if config.dev else 0
    group = ipaddress.ip_address(config.group).packed
    if config.ipv6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, _MREQ6.pack(group, index))
    else:
        mreqn = _MREQN.pack(group, bytes(4), index)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
        # only the groups this socket joined, not every group some socket of the host joined
        sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)


def open_receiver(config: VxlanConfig, *, reuseport: bool = False,
                  join: bool = True) -> socket.socket:
    """The non-blocking UDP socket bound to ``dstport``: on ``local`` when given (and no
    group, whose datagrams are addressed to the group), else on the wildcard address.
    ``reuseport``: SO_REUSEPORT before the bind (the workers' group: the kernel spreads
    datagrams over the group's sockets by a hash of the 4-tuple); ``join``: join ``group``
    (only one socket of a group joins it, see docs/multicore.md)."""
    family = family_of(config)
    sock = _new_socket(family)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        host = config.local if config.local and not config.group else ""
        sock.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), config.dstport))
        if join:
            join_group(sock, config)
        elif config.group is not None and family == socket.AF_INET:
            # no group's datagrams for this one (IP_MULTICAST_ALL would deliver every group
            # any socket of the host joined): worker 0's socket alone receives the flood
            sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
        _finish(sock, config)
    except BaseException:
        sock.close()
        raise
    return sock


def _new_socket(family: int) -> socket.socket:
    """A UDP socket of ``family`` (IPv6: v6 only) with a large send buffer, not bound yet."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    except BaseException:
        sock.close()
        raise
    return sock


def _finish(sock: socket.socket, config: VxlanConfig) -> None:
    """After the bind: the multicast sending options, ``noudpcsum`` (IPv4), non-blocking."""
    _multicast_options(sock, config)
    if not config.udpcsum and sock.family == socket.AF_INET:
        sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
    sock.setblocking(False)


class _BatchSender:
    """What the two senders share: one native batch (``fast.GsoBatch``/``fast.RawBatch``) fed
    the plan with each Remote turned into a ``fast.Dest`` once (cached)."""

    ipv6: bool
    _batch: Any

    def __init__(self) -> None:
        # Remote -> fast.Dest (None: unusable from these sockets, e.g. the other family)
        self._dests: dict[Remote, Any] = {}

    def _make_dest(self, remote: Remote) -> Any:
        raise NotImplementedError

    @property
    def batch(self) -> Any:
        """The sender's own native batch."""
        return self._batch

    def _dest(self, remote: Remote) -> Any:
        dest = self._dests.get(remote)
        if dest is None and remote not in self._dests:
            try:
                dest = self._make_dest(remote)
                if dest.ipv6 != self.ipv6:
                    dest = None
            except (OSError, ValueError):
                dest = None
            if len(self._dests) > 4096:
                self._dests.clear()
            self._dests[remote] = dest
        return dest

    def send_batch(
        self, bufs: Sequence[bytearray], lengths: Sequence[int], headroom: int,
        verdicts: bytearray, sports: array[int], items: Sequence[tuple[int, int, Remote]],
        batch: Any = None,
    ) -> tuple[int, int, int]:
        """One native ``send`` for the whole plan (see the module doc). A remote these sockets
        cannot reach (the other address family, not an address) counts as errors. ``batch``:
        the native batch to send with (a worker's, from :meth:`new_batch`; default the
        sender's own)."""
        native = []
        errors = 0
        for start, end, remote in items:
            dest = self._dest(remote)
            if dest is None:
                errors += sum(1 for i in range(start, end) if verdicts[i] in _SENDABLE)
            else:
                native.append((start, end, dest))
        sent, full, failed = (batch or self._batch).send(bufs, lengths, headroom, verdicts, sports,
                                                         native)
        self._after_send()
        return sent, full, failed + errors

    def dest(self, remote: Remote) -> Any:
        """The native ``fast.Dest`` of ``remote`` (cached), or None if these sockets cannot
        reach it (the pumps' FDB snapshot holds these)."""
        return self._dest(remote)

    def new_batch(self) -> Any:
        """Another native batch over the same sockets, for a worker thread (a native batch
        keeps per-call scratch and takes one caller at a time; sendmmsg on a shared fd from
        several threads is safe)."""
        raise NotImplementedError

    def _after_send(self) -> None:
        """Hook after each batch (the pool sender logs GSO fallbacks)."""


class PoolSender(_BatchSender):
    """Send through a pool of UDP sockets, one per outer source port, with UDP GSO (see the
    module doc)."""

    mode = "pool"

    def __init__(self, config: VxlanConfig, fast: ModuleType | None = None,
                 size: int = POOL_SIZE) -> None:
        super().__init__()
        self.fast = fast if fast is not None else select_fast()[1]
        self.ipv6 = config.ipv6
        self.socks = open_pool(config, size)
        # GSO needs the UDP checksum (the kernel refuses UDP_SEGMENT with SO_NO_CHECK)
        gso = config.udpcsum or config.ipv6
        self._batch = self.fast.GsoBatch([s.fileno() for s in self.socks], gso=gso)
        self.ports = [int(s.getsockname()[1]) for s in self.socks]
        self._logged = 0  # fallbacks already logged

    @property
    def fallbacks(self) -> list[str]:
        """What the kernel refused (UDP GSO), for the log."""
        return list(self._batch.fallbacks)

    @property
    def gso(self) -> bool:
        return bool(self._batch.gso)

    @property
    def source_port(self) -> str:
        gso = "GSO" if self.gso else "no GSO"
        ports = self.ports
        return f"hashed over {len(ports)} ports ({min(ports)}..{max(ports)}), {gso}"

    def close(self) -> None:
        self._batch.close()
        for sock in self.socks:
            sock.close()
        self.socks = []

    def _make_dest(self, remote: Remote) -> Any:
        return self.fast.Dest(remote.ip, remote.port, remote.vni)

    def new_batch(self) -> Any:
        return self.fast.GsoBatch([s.fileno() for s in self.socks], gso=self.gso)

    def _after_send(self) -> None:
        fallbacks = self._batch.fallbacks
        while self._logged < len(fallbacks):
            log.debug("vxlan sender: %s", fallbacks[self._logged])
            self._logged += 1

    def send(self, payload: Buffer, addr: tuple[str, int], sport: int) -> None:
        """One datagram from the pool socket of ``sport``; raises OSError if it fails."""
        sock = self.socks[sport % len(self.socks)]
        sock.sendto(payload, (addr[0], addr[1], 0, 0) if self.ipv6 else addr)


def open_pool(config: VxlanConfig, size: int = POOL_SIZE) -> list[socket.socket]:
    """``size`` send-only UDP sockets (non-blocking, receiving nothing): bound to ports the
    kernel picks from ``ip_local_port_range`` when ``srcport`` is the default (the kernel's
    own range for VXLAN source ports), else to free ports of the configured ``[min, max)``
    (fewer sockets if the range is small). Raises OSError if not one socket can be bound."""
    family = family_of(config)
    host = config.local or ("::" if family == socket.AF_INET6 else "0.0.0.0")
    lo, hi = config.srcport
    ranged = (lo, hi) != DEFAULT_PORT_RANGE
    candidates = random.sample(range(lo, hi), min(hi - lo, 4 * size)) if ranged else []
    socks: list[socket.socket] = []
    error: OSError | None = None
    try:
        while len(socks) < size:
            if ranged and not candidates:
                break
            port = candidates.pop() if ranged else 0
            sock = _new_socket(family)
            try:
                sock.bind((host, port))
                _attach_drop_all(sock)
                _finish(sock, config)
            except OSError as exc:
                sock.close()
                if ranged and exc.errno == errno.EADDRINUSE:
                    error = exc
                    continue
                raise
            socks.append(sock)
        if not socks:
            raise error or OSError(errno.EADDRINUSE, f"no free source port in {lo}-{hi}")
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def _attach_drop_all(sock: socket.socket) -> None:
    """Attach the classic BPF program ``ret #0``: the socket receives nothing."""
    insn = ctypes.create_string_buffer(struct.pack("=HBBI", 0x06, 0, 0, 0))
    prog = struct.pack("@HP", 1, ctypes.addressof(insn))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)


class RawSender(_BatchSender):
    """Send through a raw IPPROTO_UDP socket with the engine's source port (see module doc)."""

    mode = "raw"
    source_port = "hashed over the srcport range"

    def __init__(self, config: VxlanConfig, fast: ModuleType | None = None) -> None:
        super().__init__()
        self.fast = fast if fast is not None else select_fast()[1]
        self.ipv6 = config.ipv6
        self.udpcsum = config.udpcsum
        self.local = config.local
        self.config = config
        family = family_of(config)
        self.sock = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_UDP)
        try:
            _attach_drop_all(self.sock)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            if self.ipv6:
                # the kernel fills the UDP checksum at offset 6 (mandatory over IPv6)
                self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_CHECKSUM, 6)
            if config.local:
                self.sock.bind((config.local, 0))
            _multicast_options(self.sock, config)
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        self._sendmsg = self.sock.sendmsg
        # IPv4 pseudo-header partial sums (mod 0xFFFF) per destination, without the length
        self._pseudo: dict[str, int] = {}
        self._batch = self.fast.RawBatch(self.sock.fileno(), udpcsum=config.udpcsum)

    def close(self) -> None:
        self._batch.close()
        self.sock.close()

    def new_batch(self) -> Any:
        return self.fast.RawBatch(self.sock.fileno(), udpcsum=self.udpcsum)

    def _make_dest(self, remote: Remote) -> Any:
        pseudo = 0 if self.ipv6 else self._pseudo_sum(remote.ip) % 0xFFFF
        return self.fast.Dest(remote.ip, remote.port, remote.vni, pseudo)

    def _source_for(self, dst: str) -> str:
        """The source address the kernel will use towards ``dst`` (``local`` if given)."""
        if self.local:
            return self.local
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            _multicast_options(probe, self.config)
            probe.connect((dst, 9))
            return str(probe.getsockname()[0])
        finally:
            probe.close()

    def _pseudo_sum(self, dst: str) -> int:
        value = self._pseudo.get(dst)
        if value is None:
            src = socket.inet_aton(self._source_for(dst))
            value = int.from_bytes(src + socket.inet_aton(dst), "big") + socket.IPPROTO_UDP
            if len(self._pseudo) > 4096:
                self._pseudo.clear()
            self._pseudo[dst] = value
        return value

    def send(self, payload: Buffer, addr: tuple[str, int], sport: int) -> None:
        dst, dport = addr
        length = 8 + len(payload)
        if self.ipv6:
            self._sendmsg((_UDP.pack(sport, dport, length, 0), payload), (), 0, (dst, 0, 0, 0))
            return
        csum = 0
        if self.udpcsum:
            csum = udp_checksum(self._pseudo_sum(dst), sport, dport, length, payload)
        self._sendmsg((_UDP.pack(sport, dport, length, csum), payload), (), 0, (dst, 0))


def udp_checksum(pseudo: int, sport: int, dport: int, length: int, payload: Buffer) -> int:
    """IPv4 UDP checksum. ``pseudo`` is the source+destination address words plus the protocol
    (as one integer, reduced mod 0xFFFF like everything here). Never returns 0 (RFC 768: a
    computed zero is sent as 0xFFFF)."""
    value = int.from_bytes(payload, "big")
    if len(payload) & 1:
        value <<= 8
    total = (pseudo + length + (sport << 48 | dport << 32 | length << 16) + value) % 0xFFFF
    return 0xFFFF - total if total else 0xFFFF


def make_sender(config: VxlanConfig, fast: ModuleType | None = None) -> Sender:
    """The :class:`PoolSender`, or the :class:`RawSender` when ``WGPY_VXLAN_SENDER=raw`` asks
    for it (see module doc); raises OSError if the sockets cannot be opened."""
    if os.environ.get("WGPY_VXLAN_SENDER", "pool") == "raw":
        return RawSender(config, fast)
    return PoolSender(config, fast)
