"""The mesh end to end: a real etcd (Debian's 3.4) and real wg-py interfaces in namespaces.

Each test builds its own hub namespace (bridge + etcd listening only on the hub's address) and
node namespaces (:mod:`tests.meshlab`); everything goes with the :class:`Lab`. Agents run as
``wg-py mesh join`` with a short TTL (4 s) so that expiry happens within the test; waits are
bounded and nothing asserts on time (``bench/mesh.py`` measures the times).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.meshlab import HUB_ADDR, WAIT, MeshLab, converged, etcd_missing, wait_converged
from tunnel.lab.netns import Lab, missing_requirements, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.slow]
_missing = missing_requirements(("ip", "ping", "wg")) or etcd_missing()
if _missing:
    pytestmark.append(pytest.mark.skip(reason=_missing))

TTL = "4"
METRICS = "127.0.0.1:9586"  # inside a node's namespace


@pytest.fixture
def mesh() -> Iterator[MeshLab]:
    with Lab() as lab:
        yield MeshLab(lab)


def all_ping(m: MeshLab, members: list[int]) -> None:
    for i in members:
        for j in members:
            if i != j:
                address = m.address(j)
                assert address is not None
                assert m.lab.wait_ping(m.nodes[i], address, 15.0), f"node{i} cannot ping node{j} ({address})"


def counters(m: MeshLab, index: int) -> dict[str, object]:
    state = m.state(index)
    assert state is not None
    result: dict[str, object] = state["counters"]
    return result


def scrape(m: MeshLab, index: int) -> dict[tuple[str, str], float]:
    """GET the agent's /metrics inside its namespace; (sample name, its reason/kind label) -> value."""
    url = f"http://{METRICS}/metrics"
    text = m.lab.run(m.nodes[index], [sys.executable, "-c", f"import urllib.request; "
                                      f"print(urllib.request.urlopen({url!r}, timeout=10).read().decode())"]).stdout
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("wgpy_mesh_"):
                assert sample.labels["interface"] == m.ifaces[index] and sample.labels["network"] == m.network
            out[(sample.name, sample.labels.get("reason", sample.labels.get("kind", "")))] = sample.value
    return out


