"""The VXLAN daemon's control socket: where it lives, its line protocol, server and client.

Socket: a unix stream socket ``RUN_DIR/NAME.sock`` (``RUN_DIR`` = ``/var/run/wg-py/vxlan``,
``WGPY_VXLAN_RUN_DIR`` overrides it), created with umask 077. The file system is shared by
every network namespace while device names are per namespace, so a daemon started in a named
namespace (``ip netns exec NS``) puts its socket in ``RUN_DIR/netns-NS/``, in another unnamed
namespace than PID 1's in ``RUN_DIR/netns-INODE/`` (of ``/proc/self/ns/net``); the CLI run in
the same namespace computes the same path.

Protocol: the client sends ONE request line, the server answers ONE JSON line and closes.

    show                                      -> {"ok": true, "show": {...}}
    fdb show                                  -> {"ok": true, "lines": ["MAC dst IP self ..."]}
    fdb add|append MAC dst IP [port P] [vni V] [via DEV]
    fdb del MAC [dst IP [port P] [vni V]]     -> {"ok": true}
    stop                                      -> {"ok": true} (then the daemon exits)

Errors: ``{"ok": false, "error": "text"}``. :func:`handle_request` is pure over the engine (no
I/O; the daemon passes ``now``) so it is tested without devices.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunnel.io import unix

from .config import parse_mac
from .engine import VxlanEngine
from .fdb import FdbFullError

RUN_DIR = Path("/var/run/wg-py/vxlan")
NETNS_DIR = "/var/run/netns"
MAX_REQUEST = 4096


def listen(path: Path) -> tuple[socket.socket, int]:
    """Listen on the control socket ``path`` (owner only, in a 0700 directory; a stale socket file
    there is replaced, a live one or a file that is not a socket refused: see
    :func:`tunnel.io.unix.listen`). Returns the non-blocking socket and the inode of its file
    (to tell later whether the file is still ours). Raises OSError; nothing is left open."""
    return unix.listen(path, dir_mode=0o700)


def run_dir() -> Path:
    """The socket directory for this process's network namespace (see module doc)."""
    base = Path(os.environ.get("WGPY_VXLAN_RUN_DIR", str(RUN_DIR)))
    try:
        mine = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return base
    try:
        if os.stat("/proc/1/ns/net").st_ino == mine:
            return base
        init_known = True
    except OSError:
        init_known = False
    try:  # a namespace named by `ip netns add NAME` (bind mounts in /var/run/netns)
        for entry in os.scandir(NETNS_DIR):
            if entry.stat().st_ino == mine:
                return base / f"netns-{entry.name}"
    except OSError:
        pass
    return base / f"netns-{mine}" if init_known else base


def socket_path(name: str) -> Path:
    return run_dir() / f"{name}.sock"


class RequestError(ValueError):
    """A malformed or failed request; its text goes back to the client."""


def _remote_options(words: list[str]) -> dict[str, Any]:
    """Parse ``dst IP [port P] [vni V] [via DEV]`` (in any order)."""
    opts: dict[str, Any] = {}
    i = 0
    while i < len(words):
        key = words[i]
        if key not in ("dst", "port", "vni", "via") or i + 1 >= len(words):
            raise RequestError(f"unexpected {' '.join(words[i:])!r}")
        value = words[i + 1]
        if key == "dst":
            opts["ip"] = value
        elif key == "via":
            opts["via"] = value
        else:
            try:
                opts[key] = int(value, 10)
            except ValueError:
                raise RequestError(f"{key} {value!r} is not a number") from None
        i += 2
    return opts


def handle_request(
    engine: VxlanEngine,
    line: str,
    now: float,
    extra: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Answer one request line (``stop`` is acknowledged here; the caller stops)."""
    words = line.split()
    try:
        if words == ["show"]:
            show = engine.show(now)
            if extra is not None:
                show.update(extra())
            return {"ok": True, "show": show}
        if words == ["stop"]:
            return {"ok": True}
        if len(words) >= 2 and words[0] == "fdb":
            return _fdb(engine, words[1], words[2:], now)
        raise RequestError(f"unknown request {line.strip()!r}")
    except (RequestError, FdbFullError, ValueError) as exc:
        return {"ok": False, "error": str(exc)}


def _fdb(engine: VxlanEngine, verb: str, args: list[str], now: float) -> dict[str, Any]:
    fdb = engine.fdb
    if verb == "show" and not args:
        return {"ok": True, "lines": fdb.show(now)}
    if verb not in ("add", "append", "del") or not args:
        raise RequestError(f"usage: fdb show | fdb add|append|del MAC dst ADDR, not {verb!r}")
    mac = parse_mac(args[0])
    opts = _remote_options(args[1:])
    if verb == "del":
        if not fdb.delete(mac, opts.pop("ip", None), **opts):
            raise RequestError("no such FDB entry")
        return {"ok": True}
    if "ip" not in opts:
        raise RequestError(f"fdb {verb} needs dst ADDR")
    ip = opts.pop("ip")
    if verb == "add":
        fdb.add(mac, ip, now=now, permanent=True, **opts)
    else:
        fdb.append(mac, ip, now=now, **opts)
    return {"ok": True}


# ---- client ----------------------------------------------------------------------------------


class ControlError(RuntimeError):
    """The daemon could not be reached or answered with an error."""


def request(name: str, line: str, timeout: float = 5.0, path: Path | None = None) -> dict[str, Any]:
    """Send ``line`` to the daemon of device ``name``; return its JSON answer (``ok`` true).
    Raises :class:`ControlError` with a user-facing message otherwise."""
    target = path or socket_path(name)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(target))
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(f"{name}: no such wg-py vxlan device (no daemon at {target})") from None
        sock.sendall(line.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise ControlError(f"{name}: control socket {target}: {exc}") from None
    finally:
        sock.close()
    try:
        answer: dict[str, Any] = json.loads(data)
    except ValueError:
        raise ControlError(f"{name}: bad answer from the daemon: {data[:200]!r}") from None
    if not answer.get("ok"):
        raise ControlError(f"{name}: {answer.get('error', 'failed')}")
    return answer


def is_alive(path: Path) -> bool:
    """True if something accepts connections on the unix socket ``path``."""
    return unix.is_alive(path)
