"""CNI protocol pieces, sans-I/O: error codes and objects, versions, the environment, the config.

Facts from the CNI specification (containernetworking/cni SPEC.md, 1.0.0 and 1.1.0): the runtime
execs the plugin with the network configuration on stdin and ``CNI_COMMAND``, ``CNI_CONTAINERID``,
``CNI_NETNS``, ``CNI_IFNAME``, ``CNI_ARGS`` and ``CNI_PATH`` in the environment. Every failure is
reported as an error object ``{"cniVersion", "code", "msg", "details"}`` on stdout with a non-zero
exit status. Codes 1-99 are the spec's; 100 and above belong to the plugin.

Everything here takes plain dicts and strings and raises :class:`CniError`; nothing reads a file,
the environment or the clock.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PLUGIN_TYPE = "wg-py-cni"

# Well-known error codes (SPEC.md "Error"; 50 and 51 come with 1.1.0's STATUS).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
LIMITED_CONNECTIVITY = 51
# Plugin-specific codes (100 and above).
MESH_STATE_INVALID = 100   # the mesh state file exists but cannot be used
DELEGATE_NOT_FOUND = 101   # bridge or host-local is not on CNI_PATH
DELEGATE_FAILED = 102      # the delegate failed without a well-known code of its own
NO_ATTACHMENT = 103        # CHECK: nothing cached for this container and interface
CHECK_FAILED = 104         # CHECK: the pod's interface, addresses or routes differ
LEASE_CHANGED = 105        # CHECK: the mesh no longer holds the subnet the pod got

# Result versions we emit; the delegate is asked for the same (1.1.0 is sent as 1.0.0, whose
# result format is identical, to delegates that predate it).
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = "1.1.0"
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
VALID_ATTACHMENTS = "cni.dev/valid-attachments"

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
_CONTAINER_ID = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
_IFNAME_MAX = 15
# Delegate keys a config may override. The rest of the delegate's config is ours to build.
DELEGATE_KEYS = frozenset({
    "type", "bridge", "isGateway", "isDefaultGateway", "forceAddress", "ipMasq", "mtu",
    "hairpinMode", "promiscMode", "vlan", "macspoofchk", "enabledad", "ipam",
})
CONFIG_KEYS = frozenset({
    "cniVersion", "name", "type", "mesh", "stateDir", "dataDir", "delegate", "ipam",
    "prevResult", "runtimeConfig", "args", "capabilities", "cniVersions", "disableCheck",
    "disableGC", VALID_ATTACHMENTS,
})


class CniError(Exception):
    """A failure to report to the runtime as a CNI error object."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(f"{code}: {msg}" + (f" ({details})" if details else ""))
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> dict[str, Any]:
        """The error object the spec defines (``details`` only when there is something to say)."""
        obj: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            obj["details"] = self.details
        return obj


def version_tuple(version: str) -> tuple[int, int, int]:
    """``"1.0.0"`` -> (1, 0, 0); a malformed version string is an invalid config."""
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise CniError(INVALID_CONFIG, f"malformed cniVersion {version!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def check_version(version: object) -> str:
    """The config's ``cniVersion`` if we support it; else error 1 (or 7 if it is not a string)."""
    if not isinstance(version, str) or not version:
        raise CniError(INVALID_CONFIG, "cniVersion must be a non-empty string")
    version_tuple(version)
    if version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, f"incompatible CNI version {version}",
                       f"supported: {', '.join(SUPPORTED_VERSIONS)}")
    return version