def test_five_nodes_kill_restart_outage_compaction_hostile(mesh: MeshLab) -> None:
    m = mesh
    m.etcd.start()
    m.mesh("init", m.network, "10.60.0.0/16", "--subnet-len", "24")
    members = [1, 2, 3, 4, 5]
    for i in members:  # node1 serves metrics by option, node2 by environment (each in its namespace)
        m.join(i, "--ttl", TTL, *(("--metrics", METRICS) if i == 1 else ()),
               env={"WGPY_METRICS": METRICS} if i == 2 else None)
    wait_converged(m, members)
    all_ping(m, members)
    for i in (1, 2):
        scraped = scrape(m, i)
        assert scraped[("wgpy_mesh_nodes_alive", "")] == 5 == counters(m, i)["nodes_alive"]
        assert scraped[("wgpy_mesh_joined", "")] == 1
        assert scraped[("process_open_fds", "")] > 0
    status = json.loads(m.mesh("status", m.network, "--json", "--state-dir", str(m.state_dir)))
    assert sorted(n["name"] for n in status["nodes"] if n["alive"]) == [f"node{i}" for i in members]
    assert len(status["local"]) == 5

    # Hostile records straight into etcd: ignored, counted, node2's peer untouched.
    prefix = f"/wg-py/networks/{m.network}/nodes/"
    state2 = m.state(2)
    assert state2 is not None
    evil_key = "x" * 43 + "="
    m.etcd.etcdctl("put", prefix + "garbage", "{not json")
    m.etcd.etcdctl("put", prefix + "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                   json.dumps({"public_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                               "subnet": state2["subnet"], "endpoints": ["10.77.0.99:1"]}))
    m.etcd.etcdctl("put", prefix + evil_key.replace("x", "y"), "[]")
    assert wait_for(lambda: sum(counters(m, 1)["hostile_records"].values()) >= 3, WAIT, 0.2)  # type: ignore[attr-defined]
    assert counters(m, 1)["hostile_records"] == {"bad_key": 2, "claim_mismatch": 1}
    scraped = scrape(m, 1)
    assert {r: v for (name, r), v in scraped.items() if name == "wgpy_mesh_hostile_records_total"} == {
        "bad_key": 2, "claim_mismatch": 1}
    allowed = m.lab.run(m.nodes[1], ["wg", "show", m.ifaces[1], "allowed-ips"]).stdout
    assert f"{m.key_of(2)}\t{state2['subnet']}" in allowed
    assert converged(m, members)
    for agent in m.agents.values():
        assert agent.alive()

    # SIGKILL node5: its record expires with its lease and every other node drops it.
    subnet5 = m.state(5)["subnet"]  # type: ignore[index]
    key5 = m.key_of(5)
    m.agents[5].popen.kill()
    m.agents[5].popen.wait(10)
    survivors = [1, 2, 3, 4]
    assert wait_for(lambda: all(key5 not in m.peers(i) for i in survivors), WAIT, 0.2), "node5 never vanished"
    wait_converged(m, survivors)
    route = m.lab.run(m.nodes[1], ["ip", "route", "show", subnet5]).stdout
    assert route.strip() == ""

    # Restarted with the same key (its interface still runs): same subnet, reachable again.
    m.join(5, "--ttl", TTL)
    wait_converged(m, members)
    assert m.state(5)["subnet"] == subnet5  # type: ignore[index]
    all_ping(m, [1, 5])

    # Compaction mid-run, while membership changes: node4 leaves, compaction, node4 returns.
    m.agents[4].stop()
    out = json.loads(m.etcd.etcdctl("endpoint", "status", "-w", "json"))
    revision = out[0]["Status"]["header"]["revision"]
    m.etcd.etcdctl("compact", str(revision))
    m.join(4, "--ttl", TTL)
    wait_converged(m, members)

    # etcd down for 30 s (the outage, far longer than the TTL): pings go on without
    # loss, agents keep running.
    m.etcd.stop()
    ping = subprocess.run(
        m.lab.argv(m.nodes[1], ["ping", "-c", "60", "-i", "0.5", "-W", "2", m.address(2) or ""]),
        capture_output=True, text=True, timeout=90, check=False)
    assert " 0% packet loss" in ping.stdout, ping.stdout
    assert all(agent.alive() for agent in m.agents.values())
    assert converged(m, members)
    assert counters(m, 1)["store_errors"]
    m.etcd.start()
    m.join(6, "--ttl", TTL)
    wait_converged(m, [*members, 6])
    all_ping(m, [1, 6])

    # SIGTERM: records deleted, interfaces gone, state files removed, claims kept.
    for i in [*members, 6]:
        m.agents[i].popen.send_signal(signal.SIGTERM)
    for i in [*members, 6]:
        assert m.agents[i].wait(20) == 0, m.agents[i].output()[-2000:]
        assert not m.lab.link_exists(m.nodes[i], m.ifaces[i])
        assert m.state(i) is None
    left = sorted(m.etcd.etcdctl("get", "--prefix", "--keys-only", prefix).split())
    hostile = ["garbage", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", evil_key.replace("x", "y")]
    assert left == sorted(prefix + name for name in hostile)
    claims = m.etcd.etcdctl("get", "--prefix", "--keys-only", f"/wg-py/networks/{m.network}/claims/").split()
    assert len(claims) == 6


def _openssl(lab: Lab, *args: str) -> None:
    lab.run(None, ["openssl", *args])


def make_certs(lab: Lab) -> dict[str, str]:
    """A CA, a server certificate for the hub address, a client certificate (openssl CLI)."""
    p = {name: str(lab.path(name)) for name in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem",
                                                 "client.key", "client.csr", "client.pem", "ext.cnf")}
    _openssl(lab, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", p["ca.key"], "-out", p["ca.pem"],
             "-days", "1", "-subj", "/CN=wg-py test CA")
    lab.path("ext.cnf").write_text(f"subjectAltName=IP:{HUB_ADDR}\nextendedKeyUsage=serverAuth,clientAuth\n")
    # The client certificate has no CN: etcd's HTTP gateway refuses one with a CN when auth is on
    # (the identity comes from the user/password token instead).
    for who, subject in (("server", "/CN=etcd"), ("client", "/O=wg-py mesh node")):
        _openssl(lab, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", p[f"{who}.key"], "-out", p[f"{who}.csr"],
                 "-subj", subject)
        _openssl(lab, "x509", "-req", "-in", p[f"{who}.csr"], "-CA", p["ca.pem"], "-CAkey", p["ca.key"],
                 "-CAcreateserial", "-out", p[f"{who}.pem"], "-days", "1", "-extfile", p["ext.cnf"])
    return {"cacert": p["ca.pem"], "cert": p["server.pem"], "key": p["server.key"],
            "client_cert": p["client.pem"], "client_key": p["client.key"]}


