"""``wg-py vxlan up|down NAME|FILE``: a VXLAN device from a small configuration file, what
``wg-py-vxlan@.service`` runs (the counterpart of ``wg-py up|down`` for WireGuard).

The file: ``/etc/wg-py/vxlan/NAME.conf`` (``WGPY_VXLAN_CONF_DIR`` overrides the directory), or
any path ending in ``.conf`` (the device is named after the file). Its words are the arguments
of ``wg-py vxlan add NAME ...``, any number per line, ``#`` starting a comment, plus two keys
applied once the device exists, as wg-quick applies Address and MTU:

    # /etc/wg-py/vxlan/vx0.conf
    id 42 dstport 4789
    remote 10.9.0.2 local 10.9.0.1    # the peer's and our WireGuard tunnel addresses
    --metrics 127.0.0.1:9587
    address 192.168.50.1/24           # repeatable
    mtu 1370

``up`` starts the daemon (it detaches once ready), sets the MTU, adds the addresses and sets
the link up; if any step fails the device is deleted again and the status is 1. ``down``
stops the daemon (the device goes with it). Parsing (:func:`parse_conf`) is pure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CONF_DIR = Path("/etc/wg-py/vxlan")


class ConfError(ValueError):
    """A bad configuration file (the message names the file and line)."""


@dataclass
class VxlanConf:
    """What a configuration file asks for: the ``add`` arguments, addresses, MTU."""

    name: str
    add: list[str] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    mtu: int | None = None


def conf_path(target: str) -> tuple[str, Path]:
    """``NAME`` -> (NAME, CONF_DIR/NAME.conf); ``PATH.conf`` -> (stem, PATH)."""
    if "/" in target or target.endswith(".conf"):
        path = Path(target)
        return path.name.removesuffix(".conf"), path
    directory = Path(os.environ.get("WGPY_VXLAN_CONF_DIR", str(CONF_DIR)))
    return target, directory / f"{target}.conf"


def parse_conf(name: str, text: str, source: str = "config") -> VxlanConf:
    """The configuration in ``text`` for device ``name``. Raises :class:`ConfError`."""
    conf = VxlanConf(name)
    for number, raw in enumerate(text.splitlines(), 1):
        words = raw.split("#", 1)[0].split()
        i = 0
        while i < len(words):
            word = words[i]
            if word in ("address", "mtu"):
                if i + 1 >= len(words):
                    raise ConfError(f"{source}:{number}: {word} needs a value")
                value = words[i + 1]
                if word == "address":
                    conf.addresses.append(value)
                elif not value.isdigit() or not 68 <= int(value) <= 65535:
                    raise ConfError(f"{source}:{number}: mtu {value!r} is not a number in 68..65535")
                else:
                    conf.mtu = int(value)
                i += 2
                continue
            if word in ("-f", "--foreground"):
                raise ConfError(f"{source}:{number}: {word} has no place in a configuration file")
            conf.add.append(word)
            i += 1
    return conf


def load(target: str) -> VxlanConf:
    name, path = conf_path(target)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_conf(name, text, str(path))


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise ConfError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")


def up(args: Sequence[str], add: Callable[[list[str]], int] | None = None) -> int:
    """``up NAME|FILE``; ``add`` runs the ``add`` command (default: this package's command
    line; the L2 overlay's front passes its own, which runs the endpoint inside a wg-py
    WireGuard daemon when ``dev`` is one)."""
    from .cli import main as vxlan_main
    from .cli import parse_add, split_metrics

    if len(args) != 1:
        print("usage: wg-py vxlan up NAME|FILE.conf", file=sys.stderr)
        return 1
    try:
        conf = load(args[0])
        words, _ = split_metrics([conf.name, *conf.add])
        parse_add(words)  # bad arguments create nothing
    except ValueError as exc:  # ConfError, cli.UsageError
        print(f"wg-py vxlan up: {exc}", file=sys.stderr)
        return 1
    code = (add or vxlan_main)(["add", conf.name, *conf.add])
    if code != 0:
        return code
    try:
        if conf.mtu is not None:
            _ip("link", "set", "dev", conf.name, "mtu", str(conf.mtu))
        for address in conf.addresses:
            _ip("address", "add", address, "dev", conf.name)
        _ip("link", "set", "dev", conf.name, "up")
    except (ConfError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"wg-py vxlan up: {exc}", file=sys.stderr)
        vxlan_main(["del", conf.name])
        return 1
    return 0


def down(args: Sequence[str]) -> int:
    from .cli import main as vxlan_main

    if len(args) != 1:
        print("usage: wg-py vxlan down NAME|FILE.conf", file=sys.stderr)
        return 1
    name, _ = conf_path(args[0])
    return vxlan_main(["del", name])
