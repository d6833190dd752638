"""Type stub of the Cython extension ``tunnel.io._io`` (same API as ``tunnel/io/io_ref.py``)."""

from collections.abc import Callable, Sequence
from typing import Any

Buffer = bytes | bytearray | memoryview

VNET_HDR_LEN: int
VNET_F_NEEDS_CSUM: int
VNET_F_DATA_VALID: int
GSO_NONE: int
GSO_TCPV4: int
GSO_UDP: int
GSO_TCPV6: int
GSO_ECN: int
MAX_GSO_SEGMENTS: int
MAX_GSO_BYTES: int
GRO_MESSAGE: int
SUPER_PACKET: int
SOURCE_GONE: frozenset[int]
GSO_REFUSED: frozenset[int]
TUN_GONE: frozenset[int]

def enable_udp_gro(fd: int) -> bool: ...
def probe_udp_gso(fd: int) -> bool: ...

class UdpBatch:
    fd: int
    family: int
    gso: bool
    gro: bool
    fallbacks: list[str]
    errors: dict[str, int]
    lost_sources: list[Any]
    def __init__(self, fd: int, *, gso: bool = True, gro: bool = False,
                 make_source: Callable[[str, int, str | None], Any] | None = None) -> None: ...
    @property
    def pending(self) -> int: ...
    def close(self) -> None: ...
    def recv(self, bufs: Sequence[bytearray], lengths: list[int], sources: list[Any]) -> int: ...
    def send(self, datagrams: Sequence[tuple[Buffer, Any]]) -> int: ...
    def send_slots(self, bufs: Sequence[Buffer], lengths: Sequence[int], offset: int, count: int,
                   endpoint: Any) -> int: ...

class TunBatch:
    fd: int
    vnet_hdr: bool
    gro: bool
    coalesced: int
    fallbacks: list[str]
    errors: dict[str, int]
    super_packets: int
    hold_oversized: bool
    l2: int
    verify: bool
    csum_partial: int
    def __init__(self, fd: int, *, vnet_hdr: bool = True, gro: bool = False,
                 hold_oversized: bool = False, l2: int = 0, verify: bool = False) -> None: ...
    @property
    def needed(self) -> int: ...
    @property
    def pending(self) -> int: ...
    def read(self, bufs: Sequence[bytearray], lengths: list[int], headroom: int, mtu: int) -> int: ...
    def write(self, packets: Sequence[Buffer]) -> int: ...
    def write_slots(self, bufs: Sequence[bytearray], lengths: Sequence[int], offset: int,
                    verdicts: bytearray, count: int) -> int: ...
