from collections.abc import Callable
from typing import Any

from tunnel.io._journal import JOURNAL_LIMIT as JOURNAL_LIMIT
from tunnel.io._journal import RECEIVED as RECEIVED
from tunnel.io._journal import SENT as SENT
from tunnel.io._journal import Journal as Journal
from tunnel.wireguard._lane import ReceiveLane, SendLane

class Outbound:
    device: Any
    tun: Any
    udp4: Any
    udp6: Any
    journal: Journal
    after: Callable[[int, Exception | None], None]
    headroom: int
    tun_bufs: list[bytearray]
    tun_lengths: list[int]
    too_big_seen: int
    now: float
    bufs: list[bytearray]
    lengths: list[int]
    lane: tuple[Any, Any] | None
    sealed: int
    fused: Any
    again: Callable[..., None] | None
    @property
    def send_lane(self) -> SendLane: ...
    def __init__(self, device: Any, tun: Any, udp4: Any, udp6: Any, journal: Journal,
                 after: Callable[[int, Exception | None], None], headroom: int) -> None: ...
    def on_readable(self) -> None: ...
    def settled(self, count: int) -> bool: ...
    def leftover(self, count: int) -> bool: ...
    def record(self, count: int) -> None: ...
    def socket_for(self, endpoint: Any) -> Any: ...
    def run(self, bufs: list[bytearray], lengths: list[int], headroom: int, mtu: int, now: float) -> int: ...

class Inbound:
    device: Any
    tun: Any
    outbound: Outbound
    after: Callable[[Any, int, Exception | None], None]
    headroom: int
    udp_bufs: list[bytearray]
    udp_lengths: list[int]
    udp_sources: list[Any]
    now: float
    bufs: list[bytearray]
    lengths: list[int]
    sources: list[Any]
    keypair: Any
    wire_lengths: list[int]
    results: list[int]
    opened: int
    accepted: tuple[int, int, int]
    verdicts: bytearray
    written: int
    write_error: OSError | None
    local: Callable[..., int] | None
    answer: Callable[[], None] | None
    answered: bool
    replied: int
    reply_error: Exception | None
    fused: Any
    again: Callable[..., None] | None
    @property
    def receive_lane(self) -> ReceiveLane: ...
    def __init__(self, device: Any, tun: Any, outbound: Outbound,
                 after: Callable[[Any, int, Exception | None], None], headroom: int) -> None: ...
    def on_readable(self, sock: Any, udp: Any) -> None: ...
    def settled(self, count: int, udp: Any) -> bool: ...
    def leftover(self, count: int, udp: Any) -> bool: ...
    def run(self, udp: Any, bufs: list[bytearray], lengths: list[int], sources: list[Any], now: float) -> int: ...
