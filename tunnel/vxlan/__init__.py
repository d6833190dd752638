"""The VXLAN engine (sans-I/O): header codec, forwarding database, flooding, proxy ARP.

The shell (TAP device + UDP socket) feeds ``VxlanEngine`` bytes, addresses and ``now``; see
``engine.py`` for the call contract and buffer ownership.
"""

from __future__ import annotations

from .arp import NeighbourTable, build_arp_reply, parse_arp
from .config import VxlanConfig, format_mac, parse_mac
from .engine import Datagram, TxPlan, TxResult, VxlanEngine
from .fdb import ZERO_MAC, Fdb, FdbEntry, FdbFullError, Remote
from .flow import flow_hash, scale_port, source_port
from .header import (
    MIN_DATAGRAM,
    OVERHEAD_IPV4,
    OVERHEAD_IPV6,
    VXLAN_HLEN,
    check_header,
    decode_header,
    encode_header,
    tap_mtu,
    write_header,
)

__all__ = [
    "MIN_DATAGRAM",
    "OVERHEAD_IPV4",
    "OVERHEAD_IPV6",
    "VXLAN_HLEN",
    "ZERO_MAC",
    "Datagram",
    "Fdb",
    "FdbEntry",
    "FdbFullError",
    "NeighbourTable",
    "Remote",
    "TxPlan",
    "TxResult",
    "VxlanConfig",
    "VxlanEngine",
    "build_arp_reply",
    "check_header",
    "decode_header",
    "encode_header",
    "flow_hash",
    "format_mac",
    "parse_arp",
    "parse_mac",
    "scale_port",
    "source_port",
    "tap_mtu",
    "write_header",
]
