"""Any bytes fed to the engine are either delivered or dropped and counted, never an exception.

Runs on both twins (conftest ``backend``: the Cython transport with the Cython batch loops, or
the pure-Python references of both); tests/test_twin_fuzz.py compares the twins' verdicts.
"""

from __future__ import annotations

from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel.io.endpoint import Endpoint
from tunnel.wireguard.datapath import load as load_datapath

from .fuzzing import fuzz_settings
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

_PAIRS: dict[str, Pair] = {}


def shaken_pair(backend: ModuleType) -> Pair:
    """One handshaken pair per twin, kept across examples (the engine must survive them all)."""
    native = backend.__name__ == "crypto._transport"
    name = "cython" if native else "pure"
    if name not in _PAIRS:
        pair = Pair(cipher=backend.TransportCipher, datapath=load_datapath(name))
        assert pair.b.device.datapath is load_datapath(name)
        pair.handshake()
        _PAIRS[name] = pair
    return _PAIRS[name]


@pytest.fixture
def pair(backend: ModuleType) -> Pair:
    return shaken_pair(backend)


@fuzz_settings(300)
@given(datagrams)
def test_any_bytes_are_delivered_or_counted(pair: Pair, batch: list[bytes]) -> None:
    device = pair.b.device
    before = sum(device.drops.values())
    # Aim some at a live receiver index so the transport path is exercised too.
    current = pair.peer_ba.current or pair.peer_ba.next
    assert current is not None
    live = current.local_index.to_bytes(4, "little")
    batch = [d[:4] + live + d[8:] if len(d) >= 8 and d[0] == 4 else d for d in batch]
    out = device.receive_batch([bytearray(d) for d in batch], [len(d) for d in batch], [SOURCE] * len(batch), pair.now)
    handled = len(out.packets) + (sum(device.drops.values()) - before)
    assert handled == len(batch)
