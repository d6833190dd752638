"""The mesh's sans-I/O parts: config and record validation (hostile records), and the reconciler."""

from __future__ import annotations

import ipaddress
import json

import pytest

from tunnel.mesh.config import ConfigError, Keys, NetworkConfig, key_token, parse_key_token, subnet_token
from tunnel.mesh.reconcile import (
    ROAM_TRUST,
    AddPeer,
    AddRoute,
    Installed,
    Observed,
    PeerSpec,
    Plan,
    RemovePeer,
    RemoveRoute,
    UpdatePeer,
    apply_partial,
    reconcile,
)
from tunnel.mesh.record import Claim, Node, NodeRecord, build_view, encode_key

CONFIG = NetworkConfig(ipaddress.ip_network("10.50.0.0/16"), 24)
K = [bytes([i]) * 32 for i in range(1, 8)]


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def claims_of(*pairs: tuple[bytes, str]) -> dict[str, bytes]:
    return {subnet_token(net(s)): Claim(net(s), k, "n", 0).to_json().encode() for k, s in pairs}


def record(key: bytes, subnet: str, endpoints: tuple[tuple[str, int], ...] = (("192.0.2.1", 51820),)) -> bytes:
    return NodeRecord(key, net(subnet), "n", endpoints).to_json().encode()


# -- config ---------------------------------------------------------------------------------------


def test_config_round_trip_and_errors() -> None:
    assert NetworkConfig.from_json(CONFIG.to_json()) == CONFIG
    for bad in ('[]', '{"network": 5, "subnet_len": 24}', '{"network": "10.0.0.0/16"}',
                '{"network": "10.0.0.1/16", "subnet_len": 24}', '{"network": "10.0.0.0/16", "subnet_len": 8}',
                '{"network": "10.0.0.0/16", "subnet_len": true}', '{"network": "10.0.0.0/16", "subnet_len": 24, '
                '"mode": "l4"}', '{"version": 2, "network": "10.0.0.0/16", "subnet_len": 24}', "nope",
                '{"network": "fd00::/48", "subnet_len": 64, "mtu": 1279}'):
        with pytest.raises(ConfigError):
            NetworkConfig.from_json(bad)


def test_subnets_and_tokens() -> None:
    assert CONFIG.subnet_count == 256
    assert CONFIG.subnet_at(3) == net("10.50.3.0/24")
    assert CONFIG.index_of(net("10.50.3.0/24")) == 3
    assert CONFIG.index_of(net("10.51.3.0/24")) is None
    assert CONFIG.index_of(net("10.50.3.0/25")) is None
    assert Keys("x").claim(net("10.50.3.0/24")) == "/wg-py/networks/x/claims/10.50.3.0-24"
    token = key_token(K[0])
    assert parse_key_token(token) == K[0]
    assert parse_key_token(token.rstrip("=")) is None
    assert parse_key_token("AAAA") is None


# -- hostile records --------------------------------------------------------------------------------


def test_valid_records_make_nodes() -> None:
    view = build_view(CONFIG, claims_of((K[0], "10.50.1.0/24"), (K[1], "10.50.2.0/24")),
                      {key_token(K[0]): (record(K[0], "10.50.1.0/24"), 5),
                       key_token(K[1]): (record(K[1], "10.50.2.0/24"), 6)})
    assert set(view.nodes) == {K[0], K[1]}
    assert view.nodes[K[0]].address == ipaddress.ip_address("10.50.1.1")
    assert view.nodes[K[1]].revision == 6
    assert view.rejects == {}


HOSTILE = [
    (b"{not json", "malformed_json"),
    (b"[1, 2]", "malformed_json"),
    (json.dumps({"public_key": encode_key(K[2]), "subnet": 24}).encode(), "wrong_type"),
    (json.dumps({"public_key": encode_key(K[2]), "subnet": "10.50.3.0/24", "endpoints": "x"}).encode(),
     "wrong_type"),
    (json.dumps({"public_key": encode_key(K[2]), "subnet": "10.50.3.0/24", "name": 7}).encode(), "wrong_type"),
    (json.dumps({"public_key": 12, "subnet": "10.50.3.0/24"}).encode(), "wrong_type"),
    (json.dumps({"public_key": "short", "subnet": "10.50.3.0/24"}).encode(), "bad_key"),
    (json.dumps({"public_key": encode_key(K[3]), "subnet": "10.50.3.0/24"}).encode(), "key_mismatch"),
    (json.dumps({"public_key": encode_key(K[2]), "subnet": "10.99.3.0/24"}).encode(), "outside_network"),
    (json.dumps({"public_key": encode_key(K[2]), "subnet": "fd00::/64"}).encode(), "outside_network"),
    (json.dumps({"public_key": encode_key(K[2]), "subnet": "10.50.3.0/25"}).encode(), "bad_subnet"),
    (json.dumps({"public_key": encode_key(K[2]), "subnet": "10.50.3.7/24"}).encode(), "bad_subnet"),
    (json.dumps({"public_key": encode_key(K[2]), "subnet": "10.50.3.0/24", "endpoints": ["1.2.3.4"]}).encode(),
     "bad_endpoint"),
    (json.dumps({"public_key": encode_key(K[2]), "subnet": "10.50.3.0/24", "endpoints": ["1.2.3.4:0"]}).encode(),
     "bad_endpoint"),
    (record(K[2], "10.50.4.0/24"), "unclaimed"),
    (record(K[2], "10.50.1.0/24"), "claim_mismatch"),  # the subnet of a valid node, claimed by K[0]
]


