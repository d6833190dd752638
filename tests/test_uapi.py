"""UAPI: set grammar and errors, atomic apply and rollback, get rendering, sessions, and `wg`.

A FakeTarget stands in for the engine (it models the allowed-IPs trie's one-owner-per-prefix
rule). The last tests serve a real Unix socket so the real `wg` tool talks to UapiSession.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.keys import generate_private, public_from_private, to_base64
from tunnel.wireguard.uapi import (
    GET_CHUNK,
    PeerInfo,
    UapiError,
    UapiTarget,
    apply_set,
    parse_set,
    render_get,
)
from tunnel.wireguard.uapi_session import UapiSession

Prefix = tuple[bytes, int]


class FakeTarget:
    """An in-memory UapiTarget. Ports in ``busy_ports`` fail to bind; ``poison`` prefixes raise."""

    def __init__(self) -> None:
        self.private_key: bytes | None = None
        self._listen_port = 0
        self._fwmark = 0
        self.peers: dict[bytes, PeerInfo] = {}
        self.owner: dict[Prefix, bytes] = {}
        self.by_peer: dict[bytes, dict[Prefix, None]] = {}
        self.busy_ports: set[int] = set()
        self.bad_marks: set[int] = set()
        self.poison: set[Prefix] = set()

    @property
    def listen_port(self) -> int:
        return self._listen_port

    @listen_port.setter
    def listen_port(self, port: int) -> None:
        if port in self.busy_ports:
            raise OSError(errno.EADDRINUSE, "Address already in use")
        self._listen_port = port

    @property
    def fwmark(self) -> int:
        return self._fwmark

    @fwmark.setter
    def fwmark(self, mark: int) -> None:
        if mark in self.bad_marks:
            raise OSError(errno.EPERM, "Operation not permitted")
        self._fwmark = mark

    def get_private_key(self) -> bytes | None:
        return self.private_key

    def set_private_key(self, key: bytes | None) -> None:
        assert key is None or (len(key) == 32 and any(key))
        self.private_key = key

    def peer_keys(self) -> list[bytes]:
        return list(self.peers)

    def get_peer(self, public_key: bytes) -> PeerInfo | None:
        info = self.peers.get(public_key)
        return None if info is None else PeerInfo(**{f: getattr(info, f) for f in info.__slots__})

    def add_peer(self, public_key: bytes) -> None:
        assert public_key not in self.peers
        self.peers[public_key] = PeerInfo(public_key)
        self.by_peer[public_key] = {}

    def remove_peer(self, public_key: bytes) -> None:
        self.replace_allowed_ips(public_key)
        del self.peers[public_key], self.by_peer[public_key]

    def remove_all_peers(self) -> None:
        for pk in list(self.peers):
            self.remove_peer(pk)

    def set_peer(
        self,
        public_key: bytes,
        *,
        preshared_key: Any = ...,
        endpoint: Any = ...,
        persistent_keepalive: Any = ...,
    ) -> None:
        info = self.peers[public_key]
        if preshared_key is not ...:
            info.preshared_key = preshared_key
        if endpoint is not ...:
            info.endpoint = endpoint
        if persistent_keepalive is not ...:
            info.persistent_keepalive = persistent_keepalive

    def replace_allowed_ips(self, public_key: bytes) -> None:
        for prefix in self.by_peer[public_key]:
            del self.owner[prefix]
        self.by_peer[public_key] = {}

    def add_allowed_ip(self, public_key: bytes, addr: bytes, cidr: int) -> None:
        if (addr, cidr) in self.poison:
            raise RuntimeError("poisoned prefix")
        previous = self.owner.get((addr, cidr))
        if previous is not None:
            del self.by_peer[previous][(addr, cidr)]
        self.owner[(addr, cidr)] = public_key
        self.by_peer[public_key][(addr, cidr)] = None

    def remove_allowed_ip(self, public_key: bytes, addr: bytes, cidr: int) -> None:
        if self.owner.get((addr, cidr)) == public_key:
            del self.owner[(addr, cidr)]
            del self.by_peer[public_key][(addr, cidr)]

    def allowed_ips(self, public_key: bytes) -> Iterable[Prefix]:
        return iter(self.by_peer[public_key])

    def state(self) -> tuple[object, ...]:
        peers = {
            pk: (i.preshared_key, i.endpoint, i.persistent_keepalive, sorted(self.by_peer[pk]))
            for pk, i in self.peers.items()
        }
        return (self.private_key, self._listen_port, self._fwmark, peers)


def _typed(t: FakeTarget) -> UapiTarget:
    return t  # mypy-style check that FakeTarget satisfies the Protocol


PRIV_A = generate_private(bytes(range(32)))
PUB_A = public_from_private(PRIV_A)
PRIV_B = generate_private(bytes(range(1, 33)))
PUB_B = public_from_private(PRIV_B)
PRIV_C = generate_private(bytes(range(2, 34)))
PUB_C = public_from_private(PRIV_C)
PSK = bytes(range(100, 132))


def run_set(target: FakeTarget, body: str) -> bytes:
    """Send one set (body lines without the trailing blank line) through a session."""
    replies = UapiSession(target).feed(f"set=1\n{body}\n\n".encode())
    assert len(replies) == 1
    return replies[0]


def get_text(target: FakeTarget) -> str:
    return "".join(render_get(target))


def get_lines(target: FakeTarget) -> list[str]:
    return get_text(target).split("\n")


def v4(text: str) -> Prefix:
    net = ipaddress.ip_network(text)
    return net.network_address.packed, net.prefixlen


# --- set: every key ------------------------------------------------------------------------


def test_empty_device_get_is_only_errno() -> None:
    assert get_text(FakeTarget()) == "errno=0\n\n"


def test_full_set_then_get_exact_output() -> None:
    t = FakeTarget()
    raw_private = bytes(range(32))  # unclamped on the wire; stored clamped
    body = "\n".join(
        [
            f"private_key={raw_private.hex().upper()}",
            "listen_port=0051820",
            "fwmark=4294967295",
            f"public_key={PUB_B.hex()}",
            f"preshared_key={PSK.hex()}",
            "endpoint=[::ffff:192.0.2.1]:51820",
            "persistent_keepalive_interval=25",
            "replace_allowed_ips=true",
            "allowed_ip=10.0.0.5/24",
            "allowed_ip=fd00::1/64",
            "protocol_version=1",
            f"public_key={PUB_C.hex()}",
            "endpoint=[fe80::1%eth0]:1",
        ]
    )
    assert run_set(t, body) == b"errno=0\n\n"
    assert t.private_key == PRIV_A  # generate_private clamps the same bytes
    assert get_lines(t) == [
        f"private_key={PRIV_A.hex()}",
        "listen_port=51820",
        "fwmark=4294967295",
        f"public_key={PUB_B.hex()}",
        f"preshared_key={PSK.hex()}",
        "protocol_version=1",
        "endpoint=[::ffff:192.0.2.1]:51820",
        "last_handshake_time_sec=0",
        "last_handshake_time_nsec=0",
        "tx_bytes=0",
        "rx_bytes=0",
        "persistent_keepalive_interval=25",
        "allowed_ip=10.0.0.0/24",
        "allowed_ip=fd00::/64",
        f"public_key={PUB_C.hex()}",
        f"preshared_key={'0' * 64}",
        "protocol_version=1",
        "endpoint=[fe80::1%eth0]:1",
        "last_handshake_time_sec=0",
        "last_handshake_time_nsec=0",
        "tx_bytes=0",
        "rx_bytes=0",
        "persistent_keepalive_interval=0",
        "errno=0",
        "",
        "",
    ]


def test_get_handshake_time_and_counters() -> None:
    t = FakeTarget()
    t.add_peer(PUB_B)
    t.peers[PUB_B].last_handshake = 1_700_000_000.25
    t.peers[PUB_B].tx_bytes, t.peers[PUB_B].rx_bytes = 12345, 2**63
    text = get_text(t)
    assert "last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=250000000\n" in text
    assert "tx_bytes=12345\nrx_bytes=9223372036854775808\n" in text


def test_zero_private_key_unsets_and_is_omitted() -> None:
    t = FakeTarget()
    run_set(t, f"private_key={PRIV_A.hex()}")
    assert run_set(t, f"private_key={'0' * 64}") == b"errno=0\n\n"
    assert t.private_key is None
    assert "private_key" not in get_text(t)


def test_fwmark_zero_removes_and_listen_port_zero_is_omitted() -> None:
    t = FakeTarget()
    run_set(t, "fwmark=7\nlisten_port=9")
    assert "fwmark=7\n" in get_text(t)
    run_set(t, "fwmark=0\nlisten_port=0")
    assert t.fwmark == 0 and get_text(t) == "errno=0\n\n"


def test_replace_peers() -> None:
    t = FakeTarget()
    run_set(t, f"public_key={PUB_B.hex()}\nallowed_ip=10.0.0.1/32")
    run_set(t, f"replace_peers=true\npublic_key={PUB_C.hex()}")
    assert t.peer_keys() == [PUB_C] and t.owner == {}


@pytest.mark.parametrize("key", ["replace_peers", "update_only", "remove", "replace_allowed_ips"])
@pytest.mark.parametrize("value", ["false", "True", "1", ""])
def test_flags_accept_only_true(key: str, value: str) -> None:
    t = FakeTarget()
    run_set(t, f"public_key={PUB_B.hex()}")
    before = t.state()
    prefix = "" if key == "replace_peers" else f"public_key={PUB_C.hex()}\n"
    assert run_set(t, f"{prefix}{key}={value}") == b"errno=-22\n\n"
    assert t.state() == before


def test_update_only_skips_new_peers_and_updates_existing() -> None:
    t = FakeTarget()
    run_set(t, f"public_key={PUB_B.hex()}")
    body = (
        f"public_key={PUB_C.hex()}\nupdate_only=true\nallowed_ip=10.0.0.0/8\n"
        f"public_key={PUB_B.hex()}\nupdate_only=true\nendpoint=192.0.2.1:1"
    )
    assert run_set(t, body) == b"errno=0\n\n"
    assert t.peer_keys() == [PUB_B] and t.owner == {}
    assert t.peers[PUB_B].endpoint == ("192.0.2.1", 1)


def test_remove_peer_and_lines_after_remove_go_nowhere_but_are_validated() -> None:
    t = FakeTarget()
    run_set(t, f"public_key={PUB_B.hex()}\nallowed_ip=10.0.0.0/8")
    assert run_set(t, f"public_key={PUB_B.hex()}\nremove=true\nendpoint=bogus") == (b"errno=-22\n\n")
    assert t.peer_keys() == [PUB_B]
    assert run_set(t, f"public_key={PUB_B.hex()}\nremove=true\nallowed_ip=10.1.0.0/16") == (b"errno=0\n\n")
    assert t.peers == {} and t.owner == {}
    # remove of an unknown peer is fine and creates nothing
    assert run_set(t, f"public_key={PUB_C.hex()}\nremove=true") == b"errno=0\n\n"
    assert t.peers == {}


def test_preshared_key_zero_means_none_and_is_rendered_as_zeros() -> None:
    t = FakeTarget()
    run_set(t, f"public_key={PUB_B.hex()}\npreshared_key={PSK.hex()}")
    run_set(t, f"public_key={PUB_B.hex()}\npreshared_key={'0' * 64}")
    assert t.peers[PUB_B].preshared_key is None
    assert f"preshared_key={'0' * 64}\n" in get_text(t)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("192.0.2.1:51820", ("192.0.2.1", 51820)),
        ("192.0.2.1:0", ("192.0.2.1", 0)),
        ("[2001:db8::1]:65535", ("2001:db8::1", 65535)),
        ("[2001:DB8:0::1]:7", ("2001:db8::1", 7)),
        ("[fe80::1%wg0]:9", ("fe80::1%wg0", 9)),
        ("[::ffff:1.2.3.4]:5", ("::ffff:1.2.3.4", 5)),
    ],
)
def test_endpoint_valid(value: str, expected: tuple[str, int]) -> None:
    t = FakeTarget()
    assert run_set(t, f"public_key={PUB_B.hex()}\nendpoint={value}") == b"errno=0\n\n"
    assert t.peers[PUB_B].endpoint == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "192.0.2.1",
        "192.0.2.1:",
        "192.0.2.1:65536",
        "192.0.2.1:-1",
        "192.0.2.1:+1",
        "192.0.2.01:1",
        "192.0.2.1 :1",
        "host.example:51820",
        "2001:db8::1:51820",
        "[192.0.2.1]:1",
        "[2001:db8::1]",
        "[2001:db8::1:80",
        "[fe80::1%]:1",
        "[]:1",
    ],
)
def test_endpoint_invalid(value: str) -> None:
    t = FakeTarget()
    assert run_set(t, f"public_key={PUB_B.hex()}\nendpoint={value}") == b"errno=-22\n\n"
    assert t.peers == {}


@pytest.mark.parametrize(
    ("line", "ok"),
    [
        ("listen_port=65535", True),
        ("listen_port=65536", False),
        ("listen_port=-1", False),
        ("listen_port=", False),
        ("listen_port= 1", False),
        ("fwmark=4294967295", True),
        ("fwmark=4294967296", False),
        ("fwmark=0x10", False),
        ("private_key=" + "a" * 63, False),
        ("private_key=" + "g" * 64, False),
        ("private_key=" + "a" * 65, False),
        ("private_key=" + "a" * 62 + " a", False),
    ],
)
def test_device_values(line: str, ok: bool) -> None:
    t = FakeTarget()
    assert run_set(t, line) == (b"errno=0\n\n" if ok else b"errno=-22\n\n")


@pytest.mark.parametrize(
    ("line", "ok"),
    [
        ("persistent_keepalive_interval=65535", True),
        ("persistent_keepalive_interval=65536", False),
        ("persistent_keepalive_interval=+5", False),
        ("persistent_keepalive_interval=", False),
        ("preshared_key=" + "0" * 63, False),
        ("protocol_version=1", True),
        ("protocol_version=2", False),
        ("protocol_version=", False),
        ("allowed_ip=10.0.0.0/8", True),
        ("allowed_ip=-10.0.0.0/8", True),
        ("allowed_ip=::/0", True),
        ("allowed_ip=10.0.0.0", False),
        ("allowed_ip=10.0.0.0/33", False),
        ("allowed_ip=::/129", False),
        ("allowed_ip=10.0.0.0/08", False),
        ("allowed_ip=10.0.0.0/-1", False),
        ("allowed_ip=fe80::%eth0/64", False),
        ("allowed_ip=-", False),
        ("allowed_ip=--10.0.0.0/8", False),
        ("allowed_ip=", False),
    ],
)
def test_peer_values(line: str, ok: bool) -> None:
    t = FakeTarget()
    assert run_set(t, f"public_key={PUB_B.hex()}\n{line}") == (b"errno=0\n\n" if ok else b"errno=-22\n\n")
    assert (t.peer_keys() == [PUB_B]) is ok


@pytest.mark.parametrize(
    "body",
    [
        "bogus=1",
        "endpoint=192.0.2.1:1",  # a peer key before any public_key
        "update_only=true",
        "protocol_version=1",
        f"public_key={PUB_B.hex()}\nlisten_port=1",  # a device key in a peer section
        f"public_key={PUB_B.hex()}\nprivate_key={PRIV_A.hex()}",
        f"public_key={PUB_B.hex()}\nbogus=1",
        "public_key=xyz",
        "Listen_port=1",
    ],
)
def test_unknown_or_misplaced_keys_are_einval(body: str) -> None:
    t = FakeTarget()
    assert run_set(t, body) == b"errno=-22\n\n"
    assert t.state() == FakeTarget().state()


def test_line_without_equals_is_eproto() -> None:
    t = FakeTarget()
    assert run_set(t, "listen_port=5\nno equals sign") == b"errno=-71\n\n"
    assert t.listen_port == 0  # validation failed before anything was applied


def test_parse_set_raises_uapi_error_with_errno() -> None:
    with pytest.raises(UapiError) as info:
        parse_set(["listen_port=1", "fwmark=x"])
    assert info.value.errno == errno.EINVAL
    plan = parse_set(["listen_port=1", "", "garbage after the blank line"])
    assert len(plan.device_ops) == 1


def test_allowed_ip_add_remove_and_replace() -> None:
    t = FakeTarget()
    run_set(t, f"public_key={PUB_B.hex()}\nallowed_ip=10.0.0.0/8\nallowed_ip=10.1.0.0/16")
    run_set(t, f"public_key={PUB_B.hex()}\nallowed_ip=-10.0.0.0/8\nallowed_ip=-10.9.0.0/16")
    assert list(t.allowed_ips(PUB_B)) == [v4("10.1.0.0/16")]
    run_set(t, f"public_key={PUB_B.hex()}\nreplace_allowed_ips=true\nallowed_ip=10.2.0.0/16")
    assert list(t.allowed_ips(PUB_B)) == [v4("10.2.0.0/16")]
    # a prefix moves to the peer that claims it last (one owner per prefix)
    run_set(t, f"public_key={PUB_C.hex()}\nallowed_ip=10.2.0.0/16")
    assert list(t.allowed_ips(PUB_B)) == [] and list(t.allowed_ips(PUB_C)) == [v4("10.2.0.0/16")]
    # removing a prefix the peer does not own leaves the owner alone
    run_set(t, f"public_key={PUB_B.hex()}\nallowed_ip=-10.2.0.0/16")
    assert t.owner[v4("10.2.0.0/16")] == PUB_C


# --- our own key, keepalives -----------------------------------------------------------------


def test_peer_equal_to_own_public_key_is_ignored() -> None:
    t = FakeTarget()
    run_set(t, f"private_key={PRIV_A.hex()}")
    assert run_set(t, f"public_key={PUB_A.hex()}\nallowed_ip=10.0.0.0/8") == b"errno=0\n\n"
    assert t.peers == {} and t.owner == {}
    # also when the private key arrives in the same request
    t2 = FakeTarget()
    run_set(t2, f"private_key={PRIV_B.hex()}\npublic_key={PUB_B.hex()}")
    assert t2.peers == {}


def test_new_private_key_removes_the_peer_with_that_public_key() -> None:
    t = FakeTarget()
    run_set(t, f"public_key={PUB_B.hex()}\npublic_key={PUB_C.hex()}")
    run_set(t, f"private_key={PRIV_B.hex()}")
    assert t.peer_keys() == [PUB_C]
    # setting the same key again is a no-op (wireguard-go returns early)
    t.add_peer(PUB_B)  # behind the protocol's back
    run_set(t, f"private_key={PRIV_B.hex()}")
    assert PUB_B in t.peers


def test_keepalive_switched_on_is_reported() -> None:
    t = FakeTarget()
    seen: list[list[bytes]] = []
    session = UapiSession(t, on_keepalive=seen.append)
    run_set(t, f"public_key={PUB_C.hex()}\npersistent_keepalive_interval=5")
    ops = session.receive(
        (
            f"set=1\npublic_key={PUB_B.hex()}\npersistent_keepalive_interval=25\n"
            f"public_key={PUB_C.hex()}\npersistent_keepalive_interval=10\n\n"
        ).encode()
    )
    assert [op.reply() for op in ops] == [b"errno=0\n\n"]
    assert ops[0].keepalive_peers == [PUB_B] and seen == [[PUB_B]]
    # off -> on for an existing peer; a peer removed later in the request is not reported
    plan = parse_set(
        [
            f"public_key={PUB_B.hex()}",
            "persistent_keepalive_interval=0",
            f"public_key={PUB_C.hex()}",
            "persistent_keepalive_interval=0",
        ]
    )
    assert apply_set(_typed(t), plan, None) == []
    plan = parse_set(
        [
            f"public_key={PUB_B.hex()}",
            "persistent_keepalive_interval=1",
            f"public_key={PUB_C.hex()}",
            "persistent_keepalive_interval=1",
            f"public_key={PUB_C.hex()}",
            "remove=true",
        ]
    )
    assert apply_set(_typed(t), plan, None) == [PUB_B]


# --- atomicity -------------------------------------------------------------------------------


def _populated() -> FakeTarget:
    t = FakeTarget()
    body = (
        f"private_key={PRIV_A.hex()}\nlisten_port=1000\nfwmark=3\n"
        f"public_key={PUB_B.hex()}\npreshared_key={PSK.hex()}\nendpoint=192.0.2.1:1\n"
        "persistent_keepalive_interval=7\nallowed_ip=10.0.0.0/8\nallowed_ip=fd00::/8\n"
        f"public_key={PUB_C.hex()}\nallowed_ip=10.1.0.0/16"
    )
    assert run_set(t, body) == b"errno=0\n\n"
    return t


def test_port_in_use_rolls_back_everything() -> None:
    t = _populated()
    t.busy_ports.add(2000)
    before = t.state()
    body = (
        f"private_key={PRIV_B.hex()}\nfwmark=9\nreplace_peers=true\nlisten_port=2000\n"
        f"public_key={PUB_C.hex()}\nallowed_ip=10.0.0.0/8"
    )
    assert run_set(t, body) == b"errno=-98\n\n"
    assert t.state() == before


def test_failing_fwmark_restores_the_listen_port() -> None:
    t = _populated()
    t.bad_marks.add(77)
    before = t.state()
    assert run_set(t, "listen_port=3000\nfwmark=77") == b"errno=-1\n\n"
    assert t.state() == before


def test_unexpected_failure_in_peer_phase_rolls_back_and_replies_enoano() -> None:
    t = _populated()
    t.poison.add(v4("10.200.0.0/16"))
    before = t.state()
    body = "\n".join(
        [
            f"private_key={PRIV_C.hex()}",  # removes peer C (our new public key)
            "listen_port=1001",
            "replace_peers=true",
            f"public_key={PUB_B.hex()}",
            "endpoint=[2001:db8::9]:9",
            "persistent_keepalive_interval=0",
            "allowed_ip=10.0.0.0/8",
            f"public_key={PUB_A.hex()}",
            "allowed_ip=10.100.0.0/16",
            "allowed_ip=-10.100.0.0/16",
            "remove=true",
            f"public_key={bytes(32).hex()}",
            "replace_allowed_ips=true",
            "allowed_ip=10.200.0.0/16",
        ]
    )
    assert run_set(t, body) == b"errno=-55\n\n"
    assert t.state() == before


def test_validation_error_touches_nothing() -> None:
    t = _populated()
    before = t.state()
    body = f"replace_peers=true\nlisten_port=5\npublic_key={PUB_B.hex()}\nallowed_ip=300.0.0.0/8"
    assert run_set(t, body) == b"errno=-22\n\n"
    assert t.state() == before


# --- sessions --------------------------------------------------------------------------------


def test_several_operations_on_one_connection_and_byte_by_byte() -> None:
    stream = (
        f"set=1\nlisten_port=5\npublic_key={PUB_B.hex()}\n\n"
        "get=1\n\n"
        "set=1\nfwmark=x\n\n"  # error, the connection carries on
        "get=1\nX"  # trailing character: EINVAL
        "set=1\r\n\n"  # not an operation: error and close
        "get=1\n\n"
    ).encode()
    for step in (len(stream), 1, 7):
        t = FakeTarget()
        session = UapiSession(t)
        replies: list[bytes] = []
        for i in range(0, len(stream), step):
            replies += session.feed(stream[i : i + step])
        assert len(replies) == 5
        assert replies[0] == b"errno=0\n\n"
        assert replies[1].startswith(b"listen_port=5\npublic_key=")
        assert replies[1].endswith(b"errno=0\n\n")
        assert replies[2:] == [b"errno=-22\n\n"] * 3
        assert session.closed


def test_crlf_in_set_body_and_blank_cr_line() -> None:
    t = FakeTarget()
    assert UapiSession(t).feed(b"set=1\r\n") == [b"errno=-22\n\n"]
    t = FakeTarget()
    assert UapiSession(t).feed(b"set=1\nlisten_port=5\r\n\r\n") == [b"errno=0\n\n"]
    assert t.listen_port == 5


def test_operations_are_lazy_until_iterated() -> None:
    t = FakeTarget()
    session = UapiSession(t)
    ops = session.receive(b"set=1\nlisten_port=5\n\nget=1\n\n")
    assert [op.kind for op in ops] == ["set", "get"] and t.listen_port == 0
    assert ops[0].reply() == b"errno=0\n\n" and t.listen_port == 5 and ops[0].errno == 0
    assert ops[1].reply() == b"listen_port=5\nerrno=0\n\n"
    with pytest.raises(RuntimeError):
        ops[1].reply()


def test_over_long_lines_close_the_session() -> None:
    session = UapiSession(FakeTarget(), max_line=64)
    assert session.feed(b"x" * 65) == [b"errno=-22\n\n"] and session.closed
    assert session.feed(b"get=1\n\n") == []
    session = UapiSession(FakeTarget(), max_line=64)
    assert session.feed(b"set=1\nlisten_port=" + b"1" * 80) == [b"errno=-5\n\n"]
    session = UapiSession(FakeTarget(), max_line=64)
    assert session.feed(b"set=1\nallowed_ip=" + b"1" * 80 + b"\n") == [b"errno=-5\n\n"]
    session = UapiSession(FakeTarget(), max_set_bytes=100)
    assert session.feed(b"set=1\n" + b"listen_port=1\n" * 10) == [b"errno=-5\n\n"]


def test_eof_applies_a_set_cut_short_like_wireguard_go() -> None:
    t = FakeTarget()
    session = UapiSession(t)
    assert session.feed(b"set=1\nlisten_port=5\nfwmark=6") == []
    ops = session.receive_eof()
    assert [op.reply() for op in ops] == [b"errno=0\n\n"]
    assert (t.listen_port, t.fwmark) == (5, 6) and session.closed


def test_streaming_get_of_130000_allowed_ips() -> None:
    t = FakeTarget()
    count = 130_000
    lines = [f"set=1\nreplace_peers=true\npublic_key={PUB_B.hex()}\nreplace_allowed_ips=true"]
    lines += [f"allowed_ip=10.{i >> 16}.{(i >> 8) & 255}.{i & 255}/32" for i in range(count)]
    request = ("\n".join(lines) + "\n\n").encode()
    session = UapiSession(t)
    replies: list[bytes] = []
    for i in range(0, len(request), 65536):  # as a socket would deliver it
        replies += session.feed(request[i : i + 65536])
    assert replies == [b"errno=0\n\n"]
    (op,) = session.receive(b"get=1\n\n")
    chunks = iter(op)
    assert isinstance(chunks, Iterator)
    sizes: list[int] = []
    got: list[str] = []
    for chunk in chunks:
        sizes.append(len(chunk))
        got.append(chunk.decode())
    assert len(sizes) > 10 and max(sizes) < GET_CHUNK + 200
    text = "".join(got)
    assert text.endswith("errno=0\n\n")
    allowed = [line for line in text.split("\n") if line.startswith("allowed_ip=")]
    assert len(allowed) == count
    assert allowed[-1] == f"allowed_ip=10.{(count - 1) >> 16}.{((count - 1) >> 8) & 255}.{(count - 1) & 255}/32"


def test_get_output_fed_back_as_set_reproduces_the_config() -> None:
    t = _populated()
    device_keys = {"private_key", "listen_port", "fwmark"}
    peer_keys = {"public_key", "preshared_key", "endpoint", "persistent_keepalive_interval"}
    peer_keys |= {"allowed_ip", "protocol_version"}
    body = [line for line in get_lines(t) if line.partition("=")[0] in device_keys | peer_keys]
    copy = FakeTarget()
    assert run_set(copy, "\n".join(body)) == b"errno=0\n\n"
    assert copy.state() == t.state()


_VOCAB_KEYS = [
    "private_key", "listen_port", "fwmark", "replace_peers", "public_key", "update_only",
    "remove", "preshared_key", "endpoint", "persistent_keepalive_interval",
    "replace_allowed_ips", "allowed_ip", "protocol_version", "bogus", "",
]  # fmt: skip
_VOCAB_VALUES = [
    PUB_B.hex(), PUB_C.hex(), PRIV_A.hex(), "0" * 64, "true", "false", "0", "1", "25",
    "65536", "192.0.2.1:1", "[::1]:2", "10.0.0.0/8", "-10.0.0.0/8", "::/0", "x", "",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(1, 40), max_size=8))
def test_random_bytes_never_raise(data: bytes, cuts: list[int]) -> None:
    session = UapiSession(FakeTarget(), max_line=128)
    pieces, pos = [], 0
    for cut in cuts:
        pieces.append(data[pos : pos + cut])
        pos += cut
    pieces.append(data[pos:])
    replies: list[bytes] = []
    for piece in pieces:
        replies += session.feed(piece)
    for op in session.receive_eof():
        replies.append(op.reply())
    for reply in replies:
        assert re.fullmatch(rb"(?s)(.*\n)?errno=(0|-[1-9][0-9]*)\n\n", reply)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(_VOCAB_KEYS), st.sampled_from(["=", "", "=="]),
                  st.sampled_from(_VOCAB_VALUES)),
        max_size=25,
    ),
    st.sampled_from([1000, 2000]),
)  # fmt: skip
def test_random_requests_are_atomic(lines: list[tuple[str, str, str]], busy: int) -> None:
    t = _populated()
    t.busy_ports.add(busy)
    before = t.state()
    body = [k + s + v for k, s, v in lines if k + s + v]  # a blank line would end the set
    body = [f"listen_port={busy}"] + body if busy == 2000 else body
    request = "set=1\n" + "".join(line + "\n" for line in body) + "\nget=1\n\n"
    reply = UapiSession(t).feed(request.encode())
    assert reply[0].startswith(b"errno=") and reply[1].endswith(b"errno=0\n\n")
    if reply[0] != b"errno=0\n\n":
        assert t.state() == before


# --- the real wg tool against a UapiSession on a Unix socket -------------------------------


SOCKET_DIR = Path("/var/run/wireguard")


class _Server:
    def __init__(self, name: str, target: FakeTarget) -> None:
        self.path = SOCKET_DIR / f"{name}.sock"
        self.target = target
        self.stop = threading.Event()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        self.sock.listen(4)
        self.sock.settimeout(0.1)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                session = UapiSession(self.target)
                while not session.closed:
                    data = conn.recv(65536)
                    ops = session.receive(data) if data else session.receive_eof()
                    for op in ops:
                        for chunk in op:
                            conn.sendall(chunk)
                    if not data:
                        break

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()
        self.path.unlink(missing_ok=True)


@pytest.fixture
def wg_server() -> Iterator[tuple[str, FakeTarget]]:
    if shutil.which("wg") is None or os.geteuid() != 0:
        pytest.skip("needs the wg tool and root")
    SOCKET_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    name = f"wgpyu{os.getpid() % 100000}"
    target = FakeTarget()
    server = _Server(name, target)
    try:
        yield name, target
    finally:
        server.close()


def _wg(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["wg", *args], input=stdin, capture_output=True, text=True, timeout=20, check=False)


def test_real_wg_set_and_show(wg_server: tuple[str, FakeTarget], tmp_path: Path) -> None:
    name, target = wg_server
    key_file = tmp_path / "private"
    key_file.write_text(to_base64(PRIV_A) + "\n")
    psk_file = tmp_path / "psk"
    psk_file.write_text(to_base64(PSK) + "\n")
    result = _wg(
        "set", name, "listen-port", "51999", "fwmark", "0x20", "private-key", str(key_file),
        "peer", to_base64(PUB_B), "preshared-key", str(psk_file), "endpoint", "[2001:db8::5]:4",
        "persistent-keepalive", "25", "allowed-ips", "10.0.0.0/8, fd00::/64",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (target.private_key, target.listen_port, target.fwmark) == (PRIV_A, 51999, 0x20)
    assert target.peers[PUB_B].endpoint == ("2001:db8::5", 4)
    dump = _wg("show", name, "dump")
    assert dump.returncode == 0, dump.stderr
    iface_line, peer_line = dump.stdout.strip().split("\n")
    assert iface_line.split("\t") == [to_base64(PRIV_A), to_base64(PUB_A), "51999", "0x20"]
    fields = peer_line.split("\t")
    assert fields[:4] == [to_base64(PUB_B), to_base64(PSK), "[2001:db8::5]:4", "10.0.0.0/8,fd00::/64"]
    assert fields[-1] == "25"
    # an invalid request is refused with the errno we sent and changes nothing
    before = target.state()
    bad = _wg("set", name, "listen-port", "51999", "peer", to_base64(PUB_A), "remove")
    assert bad.returncode == 0  # removing our own key is ignored, not an error
    target.busy_ports.add(52000)
    refused = _wg("set", name, "listen-port", "52000", "peer", to_base64(PUB_C))
    assert refused.returncode != 0 and "Address already in use" in refused.stderr
    assert target.state() == before


def test_real_wg_setconf_matches_to_uapi_set(wg_server: tuple[str, FakeTarget], tmp_path: Path) -> None:
    from tunnel.wireguard.config import parse_config, strip, to_uapi_set

    name, target = wg_server
    text = (
        f"[Interface]\nPrivateKey = {to_base64(PRIV_A)}\nListenPort = 40000\nFwMark = off\n"
        "Address = 10.0.0.1/24\nPostUp = echo not for wg\n\n"
        f"[Peer]\nPublicKey = {to_base64(PUB_B)}\nPresharedKey = {to_base64(PSK)}\n"
        "AllowedIPs = 10.0.0.2/32, fd00::/64\nAllowedIPs = 10.0.0.77/24\nEndpoint = [2001:db8::1]:5\n"
        f"PersistentKeepalive = 0\n\n[Peer]\nPublicKey = {to_base64(PUB_C)}\nEndpoint = 192.0.2.9:9\n"
    )
    cfg = parse_config(text, "t.conf")
    conf = tmp_path / "stripped.conf"
    conf.write_text(strip(cfg))
    target.add_peer(PUB_A)  # removed by setconf (replace_peers)
    result = _wg("setconf", name, str(conf))
    assert result.returncode == 0, result.stderr
    ours = FakeTarget()
    assert UapiSession(ours).feed(to_uapi_set(cfg).encode()) == [b"errno=0\n\n"]
    assert target.state() == ours.state()
    shown = _wg("showconf", name)
    assert shown.returncode == 0, shown.stderr
    back = parse_config(shown.stdout, "showconf")
    assert back.peers[1] == cfg.peers[1]
    assert [str(a) for a in back.peers[0].allowed_ips] == ["10.0.0.2/32", "fd00::/64", "10.0.0.0/24"]
