"""The UAPI (tunnel/wireguard/uapi.py via UapiSession): answer, or reject and change nothing.

The target is the daemon's own :class:`~tunnel.wireguard.interface.Interface` around a real
:class:`~tunnel.wireguard.device.Device` (the engine's configuration is what must not change),
with a stand-in TUN and, instead of UDP sockets, an in-memory listen port where port 1 is busy
(EADDRINUSE, so the rollback path runs) and fwmark 13 is refused (EPERM).
The input is the byte stream of one UAPI connection, fed in one or more pieces.
Invariants: the session never raises; every reply is ``errno=N`` (after the ``get`` lines);
a ``set`` answered with a non-zero errno leaves the whole configuration as it was (keys,
port, mark, peers with their PSK, endpoint, keepalive and allowed IPs, and the peer order);
a successful ``get`` parses back key by key.
"""

from __future__ import annotations

import errno
import types

from fuzz.common import join_records, split_records
from tunnel.wireguard.interface import Interface
from tunnel.wireguard.uapi_session import UapiSession

PRIV = bytes.fromhex("a0" + "11" * 30 + "50")
PEER1 = bytes(range(1, 33))
PEER2 = bytes(range(2, 34))


class FuzzInterface(Interface):
    """An Interface whose UDP binding is simulated (no sockets while fuzzing)."""

    _port = 0

    @property  # type: ignore[override]
    def listen_port(self) -> int:
        return self._port

    @listen_port.setter
    def listen_port(self, port: int) -> None:
        if port == 1:
            raise OSError(errno.EADDRINUSE, "Address already in use")
        self._port = port

    @property  # type: ignore[override]
    def fwmark(self) -> int:
        return self._fwmark

    @fwmark.setter
    def fwmark(self, mark: int) -> None:
        if mark == 13:
            raise OSError(errno.EPERM, "Operation not permitted")
        self._fwmark = mark


_IFACE: list[FuzzInterface] = []


def _interface() -> FuzzInterface:
    """The one interface (an Interface allocates its batch buffers: too slow to make per input),
    reset to the baseline configuration by a full ``set`` (replace_peers) before each input."""
    if not _IFACE:
        tun = types.SimpleNamespace(name="wgfuzz0", mtu=1420, io=None, vnet_hdr=False)
        _IFACE.append(FuzzInterface(tun))  # type: ignore[arg-type]
    iface = _IFACE[0]
    body = (f"set=1\nprivate_key={PRIV.hex()}\nlisten_port=51820\nfwmark=7\nreplace_peers=true\n"
            f"public_key={PEER1.hex()}\npreshared_key={'22' * 32}\nendpoint=192.0.2.1:51820\n"
            "persistent_keepalive_interval=25\nallowed_ip=10.0.0.2/32\nallowed_ip=fd00::2/128\n"
            f"public_key={PEER2.hex()}\nendpoint=[2001:db8::1]:4500\nallowed_ip=10.9.0.0/16\n\n")
    assert UapiSession(iface).feed(body.encode()) == [b"errno=0\n\n"]
    assert not BASELINE or _config(iface) == BASELINE[0], "the baseline set did not reset the interface"
    return iface


def _config(iface: FuzzInterface) -> tuple[object, ...]:
    peers = []
    for pk in iface.peer_keys():
        info = iface.get_peer(pk)
        assert info is not None
        peers.append((pk, info.preshared_key, info.endpoint, info.persistent_keepalive,
                      sorted(iface.allowed_ips(pk))))
    return (iface.get_private_key(), iface.listen_port, iface.fwmark, peers)


BASELINE: list[object] = []


def test_one_input(data: bytes) -> None:
    iface = _interface()
    if not BASELINE:
        BASELINE.append(_config(iface))
    session = UapiSession(iface, max_line=512, max_set_bytes=8192)
    for piece in split_records(data, limit=8):
        for op in session.receive(piece):
            before = _config(iface)
            reply = op.reply()
            last = reply.rsplit(b"\n", 3)
            assert reply.endswith(b"\n\n") and last[-3].startswith(b"errno="), reply[-80:]
            code = int(last[-3][6:])
            if op.kind == "set" and code != 0:
                after = _config(iface)
                assert after == before, (before, after)
            if op.kind == "get" and code == 0:
                assert reply.startswith(b"private_key=") or reply.startswith(b"listen_port=")
    session.receive_eof()


def seeds() -> list[bytes]:
    bodies = [
        b"get=1\n\n",
        f"set=1\nlisten_port=1\npublic_key={PEER1.hex()}\nremove=true\n\n".encode(),
        f"set=1\nreplace_peers=true\npublic_key={PEER2.hex()}\nallowed_ip=10.0.0.2/32\nfwmark=13\n\n".encode(),
        f"set=1\nprivate_key={'33' * 32}\npublic_key={PEER1.hex()}\nupdate_only=true\n"
        "replace_allowed_ips=true\nallowed_ip=0.0.0.0/0\nprotocol_version=1\n\n".encode(),
        f"set=1\npublic_key={'44' * 32}\nendpoint=[fe80::1%eth0]:1\npersistent_keepalive_interval=0\n"
        "allowed_ip=-10.9.0.0/16\n\nget=1\n\n".encode(),
        b"stats=1\n\nset=1\nlisten_port=99999\n\n",
    ]
    out = [join_records([b]) for b in bodies]
    out.append(join_records([bodies[1][:20], bodies[1][20:]]))
    return out


if __name__ == "__main__":
    import sys

    from fuzz.run import main

    raise SystemExit(main(["uapi", *sys.argv[1:]]))
