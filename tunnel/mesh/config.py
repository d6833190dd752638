"""The mesh network's configuration and the store's key layout, sans-I/O.

Key layout (every key is UTF-8 text under one prefix per network)::

    /wg-py/networks/<NETWORK>/config              NetworkConfig JSON (written by ``mesh init``)
    /wg-py/networks/<NETWORK>/claims/<a.b.c.d-N>  Claim JSON; no lease: a claim is sticky
    /wg-py/networks/<NETWORK>/nodes/<KEY>         NodeRecord JSON, attached to the node's lease

``<a.b.c.d-N>`` is the subnet with ``/`` replaced by ``-`` (IPv6 keeps its colons);
``<KEY>`` is the node's WireGuard public key in URL-safe base64 (``-_`` instead of ``+/``),
canonical (decoding and encoding again gives the same text).

The config JSON::

    {"version": 1, "network": "10.50.0.0/16", "subnet_len": 24, "mode": "l3", "port": 51820,
     "keepalive": 25, "claim_grace": 86400, "mtu": 1420}

``keepalive`` is the persistent keepalive every peer gets (0: off); ``claim_grace`` the seconds
a claim whose node has no live record must stay untouched before another key may take it;
``mtu`` the inner (tunnel) MTU. Unknown fields are ignored, so a newer writer does not break an
older agent; a missing or wrongly typed known field is a :class:`ConfigError`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Mode = Literal["l3", "l2"]

PREFIX = "/wg-py/networks/"
DEFAULT_PORT = 51820
DEFAULT_KEEPALIVE = 25
DEFAULT_CLAIM_GRACE = 86400
DEFAULT_MTU = 1420
CONFIG_VERSION = 1
_NETWORK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


class ConfigError(ValueError):
    """A network config (or a name, or a command-line value) is not acceptable; the message says why."""


def check_network_name(name: str) -> str:
    """A network name goes into keys: letters, digits, ``_.-``, at most 63 characters."""
    if not _NETWORK_NAME.fullmatch(name):
        raise ConfigError(f"invalid network name {name!r} (letters, digits, '_.-', at most 63)")
    return name


@dataclass(frozen=True, slots=True)
class Keys:
    """The key names of one network."""

    network: str

    @property
    def prefix(self) -> str:
        return f"{PREFIX}{self.network}/"

    @property
    def config(self) -> str:
        return f"{self.prefix}config"

    @property
    def claims(self) -> str:
        return f"{self.prefix}claims/"

    @property
    def nodes(self) -> str:
        return f"{self.prefix}nodes/"

    def claim(self, subnet: IPNetwork) -> str:
        return f"{self.claims}{subnet_token(subnet)}"

    def node(self, public_key: bytes) -> str:
        return f"{self.nodes}{key_token(public_key)}"


def subnet_token(subnet: IPNetwork) -> str:
    return f"{subnet.network_address}-{subnet.prefixlen}"


def parse_subnet_token(token: str) -> IPNetwork | None:
    """The subnet a claim key names, or None if the token is not canonical."""
    addr, sep, length = token.rpartition("-")
    if not sep or not length.isdigit():
        return None
    try:
        subnet = ipaddress.ip_network(f"{addr}/{length}", strict=True)
    except ValueError:
        return None
    return subnet if subnet_token(subnet) == token else None


def key_token(public_key: bytes) -> str:
    return base64.urlsafe_b64encode(public_key).decode()


def parse_key_token(token: str) -> bytes | None:
    """The public key a node key names, or None unless it is canonical URL-safe base64 of 32 bytes."""
    try:
        raw = base64.urlsafe_b64decode(token.encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None
    if len(raw) != 32 or key_token(raw) != token:
        return None
    return raw


def first_host(subnet: IPNetwork) -> IPAddress:
    """The node's tunnel address: the first address after the subnet's network address."""
    return subnet.network_address + 1


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    network: IPNetwork
    subnet_len: int
    mode: Mode = "l3"
    port: int = DEFAULT_PORT
    keepalive: int = DEFAULT_KEEPALIVE
    claim_grace: int = DEFAULT_CLAIM_GRACE
    mtu: int = DEFAULT_MTU

    def __post_init__(self) -> None:
        bits = self.network.max_prefixlen
        if not self.network.prefixlen < self.subnet_len <= bits - 2:
            raise ConfigError(
                f"subnet length {self.subnet_len} must be longer than the network's "
                f"/{self.network.prefixlen} and at most /{bits - 2}"
            )
        if self.subnet_len - self.network.prefixlen > 24:
            raise ConfigError("at most 2^24 subnets per network")
        if self.mode not in ("l3", "l2"):
            raise ConfigError(f"mode must be l3 or l2, not {self.mode!r}")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} out of range")
        if not 0 <= self.keepalive <= 65535:
            raise ConfigError(f"keepalive {self.keepalive} out of range")
        if not 0 <= self.claim_grace <= 10 * 365 * 86400:
            raise ConfigError(f"claim_grace {self.claim_grace} out of range")
        if not 576 <= self.mtu <= 65535 - 80:
            raise ConfigError(f"mtu {self.mtu} out of range")
        if self.network.version == 6 and self.mtu < 1280:
            raise ConfigError(f"mtu {self.mtu} is below 1280, the least IPv6 works with")

    @property
    def subnet_count(self) -> int:
        return 1 << (self.subnet_len - self.network.prefixlen)

    def subnet_at(self, index: int) -> IPNetwork:
        """The ``index``-th subnet of the network (0-based)."""
        size = 1 << (self.network.max_prefixlen - self.subnet_len)
        base = int(self.network.network_address) + index * size
        return ipaddress.ip_network((base, self.subnet_len))

    def index_of(self, subnet: IPNetwork) -> int | None:
        """The subnet's index if it is one of this network's subnets, else None."""
        if subnet.version != self.network.version or subnet.prefixlen != self.subnet_len:
            return None
        if not subnet.subnet_of(self.network):  # type: ignore[arg-type]
            return None
        size = 1 << (self.network.max_prefixlen - self.subnet_len)
        return (int(subnet.network_address) - int(self.network.network_address)) // size

    def to_json(self) -> str:
        return json.dumps({
            "version": CONFIG_VERSION, "network": str(self.network), "subnet_len": self.subnet_len,
            "mode": self.mode, "port": self.port, "keepalive": self.keepalive,
            "claim_grace": self.claim_grace, "mtu": self.mtu,
        }, sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes | str) -> NetworkConfig:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # deep nesting: RecursionError
            raise ConfigError(f"network config is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError("network config is not a JSON object")
        version = _int(data, "version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise ConfigError(f"network config version {version} is not supported (only {CONFIG_VERSION})")
        network_text = data.get("network")
        if not isinstance(network_text, str):
            raise ConfigError("network config: 'network' must be a CIDR string")
        try:
            network = ipaddress.ip_network(network_text, strict=True)
        except ValueError as exc:
            raise ConfigError(f"network config: {exc}") from None
        mode = data.get("mode", "l3")
        if mode not in ("l3", "l2"):
            raise ConfigError(f"network config: mode must be l3 or l2, not {mode!r}")
        return cls(
            network=network,
            subnet_len=_int(data, "subnet_len", None),
            mode=mode,
            port=_int(data, "port", DEFAULT_PORT),
            keepalive=_int(data, "keepalive", DEFAULT_KEEPALIVE),
            claim_grace=_int(data, "claim_grace", DEFAULT_CLAIM_GRACE),
            mtu=_int(data, "mtu", DEFAULT_MTU),
        )


def _int(data: dict[str, Any], name: str, default: int | None) -> int:
    value = data.get(name, default)
    if value is None:
        raise ConfigError(f"network config: '{name}' is missing")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"network config: '{name}' must be an integer")
    return value
