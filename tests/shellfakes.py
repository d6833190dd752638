"""Stand-ins for the interface shell's devices and loop (no TUN, no sockets), for shell tests.

:class:`FakeTun`, :class:`FakeSocket` and :class:`FakeBind` duck-type :class:`tunnel.io.tun.Tun`,
:class:`tunnel.io.udp.BatchSocket` and :class:`tunnel.io.udp.UdpBind` together with the batch I/O
objects the pumps use (each fake is its own ``io``). :class:`FakeLoop` records ``call_later``.
A real engine pair (:mod:`tests.wgpair`) makes the datagrams.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from crypto.backend import HEADROOM
from tunnel.io.endpoint import Endpoint
from tunnel.wireguard.device import Device
from tunnel.wireguard.interface import Interface
from tunnel.wireguard.output import Output, packet_buffer

from .wgpair import Pair


class FakeTun:
    """Duck-typed :class:`tunnel.io.tun.Tun`: packets queued in ``inbox`` are what reads return."""

    def __init__(self) -> None:
        self.name = "fake0"
        self.fd = -1
        self.mtu = 1420
        self.vnet_hdr = True
        self.offloads = "csum,tso4,tso6"  # what Interface.stats reports
        self.gro = True
        self.pending = 0
        self.needed = 0
        self.io_errors: dict[str, int] = {}
        self.errors = self.io_errors  # what the pump reads through ``io``
        self.inbox: list[bytes] = []
        self.written: list[bytes] = []
        self.reads = 0

    @property
    def io(self) -> FakeTun:
        """The batch I/O the pump reads through: the same queue."""
        return self

    def read(self, bufs: Sequence[bytearray], lengths: list[int], headroom: int, mtu: int) -> int:
        assert headroom == HEADROOM
        return self.read_batch(bufs, lengths, headroom, mtu)

    def read_failed(self, exc: OSError) -> None:
        raise exc

    def write(self, views: Sequence[bytes | bytearray | memoryview]) -> int:
        return self.write_batch(views)

    def write_slots(self, bufs: Sequence[bytearray], lengths: Sequence[int], offset: int,
                    verdicts: bytearray, count: int) -> int:
        return self.write_batch([bytes(bufs[i][offset : lengths[i]]) for i in range(count) if not verdicts[i]])

    def write_failed(self, exc: OSError) -> None:
        raise exc

    def read_batch(self, bufs: Sequence[bytearray], lengths: list[int], headroom: int,
                   mtu: int | None = None) -> int:
        self.reads += 1
        count = 0
        while self.inbox and count < len(bufs):
            packet = self.inbox.pop(0)
            bufs[count][headroom : headroom + len(packet)] = packet
            lengths[count] = len(packet)
            count += 1
        return count

    def write_batch(self, views: Sequence[bytes | bytearray | memoryview]) -> int:
        self.written.extend(bytes(v) for v in views)
        return len(views)


class FakeSocket:
    """Duck-typed :class:`tunnel.io.udp.BatchSocket` receiving the datagrams queued in ``inbox``."""

    def __init__(self, source: Endpoint) -> None:
        self.source = source
        self.pending = 0
        self.inbox: list[bytes] = []
        self.fd = -2

    def fileno(self) -> int:
        return self.fd

    @property
    def io(self) -> FakeSocket:
        """The batch I/O the pump receives through: the same queue."""
        return self

    def recv(self, bufs: Sequence[bytearray], lengths: list[int], sources: list[Endpoint]) -> int:
        return self.recv_batch(bufs, lengths, sources)

    def recv_batch(self, bufs: Sequence[bytearray], lengths: list[int], sources: list[Endpoint]) -> int:
        count = 0
        while self.inbox and count < len(bufs):
            datagram = self.inbox.pop(0)
            bufs[count][: len(datagram)] = datagram
            lengths[count] = len(datagram)
            sources[count] = self.source
            count += 1
        return count


class FakeBind:
    """Duck-typed :class:`tunnel.io.udp.UdpBind` recording what is sent, by either way: its
    ``send_batch`` or the batch I/O's ``send_slots`` (the pump's way; ``v4.io`` is the bind)."""

    def __init__(self) -> None:
        self.gro = True
        self.gso = True
        self.port = 51820
        self.lost_sources: list[Endpoint] = []
        self.sent: list[tuple[bytes, Endpoint]] = []
        self.v4 = self
        self.v6 = None
        self.slot_sends = 0
        self.sockets: list[Any] = []  # the sockets the interface watches (tests add theirs)

    @property
    def io(self) -> FakeBind:
        return self

    def errors(self) -> dict[str, int]:
        return {}

    def send_batch(self, datagrams: Sequence[tuple[Any, Endpoint]]) -> int:
        self.sent.extend((bytes(d), ep) for d, ep in datagrams)
        return len(datagrams)

    def send_slots(self, bufs: Sequence[bytearray], lengths: Sequence[int], offset: int, count: int,
                   endpoint: Endpoint) -> int:
        self.slot_sends += 1
        return self.send_batch([(memoryview(bufs[i])[offset : offset + lengths[i]], endpoint)
                                for i in range(count)])


def make_pair() -> Pair:
    """A pair with a completed handshake on the clock the interface reads (time.monotonic)."""
    pair = Pair()
    pair.now = time.monotonic()
    pair.handshake()
    return pair


class FakeLoop:
    """Records ``call_later`` (the journal's timer), ``call_soon`` and the readers; :meth:`fire`
    runs what is due, :meth:`run_soon` what was called soon, in order."""

    def __init__(self) -> None:
        self.later: list[tuple[float, Callable[[], None]]] = []
        self.soon: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        self.readers: dict[int, tuple[Callable[..., None], tuple[Any, ...]]] = {}

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self.later.append((delay, callback))

    def call_soon(self, callback: Callable[..., None], *args: Any) -> None:
        self.soon.append((callback, args))

    def run_soon(self) -> int:
        calls, self.soon = self.soon, []
        for callback, args in calls:
            callback(*args)
        return len(calls)

    def add_reader(self, fd: int, callback: Callable[..., None], *args: Any) -> None:
        self.readers[fd] = (callback, args)

    def remove_reader(self, fd: int) -> bool:
        return self.readers.pop(fd, None) is not None

    def fire(self) -> int:
        calls, self.later = self.later, []
        for _, callback in calls:
            callback()
        return len(calls)


def make_interface(
    device: Device, pump: ModuleType | None = None, loop: FakeLoop | None = None
) -> tuple[Interface, FakeTun, FakeBind]:
    """An Interface around ``device`` with fake devices; ``pump`` picks the pump twin (default:
    the selected one); with ``loop`` the lanes journal their bookkeeping (else every batch comes
    back to the interface at once)."""
    import tunnel.wireguard.interface as shell

    tun = FakeTun()
    saved = shell.PUMP
    if pump is not None:
        shell.PUMP = pump
    try:
        interface = Interface(tun, device)  # type: ignore[arg-type]
    finally:
        shell.PUMP = saved
    bind = FakeBind()
    interface.bind = bind  # type: ignore[assignment]
    interface._outbound.udp4 = bind.io
    interface._journal.loop = loop
    return interface, tun, bind


def sealed(pair: Pair, packet: bytes) -> bytes:
    """A transport datagram from a to b carrying ``packet``."""
    out: Output = pair.a.device.send_batch([packet_buffer(packet, 1420)], [len(packet)], pair.now)
    assert len(out.datagrams) == 1
    return bytes(out.datagrams[0][0])


