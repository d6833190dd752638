"""The systemd units shipped with wg-py (tunnel/ops/systemd) and ``wg-py install-units``:
installed into a temporary directory and checked with ``systemd-analyze verify`` (systemd does
not run here; verify only loads and checks the units: syntax, known keys, executables)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tunnel.ops import units
from tunnel.vxlan.conf import ConfError, conf_path, parse_conf

INSTANCES = {"wg-py@.service": "wg-py@wg0.service", "wg-py-vxlan@.service": "wg-py-vxlan@vx0.service",
             "wg-py-mesh@.service": "wg-py-mesh@wg1.service", "wg-py.target": "wg-py.target"}


def verify(directory: Path, names: list[str]) -> subprocess.CompletedProcess[str]:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing (Debian's systemd package; make deps installs it)")
    return subprocess.run(["systemd-analyze", "verify", "--man=no", *names], cwd=directory, capture_output=True,
                          text=True, timeout=60, check=False)


def instances(directory: Path) -> list[str]:
    """Copy each template to an instance name (verify checks an instance's commands)."""
    for template, instance in INSTANCES.items():
        if template != instance:
            shutil.copy(directory / template, directory / instance)
    return [f"./{name}" for name in INSTANCES.values()]


def test_install_units_writes_them_with_the_command(tmp_path: Path) -> None:
    command = units.default_command()
    assert Path(command).is_absolute()
    from tunnel.cli import main

    assert main(["install-units", "--dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(units.UNITS)
    wg = (tmp_path / "wg-py@.service").read_text()
    assert f"ExecStart={command} up %i\n" in wg and f"ExecStop={command} down %i\n" in wg
    assert "EnvironmentFile=-/etc/wg-py/%i.env" in wg
    vxlan = (tmp_path / "wg-py-vxlan@.service").read_text()
    assert f"ExecStart={command} vxlan up %i\n" in vxlan and f"ExecStop={command} vxlan down %i\n" in vxlan
    mesh = (tmp_path / "wg-py-mesh@.service").read_text()
    assert f"ExecStart={command} mesh join ${{NETWORK}} %i --endpoint ${{ENDPOINT}} $MESH_ARGS\n" in mesh
    assert "EnvironmentFile=/etc/wg-py/mesh/%i.conf" in mesh
    assert all("@WGPY@" not in (tmp_path / name).read_text() for name in units.UNITS)


def test_systemd_analyze_verify_accepts_them(tmp_path: Path) -> None:
    units.install(tmp_path, units.default_command())
    done = verify(tmp_path, instances(tmp_path))
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr


def test_verify_would_see_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a bad key and a missing command are reported."""
    units.install(tmp_path, "/nonexistent/wg-py")
    path = tmp_path / "wg-py@.service"
    path.write_text(path.read_text().replace("Type=oneshot", "Type=oneshot\nExecStartt=x"))
    done = verify(tmp_path, instances(tmp_path))
    assert "Unknown key 'ExecStartt'" in done.stderr
    assert "/nonexistent/wg-py is not executable" in done.stderr and done.returncode != 0


def test_relative_command_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        units.install(tmp_path, "wg-py")


def test_vxlan_conf_format() -> None:
    text = ("# vx0\nid 42 dstport 4789\nremote 10.9.0.2 local 10.9.0.1  # the peer\n"
            "--metrics 127.0.0.1:9587\naddress 192.168.50.1/24\naddress fd50::1/64 mtu 1370\n")
    conf = parse_conf("vx0", text)
    assert conf.add == ["id", "42", "dstport", "4789", "remote", "10.9.0.2", "local", "10.9.0.1",
                        "--metrics", "127.0.0.1:9587"]
    assert conf.addresses == ["192.168.50.1/24", "fd50::1/64"] and conf.mtu == 1370
    with pytest.raises(ConfError, match="f.conf:2: mtu"):
        parse_conf("vx0", "id 1\nmtu big\n", "f.conf")
    with pytest.raises(ConfError, match="has no place"):
        parse_conf("vx0", "id 1 -f\n")
    assert conf_path("/tmp/x/vx9.conf") == ("vx9", Path("/tmp/x/vx9.conf"))
    assert conf_path("vx9")[1].name == "vx9.conf"
