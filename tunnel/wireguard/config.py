"""wg-quick configuration files (``/etc/wireguard/NAME.conf``), parsed the way wg and wg-quick do.

Lines are read as wg-quick's ``parse_options`` and wg's ``config.c`` read them:

* Everything from the first ``#`` on is a comment (in hook commands too).
* Section headers ``[Interface]`` and ``[Peer]`` and all keys are case-insensitive.
* The wg-quick keys (Address, DNS, MTU, Table, PreUp, PostUp, PreDown, PostDown, SaveConfig) are
  matched in [Interface] after trimming; their values are trimmed, inner spaces kept.
* The wg(8) keys (PrivateKey, ListenPort, FwMark; PublicKey, PresharedKey, AllowedIPs,
  Endpoint, PersistentKeepalive) lose all their whitespace first, as wg removes it; an empty
  value is an error.

Every error is a :class:`ConfigError` whose text is ``FILE:LINE: reason``. Parsing is pure: an
Endpoint may name a host; resolving it is the shell's job (``to_uapi_set`` takes a resolver).
Deliberate limits: ListenPort and endpoint ports must be numbers (wg also takes service names);
more than one [Interface] section is an error (wg merges them).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from crypto.keys import KeyError_, from_base64, to_base64
from tunnel.wireguard.uapi import IPAddress, format_endpoint, format_ip

INTERFACE_NAME = re.compile(r"[a-zA-Z0-9_=+.-]{1,15}")
_CONF_PATH = re.compile(r"(?:^|/)([a-zA-Z0-9_=+.-]{1,15})\.conf")
_DIGITS = re.compile(r"[0-9]+")
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})")
_TABLE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_DNS_SERVER = re.compile(r"[0-9.]+|.*:.*")  # wg-quick: anything else is a search domain
MTU_MIN, MTU_MAX = 68, 65535

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class ConfigError(ValueError):
    """A configuration error; ``str()`` is ``FILE:LINE: reason``."""

    def __init__(self, filename: str, line: int, reason: str) -> None:
        super().__init__(f"{filename}:{line}: {reason}")
        self.filename = filename
        self.line = line
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Endpoint:
    """``host:port`` from a config file; ``host`` is an IP literal or a name to resolve."""

    host: str
    port: int

    @property
    def is_literal(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        return format_endpoint((self.host, self.port))


@dataclass(frozen=True, slots=True)
class AllowedIP:
    """One AllowedIPs entry as written (host bits kept, as wg sends them); ``-`` removes it."""

    address: IPAddress
    cidr: int
    remove: bool = False

    def __str__(self) -> str:
        return f"{'-' if self.remove else ''}{format_ip(self.address)}/{self.cidr}"


@dataclass(slots=True)
class InterfaceConfig:
    private_key: bytes | None = None
    listen_port: int | None = None
    fwmark: int | None = None  # 0 is "off"
    addresses: list[IPInterface] = field(default_factory=list)
    dns: list[IPAddress] = field(default_factory=list)
    dns_search: list[str] = field(default_factory=list)
    mtu: int | None = None
    table: str | None = None  # "off", "auto", a number or a routing table name
    pre_up: list[str] = field(default_factory=list)
    post_up: list[str] = field(default_factory=list)
    pre_down: list[str] = field(default_factory=list)
    post_down: list[str] = field(default_factory=list)
    save_config: bool = False
    line: int = field(default=0, compare=False)


@dataclass(slots=True)
class PeerConfig:
    public_key: bytes
    preshared_key: bytes | None = None
    allowed_ips: list[AllowedIP] = field(default_factory=list)
    # wg sets replace_allowed_ips for every AllowedIPs line and clears it when that line has an
    # entry prefixed with + or - (an incremental change).
    replace_allowed_ips: bool = True
    endpoint: Endpoint | None = None
    persistent_keepalive: int | None = None  # 0 is "off"; None: not given
    line: int = field(default=0, compare=False)


@dataclass(slots=True)
class WgQuickConfig:
    interface: InterfaceConfig
    peers: list[PeerConfig] = field(default_factory=list)
    name: str | None = None  # the interface name, from the file name
    filename: str = field(default="<string>", compare=False)


def config_path(name_or_path: str) -> tuple[Path, str]:
    """Map a wg-quick argument to (path, interface name), as wg-quick does.

    A bare valid interface name means ``/etc/wireguard/NAME.conf``; otherwise the path must end
    in ``NAME.conf`` with NAME a valid interface name.
    """
    if INTERFACE_NAME.fullmatch(name_or_path):
        return Path(f"/etc/wireguard/{name_or_path}.conf"), name_or_path
    match = _CONF_PATH.search(name_or_path)
    if match is None or match.end() != len(name_or_path):
        raise ValueError(f"`{name_or_path}': the config file must be a valid interface name, followed by .conf")
    return Path(name_or_path), match.group(1)


def load_config(name_or_path: str) -> WgQuickConfig:
    """Read and parse a configuration file (``wg-quick up NAME`` or a path)."""
    path, name = config_path(name_or_path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), data.count(b"\n", 0, exc.start) + 1, "not UTF-8") from None
    cfg = parse_config(text, str(path))
    cfg.name = name
    return cfg


class _Parser:
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.interface: InterfaceConfig | None = None
        self.peers: list[PeerConfig] = []
        self.section: InterfaceConfig | PeerConfig | None = None
        self.peer_has_key: list[bool] = []
        self.lineno = 0

    def error(self, reason: str) -> ConfigError:
        return ConfigError(self.filename, self.lineno, reason)

    def line(self, raw: str) -> None:
        text = raw.split("#", 1)[0]
        compact = "".join(text.split())
        if not compact:
            return
        if compact.startswith("["):
            self.header(compact)
            return
        key, sep, value = text.partition("=")
        if not sep:
            raise self.error(f"line unrecognized: `{raw.strip()}'")
        if isinstance(self.section, InterfaceConfig):
            if self.wg_quick_key(self.section, key.strip().lower(), value.strip()):
                return
        wg_key, wg_value = "".join(key.split()).lower(), "".join(value.split())
        if self.section is None:
            raise self.error(f"key outside any section: `{raw.strip()}'")
        if not wg_value:
            raise self.error(f"`{key.strip()}' has no value")
        if isinstance(self.section, InterfaceConfig):
            self.interface_key(self.section, wg_key, key.strip(), wg_value)
        else:
            self.peer_key(self.section, wg_key, key.strip(), wg_value)

    def header(self, compact: str) -> None:
        lowered = compact.lower()
        if lowered == "[interface]":
            if self.interface is not None:
                raise self.error(f"duplicate [Interface] section (first at line {self.interface.line})")
            self.interface = InterfaceConfig(line=self.lineno)
            self.section = self.interface
        elif lowered == "[peer]":
            peer = PeerConfig(public_key=b"", line=self.lineno)
            self.peers.append(peer)
            self.peer_has_key.append(False)
            self.section = peer
        else:
            raise self.error(f"unknown section `{compact}'")

    def wg_quick_key(self, iface: InterfaceConfig, key: str, value: str) -> bool:
        if key == "address":
            for item in value.replace(",", " ").split():
                try:
                    iface.addresses.append(ipaddress.ip_interface(item))
                except ValueError:
                    raise self.error(f"Address is not an IP address or prefix: `{item}'") from None
        elif key == "dns":
            for item in value.replace(",", " ").split():
                if _DNS_SERVER.fullmatch(item):
                    try:
                        iface.dns.append(ipaddress.ip_address(item))
                    except ValueError:
                        raise self.error(f"DNS server is not an IP address: `{item}'") from None
                else:
                    iface.dns_search.append(item)
        elif key == "mtu":
            if not value:
                iface.mtu = None
            elif not _DIGITS.fullmatch(value) or not MTU_MIN <= int(value) <= MTU_MAX:
                raise self.error(f"MTU is not a number in {MTU_MIN}..{MTU_MAX}: `{value}'")
            else:
                iface.mtu = int(value)
        elif key == "table":
            if not value:
                iface.table = None
                return True
            if _DIGITS.fullmatch(value) and int(value) >= 1 << 32:
                raise self.error(f"Table number out of range: `{value}'")
            if not _TABLE_NAME.fullmatch(value):
                raise self.error(f"Table is neither off, auto, a number nor a name: `{value}'")
            iface.table = value
        elif key in ("preup", "postup", "predown", "postdown"):
            hooks = {"preup": iface.pre_up, "postup": iface.post_up}
            hooks.update({"predown": iface.pre_down, "postdown": iface.post_down})
            hooks[key].append(value)
        elif key == "saveconfig":
            if value.lower() not in ("true", "false"):
                raise self.error(f"`{value}' is neither true nor false")
            iface.save_config = value.lower() == "true"
        else:
            return False
        return True

    def interface_key(self, iface: InterfaceConfig, key: str, name: str, value: str) -> None:
        if key == "privatekey":
            iface.private_key = self.key(value)
        elif key == "listenport":
            iface.listen_port = self.port(value, "ListenPort")
        elif key == "fwmark":
            iface.fwmark = self.fwmark(value)
        else:
            raise self.error(f"unknown key `{name}' in [Interface]")

    def peer_key(self, peer: PeerConfig, key: str, name: str, value: str) -> None:
        if key == "publickey":
            peer.public_key = self.key(value)
            self.peer_has_key[-1] = True
        elif key == "presharedkey":
            peer.preshared_key = self.key(value)
        elif key == "allowedips":
            peer.replace_allowed_ips = True
            for item in value.split(","):
                if item[:1] in ("+", "-"):
                    peer.replace_allowed_ips = False
                peer.allowed_ips.append(self.allowed_ip(item))
        elif key == "endpoint":
            peer.endpoint = self.endpoint(value)
        elif key == "persistentkeepalive":
            if value.lower() == "off":
                peer.persistent_keepalive = 0
            elif _DIGITS.fullmatch(value) and int(value) <= 65535:
                peer.persistent_keepalive = int(value)
            else:
                raise self.error(f"PersistentKeepalive is neither 0/off nor 1-65535: `{value}'")
        else:
            raise self.error(f"unknown key `{name}' in [Peer]")

    def key(self, value: str) -> bytes:
        try:
            return from_base64(value)
        except KeyError_:
            raise self.error(f"Key is not the correct length or format: `{value}'") from None

    def port(self, value: str, what: str) -> int:
        if not _DIGITS.fullmatch(value) or int(value) > 65535:
            raise self.error(f"{what} is not a port number (0-65535): `{value}'")
        return int(value)

    def fwmark(self, value: str) -> int:
        if value.lower() == "off":
            return 0
        base = 16 if len(value) > 2 and value.startswith("0x") else 10
        digits = value[2:] if base == 16 else value
        pattern = r"[0-9a-fA-F]+" if base == 16 else r"[0-9]+"
        if not re.fullmatch(pattern, digits) or int(digits, base) > 0xFFFFFFFF:
            raise self.error(f"FwMark is neither 0/off nor 0-0xffffffff: `{value}'")
        return int(digits, base)

    def allowed_ip(self, item: str) -> AllowedIP:
        remove = item.startswith("-")
        text = item[1:] if item[:1] in ("+", "-") else item
        addr_text, slash, bits = text.partition("/")
        try:
            if ":" in addr_text:
                address: IPAddress = ipaddress.IPv6Address(addr_text)
            else:
                address = ipaddress.IPv4Address(addr_text)
            if address.version == 6 and address.scope_id:
                raise ValueError("zone")
        except ValueError:
            raise self.error(f"Unable to parse IP address: `{addr_text}'") from None
        if not slash:
            return AllowedIP(address, address.max_prefixlen, remove)
        if not _DIGITS.fullmatch(bits) or int(bits) > address.max_prefixlen:
            raise self.error(f"AllowedIP is not in the correct format: `{text}'")
        return AllowedIP(address, int(bits), remove)

    def endpoint(self, value: str) -> Endpoint:
        if value.startswith("["):
            host, sep, port = value[1:].partition("]")
            if not sep:
                raise self.error(f"Unable to find matching brace of endpoint: `{value}'")
            if not port.startswith(":") or len(port) < 2:
                raise self.error(f"Unable to find port of endpoint: `{value}'")
            port = port[1:]
        else:
            host, sep, port = value.rpartition(":")
            if not sep or not port:
                raise self.error(f"Unable to find port of endpoint: `{value}'")
        try:
            host = format_ip(ipaddress.ip_address(host))
        except ValueError:
            if not _HOSTNAME.fullmatch(host):
                raise self.error(f"Endpoint host is neither an IP nor a name: `{value}'") from None
        return Endpoint(host, self.port(port, "Endpoint port"))

    def finish(self) -> WgQuickConfig:
        for peer, has_key in zip(self.peers, self.peer_has_key, strict=True):
            if not has_key:
                self.lineno = peer.line
                raise self.error("a peer is missing a public key")
        if self.interface is None:
            self.lineno = max(self.lineno, 1)
            raise self.error("no [Interface] section")
        return WgQuickConfig(self.interface, self.peers, filename=self.filename)


def parse_config(text: str, filename: str = "<string>") -> WgQuickConfig:
    """Parse the text of a wg-quick configuration file; ``filename`` names it in errors."""
    parser = _Parser(filename)
    for lineno, raw in enumerate(text.split("\n"), 1):
        parser.lineno = lineno
        parser.line(raw)
    return parser.finish()


# --- output ------------------------------------------------------------------------------


def _allowed_ips_lines(peer: PeerConfig) -> list[str]:
    """AllowedIPs lines that parse back to the same entries and replace flag."""
    if not peer.allowed_ips:
        return []
    if peer.replace_allowed_ips:
        return ["AllowedIPs = " + ", ".join(map(str, peer.allowed_ips))]
    entries = [str(a) if a.remove else f"+{a}" for a in peer.allowed_ips]
    return ["AllowedIPs = " + ", ".join(entries)]


def _wg_lines(cfg: WgQuickConfig, wg_quick: bool) -> list[str]:
    iface = cfg.interface
    out = ["[Interface]"]
    if wg_quick:
        out += [f"Address = {a}" for a in iface.addresses]
        if iface.dns or iface.dns_search:
            out.append("DNS = " + ", ".join([*map(str, iface.dns), *iface.dns_search]))
        if iface.mtu is not None:
            out.append(f"MTU = {iface.mtu}")
        if iface.table is not None:
            out.append(f"Table = {iface.table}")
        for key, hooks in (("PreUp", iface.pre_up), ("PostUp", iface.post_up)):
            out += [f"{key} = {h}" for h in hooks]
        for key, hooks in (("PreDown", iface.pre_down), ("PostDown", iface.post_down)):
            out += [f"{key} = {h}" for h in hooks]
        if iface.save_config:
            out.append("SaveConfig = true")
    if iface.private_key is not None:
        out.append(f"PrivateKey = {to_base64(iface.private_key)}")
    if iface.listen_port is not None:
        out.append(f"ListenPort = {iface.listen_port}")
    if iface.fwmark is not None:
        out.append(f"FwMark = {iface.fwmark:#x}" if iface.fwmark else "FwMark = off")
    for peer in cfg.peers:
        out += ["", "[Peer]", f"PublicKey = {to_base64(peer.public_key)}"]
        if peer.preshared_key is not None:
            out.append(f"PresharedKey = {to_base64(peer.preshared_key)}")
        out += _allowed_ips_lines(peer)
        if peer.endpoint is not None:
            out.append(f"Endpoint = {peer.endpoint}")
        if peer.persistent_keepalive is not None:
            pka = peer.persistent_keepalive
            out.append(f"PersistentKeepalive = {pka if pka else 'off'}")
    return out


def format_config(cfg: WgQuickConfig) -> str:
    """The whole wg-quick file (``wg-quick save``); parses back to an equal config."""
    return "\n".join(_wg_lines(cfg, wg_quick=True)) + "\n"


def strip(cfg: WgQuickConfig) -> str:
    """``wg-quick strip``: only what wg(8) understands, for ``wg setconf``/``syncconf``.

    Canonical form: comments and spelling are not kept (wg-quick echoes the raw lines).
    """
    return "\n".join(_wg_lines(cfg, wg_quick=False)) + "\n"


Resolver = Callable[[str, int], tuple[str, int]]


def to_uapi_set(cfg: WgQuickConfig, resolve: Resolver | None = None, append: bool = False) -> str:
    """The request ``wg setconf`` (or ``wg addconf`` with ``append``) sends, from ``set=1``
    through the closing blank line.

    setconf always sends private_key (zeros if none), listen_port, fwmark and
    replace_peers=true; addconf only what the file has. A host-name endpoint is turned into an
    IP literal by ``resolve(host, port) -> (ip, port)``; without a resolver it is a ValueError.
    """
    iface = cfg.interface
    out = ["set=1"]
    if iface.private_key is not None or not append:
        out.append(f"private_key={(iface.private_key or bytes(32)).hex()}")
    if iface.listen_port is not None or not append:
        out.append(f"listen_port={iface.listen_port or 0}")
    if iface.fwmark is not None or not append:
        out.append(f"fwmark={iface.fwmark or 0}")
    if not append:
        out.append("replace_peers=true")
    for peer in cfg.peers:
        out.append(f"public_key={peer.public_key.hex()}")
        if peer.preshared_key is not None:
            out.append(f"preshared_key={peer.preshared_key.hex()}")
        if peer.endpoint is not None:
            endpoint = (peer.endpoint.host, peer.endpoint.port)
            if not peer.endpoint.is_literal:
                if resolve is None:
                    raise ValueError(f"endpoint {peer.endpoint} needs resolving")
                endpoint = resolve(*endpoint)
            out.append(f"endpoint={format_endpoint(endpoint)}")
        if peer.persistent_keepalive is not None:
            out.append(f"persistent_keepalive_interval={peer.persistent_keepalive}")
        if peer.replace_allowed_ips:
            out.append("replace_allowed_ips=true")
        out += [f"allowed_ip={a}" for a in peer.allowed_ips]
    return "\n".join(out) + "\n\n"
