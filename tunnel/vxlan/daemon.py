"""The VXLAN daemon: a TAP device, the underlay sockets and the control socket around one
``VxlanEngine``, on an asyncio (uvloop when installed) event loop.

Lifecycle. :meth:`VxlanDaemon.open` creates everything synchronously (the TAP device NAME,
IFF_TAP|IFF_NO_PI, non-blocking; its MTU from ``dev``; the UDP socket on ``dstport``; the
sender; the control socket) and raises :class:`DaemonError` with a user-facing reason,
leaving nothing behind. :meth:`VxlanDaemon.run` serves until ``stop`` (control request),
SIGTERM/SIGINT, or the TAP device disappearing (``ip link del NAME``: a read error on the TAP
fd, or the periodic ifindex check), then closes everything: the TAP goes with its fd, and the
control socket file is removed. :func:`start` adds the daemonizing double fork: the parent
exits 0 only once ``open`` succeeded in the daemon, else prints the reason and exits 1.

Data path (all on the loop thread, in small functions so a recvmmsg/Cython path can replace
them): the TAP reader reads up to ``BATCH`` frames until EAGAIN into preallocated buffers with
``HEADROOM`` (8) bytes in front, calls ``transmit_batch`` and sends the datagrams; the UDP
reader does the same with ``recvfrom_into`` and ``receive_batch`` and writes the frames to the
TAP. Buffers are reused once the batch is sent (the engine keeps no references). An exception
in a batch is logged and counted (``rx_exception``/``tx_exception``) and never stops the
daemon. Shell-side drops join the engine's ``drops`` counter: ``tx_error``,
``tx_buffer_full``, ``rx_error``, ``device_down`` (TAP written while down), ``tap_write_error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import random
import select
import signal
import socket
import stat
import sys
import time
from dataclasses import replace
from typing import Any

import pytun

from .config import VxlanConfig
from .control import handle_request, is_alive, socket_path
from .engine import VxlanEngine
from .header import tap_mtu
from .sockets import Sender, ifindex, make_sender, open_receiver

log = logging.getLogger("wg-py.vxlan")

BATCH = 64
HEADROOM = 8
BUFSIZE = 65536
AGE_INTERVAL = 10.0
LINK_CHECK_INTERVAL = 1.0
READY_TIMEOUT = 30.0


class DaemonError(Exception):
    """Why the daemon could not start (shown to the user as is)."""


class VxlanDaemon:
    """One VXLAN device. Not thread-safe; everything happens on the loop thread."""

    def __init__(self, config: VxlanConfig) -> None:
        self.config = replace(config, hash_seed=random.getrandbits(32))
        self.name = config.name
        self.engine: VxlanEngine | None = None
        self.tap: Any = None
        self.tap_fd = -1
        self.tap_index = 0
        self.mtu = 0
        self.udp: socket.socket | None = None
        self.sender: Sender | None = None
        self.control: socket.socket | None = None
        self.control_path = socket_path(self.name)
        self._control_ino = 0
        self._stopping: asyncio.Event | None = None
        self.stop_reason = ""
        self._tx_views = [memoryview(bytearray(HEADROOM + BUFSIZE)) for _ in range(BATCH)]
        self._tx_tails = [[v[HEADROOM:]] for v in self._tx_views]
        self._rx_views = [memoryview(bytearray(BUFSIZE)) for _ in range(BATCH)]

    # ---- setup / teardown ----------------------------------------------------------------

    def open(self) -> None:
        """Create the TAP, the sockets and the control socket (see module doc)."""
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        cfg = self.config
        name = self.name
        lower_mtu = 0
        if cfg.dev:
            try:
                ifindex(cfg.dev)
                with open(f"/sys/class/net/{cfg.dev}/mtu") as f:
                    lower_mtu = int(f.read())
            except (OSError, ValueError):
                raise DaemonError(f"dev {cfg.dev}: no such device") from None
        path = self.control_path
        if is_alive(path):
            raise DaemonError(f"{name}: a wg-py vxlan daemon already runs ({path})")
        try:
            self.tap = pytun.TunTapDevice(name=name, flags=pytun.IFF_TAP | pytun.IFF_NO_PI)
        except (pytun.Error, OSError) as exc:
            raise DaemonError(f"{name}: cannot create TAP device: {exc}") from None
        self.tap_fd = self.tap.fileno()
        flags = fcntl.fcntl(self.tap_fd, fcntl.F_GETFL)
        fcntl.fcntl(self.tap_fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        self.tap_index = socket.if_nametoindex(name)
        try:
            if lower_mtu:
                self.tap.mtu = tap_mtu(lower_mtu, cfg.ipv6)
            self.mtu = int(self.tap.mtu)
            own_mac = bytes(self.tap.hwaddr)
        except (pytun.Error, OSError, ValueError) as exc:
            raise DaemonError(f"{name}: cannot configure TAP device: {exc}") from None
        try:
            self.udp = open_receiver(cfg)
        except OSError as exc:
            hint = ""
            if exc.errno == errno.EADDRINUSE:
                hint = " (a kernel vxlan device with this dstport in this namespace?)"
            raise DaemonError(f"cannot bind UDP port {cfg.dstport}: {exc.strerror}{hint}") from None
        self.sender = make_sender(cfg, self.udp)
        self.engine = VxlanEngine(self.config, time.monotonic())
        self.engine.set_own_mac(own_mac)
        self._open_control(path)

    def _open_control(self, path: Any) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # stale: is_alive() said nobody listens there
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)
        try:
            sock.bind(str(path))
            sock.listen(16)
        except OSError as exc:
            sock.close()
            raise DaemonError(f"control socket {path}: {exc.strerror}") from None
        finally:
            os.umask(old)
        sock.setblocking(False)
        self.control = sock
        self._control_ino = os.stat(path).st_ino

    def close(self) -> None:
        """Release everything (idempotent). The TAP device disappears with its fd."""
        if self.control is not None:
            self.control.close()
            self.control = None
            with contextlib.suppress(OSError):
                st = os.stat(self.control_path)
                if stat.S_ISSOCK(st.st_mode) and st.st_ino == self._control_ino:
                    os.unlink(self.control_path)
            if self.control_path.parent.name.startswith("netns-"):
                with contextlib.suppress(OSError):
                    self.control_path.parent.rmdir()  # only if empty
        if self.sender is not None:
            self.sender.close()
            self.sender = None
        if self.udp is not None:
            self.udp.close()
            self.udp = None
        if self.tap is not None:
            with contextlib.suppress(Exception):
                self.tap.close()
            self.tap = None
            self.tap_fd = -1

    # ---- running -------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until stopped, then close (blocking; builds its own event loop)."""
        loop: asyncio.AbstractEventLoop
        try:
            import uvloop

            loop = uvloop.new_event_loop()
        except ImportError:  # pragma: no cover - uvloop is a dependency
            loop = asyncio.new_event_loop()
        try:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.serve())
        finally:
            self.close()
            loop.close()

    async def serve(self) -> None:
        assert self.udp is not None and self.control is not None
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        loop.add_reader(self.tap_fd, self._on_tap_readable)
        loop.add_reader(self.udp.fileno(), self._on_udp_readable)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop, f"signal {sig.name}")
        server = await asyncio.start_unix_server(self._on_control, sock=self.control)
        timers = [
            asyncio.ensure_future(self._every(AGE_INTERVAL, self._age)),
            asyncio.ensure_future(self._every(LINK_CHECK_INTERVAL, self._check_link)),
        ]
        log.info("%s: vni %d dstport %d up (sender %s, mtu %d)", self.name, self.config.vni,
                 self.config.dstport, self.sender.mode if self.sender else "?", self.mtu)
        try:
            await self._stopping.wait()
        finally:
            log.info("%s: stopping (%s)", self.name, self.stop_reason)
            for t in timers:
                t.cancel()
            loop.remove_reader(self.tap_fd)
            loop.remove_reader(self.udp.fileno())
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            server.close()
            self.close()  # before awaiting: the socket file goes now

    def stop(self, reason: str = "stop") -> None:
        if self._stopping is not None and not self._stopping.is_set():
            self.stop_reason = reason
            self._stopping.set()

    async def _every(self, interval: float, action: Any) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                action()
            except Exception:  # a timer bug must not kill the daemon
                log.exception("%s: timer failed", self.name)

    def _age(self) -> None:
        assert self.engine is not None
        self.engine.age(time.monotonic())

    def _check_link(self) -> None:
        try:
            socket.if_indextoname(self.tap_index)
        except OSError:
            self.stop("TAP device deleted")

    # ---- data path -----------------------------------------------------------------------

    def _on_tap_readable(self) -> None:
        frames = self._read_tap()
        if frames:
            self._transmit(frames)

    def _read_tap(self) -> list[memoryview]:
        """Read frames until EAGAIN (at most BATCH); each is ``view[:HEADROOM + n]``."""
        fd = self.tap_fd
        frames = []
        readv = os.readv
        for view, tail in zip(self._tx_views, self._tx_tails, strict=True):
            try:
                n = readv(fd, tail)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.stop(f"TAP device gone ({exc.strerror})")
                break
            frames.append(view[: HEADROOM + n])
        return frames

    def _transmit(self, frames: list[memoryview]) -> None:
        engine = self.engine
        sender = self.sender
        assert engine is not None and sender is not None
        try:
            result = engine.transmit_batch(frames, time.monotonic(), HEADROOM)
        except Exception:
            log.exception("%s: transmit batch failed", self.name)
            engine.drops["tx_exception"] += len(frames)
            return
        send = sender.send
        for payload, addr, sport in result.datagrams:
            try:
                send(payload, addr, sport)
            except BlockingIOError:
                engine.drops["tx_buffer_full"] += 1
            except OSError as exc:
                engine.drops["tx_error"] += 1
                log.debug("%s: send to %s: %s", self.name, addr, exc)
        if result.local:
            self._write_tap(result.local)

    def _on_udp_readable(self) -> None:
        items = self._read_udp()
        if not items:
            return
        engine = self.engine
        assert engine is not None
        try:
            frames = engine.receive_batch(items, time.monotonic())
        except Exception:
            log.exception("%s: receive batch failed", self.name)
            engine.drops["rx_exception"] += len(items)
            return
        if frames:
            self._write_tap(frames)

    def _read_udp(self) -> list[tuple[memoryview, Any]]:
        """Read datagrams until EAGAIN (at most BATCH): ``(view[:n], source address)``."""
        assert self.udp is not None and self.engine is not None
        recv = self.udp.recvfrom_into
        items = []
        for view in self._rx_views:
            try:
                n, src = recv(view)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.engine.drops["rx_error"] += 1
                continue
            items.append((view[:n], src))
        return items

    def _write_tap(self, frames: list[memoryview] | list[bytes]) -> None:
        fd = self.tap_fd
        write = os.write
        for frame in frames:
            try:
                write(fd, frame)
            except OSError as exc:
                assert self.engine is not None
                reason = "device_down" if exc.errno == errno.EIO else "tap_write_error"
                self.engine.drops[reason] += 1

    # ---- control -------------------------------------------------------------------------

    def extra(self) -> dict[str, Any]:
        """Shell facts added to ``show``."""
        sender = self.sender.mode if self.sender else None
        return {
            "pid": os.getpid(),
            "ifindex": self.tap_index,
            "mtu": self.mtu,
            "sender": sender,
            "source_port": "hashed" if sender == "raw" else f"fixed {self.config.dstport}",
        }

    async def _on_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5.0)
            text = line.decode(errors="replace")
            assert self.engine is not None
            answer = handle_request(self.engine, text, time.monotonic(), self.extra)
            if answer.get("show"):
                answer["show"]["config"]["hash_seed"] = None  # keep the seed private
            writer.write(_json_line(answer))
            await asyncio.wait_for(writer.drain(), 5.0)
            if text.split() == ["stop"] and answer.get("ok"):
                self.stop("stop request")
        except (TimeoutError, OSError, UnicodeError):
            pass
        except Exception:
            log.exception("%s: control request failed", self.name)
        finally:
            writer.close()


