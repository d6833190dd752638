"""The VXLAN engine: encapsulation, receive rules, learning, flooding, source ports, proxy ARP.

Pure unit tests with an explicit clock; no devices, no sockets.
"""

from __future__ import annotations

import json

import pytest

from tests.test_vxlan_frames import (
    BROADCAST,
    arp,
    ether,
    ipv4_tcp,
    ipv4_udp,
    mac,
    vxlan_header,
)
from tunnel.vxlan import VxlanConfig, VxlanEngine
from tunnel.vxlan.fdb import ZERO_MAC

OWN = mac("02:00:00:00:00:aa")
HOST_A = mac("02:00:00:00:00:01")  # behind the peer VTEP
HOST_B = mac("02:00:00:00:00:02")
PEER = ("10.0.0.2", 4789)


def engine(**kw: object) -> VxlanEngine:
    args: dict[object, object] = {"vni": 42, "remote": "10.0.0.2", "own_mac": OWN}
    args.update(kw)
    return VxlanEngine(VxlanConfig(**args))  # type: ignore[arg-type]


def frame(dst: bytes = HOST_A, src: bytes = OWN, payload: bytes | None = None) -> bytes:
    if payload is None:
        payload = ipv4_udp("192.168.8.101", "192.168.8.102", 40000, 53)
    return ether(dst, src, 0x0800, payload)


def datagram(inner: bytes, vni: int = 42) -> bytes:
    return vxlan_header(vni) + inner


# ---- encapsulation / decapsulation ---------------------------------------------------------


def test_roundtrip_in_place_with_headroom() -> None:
    a = engine()
    b = engine(remote="10.0.0.1", own_mac=HOST_A)
    inner = frame(dst=HOST_A, src=OWN)
    buf = bytearray(8) + bytearray(inner)
    res = a.transmit(buf, now=1.0, headroom=8)
    assert res.local == []
    [(payload, dst, sport)] = res.datagrams
    assert dst == ("10.0.0.2", 4789)
    assert bytes(payload) == bytes.fromhex("080000000000" "2a00") + inner
    # written in place: the payload is a view of the caller's buffer
    assert isinstance(payload, memoryview) and payload.obj is buf
    assert bytes(buf[:8]) == bytes.fromhex("0800000000002a00")
    assert 32768 <= sport < 60999
    out = b.receive(bytes(payload), ("10.0.0.1", 51000), now=1.0)
    assert out is not None and bytes(out) == inner
    assert (a.tx_packets, a.tx_bytes) == (1, len(inner))
    assert (b.rx_packets, b.rx_bytes) == (1, len(inner))


def test_transmit_without_headroom_copies() -> None:
    a = engine()
    inner = frame()
    [(payload, _, _)] = a.transmit(inner, now=0.0).datagrams
    assert isinstance(payload, bytes) and payload == vxlan_header(42) + inner
    # a read-only buffer with headroom is copied too, the input left untouched
    ro = bytes(8) + inner
    [(payload2, _, _)] = a.transmit(memoryview(ro), now=0.0, headroom=8).datagrams
    assert bytes(payload2) == vxlan_header(42) + inner and ro[:8] == bytes(8)


def test_receive_returns_view_into_datagram() -> None:
    b = engine()
    dg = bytearray(datagram(frame(dst=OWN, src=HOST_A)))
    out = b.receive(dg, PEER, now=0.0)
    assert isinstance(out, memoryview) and out.obj is dg


# ---- receive rules ---------------------------------------------------------------------------


def test_receive_rules_drop_and_count() -> None:
    e = engine()
    good = frame(dst=OWN, src=HOST_A)
    cases = [
        (b"", "too_short"),
        (vxlan_header(42)[:7], "too_short"),
        (vxlan_header(42) + good[:13], "too_short"),
        (vxlan_header(42, flags=0) + good, "no_i_flag"),
        (vxlan_header(43) + good, "wrong_vni"),
        (vxlan_header(42, flags=0x09) + good, "reserved_bits"),
        (vxlan_header(42)[:7] + b"\x01" + good, "reserved_bits"),
        (bytes([8, 0, 1, 0, 0, 0, 42, 0]) + good, "reserved_bits"),
        (datagram(frame(dst=HOST_B, src=OWN)), "own_source_mac"),
        (datagram(frame(dst=OWN, src=mac("01:00:5e:00:00:01"))), "invalid_source_mac"),
        (datagram(frame(dst=OWN, src=ZERO_MAC)), "invalid_source_mac"),
    ]
    for dg, reason in cases:
        before = e.drops[reason]
        assert e.receive(dg, PEER, now=0.0) is None, reason
        assert e.drops[reason] == before + 1, reason
    assert e.rx_packets == 0
    assert sum(e.drops.values()) == len(cases)
    assert e.receive(datagram(good), PEER, now=0.0) is not None
    assert e.rx_packets == 1


