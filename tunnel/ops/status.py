"""Reading the running daemons' stats: WireGuard interfaces over their UAPI socket (the
``stats=1`` extension, tunnel/wireguard/uapi_session.py), VXLAN devices over their control
socket (``show``, tunnel/vxlan/control.py).

Discovery: a WireGuard daemon's socket is ``/var/run/wireguard/IFACE.sock`` (the directory is
shared by every network namespace, as for ``wg show``); a VXLAN daemon's is in this namespace's
run directory (:func:`tunnel.vxlan.control.run_dir`). A socket that does not answer in
``timeout`` seconds, or a WireGuard daemon that is not wg-py (wireguard-go closes the connection
on ``stats=1`` without an errno), is left out of :func:`collect` and reported as an error by the single look-ups.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tunnel.vxlan.control import ControlError, request, run_dir
from tunnel.wireguard.quick import QuickError, uapi_call
from tunnel.wireguard.uapi_server import SOCKET_DIR

TIMEOUT = 2.0


class StatusError(RuntimeError):
    """An interface could not be read (the message is for the user)."""


def wireguard_names() -> list[str]:
    """Names of the UAPI sockets in /var/run/wireguard (any implementation)."""
    from pathlib import Path

    try:
        return sorted(p.name[: -len(".sock")] for p in Path(SOCKET_DIR).glob("*.sock"))
    except OSError:
        return []


def vxlan_names() -> list[str]:
    """Names of the wg-py VXLAN devices of this network namespace."""
    try:
        return sorted(p.name[: -len(".sock")] for p in run_dir().glob("*.sock"))
    except OSError:
        return []


def wireguard_stats(name: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    """The ``stats=1`` answer of wg-py interface ``name``. Raises :class:`StatusError`."""
    try:
        lines, code = uapi_call(name, "stats=1\n\n", timeout=timeout)
    except OSError as exc:
        raise StatusError(f"{name}: no WireGuard daemon answers ({exc})") from None
    except QuickError:  # wireguard-go closes the connection on an operation it does not know
        raise StatusError(f"{name}: not a wg-py daemon (it does not answer stats=1)") from None
    if code != 0:
        raise StatusError(f"{name}: not a wg-py daemon (stats=1 refused with errno {code})")
    for line in lines:
        if line.startswith("json="):
            try:
                stats: dict[str, Any] = json.loads(line[len("json="):])
            except ValueError:
                break
            return stats
    raise StatusError(f"{name}: malformed stats answer")


def vxlan_stats(name: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    """A VXLAN device's ``show`` answer reshaped like the WireGuard stats (``interface``,
    ``kind``, ``remotes``, ``drops``, ...). Raises :class:`StatusError`."""
    try:
        show: dict[str, Any] = request(name, "show", timeout=timeout)["show"]
    except ControlError as exc:
        raise StatusError(str(exc)) from None
    stats: dict[str, Any] = dict(show.get("stats", {}))
    stats.update({
        "interface": name, "kind": "vxlan", "vni": show.get("config", {}).get("vni"),
        "mtu": show.get("mtu"), "fdb": len(show.get("fdb", [])),
        "implementation": {"datapath": show.get("datapath"), "batch_io": show.get("io"),
                           "sender": show.get("sender")},
        "offloads": {"tap": show.get("offloads")},
    })
    return stats


@dataclass
class Snapshot:
    """Every readable interface at one moment: ``wireguard`` and ``vxlan`` stats by name."""

    wireguard: dict[str, dict[str, Any]] = field(default_factory=dict)
    vxlan: dict[str, dict[str, Any]] = field(default_factory=dict)


def collect(timeout: float = TIMEOUT) -> Snapshot:
    """Read every wg-py interface of the host (WireGuard) and namespace (VXLAN), skipping the
    ones that do not answer or are not wg-py."""
    snap = Snapshot()
    for name in wireguard_names():
        try:
            snap.wireguard[name] = wireguard_stats(name, timeout)
        except StatusError:
            continue
    for name in vxlan_names():
        try:
            snap.vxlan[name] = vxlan_stats(name, timeout)
        except StatusError:
            continue
    return snap
