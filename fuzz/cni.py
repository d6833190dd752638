"""CNI input (tunnel/cni/spec.py, mesh.py, delegate.py): parse or CniError.

Input: a selector byte, then length-prefixed records (fuzz.common). Selector % 3:
0: a network configuration (stdin) -> ``decode`` and ``parse_config`` for every command; a
   parsed one goes through ``build_delegate_conf`` (against a fixed mesh state), and its
   ``prevResult`` through ``merge_prev_result`` and ``prev_result_problems``;
1: the ``CNI_*`` environment, one ``KEY=VALUE`` per record -> ``parse_env``;
2: a mesh state file -> ``parse_state``, then ``default_ranges`` and ``build_delegate_conf``.
Nothing may raise but :class:`CniError` (the plugin turns anything else into error 999, an
internal error, which is a bug).
"""

from __future__ import annotations

import json

from fuzz.common import join_records, split_records
from tunnel.cni import delegate as dg
from tunnel.cni.mesh import parse_state
from tunnel.cni.spec import COMMANDS, CniError, decode, parse_config, parse_env

STATE = {"network": "n", "interface": "wg0", "mode": "l3", "network_cidr": "10.5.0.0/16",
         "subnet": "10.5.7.0/24", "address": "10.5.7.0", "mtu": 1420, "nodes": [], "updated": 1.0}
CONF = {"cniVersion": "1.0.0", "name": "pods", "type": "wg-py-cni", "mesh": "wg0"}
OURS = {"cniVersion": "1.0.0",
        "interfaces": [{"name": "cni0", "mac": "02:00:00:00:00:01"},
                       {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/var/run/netns/x"}],
        "ips": [{"address": "10.5.7.2/24", "gateway": "10.5.7.1", "interface": 1}],
        "routes": [{"dst": "10.5.0.0/16", "gw": "10.5.7.1"}]}


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, records = data[0] % 3, split_records(data[1:])
    try:
        if mode == 0:
            raw = decode(records[0] if records else b"")
            state = parse_state(STATE, "wg0")
            for command in COMMANDS:
                try:
                    config = parse_config(raw, command)
                except CniError:
                    continue
                dg.build_delegate_conf(config, state, config.cni_version)
                if config.prev_result is not None:
                    json.dumps(dg.merge_prev_result(config.prev_result, OURS))
                    dg.prev_result_problems(config.prev_result, OURS, "eth0")
        elif mode == 1:
            environ = {}
            for rec in records:
                key, _, value = rec.decode("utf-8", errors="surrogateescape").partition("=")
                environ[key] = value
            parse_env(environ)
        else:
            state = parse_state(decode(records[0] if records else b""), "wg0")
            dg.default_ranges(state)
            dg.build_delegate_conf(parse_config(CONF, "ADD"), state, "1.0.0")
    except CniError:
        return


def seeds() -> list[bytes]:
    full = {**CONF, "delegate": {"bridge": "cni9", "mtu": 1400, "ipMasq": True, "isDefaultGateway": True,
                                 "ipam": {"ranges": [[{"subnet": "10.5.7.128/25", "gateway": "10.5.7.129"}]]}},
            "ipam": {"dataDir": "/tmp/hl", "routes": [{"dst": "0.0.0.0/0", "gw": "10.5.7.1"}]},
            "runtimeConfig": {"mac": "02:00:00:00:00:01"}, "args": {"x": 1}, "prevResult": OURS}
    gc = {**CONF, "cniVersion": "1.1.0",
          "cni.dev/valid-attachments": [{"containerID": "abc", "ifname": "eth0"}]}
    env = ["CNI_COMMAND=ADD", "CNI_CONTAINERID=abc", "CNI_NETNS=/var/run/netns/x", "CNI_IFNAME=eth0",
           "CNI_PATH=/usr/lib/cni:/opt/cni/bin", "CNI_ARGS=K8S_POD_NAME=p;IgnoreUnknown=1"]
    state6 = {**STATE, "network_cidr": "fd00:5::/48", "subnet": "fd00:5:7::/64", "address": "fd00:5:7::1"}
    return [
        b"\x00" + join_records([json.dumps(CONF).encode()]),
        b"\x00" + join_records([json.dumps(full).encode()]),
        b"\x00" + join_records([json.dumps(gc).encode()]),
        b"\x01" + join_records([e.encode() for e in env]),
        b"\x02" + join_records([json.dumps(STATE).encode()]),
        b"\x02" + join_records([json.dumps(state6).encode()]),
    ]


if __name__ == "__main__":
    import sys

    from fuzz.run import main

    raise SystemExit(main(["cni", *sys.argv[1:]]))
