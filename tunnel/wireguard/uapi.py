"""The cross-platform userspace configuration protocol (UAPI) that `wg` speaks, sans-I/O.

Grammar and semantics follow wireguard-go (device/uapi.go, ipc/uapi_unix.go):

* A connection carries operations one after another: ``get=1\\n\\n`` or ``set=1\\n`` followed by
  ``key=value`` lines and a blank line. Every reply ends with ``errno=N\\n\\n``: 0 on success, a
  negative errno on failure (``errno=-22`` for EINVAL), exactly as wireguard-go writes it.
* ``set`` keys before the first ``public_key`` are device keys, the rest peer keys. A line without
  ``=`` is EPROTO; an unknown key or a bad value is EINVAL (``protocol_version`` other than 1 too).
  Flags (``replace_peers``, ``update_only``, ``remove``, ``replace_allowed_ips``) accept only
  ``true``: ``replace_peers=false`` is EINVAL, as in wireguard-go.

Where we differ from wireguard-go, on purpose:

* A ``set`` is atomic. The whole body is parsed and validated first (:func:`parse_set`), then
  applied (:func:`apply_set`); if applying fails (a listen port in use) every change already made
  is undone. wireguard-go applies line by line and leaves a half-applied configuration.
* After a failed ``set`` the rest of its body is consumed, so the connection stays usable.
* An unknown operation gets ``errno=-22`` and then the session closes (wireguard-go just closes).
* Request lines are capped (:data:`MAX_LINE`); an over-long line gets an errno and closes.

This module never does I/O. The asyncio shell owns the socket and drives a :class:`UapiSession`.
"""

from __future__ import annotations

import errno as _errno
import ipaddress
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

log = logging.getLogger(__name__)

EINVAL = _errno.EINVAL
EIO = _errno.EIO
EPROTO = _errno.EPROTO
EADDRINUSE = _errno.EADDRINUSE
ENOANO = 55  # wireguard-go's "unknown error" code (ipc.IpcErrorUnknown)

KEY_SIZE = 32
MAX_LINE = 4096  # no legitimate request line is longer than ~200 bytes
MAX_SET_BYTES = 128 << 20  # one set body (about 3 million allowed_ip lines)
GET_CHUNK = 64 << 10  # get replies are yielded in chunks of about this many characters

_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
_UINT = re.compile(r"[0-9]{1,20}")
_PREFIX_BITS = re.compile(r"0|[1-9][0-9]{0,2}")
_OCTET = r"(0|[1-9][0-9]{0,2})"
_DOTTED_QUAD = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")