def test_invalid_source_mac_only_checked_when_learning() -> None:
    # the kernel checks the source MAC inside its snooping step, skipped without learning
    e = engine(learning=False)
    dg = datagram(frame(dst=OWN, src=mac("01:00:5e:00:00:01")))
    assert e.receive(dg, PEER, now=0.0) is not None
    assert len(e.fdb) == 1  # only the flood entry: nothing learned


def test_static_entry_claimed_by_other_vtep_drops() -> None:
    e = engine()
    e.fdb.add(HOST_A, "10.0.0.9", now=0.0)
    dg = datagram(frame(dst=OWN, src=HOST_A))
    assert e.receive(dg, ("10.0.0.3", 4789), now=1.0) is None
    assert e.drops["static_entry_conflict"] == 1
    assert e.receive(dg, ("10.0.0.9", 4789), now=1.0) is not None
    entry = e.fdb.get(HOST_A)
    assert entry is not None and entry.remotes[0].ip == "10.0.0.9"


# ---- learning ----------------------------------------------------------------------------------


def test_learning_uses_outer_source_ip_and_device_port() -> None:
    e = engine(dstport=4789)
    e.receive(datagram(frame(dst=OWN, src=HOST_A)), ("10.0.0.3", 51234), now=3.0)
    entry = e.fdb.get(HOST_A)
    assert entry is not None and not entry.permanent
    assert (entry.remotes[0].ip, entry.remotes[0].port) == ("10.0.0.3", 4789)
    assert "02:00:00:00:00:01 dst 10.0.0.3 self" in e.fdb.show()
    # unicast to the learned MAC goes to that VTEP only
    [(_, dst, _)] = e.transmit(frame(dst=HOST_A), now=4.0).datagrams
    assert dst == ("10.0.0.3", 4789)


def test_learned_mac_moves_to_new_vtep_at_once() -> None:
    e = engine()
    e.receive(datagram(frame(dst=OWN, src=HOST_A)), ("10.0.0.3", 4789), now=1.0)
    e.receive(datagram(frame(dst=OWN, src=HOST_A)), ("10.0.0.4", 4789), now=2.0)
    [(_, dst, _)] = e.transmit(frame(dst=HOST_A), now=2.0).datagrams
    assert dst == ("10.0.0.4", 4789)
    assert e.stats()["fdb_migrated"] == 1


def test_learning_off_learns_nothing() -> None:
    e = engine(learning=False)
    e.receive(datagram(frame(dst=OWN, src=HOST_A)), ("10.0.0.3", 4789), now=1.0)
    assert e.fdb.get(HOST_A) is None


def test_engine_ageing_and_timer() -> None:
    e = engine(ageing=60.0)
    assert e.next_timer() is None
    e.receive(datagram(frame(dst=OWN, src=HOST_A)), ("10.0.0.3", 4789), now=10.0)
    assert e.next_timer() == 70.0
    assert e.age(69.0) == 0
    assert e.age(70.0) == 1
    assert e.fdb.get(HOST_A) is None and e.fdb.get(ZERO_MAC) is not None
    # after ageing, frames to that MAC flood again
    [(_, dst, _)] = e.transmit(frame(dst=HOST_A), now=71.0).datagrams
    assert dst == PEER


def test_maxaddress_in_engine_delivers_even_when_full() -> None:
    e = engine(maxaddress=1)  # the flood entry fills it, and it is permanent
    out = e.receive(datagram(frame(dst=OWN, src=HOST_A)), ("10.0.0.3", 4789), now=1.0)
    assert out is not None  # the kernel still delivers; only the learning is refused
    assert e.drops["fdb_full"] == 1 and e.fdb.get(HOST_A) is None


