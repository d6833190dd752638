"""VXLAN header codec (RFC 7348) and the Linux receive-rule checks on it.

Wire format, 8 bytes, network order::

    0                   1                   2                   3
    |R|R|R|R|I|R|R|R|          Reserved (24 bits)                   |
    |          VXLAN Network Identifier (VNI)       |  Reserved (8)  |

The I flag (0x08 in the first byte) must be set; every other bit outside the VNI is reserved.
The Linux driver drops a datagram with ANY reserved bit set (stricter than the RFC, which says
"ignore"), and we do the same; we always send zeros there.

Sizes: the outer IP/UDP headers are written by the kernel socket, so the only headroom a frame
needs for encapsulation is ``VXLAN_HLEN`` (8) bytes in front of the inner Ethernet frame.
"""

from __future__ import annotations

import struct
from typing import Final

VXLAN_HLEN: Final = 8
ETH_HLEN: Final = 14
ETH_ALEN: Final = 6
#: minimum VXLAN payload the kernel accepts: the header plus an inner Ethernet header
MIN_DATAGRAM: Final = VXLAN_HLEN + ETH_HLEN

FLAG_I: Final = 0x08
#: first 32-bit word with only the I flag set
FLAGS_WORD: Final = FLAG_I << 24
VNI_MAX: Final = (1 << 24) - 1

#: Outer overhead over the lower device: outer IP + UDP (8) + VXLAN (8) + inner Ethernet (14).
OVERHEAD_IPV4: Final = 20 + 8 + VXLAN_HLEN + ETH_HLEN  # 50
OVERHEAD_IPV6: Final = 40 + 8 + VXLAN_HLEN + ETH_HLEN  # 70

_WORDS = struct.Struct(">II")

# Stable drop-reason names for the header checks (the engine counts them).
DROP_TOO_SHORT: Final = "too_short"
DROP_NO_I_FLAG: Final = "no_i_flag"
DROP_WRONG_VNI: Final = "wrong_vni"
DROP_RESERVED_BITS: Final = "reserved_bits"


def encode_header(vni: int) -> bytes:
    """Return the 8 header bytes for ``vni``: I flag set, every reserved bit zero."""
    if not 0 <= vni <= VNI_MAX:
        raise ValueError(f"VNI {vni} out of range 0..{VNI_MAX}")
    return _WORDS.pack(FLAGS_WORD, vni << 8)


def write_header(buf: bytearray | memoryview, offset: int, vni: int) -> None:
    """Write the header for ``vni`` at ``buf[offset:offset+8]`` in place (``buf`` writable)."""
    if not 0 <= vni <= VNI_MAX:
        raise ValueError(f"VNI {vni} out of range 0..{VNI_MAX}")
    _WORDS.pack_into(buf, offset, FLAGS_WORD, vni << 8)


def decode_header(data: bytes | bytearray | memoryview) -> tuple[int, int]:
    """Return ``(flags_word, vni)`` of the first 8 bytes, without any check (``ValueError`` if
    fewer than 8 bytes). ``flags_word`` is the first 32-bit word as sent."""
    if len(data) < VXLAN_HLEN:
        raise ValueError("VXLAN header needs 8 bytes")
    flags_word, vni_word = _WORDS.unpack_from(data, 0)
    return flags_word, vni_word >> 8


def check_header(data: bytes | bytearray | memoryview, vni: int) -> str | None:
    """Apply the kernel's receive rules on the header, in the kernel's order.

    Returns ``None`` when the datagram passes, else the drop reason: ``too_short`` (fewer than
    8 header + 14 inner Ethernet bytes), ``no_i_flag``, ``wrong_vni`` (the device's VNI is the
    only one known), ``reserved_bits`` (any reserved bit set). The kernel checks the header
    length, then I, VNI, reserved bits, and only then the inner Ethernet header length; both
    length failures are ``too_short`` here.
    """
    n = len(data)
    if n < VXLAN_HLEN:
        return DROP_TOO_SHORT
    flags_word, vni_word = _WORDS.unpack_from(data, 0)
    if not flags_word & FLAGS_WORD:
        return DROP_NO_I_FLAG
    if vni_word >> 8 != vni:
        return DROP_WRONG_VNI
    if flags_word != FLAGS_WORD or vni_word & 0xFF:
        return DROP_RESERVED_BITS
    if n < MIN_DATAGRAM:
        return DROP_TOO_SHORT
    return None


def tap_mtu(lower_mtu: int, ipv6: bool) -> int:
    """MTU for the TAP device over a lower device of ``lower_mtu``: minus 50 (IPv4) or 70
    (IPv6) so that encapsulated frames never need fragmenting (VTEPs must not fragment)."""
    mtu = lower_mtu - (OVERHEAD_IPV6 if ipv6 else OVERHEAD_IPV4)
    if mtu < 68:
        raise ValueError(f"lower MTU {lower_mtu} too small for VXLAN")
    return mtu