@dataclass(frozen=True)
class Env:
    """The ``CNI_*`` variables of one invocation, validated for ``command``."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: tuple[tuple[str, str], ...] = ()
    path: tuple[str, ...] = ()


def parse_env(environ: Mapping[str, str]) -> Env:
    """Validate the ``CNI_*`` variables for their command (error 4 on anything missing or bad).

    ADD and CHECK need all of them; DEL needs the container ID and interface name (its netns
    may be empty: the runtime may have lost it); VERSION needs none; STATUS and GC need
    ``CNI_PATH`` only. ``CNI_ARGS`` is ``K=V;K=V``.
    """
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(INVALID_ENV, f"CNI_COMMAND must be one of {', '.join(COMMANDS)}, not {command!r}")
    if command == "VERSION":
        return Env(command)
    path = tuple(p for p in environ.get("CNI_PATH", "").split(":") if p)
    if not path:
        raise CniError(INVALID_ENV, "CNI_PATH is not set")
    if command in ("STATUS", "GC"):
        return Env(command, path=path)
    container_id = environ.get("CNI_CONTAINERID", "")
    if not _CONTAINER_ID.match(container_id):
        raise CniError(INVALID_ENV, f"CNI_CONTAINERID {container_id!r} is empty or has characters "
                       "outside [a-zA-Z0-9_.-]")
    ifname = environ.get("CNI_IFNAME", "")
    if (not ifname or len(ifname) > _IFNAME_MAX or ifname in (".", "..")
            or any(c in ifname for c in "/:") or any(c.isspace() for c in ifname)):
        raise CniError(INVALID_ENV, f"CNI_IFNAME {ifname!r} is not a valid interface name")
    netns = environ.get("CNI_NETNS", "")
    if command in ("ADD", "CHECK") and not netns:
        raise CniError(INVALID_ENV, "CNI_NETNS is not set")
    if netns and not netns.startswith("/"):
        raise CniError(INVALID_ENV, f"CNI_NETNS must be an absolute path, not {netns!r}")
    args: list[tuple[str, str]] = []
    for item in environ.get("CNI_ARGS", "").split(";"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENV, f"CNI_ARGS item {item!r} is not KEY=VALUE")
        args.append((key, value))
    return Env(command, container_id, netns, ifname, tuple(args), path)


@dataclass(frozen=True)
class Config:
    """Our network configuration, validated. ``raw`` is the whole decoded object."""

    cni_version: str
    name: str
    mesh: str
    state_dir: str | None = None
    data_dir: str | None = None
    delegate: dict[str, Any] = field(default_factory=dict)
    ipam: dict[str, Any] = field(default_factory=dict)
    prev_result: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict)


def decode(stdin: bytes) -> dict[str, Any]:
    """The JSON object on stdin (error 6 if it is not one)."""
    try:
        obj = json.loads(stdin.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # deep nesting: RecursionError
        raise CniError(DECODING_FAILURE, "the network configuration is not valid JSON", str(exc)) from exc
    if not isinstance(obj, dict):
        raise CniError(DECODING_FAILURE, "the network configuration is not a JSON object")
    return obj


def _optional_str(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        raise CniError(INVALID_CONFIG, f"{key!r} must be an absolute path")
    return value


def parse_config(raw: dict[str, Any], command: str) -> Config:
    """Validate our network configuration (error 7 for a bad value, 1 for a bad version).

    Required: ``cniVersion``, ``name`` (``^[a-zA-Z0-9][a-zA-Z0-9_.-]*$``), ``type`` =
    ``wg-py-cni`` and ``mesh`` (the node's mesh interface). Optional: ``stateDir`` (where the
    agent's state file is), ``dataDir`` (our attachment cache), ``delegate`` (keys of the bridge
    config to override, see :data:`DELEGATE_KEYS`) and ``ipam`` (keys of its IPAM config).
    Unknown top-level keys are refused, so a typo does not pass silently.
    """
    version = check_version(raw.get("cniVersion"))
    if command in ("STATUS", "GC") and version_tuple(version) < (1, 1, 0):
        raise CniError(INCOMPATIBLE_VERSION, f"{command} needs cniVersion 1.1.0 or later, not {version}")
    if command == "CHECK" and version_tuple(version) < (0, 4, 0):
        raise CniError(INCOMPATIBLE_VERSION, f"CHECK needs cniVersion 0.4.0 or later, not {version}")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise CniError(INVALID_CONFIG, f"network name {name!r} must match {_NAME.pattern}")
    if raw.get("type") != PLUGIN_TYPE:
        raise CniError(INVALID_CONFIG, f"type must be {PLUGIN_TYPE!r}, not {raw.get('type')!r}")
    mesh = raw.get("mesh")
    if (not isinstance(mesh, str) or not mesh or len(mesh) > _IFNAME_MAX
            or any(c in mesh for c in "/:. ") or any(c.isspace() for c in mesh)):
        raise CniError(INVALID_CONFIG, f"mesh must name the node's mesh interface, not {mesh!r}")
    unknown = sorted(set(raw) - CONFIG_KEYS)
    if unknown:
        raise CniError(INVALID_CONFIG, f"unknown configuration keys: {', '.join(unknown)}",
                       f"known: {', '.join(sorted(CONFIG_KEYS))}")
    delegate = raw.get("delegate", {})
    if not isinstance(delegate, dict):
        raise CniError(INVALID_CONFIG, "delegate must be an object")
    bad = sorted(set(delegate) - DELEGATE_KEYS)
    if bad:
        raise CniError(INVALID_CONFIG, f"delegate keys not allowed: {', '.join(bad)}",
                       f"allowed: {', '.join(sorted(DELEGATE_KEYS))}")
    ipam = raw.get("ipam", {})
    if not isinstance(ipam, dict) or not isinstance(delegate.get("ipam", {}), dict):
        raise CniError(INVALID_CONFIG, "ipam must be an object")
    prev = raw.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(INVALID_CONFIG, "prevResult must be an object")
    if prev is not None:
        _check_result_shape(prev)
    if command == "CHECK" and prev is None:
        raise CniError(INVALID_CONFIG, "CHECK needs prevResult")
    if command == "GC":
        valid = raw.get(VALID_ATTACHMENTS, [])
        if not isinstance(valid, list) or not all(
            isinstance(a, dict) and isinstance(a.get("containerID"), str) and isinstance(a.get("ifname"), str)
            for a in valid
        ):
            raise CniError(INVALID_CONFIG, f"{VALID_ATTACHMENTS} must be a list of "
                           "{containerID, ifname} objects")
    return Config(version, name, mesh, _optional_str(raw, "stateDir"), _optional_str(raw, "dataDir"),
                  dict(delegate), dict(ipam), prev, raw)


def _check_result_shape(prev: Mapping[str, Any]) -> None:
    """The parts of a ``prevResult`` we read (SPEC.md "Success"): ``interfaces``, ``ips`` and
    ``routes`` are lists of objects, ``dns`` an object; each may be missing or null."""
    for key in ("interfaces", "ips", "routes"):
        items = prev.get(key)
        if items is not None and not (isinstance(items, list) and all(isinstance(i, dict) for i in items)):
            raise CniError(INVALID_CONFIG, f"prevResult.{key} must be a list of objects")
    if prev.get("dns") is not None and not isinstance(prev["dns"], dict):
        raise CniError(INVALID_CONFIG, "prevResult.dns must be an object")


def valid_attachments(config: Config) -> set[tuple[str, str]]:
    """GC's keep-list as (containerID, ifname) pairs."""
    return {(a["containerID"], a["ifname"]) for a in config.raw.get(VALID_ATTACHMENTS, [])}


def parse_network(text: object, what: str, code: int = INVALID_CONFIG) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR with no host bits set; ``code`` (default 7) on anything else."""
    if not isinstance(text, str):
        raise CniError(code, f"{what} must be a CIDR string, not {text!r}")
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise CniError(code, f"{what} {text!r} is not a network CIDR", str(exc)) from exc