def test_tls_client_certs_and_password_auth(mesh: MeshLab) -> None:
    m = mesh
    tls = make_certs(m.lab)
    m.etcd.tls = tls
    m.etcd.start()
    m.etcd.etcdctl("user", "add", "root:rootpw", "--interactive=false")
    m.etcd.etcdctl("user", "add", "mesh:meshpw", "--interactive=false")
    m.etcd.etcdctl("role", "add", "meshrole")
    m.etcd.etcdctl("role", "grant-permission", "meshrole", "--prefix=true", "readwrite", "/wg-py/")
    m.etcd.etcdctl("user", "grant-role", "mesh", "meshrole")
    m.etcd.etcdctl("auth", "enable")
    m.etcd.auth = "rootpw"
    env = {"ETCDCTL_ENDPOINTS": m.etcd.url, "ETCDCTL_CACERT": tls["cacert"], "ETCDCTL_CERT": tls["client_cert"],
           "ETCDCTL_KEY": tls["client_key"], "ETCDCTL_USER": "mesh:meshpw"}
    m.mesh("init", m.network, "10.61.0.0/16", "--etcd", m.etcd.url, env=env)
    for i in (1, 2):
        m.join(i, "--ttl", TTL, "--etcd", m.etcd.url, env=env)
    wait_converged(m, [1, 2])
    all_ping(m, [1, 2])
    status = json.loads(m.mesh("status", m.network, "--json", "--etcd", m.etcd.url, env=env))
    assert sum(1 for n in status["nodes"] if n["alive"]) == 2
    # A wrong password, and no client certificate, are refused with a clear error.
    wrong = m.mesh("status", m.network, "--etcd", m.etcd.url, check=False, env={**env, "ETCDCTL_USER": "mesh:nope"})
    assert wrong == ""
    done = m.lab.run(m.hub, ["wg-py", "mesh", "status", m.network, "--etcd", m.etcd.url], check=False,
                     env={**env, "ETCDCTL_USER": "mesh:nope"})
    assert done.returncode == 1 and "authentication failed" in done.stderr, done.stderr
    no_cert = {k: v for k, v in env.items() if k not in ("ETCDCTL_CERT", "ETCDCTL_KEY")}
    done = m.lab.run(m.hub, ["wg-py", "mesh", "status", m.network, "--etcd", m.etcd.url], check=False, env=no_cert)
    assert done.returncode == 1 and "etcd" in done.stderr
    plain = m.lab.run(m.hub, ["wg-py", "mesh", "status", m.network, "--etcd", f"http://{HUB_ADDR}:2379"],
                      check=False)
    assert plain.returncode == 1
    for i in (1, 2):
        m.agents[i].stop(10)
        assert m.state(i) is None
