"""Control sockets: one unix stream listener for both daemons (UAPI and the VXLAN control socket).

Contract of :func:`listen`: the socket file is created under umask 077 (mode 0700 for a
socket: only root, or the daemon's user, may talk to it) in a directory made with ``dir_mode``
if missing. A file
already at the path is looked at first: something that answers there is a live daemon
(``OSError(EADDRINUSE)``, nothing touched); a file that is not a socket is someone else's
(``OSError(EEXIST)``, nothing touched); a socket nobody answers on is stale and replaced. The
returned inode lets the owner tell later whether the file is still its own (a removal or a
replacement by another daemon), as wireguard-go's watcher does. Blocking calls (a connect
probe of up to ``PROBE_TIMEOUT`` seconds): run it at start-up, not on a busy event loop.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

PROBE_TIMEOUT = 1.0  # seconds a connect probe of an existing socket file may take
BACKLOG = 16

__all__ = ["BACKLOG", "PROBE_TIMEOUT", "is_alive", "listen"]


def is_alive(path: str | Path) -> bool:
    """True if something accepts connections on the unix socket ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(PROBE_TIMEOUT)
    try:
        sock.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def listen(path: str | Path, *, dir_mode: int = 0o700, blocking: bool = False) -> tuple[socket.socket, int]:
    """Bind and listen on the unix socket ``path`` (see the module doc); returns the socket (in
    ``blocking`` mode) and the inode of its file. Raises OSError; nothing is left open."""
    path = str(path)
    os.makedirs(os.path.dirname(path) or ".", mode=dir_mode, exist_ok=True)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(mode):
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
        if is_alive(path):
            raise OSError(errno.EADDRINUSE, f"{path} is in use by another process")
        try:
            os.unlink(path)  # stale: nobody listens there any more
        except FileNotFoundError:
            pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o077)
    try:
        sock.bind(path)
        inode = os.stat(path).st_ino
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    sock.setblocking(blocking)
    return sock, inode
