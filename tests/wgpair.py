"""Two WireGuard engines wired together in memory with a fake clock (no devices, no sockets).

The analogue of wireguard-go's tun/tuntest and conn/bindtest: each side's datagrams are handed to
the other side's engine; a ``lossy`` switch drops a side's output to simulate an unreachable peer.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from crypto import keys
from crypto.backend import TransportCipher
from crypto.cookie import SCREENS
from tunnel.io.endpoint import Endpoint
from tunnel.wireguard.device import Device
from tunnel.wireguard.output import Output, packet_buffer

WALL = 1_700_000_000.0


def ipv4_packet(src: str, dst: str, payload: bytes = b"x" * 20) -> bytes:
    total = 20 + len(payload)
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 17, 0,
        ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed,
    )
    return header + payload


def ipv6_packet(src: str, dst: str, payload: bytes = b"y" * 20) -> bytes:
    header = struct.pack(
        "!IHBB16s16s", 6 << 28, len(payload), 17, 64,
        ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed,
    )
    return header + payload


@dataclass
class Side:
    name: str
    device: Device
    endpoint: Endpoint
    delivered: list[bytes] = field(default_factory=list)
    sent: list[tuple[bytes, Endpoint]] = field(default_factory=list)
    lossy: bool = False


class Pair:
    """Engines ``a`` (10.0.0.1, fd00::1) and ``b`` (10.0.0.2, fd00::2), peered with each other."""

    def __init__(
        self,
        cipher: Callable[..., object] | None = None,
        psk: bytes | None = None,
        datapath: object | None = None,
        mtu: int = 1420,
        generation: Callable[[], object] | None = None,
    ) -> None:
        self.now = 1000.0
        seeds = itertools.count()

        def rng(n: int) -> bytes:
            return os.urandom(n) if n != 4 else (next(seeds) * 7919 + 12345).to_bytes(4, "little")

        ka, kb = keys.generate_private(), keys.generate_private()
        kwargs = {"mtu": mtu, "wall_offset": WALL - self.now, "random": rng}
        base = cipher if cipher is not None else TransportCipher
        # Remember each session's keys so tests can rebuild a cipher (e.g. near a counter limit).
        self.session_keys: dict[int, tuple[bytes, bytes]] = {}

        def recording_cipher(send: bytes, receive: bytes, index: int) -> object:
            made = base(send, receive, index)
            self.session_keys[id(made)] = (send, receive)
            return made

        kwargs["cipher"] = recording_cipher
        if datapath is not None:
            kwargs["datapath"] = datapath
            # The handshake screen of the same twin as the batch loops.
            pure = getattr(datapath, "__name__", "").endswith("_ref")
            kwargs["screen"] = SCREENS.load("pure" if pure else "cython")
        if generation is not None:  # each engine's own lane generation counter (of a chosen twin)
            self.a = Side("a", Device(ka, generation=generation(), **kwargs),  # type: ignore[arg-type]
                          Endpoint("192.0.2.1", 51820))
            self.b = Side("b", Device(kb, generation=generation(), **kwargs),  # type: ignore[arg-type]
                          Endpoint("192.0.2.2", 51821))
        else:
            self.a = Side("a", Device(ka, **kwargs), Endpoint("192.0.2.1", 51820))  # type: ignore[arg-type]
            self.b = Side("b", Device(kb, **kwargs), Endpoint("192.0.2.2", 51821))  # type: ignore[arg-type]
        for side, other, v4, v6 in ((self.a, self.b, "10.0.0.2/32", "fd00::2/128"),
                                    (self.b, self.a, "10.0.0.1/32", "fd00::1/128")):
            assert other.device.public_key is not None
            peer = side.device.add_peer(other.device.public_key)
            side.device.set_preshared_key(peer, psk)
            side.device.allowed_ips.insert(v4, peer)
            side.device.allowed_ips.insert(v6, peer)
        self.peer_ab = self.a.device.peers[self.b.device.public_key]  # type: ignore[index]
        self.peer_ba = self.b.device.peers[self.a.device.public_key]  # type: ignore[index]
        self.peer_ab.endpoint = self.b.endpoint  # a knows where b is; b learns a by roaming

    def other(self, side: Side) -> Side:
        return self.b if side is self.a else self.a

    def send(self, side: Side, *packets: bytes) -> None:
        bufs = [packet_buffer(p, side.device.mtu) for p in packets]
        out = side.device.send_batch(bufs, [len(p) for p in packets], self.now)
        self.pump(side, out)

    def pump(self, side: Side, out: Output, limit: int = 100) -> None:
        """Deliver side's output, then every reply, until the wire is quiet."""
        queue = [(side, out)]
        for _ in range(limit):
            if not queue:
                return
            origin, output = queue.pop(0)
            origin.delivered.extend(bytes(p) for p in output.packets)
            datagrams = [(bytes(d), ep) for d, ep in output.datagrams]
            origin.sent.extend(datagrams)
            if origin.lossy or not datagrams:
                continue
            target = self.other(origin)
            to_target = [d for d, ep in datagrams if (ep.ip, ep.port) == (target.endpoint.ip, target.endpoint.port)]
            if to_target:
                queue.append((target, self.deliver(target, to_target, origin.endpoint)))
        raise AssertionError("the wire never went quiet")

    def deliver(self, target: Side, datagrams: list[bytes], source: Endpoint) -> Output:
        bufs = [bytearray(d) for d in datagrams]
        return target.device.receive_batch(bufs, [len(d) for d in datagrams], [source] * len(bufs), self.now)

    def advance(self, seconds: float, step: float = 0.25) -> None:
        """Move the fake clock forward, firing timers on both sides as they fall due."""
        end = self.now + seconds
        while True:
            deadlines = [d for d in (self.a.device.next_timer(), self.b.device.next_timer()) if d is not None]
            upcoming = min(deadlines) if deadlines else None
            if upcoming is None or upcoming > end:
                self.now = end
                return
            self.now = max(self.now, upcoming)
            for side in (self.a, self.b):
                self.pump(side, side.device.update_timers(self.now))

    def handshake(self) -> None:
        self.send(self.a, ipv4_packet("10.0.0.1", "10.0.0.2"))