# ---- flooding --------------------------------------------------------------------------------


def flood_engine() -> VxlanEngine:
    e = engine()
    e.fdb.append(ZERO_MAC, "10.0.0.3", now=0.0)
    e.fdb.append(ZERO_MAC, "10.0.0.4", now=0.0, port=8472)
    return e


@pytest.mark.parametrize(
    "dst",
    [BROADCAST, mac("01:00:5e:01:02:03"), mac("33:33:00:00:00:01"), mac("02:99:00:00:00:01")],
    ids=["broadcast", "ipv4-multicast", "ipv6-multicast", "unknown-unicast"],
)
def test_head_end_replication_to_every_remote(dst: bytes) -> None:
    e = flood_engine()
    inner = frame(dst=dst)
    buf = bytearray(8) + bytearray(inner)
    res = e.transmit(buf, now=0.0, headroom=8)
    assert [d for _, d, _ in res.datagrams] == [
        ("10.0.0.2", 4789),
        ("10.0.0.3", 4789),
        ("10.0.0.4", 8472),
    ]
    payloads = [p for p, _, _ in res.datagrams]
    assert all(p is payloads[0] for p in payloads)  # one buffer, shared read-only
    assert bytes(payloads[0]) == vxlan_header(42) + inner
    assert len({s for _, _, s in res.datagrams}) == 1  # one flow, one source port
    assert e.tx_packets == 3 and e.tx_bytes == 3 * len(inner)


def test_known_unicast_is_not_flooded() -> None:
    e = flood_engine()
    e.fdb.add(HOST_B, "10.0.0.3", now=0.0)
    res = e.transmit(frame(dst=HOST_B), now=0.0)
    assert [d for _, d, _ in res.datagrams] == [("10.0.0.3", 4789)]


def test_remote_with_other_vni_gets_own_header() -> None:
    e = engine()
    e.fdb.append(ZERO_MAC, "10.0.0.3", now=0.0, vni=7)
    inner = frame(dst=BROADCAST)
    res = e.transmit(bytearray(8) + bytearray(inner), now=0.0, headroom=8)
    [(p1, d1, _), (p2, d2, _)] = res.datagrams
    assert d1 == ("10.0.0.2", 4789) and bytes(p1) == vxlan_header(42) + inner
    assert d2 == ("10.0.0.3", 4789) and bytes(p2) == vxlan_header(7) + inner


def test_no_flood_entry_drops_unknown() -> None:
    e = engine(remote=None)
    assert e.transmit(frame(dst=BROADCAST), now=0.0).datagrams == []
    assert e.drops["no_tx_target"] == 1
    e.fdb.add(HOST_A, "10.0.0.5", now=0.0)
    assert len(e.transmit(frame(dst=HOST_A), now=0.0).datagrams) == 1


def test_multicast_group_is_the_flood_destination() -> None:
    e = engine(remote=None, group="239.1.1.1", dev="eth0")
    res = e.transmit(frame(dst=BROADCAST), now=0.0)
    assert [d for _, d, _ in res.datagrams] == [("239.1.1.1", 4789)]
    assert e.config.ttl_for("239.1.1.1") == 1
    assert e.config.ttl_for("10.0.0.2") == 64
    assert engine(ttl=5).config.ttl_for("239.1.1.1") == 5
    assert e.fdb.show() == ["00:00:00:00:00:00 dst 239.1.1.1 via eth0 self permanent"]


def test_short_frame_from_tap_dropped() -> None:
    e = engine()
    assert e.transmit(bytes(13), now=0.0).datagrams == []
    assert e.drops["tx_too_short"] == 1


def test_zero_address_remote_is_skipped() -> None:
    e = engine()
    e.fdb.append(ZERO_MAC, "0.0.0.0", now=0.0)
    res = e.transmit(frame(dst=BROADCAST), now=0.0)
    assert [d for _, d, _ in res.datagrams] == [PEER]
    assert e.drops["no_remote_address"] == 1


