"""``wg-py vxlan ...``: the VXLAN commands, in the words of ``ip link add ... type vxlan`` and
``bridge fdb``. ``tunnel/cli.py`` calls :func:`main` with the words after ``vxlan``.

    wg-py vxlan add NAME id VNI [dstport PORT] [remote ADDR | group ADDR] [local ADDR]
                    [dev IFACE] [srcport MIN MAX] [ttl N|auto] [ageing SECONDS]
                    [maxaddress N] [workers N] [[no]learning] [[no]proxy] [[no]udpcsum] [-f|--foreground]
                    [--metrics ADDR:PORT]
    wg-py vxlan del NAME
    wg-py vxlan up|down NAME|FILE.conf     (tunnel/vxlan/conf.py: the add arguments from a file)
    wg-py vxlan show NAME [--json]
    wg-py vxlan fdb show NAME
    wg-py vxlan fdb add|append|del NAME MAC [dst ADDR] [port PORT] [vni VNI] [via IFACE]
    (``fdb add|append|del MAC NAME ...``, bridge fdb's order, is taken too)

Exit status 0 on success, 1 with a message on stderr otherwise (bad arguments create nothing).
Parsing (:func:`parse_add`) is pure; everything else talks to the daemon's control socket.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from tunnel.runtime.report import runtime_line

from .config import MAX_WORKERS, VxlanConfig, parse_mac
from .control import ControlError, request, socket_path

USAGE = """usage: wg-py vxlan add NAME id VNI [dstport PORT] [remote ADDR | group ADDR] [local ADDR]
                       [dev IFACE] [srcport MIN MAX] [ttl N|auto] [ageing SECONDS]
                       [maxaddress N] [workers N] [[no]learning] [[no]proxy] [[no]udpcsum] [-f|--foreground]
                       [--metrics ADDR:PORT]
       wg-py vxlan del NAME
       wg-py vxlan up|down NAME|FILE.conf
       wg-py vxlan show NAME [--json]
       wg-py vxlan fdb show NAME
       wg-py vxlan fdb add|append|del NAME MAC [dst ADDR] [port PORT] [vni VNI] [via IFACE]
