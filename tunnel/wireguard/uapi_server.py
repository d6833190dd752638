"""The UAPI socket: ``/var/run/wireguard/IFACE.sock``, an asyncio unix stream server.

Framing and semantics live in :mod:`tunnel.wireguard.uapi` (sans-I/O
:class:`~tunnel.wireguard.uapi_session.UapiSession`);
this module owns the socket file: created under umask 077 in a 0755 directory, a stale socket
(exists but refuses connections) replaced, a live one refused. :meth:`UapiServer.intact` tells
the daemon whether the file is still ours (same inode), as wireguard-go's watcher does, so that
removing the socket shuts the daemon down.

Concurrency: one operation at a time per interface (``host.uapi_lock``), held while a ``get``
reply streams out with ``drain()`` so a huge configuration is listed consistently without
buffering it all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Any, Protocol

from tunnel.io import unix
from tunnel.wireguard.uapi import UapiTarget
from tunnel.wireguard.uapi_session import UapiSession

log = logging.getLogger(__name__)

SOCKET_DIR = "/var/run/wireguard"
READ_SIZE = 64 << 10
HIGH_WATER = 256 << 10  # drain a get reply once this much is buffered


class UapiHost(UapiTarget, Protocol):
    """What the server needs of the interface besides the configuration calls."""

    uapi_lock: asyncio.Lock

    def send_keepalives(self, public_keys: list[bytes]) -> None:
        """Send a keepalive now to each peer (its persistent keepalive was just switched on)."""

    def uapi_begin(self) -> None:
        """Called before every operation, under the lock: bring the engine's state up to date."""

    def uapi_applied(self) -> None:
        """Called after every operation: re-arm timers, pick up configuration changes."""

    def stats(self) -> dict[str, Any]:
        """The ``stats=1`` answer (see tunnel/wireguard/uapi_session.py), JSON-ready."""

    def extension(self, words: str) -> dict[str, Any]:
        """The ``ext=WORDS`` answer (see tunnel/wireguard/uapi_session.py), JSON-ready."""


def socket_path(name: str, directory: str = SOCKET_DIR) -> str:
    return os.path.join(directory, f"{name}.sock")


def listen_socket(name: str, directory: str = SOCKET_DIR) -> tuple[socket.socket, int]:
    """Create, bind and listen on the interface's UAPI socket (owner only, in a 0755 directory, as
    wireguard-go's; a stale socket file replaced: :func:`tunnel.io.unix.listen`); returns it
    (blocking mode) and the inode of the socket file as created, so a later removal or
    replacement can be told apart.

    Raises OSError(EADDRINUSE) if another process answers on that path, OSError(EEXIST) if the
    path is taken by a file that is not a socket.
    """
    return unix.listen(socket_path(name, directory), dir_mode=0o755, blocking=True)


class UapiServer:
    """Serves UAPI connections for one interface on an already bound listening socket."""

    def __init__(self, sock: socket.socket, path: str, inode: int, host: UapiHost) -> None:
        self.sock = sock
        self.path = path
        self.host = host
        self._inode = inode  # of the file listen_socket created
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.sock.setblocking(False)
        self._server = await asyncio.start_unix_server(self._serve, sock=self.sock)

    def intact(self) -> bool:
        """True while the socket file exists and is the one we created (same inode)."""
        try:
            return os.stat(self.path).st_ino == self._inode
        except OSError:
            return False

    async def close(self) -> None:
        """Stop listening, close connections, and remove the socket file if it is still ours."""
        if self.intact():
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        host = self.host
        session = UapiSession(host, on_keepalive=host.send_keepalives, stats=host.stats,
                              extension=host.extension)
        try:
            while not session.closed:
                data = await reader.read(READ_SIZE)
                ops = session.receive(data) if data else session.receive_eof()
                for op in ops:
                    async with host.uapi_lock:
                        host.uapi_begin()
                        try:
                            for chunk in op:
                                writer.write(chunk)
                                if writer.transport.get_write_buffer_size() > HIGH_WATER:
                                    await writer.drain()
                        finally:
                            host.uapi_applied()
                    await writer.drain()
                if not data:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, BrokenPipeError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug in one connection must not take the daemon down
            log.exception("UAPI connection failed")
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