@pytest.mark.parametrize(("raw", "reason"), HOSTILE)
def test_a_hostile_record_is_rejected_by_reason_and_overrides_nothing(raw: bytes, reason: str) -> None:
    claims = claims_of((K[0], "10.50.1.0/24"), (K[2], "10.50.3.0/24"))
    records = {key_token(K[0]): (record(K[0], "10.50.1.0/24"), 5), key_token(K[2]): (raw, 9)}
    view = build_view(CONFIG, claims, records)
    assert view.rejects == {f"nodes/{key_token(K[2])}": reason}
    assert set(view.nodes) == {K[0]}
    assert view.nodes[K[0]].subnet == net("10.50.1.0/24")


def test_bad_node_key_names_and_bad_claims() -> None:
    claims = claims_of((K[0], "10.50.1.0/24"))
    claims["10.50.2.0-24"] = b"garbage"
    claims["not-a-subnet"] = b"{}"
    claims["10.50.5.0-24"] = json.dumps({"public_key": encode_key(K[1]), "renewed": "yesterday"}).encode()
    records = {key_token(K[0]): (record(K[0], "10.50.1.0/24"), 5),
               key_token(K[0]).replace("=", ""): (record(K[0], "10.50.1.0/24"), 6),  # a second record, same key
               key_token(K[1]): (record(K[1], "10.50.5.0/24"), 7)}
    view = build_view(CONFIG, claims, records)
    assert set(view.nodes) == {K[0]}
    assert view.rejects == {
        "claims/10.50.2.0-24": "bad_claim", "claims/not-a-subnet": "bad_claim", "claims/10.50.5.0-24": "bad_claim",
        f"nodes/{key_token(K[0]).replace('=', '')}": "bad_key", f"nodes/{key_token(K[1])}": "unclaimed",
    }
    assert net("10.50.2.0/24") in view.taken and net("10.50.5.0/24") in view.taken


def test_fuzzed_values_never_raise() -> None:
    import random

    rng = random.Random(7)
    base = record(K[0], "10.50.1.0/24")
    for _ in range(2000):
        raw = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        view = build_view(CONFIG, claims_of((K[0], "10.50.1.0/24")), {key_token(K[0]): (bytes(raw), 1)})
        assert len(view.nodes) + len(view.rejects) == 1


# -- reconciler -------------------------------------------------------------------------------------


def node(i: int, subnet: str, endpoint: tuple[str, int] | None = ("192.0.2.9", 51820), revision: int = 1,
         seen_at: float = 100.0) -> Node:
    return Node(K[i], net(subnet), f"n{i}", (endpoint,) if endpoint else (), revision, seen_at)


def apply(installed: Installed, plan: Plan) -> Installed:
    return apply_partial(installed, plan, dict.fromkeys(range(len(plan.actions)), True))


def test_empty_to_two_nodes_then_converged() -> None:
    desired = {K[1]: node(1, "10.50.1.0/24"), K[2]: node(2, "10.50.2.0/24"), K[0]: node(0, "10.50.9.0/24")}
    plan = reconcile(desired, Installed(), {}, 200.0, 25, self_key=K[0])
    assert plan.actions == [
        AddPeer(PeerSpec(K[1], (net("10.50.1.0/24"),), ("192.0.2.9", 51820), 25)),
        AddPeer(PeerSpec(K[2], (net("10.50.2.0/24"),), ("192.0.2.9", 51820), 25)),
        AddRoute(net("10.50.1.0/24")), AddRoute(net("10.50.2.0/24")),
    ]
    installed = apply(Installed(), plan)
    observed = {k: Observed(("192.0.2.9", 51820), None) for k in (K[1], K[2])}
    again = reconcile(desired, installed, observed, 201.0, 25, self_key=K[0])
    assert again.actions == []


def test_removes_only_what_it_installed() -> None:
    installed = Installed({K[1]: PeerSpec(K[1], (net("10.50.1.0/24"),), None, 25)}, {net("10.50.1.0/24")})
    foreign = {K[5]: Observed(("198.51.100.1", 1), 50.0), K[1]: Observed(None, None)}
    plan = reconcile({}, installed, foreign, 200.0, 25)
    assert plan.actions == [RemovePeer(K[1]), RemoveRoute(net("10.50.1.0/24"))]
    assert plan.installed.peers == {} and plan.installed.routes == set()


