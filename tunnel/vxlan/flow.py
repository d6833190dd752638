"""Outer UDP source port: a hash of the inner flow scaled into the ``srcport`` range.

The kernel (``udp_flow_src_port``) takes the skb flow hash (inner L3 addresses, protocol and
L4 ports), falls back to a hash of the two MAC addresses and the ethertype, folds it with
``hash ^= hash << 16`` (so the high half, the part that matters, depends on the whole hash)
and returns ``min + ((hash * (max - min)) >> 32)``, a port in ``[min, max)``.

We cannot (and need not) reproduce the kernel's keyed jhash; any stable hash spreads ECMP/RSS
the same way. Ours is CRC-32 (zlib, C speed) seeded with ``seed`` over:

- IPv4: source and destination address, protocol, and the ports for TCP/UDP/SCTP/UDP-Lite
  when the packet is not a fragment;
- IPv6: source and destination address, next header, and the ports when the next header is
  TCP/UDP/SCTP/UDP-Lite (extension headers are not walked);
- anything else: destination and source MAC and the ethertype.

One 802.1Q/802.1ad tag is skipped. Truncated headers fall back to the MAC key. Never raises
on any input.
"""

from __future__ import annotations

from zlib import crc32

_PORT_PROTOCOLS = frozenset((6, 17, 33, 132, 136))
_VLAN_TYPES = frozenset((0x8100, 0x88A8))


def flow_hash(frame: bytes | bytearray | memoryview, offset: int = 0, seed: int = 0) -> int:
    """32-bit hash of the inner flow of the Ethernet frame at ``frame[offset:]``."""
    n = len(frame)
    l3 = offset + 14
    if n < l3:
        return crc32(frame[offset:n], seed)
    et = frame[l3 - 2] << 8 | frame[l3 - 1]
    if et in _VLAN_TYPES and n >= l3 + 4:
        l3 += 4
        et = frame[l3 - 2] << 8 | frame[l3 - 1]
    if et == 0x0800 and n >= l3 + 20:
        ihl = (frame[l3] & 0x0F) * 4
        proto = frame[l3 + 9]
        h = crc32(frame[l3 + 12 : l3 + 20], seed)
        frag = ((frame[l3 + 6] & 0x3F) << 8) | frame[l3 + 7]
        l4 = l3 + ihl
        if proto in _PORT_PROTOCOLS and not frag and ihl >= 20 and n >= l4 + 4:
            h = crc32(frame[l4 : l4 + 4], h)
        return crc32(_BYTE[proto], h)
    if et == 0x86DD and n >= l3 + 40:
        nh = frame[l3 + 6]
        h = crc32(frame[l3 + 8 : l3 + 40], seed)
        l4 = l3 + 40
        if nh in _PORT_PROTOCOLS and n >= l4 + 4:
            h = crc32(frame[l4 : l4 + 4], h)
        return crc32(_BYTE[nh], h)
    return crc32(frame[offset : offset + 14], seed)


_BYTE = [bytes((i,)) for i in range(256)]


def scale_port(hash32: int, port_min: int, port_max: int) -> int:
    """Fold and scale a 32-bit hash into ``[port_min, port_max)`` as the kernel does."""
    h = (hash32 ^ (hash32 << 16)) & 0xFFFFFFFF
    return port_min + ((h * (port_max - port_min)) >> 32)


def source_port(
    frame: bytes | bytearray | memoryview,
    offset: int,
    port_min: int,
    port_max: int,
    seed: int = 0,
) -> int:
    """The outer UDP source port for the frame at ``frame[offset:]``."""
    return scale_port(flow_hash(frame, offset, seed), port_min, port_max)
