"""Forwarding database: learning, moving, ageing, maxaddress eviction, show format."""

from __future__ import annotations

import pytest

from tunnel.vxlan.fdb import ZERO_MAC, Fdb, FdbFullError, Remote

A = bytes.fromhex("020000000001")
B = bytes.fromhex("020000000002")
C = bytes.fromhex("020000000003")
D = bytes.fromhex("020000000004")


def test_learn_creates_learned_entry_with_device_port() -> None:
    fdb = Fdb(vni=42, dstport=4789)
    assert fdb.learn(A, "10.0.0.3", 5.0) is None
    entry = fdb.get(A)
    assert entry is not None
    assert entry.remotes == [Remote("10.0.0.3", 4789, 42)]
    assert not entry.permanent
    assert entry.updated == 5.0 and entry.used == 5.0
    assert fdb.learned_count == 1


def test_learn_moves_at_once_and_refreshes() -> None:
    fdb = Fdb(vni=1, dstport=4789)
    fdb.learn(A, "10.0.0.3", 1.0)
    fdb.learn(A, "10.0.0.3", 2.0)
    assert fdb.migrated_count == 0
    assert fdb.learn(A, "10.0.0.4", 3.0) is None
    entry = fdb.get(A)
    assert entry is not None
    assert entry.remotes[0].ip == "10.0.0.4" and entry.updated == 3.0
    assert fdb.migrated_count == 1


def test_permanent_entry_is_not_moved() -> None:
    fdb = Fdb(vni=1, dstport=4789)
    fdb.add(A, "10.0.0.9", now=0.0)
    assert fdb.learn(A, "10.0.0.3", 1.0) == "static_entry_conflict"
    entry = fdb.get(A)
    assert entry is not None and entry.remotes[0].ip == "10.0.0.9" and entry.permanent
    assert fdb.learn(A, "10.0.0.9", 2.0) is None


def test_lookup_falls_back_to_flood_entry_and_marks_used() -> None:
    fdb = Fdb(vni=1, dstport=4789)
    assert fdb.lookup(A, 1.0) is None
    fdb.append(ZERO_MAC, "10.0.0.2", now=0.0)
    hit = fdb.lookup(A, 7.0)
    assert hit is not None and hit.mac == ZERO_MAC and hit.used == 7.0


def test_ageing_default_300() -> None:
    fdb = Fdb(vni=1, dstport=4789)
    fdb.learn(A, "10.0.0.3", 0.0)
    fdb.learn(B, "10.0.0.3", 100.0)
    assert fdb.next_timer() == 300.0
    assert fdb.age(299.9) == 0 and A in fdb
    assert fdb.age(300.0) == 1 and A not in fdb and B in fdb
    assert fdb.next_timer() == 400.0
    fdb.learn(B, "10.0.0.3", 350.0)  # refresh
    assert fdb.age(449.0) == 0 and B in fdb
    assert fdb.age(650.0) == 1 and len(fdb) == 0
    assert fdb.next_timer() is None
    assert fdb.aged_count == 2


def test_transmit_use_does_not_refresh_ageing() -> None:
    # the kernel ages on `updated` (learning), not on `used` (transmit lookups)
    fdb = Fdb(vni=1, dstport=4789)
    fdb.learn(A, "10.0.0.3", 0.0)
    fdb.lookup(A, 250.0)
    assert fdb.age(300.0) == 1


def test_custom_ageing_and_zero_means_never() -> None:
    fdb = Fdb(vni=1, dstport=4789, ageing=30.0)
    fdb.learn(A, "10.0.0.3", 10.0)
    assert fdb.age(39.0) == 0
    assert fdb.age(40.0) == 1
    never = Fdb(vni=1, dstport=4789, ageing=0.0)
    never.learn(A, "10.0.0.3", 0.0)
    assert never.age(1e9) == 0 and never.next_timer() is None


def test_permanent_entries_never_age() -> None:
    fdb = Fdb(vni=1, dstport=4789)
    fdb.add(A, "10.0.0.9", now=0.0)
    fdb.append(ZERO_MAC, "10.0.0.2", now=0.0)
    fdb.add(B, "10.0.0.8", now=0.0, permanent=False)
    assert fdb.age(1e9) == 1
    assert A in fdb and ZERO_MAC in fdb and B not in fdb


