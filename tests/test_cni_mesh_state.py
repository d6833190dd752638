"""The state-file contract between the mesh agent (writer) and wg-py-cni (reader), end to end.

The file is written by the agent's own code (:class:`tunnel.mesh.agent.Agent` on the in-memory
store and the fake backend, the code path ``wg-py mesh join`` runs) and read by the plugin's own
reader (:func:`tunnel.cni.plugin.read_state`, which ADD, DEL, CHECK and STATUS use). The expected
values come from what the test configured (the network, its MTU, the interface name) and from the
claim the agent made in the store, not from either side's parser.
"""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest

from crypto import keys
from tunnel.cni import delegate as dg
from tunnel.cni import mesh as cni_mesh
from tunnel.cni.plugin import read_state as cni_read_state
from tunnel.cni.spec import TRY_AGAIN_LATER, CniError, parse_config
from tunnel.mesh import state as mesh_state
from tunnel.mesh.agent import Agent, AgentOptions
from tunnel.mesh.backend import FakeBackend
from tunnel.mesh.config import Keys, NetworkConfig
from tunnel.mesh.store import MemoryStore

WAIT = 10.0


def test_default_state_directories_agree() -> None:
    assert Path(cni_mesh.DEFAULT_STATE_DIR) == mesh_state.DEFAULT_STATE_DIR


def agent(store: MemoryStore, index: int, state_dir: Path) -> Agent:
    private = keys.generate_private()
    return Agent(store, FakeBackend(), AgentOptions(
        network="pods", iface=f"wgc{index}", private_key=private, public_key=keys.public_from_private(private),
        endpoints=((f"192.0.2.{index}", 0),), name=f"n{index}", ttl=5, interval=0.2, resync=5.0,
        state_dir=state_dir))


@pytest.mark.parametrize(("network", "subnet_len", "mtu"), [
    ("10.58.0.0/16", 24, 1380),
    ("10.59.0.0/20", 26, 576),  # the smallest MTU the agent accepts for IPv4
    ("fd00:58::/48", 64, 1280),
])
async def test_agent_writes_what_the_plugin_reads(tmp_path: Path, network: str, subnet_len: int, mtu: int) -> None:
    store = MemoryStore()
    config = NetworkConfig(ipaddress.ip_network(network), subnet_len, mtu=mtu)
    assert await store.create(Keys("pods").config, config.to_json().encode())
    agents = [agent(store, i, tmp_path) for i in (1, 2)]
    stops = [asyncio.Event() for _ in agents]
    tasks = [asyncio.ensure_future(a.run(s)) for a, s in zip(agents, stops, strict=True)]
    try:
        async with asyncio.timeout(WAIT):
            while not all(len((mesh_state.read_state(tmp_path / f"wgc{i}.json") or {}).get("nodes", [])) == 2
                          for i in (1, 2)):
                await asyncio.sleep(0.02)
        for index, a in enumerate(agents, 1):
            conf = parse_config({"cniVersion": "1.0.0", "name": "pods", "type": "wg-py-cni",
                                 "mesh": f"wgc{index}", "stateDir": str(tmp_path)}, "ADD")
            got = cni_read_state(conf, {})
            subnet = a.subnet
            assert subnet is not None and subnet.prefixlen == subnet_len
            assert subnet.subnet_of(ipaddress.ip_network(network))  # type: ignore[arg-type]
            assert got.subnet == subnet
            assert await store.get(Keys("pods").claim(subnet)) is not None  # the claim in the store
            assert got.network_cidr == ipaddress.ip_network(network)
            assert got.address == subnet.network_address + 1  # the address the agent put on the interface
            assert a.backend.address == got.address  # type: ignore[attr-defined]
            assert (got.mtu, got.mode, got.network, got.interface) == (mtu, "l3", "pods", f"wgc{index}")
            # The delegate hands out the whole subnet, its gateway being the node's tunnel address.
            delegate = dg.build_delegate_conf(conf, got, "1.0.0")
            assert delegate["ipam"]["ranges"] == [[{"subnet": str(subnet)}]]
            assert delegate["ipam"]["routes"] == [{"dst": network, "gw": str(subnet.network_address + 1)}]
            assert delegate["mtu"] == mtu
    finally:
        for stop in stops:
            stop.set()
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*tasks)
    # A clean leave removes the file: the plugin then says "no lease, try again later" (code 11).
    conf = parse_config({"cniVersion": "1.0.0", "name": "pods", "type": "wg-py-cni", "mesh": "wgc1",
                         "stateDir": str(tmp_path)}, "ADD")
    with pytest.raises(CniError) as info:
        cni_read_state(conf, {})
    assert info.value.code == TRY_AGAIN_LATER
