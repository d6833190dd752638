"""What the engine asks the shell to do, and the buffers it hands the engine.

:class:`Output` is the result of every :class:`tunnel.wireguard.device.Device` call: datagrams to send and
packets to write to the TUN. Views in it point into the caller's buffers (or into buffers the
engine made, for handshake messages and staged packets) and are valid until the caller reuses
them. :func:`packet_buffer` makes a buffer in the layout the outbound path expects: the packet
at ``HEADROOM``, with room after it for padding and the tag.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from crypto.backend import HEADROOM, TAG_SIZE
from tunnel.io.endpoint import Endpoint
from tunnel.wireguard.constants import PADDING_MULTIPLE

Datagram = tuple[bytes | bytearray | memoryview, Endpoint]


@dataclass(slots=True)
class Output:
    """What a call asks the shell to do: datagrams to send, packets to write to the TUN."""

    datagrams: list[Datagram] = field(default_factory=list)
    packets: list[memoryview] = field(default_factory=list)

    def extend(self, other: Output) -> None:
        self.datagrams.extend(other.datagrams)
        self.packets.extend(other.packets)


def packet_buffer(payload: bytes | bytearray | memoryview, mtu: int) -> bytearray:
    """A fresh buffer holding payload at HEADROOM with room for padding and the tag."""
    size = HEADROOM + max(len(payload), mtu) + PADDING_MULTIPLE + TAG_SIZE
    buf = bytearray(size)
    buf[HEADROOM : HEADROOM + len(payload)] = payload
    return buf
