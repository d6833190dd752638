"""Property tests: any bytes into the engine are delivered or dropped-and-counted, never raise."""

from __future__ import annotations

import os
from array import array
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzzing import fuzz_settings
from tests.test_vxlan_frames import vxlan_header
from tests.vxlan_wire import oracle_flow_hash, oracle_port
from tunnel.vxlan import VxlanConfig, VxlanEngine
from tunnel.vxlan.fast import load as load_fast
from tunnel.vxlan.flow import flow_hash, scale_port, source_port

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


@fuzz_settings(300)
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


@fuzz_settings(300)
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


def ip_frame(version: int, proto: int, ports: bytes, fragment: int, vlan: bool, ihl: int,
             tail: bytes) -> bytes:
    eth = bytes(6) + bytes([2, 0, 0, 0, 0, 1])
    eth += (b"\x81\x00\x00\x05" if vlan else b"") + (b"\x08\x00" if version == 4 else b"\x86\xdd")
    if version == 4:
        head = bytes([0x40 | ihl, 0, 0, 60, 0, 1]) + fragment.to_bytes(2, "big") + \
            bytes([64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]) + bytes(max(0, ihl * 4 - 20))
    else:
        head = bytes([0x60, 0, 0, 0, 0, 20, proto, 64]) + bytes(15) + b"\1" + bytes(15) + b"\2"
    return eth + head + ports + tail


flow_frames = st.one_of(
    st.binary(max_size=100),
    st.builds(ip_frame, st.sampled_from([4, 6]), st.sampled_from([6, 17, 1, 33, 132, 136, 47]),
              st.binary(min_size=0, max_size=4), st.sampled_from([0, 0, 0x4000, 0x2000, 1]),
              st.booleans(), st.sampled_from([5, 5, 6, 4, 0, 15]), st.binary(max_size=30)),
)


@fuzz_settings(300)
@given(frame=flow_frames, seed=st.integers(0, 2**32 - 1), lo=st.integers(1, 65534),
       width=st.integers(1, 65534), native=st.booleans())
def test_flow_hash_and_source_port_against_oracle(
    frame: bytes, seed: int, lo: int, width: int, native: bool
) -> None:
    """Both twins' flow_hash and the scaled source port equal the definition's."""
    if native and os.environ.get("WGPY_PURE") == "1":
        native = False  # the pure twin only (the Cython twin is tested without WGPY_PURE)
    fast = load_fast("cython" if native else "pure")
    hi = min(lo + width, 65535)
    expected = oracle_flow_hash(frame, seed)
    assert fast.flow_hash(bytearray(b"pad" + frame), 3, seed) == expected
    assert flow_hash(frame, 0, seed) == expected
    port = scale_port(expected, lo, hi)
    assert port == oracle_port(expected, lo, hi)
    assert lo <= port < hi
    assert source_port(b"xx" + frame, 2, lo, hi, seed) == port
    # Bytes after the longest possible key (VLAN tag, 60-byte IPv4 header, ports: 82 bytes)
    # never move a flow to another port.
    if len(frame) >= 82:
        assert flow_hash(frame + b"more payload", 0, seed) == expected


# ---- the batch forms of the engine, both twins, against the single-datagram form -------------


@pytest.fixture(params=["cython", "pure"])
def fast_twin(request: pytest.FixtureRequest) -> ModuleType:
    if request.param == "cython" and os.environ.get("WGPY_PURE") == "1":
        pytest.skip("WGPY_PURE=1 disables the Cython twin")
    return load_fast(request.param)


@fuzz_settings(200)
@given(items=st.lists(st.tuples(datagrams, sources), max_size=20), proxy=st.booleans(),
       learning=st.booleans())
def test_receive_bufs_equals_receive(
    fast_twin: ModuleType, items: list[tuple[bytes, tuple[Any, ...]]], proxy: bool, learning: bool
) -> None:
    """The batch form (decap_batch in C or Python) delivers what the per-datagram form does."""
    single, batch = make(proxy, learning), make(proxy, learning)
    batch.fast = fast_twin
    expected = [single.receive(dg, src, now=1.0) for dg, src in items]
    bufs = [bytearray(dg) + bytearray(4) for dg, _ in items]
    verdicts = bytearray(len(items))
    accepted = batch.receive_bufs(bufs, [len(dg) for dg, _ in items], [s[0] for _, s in items],
                                  len(items), 1.0, verdicts)
    got = [bytes(bufs[i][8 : len(dg)]) if verdicts[i] == 0 else None
           for i, (dg, _) in enumerate(items)]
    assert got == [None if e is None else bytes(e) for e in expected]
    assert accepted == single.rx_packets == batch.rx_packets
    assert batch.drops == single.drops and batch.rx_bytes == single.rx_bytes


@fuzz_settings(200)
@given(frames=st.lists(st.binary(max_size=100), max_size=20), proxy=st.booleans(),
       headroom=st.sampled_from([0, 8, 16]))
def test_transmit_bufs_equals_transmit(
    fast_twin: ModuleType, frames: list[bytes], proxy: bool, headroom: int
) -> None:
    """scan_tx (C or Python) plans what the per-frame form sends, source ports included."""
    single, batch = make(proxy, True), make(proxy, True)
    batch.fast = fast_twin
    for e in (single, batch):
        e.neigh.add("10.9.9.9", "02:00:00:00:00:99")
    expected = [single.transmit(bytearray(headroom) + bytearray(f), 0.0, headroom) for f in frames]
    bufs = [bytearray(headroom) + bytearray(f) for f in frames]
    verdicts = bytearray(len(frames))
    sports = array("H", [0] * len(frames))
    plan = batch.transmit_bufs(bufs, [len(f) for f in frames], len(frames), 0.0, headroom,
                               verdicts, sports)
    sent = [(i, remote.ip, remote.port, sports[i]) for start, end, remote in plan.items
            for i in range(start, end) if verdicts[i] in (fast_twin.TX_OK, fast_twin.TX_ARP)]
    want = [(i, ip, port, sport) for i, r in enumerate(expected)
            for _, (ip, port), sport in r.datagrams]
    assert sent == want
    assert [bytes(x) for x in plan.local] == [bytes(x) for r in expected for x in r.local]
    assert batch.drops == single.drops and batch.tx_packets == single.tx_packets
