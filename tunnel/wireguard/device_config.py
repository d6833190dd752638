"""The configuration half of the UAPI target (tunnel/wireguard/uapi.py's ``UapiTarget``) over a
sans-I/O :class:`~tunnel.wireguard.device.Device`: keys, peers, endpoints, keepalive
intervals, allowed IPs. No I/O and no clock: the shell (``Interface``) inherits it and adds
what needs its sockets and timers (``listen_port``, ``fwmark``, ``uapi_begin``/``uapi_applied``,
``send_keepalives``). Event-loop thread only, like the Device.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

from crypto import noise
from tunnel.io.endpoint import Endpoint
from tunnel.wireguard.device import Device
from tunnel.wireguard.uapi import PeerInfo

_UNSET: Final = object()  # set_peer: "leave this field as it is"


class DeviceConfig:
    """UapiTarget's configuration calls, applied to ``self.device`` (see the module doc)."""

    device: Device

    def get_private_key(self) -> bytes | None:
        return self.device.private_key

    def set_private_key(self, key: bytes | None) -> None:
        self.device.set_private_key(key)

    def peer_keys(self) -> list[bytes]:
        return list(self.device.peers)

    def get_peer(self, public_key: bytes) -> PeerInfo | None:
        peer = self.device.peers.get(public_key)
        if peer is None:
            return None
        psk = peer.preshared_key
        endpoint = peer.endpoint
        return PeerInfo(
            public_key=public_key,
            preshared_key=None if psk == noise.ZERO_KEY else psk,
            endpoint=None if endpoint is None else (endpoint.ip, endpoint.port),
            last_handshake=peer.last_handshake_wall,
            tx_bytes=peer.tx_bytes,
            rx_bytes=peer.rx_bytes,
            persistent_keepalive=peer.persistent_keepalive,
        )

    def add_peer(self, public_key: bytes) -> None:
        self.device.add_peer(public_key)

    def remove_peer(self, public_key: bytes) -> None:
        self.device.remove_peer(public_key)

    def remove_all_peers(self) -> None:
        for pk in list(self.device.peers):
            self.device.remove_peer(pk)

    def set_peer(
        self,
        public_key: bytes,
        *,
        preshared_key: bytes | None | object = _UNSET,
        endpoint: tuple[str, int] | None | object = _UNSET,
        persistent_keepalive: int | None | object = _UNSET,
    ) -> None:
        peer = self.device.peers[public_key]
        if preshared_key is not _UNSET:
            assert preshared_key is None or isinstance(preshared_key, bytes)
            self.device.set_preshared_key(peer, preshared_key)
        if endpoint is not _UNSET:
            if endpoint is None:
                peer.endpoint = None
            else:
                assert isinstance(endpoint, tuple)
                peer.endpoint = _endpoint(endpoint[0], endpoint[1])
        if persistent_keepalive is not _UNSET:
            interval = persistent_keepalive if isinstance(persistent_keepalive, int) else 0
            peer.persistent_keepalive = interval
            if interval == 0:
                peer.timers.persistent_keepalive = None

    def replace_allowed_ips(self, public_key: bytes) -> None:
        self.device.allowed_ips.remove_peer(self.device.peers[public_key])

    def add_allowed_ip(self, public_key: bytes, addr: bytes, cidr: int) -> None:
        self.device.allowed_ips.insert_raw(addr, cidr, self.device.peers[public_key])

    def remove_allowed_ip(self, public_key: bytes, addr: bytes, cidr: int) -> None:
        self.device.allowed_ips.remove_raw(addr, cidr, self.device.peers[public_key])

    def allowed_ips(self, public_key: bytes) -> Iterable[tuple[bytes, int]]:
        peer = self.device.peers.get(public_key)
        return [] if peer is None else self.device.allowed_ips.entries(peer)


def _endpoint(host: str, port: int) -> Endpoint:
    """An Endpoint from a UAPI (ip literal, port): zone dropped, IPv4-mapped IPv6 unmapped."""
    addr = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return Endpoint(str(addr), port)
