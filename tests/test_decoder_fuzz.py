"""Any bytes fed to the engine are either delivered or dropped and counted, never an exception."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.io.endpoint import Endpoint

from .wgpair import Pair

SOURCE = Endpoint("192.0.2.99", 4242)

# Datagrams that look like each message type (right type header, any body, around the right size)
# as well as arbitrary bytes.
typed = st.builds(
    lambda kind, body: bytes([kind, 0, 0, 0]) + body,
    st.integers(min_value=0, max_value=5),
    st.binary(min_size=0, max_size=200),
)
datagrams = st.lists(st.one_of(st.binary(max_size=300), typed), min_size=1, max_size=8)

_PAIR = Pair()
_PAIR.handshake()


@settings(max_examples=300, deadline=None)
@given(datagrams)
def test_any_bytes_are_delivered_or_counted(batch: list[bytes]) -> None:
    device = _PAIR.b.device
    before = sum(device.drops.values())
    # Aim some at a live receiver index so the transport path is exercised too.
    current = _PAIR.peer_ba.current or _PAIR.peer_ba.next
    assert current is not None
    live = current.local_index.to_bytes(4, "little")
    batch = [d[:4] + live + d[8:] if len(d) >= 8 and d[0] == 4 else d for d in batch]
    out = device.receive_batch([bytearray(d) for d in batch], [len(d) for d in batch], [SOURCE] * len(batch), _PAIR.now)
    handled = len(out.packets) + (sum(device.drops.values()) - before)
    assert handled == len(batch)