def test_subnet_change_updates_allowed_ips_and_routes() -> None:
    installed = Installed({K[1]: PeerSpec(K[1], (net("10.50.1.0/24"),), ("192.0.2.9", 51820), 25)},
                          {net("10.50.1.0/24")})
    observed = {K[1]: Observed(("192.0.2.9", 51820), None)}
    plan = reconcile({K[1]: node(1, "10.50.7.0/24")}, installed, observed, 200.0, 25)
    assert plan.actions == [
        RemoveRoute(net("10.50.1.0/24")),
        UpdatePeer(PeerSpec(K[1], (net("10.50.7.0/24"),), ("192.0.2.9", 51820), 25), False),
        AddRoute(net("10.50.7.0/24")),
    ]


def test_keepalive_change_and_adoption_of_a_peer_already_on_the_device() -> None:
    observed = {K[1]: Observed(("192.0.2.9", 51820), None)}
    plan = reconcile({K[1]: node(1, "10.50.1.0/24")}, Installed(), observed, 200.0, 10)
    assert plan.actions == [UpdatePeer(PeerSpec(K[1], (net("10.50.1.0/24"),), ("192.0.2.9", 51820), 10), False),
                            AddRoute(net("10.50.1.0/24"))]


def test_roamed_endpoint_from_a_newer_handshake_is_kept() -> None:
    spec = PeerSpec(K[1], (net("10.50.1.0/24"),), ("192.0.2.9", 51820), 25)
    installed = Installed({K[1]: spec}, {net("10.50.1.0/24")})
    desired = {K[1]: node(1, "10.50.1.0/24", seen_at=100.0)}
    roamed = {K[1]: Observed(("203.0.113.5", 40000), 150.0)}  # handshake after the record was seen
    plan = reconcile(desired, installed, roamed, 200.0, 25)
    assert plan.actions == []
    assert plan.installed.peers[K[1]].endpoint == ("203.0.113.5", 40000)


def test_stale_learned_endpoint_and_older_handshake_give_way_to_the_record() -> None:
    spec = PeerSpec(K[1], (net("10.50.1.0/24"),), ("192.0.2.9", 51820), 25)
    installed = Installed({K[1]: spec}, {net("10.50.1.0/24")})
    want = UpdatePeer(spec, True)
    # the handshake is older than the record's revision: the node re-announced after moving
    older = {K[1]: Observed(("203.0.113.5", 40000), 90.0)}
    assert reconcile({K[1]: node(1, "10.50.1.0/24", seen_at=100.0)}, installed, older, 120.0, 25).actions == [want]
    # newer than the record, but no handshake for longer than ROAM_TRUST: not trusted any more
    stale = {K[1]: Observed(("203.0.113.5", 40000), 150.0)}
    now = 150.0 + ROAM_TRUST + 1
    assert reconcile({K[1]: node(1, "10.50.1.0/24", seen_at=100.0)}, installed, stale, now, 25).actions == [want]


def test_record_without_endpoint_never_clears_a_learned_one() -> None:
    spec = PeerSpec(K[1], (net("10.50.1.0/24"),), None, 25)
    installed = Installed({K[1]: spec}, {net("10.50.1.0/24")})
    learned = {K[1]: Observed(("203.0.113.5", 40000), 10.0)}
    plan = reconcile({K[1]: node(1, "10.50.1.0/24", endpoint=None)}, installed, learned, 5000.0, 25)
    assert plan.actions == []


def test_partial_failure_keeps_ownership_right() -> None:
    installed = Installed({K[1]: PeerSpec(K[1], (net("10.50.1.0/24"),), None, 25)}, {net("10.50.1.0/24")})
    plan = reconcile({K[2]: node(2, "10.50.2.0/24")}, installed, {}, 200.0, 25)
    assert [type(a) for a in plan.actions] == [RemovePeer, RemoveRoute, AddPeer, AddRoute]
    after = apply_partial(installed, plan, {0: False, 1: True, 2: True, 3: False})
    assert set(after.peers) == {K[1], K[2]}  # the failed removal stays owned, to be retried
    assert after.routes == set()  # the failed route add is not owned
    retry = reconcile({K[2]: node(2, "10.50.2.0/24")}, after, {K[2]: Observed(("192.0.2.9", 51820), None),
                                                                K[1]: Observed(None, None)}, 201.0, 25)
    assert retry.actions == [RemovePeer(K[1]), AddRoute(net("10.50.2.0/24"))]


def test_v6_network() -> None:
    config = NetworkConfig(ipaddress.ip_network("fd00:50::/48"), 64)
    claims = {subnet_token(net("fd00:50:0:7::/64")): Claim(net("fd00:50:0:7::/64"), K[1]).to_json().encode()}
    view = build_view(config, claims, {key_token(K[1]): (record(K[1], "fd00:50:0:7::/64",
                                                                 (("2001:db8::1", 51820),)), 3)})
    assert view.nodes[K[1]].address == ipaddress.ip_address("fd00:50:0:7::1")
    plan = reconcile(view.nodes, Installed(), {}, 1.0, 0)
    assert plan.actions[0] == AddPeer(PeerSpec(K[1], (net("fd00:50:0:7::/64"),), ("2001:db8::1", 51820), 0))
