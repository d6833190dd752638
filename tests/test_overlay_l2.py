"""The L2 overlay's per-packet loops (tunnel/overlay/_l2.pyx and l2_ref.py): the same tests on
both twins; the headers are checked field by field and the checksums with the oracle of
tests/vxlan_wire.py (RFC 1071, imports nothing of wg-py)."""

from __future__ import annotations

import ipaddress
import struct
from array import array
from types import ModuleType

import pytest

from tests.vxlan_wire import ones_sum
from tunnel.overlay import l2

L4 = ipaddress.IPv4Address("10.9.0.1").packed
R4 = ipaddress.IPv4Address("10.9.0.2").packed
R4B = ipaddress.IPv4Address("10.9.0.3").packed
L6 = ipaddress.IPv6Address("fd00::1").packed
R6 = ipaddress.IPv6Address("fd00::2").packed
WG = 16  # the WireGuard header's room before the inner packet
SIZE = 2048


@pytest.fixture(params=["cython", "pure"])
def mod(request: pytest.FixtureRequest) -> ModuleType:
    return l2.load(request.param)  # a missing native build is an error, never a skip


def frame(n: int, seed: int = 0) -> bytes:
    eth = bytes.fromhex("020000000002" "020000000001" "0800")
    return eth + bytes((seed + i * 7) & 0xFF for i in range(n - 14))


def batch(frames: list[bytes], headroom: int) -> tuple[list[bytearray], list[int]]:
    bufs, lengths = [], []
    for f in frames:
        buf = bytearray(SIZE)
        buf[headroom : headroom + len(f)] = f
        bufs.append(buf)
        lengths.append(len(f))
    return bufs, lengths


def run_encap(mod: ModuleType, frames: list[bytes], tmpl: bytes, *, mtu: int = 1420,
              verdicts: bytes | None = None, spares: int = 0, used: bytearray | None = None,
              sports: list[int] | None = None) -> tuple[tuple[int, int, int], list[bytearray], list[int], int]:
    headroom = WG + len(tmpl)
    bufs, lengths = batch(frames, headroom)
    count = len(frames)
    out_bufs: list[bytearray] = []
    out_lengths: list[int] = []
    result = mod.encap(bufs, lengths, 0, count, headroom, bytearray(verdicts or bytes(count)),
                       array("H", sports or [40000 + i for i in range(count)]), tmpl, mtu, out_bufs,
                       out_lengths, [bytearray(SIZE) for _ in range(spares)], used or bytearray(count))
    return result, out_bufs, out_lengths, headroom


def test_template_fields(mod: ModuleType) -> None:
    t4 = mod.template(L4, R4, 4789, 42, 64)
    assert len(t4) == 36
    assert t4[0] == 0x45 and t4[8] == 64 and t4[9] == 17
    assert struct.unpack(">H", t4[6:8])[0] == 0x4000  # DF, fragment offset 0
    assert t4[12:16] == L4 and t4[16:20] == R4
    assert struct.unpack(">HH", t4[20:24]) == (0, 4789)
    assert t4[28:36] == bytes.fromhex("0800000000002a00")
    t6 = mod.template(L6, R6, 4790, 1, 3)
    assert len(t6) == 56 and t6[0] >> 4 == 6 and t6[6] == 17 and t6[7] == 3
    assert t6[8:24] == L6 and t6[24:40] == R6
    with pytest.raises(ValueError):
        mod.template(L4, R6, 4789, 1, 64)
    with pytest.raises(ValueError):
        mod.template(L4, R4, 4789, 1 << 24, 64)


def test_encap_ipv4(mod: ModuleType) -> None:
    tmpl = mod.template(L4, R4, 4789, 42, 64)
    frames = [frame(1384), frame(60, 3)]
    (appended, oversized, no_spare), out, lengths, headroom = run_encap(mod, frames, tmpl)
    assert (appended, oversized, no_spare) == (2, 0, 0)
    for k, f in enumerate(frames):
        pkt = bytes(out[k][WG : WG + lengths[k]])
        assert lengths[k] == 36 + len(f)
        assert struct.unpack(">H", pkt[2:4])[0] == len(pkt)
        assert ones_sum(pkt[:20]) == 0xFFFF  # a valid IPv4 header checksum
        sport, dport, ulen, csum = struct.unpack(">HHHH", pkt[20:28])
        assert (sport, dport, ulen, csum) == (40000 + k, 4789, len(pkt) - 20, 0)
        assert pkt[28:36] == bytes.fromhex("0800000000002a00")
        assert pkt[36:] == f