def test_maxaddress_evicts_oldest_learned_never_permanent() -> None:
    fdb = Fdb(vni=1, dstport=4789, maxaddress=3)
    fdb.append(ZERO_MAC, "10.0.0.2", now=0.0)  # counts, as in the kernel
    fdb.learn(A, "10.0.0.3", 1.0)
    fdb.learn(B, "10.0.0.3", 2.0)
    fdb.learn(A, "10.0.0.3", 3.0)  # A refreshed: B is now the oldest learned
    assert fdb.learn(C, "10.0.0.4", 4.0) is None
    assert set(fdb.entries) == {ZERO_MAC, A, C}
    P = bytes.fromhex("02000000aa01")
    fdb.add(P, "10.0.0.7", now=5.0)  # an administrative add evicts too (A is oldest)
    assert set(fdb.entries) == {ZERO_MAC, C, P}
    fdb.learn(D, "10.0.0.5", 6.0)  # evicts C
    assert set(fdb.entries) == {ZERO_MAC, P, D}
    Q = bytes.fromhex("02000000aa02")
    fdb.add(Q, "10.0.0.7", now=7.0)  # evicts D: now all permanent
    assert set(fdb.entries) == {ZERO_MAC, P, Q}
    assert fdb.learn(A, "10.0.0.3", 8.0) == "fdb_full"
    with pytest.raises(FdbFullError):
        fdb.add(bytes.fromhex("02000000aa03"), "10.0.0.7", now=9.0)
    assert set(fdb.entries) == {ZERO_MAC, P, Q}
    assert fdb.evicted_count == 4


def test_append_builds_flood_list_once_per_remote() -> None:
    fdb = Fdb(vni=1, dstport=4789)
    for ip in ("10.0.0.2", "10.0.0.3", "10.0.0.2", "10.0.0.4"):
        fdb.append("00:00:00:00:00:00", ip, now=0.0)
    entry = fdb.get(ZERO_MAC)
    assert entry is not None and [r.ip for r in entry.remotes] == [
        "10.0.0.2",
        "10.0.0.3",
        "10.0.0.4",
    ]
    with pytest.raises(ValueError):
        fdb.append(A, "10.0.0.2", now=0.0)


def test_add_replaces_and_delete() -> None:
    fdb = Fdb(vni=1, dstport=4789)
    fdb.learn(A, "10.0.0.3", 0.0)
    fdb.add("02:00:00:00:00:01", "10.0.0.5", now=1.0)
    entry = fdb.get(A)
    assert entry is not None and entry.permanent and entry.remotes[0].ip == "10.0.0.5"
    assert fdb.age(1e9) == 0  # no longer learned
    fdb.append(ZERO_MAC, "10.0.0.2", now=0.0)
    fdb.append(ZERO_MAC, "10.0.0.3", now=0.0)
    assert fdb.delete(ZERO_MAC, "10.0.0.2")
    assert not fdb.delete(ZERO_MAC, "10.0.0.9")
    assert fdb.delete(ZERO_MAC, "10.0.0.3")  # last remote: the entry goes
    assert ZERO_MAC not in fdb
    assert fdb.delete(A) and not fdb.delete(A)


def test_ipv6_addresses_normalized() -> None:
    fdb = Fdb(vni=1, dstport=4789)
    fdb.add(A, "fd00:0:0::0002", now=0.0)
    entry = fdb.get(A)
    assert entry is not None and entry.remotes[0].ip == "fd00::2"


def test_show_matches_bridge_fdb_format() -> None:
    fdb = Fdb(vni=42, dstport=4789)
    fdb.append(ZERO_MAC, "10.0.0.2", now=0.0, via="eth0")
    fdb.append(ZERO_MAC, "10.0.0.3", now=0.0, port=8472, vni=43)
    fdb.learn(bytes.fromhex("aabbccddeeff"), "10.0.0.4", 10.0)
    assert fdb.show() == [
        "00:00:00:00:00:00 dst 10.0.0.2 via eth0 self permanent",
        "00:00:00:00:00:00 dst 10.0.0.3 port 8472 vni 43 self permanent",
        "aa:bb:cc:dd:ee:ff dst 10.0.0.4 self",
    ]
    lines = fdb.show(now=70.0, dev="vxlan0", stats=True)
    assert lines[2] == "aa:bb:cc:dd:ee:ff dev vxlan0 dst 10.0.0.4 used 60/60 self"
    rows = fdb.as_list(now=70.0)
    assert rows[2]["state"] == "" and rows[0]["state"] == "permanent"
