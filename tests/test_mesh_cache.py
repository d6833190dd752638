"""The agent's record cache: each claim and record parsed once per (key, mod_revision).

The oracle for the view is :func:`build_view` on the same raw values (which parses everything);
the parse counts show what the cache saved.
"""

from __future__ import annotations

import ipaddress
import json
import random

from tunnel.mesh.config import NetworkConfig, key_token, subnet_token
from tunnel.mesh.record import Claim, NodeRecord, RecordCache, View, build_view, encode_key

CONFIG = NetworkConfig(ipaddress.ip_network("10.50.0.0/16"), 24)
K = [bytes([i]) * 32 for i in range(1, 12)]


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def claim(key: bytes, subnet: str) -> tuple[str, bytes]:
    return subnet_token(net(subnet)), Claim(net(subnet), key, "n", 0).to_json().encode()


def record(key: bytes, subnet: str, endpoint: str = "192.0.2.1:51820") -> bytes:
    host, port = endpoint.rsplit(":", 1)
    return NodeRecord(key, net(subnet), "n", ((host, int(port)),)).to_json().encode()


def same(a: View, b: View) -> bool:
    return (a.nodes, a.claims, a.taken, a.rejects) == (b.nodes, b.claims, b.taken, b.rejects)


def test_a_changed_record_with_a_new_revision_is_parsed_again() -> None:
    cache = RecordCache(CONFIG)
    for i in (1, 2):
        cache.put_claim(*claim(K[i], f"10.50.{i}.0/24"), revision=i)
        cache.put_record(key_token(K[i]), record(K[i], f"10.50.{i}.0/24"), revision=10 + i)
    first = cache.view()
    assert set(first.nodes) == {K[1], K[2]} and cache.parses == 4
    assert cache.view().nodes == first.nodes and cache.parses == 4  # nothing changed: nothing parsed
    generation = cache.generation
    cache.put_record(key_token(K[1]), record(K[1], "10.50.1.0/24"), revision=11)  # a re-delivered event
    cache.delete_record(key_token(K[7]))  # never there
    assert cache.generation == generation and cache.parses == 4
    # node 2 re-announces from elsewhere: only its record is parsed again, and the view shows it
    cache.put_record(key_token(K[2]), record(K[2], "10.50.2.0/24", "198.51.100.7:4000"), revision=20)
    view = cache.view()
    assert cache.parses == 5
    assert view.nodes[K[2]].endpoints == (("198.51.100.7", 4000),) and view.nodes[K[2]].revision == 20
    assert view.nodes[K[1]] == first.nodes[K[1]]
    # the same value at a new revision (a keepalive-free re-put) is parsed again too: the
    # revision is the record's identity for the roaming rule (Node.revision)
    cache.put_record(key_token(K[1]), record(K[1], "10.50.1.0/24"), revision=21)
    assert cache.view().nodes[K[1]].revision == 21 and cache.parses == 6
    # a value put several times between two views is parsed once, at its last revision
    for rev in (22, 23, 24):
        cache.put_record(key_token(K[1]), record(K[1], "10.50.1.0/24", f"192.0.2.{rev}:1"), revision=rev)
    assert cache.view().nodes[K[1]].endpoints == (("192.0.2.24", 1),) and cache.parses == 7


def test_a_deleted_key_is_forgotten_and_a_relist_forgets_what_it_lacks() -> None:
    cache = RecordCache(CONFIG)
    tokens = [claim(K[i], f"10.50.{i}.0/24") for i in (1, 2, 3)]
    for i, (token, raw) in zip((1, 2, 3), tokens, strict=True):
        cache.put_claim(token, raw, revision=i)
        cache.put_record(key_token(K[i]), record(K[i], f"10.50.{i}.0/24"), revision=10 + i)
    assert set(cache.view().nodes) == {K[1], K[2], K[3]}
    cache.delete_record(key_token(K[2]))
    view = cache.view()
    assert set(view.nodes) == {K[1], K[3]} and net("10.50.2.0/24") in view.taken
    cache.delete_claim(tokens[2][0])  # node 3's claim gone: its record is now unclaimed
    view = cache.view()
    assert set(view.nodes) == {K[1]} and net("10.50.3.0/24") not in view.taken
    assert view.rejects == {f"nodes/{key_token(K[3])}": "unclaimed"}
    assert cache.record_raw(key_token(K[2])) == b"" and cache.claim_raw(tokens[2][0]) == b""
    # a full re-list: node 1 unchanged (no parse), node 3's record missing from it (forgotten)
    parses = cache.parses
    cache.load({tokens[0][0]: (tokens[0][1], 1)}, {key_token(K[1]): (record(K[1], "10.50.1.0/24"), 11)})
    view = cache.view()
    assert cache.parses == parses and len(cache) == 2
    assert set(view.nodes) == {K[1]} and view.rejects == {}
    assert same(view, build_view(CONFIG, {tokens[0][0]: tokens[0][1]},
                                 {key_token(K[1]): (record(K[1], "10.50.1.0/24"), 11)}))


HOSTILE = [b"{not json", b"[]", json.dumps({"public_key": 5, "subnet": "10.50.9.0/24"}).encode(),
           json.dumps({"public_key": encode_key(K[9]), "subnet": "10.99.0.0/24"}).encode()]


def test_the_cached_view_is_build_views_under_random_events() -> None:
    rng = random.Random(13)
    cache = RecordCache(CONFIG)
    claims: dict[str, bytes] = {}
    records: dict[str, tuple[bytes, int]] = {}
    revision = 0
    for _ in range(400):
        revision += 1
        i = rng.randrange(1, 10)
        subnet = f"10.50.{rng.choice((i, i, 200))}.0/24"
        what = rng.random()
        if what < 0.3:
            token, raw = claim(K[rng.choice((i, i, 10))], subnet)
            claims[token] = raw
            cache.put_claim(token, raw, revision)
        elif what < 0.65:
            raw = rng.choice([record(K[i], subnet, f"192.0.2.{rng.randrange(1, 4)}:1"), *HOSTILE])
            records[key_token(K[i])] = (raw, revision)
            cache.put_record(key_token(K[i]), raw, revision)
        elif what < 0.8:
            token = subnet_token(net(subnet))
            claims.pop(token, None)
            cache.delete_claim(token)
        elif what < 0.95:
            records.pop(key_token(K[i]), None)
            cache.delete_record(key_token(K[i]))
        else:
            cache.load({t: (raw, 0) for t, raw in claims.items()}, records)
        if rng.random() < 0.5:
            assert same(cache.view(), build_view(CONFIG, claims, records))
    assert same(cache.view(), build_view(CONFIG, claims, records))


def test_a_config_of_another_network_parses_everything_again() -> None:
    cache = RecordCache(CONFIG)
    cache.put_claim(*claim(K[1], "10.50.1.0/24"), revision=1)
    cache.put_record(key_token(K[1]), record(K[1], "10.50.1.0/24"), revision=2)
    assert set(cache.view().nodes) == {K[1]}
    cache.set_config(NetworkConfig(ipaddress.ip_network("10.60.0.0/16"), 24))
    view = cache.view()
    assert view.nodes == {} and view.rejects[f"nodes/{key_token(K[1])}"] == "outside_network"
    assert cache.parses == 4