def test_encap_ipv6_checksum(mod: ModuleType) -> None:
    tmpl = mod.template(L6, R6, 4789, 7, 64)
    f = frame(1001)  # odd length
    (appended, _, _), out, lengths, _ = run_encap(mod, [f], tmpl)
    assert appended == 1
    pkt = bytes(out[0][WG : WG + lengths[0]])
    assert struct.unpack(">H", pkt[4:6])[0] == len(pkt) - 40
    udp = pkt[40:]
    assert struct.unpack(">H", udp[4:6])[0] == len(udp)
    pseudo = L6 + R6 + struct.pack(">IxxxB", len(udp), 17)
    assert ones_sum(pseudo + udp) == 0xFFFF
    assert udp[16:] == f


def test_encap_replication_copies_oversized_and_no_spare(mod: ModuleType) -> None:
    t1 = mod.template(L4, R4, 4789, 42, 64)
    t2 = mod.template(L4, R4B, 4789, 42, 64)
    frames = [frame(100, 1), frame(1385, 2), frame(200, 3)]  # the second's packet: 1421 bytes
    headroom = WG + 36
    bufs, lengths = batch(frames, headroom)
    verdicts = bytearray(3)
    sports = array("H", [1, 2, 3])
    used = bytearray(3)
    spares = [bytearray(SIZE)]
    out_bufs: list[bytearray] = []
    out_lengths: list[int] = []
    assert mod.encap(bufs, lengths, 0, 3, headroom, verdicts, sports, t1, 1420, out_bufs, out_lengths,
                     spares, used) == (2, 1, 0)
    assert mod.encap(bufs, lengths, 0, 3, headroom, verdicts, sports, t2, 1420, out_bufs, out_lengths,
                     spares, used) == (1, 1, 1)
    assert not spares
    assert out_bufs[0] is bufs[0] and out_bufs[1] is bufs[2]
    assert out_bufs[2] is not bufs[0]
    for buf, n, dst, f in zip(out_bufs, out_lengths, (R4, R4, R4B), (frames[0], frames[2], frames[0]), strict=True):
        pkt = bytes(buf[WG : WG + n])
        assert pkt[16:20] == dst and pkt[36:] == f and ones_sum(pkt[:20]) == 0xFFFF


def test_encap_skips_unsendable_verdicts(mod: ModuleType) -> None:
    tmpl = mod.template(L4, R4, 4789, 42, 64)
    (appended, _, _), out, _, _ = run_encap(mod, [frame(80), frame(80), frame(80)], tmpl,
                                            verdicts=bytes([1, 2, 3]))  # too short, ARP, done
    assert appended == 1 and len(out) == 1


def test_encap_errors_are_the_same(mod: ModuleType) -> None:
    tmpl = mod.template(L4, R4, 4789, 42, 64)
    bufs, lengths = batch([frame(80)], WG + 36)
    args = dict(verdicts=bytearray(1), sports=array("H", [1]), mtu=1420)
    with pytest.raises(ValueError):
        mod.encap(bufs, lengths, 0, 2, WG + 36, args["verdicts"], args["sports"], tmpl, 1420, [], [], [],
                  bytearray(2))
    with pytest.raises(ValueError):
        mod.encap(bufs, lengths, 0, 1, 20, args["verdicts"], args["sports"], tmpl, 1420, [], [], [], bytearray(1))
    with pytest.raises(ValueError):
        mod.encap(bufs, lengths, 0, 1, WG + 36, args["verdicts"], args["sports"], tmpl[:30], 1420, [], [], [],
                  bytearray(1))
    with pytest.raises(TypeError):
        mod.encap(bufs, lengths, 0, 1, WG + 36, args["verdicts"], args["sports"], tmpl, 1420, (), [], [],
                  bytearray(1))
    with pytest.raises(ValueError):
        mod.encap(bufs, [SIZE], 0, 1, WG + 36, args["verdicts"], args["sports"], tmpl, 1 << 20, [], [], [],
                  bytearray(1))


# ---- claim ---------------------------------------------------------------------------------


def udp4(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes, *, csum: bool = False,
         frag: int = 0) -> bytes:
    ulen = 8 + len(payload)
    c = 0
    if csum:
        c = 0xFFFF - ones_sum(src + dst + struct.pack(">xBH", 17, ulen) + struct.pack(">HHHH", sport, dport, ulen, 0)
                              + payload) or 0xFFFF
    udp = struct.pack(">HHHH", sport, dport, ulen, c) + payload
    hdr = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + ulen, 0, frag, 64, 17, 0, src, dst)
    return hdr + udp


def udp6(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes, *, csum: int | None = None) -> bytes:
    ulen = 8 + len(payload)
    if csum is None:
        csum = 0xFFFF - ones_sum(src + dst + struct.pack(">IxxxB", ulen, 17)
                                 + struct.pack(">HHHH", sport, dport, ulen, 0) + payload) or 0xFFFF
    return struct.pack(">IHBB16s16s", 6 << 28, ulen, 17, 64, src, dst) + struct.pack(">HHHH", sport, dport, ulen,
                                                                                    csum) + payload


