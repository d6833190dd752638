"""``wg-py vxlan ...`` with the L2 overlay: ``add ... dev WGIFACE`` of a wg-py WireGuard interface
runs the endpoint inside WGIFACE's daemon; everything else is ``tunnel.vxlan.cli`` unchanged.

    wg-py vxlan add NAME id VNI [dstport PORT] [remote ADDR] [local ADDR] dev WGIFACE ...

WGIFACE is a wg-py interface when its UAPI socket (``/var/run/wireguard/WGIFACE.sock``) answers
wg-py's ``stats=1``. Then the command sends the daemon one wg-py-only UAPI request,
``ext=vxlan add NAME ... local ADDR dev WGIFACE`` (see ``tunnel/wireguard/uapi_session.py``), and
the daemon creates the TAP NAME and serves its usual VXLAN control socket, so ``show``, ``fdb``
and ``del`` work as for any wg-py VXLAN device. ``local`` defaults to WGIFACE's first address
(of the remote's family when ``remote`` is given, else IPv4 first). ``-f`` and ``--metrics``
are for a separate daemon and are refused here. For any other ``dev`` (a kernel WireGuard
interface, wireguard-go, a plain NIC) a separate VXLAN daemon is started as before.

:data:`EXTENSIONS` are the daemon's handlers (given to ``tunnel.wireguard.daemon.main`` by
``tunnel/cli.py``). ``wg-py vxlan up NAME|FILE.conf`` (``tunnel/vxlan/conf.py``) runs its
``add`` through this front too, so a config file with ``dev WGIFACE`` also runs inside.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from tunnel.vxlan import cli as vxlan_cli
from tunnel.vxlan.cli import UsageError, parse_add, split_metrics
from tunnel.wireguard.quick import uapi_call, uapi_socket

if TYPE_CHECKING:  # the daemon's side; the command line does not load the engine
    from tunnel.wireguard.interface import Interface

UAPI_TIMEOUT = 10.0


def _vxlan(interface: Interface, words: list[str]) -> dict[str, Any]:
    from .endpoint import handle

    return handle(interface, words)


EXTENSIONS = {"vxlan": _vxlan}


def wgpy_stats(iface: str) -> dict[str, Any] | None:
    """WGIFACE's ``stats=1`` answer if it is a wg-py interface here, else None."""
    if not os.path.exists(uapi_socket(iface)):
        return None
    try:
        lines, code = uapi_call(iface, "stats=1\n\n", UAPI_TIMEOUT)
    except Exception:
        return None
    if code != 0:
        return None
    for line in lines:
        if line.startswith("json="):
            try:
                stats: dict[str, Any] = json.loads(line[5:])
            except ValueError:
                return None
            return stats if stats.get("kind") == "wireguard" else None
    return None


def interface_addresses(iface: str) -> list[str]:
    """The addresses of ``iface`` (``ip -j addr show``), in the order ``ip`` lists them."""
    result = subprocess.run(["ip", "-j", "addr", "show", "dev", iface], capture_output=True, text=True,
                            timeout=10, check=False)
    if result.returncode != 0:
        return []
    try:
        links = json.loads(result.stdout or "[]")
    except ValueError:
        return []
    return [info["local"] for link in links for info in link.get("addr_info", [])
            if info.get("family") in ("inet", "inet6") and info.get("scope") != "link" and "local" in info]


def default_local(iface: str, remote: str | None) -> str:
    """WGIFACE's first address of ``remote``'s family (IPv4 first without a remote)."""
    addresses = interface_addresses(iface)
    if remote is not None:
        version = ipaddress.ip_address(remote).version
        addresses = [a for a in addresses if ipaddress.ip_address(a).version == version]
    else:
        addresses.sort(key=lambda a: ipaddress.ip_address(a).version)
    if not addresses:
        raise UsageError(f"dev {iface} has no address to use as local; give local ADDR")
    return addresses[0]


def add_inside(iface: str, words: list[str]) -> int:
    """Ask WGIFACE's daemon to run the endpoint (``words``: the add arguments)."""
    config, foreground = parse_add(words)
    if foreground:
        raise UsageError("-f runs a separate daemon; the endpoint runs inside the wg-py daemon of dev")
    if config.local is None:
        words = [*words, "local", default_local(iface, config.remote)]
    request = "ext=vxlan add " + " ".join(words) + "\n\n"
    if "\n" in " ".join(words):
        raise UsageError("arguments may not contain newlines")
    lines, code = uapi_call(iface, request, UAPI_TIMEOUT)
    if code != 0:
        print(f"wg-py vxlan add: {iface}: the daemon refused the request (errno {code})", file=sys.stderr)
        return 1
    for line in lines:
        if line.startswith("json="):
            answer = json.loads(line[5:])
            if answer.get("ok"):
                return 0
            error = str(answer.get("error", "failed"))
            if error.startswith("unknown request"):  # a daemon without the overlay's handlers
                error = (f"{iface}: its daemon runs without the L2 overlay (python -m tunnel.wireguard.daemon"
                         " has no overlay: start it with wg-py or python -m tunnel)")
            print(f"wg-py vxlan add: {error}", file=sys.stderr)
            return 1
    print(f"wg-py vxlan add: {iface}: no answer from the daemon", file=sys.stderr)
    return 1


def main(args: list[str]) -> int:
    """``wg-py vxlan ...`` (see module doc); returns the exit status."""
    if args and args[0] == "add":
        try:
            words, metrics = split_metrics(args[1:])
            config, _ = parse_add(words)
            if config.dev is not None and wgpy_stats(config.dev) is not None:
                if metrics is not None:
                    raise UsageError("--metrics is for a separate daemon (the wg-py daemon of dev serves its own)")
                return add_inside(config.dev, words)
        except UsageError as exc:
            print(f"wg-py vxlan add: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"wg-py vxlan add: {exc}", file=sys.stderr)
            return 1
    if args and args[0] == "up":  # a config file's add goes through this front too
        from tunnel.vxlan.conf import up

        return up(args[1:], main)
    return vxlan_cli.main(args)
