"""Endpoints: where a peer's datagrams come from and go to."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A remote UDP address, plus the local address it reached us on (sticky source).

    ``local`` is filled by the I/O shell from IP_PKTINFO so replies leave from the address the
    peer used; the core only carries it along. Two endpoints differing only in ``local`` are the
    same remote for cookie purposes (see :meth:`source_bytes`).
    """

    ip: str
    port: int
    local: str | None = None

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Parse ``a.b.c.d:port`` or ``[v6]:port`` (IP literals only)."""
        if text.startswith("["):
            host, sep, port = text[1:].partition("]:")
        else:
            host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"invalid endpoint {text!r}")
        ip = ipaddress.ip_address(host.split("%", 1)[0])
        number = int(port)
        if not 0 < number < 65536:
            raise ValueError(f"invalid endpoint port in {text!r}")
        return cls(str(ip), number)

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.ip

    def source_bytes(self) -> bytes:
        """Address and port bytes, the input of a cookie (like wireguard-go's DstToBytes)."""
        return ipaddress.ip_address(self.ip).packed + self.port.to_bytes(2, "little")

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if self.is_ipv6 else f"{self.ip}:{self.port}"