def run_claim(mod: ModuleType, packets: list[bytes], local: bytes, verdicts: bytes | None = None
              ) -> tuple[tuple[int, int], bytearray, list[bytearray], list[int], list[int], list[str], list[bytearray]]:
    bufs, lengths = [], []
    for p in packets:
        buf = bytearray(SIZE)
        buf[WG : WG + len(p)] = p
        bufs.append(buf)
        lengths.append(WG + len(p) + 0)  # accept_slots: the end of the packet in its buffer
    v = bytearray(verdicts or bytes(len(packets)))
    out_bufs: list[bytearray] = []
    out_lengths: list[int] = []
    sources: list[str] = []
    result = mod.claim(bufs, lengths, len(packets), WG, v, local, 4789, out_bufs, out_lengths, sources,
                       mod.SourceCache())
    return result, v, out_bufs, out_lengths, lengths, sources, bufs


def test_claim_ipv4(mod: ModuleType) -> None:
    vx = bytes.fromhex("0800000000002a00") + frame(90)
    packets = [
        udp4(R4, L4, 50000, 4789, vx),                       # ours, checksum 0
        udp4(R4B, L4, 50001, 4789, vx, csum=True),           # ours, valid checksum
        udp4(R4, L4, 50000, 4790, vx),                       # another port: the TUN's
        udp4(R4, R4B, 50000, 4789, vx),                      # another address: the TUN's
        udp4(R4, L4, 50000, 4789, vx, frag=0x2000),          # a fragment: the TUN's
        bytearray(udp4(R4, L4, 50000, 4789, vx, csum=True)),  # corrupted below: bad checksum
        udp4(R4, L4, 50000, 4789, vx),                       # verdict 1 (not accepted): untouched
    ]
    packets[5][-1] ^= 0xFF
    (claimed, bad), v, out_bufs, out_lengths, _, sources, bufs = run_claim(
        mod, [bytes(p) for p in packets], L4, bytes([0, 0, 0, 0, 0, 0, 1]))
    assert (claimed, bad) == (2, 1)
    assert list(v) == [mod.TAKEN, mod.TAKEN, 0, 0, 0, mod.TAKEN, 1]
    assert out_bufs[0] is bufs[0] and out_bufs[1] is bufs[1]
    assert out_lengths == [len(vx), len(vx)]
    assert bytes(out_bufs[0][: len(vx)]) == vx and bytes(out_bufs[1][: len(vx)]) == vx
    assert sources == ["10.9.0.2", "10.9.0.3"]


def test_claim_ipv6(mod: ModuleType) -> None:
    vx = bytes.fromhex("0800000000000700") + frame(77)
    good = udp6(R6, L6, 1234, 4789, vx)
    zero = udp6(R6, L6, 1234, 4789, vx, csum=0)  # IPv6 forbids a zero UDP checksum
    v4 = udp4(R4, L4, 1234, 4789, vx)  # the other family: the TUN's
    (claimed, bad), v, out_bufs, out_lengths, _, sources, _ = run_claim(mod, [good, zero, v4], L6)
    assert (claimed, bad) == (1, 1)
    assert list(v) == [mod.TAKEN, mod.TAKEN, 0]
    assert bytes(out_bufs[0][: out_lengths[0]]) == vx and sources == ["fd00::2"]


def test_claim_truncated_and_errors(mod: ModuleType) -> None:
    vx = bytes.fromhex("0800000000002a00") + frame(60)
    p = udp4(R4, L4, 1, 4789, vx)
    (claimed, bad), v, *_ = run_claim(mod, [p[:30]], L4)  # UDP length beyond the packet
    assert (claimed, bad) == (0, 0) and v[0] == 0
    with pytest.raises(ValueError):
        mod.claim([bytearray(10)], [10], 2, WG, bytearray(2), L4, 4789, [], [], [], mod.SourceCache())
    with pytest.raises(ValueError):
        mod.claim([bytearray(10)], [10], 1, WG, bytearray(1), b"\1\2\3", 4789, [], [], [], mod.SourceCache())
    with pytest.raises(TypeError):
        mod.claim([bytearray(10)], [10], 1, WG, bytes(1), L4, 4789, [], [], [], mod.SourceCache())
    with pytest.raises(TypeError):
        mod.claim([bytearray(10)], [10], 1, WG, bytearray(1), L4, 4789, [], [], [], object())


