"""VXLAN device configuration, in the words of ``ip link add ... type vxlan``.

Defaults follow the Linux driver where it has one:

- ``srcport``: when not given, the kernel takes ``net.ipv4.ip_local_port_range`` at transmit
  time (default 32768 60999). The kernel scales the flow hash into ``[min, max)``: ``max``
  itself is never used.
- ``ttl``: 0 means "not set": 1 towards a multicast destination, else the route's hop limit
  (64 by default). ``ttl_for()`` resolves it for the shell.
- ``ageing`` 300 s (0 = never age, as in the kernel where the ageing timer is not armed);
  ``maxaddress`` 0 = unlimited; ``learning`` on; ``proxy`` off; ``udpcsum`` on.
- ``dstport`` 4789 (IANA). The kernel's own default without ``dstport`` is 8472, which a
  configuration meant to talk to ``ip link ... dstport 4789`` never relies on.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass
from typing import Any

from .header import VNI_MAX

DEFAULT_PORT_RANGE: tuple[int, int] = (32768, 60999)
DEFAULT_TTL: int = 64
MAX_WORKERS: int = 64


def parse_mac(mac: str | bytes | bytearray) -> bytes:
    """Return 6 bytes for ``"aa:bb:cc:dd:ee:ff"`` (also ``-`` separated) or 6 raw bytes."""
    if isinstance(mac, (bytes, bytearray)):
        if len(mac) != 6:
            raise ValueError(f"MAC must be 6 bytes, got {len(mac)}")
        return bytes(mac)
    parts = mac.replace("-", ":").split(":")
    if len(parts) != 6 or not all(1 <= len(p) <= 2 for p in parts):
        raise ValueError(f"invalid MAC address {mac!r}")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"invalid MAC address {mac!r}") from None


def format_mac(mac: bytes | bytearray | memoryview) -> str:
    """``aa:bb:cc:dd:ee:ff`` (lower case, as iproute2 prints it)."""
    return ":".join(f"{b:02x}" for b in bytes(mac))


def normalize_ip(ip: str) -> str:
    """Canonical text of an IPv4/IPv6 address (the form ``recvfrom`` returns)."""
    return ipaddress.ip_address(ip).compressed


def is_multicast_ip(ip: str) -> bool:
    return ipaddress.ip_address(ip).is_multicast


def is_ipv6(ip: str) -> bool:
    return ipaddress.ip_address(ip).version == 6


@dataclass(frozen=True)
class VxlanConfig:
    """Configuration of one VXLAN device (immutable; build a new one with
    ``dataclasses.replace`` to change it, then a new engine or ``engine.reconfigure``).

    ``remote`` and ``group`` are exclusive; either creates the all-zeros flood entry of the
    FDB (permanent), as ``ip link add ... remote A`` / ``group G dev D`` does. ``own_mac`` is
    the TAP device's MAC (6 bytes or text); empty disables the own-source-MAC check until set.
    """

    vni: int
    dstport: int = 4789
    remote: str | None = None
    group: str | None = None
    local: str | None = None
    dev: str | None = None
    srcport: tuple[int, int] = DEFAULT_PORT_RANGE
    ttl: int = 0
    ageing: float = 300.0
    maxaddress: int = 0
    learning: bool = True
    proxy: bool = False
    udpcsum: bool = True
    own_mac: bytes = b""
    name: str = "vxlan0"
    #: bound on the proxy-ARP neighbour table (IP -> MAC bindings learned from traffic)
    neigh_max: int = 4096
    #: seed mixed into the outer source-port flow hash (the shell may pass a random value)
    hash_seed: int = 0
    #: data path threads (tunnel/vxlan/workers.py): 1 = the pumps on the event loop
    workers: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.vni <= VNI_MAX:
            raise ValueError(f"vni {self.vni} out of range 0..{VNI_MAX}")
        if not 1 <= self.dstport <= 65535:
            raise ValueError(f"dstport {self.dstport} out of range")
        if self.remote is not None and self.group is not None:
            raise ValueError("remote and group are mutually exclusive")
        families = set()
        if self.remote is not None:
            object.__setattr__(self, "remote", normalize_ip(self.remote))
            assert self.remote is not None
            if is_multicast_ip(self.remote):
                raise ValueError("remote must be a unicast address (use group)")
            families.add(is_ipv6(self.remote))
        if self.group is not None:
            object.__setattr__(self, "group", normalize_ip(self.group))
            assert self.group is not None
            if not is_multicast_ip(self.group):
                raise ValueError("group must be a multicast address")
            families.add(is_ipv6(self.group))
        if self.local is not None:
            object.__setattr__(self, "local", normalize_ip(self.local))
            assert self.local is not None
            families.add(is_ipv6(self.local))
        if len(families) > 1:
            raise ValueError("remote/group and local must be of one address family")
        lo, hi = self.srcport
        if not (1 <= lo < hi <= 65535):
            raise ValueError(f"srcport range {lo} {hi} invalid (need 1 <= min < max <= 65535)")
        object.__setattr__(self, "srcport", (int(lo), int(hi)))
        if not 0 <= self.ttl <= 255:
            raise ValueError(f"ttl {self.ttl} out of range 0..255")
        if self.ageing < 0:
            raise ValueError("ageing must be >= 0")
        if self.maxaddress < 0:
            raise ValueError("maxaddress must be >= 0")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"workers {self.workers} out of range 1..{MAX_WORKERS}")
        if self.neigh_max < 1:
            raise ValueError("neigh_max must be >= 1")
        if self.own_mac and len(self.own_mac) != 6:
            raise ValueError("own_mac must be 6 bytes (use parse_mac for text)")
        object.__setattr__(self, "own_mac", bytes(self.own_mac))

    @property
    def ipv6(self) -> bool:
        """True when the underlay is IPv6 (from remote/group/local; IPv4 when none given)."""
        for ip in (self.remote, self.group, self.local):
            if ip is not None:
                return is_ipv6(ip)
        return False

    def ttl_for(self, dst_ip: str) -> int:
        """Outer TTL / hop limit towards ``dst_ip``, as the kernel picks it."""
        if self.ttl:
            return self.ttl
        return 1 if is_multicast_ip(dst_ip) else DEFAULT_TTL

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view (MAC as text, srcport as a list)."""
        d = asdict(self)
        d["own_mac"] = format_mac(self.own_mac) if self.own_mac else None
        d["srcport"] = list(self.srcport)
        return d
