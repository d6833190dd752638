"""Differential fuzzing of the L2 overlay's loops (tunnel/overlay/_l2.pyx and l2_ref.py): the same
random batches to both twins, the same verdicts, outputs, buffers and errors.

``claim`` reads decrypted packets a peer chose (after the allowed-IPs check, but anything else
goes); ``encap`` reads frames from the TAP with the engine's verdicts. Skipped (visibly) under
``WGPY_PURE=1``, as tests/test_twin_fuzz.py; ``make fuzz`` raises the example counts through
``WGPY_FUZZ_EXAMPLES``.
"""

from __future__ import annotations

import os
import struct
from array import array
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel.overlay.l2 import load

from .fuzzing import fuzz_settings
from .vxlan_wire import ones_sum

pytestmark = pytest.mark.skipif(os.environ.get("WGPY_PURE") == "1",
                                reason="WGPY_PURE=1: differential tests need the Cython twin")

L2 = {name: load(name) for name in ("cython", "pure")}
LOCAL4 = bytes([10, 9, 0, 1])
LOCAL6 = bytes.fromhex("fd090000000000000000000000000001")
HEAD = 16


def _csum(src: bytes, dst: bytes, udp: bytes, ulen: int) -> int:
    """The UDP checksum of ``udp`` (the first ``ulen`` bytes count), RFC 1071 (tests/vxlan_wire)."""
    data = udp[:ulen]
    total = ones_sum(src + dst + struct.pack(">xBH", 17, ulen) + data[:6] + b"\0\0" + data[8:])
    return 0xFFFF - total or 0xFFFF


def _packet4(dst: bytes, dport: int, ulen_delta: int, csum: int | None, frag: int, ihl: int, body: bytes) -> bytes:
    ulen = max(0, 8 + len(body) + ulen_delta) & 0xFFFF
    options = bytes(4 * (ihl - 5)) if ihl > 5 else b""
    src = bytes([10, 9, 0, 2])
    hdr = struct.pack(">BBHHHBBH4s", 0x40 | ihl, 0, 0, 0, frag, 64, 17, 0, src) + dst + options
    udp = struct.pack(">HHHH", 1234, dport, ulen, 0) + body
    value = _csum(src, dst, udp, ulen) if csum is None else csum
    return hdr + udp[:6] + struct.pack(">H", value) + udp[8:]


def _packet6(dst: bytes, dport: int, ulen_delta: int, csum: int | None, nh: int, body: bytes) -> bytes:
    ulen = max(0, 8 + len(body) + ulen_delta) & 0xFFFF
    src = bytes.fromhex("fd090000000000000000000000000002")
    udp = struct.pack(">HHHH", 1234, dport, ulen, 0) + body
    value = _csum(src, dst, udp, ulen) if csum is None else csum
    return struct.pack(">IHBB", 0x60000000, ulen, nh, 64) + src + dst + udp[:6] + struct.pack(">H", value) + udp[8:]


checksums = st.none() | st.none() | st.just(0) | st.integers(0, 0xFFFF)  # None: the right one
packets4 = st.builds(_packet4, st.sampled_from([LOCAL4, LOCAL4, bytes([10, 9, 0, 7])]),
                     st.sampled_from([4789, 4789, 4790]), st.sampled_from([0, 0, -3, 2]) | st.integers(-10, 3),
                     checksums, st.sampled_from([0, 0, 0x4000, 0x2000, 1]), st.sampled_from([5, 5, 6, 4, 0]),
                     st.binary(max_size=80))
packets6 = st.builds(_packet6, st.sampled_from([LOCAL6, LOCAL6, bytes(16)]), st.sampled_from([4789, 4789, 4790]),
                     st.sampled_from([0, 0, -3, 2]) | st.integers(-10, 3), checksums, st.sampled_from([17, 17, 6, 0]),
                     st.binary(max_size=80))


def _run_claim(mod: Any, items: list[tuple[bytes, int, int]], local: bytes) -> Any:
    bufs, lengths = [], []
    for packet, cut, extra in items:
        buf = bytearray(HEAD + 200)
        body = packet[: max(0, len(packet) - cut)]
        buf[HEAD : HEAD + len(body)] = body
        bufs.append(buf)
        lengths.append(HEAD + len(body) + extra)  # an end past the buffer is clipped
    verdicts = bytearray(b"\0" * len(items))
    for i, (_, cut, _) in enumerate(items):
        if cut == 7:
            verdicts[i] = 1
    out_bufs: list[bytearray] = []
    out_lengths: list[int] = []
    sources: list[str] = []
    try:
        result = mod.claim(bufs, lengths, len(items), HEAD, verdicts, local, 4789, out_bufs, out_lengths, sources,
                           mod.SourceCache())
    except Exception as exc:
        return ("raised", type(exc).__name__)
    return (result, bytes(verdicts), out_lengths, sources, [bytes(b) for b in bufs],
            [bufs.index(b) for b in out_bufs])


@fuzz_settings(300)
@given(st.lists(st.tuples(packets4 | packets6, st.sampled_from([0, 0, 0, 3, 7]) | st.integers(0, 8),
                          st.sampled_from([0, 0, 0, 1]) | st.integers(-5, 300)), max_size=10),
       st.booleans())
def test_claim_twins_agree(items: list[tuple[bytes, int, int]], ipv6: bool) -> None:
    local = LOCAL6 if ipv6 else LOCAL4
    assert _run_claim(L2["cython"], items, local) == _run_claim(L2["pure"], items, local)


def _run_encap(mod: Any, frames: list[tuple[bytes, int, int]], ipv6: bool, mtu: int, spares: int,
               start: int, end: int) -> Any:
    tmpl = mod.template(LOCAL6 if ipv6 else LOCAL4, bytes(15) + b"\2" if ipv6 else bytes([10, 9, 0, 2]),
                        4789, 42, 64)
    headroom = HEAD + len(tmpl)
    bufs, lengths = [], []
    for frame, _, _used in frames:
        buf = bytearray(headroom + 120)
        buf[headroom : headroom + len(frame)] = frame
        bufs.append(buf)
        lengths.append(len(frame))
    verdicts = bytearray(v for _, v, _ in frames)
    used = bytearray(u for _, _, u in frames)
    sports = array("H", [40000 + i for i in range(len(frames))])
    pool = [bytearray(headroom + 120) for _ in range(spares)]
    out_bufs: list[bytearray] = []
    out_lengths: list[int] = []
    try:
        result = mod.encap(bufs, lengths, start, end, headroom, verdicts, sports, tmpl, mtu, out_bufs,
                           out_lengths, pool, used)
    except Exception as exc:
        return ("raised", type(exc).__name__)
    return (result, out_lengths, [bytes(b) for b in out_bufs], bytes(used), len(pool))


@fuzz_settings(300)
@given(st.lists(st.tuples(st.binary(max_size=110), st.sampled_from([0, 0, 1, 2, 3]), st.sampled_from([0, 0, 1])),
                max_size=8),
       st.booleans(), st.sampled_from([200, 200, 90]) | st.integers(0, 200), st.integers(0, 3),
       st.sampled_from([0, 0, 1]) | st.integers(-1, 3), st.sampled_from([99, 99, 2]) | st.integers(0, 9))
def test_encap_twins_agree(frames: list[tuple[bytes, int, int]], ipv6: bool, mtu: int, spares: int,
                           start: int, end: int) -> None:
    if end == 99:
        end = len(frames)  # mostly the whole batch
    args = (frames, ipv6, mtu, spares, start, end)
    assert _run_encap(L2["cython"], *args) == _run_encap(L2["pure"], *args)
