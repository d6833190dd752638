"""wg-py-cni's sans-I/O parts: environment, config, mesh state, delegate config, results, CHECK.

The expected values are written out from the CNI spec and the reference plugins' documented
config keys, not computed by the code under test. The plugin's own executable is run once for
VERSION (no namespaces needed); everything with namespaces is in test_cni_netns.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tunnel.cni import delegate as dg
from tunnel.cni.mesh import MeshState, parse_state
from tunnel.cni.plugin import run
from tunnel.cni.spec import CniError, Config, decode, parse_config, parse_env

PLUGIN = Path(sys.executable).parent / "wg-py-cni"

STATE = {"network": "n", "interface": "wg0", "mode": "l3", "network_cidr": "10.5.0.0/16",
         "subnet": "10.5.7.0/24", "address": "10.5.7.0", "mtu": 1420, "nodes": [], "updated": 1.0}
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc", "CNI_NETNS": "/var/run/netns/x",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni:/opt/cni/bin", "CNI_ARGS": "K8S_POD_NAME=p;IgnoreUnknown=1"}


def conf(**extra: Any) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "pods", "type": "wg-py-cni", "mesh": "wg0", **extra}


def state(**extra: Any) -> MeshState:
    return parse_state({**STATE, **extra}, "wg0")


def code_of(fn: Any, *args: Any) -> int:
    with pytest.raises(CniError) as info:
        fn(*args)
    assert info.value.msg
    return info.value.code


# -- environment -----------------------------------------------------------------------------

def test_env_for_add() -> None:
    env = parse_env(ENV)
    assert (env.command, env.container_id, env.netns, env.ifname) == ("ADD", "abc", "/var/run/netns/x", "eth0")
    assert env.path == ("/usr/lib/cni", "/opt/cni/bin")
    assert env.args == (("K8S_POD_NAME", "p"), ("IgnoreUnknown", "1"))


@pytest.mark.parametrize("change", [
    {"CNI_COMMAND": "add"}, {"CNI_COMMAND": ""}, {"CNI_PATH": ""}, {"CNI_CONTAINERID": ""},
    {"CNI_CONTAINERID": "a/b"}, {"CNI_IFNAME": ""}, {"CNI_IFNAME": "a" * 16}, {"CNI_IFNAME": "e:0"},
    {"CNI_IFNAME": ".."}, {"CNI_IFNAME": "e 0"}, {"CNI_NETNS": ""}, {"CNI_NETNS": "relative/ns"},
    {"CNI_ARGS": "novalue"}, {"CNI_ARGS": "=v"},
])
def test_env_errors_are_code_4(change: dict[str, str]) -> None:
    assert code_of(parse_env, {**ENV, **change}) == 4


def test_env_per_command_needs() -> None:
    assert parse_env({"CNI_COMMAND": "VERSION"}).command == "VERSION"
    assert parse_env({"CNI_COMMAND": "STATUS", "CNI_PATH": "/x"}).path == ("/x",)
    assert parse_env({"CNI_COMMAND": "GC", "CNI_PATH": "/x"}).command == "GC"
    assert parse_env({**ENV, "CNI_COMMAND": "DEL", "CNI_NETNS": ""}).netns == ""  # the runtime lost it
    assert code_of(parse_env, {**ENV, "CNI_COMMAND": "CHECK", "CNI_NETNS": ""}) == 4


# -- config ----------------------------------------------------------------------------------

def test_config_minimal_and_optional_keys() -> None:
    c = parse_config(conf(), "ADD")
    assert (c.cni_version, c.name, c.mesh, c.state_dir, c.data_dir, c.delegate, c.ipam, c.prev_result) == (
        "1.0.0", "pods", "wg0", None, None, {}, {}, None)
    c = parse_config(conf(stateDir="/s", dataDir="/d", delegate={"bridge": "br9"}, ipam={"dataDir": "/h"},
                          prevResult={"cniVersion": "1.0.0"}), "ADD")
    assert (c.state_dir, c.data_dir, c.delegate, c.ipam) == ("/s", "/d", {"bridge": "br9"}, {"dataDir": "/h"})


@pytest.mark.parametrize(("raw", "command", "code"), [
    (conf(cniVersion="2.0.0"), "ADD", 1),
    (conf(cniVersion="0.2.0"), "ADD", 1),
    (conf(cniVersion=1), "ADD", 7),
    (conf(cniVersion="1.0"), "ADD", 7),
    (conf(cniVersion="1.0.0"), "STATUS", 1),
    (conf(cniVersion="1.0.0"), "GC", 1),
    (conf(cniVersion="0.3.1", prevResult={}), "CHECK", 1),
    (conf(), "CHECK", 7),  # no prevResult
    (conf(name=""), "ADD", 7),
    (conf(name="a b"), "ADD", 7),
    (conf(type="flannel"), "ADD", 7),
    (conf(mesh=""), "ADD", 7),
    (conf(mesh="../wg0"), "ADD", 7),
    (conf(mesh="x" * 16), "ADD", 7),
    (conf(bridge="x"), "ADD", 7),  # bridge keys go inside "delegate"
    (conf(delegate=[]), "ADD", 7),
    (conf(delegate={"cniVersion": "0.1.0"}), "ADD", 7),
    (conf(ipam=[]), "ADD", 7),
    (conf(delegate={"ipam": "x"}), "ADD", 7),
    (conf(stateDir="relative"), "ADD", 7),
    (conf(dataDir=5), "ADD", 7),
    (conf(prevResult=[]), "ADD", 7),
    (conf(cniVersion="1.1.0", **{"cni.dev/valid-attachments": [{"containerID": "a"}]}), "GC", 7),
    (conf(cniVersion="1.1.0", **{"cni.dev/valid-attachments": {}}), "GC", 7),
])
def test_config_errors(raw: dict[str, Any], command: str, code: int) -> None:
    assert code_of(parse_config, raw, command) == code


@pytest.mark.parametrize("data", [b"", b"{", b"[1]", b"\xff\xfe", b'"text"'])
def test_decode_errors_are_code_6(data: bytes) -> None:
    assert code_of(decode, data) == 6


# -- mesh state ------------------------------------------------------------------------------

def test_state_parses_the_contract() -> None:
    s = state()
    assert (str(s.network_cidr), str(s.subnet), str(s.address), s.mtu, s.mode) == (
        "10.5.0.0/16", "10.5.7.0/24", "10.5.7.0", 1420, "l3")
    assert parse_state({**STATE, "address": "10.5.7.0/32", "extra": 1}, "wg0").address == s.address
    # The MTU floor is the family's: an IPv4 mesh may run at 576 (the agent accepts it), IPv6 not.
    assert parse_state({**STATE, "mtu": 576}, "wg0").mtu == 576
    v6 = {**STATE, "network_cidr": "fd00:5::/48", "subnet": "fd00:5:0:7::/64", "address": "fd00:5:0:7::1"}
    assert parse_state({**v6, "mtu": 1280}, "wg0").mtu == 1280
    assert code_of(parse_state, {**v6, "mtu": 1279}, "wg0") == 100


@pytest.mark.parametrize("change", [
    {"interface": "wg1"}, {"mode": "l4"}, {"network_cidr": "10.5.0.1/16"}, {"subnet": "10.6.7.0/24"},
    {"subnet": "10.5.7.0/31"}, {"subnet": "fd00::/64"}, {"mtu": True}, {"mtu": 575}, {"mtu": "1420"},
    {"address": "nope"}, {"subnet": None},
])
def test_state_faults_are_code_100(change: dict[str, Any]) -> None:
    assert code_of(parse_state, {**STATE, **change}, "wg0") == 100


def test_state_not_an_object() -> None:
    assert code_of(parse_state, [], "wg0") == 100


# -- delegate config -------------------------------------------------------------------------

def test_delegate_defaults() -> None:
    got = dg.build_delegate_conf(parse_config(conf(), "ADD"), state(), "1.0.0")
    assert got == {
        "cniVersion": "1.0.0", "name": "pods", "type": "bridge", "bridge": "wgpy-cni0", "isGateway": True,
        "ipMasq": False, "hairpinMode": True, "mtu": 1420,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.5.7.0/24"}]],
                 "routes": [{"dst": "10.5.0.0/16", "gw": "10.5.7.1"}]},
    }


def test_delegate_overrides() -> None:
    raw = conf(delegate={"bridge": "cni9", "mtu": 1400, "ipMasq": True, "isDefaultGateway": True,
                         "ipam": {"ranges": [[{"subnet": "10.5.7.128/25", "gateway": "10.5.7.129"}]]}},
               ipam={"dataDir": "/tmp/hl"}, runtimeConfig={"mac": "02:00:00:00:00:01"}, args={"x": 1},
               prevResult={"cniVersion": "1.0.0"})
    got = dg.build_delegate_conf(parse_config(raw, "ADD"), state(), "1.0.0")
    assert (got["bridge"], got["mtu"], got["ipMasq"], got["isDefaultGateway"]) == ("cni9", 1400, True, True)
    assert got["ipam"] == {"type": "host-local", "dataDir": "/tmp/hl",
                           "ranges": [[{"subnet": "10.5.7.128/25", "gateway": "10.5.7.129"}]],
                           "routes": [{"dst": "10.5.0.0/16", "gw": "10.5.7.129"}]}
    assert got["runtimeConfig"] == {"mac": "02:00:00:00:00:01"} and got["args"] == {"x": 1}
    assert "prevResult" not in got
    single = dg.build_delegate_conf(parse_config(conf(ipam={"subnet": "10.5.7.0/26"}), "ADD"), state(), "1.0.0")
    assert single["ipam"]["subnet"] == "10.5.7.0/26" and "ranges" not in single["ipam"]
    assert single["ipam"]["routes"] == [{"dst": "10.5.0.0/16", "gw": "10.5.7.1"}]
    own_routes = dg.build_delegate_conf(parse_config(conf(ipam={"routes": [{"dst": "0.0.0.0/0"}]}), "ADD"),
                                        state(), "1.0.0")
    assert own_routes["ipam"]["routes"] == [{"dst": "0.0.0.0/0"}]


@pytest.mark.parametrize("raw", [
    conf(delegate={"mtu": 1421}), conf(delegate={"mtu": 500}), conf(delegate={"mtu": True}),
    conf(delegate={"type": "../bin/sh"}), conf(delegate={"bridge": "b" * 16}), conf(delegate={"ipMasq": "yes"}),
    conf(ipam={"type": ""}), conf(ipam={"ranges": [[{"subnet": "10.5.8.0/24"}]]}),
    conf(ipam={"ranges": [[{"subnet": "10.5.0.0/16"}]]}), conf(ipam={"ranges": []}), conf(ipam={"ranges": [[]]}),
    conf(ipam={"ranges": [[{"subnet": "10.5.7.0/24", "rangeStart": "10.5.8.1"}]]}),
    conf(ipam={"ranges": [[{"subnet": "10.5.7.0/24", "gateway": "x"}]]}),
    conf(ipam={"subnet": "10.9.0.0/24"}), conf(ipam={"routes": [{"dst": "10.0.0.1/8"}]}),
    conf(ipam={"routes": [{"dst": "10.0.0.0/8", "gw": "g"}]}), conf(ipam={"routes": {}}),
    conf(ipam={"dataDir": "rel"}),
])
def test_delegate_overrides_that_do_not_fit_the_mesh_are_code_7(raw: dict[str, Any]) -> None:
    assert code_of(dg.build_delegate_conf, parse_config(raw, "ADD"), state(), "1.0.0") == 7


@pytest.mark.parametrize(("address", "expected"), [
    (None, [[{"subnet": "10.5.7.0/24"}]]),
    ("10.9.9.9", [[{"subnet": "10.5.7.0/24"}]]),   # outside the subnet
    ("10.5.7.0", [[{"subnet": "10.5.7.0/24"}]]),   # the network address: never handed out
    ("10.5.7.1", [[{"subnet": "10.5.7.0/24"}]]),   # the gateway: the node's own either way
    ("10.5.7.255", [[{"subnet": "10.5.7.0/24"}]]),  # broadcast: never handed out
    ("10.5.7.2", [[{"subnet": "10.5.7.0/24", "rangeStart": "10.5.7.3", "rangeEnd": "10.5.7.254"}]]),
    ("10.5.7.100", [[{"subnet": "10.5.7.0/24", "rangeStart": "10.5.7.2", "rangeEnd": "10.5.7.99"},
                     {"subnet": "10.5.7.0/24", "rangeStart": "10.5.7.101", "rangeEnd": "10.5.7.254"}]]),
    ("10.5.7.254", [[{"subnet": "10.5.7.0/24", "rangeStart": "10.5.7.2", "rangeEnd": "10.5.7.253"}]]),
])
def test_default_ranges_keep_the_tunnel_address_out(address: str | None, expected: list[Any]) -> None:
    assert dg.default_ranges(state(address=address)) == expected


def test_default_ranges_ipv6() -> None:
    s = parse_state({**STATE, "network_cidr": "fd05::/48", "subnet": "fd05:0:0:7::/64", "address": "fd05:0:0:7::5"},
                    "wg0")
    assert dg.default_ranges(s) == [[
        {"subnet": "fd05:0:0:7::/64", "rangeStart": "fd05:0:0:7::2", "rangeEnd": "fd05:0:0:7::4"},
        {"subnet": "fd05:0:0:7::/64", "rangeStart": "fd05:0:0:7::6", "rangeEnd": "fd05::7:ffff:ffff:ffff:ffff"},
    ]]


def test_delegate_version() -> None:
    assert dg.delegate_version("1.0.0", ["0.4.0", "1.0.0"]) == "1.0.0"
    assert dg.delegate_version("1.1.0", ["0.4.0", "1.0.0"]) == "1.0.0"
    assert dg.delegate_version("1.1.0", ["1.0.0", "1.1.0"]) == "1.1.0"
    assert code_of(dg.delegate_version, "0.4.0", ["1.0.0"]) == 1


# -- results ---------------------------------------------------------------------------------

OURS = {"cniVersion": "1.0.0",
        "interfaces": [{"name": "wgpy-cni0", "mac": "aa:00:00:00:00:01"}, {"name": "veth1", "mac": "aa:00:00:00:00:02"},
                       {"name": "eth0", "mac": "aa:00:00:00:00:03", "sandbox": "/var/run/netns/p"}],
        "ips": [{"interface": 2, "address": "10.5.7.2/24", "gateway": "10.5.7.1"}],
        "routes": [{"dst": "10.5.0.0/16", "gw": "10.5.7.1"}], "dns": {}}


def test_merge_prev_result() -> None:
    assert dg.merge_prev_result(None, OURS) == OURS
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "lo0"}], "ips": [{"interface": 0, "address": "1.2.3.4/32"}],
            "routes": [{"dst": "1.0.0.0/8"}], "dns": {"nameservers": ["1.1.1.1"]}}
    got = dg.merge_prev_result(prev, OURS)
    assert [i["name"] for i in got["interfaces"]] == ["lo0", "wgpy-cni0", "veth1", "eth0"]
    assert got["ips"] == [{"interface": 0, "address": "1.2.3.4/32"},
                          {"interface": 3, "address": "10.5.7.2/24", "gateway": "10.5.7.1"}]
    assert got["routes"] == [{"dst": "1.0.0.0/8"}, {"dst": "10.5.0.0/16", "gw": "10.5.7.1"}]
    assert got["dns"] == {"nameservers": ["1.1.1.1"]}
    assert OURS["ips"][0]["interface"] == 2  # inputs untouched
    assert dg.restamp(OURS, "1.1.0")["cniVersion"] == "1.1.0" and OURS["cniVersion"] == "1.0.0"


# Shaped as `ip -j addr show` / `ip -j -4 route show` print them (captured from iproute2 6.1).
LINKS = [
    {"ifname": "lo", "flags": ["LOOPBACK"], "mtu": 65536, "address": "00:00:00:00:00:00", "addr_info": []},
    {"ifname": "eth0", "flags": ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"], "mtu": 1420,
     "address": "aa:00:00:00:00:03",
     "addr_info": [{"family": "inet", "local": "10.5.7.2", "prefixlen": 24},
                   {"family": "inet6", "local": "fe80::1", "prefixlen": 64}]},
]
ROUTES = {4: [{"dst": "10.5.0.0/16", "gateway": "10.5.7.1", "dev": "eth0", "flags": []},
              {"dst": "10.5.7.0/24", "dev": "eth0", "protocol": "kernel", "scope": "link", "prefsrc": "10.5.7.2"}],
          6: [{"dst": "fe80::/64", "dev": "eth0", "protocol": "kernel"}]}


def test_check_attachment_matches_what_the_namespace_has() -> None:
    assert dg.check_attachment(OURS, "eth0", 1420, LINKS, ROUTES) == []
    no_gw = {**OURS, "routes": [{"dst": "10.5.0.0/16"}]}  # gateway taken from the address
    assert dg.check_attachment(no_gw, "eth0", None, LINKS, ROUTES) == []


def _with(link_change: dict[str, Any] | None = None, routes4: list[Any] | None = None) -> list[str]:
    links = [LINKS[0], {**LINKS[1], **(link_change or {})}]
    return dg.check_attachment(OURS, "eth0", 1420, links, {4: ROUTES[4] if routes4 is None else routes4, 6: []})


def test_check_attachment_finds_each_difference() -> None:
    assert dg.check_attachment(OURS, "eth0", 1420, LINKS[:1], ROUTES) == [
        "interface eth0 does not exist in the pod namespace"]
    assert dg.check_attachment(OURS, "eth1", 1420, LINKS, ROUTES) == ["the cached result has no sandbox interface eth1"]
    assert _with({"address": "aa:00:00:00:00:09"}) == ["eth0 has MAC aa:00:00:00:00:09, expected aa:00:00:00:00:03"]
    assert _with({"flags": ["BROADCAST"]}) == ["eth0 is down"]
    assert _with({"mtu": 1500}) == ["eth0 has MTU 1500, expected 1420"]
    assert _with({"addr_info": [{"family": "inet", "local": "10.5.7.2", "prefixlen": 16}]}) == [
        "eth0 lacks address 10.5.7.2/24"]
    assert _with(routes4=ROUTES[4][1:]) == ["route 10.5.0.0/16 via 10.5.7.1 is missing in the pod namespace"]
    wrong_gw = [{**ROUTES[4][0], "gateway": "10.5.7.9"}]
    assert _with(routes4=wrong_gw) == ["route 10.5.0.0/16 via 10.5.7.1 is missing in the pod namespace"]
    other_dev = [{**ROUTES[4][0], "dev": "eth1"}]
    assert _with(routes4=other_dev) == ["route 10.5.0.0/16 via 10.5.7.1 is missing in the pod namespace"]


def test_check_attachment_default_route() -> None:
    result = {**OURS, "routes": [{"dst": "0.0.0.0/0", "gw": "10.5.7.1"}]}
    routes = {4: [{"dst": "default", "gateway": "10.5.7.1", "dev": "eth0"}], 6: []}
    assert dg.check_attachment(result, "eth0", None, LINKS, routes) == []


def test_prev_result_problems() -> None:
    assert dg.prev_result_problems(dg.merge_prev_result({"interfaces": [{"name": "lo"}]}, OURS), OURS, "eth0") == []
    assert dg.prev_result_problems({"interfaces": [], "ips": []}, OURS, "eth0") == [
        "prevResult has no sandbox interface eth0", "prevResult lacks address 10.5.7.2/24 that ADD gave eth0"]
    other = {**OURS, "ips": [{"interface": 2, "address": "10.5.7.3/24"}]}
    assert dg.prev_result_problems(other, OURS, "eth0") == ["prevResult lacks address 10.5.7.2/24 that ADD gave eth0"]


def test_attachments_to_collect() -> None:
    cached = [("a", "eth0"), ("b", "eth0"), ("a", "net1")]
    assert dg.attachments_to_collect(cached, {("a", "eth0")}) == [("a", "net1"), ("b", "eth0")]
    assert dg.attachments_to_collect(cached, set(cached)) == []


# -- the command layer without namespaces ----------------------------------------------------

def test_run_reports_every_failure_as_an_error_object(tmp_path: Path) -> None:
    status, out = run(b"{", {"CNI_COMMAND": "ADD", **{k: v for k, v in ENV.items() if k != "CNI_COMMAND"}})
    assert status == 1 and out is not None
    assert (out["cniVersion"], out["code"], out["msg"]) == ("1.1.0", 6, "the network configuration is not valid JSON")
    assert out["details"]
    status, out = run(b"{}", {"CNI_COMMAND": "NOPE"})
    assert status == 1 and out is not None and out["code"] == 4
    # No state file: 11 (try again later), with the configured cniVersion, and nothing written.
    netns = tmp_path / "netns"
    netns.touch()
    raw = json.dumps(conf(stateDir=str(tmp_path / "state"), dataDir=str(tmp_path / "cache"))).encode()
    status, out = run(raw, {**ENV, "CNI_NETNS": str(netns)})
    assert status == 1 and out is not None and (out["code"], out["cniVersion"]) == (11, "1.0.0")
    assert "wg0" in out["msg"] and not (tmp_path / "cache").exists()


def test_version_through_the_executable() -> None:
    for stdin, asked in ((b'{"cniVersion": "1.0.0"}', "1.0.0"), (b"", "1.1.0")):
        done = subprocess.run([str(PLUGIN)], input=stdin, env={"CNI_COMMAND": "VERSION"}, capture_output=True,
                              timeout=30, check=False)
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        assert out["cniVersion"] == asked
        assert out["supportedVersions"] == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
    done = subprocess.run([str(PLUGIN)], input=b"{}", env={}, capture_output=True, timeout=30, check=False)
    assert done.returncode != 0 and json.loads(done.stdout)["code"] == 4


def test_config_type_is_frozen() -> None:
    c = parse_config(conf(), "ADD")
    assert isinstance(c, Config)
    with pytest.raises(AttributeError):
        c.name = "x"  # type: ignore[misc]
