"""Claims and node records: their JSON, strict validation, and the view built from them, sans-I/O.

A **claim** (``claims/<subnet>``, no lease) says which key owns a subnet::

    {"public_key": "<standard base64>", "name": "node1", "renewed": 1733240000}

A **node record** (``nodes/<url-safe key>``, attached to the node's lease: it exists while the
node lives) says how to reach the node::

    {"version": 1, "name": "node1", "public_key": "<standard base64>", "subnet": "10.50.3.0/24",
     "endpoints": ["192.0.2.10:51820"]}

The node's tunnel address is derived (:func:`tunnel.mesh.config.first_host`), never stored.

:func:`build_view` turns the raw values read from the store into the nodes to program. Anything
that does not validate is rejected with one reason of :data:`REASONS` and left out; a reject
never removes or changes a valid node. The claims are the authority on subnets: a record is
valid only if the claim of its subnet names its key, so a second record for a subnet (or a stale
record of a node that moved) cannot override the owner's. Note the threat model: this guards
against broken, stale and confused writers; anyone with write access to the prefix can still
claim free subnets, as with any store-coordinated overlay.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tunnel.mesh.config import (
    IPAddress,
    IPNetwork,
    NetworkConfig,
    first_host,
    parse_key_token,
    parse_subnet_token,
)

RECORD_VERSION = 1
MAX_NAME = 253
MAX_ENDPOINTS = 8

REASONS = (
    "malformed_json",   # not JSON, or not a JSON object
    "wrong_type",       # a field missing or of the wrong type
    "bad_key",          # a key that is not canonical base64 of 32 bytes (in the value or the key name)
    "key_mismatch",     # the record's public_key is not the one its key name says
    "bad_subnet",       # not a CIDR, or not one of the network's subnet length / alignment
    "outside_network",  # a subnet outside the network
    "bad_endpoint",     # an endpoint that is not IP:PORT
    "unclaimed",        # no claim exists for the record's subnet
    "claim_mismatch",   # the claim of the record's subnet names another key
    "bad_claim",        # a claim whose value or key name does not validate (its subnet stays taken)
)


class RecordError(ValueError):
    """A value did not validate; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def encode_key(public_key: bytes) -> str:
    return base64.b64encode(public_key).decode()


def decode_key(text: object) -> bytes:
    if not isinstance(text, str):
        raise RecordError("wrong_type", "public_key must be a string")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise RecordError("bad_key", "public_key is not base64") from None
    if len(raw) != 32 or encode_key(raw) != text:
        raise RecordError("bad_key", "public_key is not canonical base64 of 32 bytes")
    return raw


def parse_endpoint(text: str) -> tuple[str, int]:
    """``a.b.c.d:port`` or ``[v6]:port``; RecordError("bad_endpoint") otherwise."""
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        want = 6
    else:
        want = 4
    try:
        addr = ipaddress.ip_address(host)
        port = int(port_text)
    except ValueError:
        raise RecordError("bad_endpoint", f"endpoint {text!r} is not IP:PORT") from None
    if not sep or addr.version != want or not port_text.isdigit() or not 1 <= port <= 65535:
        raise RecordError("bad_endpoint", f"endpoint {text!r} is not IP:PORT")
    return str(addr), port


