"""The delegate's config, result handling, CHECK's comparison and GC's selection (sans-I/O).

The node's pods sit on a Linux bridge made by the reference ``bridge`` plugin; ``host-local``
hands out addresses from the node's leased subnet. Defaults (each overridable through the
config's ``delegate`` object, and the IPAM part through ``ipam`` too, as flannel's ``delegate``
key does)::

    {"type": "bridge", "bridge": "wgpy-cni0", "isGateway": true, "ipMasq": false,
     "hairpinMode": true, "mtu": <the mesh's inner MTU>,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": <the node's subnet>}]],
              "routes": [{"dst": <the mesh network>, "gw": <the pods' gateway>}]}}

``ipMasq`` stays off by default: the bridge plugin masquerades everything leaving the pod
subnet, which would hide pod addresses from pods on other nodes. Overrides are checked against
the mesh: the MTU may not exceed the inner MTU and every IPAM range must lie inside the leased
subnet (anything else would give pods addresses the mesh does not route to this node).
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tunnel.cni.mesh import MeshState
from tunnel.cni.spec import (
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    CniError,
    Config,
    parse_network,
)

DEFAULT_BRIDGE = "wgpy-cni0"
DEFAULT_IPAM = "host-local"
MIN_POD_MTU = 576


def delegate_version(requested: str, supported: Sequence[str]) -> str:
    """The cniVersion to speak to the delegate: ours, or 1.0.0 for 1.1.0 if it predates 1.1.0
    (the two result formats are the same). Error 1 if the delegate supports neither."""
    if requested in supported:
        return requested
    if requested == "1.1.0" and "1.0.0" in supported:
        return "1.0.0"
    raise CniError(INCOMPATIBLE_VERSION, f"the delegate does not support cniVersion {requested}",
                   f"it supports: {', '.join(supported)}")


def default_ranges(state: MeshState) -> list[list[dict[str, str]]]:
    """One range set over the node's subnet, leaving out the node's tunnel address if it lies
    inside the subnet (host-local already skips the network, broadcast and gateway addresses).

    With the gateway at the first host address: a tunnel address equal to the network address or
    to the gateway needs no exclusion (the gateway is the node's own address either way); any
    other inside address splits the set into the ranges below and above it.
    """
    subnet = state.subnet
    entry = {"subnet": str(subnet)}
    addr = state.address
    if addr is None or addr not in subnet:
        return [[entry]]
    base = int(subnet.network_address)
    first = base + 1  # the gateway host-local picks
    last = int(subnet.broadcast_address) - (1 if subnet.version == 4 else 0)
    at = int(addr)
    if at in (base, first) or at > last:
        return [[entry]]

    def text(value: int) -> str:
        return str(ipaddress.ip_address(value) if subnet.version == 4 else ipaddress.IPv6Address(value))

    pieces: list[dict[str, str]] = []
    if at - 1 > first:
        pieces.append({**entry, "rangeStart": text(first + 1), "rangeEnd": text(at - 1)})
    if at + 1 <= last:
        pieces.append({**entry, "rangeStart": text(at + 1), "rangeEnd": text(last)})
    return [pieces] if pieces else [[entry]]


def _check_ifname(value: object, what: str) -> str:
    if (not isinstance(value, str) or not value or len(value) > 15
            or any(c in value for c in "/: ") or value in (".", "..")):
        raise CniError(INVALID_CONFIG, f"{what} {value!r} is not a valid interface name")
    return value


def _check_plugin_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or "/" in value or value.startswith("."):
        raise CniError(INVALID_CONFIG, f"{what} {value!r} is not a plugin name")
    return value


def _check_ranges(ranges: object, state: MeshState) -> None:
    if not isinstance(ranges, list) or not ranges:
        raise CniError(INVALID_CONFIG, "ipam.ranges must be a non-empty list of range sets")
    for range_set in ranges:
        if not isinstance(range_set, list) or not range_set:
            raise CniError(INVALID_CONFIG, "each ipam range set must be a non-empty list of ranges")
        for item in range_set:
            if not isinstance(item, dict):
                raise CniError(INVALID_CONFIG, "each ipam range must be an object")
            subnet = parse_network(item.get("subnet"), "ipam range subnet")
            if subnet.version != state.subnet.version or not subnet.subnet_of(state.subnet):  # type: ignore[arg-type]
                raise CniError(INVALID_CONFIG, f"ipam range {subnet} is outside the node's mesh subnet "
                               f"{state.subnet}", "the mesh routes only the leased subnet to this node")
            for key in ("rangeStart", "rangeEnd", "gateway"):
                if key in item:
                    try:
                        value = ipaddress.ip_address(item[key])
                    except (ValueError, TypeError) as exc:
                        raise CniError(INVALID_CONFIG, f"ipam range {key} {item[key]!r} is not an "
                                       "IP address") from exc
                    if value not in subnet:
                        raise CniError(INVALID_CONFIG, f"ipam range {key} {value} is outside {subnet}")


def _check_routes(routes: object) -> None:
    if not isinstance(routes, list):
        raise CniError(INVALID_CONFIG, "ipam.routes must be a list")
    for route in routes:
        if not isinstance(route, dict):
            raise CniError(INVALID_CONFIG, "each ipam route must be an object")
        parse_network(route.get("dst"), "ipam route dst")
        if "gw" in route:
            try:
                ipaddress.ip_address(route["gw"])
            except (ValueError, TypeError) as exc:
                raise CniError(INVALID_CONFIG, f"ipam route gw {route['gw']!r} is not an IP address") from exc


def _gateway(ipam: Mapping[str, Any], state: MeshState) -> str:
    """The pods' gateway host-local will hand out: the first range's ``gateway``, else the first
    host address of its subnet (the bridge gets it with ``isGateway``). The route to the mesh
    names it explicitly: the reference bridge plugin's CHECK (v1.1.1) does not match a route
    without a gateway against the kernel's route via the gateway."""
    first: Any = ipam.get("ranges", [[{}]])
    try:
        item = ipam if "subnet" in ipam else first[0][0]
        if item.get("gateway"):
            return str(ipaddress.ip_address(item["gateway"]))
        subnet = ipaddress.ip_network(item["subnet"], strict=False)
    except (LookupError, TypeError, ValueError, AttributeError):
        subnet = state.subnet  # a malformed range: refused by the checks that follow
    return str(subnet.network_address + 1)


def build_delegate_conf(config: Config, state: MeshState, version: str) -> dict[str, Any]:
    """The delegate's network config for ``config`` on a node whose mesh state is ``state``.

    ``version`` is the cniVersion the delegate is spoken to in (see :func:`delegate_version`).
    ``prevResult`` is never passed on (this plugin makes the interface; it merges a previous
    result itself); ``runtimeConfig`` and ``args`` are. Error 7 on an override that does not fit
    the mesh.
    """
    ipam: dict[str, Any] = {"type": DEFAULT_IPAM, "ranges": default_ranges(state)}
    ipam.update(copy.deepcopy(config.delegate.get("ipam", {})))
    ipam.update(copy.deepcopy(config.ipam))
    if "routes" not in ipam:
        ipam["routes"] = [{"dst": str(state.network_cidr), "gw": _gateway(ipam, state)}]
    conf: dict[str, Any] = {
        "cniVersion": version,
        "name": config.name,
        "type": "bridge",
        "bridge": DEFAULT_BRIDGE,
        "isGateway": True,
        "ipMasq": False,
        "hairpinMode": True,
        "mtu": state.mtu,
    }
    conf.update({k: copy.deepcopy(v) for k, v in config.delegate.items() if k != "ipam"})
    conf["ipam"] = ipam
    for key in ("runtimeConfig", "args"):
        if key in config.raw:
            conf[key] = copy.deepcopy(config.raw[key])
    _check_plugin_name(conf["type"], "delegate type")
    _check_ifname(conf["bridge"], "bridge name")
    for key in ("isGateway", "isDefaultGateway", "forceAddress", "ipMasq", "hairpinMode", "promiscMode"):
        if key in conf and not isinstance(conf[key], bool):
            raise CniError(INVALID_CONFIG, f"delegate {key} must be true or false")
    mtu = conf["mtu"]
    if not isinstance(mtu, int) or isinstance(mtu, bool) or not MIN_POD_MTU <= mtu <= state.mtu:
        raise CniError(INVALID_CONFIG, f"mtu {mtu!r} must be an integer in [{MIN_POD_MTU}, {state.mtu}]",
                       f"{state.mtu} is the inner MTU of mesh {state.interface}")
    _check_plugin_name(ipam.get("type"), "ipam type")
    if ipam["type"] == DEFAULT_IPAM:
        if "subnet" in ipam:  # host-local's single-range form
            _check_ranges([[{k: ipam[k] for k in ("subnet", "rangeStart", "rangeEnd", "gateway")
                             if k in ipam}]], state)
            ipam.pop("ranges", None)
        else:
            _check_ranges(ipam.get("ranges"), state)
        if "dataDir" in ipam and (not isinstance(ipam["dataDir"], str) or not ipam["dataDir"].startswith("/")):
            raise CniError(INVALID_CONFIG, "ipam.dataDir must be an absolute path")
    _check_routes(ipam.get("routes", []))
    return conf


def restamp(result: Mapping[str, Any], version: str) -> dict[str, Any]:
    """``result`` labelled with ``version`` (the delegate may have been spoken to in 1.0.0)."""
    out = copy.deepcopy(dict(result))
    out["cniVersion"] = version
    return out


def merge_prev_result(prev: Mapping[str, Any] | None, ours: Mapping[str, Any]) -> dict[str, Any]:
    """Our result appended to a previous plugin's (SPEC.md: a plugin passes ``prevResult`` on).

    Interfaces are concatenated, our IPs' ``interface`` indices shift past the previous ones,
    routes are concatenated, and DNS stays the previous one unless it is empty.
    """
    out = copy.deepcopy(dict(ours))
    if not prev:
        return out
    prev_ifaces = list(prev.get("interfaces") or [])
    shift = len(prev_ifaces)
    ips = []
    for ip in out.get("ips") or []:
        ip = dict(ip)
        if isinstance(ip.get("interface"), int):
            ip["interface"] += shift
        ips.append(ip)
    out["interfaces"] = copy.deepcopy(prev_ifaces) + list(out.get("interfaces") or [])
    out["ips"] = copy.deepcopy(list(prev.get("ips") or [])) + ips
    out["routes"] = copy.deepcopy(list(prev.get("routes") or [])) + list(out.get("routes") or [])
    if prev.get("dns"):
        out["dns"] = copy.deepcopy(prev["dns"])
    return out


def _route_dst(text: str, family: int) -> str:
    if text == "default":
        return "0.0.0.0/0" if family == 4 else "::/0"
    if "/" not in text:
        return f"{text}/{32 if family == 4 else 128}"
    return str(ipaddress.ip_network(text, strict=False))


def check_attachment(
    result: Mapping[str, Any],
    ifname: str,
    mtu: int | None,
    links: Sequence[Mapping[str, Any]],
    routes: Mapping[int, Sequence[Mapping[str, Any]]],
) -> list[str]:
    """What differs between a cached ADD result and the pod namespace as observed; [] if nothing.

    ``links`` is ``ip -j addr show`` and ``routes`` maps 4 and 6 to ``ip -j -4 route show`` and
    ``ip -j -6 route show``, all run inside the pod's namespace. Checked: the interface ``ifname`` exists, is up, has
    the result's MAC and the expected MTU; each of the result's addresses on it is there with
    its prefix length; each of the result's routes is there, via its gateway (or, for a route
    without one, via the gateway of the interface's address of that family).
    """
    problems: list[str] = []
    interfaces = list(result.get("interfaces") or [])
    index = next((i for i, iface in enumerate(interfaces)
                  if iface.get("name") == ifname and iface.get("sandbox")), None)
    if index is None:
        return [f"the cached result has no sandbox interface {ifname}"]
    link = next((entry for entry in links if entry.get("ifname") == ifname), None)
    if link is None:
        return [f"interface {ifname} does not exist in the pod namespace"]
    mac = interfaces[index].get("mac")
    if mac and str(link.get("address", "")).lower() != str(mac).lower():
        problems.append(f"{ifname} has MAC {link.get('address')}, expected {mac}")
    if "UP" not in (link.get("flags") or []):
        problems.append(f"{ifname} is down")
    if mtu is not None and link.get("mtu") != mtu:
        problems.append(f"{ifname} has MTU {link.get('mtu')}, expected {mtu}")
    present = {(a.get("local"), a.get("prefixlen")) for a in link.get("addr_info") or []}
    gateways: dict[int, str] = {}
    for ip in result.get("ips") or []:
        if ip.get("interface") != index:
            continue
        iface = ipaddress.ip_interface(ip["address"])
        if (str(iface.ip), iface.network.prefixlen) not in present:
            problems.append(f"{ifname} lacks address {ip['address']}")
        if ip.get("gateway"):
            gateways[iface.version] = str(ipaddress.ip_address(ip["gateway"]))
    observed = set()
    for family, table in routes.items():
        for route in table:
            if route.get("dev") not in (None, ifname):
                continue
            observed.add((_route_dst(str(route.get("dst", "")), family), route.get("gateway")))
    for route in result.get("routes") or []:
        dst_net = ipaddress.ip_network(route["dst"], strict=False)
        dst = str(dst_net)
        gw = route.get("gw") or gateways.get(dst_net.version)
        if gw is not None:
            gw = str(ipaddress.ip_address(gw))
        if not any(d == dst and (gw is None or g == gw) for d, g in observed):
            problems.append(f"route {dst}{' via ' + gw if gw else ''} is missing in the pod namespace")
    return problems


def prev_result_problems(prev: Mapping[str, Any], cached: Mapping[str, Any], ifname: str) -> list[str]:
    """CHECK: what the runtime's ``prevResult`` lacks of the result ADD gave for ``ifname``.

    The runtime passes the chain's final result; our sandbox interface and its addresses must
    be in it (in any position, since plugins before us shift the indices).
    """
    problems = []
    if not any(i.get("name") == ifname and i.get("sandbox") for i in prev.get("interfaces") or []):
        problems.append(f"prevResult has no sandbox interface {ifname}")
    listed = {str(ip.get("address")) for ip in prev.get("ips") or []}
    for ip in cached.get("ips") or []:
        if str(ip.get("address")) not in listed:
            problems.append(f"prevResult lacks address {ip.get('address')} that ADD gave {ifname}")
    return problems


def attachments_to_collect(
    cached: Iterable[tuple[str, str]], valid: set[tuple[str, str]]
) -> list[tuple[str, str]]:
    """GC: the cached (containerID, ifname) attachments the runtime no longer lists, sorted."""
    return sorted(a for a in set(cached) if a not in valid)