class UapiError(Exception):
    """A request failed; ``errno`` is the positive errno, replied as ``errno=-errno``."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno
        self.message = message


@dataclass(slots=True)
class PeerInfo:
    """What the engine reports about one peer (config and counters)."""

    public_key: bytes
    preshared_key: bytes | None = None
    endpoint: tuple[str, int] | None = None
    last_handshake: float | None = None  # Unix time of the last handshake, None if never
    tx_bytes: int = 0
    rx_bytes: int = 0
    persistent_keepalive: int = 0


class UapiTarget(Protocol):
    """The configuration interface of the WireGuard engine (the shell's Interface implements it, its
    configuration half in tunnel/wireguard/device_config.py).

    Keys are raw 32-byte values. An endpoint is ``(ip_literal, port)``, the IPv6 literal possibly
    with a ``%zone``. An allowed IP is ``(packed_network_address, cidr)``: 4 or 16 bytes, host bits
    already cleared. ``set_peer`` leaves a field unchanged when its argument is omitted; None
    clears it. Setting ``listen_port`` rebinds and may raise OSError, leaving the old binding.
    """

    listen_port: int
    fwmark: int

    def get_private_key(self) -> bytes | None: ...
    def set_private_key(self, key: bytes | None) -> None: ...
    def peer_keys(self) -> list[bytes]: ...
    def get_peer(self, public_key: bytes) -> PeerInfo | None: ...
    def add_peer(self, public_key: bytes) -> None: ...
    def remove_peer(self, public_key: bytes) -> None: ...
    def remove_all_peers(self) -> None: ...
    def set_peer(
        self,
        public_key: bytes,
        *,
        preshared_key: bytes | None = ...,
        endpoint: tuple[str, int] | None = ...,
        persistent_keepalive: int | None = ...,
    ) -> None: ...
    def replace_allowed_ips(self, public_key: bytes) -> None: ...
    def add_allowed_ip(self, public_key: bytes, addr: bytes, cidr: int) -> None: ...
    def remove_allowed_ip(self, public_key: bytes, addr: bytes, cidr: int) -> None: ...
    def allowed_ips(self, public_key: bytes) -> Iterable[tuple[bytes, int]]: ...


# --- the plan of a set operation ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetPrivateKey:
    key: bytes | None  # clamped; None for the all-zero key (no identity)


@dataclass(frozen=True, slots=True)
class SetListenPort:
    port: int


@dataclass(frozen=True, slots=True)
class SetFwmark:
    mark: int  # 0 removes the mark


@dataclass(frozen=True, slots=True)
class ReplacePeers:
    pass


DeviceOp = SetPrivateKey | SetListenPort | SetFwmark | ReplacePeers


@dataclass(frozen=True, slots=True)
class RemovePeer:
    pass


@dataclass(frozen=True, slots=True)
class SetPresharedKey:
    key: bytes | None  # None for the all-zero key (no PSK)


@dataclass(frozen=True, slots=True)
class SetEndpoint:
    endpoint: tuple[str, int]


@dataclass(frozen=True, slots=True)
class SetKeepalive:
    interval: int


@dataclass(frozen=True, slots=True)
class ReplaceAllowedIps:
    pass


@dataclass(frozen=True, slots=True)
class AllowedIp:
    addr: bytes  # network address, host bits cleared
    cidr: int
    remove: bool = False


PeerOp = RemovePeer | SetPresharedKey | SetEndpoint | SetKeepalive | ReplaceAllowedIps | AllowedIp


@dataclass(slots=True)
class PeerSection:
    """The lines from one ``public_key=`` to the next, in order."""

    public_key: bytes
    update_only: bool = False
    ops: list[PeerOp] = field(default_factory=list)


@dataclass(slots=True)
class SetRequest:
    device_ops: list[DeviceOp] = field(default_factory=list)
    peers: list[PeerSection] = field(default_factory=list)


# --- values ------------------------------------------------------------------------------


def _invalid(message: str) -> UapiError:
    return UapiError(EINVAL, message)


def parse_hex_key(value: str) -> bytes:
    """64 hex digits (either case, as Go's hex decoder) -> 32 bytes."""
    if not _HEX_KEY.fullmatch(value):
        raise _invalid(f"not a 64-digit hex key: {value!r}")
    return bytes.fromhex(value)


def clamp_private_key(key: bytes) -> bytes:
    k = bytearray(key)
    k[0] &= 248
    k[31] = (k[31] & 127) | 64
    return bytes(k)


def parse_uint(value: str, bits: int, what: str) -> int:
    """Decimal digits only (no sign, no spaces, leading zeros allowed), like Go's ParseUint."""
    if not _UINT.fullmatch(value) or int(value) >= 1 << bits:
        raise _invalid(f"invalid {what}: {value!r}")
    return int(value)


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(text: str) -> IPAddress:
    """An IP literal in Go's netip.ParseAddr grammar (dotted quad, or IPv6 with optional %zone)."""
    if not text.isascii():
        raise _invalid(f"invalid IP address: {text!r}")
    try:
        if ":" in text:
            return ipaddress.IPv6Address(text)
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise _invalid(f"invalid IP address: {text!r}") from None


def format_ip(addr: IPAddress) -> str:
    """As Go and inet_ntop print it: an IPv4-mapped IPv6 address keeps its dotted tail."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        tail = f"%{addr.scope_id}" if addr.scope_id else ""
        return f"::ffff:{addr.ipv4_mapped}{tail}"
    return str(addr)


def parse_endpoint(value: str) -> tuple[str, int]:
    """``a.b.c.d:port`` or ``[v6]:port`` (IP literals only, as wireguard-go's ParseEndpoint)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text:
        raise _invalid(f"invalid endpoint: {value!r}")
    bracketed = host.startswith("[")
    if bracketed:
        if len(host) < 2 or not host.endswith("]"):
            raise _invalid(f"invalid endpoint: {value!r}")
        host = host[1:-1]
    try:
        addr = parse_ip(host)
        port = parse_uint(port_text, 16, "port")
    except UapiError:
        raise _invalid(f"invalid endpoint: {value!r}") from None
    if bracketed != (addr.version == 6):
        raise _invalid(f"invalid endpoint (IPv6 and only IPv6 goes in brackets): {value!r}")
    return format_ip(addr), port


def format_endpoint(endpoint: tuple[str, int]) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_prefix(value: str) -> tuple[bytes, int]:
    """``addr/bits`` as Go's netip.ParsePrefix (no zone, no leading zeros in bits).

    Returns the packed network address (host bits cleared, as the allowed-IPs trie stores it).
    """
    addr_text, sep, bits_text = value.rpartition("/")
    if not sep or not _PREFIX_BITS.fullmatch(bits_text):
        raise _invalid(f"invalid allowed ip: {value!r}")
    cidr = int(bits_text)
    quad = _DOTTED_QUAD.fullmatch(addr_text)  # the common case, without ipaddress's cost
    if quad is not None:
        octets = [int(x) for x in quad.groups()]
        if max(octets) > 255 or cidr > 32:
            raise _invalid(f"invalid allowed ip: {value!r}")
        number, bits = int.from_bytes(bytes(octets), "big"), 32
    else:
        try:
            if "%" in addr_text:
                raise _invalid("zone")
            addr = parse_ip(addr_text)
        except UapiError:
            raise _invalid(f"invalid allowed ip: {value!r}") from None
        number, bits = int(addr), addr.max_prefixlen
        if cidr > bits:
            raise _invalid(f"invalid allowed ip: {value!r}")
    mask = ((1 << cidr) - 1) << (bits - cidr)
    return (number & mask).to_bytes(bits // 8, "big"), cidr


def format_prefix(addr: bytes, cidr: int) -> str:
    return f"{format_ip(ipaddress.ip_address(addr))}/{cidr}"


def _flag(key: str, value: str) -> None:
    if value != "true":
        raise _invalid(f"invalid value for {key}: {value!r}")


# --- parsing a set body ------------------------------------------------------------------


class SetParser:
    """Incremental parser of a ``set=1`` body: feed lines (without ``\\n``), then ``finish``.

    The first error is kept and later lines are ignored, so a caller can keep consuming the body
    up to its blank line and then report that error.
    """

    def __init__(self) -> None:
        self.request = SetRequest()
        self.error: UapiError | None = None
        self._peer: PeerSection | None = None

    def line(self, line: str) -> None:
        if self.error is not None:
            return
        try:
            self._line(line)
        except UapiError as exc:
            self.error = exc

    def finish(self) -> SetRequest:
        if self.error is not None:
            raise self.error
        return self.request

    def _line(self, line: str) -> None:
        key, sep, value = line.partition("=")
        if not sep:
            raise UapiError(EPROTO, f"failed to parse line {line!r}")
        if key == "public_key":
            self._peer = PeerSection(parse_hex_key(value))
            self.request.peers.append(self._peer)
        elif self._peer is None:
            self.request.device_ops.append(self._device_op(key, value))
        else:
            self._peer_line(self._peer, key, value)

    @staticmethod
    def _device_op(key: str, value: str) -> DeviceOp:
        if key == "private_key":
            raw = parse_hex_key(value)
            return SetPrivateKey(None if raw == bytes(KEY_SIZE) else clamp_private_key(raw))
        if key == "listen_port":
            return SetListenPort(parse_uint(value, 16, "listen_port"))
        if key == "fwmark":
            return SetFwmark(parse_uint(value, 32, "fwmark"))
        if key == "replace_peers":
            _flag(key, value)
            return ReplacePeers()
        raise _invalid(f"invalid UAPI device key: {key!r}")

    @staticmethod
    def _peer_line(peer: PeerSection, key: str, value: str) -> None:
        op: PeerOp
        if key == "update_only":
            _flag(key, value)
            peer.update_only = True
            return
        if key == "protocol_version":
            if value != "1":
                raise _invalid(f"invalid protocol version: {value!r}")
            return
        if key == "remove":
            _flag(key, value)
            op = RemovePeer()
        elif key == "preshared_key":
            raw = parse_hex_key(value)
            op = SetPresharedKey(None if raw == bytes(KEY_SIZE) else raw)
        elif key == "endpoint":
            op = SetEndpoint(parse_endpoint(value))
        elif key == "persistent_keepalive_interval":
            op = SetKeepalive(parse_uint(value, 16, "persistent_keepalive_interval"))
        elif key == "replace_allowed_ips":
            _flag(key, value)
            op = ReplaceAllowedIps()
        elif key == "allowed_ip":
            remove = value.startswith("-")
            addr, cidr = parse_prefix(value[1:] if remove else value)
            op = AllowedIp(addr, cidr, remove)
        else:
            raise _invalid(f"invalid UAPI peer key: {key!r}")
        peer.ops.append(op)


def parse_set(lines: Iterable[str]) -> SetRequest:
    """Parse and fully validate a set body (lines without newlines, up to the blank line).

    Touches nothing; raises :class:`UapiError` on the first bad line.
    """
    parser = SetParser()
    for line in lines:
        if line == "":
            break
        parser.line(line)
        if parser.error is not None:
            break
    return parser.finish()


# --- applying a set ----------------------------------------------------------------------


def default_public_from_private(private: bytes) -> bytes:
    from crypto.keys import public_from_private

    return public_from_private(private)


@dataclass(slots=True)
class _PeerSnapshot:
    info: PeerInfo
    allowed: list[tuple[bytes, int]]


class _Journal:
    """Undo actions, run newest first when a set has to be rolled back."""

    def __init__(self, target: UapiTarget) -> None:
        self.target = target
        self.undo: list[Callable[[], object]] = []

    def snapshot(self, public_key: bytes) -> _PeerSnapshot | None:
        info = self.target.get_peer(public_key)
        if info is None:
            return None
        return _PeerSnapshot(info, list(self.target.allowed_ips(public_key)))

    def restore_peer(self, snap: _PeerSnapshot) -> None:
        t, pk = self.target, snap.info.public_key
        if t.get_peer(pk) is None:
            t.add_peer(pk)
        t.set_peer(
            pk,
            preshared_key=snap.info.preshared_key,
            endpoint=snap.info.endpoint,
            persistent_keepalive=snap.info.persistent_keepalive,
        )
        t.replace_allowed_ips(pk)
        for addr, cidr in snap.allowed:
            t.add_allowed_ip(pk, addr, cidr)

    def rollback(self) -> None:
        while self.undo:
            action = self.undo.pop()
            try:
                action()
            except Exception:  # keep undoing the rest; the target is already inconsistent
                log.exception("UAPI rollback step failed")


def apply_set(
    target: UapiTarget,
    plan: SetRequest,
    own_public_key: bytes | None,
    public_from_private: Callable[[bytes], bytes] = default_public_from_private,
) -> list[bytes]:
    """Apply a validated plan atomically; return the peers whose keepalive went from 0 to on.

    The caller sends those peers a keepalive at once (wireguard-go does). Order of work:
    1. ``listen_port`` / ``fwmark`` first, the only steps that can fail in normal operation;
    2. ``private_key`` (a peer whose public key equals our new public key is removed, as
       wireguard-go's SetPrivateKey does), then ``replace_peers``;
    3. peer sections in order. A section for our own public key is ignored; ``update_only``
       skips a peer that does not exist; lines after ``remove=true`` go nowhere.
    On failure everything done is undone (peers that were removed come back with their
    configuration, though at the end of the peer order and without their sessions) and
    :class:`UapiError` is raised: an OSError from a setter becomes its errno (EADDRINUSE if it
    has none). Any other exception is re-raised after the rollback.

    Only listen_port/fwmark fail in normal operation and they run first, so that rollback is
    exact. Undoing a later, unexpected failure is best effort: a prefix that an ``allowed_ip``
    line took from another peer goes back to no one (the target has no owner lookup).
    A keepalive counts as switched on when it was 0 before the peer's section and is not 0 after
    it (wireguard-go looks at each line alone).
    """
    journal = _Journal(target)
    try:
        return _apply(target, plan, own_public_key, public_from_private, journal)
    except Exception as exc:
        journal.rollback()
        if isinstance(exc, OSError):
            raise UapiError(exc.errno or EADDRINUSE, f"failed to apply: {exc}") from exc
        raise


def _apply(
    target: UapiTarget,
    plan: SetRequest,
    own: bytes | None,
    public_from_private: Callable[[bytes], bytes],
    journal: _Journal,
) -> list[bytes]:
    undo = journal.undo
    for op in plan.device_ops:
        if isinstance(op, SetListenPort):
            old_port = target.listen_port
            target.listen_port = op.port
            undo.append(partial(setattr, target, "listen_port", old_port))
        elif isinstance(op, SetFwmark):
            old_mark = target.fwmark
            target.fwmark = op.mark
            undo.append(partial(setattr, target, "fwmark", old_mark))
    for op in plan.device_ops:
        if isinstance(op, SetPrivateKey):
            old_key = target.get_private_key()
            if op.key == old_key:
                continue
            own = public_from_private(op.key) if op.key is not None else None
            if own is not None:
                _remove_peer(journal, own)
            target.set_private_key(op.key)
            undo.append(partial(target.set_private_key, old_key))
    if any(isinstance(op, ReplacePeers) for op in plan.device_ops):
        snaps = [s for s in map(journal.snapshot, target.peer_keys()) if s is not None]
        target.remove_all_peers()
        undo.append(partial(_restore_peers, journal, snaps))

    keepalive_on: dict[bytes, None] = {}
    for section in plan.peers:
        pk = section.public_key
        if pk == own:
            continue
        info = target.get_peer(pk)
        if info is None:
            if section.update_only:
                continue
            target.add_peer(pk)
            undo.append(partial(target.remove_peer, pk))
            start_keepalive = 0
        else:
            start_keepalive = info.persistent_keepalive
        if _apply_peer_ops(journal, pk, section.ops):
            after = target.get_peer(pk)
            if start_keepalive == 0 and after is not None and after.persistent_keepalive:
                keepalive_on[pk] = None
        else:
            keepalive_on.pop(pk, None)
    return [pk for pk in keepalive_on if target.get_peer(pk) is not None]


def _restore_peers(journal: _Journal, snaps: list[_PeerSnapshot]) -> None:
    for snap in snaps:
        journal.restore_peer(snap)


def _remove_peer(journal: _Journal, public_key: bytes) -> None:
    snap = journal.snapshot(public_key)
    if snap is not None:
        journal.target.remove_peer(public_key)
        journal.undo.append(partial(journal.restore_peer, snap))


def _apply_peer_ops(journal: _Journal, pk: bytes, ops: list[PeerOp]) -> bool:
    """Apply one section's ops to an existing peer; False if the section removed it."""
    t, undo = journal.target, journal.undo
    owned: set[tuple[bytes, int]] | None = None  # the peer's prefixes, built on first need
    for op in ops:
        if isinstance(op, RemovePeer):
            _remove_peer(journal, pk)
            return False
        if isinstance(op, AllowedIp):
            if owned is None:
                owned = set(t.allowed_ips(pk))
            prefix = (op.addr, op.cidr)
            if op.remove:
                t.remove_allowed_ip(pk, op.addr, op.cidr)
                if prefix in owned:
                    owned.discard(prefix)
                    undo.append(partial(t.add_allowed_ip, pk, op.addr, op.cidr))
            else:
                t.add_allowed_ip(pk, op.addr, op.cidr)
                if prefix not in owned:
                    owned.add(prefix)
                    undo.append(partial(t.remove_allowed_ip, pk, op.addr, op.cidr))
            continue
        info = t.get_peer(pk)
        if info is None:  # the target dropped it behind our back; nothing left to configure
            return False
        if isinstance(op, ReplaceAllowedIps):
            old = list(t.allowed_ips(pk))
            t.replace_allowed_ips(pk)
            owned = set()
            undo.append(partial(_add_allowed, t, pk, old))
        elif isinstance(op, SetPresharedKey):
            t.set_peer(pk, preshared_key=op.key)
            undo.append(partial(t.set_peer, pk, preshared_key=info.preshared_key))
        elif isinstance(op, SetEndpoint):
            t.set_peer(pk, endpoint=op.endpoint)
            undo.append(partial(t.set_peer, pk, endpoint=info.endpoint))
        else:
            t.set_peer(pk, persistent_keepalive=op.interval)
            undo.append(partial(t.set_peer, pk, persistent_keepalive=info.persistent_keepalive))
    return True


def _add_allowed(target: UapiTarget, pk: bytes, prefixes: list[tuple[bytes, int]]) -> None:
    for addr, cidr in prefixes:
        target.add_allowed_ip(pk, addr, cidr)


# --- get ---------------------------------------------------------------------------------


def render_get(target: UapiTarget) -> Iterator[str]:
    """The ``get=1`` reply, ``errno=0`` and blank line included, in chunks of ~GET_CHUNK chars.

    A generator, so a configuration with hundreds of thousands of allowed IPs streams. The
    caller must keep the configuration still while iterating (the shell holds the device's UAPI
    lock until the last chunk is written), as wireguard-go holds its ipc lock.
    """
    out: list[str] = []
    size = 0
    private = target.get_private_key()
    if private is not None:
        out.append(f"private_key={private.hex()}\n")
    if target.listen_port:
        out.append(f"listen_port={target.listen_port}\n")
    if target.fwmark:
        out.append(f"fwmark={target.fwmark}\n")
    for pk in target.peer_keys():
        info = target.get_peer(pk)
        if info is None:
            continue
        psk = info.preshared_key if info.preshared_key is not None else bytes(KEY_SIZE)
        lines = [f"public_key={pk.hex()}\npreshared_key={psk.hex()}\nprotocol_version=1\n"]
        if info.endpoint is not None:
            lines.append(f"endpoint={format_endpoint(info.endpoint)}\n")
        sec, nsec = _split_time(info.last_handshake)
        lines.append(
            f"last_handshake_time_sec={sec}\nlast_handshake_time_nsec={nsec}\n"
            f"tx_bytes={info.tx_bytes}\nrx_bytes={info.rx_bytes}\n"
            f"persistent_keepalive_interval={info.persistent_keepalive}\n"
        )
        for part in lines:
            out.append(part)
            size += len(part)
        for addr, cidr in target.allowed_ips(pk):
            line = f"allowed_ip={format_prefix(addr, cidr)}\n"
            out.append(line)
            size += len(line)
            if size >= GET_CHUNK:
                yield "".join(out)
                out.clear()
                size = 0
        if size >= GET_CHUNK:
            yield "".join(out)
            out.clear()
            size = 0
    out.append("errno=0\n\n")
    yield "".join(out)


def _split_time(t: float | None) -> tuple[int, int]:
    if t is None or t <= 0:
        return 0, 0
    sec = int(t)
    nsec = min(int(round((t - sec) * 1e9)), 999_999_999)
    return sec, nsec
