"""``wg-py install-units [--dir DIR] [--wg-py PATH]``: copy the systemd units shipped with wg-py.

The units (package data in ``tunnel/ops/systemd/``): ``wg-py@.service`` (``wg-py up|down %i``
from /etc/wireguard/%i.conf), ``wg-py-vxlan@.service`` (``wg-py vxlan up|down %i`` from
/etc/wg-py/vxlan/%i.conf), ``wg-py-mesh@.service`` (``wg-py mesh join`` from the environment
file /etc/wg-py/mesh/%i.conf) and ``wg-py.target``. ``@WGPY@`` in them becomes the absolute path
of the ``wg-py`` command (the one next to this interpreter, unless ``--wg-py`` names another),
since systemd wants absolute paths and wg-py often lives in a virtual environment. DIR defaults
to /etc/systemd/system; run ``systemctl daemon-reload`` afterwards.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

DEFAULT_DIR = Path("/etc/systemd/system")
UNITS = ("wg-py@.service", "wg-py-vxlan@.service", "wg-py-mesh@.service", "wg-py.target")


def default_command() -> str:
    """The ``wg-py`` script beside this interpreter (a venv's bin), else the first on PATH."""
    beside = Path(sys.executable).parent / "wg-py"
    if os.access(beside, os.X_OK):
        return str(beside)
    import shutil

    found = shutil.which("wg-py")
    return str(Path(found).resolve()) if found else "/usr/local/bin/wg-py"


def unit_text(name: str, command: str) -> str:
    """The text of unit ``name`` with ``@WGPY@`` replaced by ``command``."""
    text = resources.files("tunnel.ops").joinpath("systemd", name).read_text()
    return text.replace("@WGPY@", command)


def install(directory: Path, command: str) -> list[Path]:
    """Write every unit into ``directory`` (created if needed); returns the paths written."""
    if not os.path.isabs(command):
        raise ValueError(f"the wg-py command must be an absolute path, not {command!r}")
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in UNITS:
        path = directory / name
        path.write_text(unit_text(name, command))
        path.chmod(0o644)
        written.append(path)
    return written


def main(args: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="wg-py install-units", description="Install wg-py's systemd units.")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"where to write them (default {DEFAULT_DIR})")
    parser.add_argument("--wg-py", dest="command", default=None, help="absolute path of wg-py in the units")
    options = parser.parse_args(list(args))
    try:
        written = install(options.dir, options.command or default_command())
    except (OSError, ValueError) as exc:
        print(f"wg-py install-units: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    if options.dir == DEFAULT_DIR:
        print("now run: systemctl daemon-reload", file=sys.stderr)
    return 0
