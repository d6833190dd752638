"""The ``wg-py`` command: a dispatcher over the subcommands.

``wg-py [-f|--foreground] IFACE``        run the WireGuard daemon (like ``wireguard-go IFACE``)
``wg-py genkey|pubkey|genpsk``           keys, interchangeable with ``wg genkey|pubkey|genpsk``
``wg-py up|down NAME|FILE``              bring an interface up/down from a wg-quick file
``wg-py vxlan ...``                      the VXLAN endpoint
``wg-py show [IFACE] [--json]``          wg show plus rates, drops, offloads, twins
``wg-py top [--once [--json]]``          live per-peer view of every wg-py interface
``wg-py install-units [--dir DIR]``      copy the systemd service units
``wg-py mesh ...``                       the self-configuring mesh (see tunnel/mesh/cli.py)
``wg-py bench``                          benchmarks against the references
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Any

from crypto import keys

USAGE = """usage: wg-py [-f|--foreground] [--metrics ADDR:PORT] [--workers N] INTERFACE-NAME
       wg-py genkey | pubkey | genpsk
       wg-py up | down CONFIG-NAME|CONFIG-FILE
       wg-py vxlan add|del|show|fdb ...
       wg-py show [INTERFACE] [--json]
       wg-py top [--interval S] [--once [--json]]
       wg-py install-units [--dir DIR]
       wg-py mesh init|join|status ...
       wg-py bench [options]
       wg-py --version
"""


def _genkey() -> int:
    print(keys.to_base64(keys.generate_private()))
    return 0


def _genpsk() -> int:
    print(keys.to_base64(keys.generate_preshared()))
    return 0


def _pubkey() -> int:
    text = sys.stdin.read()
    try:
        private = keys.from_base64(text)
    except ValueError:
        print("wg-py pubkey: Key is not the correct length or format", file=sys.stderr)
        return 1
    print(keys.to_base64(keys.public_from_private(private)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0 if args else 1
    command, rest = args[0], args[1:]
    if command in ("genkey", "genpsk", "pubkey"):
        if rest:
            print(f"usage: wg-py {command}", file=sys.stderr)
            return 1
        return {"genkey": _genkey, "genpsk": _genpsk, "pubkey": _pubkey}[command]()
    if command in ("--version", "version"):
        from importlib.metadata import version

        print(f"wg-py v{version('wg-py')}")
        return 0
    if command in ("up", "down"):
        return _run("tunnel.wireguard.quick", command, rest)
    if command == "vxlan":  # `add ... dev WGIFACE` of a wg-py interface runs inside its daemon
        return _run("tunnel.overlay.cli", rest)
    if command == "mesh":
        return _run("tunnel.mesh.cli", rest)
    if command == "bench":
        return _run("tunnel.lab.bench", rest)
    if command == "show":
        return _run("tunnel.ops.show", rest)
    if command == "top":
        return _run("tunnel.ops.top", rest)
    if command == "install-units":
        return _run("tunnel.ops.units", rest)
    from tunnel.overlay.cli import EXTENSIONS

    return _run_daemon(args, EXTENSIONS)


def _run_daemon(args: list[str], extensions: dict[str, Any]) -> int:
    """The WireGuard daemon, with the requests it serves beyond UAPI (the L2 overlay)."""
    from tunnel.wireguard.daemon import main as daemon_main

    return daemon_main(args, extensions)


def _run(module_name: str, *args: object) -> int:
    """Import a subcommand's module only when it is used, so `wg-py genkey` stays light."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(f"wg-py: {module_name} is not part of this build", file=sys.stderr)
        return 1
    return int(module.main(*args))


if __name__ == "__main__":
    sys.exit(main())
