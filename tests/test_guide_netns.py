# ruff: noqa: F811 - pytest fixtures imported from tests.netns are parameters here
"""The site-to-site L3 overlay of docs/guide.md, as a new user would run it, in namespaces.

Four namespaces: a host on LAN A (10.1.0.0/24) behind gateway A, gateway B with LAN B
(10.2.0.0/24) and its host; the gateways meet over a "WAN" veth (192.168.77.0/24) and run
``wg-py up FILE`` with the guide's configuration files (AllowedIPs carry the other site's LAN,
wg-quick semantics add the routes; the gateways forward). The hosts reach each other through
the tunnel. Interface names are unique per test (the UAPI socket directory is shared).
"""

from __future__ import annotations

import json

import pytest

from crypto import keys
from tests.netns import Lab, implementation, netns_factory, requires_root_netns  # noqa: F401

pytestmark = [pytest.mark.netns, requires_root_netns]


def site_conf(private: bytes, address: str, peer_public: str, endpoint: str, allowed: str) -> str:
    return ("[Interface]\n"
            f"PrivateKey = {keys.to_base64(private)}\n"
            "ListenPort = 51820\n"
            f"Address = {address}\n\n"
            "[Peer]\n"
            f"PublicKey = {peer_public}\n"
            f"Endpoint = {endpoint}\n"
            f"AllowedIPs = {allowed}\n"
            "PersistentKeepalive = 25\n")


def test_site_to_site_l3_overlay(netns_factory: Lab) -> None:
    implementation("wg-py")
    lab = netns_factory
    host_a, gw_a, gw_b, host_b = (lab.namespace(t) for t in ("ha", "ga", "gb", "hb"))
    lab.veth(host_a, gw_a, ["10.1.0.10/24"], ["10.1.0.1/24"], names=("eth0", "lan0"))
    lab.veth(gw_a, gw_b, ["192.168.77.1/24"], ["192.168.77.2/24"], names=("wan0", "wan1"))
    lab.veth(gw_b, host_b, ["10.2.0.1/24"], ["10.2.0.10/24"], names=("lan1", "eth1"))
    lab.run(host_a, ["ip", "route", "add", "default", "via", "10.1.0.1"])
    lab.run(host_b, ["ip", "route", "add", "default", "via", "10.2.0.1"])
    key_a, key_b = keys.generate_private(), keys.generate_private()
    pub_a, pub_b = (keys.to_base64(keys.public_from_private(k)) for k in (key_a, key_b))
    names = {}
    for ns, key, address, peer, endpoint, allowed in (
        (gw_a, key_a, "10.255.0.1/30", pub_b, "192.168.77.2:51820", "10.255.0.2/32, 10.2.0.0/24"),
        (gw_b, key_b, "10.255.0.2/30", pub_a, "192.168.77.1:51820", "10.255.0.1/32, 10.1.0.0/24"),
    ):
        lab.run(ns, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        name = lab.interface_name()
        path = lab.path(f"{name}.conf")
        path.write_text(site_conf(key, address, peer, endpoint, allowed))
        path.chmod(0o600)
        lab.run(ns, ["wg-py", "up", str(path)], timeout=90)
        names[ns] = name
    assert f"10.2.0.0/24 dev {names[gw_a]}" in lab.run(gw_a, ["ip", "-4", "route"]).stdout
    assert lab.wait_ping(host_a, "10.2.0.10", timeout=20.0), "site A's host cannot reach site B's"
    assert lab.ping(host_b, "10.1.0.10", count=3) is not None
    result = lab.iperf3(host_b, host_a, "10.2.0.10", seconds=1.0)
    assert result["end"]["sum_received"]["bytes"] > 0
    stats = json.loads(lab.run(gw_a, ["wg-py", "show", names[gw_a], "--json"]).stdout)[names[gw_a]]
    (peer,) = stats["peers"]
    assert peer["public_key"] == pub_b and peer["tx_bytes"] > 0 and peer["rx_bytes"] > 0
    assert "10.2.0.0/24" in peer["allowed_ips"]
    for ns, name in names.items():
        lab.run(ns, ["wg-py", "down", str(lab.path(f"{name}.conf"))], timeout=60)
        assert not lab.link_exists(ns, name)
