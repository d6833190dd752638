from typing import Any

INITIATOR_LIMIT: float
RESPONDER_LIMIT: float
NONE: int

class Generation:
    @property
    def value(self) -> int: ...
    def __init__(self) -> None: ...
    def bump(self) -> None: ...

class SendLane:
    generation: Any
    valid_for: int
    lane: tuple[Any, Any] | None
    cipher: Any
    endpoint: Any
    table: Any
    v6: bool
    slot: int
    mtu: int
    created: float
    limit: float
    hits: int
    misses: int
    def __init__(self, generation: Any) -> None: ...
    def clear(self) -> None: ...
    def holds(self) -> bool: ...
    def check(self, bufs: list[bytearray], lengths: list[int], headroom: int, now: float) -> tuple[Any, Any] | None: ...
    def fill(self, device: Any, lane: tuple[Any, Any], valid_for: int) -> None: ...
    def decide(self, device: Any, bufs: list[bytearray], lengths: list[int], headroom: int,
               now: float) -> tuple[Any, Any] | None: ...

class ReceiveLane:
    generation: Any
    valid_for: int
    receiver: int
    keypair: Any
    cipher: Any
    endpoint: Any
    slot: int
    table: Any
    created: float
    hits: int
    misses: int
    def __init__(self, generation: Any) -> None: ...
    def clear(self) -> None: ...
    def holds(self) -> bool: ...
    def check(self, bufs: list[bytearray], lengths: list[int], sources: list[Any], now: float) -> Any: ...
    def fill(self, device: Any, keypair: Any, valid_for: int) -> None: ...
    def decide(self, device: Any, bufs: list[bytearray], lengths: list[int], sources: list[Any], now: float) -> Any: ...
