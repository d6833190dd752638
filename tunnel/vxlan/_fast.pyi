"""Type stub of the Cython extension ``tunnel.vxlan._fast`` (same API as ``fast_ref.py``)."""

from array import array
from collections.abc import Sequence
from typing import Any

Buffer = bytes | bytearray | memoryview

MAX_BATCH: int
GSO_SEGMENTS: int
GSO_BYTES: int
RX_OK: int
RX_TOO_SHORT: int
RX_NO_I_FLAG: int
RX_WRONG_VNI: int
RX_RESERVED_BITS: int
RX_OWN_SOURCE_MAC: int
RX_INVALID_SOURCE_MAC: int
RX_STATIC_CONFLICT: int
RX_REASONS: tuple[str, ...]
TX_OK: int
TX_TOO_SHORT: int
TX_ARP: int
TX_DONE: int

def flow_hash(frame: Buffer, offset: int = 0, seed: int = 0) -> int: ...
def udp_checksum(pseudo: int, sport: int, dport: int, vni: int, frame: Buffer) -> int: ...
def pseudo_sum(src: str, dst: str) -> int: ...
def decap_batch(
    bufs: Sequence[bytearray], lengths: Sequence[int], count: int, vni: int, own_mac: bytes,
    learning: bool, sources: Sequence[Any], verdicts: bytearray, runs: list[int],
) -> tuple[int, int]: ...
def scan_tx(
    bufs: Sequence[bytearray], lengths: Sequence[int], count: int, headroom: int, seed: int,
    port_min: int, port_max: int, split_arp: bool, verdicts: bytearray, sports: array[int],
    runs: list[tuple[int, int, int, int]],
) -> int: ...
def write_headers(
    bufs: Sequence[bytearray], verdicts: Buffer, start: int, end: int, headroom: int, vni: int
) -> None: ...

class Dest:
    ip: str
    port: int
    vni: int
    pseudo: int
    ipv6: bool
    def __init__(self, ip: str, port: int, vni: int, pseudo: int = 0) -> None: ...

class RawBatch:
    fd: int
    udpcsum: bool
    ipv6: bool
    def __init__(self, fd: int, *, udpcsum: bool = True) -> None: ...
    def close(self) -> None: ...
    def send(
        self, bufs: Sequence[bytearray], lengths: Sequence[int], headroom: int, verdicts: Buffer,
        sports: array[int], items: Sequence[tuple[int, int, Dest]],
    ) -> tuple[int, int, int]: ...

class GsoBatch:
    nfds: int
    gso: bool
    ipv6: bool
    fallbacks: list[str]
    fd_list: list[int]
    def __init__(self, fds: Sequence[int], *, gso: bool = True) -> None: ...
    def close(self) -> None: ...
    def send(
        self, bufs: Sequence[bytearray], lengths: Sequence[int], headroom: int, verdicts: Buffer,
        sports: array[int], items: Sequence[tuple[int, int, Dest]],
    ) -> tuple[int, int, int]: ...