def test_transmit_batch() -> None:
    e = flood_engine()
    e.fdb.add(HOST_A, "10.0.0.9", now=0.0)
    res = e.transmit_batch([frame(dst=HOST_A), frame(dst=BROADCAST), bytes(3)], now=0.0)
    assert [d[0] for _, d, _ in res.datagrams] == ["10.0.0.9", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
    assert e.drops["tx_too_short"] == 1


def test_receive_batch() -> None:
    e = engine()
    items = [
        (datagram(frame(dst=OWN, src=HOST_A)), PEER),
        (b"junk", PEER),
        (datagram(frame(dst=OWN, src=HOST_B)), ("10.0.0.3", 4789, 0, 0)),
    ]
    out = e.receive_batch(items, now=0.0)
    assert [bytes(f[6:12]) for f in out] == [HOST_A, HOST_B]
    assert e.drops["too_short"] == 1


# ---- outer source port -----------------------------------------------------------------------


def sport_of(e: VxlanEngine, inner: bytes) -> int:
    [(_, _, sport)] = e.transmit(inner, now=0.0).datagrams
    return sport


def test_source_port_stable_per_flow_and_spread() -> None:
    e = engine()
    ports = set()
    for i in range(200):
        f = frame(payload=ipv4_tcp("192.168.8.101", "192.168.8.102", 10000 + i, 80))
        p = sport_of(e, f)
        assert 32768 <= p < 60999
        assert sport_of(e, f) == p  # same flow, same port
        ports.add(p)
    assert len(ports) > 150  # flows spread over the range


def test_source_port_ignores_payload_bytes_of_same_flow() -> None:
    e = engine()
    f1 = frame(payload=ipv4_udp("192.168.8.101", "192.168.8.102", 4000, 53, b"first"))
    f2 = frame(payload=ipv4_udp("192.168.8.101", "192.168.8.102", 4000, 53, b"second!"))
    assert sport_of(e, f1) == sport_of(e, f2)


def test_source_port_custom_range() -> None:
    e = engine(srcport=(1000, 1004))
    seen = set()
    for i in range(100):
        f = frame(payload=ipv4_udp("10.1.0.1", "10.1.0.2", 2000 + i, 53))
        p = sport_of(e, f)
        assert 1000 <= p < 1004
        seen.add(p)
    assert seen == {1000, 1001, 1002, 1003}
    # non-IP frames hash on the MACs
    assert 1000 <= sport_of(e, ether(BROADCAST, OWN, 0x88B5, b"\x00" * 46)) < 1004


# ---- proxy ARP ---------------------------------------------------------------------------------


REMOTE_MAC = mac("02:00:00:00:00:51")
LOCAL_MAC = mac("02:00:00:00:00:61")


def arp_request(tpa: str, spa: str = "192.168.8.101", sha: bytes = LOCAL_MAC) -> bytes:
    return ether(BROADCAST, sha, 0x0806, arp(1, sha, spa, bytes(6), tpa))


def test_proxy_arp_reply_exact_bytes() -> None:
    e = engine(proxy=True, own_mac=LOCAL_MAC)
    # a reply from the remote host teaches us 192.168.8.102 -> REMOTE_MAC
    learned = ether(LOCAL_MAC, REMOTE_MAC, 0x0806, arp(2, REMOTE_MAC, "192.168.8.102",
                                                       LOCAL_MAC, "192.168.8.101"))
    assert e.receive(datagram(learned), PEER, now=0.0) is not None
    res = e.transmit(arp_request("192.168.8.102"), now=1.0)
    assert res.datagrams == []  # not flooded
    expected = (
        LOCAL_MAC  # Ethernet destination: the requester
        + REMOTE_MAC  # Ethernet source: the owner of the address
        + b"\x08\x06"
        + bytes.fromhex("0001" "0800" "06" "04" "0002")  # Ethernet/IPv4, opcode 2 (reply)
        + REMOTE_MAC
        + bytes([192, 168, 8, 102])  # sender: the requested binding
        + LOCAL_MAC
        + bytes([192, 168, 8, 101])  # target: the requester
    )
    assert res.local == [expected]
    assert len(expected) == 42
    assert e.arp_proxied == 1


def test_proxy_learns_from_ipv4_source_and_floods_unknown() -> None:
    e = engine(proxy=True, own_mac=LOCAL_MAC)
    res = e.transmit(arp_request("192.168.8.103"), now=0.0)
    assert [d for _, d, _ in res.datagrams] == [PEER] and res.local == []
    pkt = ether(LOCAL_MAC, REMOTE_MAC, 0x0800, ipv4_udp("192.168.8.103", "192.168.8.101", 5, 6))
    e.receive(datagram(pkt), PEER, now=1.0)
    res = e.transmit(arp_request("192.168.8.103"), now=2.0)
    assert res.datagrams == [] and len(res.local) == 1
    assert res.local[0][6:12] == REMOTE_MAC and res.local[0][22:28] == REMOTE_MAC


def test_proxy_static_binding_and_exceptions() -> None:
    e = engine(proxy=True, own_mac=LOCAL_MAC)
    e.neigh.add("192.168.8.110", "02:00:00:00:00:70")
    assert len(e.transmit(arp_request("192.168.8.110"), now=0.0).local) == 1
    # gratuitous ARP (sender == target) is forwarded, never answered
    grat = arp_request("192.168.8.110", spa="192.168.8.110")
    res = e.transmit(grat, now=0.0)
    assert res.local == [] and len(res.datagrams) == 1
    # an ARP reply from the local side is forwarded
    reply = ether(BROADCAST, LOCAL_MAC, 0x0806, arp(2, LOCAL_MAC, "192.168.8.101",
                                                    bytes(6), "192.168.8.110"))
    assert len(e.transmit(reply, now=0.0).datagrams) == 1
    # learned bindings age out
    pkt = ether(LOCAL_MAC, REMOTE_MAC, 0x0800, ipv4_udp("192.168.8.120", "192.168.8.101", 5, 6))
    e.receive(datagram(pkt), PEER, now=0.0)
    assert len(e.transmit(arp_request("192.168.8.120"), now=1.0).local) == 1
    e.age(301.0)
    assert e.transmit(arp_request("192.168.8.120"), now=302.0).local == []
    assert len(e.transmit(arp_request("192.168.8.110"), now=302.0).local) == 1


def test_proxy_off_floods_arp() -> None:
    e = engine()
    e.neigh.add("192.168.8.110", "02:00:00:00:00:70")
    res = e.transmit(arp_request("192.168.8.110"), now=0.0)
    assert res.local == [] and len(res.datagrams) == 1


# ---- inspection ------------------------------------------------------------------------------


def test_show_is_json_ready() -> None:
    e = engine(name="vxlan7")
    e.receive(datagram(frame(dst=OWN, src=HOST_A)), PEER, now=1.0)
    e.receive(b"x", PEER, now=1.0)
    e.transmit(frame(dst=BROADCAST), now=2.0)
    shown = e.show(now=5.0)
    text = json.dumps(shown)
    assert json.loads(text)["name"] == "vxlan7"
    assert shown["drops"] == {"too_short": 1}
    assert shown["stats"]["rx_packets"] == 1 and shown["stats"]["tx_packets"] == 1
    assert shown["config"]["vni"] == 42 and shown["config"]["own_mac"] == "02:00:00:00:00:aa"
    assert "00:00:00:00:00:00 dst 10.0.0.2 self permanent" in shown["fdb_lines"]


def test_set_own_mac() -> None:
    e = engine(own_mac=b"")
    dg = datagram(frame(dst=HOST_B, src=OWN))
    assert e.receive(dg, PEER, now=0.0) is not None
    e.set_own_mac("02:00:00:00:00:aa")
    assert e.receive(dg, PEER, now=0.0) is None and e.drops["own_source_mac"] == 1


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        VxlanConfig(vni=1 << 24)
    with pytest.raises(ValueError):
        VxlanConfig(vni=1, remote="10.0.0.1", group="239.1.1.1")
    with pytest.raises(ValueError):
        VxlanConfig(vni=1, group="10.0.0.1")
    with pytest.raises(ValueError):
        VxlanConfig(vni=1, remote="239.1.1.1")
    with pytest.raises(ValueError):
        VxlanConfig(vni=1, remote="fd00::1", local="10.0.0.1")
    with pytest.raises(ValueError):
        VxlanConfig(vni=1, srcport=(2000, 1000))
    assert VxlanConfig(vni=1, remote="fd00:0::1").ipv6
    assert VxlanConfig(vni=1).srcport == (32768, 60999)