def format_endpoint(endpoint: tuple[str, int]) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _object(raw: bytes | str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise RecordError("malformed_json", "not JSON") from None
    if not isinstance(data, dict):
        raise RecordError("malformed_json", "not a JSON object")
    return data


def _name(data: Mapping[str, Any]) -> str:
    name = data.get("name", "")
    if not isinstance(name, str) or len(name) > MAX_NAME:
        raise RecordError("wrong_type", "name must be a string of at most 253 characters")
    return name


def _subnet(text: object, config: NetworkConfig) -> IPNetwork:
    if not isinstance(text, str):
        raise RecordError("wrong_type", "subnet must be a string")
    try:
        subnet = ipaddress.ip_network(text, strict=True)
    except ValueError:
        raise RecordError("bad_subnet", f"subnet {text!r} is not a CIDR") from None
    if subnet.version != config.network.version or not subnet.subnet_of(config.network):  # type: ignore[arg-type]
        raise RecordError("outside_network", f"subnet {subnet} is outside {config.network}")
    if config.index_of(subnet) is None:
        raise RecordError("bad_subnet", f"subnet {subnet} is not a /{config.subnet_len}")
    return subnet


@dataclass(frozen=True, slots=True)
class Claim:
    subnet: IPNetwork
    public_key: bytes
    name: str = ""
    renewed: int = 0  # Unix time the owner last confirmed the claim

    def to_json(self) -> str:
        return json.dumps({"public_key": encode_key(self.public_key), "name": self.name,
                           "renewed": self.renewed}, sort_keys=True)


def parse_claim(token: str, raw: bytes | str, config: NetworkConfig) -> Claim:
    """A claim from its key name (``<subnet-token>``) and value; RecordError("bad_claim") if invalid."""
    subnet = parse_subnet_token(token)
    try:
        if subnet is None:
            raise RecordError("bad_claim", f"claim key {token!r} is not a subnet")
        subnet = _subnet(str(subnet), config)
        data = _object(raw)
        renewed = data.get("renewed", 0)
        # JSON's 1e999 is infinity and NaN parses too: neither is a time
        if isinstance(renewed, bool) or not isinstance(renewed, int | float) or not math.isfinite(renewed):
            raise RecordError("wrong_type", "renewed must be a finite number")
        return Claim(subnet, decode_key(data.get("public_key")), _name(data), int(renewed))
    except RecordError as exc:
        raise RecordError("bad_claim", f"claim {token}: {exc}") from None


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """What a node publishes about itself."""

    public_key: bytes
    subnet: IPNetwork
    name: str = ""
    endpoints: tuple[tuple[str, int], ...] = ()

    def to_json(self) -> str:
        return json.dumps({
            "version": RECORD_VERSION, "name": self.name, "public_key": encode_key(self.public_key),
            "subnet": str(self.subnet), "endpoints": [format_endpoint(e) for e in self.endpoints],
        }, sort_keys=True)


def parse_record(token: str, raw: bytes | str, config: NetworkConfig) -> NodeRecord:
    """A node record from its key name (URL-safe key) and value; RecordError if invalid.

    Checks everything that needs only the record itself; the claim check is :func:`build_view`'s.
    """
    path_key = parse_key_token(token)
    if path_key is None:
        raise RecordError("bad_key", f"node key {token!r} is not a canonical URL-safe public key")
    data = _object(raw)
    version = data.get("version", RECORD_VERSION)
    if isinstance(version, bool) or not isinstance(version, int):
        raise RecordError("wrong_type", "version must be an integer")
    public_key = decode_key(data.get("public_key"))
    if public_key != path_key:
        raise RecordError("key_mismatch", "public_key differs from the key in the record's name")
    subnet = _subnet(data.get("subnet"), config)
    endpoints_raw = data.get("endpoints", [])
    if not isinstance(endpoints_raw, list) or len(endpoints_raw) > MAX_ENDPOINTS:
        raise RecordError("wrong_type", "endpoints must be a list of at most 8 strings")
    endpoints = []
    for item in endpoints_raw:
        if not isinstance(item, str):
            raise RecordError("wrong_type", "endpoints must be strings")
        endpoints.append(parse_endpoint(item))
    return NodeRecord(public_key, subnet, _name(data), tuple(endpoints))


@dataclass(frozen=True, slots=True)
class Node:
    """A valid, live node: its record plus what the agent knows about it.

    ``revision`` is the record's modification revision in the store; ``seen_at`` the local Unix
    time this revision was first seen here (set by the agent; the reconciler compares it with
    handshake times, so no clock of another machine is ever compared with ours).
    """

    public_key: bytes
    subnet: IPNetwork
    name: str
    endpoints: tuple[tuple[str, int], ...]
    revision: int = 0
    seen_at: float = 0.0

    @property
    def address(self) -> IPAddress:
        return first_host(self.subnet)


@dataclass(slots=True)
class View:
    """The desired state read from the store: live valid nodes, all claims, and the rejects.

    ``rejects`` maps a store key to the reason it was left out (one entry per key).
    """

    nodes: dict[bytes, Node] = field(default_factory=dict)
    claims: dict[IPNetwork, Claim] = field(default_factory=dict)
    taken: set[IPNetwork] = field(default_factory=set)  # subnets with any claim key, valid or not
    rejects: dict[str, str] = field(default_factory=dict)


def build_view(
    config: NetworkConfig,
    claims: Mapping[str, bytes],
    records: Mapping[str, tuple[bytes, int]],
) -> View:
    """The view from raw store values.

    ``claims`` maps a claim's token (``<a.b.c.d-N>``) to its value; ``records`` a node's token
    (URL-safe key) to ``(value, mod_revision)``. Pure: the same inputs give the same view.
    Parses every value; :class:`RecordCache` gives the same view parsing only what changed.
    """
    parsed_claims: dict[str, tuple[Claim | RecordError, IPNetwork | None]] = {}
    for token, raw in claims.items():
        try:
            parsed_claims[token] = (parse_claim(token, raw, config), parse_subnet_token(token))
        except RecordError as exc:
            parsed_claims[token] = (exc, parse_subnet_token(token))
    parsed_records: dict[str, tuple[NodeRecord | RecordError, int]] = {}
    for token, (raw, revision) in records.items():
        try:
            parsed_records[token] = (parse_record(token, raw, config), revision)
        except RecordError as exc:
            parsed_records[token] = (exc, revision)
    return _assemble(parsed_claims, parsed_records)


def _assemble(
    claims: Mapping[str, tuple[Claim | RecordError, IPNetwork | None]],
    records: Mapping[str, tuple[NodeRecord | RecordError, int]],
) -> View:
    """The view from parsed claims (each with its key name's subnet) and records.

    The cross-checks: a record needs the claim of its subnet, naming its key.
    """
    view = View()
    for token, (claim, subnet) in claims.items():
        if subnet is not None:
            view.taken.add(subnet)  # even a broken claim keeps its subnet from being handed out
        if isinstance(claim, RecordError):
            view.rejects[f"claims/{token}"] = claim.reason
            continue
        view.claims[claim.subnet] = claim
    for token, (record, revision) in records.items():
        if isinstance(record, RecordError):
            view.rejects[f"nodes/{token}"] = record.reason
            continue
        owner = view.claims.get(record.subnet)
        if owner is None:
            view.rejects[f"nodes/{token}"] = "unclaimed"
            continue
        if owner.public_key != record.public_key:
            view.rejects[f"nodes/{token}"] = "claim_mismatch"
            continue
        view.nodes[record.public_key] = Node(
            record.public_key, record.subnet, record.name, record.endpoints, revision
        )
    return view


class RecordCache:
    """The store's claims and node records, each parsed once per ``(key, mod_revision)``.

    The agent feeds it watch events (:meth:`put_claim`, :meth:`put_record`, :meth:`delete_claim`,
    :meth:`delete_record`) and full listings (:meth:`load`); :meth:`view` returns what
    :func:`build_view` would return for the current raw values, parsing only the entries put
    since the last call (a value is parsed lazily, so a key put many times between two views is
    parsed once). A re-list that returns an entry at the revision already cached parses
    nothing. ``parses`` counts the values parsed (for tests and benchmarks); ``generation``
    grows with every change (a caller may keep its last view while it is unchanged). The parse result
    depends on the config's network and subnet length only; a config differing in those empties
    the cache (the agent never switches them while running).
    """

    def __init__(self, config: NetworkConfig) -> None:
        self.config = config
        self.parses = 0
        self.generation = 0
        # token -> (raw, revision, parsed or None until parsed); claims also the token's subnet
        self._claims: dict[str, tuple[bytes, int, Claim | RecordError | None]] = {}
        self._claim_subnets: dict[str, IPNetwork | None] = {}
        self._records: dict[str, tuple[bytes, int, NodeRecord | RecordError | None]] = {}

    def set_config(self, config: NetworkConfig) -> None:
        if (config.network, config.subnet_len) != (self.config.network, self.config.subnet_len):
            self._claims = {t: (raw, rev, None) for t, (raw, rev, _) in self._claims.items()}
            self._records = {t: (raw, rev, None) for t, (raw, rev, _) in self._records.items()}
            self.generation += 1
        self.config = config

    def put_claim(self, token: str, raw: bytes, revision: int) -> None:
        old = self._claims.get(token)
        if old is None or old[1] != revision or old[0] != raw:
            self._claims[token] = (raw, revision, None)
            self.generation += 1
        if token not in self._claim_subnets:
            self._claim_subnets[token] = parse_subnet_token(token)

    def put_record(self, token: str, raw: bytes, revision: int) -> None:
        old = self._records.get(token)
        if old is None or old[1] != revision or old[0] != raw:
            self._records[token] = (raw, revision, None)
            self.generation += 1

    def delete_claim(self, token: str) -> None:
        if self._claims.pop(token, None) is not None:
            self.generation += 1
        self._claim_subnets.pop(token, None)

    def delete_record(self, token: str) -> None:
        if self._records.pop(token, None) is not None:
            self.generation += 1

    def load(self, claims: Mapping[str, tuple[bytes, int]], records: Mapping[str, tuple[bytes, int]]) -> None:
        """Replace everything with a full listing; entries at an unchanged revision keep their parse."""
        old_claims, old_records = self._claims, self._records
        self._claims, self._records = {}, {}
        self.generation += 1
        for token, (raw, revision) in claims.items():
            old = old_claims.get(token)
            self._claims[token] = old if old is not None and old[:2] == (raw, revision) else (raw, revision, None)
        subnets = self._claim_subnets
        self._claim_subnets = {token: subnets[token] if token in subnets else parse_subnet_token(token)
                               for token in claims}
        for token, (raw, revision) in records.items():
            old_r = old_records.get(token)
            self._records[token] = (old_r if old_r is not None and old_r[:2] == (raw, revision)
                                    else (raw, revision, None))

    def claim_raw(self, token: str) -> bytes:
        entry = self._claims.get(token)
        return entry[0] if entry is not None else b""

    def record_raw(self, token: str) -> bytes:
        entry = self._records.get(token)
        return entry[0] if entry is not None else b""

    def __len__(self) -> int:
        return len(self._claims) + len(self._records)

    def view(self) -> View:
        claims: dict[str, tuple[Claim | RecordError, IPNetwork | None]] = {}
        for token, (raw, revision, claim) in self._claims.items():
            if claim is None:
                try:
                    claim = parse_claim(token, raw, self.config)
                except RecordError as exc:
                    claim = exc
                self.parses += 1
                self._claims[token] = (raw, revision, claim)
            claims[token] = (claim, self._claim_subnets[token])
        records: dict[str, tuple[NodeRecord | RecordError, int]] = {}
        for token, (raw, revision, record) in self._records.items():
            if record is None:
                try:
                    record = parse_record(token, raw, self.config)
                except RecordError as exc:
                    record = exc
                self.parses += 1
                self._records[token] = (raw, revision, record)
            records[token] = (record, revision)
        return _assemble(claims, records)