"""

STOP_TIMEOUT = 10.0


class UsageError(ValueError):
    """Bad command-line arguments (the message is printed as is)."""


def check_name(name: str) -> str:
    """A Linux interface name: 1..15 bytes, no '/', ':' or whitespace, not '.' or '..'."""
    if not 0 < len(name.encode()) <= 15 or name in (".", "..") or any(
        c in name for c in "/: \t\n"
    ):
        raise UsageError(f"invalid device name {name!r}")
    return name


def _int(key: str, value: str, lo: int, hi: int) -> int:
    try:
        n = int(value, 10)
    except ValueError:
        raise UsageError(f"{key}: {value!r} is not a number") from None
    if not lo <= n <= hi:
        raise UsageError(f"{key}: {n} out of range {lo}..{hi}")
    return n


_FLAGS = {
    "learning": ("learning", True),
    "nolearning": ("learning", False),
    "proxy": ("proxy", True),
    "noproxy": ("proxy", False),
    "udpcsum": ("udpcsum", True),
    "noudpcsum": ("udpcsum", False),
}


def parse_add(args: Sequence[str]) -> tuple[VxlanConfig, bool]:
    """``NAME id VNI ...`` -> (configuration, foreground). Raises :class:`UsageError`."""
    words = [w for w in args if w not in ("-f", "--foreground")]
    foreground = len(words) != len(args)
    if not words:
        raise UsageError("add needs a device NAME")
    name = check_name(words[0])
    opts: dict[str, Any] = {"name": name}
    i = 1

    def value(count: int = 1) -> list[str]:
        got = words[i + 1 : i + 1 + count]
        if len(got) != count:
            raise UsageError(f"{words[i]} needs {count} argument{'s' if count > 1 else ''}")
        return got

    while i < len(words):
        key = words[i]
        if key in _FLAGS:
            field, on = _FLAGS[key]
            opts[field] = on
            i += 1
            continue
        if key in ("id", "vni"):
            opts["vni"] = _int(key, value()[0], 0, (1 << 24) - 1)
        elif key == "dstport":
            opts["dstport"] = _int(key, value()[0], 1, 65535)
        elif key in ("remote", "group", "local"):
            opts[key] = value()[0]
        elif key == "dev":
            opts["dev"] = check_name(value()[0])
        elif key in ("srcport", "port"):
            lo, hi = value(2)
            opts["srcport"] = (_int(key, lo, 1, 65535), _int(key, hi, 1, 65535))
            i += 3
            continue
        elif key in ("ttl", "hoplimit"):
            v = value()[0]
            opts["ttl"] = 0 if v == "auto" else _int(key, v, 1, 255)
        elif key == "ageing":
            opts["ageing"] = float(_int(key, value()[0], 0, 1 << 31))
        elif key == "maxaddress":
            opts["maxaddress"] = _int(key, value()[0], 0, 1 << 31)
        elif key == "workers":
            opts["workers"] = _int(key, value()[0], 1, MAX_WORKERS)
        else:
            raise UsageError(f"unknown option {key!r}")
        i += 2
    if "vni" not in opts:
        raise UsageError("add needs id VNI")
    if "group" in opts and "dev" not in opts:
        raise UsageError("group needs dev IFACE (the device to join the group on)")
    try:
        config = VxlanConfig(**opts)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return config, foreground


# ---- commands --------------------------------------------------------------------------------


def split_metrics(args: Sequence[str]) -> tuple[list[str], str | None]:
    """Take ``--metrics ADDR:PORT`` (or ``--metrics=ADDR:PORT``) out of ``args``: the rest and
    the address (None if absent; ``WGPY_METRICS`` is read by the daemon). Raises UsageError."""
    rest: list[str] = []
    address: str | None = None
    words = list(args)
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--metrics":
            if i + 1 >= len(words):
                raise UsageError("--metrics needs ADDR:PORT")
            address = words[i + 1]
            i += 2
            continue
        if word.startswith("--metrics="):
            address = word.split("=", 1)[1]
        else:
            rest.append(word)
        i += 1
    return rest, address


def _add(args: Sequence[str]) -> int:
    words, metrics = split_metrics(args)
    config, foreground = parse_add(words)
    from .daemon import start

    return start(config, foreground, metrics)


def _del(args: Sequence[str]) -> int:
    if len(args) != 1:
        raise UsageError("usage: wg-py vxlan del NAME")
    name = check_name(args[0])
    path = socket_path(name)
    request(name, "stop")
    deadline = time.monotonic() + STOP_TIMEOUT
    while path.exists():
        if time.monotonic() >= deadline:
            raise ControlError(f"{name}: the daemon did not stop within {STOP_TIMEOUT:.0f}s")
        time.sleep(0.05)
    return 0


def _show(args: Sequence[str]) -> int:
    words = [w for w in args if w not in ("--json", "-j")]
    if len(words) != 1:
        raise UsageError("usage: wg-py vxlan show NAME [--json]")
    name = check_name(words[0])
    show = request(name, "show")["show"]
    if len(words) != len(args):
        print(json.dumps(show, indent=2))
    else:
        sys.stdout.write(render_show(show))
    return 0


def render_show(show: dict[str, Any]) -> str:
    """The text form of ``show``: configuration, counters, drops by reason, FDB."""
    cfg = show["config"]
    parts = [f"{show['name']}: vxlan id {cfg['vni']}"]
    for key in ("remote", "group", "local", "dev"):
        if cfg.get(key):
            parts.append(f"{key} {cfg[key]}")
    parts.append(f"dstport {cfg['dstport']}")
    parts.append("srcport {} {}".format(*cfg["srcport"]))
    parts.append(f"ttl {cfg['ttl'] or 'auto'}")
    parts.append(f"ageing {cfg['ageing']:g}")
    if cfg.get("maxaddress"):
        parts.append(f"maxaddress {cfg['maxaddress']}")
    if cfg.get("workers", 1) > 1:
        parts.append(f"workers {cfg['workers']}")
    parts.append("learning" if cfg["learning"] else "nolearning")
    if cfg.get("proxy"):
        parts.append("proxy")
    parts.append("udpcsum" if cfg["udpcsum"] else "noudpcsum")
    lines = [" ".join(parts)]
    lines.append(
        f"  address {show.get('own_mac')} mtu {show.get('mtu')} pid {show.get('pid')} "
        f"source port {show.get('source_port')}"
    )
    st = show["stats"]
    partial = show.get("rx_csum_partial")
    tso = show.get("rx_tso_frames")
    lines.append(f"  rx: {st['rx_packets']} packets {st['rx_bytes']} bytes"
                 + (f", {partial} partial checksums completed" if partial else "")
                 + (f", {tso} oversized TCP frames segmented" if tso else ""))
    lines.append(f"  tx: {st['tx_packets']} packets {st['tx_bytes']} bytes")
    workers = show.get("workers") or []
    if len(workers) > 1:
        lines.append("  workers: " + ", ".join(
            f"#{i} tx {w['tx_frames']} rx {w['rx_frames']}" for i, w in enumerate(workers)))
    lines.append(
        f"  fdb: {st['fdb_entries']} entries, learned {st['fdb_learned']} migrated "
        f"{st['fdb_migrated']} evicted {st['fdb_evicted']} aged {st['fdb_aged']}"
    )
    runtime = runtime_line(show.get("gc"), show.get("sched"))  # WGPY_GC, WGPY_SLICE (tunnel/runtime)
    if runtime:
        lines.append(f"  {runtime}")
    drops = show.get("drops") or {}
    lines.append("  drops: " + (", ".join(f"{k} {v}" for k, v in drops.items()) or "none"))
    lines.extend(f"  {line}" for line in show.get("fdb_lines", []))
    return "\n".join(lines) + "\n"


def _fdb(args: Sequence[str]) -> int:
    if len(args) < 2:
        raise UsageError("usage: wg-py vxlan fdb show NAME | fdb add|append|del NAME MAC dst ADDR")
    if len(args) >= 3 and ":" in args[1]:
        # bridge fdb's order, ``fdb append MAC NAME dst ...``: a MAC is never a device name
        args = [args[0], args[2], args[1], *args[3:]]
    verb, name = args[0], check_name(args[1])
    if verb == "show":
        if len(args) != 2:
            raise UsageError("usage: wg-py vxlan fdb show NAME")
        for line in request(name, "fdb show")["lines"]:
            print(line)
        return 0
    if verb not in ("add", "append", "del"):
        raise UsageError(f"unknown fdb command {verb!r}")
    rest = list(args[2:])
    if not rest:
        raise UsageError(f"fdb {verb} needs a MAC")
    try:
        parse_mac(rest[0])
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if verb != "del" and "dst" not in rest[1:]:
        raise UsageError(f"fdb {verb} needs dst ADDR")
    request(name, " ".join(["fdb", verb, *rest]))
    return 0


def _up(args: Sequence[str]) -> int:
    from .conf import up

    return up(args)


def _down(args: Sequence[str]) -> int:
    from .conf import down

    return down(args)


COMMANDS = {"add": _add, "del": _del, "delete": _del, "show": _show, "fdb": _fdb, "up": _up, "down": _down}


def main(args: list[str]) -> int:
    """Run one ``wg-py vxlan`` command; returns the exit status."""
    if not args or args[0] in ("-h", "--help", "help"):
        (sys.stdout if args else sys.stderr).write(USAGE)
        return 0 if args else 1
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"wg-py vxlan: unknown command {args[0]!r}", file=sys.stderr)
        sys.stderr.write(USAGE)
        return 1
    try:
        return command(args[1:])
    except UsageError as exc:
        print(f"wg-py vxlan {args[0]}: {exc}", file=sys.stderr)
        return 1
    except ControlError as exc:
        print(f"wg-py vxlan {args[0]}: {exc}", file=sys.stderr)
        return 1
