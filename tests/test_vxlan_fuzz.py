"""Property tests: any bytes into the engine are delivered or dropped-and-counted, never raise."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_vxlan_frames import vxlan_header
from tunnel.vxlan import VxlanConfig, VxlanEngine
from tunnel.vxlan.flow import flow_hash, scale_port

OWN = bytes.fromhex("0200000000aa")

# Either fully random bytes or a valid header followed by random bytes (so that the inner
# frame checks and the learning/proxy paths are reached), sometimes with a bit flipped.
datagrams = st.one_of(
    st.binary(max_size=120),
    st.binary(max_size=120).map(lambda b: vxlan_header(42) + b),
    st.tuples(st.binary(min_size=14, max_size=120), st.integers(0, 63)).map(
        lambda t: bytes(
            b ^ (0x80 >> (t[1] % 8)) if i == t[1] // 8 else b
            for i, b in enumerate(vxlan_header(42))
        )
        + t[0]
    ),
)
sources = st.sampled_from([("10.0.0.2", 4789), ("10.0.0.3", 5000), ("fd00::2", 4789, 0, 0)])


def make(proxy: bool, learning: bool) -> VxlanEngine:
    return VxlanEngine(
        VxlanConfig(vni=42, remote="10.0.0.2", own_mac=OWN, proxy=proxy, learning=learning)
    )


@settings(max_examples=300, deadline=None)
@given(
    items=st.lists(st.tuples(datagrams, sources), max_size=20),
    proxy=st.booleans(),
    learning=st.booleans(),
    as_view=st.booleans(),
)
def test_receive_delivers_or_counts(
    items: list[tuple[bytes, tuple[object, ...]]], proxy: bool, learning: bool, as_view: bool
) -> None:
    e = make(proxy, learning)
    delivered = 0
    for i, (dg, src) in enumerate(items):
        buf = memoryview(bytearray(dg)) if as_view else dg
        out = e.receive(buf, src, now=float(i))
        if out is not None:
            delivered += 1
            assert bytes(out) == dg[8:]
            assert len(out) >= 14
    assert delivered == e.rx_packets
    assert e.rx_packets + sum(e.drops.values()) == len(items)  # maxaddress 0: no fdb_full
    e.age(1e6)
    assert len(e.fdb) == 1


@settings(max_examples=300, deadline=None)
@given(
    frames=st.lists(st.binary(max_size=100), max_size=20),
    proxy=st.booleans(),
    headroom=st.sampled_from([0, 8, 12]),
)
def test_transmit_never_raises(frames: list[bytes], proxy: bool, headroom: int) -> None:
    e = make(proxy, True)
    e.neigh.add("10.9.9.9", "02:00:00:00:00:99")
    for f in frames:
        buf = bytearray(headroom) + bytearray(f)
        res = e.transmit(buf, now=0.0, headroom=headroom)
        for payload, (ip, port), sport in res.datagrams:
            assert bytes(payload) == vxlan_header(42) + f
            assert (ip, port) == ("10.0.0.2", 4789)
            assert 32768 <= sport < 60999
        handled = len(res.datagrams) + len(res.local)
        assert handled == 1 or len(f) < 14


@given(
    frame=st.binary(max_size=100),
    seed=st.integers(0, 2**32 - 1),
    lo=st.integers(1, 65534),
    width=st.integers(1, 65534),
)
def test_source_port_always_in_range(frame: bytes, seed: int, lo: int, width: int) -> None:
    hi = min(lo + width, 65535)
    h = flow_hash(frame, 0, seed)
    assert 0 <= h < 2**32
    assert flow_hash(frame, 0, seed) == h
    assert lo <= scale_port(h, lo, hi) < hi