def test_encap_then_claim_round_trip(mod: ModuleType) -> None:
    """What one side builds, the other side (local = its remote) takes, byte for byte."""
    for local, remote in ((L4, R4), (L6, R6)):
        tmpl = mod.template(local, remote, 4789, 42, 64)
        f = frame(700, 9)
        (appended, _, _), out, lengths, _ = run_encap(mod, [f], tmpl)
        pkt = bytes(out[0][WG : WG + lengths[0]])
        (claimed, bad), _, out_bufs, out_lengths, _, sources, _ = run_claim(mod, [pkt], remote)
        assert (appended, claimed, bad) == (1, 1, 0)
        assert bytes(out_bufs[0][8 : out_lengths[0]]) == f
        assert sources == [str(ipaddress.ip_address(local))]


def run_lane(mod: ModuleType, frames: list[bytes], runs: list[tuple[int, int, int, int]], entries: dict,
             verdicts: bytes | None = None, spares: list[bytearray] | None = None) -> tuple:
    tmpl = mod.template(L4, R4, 4789, 42, 64)
    headroom = WG + len(tmpl)
    bufs, lengths = batch(frames, headroom)
    count = len(frames)
    out_bufs: list[bytearray] = []
    out_lengths: list[int] = []
    macs: list[bytes] = []
    remotes: list[tuple] = []
    pool = spares if spares is not None else []
    result = mod.encap_runs(bufs, lengths, headroom, bytearray(verdicts or bytes(count)),
                            array("H", [40000 + i for i in range(count)]), runs, entries, 1420, out_bufs,
                            out_lengths, pool, bytearray(count), macs, remotes)
    start = headroom - len(tmpl)
    packets = [bytes(b[start : start + n]) for b, n in zip(out_bufs, out_lengths, strict=True)]
    return result, packets, macs, remotes


def test_encap_runs_plans_from_the_snapshot(mod: ModuleType) -> None:
    """Two runs: a known MAC (one remote) and an unknown one (the flood entry, two remotes:
    one copy from the spares, which stay as they are); the packets are encap's, the MACs and
    (ips, frames, bytes) per run the snapshot's; a too-big frame is counted."""
    t1, t2 = mod.template(L4, R4, 4789, 42, 64), mod.template(L4, R4B, 4789, 42, 64)
    known, other = bytes.fromhex("020000000002"), bytes.fromhex("0200000000ff")
    frames = [frame(100, 1), frame(120, 2), other + frame(90, 3)[6:], other + frame(1420 - 36 + 1, 4)[6:]]
    entries = {known: ((t1,), ("10.9.0.2",)), bytes(6): ((t1, t2), ("10.9.0.2", "10.9.0.3"))}
    spares = [bytearray(SIZE) for _ in range(4)]
    result, packets, macs, remotes = run_lane(mod, frames, [(0, 2, 2, 220), (2, 4, 2, 90 + 1385)], entries,
                                              spares=spares)
    assert result == (2, 0)  # the too-big frame, once per template
    assert len(spares) == 4
    assert macs == [known, other]
    assert remotes == [(("10.9.0.2",), 2, 220), (("10.9.0.2", "10.9.0.3"), 2, 1475)]
    assert len(packets) == 4  # 2 frames to R4, the flood frame to R4 and to R4B
    assert [p[16:20] for p in packets] == [R4, R4, R4, R4B]
    assert [p[36:] for p in packets] == [frames[0], frames[1], frames[2], frames[2]]
    for p in packets:
        assert ones_sum(p[:20]) == 0xFFFF


@pytest.mark.parametrize("case", ["arp", "miss", "none"])
def test_encap_runs_leaves_what_the_snapshot_does_not_cover(mod: ModuleType, case: str) -> None:
    tmpl = mod.template(L4, R4, 4789, 42, 64)
    known = bytes.fromhex("020000000002")
    entries: dict = {known: ((tmpl,), ("10.9.0.2",))}
    frames = [frame(100, 1), bytes.fromhex("0200000000ff") + frame(90, 3)[6:]]
    verdicts = None
    if case == "arp":
        verdicts = bytes([0, mod.TX_ARP])
        frames[1] = known + frames[1][6:]
        runs = [(0, 1, 1, 100), (1, 2, 1, 90)]
    elif case == "miss":
        runs = [(0, 1, 1, 100), (1, 2, 1, 90)]  # no flood entry
    else:
        entries[bytes(6)] = None  # a flood entry the sender cannot use
        runs = [(0, 1, 1, 100), (1, 2, 1, 90)]
    result, packets, macs, remotes = run_lane(mod, frames, runs, entries, verdicts=verdicts)
    assert result is None and packets == [] and macs == [] and remotes == []


def test_encap_runs_errors_are_the_same(mod: ModuleType) -> None:
    with pytest.raises(TypeError):
        run_lane(mod, [frame(100)], [(0, 1, 1, 100)], [])  # type: ignore[arg-type]