def _json_line(obj: Any) -> bytes:
    import json

    return json.dumps(obj).encode() + b"\n"


# ---- starting ----------------------------------------------------------------------------


def _setup_logging(foreground: bool) -> None:
    target = os.environ.get("WGPY_VXLAN_LOG")
    handler: logging.Handler
    if foreground:
        handler = logging.StreamHandler(sys.stderr)
    elif target:
        handler = logging.FileHandler(target)
    else:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if os.environ.get("WGPY_VXLAN_DEBUG") else logging.INFO)


def start(config: VxlanConfig, foreground: bool) -> int:
    """Run the daemon for ``config``: in the foreground (returns when it stops), or daemonized
    (returns 0 once the device and control socket exist, 1 with a message otherwise)."""
    if foreground:
        _setup_logging(True)
        daemon = VxlanDaemon(config)
        try:
            daemon.open()
        except DaemonError as exc:
            print(f"wg-py vxlan: {exc}", file=sys.stderr)
            return 1
        daemon.run()
        return 0
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        status = _read_status(r)
        os.close(r)
        os.waitpid(pid, 0)
        if status == "ok":
            return 0
        print(f"wg-py vxlan: {status or 'the daemon died while starting'}", file=sys.stderr)
        return 1
    # first child: new session, then fork again so the daemon is not a session leader
    try:
        os.close(r)
        os.setsid()
        if os.fork():
            os._exit(0)
        _daemon_main(config, w)
    finally:
        os._exit(1)


def _read_status(fd: int) -> str:
    deadline = time.monotonic() + READY_TIMEOUT
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return "timed out waiting for the daemon"
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return data.decode(errors="replace").strip()
        data += chunk


def _daemon_main(config: VxlanConfig, status_fd: int) -> None:
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    _setup_logging(False)
    daemon = VxlanDaemon(config)
    try:
        daemon.open()
    except Exception as exc:
        os.write(status_fd, str(exc).encode())
        os.close(status_fd)
        os._exit(1)
    os.write(status_fd, b"ok")
    os.close(status_fd)
    try:
        daemon.run()
    except Exception:
        log.exception("%s: daemon failed", config.name)
        os._exit(1)
    os._exit(0)


__all__ = ["DaemonError", "VxlanDaemon", "start"]
