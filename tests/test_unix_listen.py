"""tunnel.io.unix: the control-socket listener shared by the UAPI server and the VXLAN daemon."""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

import pytest

from tunnel.io import unix
from tunnel.vxlan import control
from tunnel.wireguard import uapi_server


def test_listen_creates_a_private_socket_and_reports_its_inode(tmp_path: Path) -> None:
    path = tmp_path / "run" / "a.sock"
    sock, inode = unix.listen(path, dir_mode=0o750)
    try:
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode) and st.st_ino == inode
        assert stat.S_IMODE(st.st_mode) == 0o700  # a socket gets 0777 & ~umask 077: owner only
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o750
        assert not sock.getblocking()
        assert unix.is_alive(path)
    finally:
        sock.close()


def test_a_live_socket_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "b.sock"
    first, inode = unix.listen(path)
    try:
        with pytest.raises(OSError) as info:
            unix.listen(path)
        assert info.value.errno == errno.EADDRINUSE
        assert os.stat(path).st_ino == inode and unix.is_alive(path)
    finally:
        first.close()


def test_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # bound, never listening: connect() is refused
    dead.close()
    assert not unix.is_alive(path)
    sock, inode = unix.listen(path, blocking=True)
    try:
        assert sock.getblocking() and unix.is_alive(path)
        assert os.stat(path).st_ino == inode  # (a file system may reuse the old inode number)
    finally:
        sock.close()


def test_a_file_that_is_not_a_socket_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "d.sock"
    path.write_text("someone else's")
    with pytest.raises(OSError) as info:
        unix.listen(path)
    assert info.value.errno == errno.EEXIST
    assert path.read_text() == "someone else's"


def test_both_daemons_listen_through_it(tmp_path: Path) -> None:
    """The UAPI socket (0755 directory, blocking) and the VXLAN control socket (0700, non-blocking)."""
    uapi, uapi_ino = uapi_server.listen_socket("wgpyt0", str(tmp_path / "wireguard"))
    vx, vx_ino = control.listen(tmp_path / "vxlan" / "vx0.sock")
    try:
        assert uapi.getblocking() and not vx.getblocking()
        assert stat.S_IMODE(os.stat(tmp_path / "wireguard").st_mode) == 0o755
        assert stat.S_IMODE(os.stat(tmp_path / "vxlan").st_mode) == 0o700
        assert os.stat(tmp_path / "wireguard" / "wgpyt0.sock").st_ino == uapi_ino
        assert control.is_alive(tmp_path / "vxlan" / "vx0.sock")
        with pytest.raises(OSError) as info:
            uapi_server.listen_socket("wgpyt0", str(tmp_path / "wireguard"))
        assert info.value.errno == errno.EADDRINUSE
        assert vx_ino == os.stat(tmp_path / "vxlan" / "vx0.sock").st_ino
    finally:
        uapi.close()
        vx.close()
