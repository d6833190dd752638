"""The TUN device of the daemon: a non-blocking fd with a batch read/write API.

Created by :func:`tunnel.io.offload.open_tun` with ``IFF_TUN | IFF_NO_PI | IFF_VNET_HDR`` and the
TSO/checksum offloads the kernel accepts: a read may then hand us a TCP super-packet of up to
64 KiB, which the batch I/O (``tunnel.io._io`` or its pure twin ``tunnel.io.io_ref``) cuts into packets
of at most the MTU; on the way in, consecutive TCP segments of one flow are written as one
super-packet (TUN GRO; ``WGPY_NO_TUN_GRO=1`` turns it off). What was enabled or refused is
logged at verbose. If the kernel refuses the
virtio-net header the device is a plain TUN (one bare IP packet per read); ``WGPY_NO_OFFLOAD=1``
forces the plain path, created with python-pytun as before. The fd keeps working when the
device is moved to another network namespace (``ip link set IFACE netns X``), so nothing here
looks the device up by name in our own namespace:

* liveness is asked of the fd itself (``TUNGETIFF``): once the device is deleted the kernel
  detaches the file and every read, write or ioctl on it fails with EBADFD;
* the MTU is read with ``SIOCGIFMTU`` through a socket created in the namespace the device
  currently lives in (``TUNGETDEVNETNS`` hands us that namespace).

Buffer contract (see docs/design.md): :meth:`Tun.read_batch` writes packet ``i`` at
``bufs[i][headroom:]`` (the caller's room for a header: WireGuard seals in place there);
segments of a super-packet that did not fit the batch wait in the I/O object
(:attr:`Tun.pending`) for the next call, which the owner must make even though the fd is no
longer readable. :meth:`Tun.write_batch` writes views the caller owns (one write per packet,
natively) and keeps no reference to them. Single-threaded (the event-loop thread), except that
:func:`socket_in_netns` briefly uses a helper thread of its own.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import socket
import struct
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytun

from tunnel.io import offload

log = logging.getLogger(__name__)

IO_NAME, _io = offload.select_io()

TUNGETIFF = 0x800454D2  # _IOR('T', 210, unsigned int)
TUNGETDEVNETNS = 0x54E3  # _IO('T', 227), Linux 5.2+
SIOCGIFMTU = 0x8921
CLONE_NEWNET = 0x40000000
IFNAMSIZ = 16
_IFREQ = struct.Struct("16sH22x")  # name, flags / mtu (first bytes of the union), padding to 40

# Errors that mean the device behind the fd is gone (EBADFD) or may be (EIO, ENXIO, ENODEV).
GONE_ERRNOS = frozenset({errno.EBADFD, errno.EBADF, errno.EIO, errno.ENXIO, errno.ENODEV})

_libc: ctypes.CDLL | None = None


class TunGone(OSError):
    """The TUN device was deleted (its fd is detached)."""


def _setns(fd: int, nstype: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, nstype) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def socket_in_netns(ns_fd: int, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM) -> socket.socket:
    """A socket created inside the network namespace ``ns_fd`` (which the caller keeps owning).

    setns() changes the namespace of the calling thread only, so a short-lived helper thread
    enters the namespace, creates the socket (a socket stays in the namespace it was made in)
    and exits; the event-loop thread never changes namespace.
    """
    result: list[socket.socket | BaseException] = []

    def run() -> None:
        try:
            _setns(ns_fd, CLONE_NEWNET)
            result.append(socket.socket(family, kind))
        except BaseException as exc:  # handed to the caller below
            result.append(exc)

    thread = threading.Thread(target=run, name="wg-py-netns", daemon=True)
    thread.start()
    thread.join(5.0)
    if not result:
        raise OSError(errno.ETIMEDOUT, "timed out entering the device's network namespace")
    value = result[0]
    if isinstance(value, BaseException):
        raise value
    return value


def _netns_inode(fd: int) -> int:
    return os.fstat(fd).st_ino


class Tun:
    """One TUN device, owned by this object; :meth:`close` closes the fd (deleting the device).

    ``name`` is the name it was created with; :meth:`current_name` asks the kernel (a device may
    be renamed). ``mtu`` is refreshed by :meth:`refresh_mtu`; callers poll it.
    """

    def __init__(self, name: str, mtu: int, offloads: bool | None = None, multi_queue: bool = False) -> None:
        """Create the device with ``mtu`` (``offloads``: None reads WGPY_NO_OFFLOAD; False forces plain).

        ``multi_queue``: create it with IFF_MULTI_QUEUE (this fd is queue 0; the WireGuard
        daemon's ``workers N`` attach more with :func:`tunnel.io.offload.open_tun`); needs the
        offload path (ValueError with WGPY_NO_OFFLOAD=1)."""
        if not name or len(name.encode()) >= IFNAMSIZ or "/" in name or name in (".", ".."):
            raise ValueError(f"invalid interface name {name!r}")
        if offloads is None:
            offloads = os.environ.get("WGPY_NO_OFFLOAD") != "1"
        if multi_queue and not offloads:
            raise ValueError("a multi-queue TUN needs the offload path (unset WGPY_NO_OFFLOAD)")
        self._dev: pytun.TunTapDevice | None = None
        self.multi_queue = multi_queue
        if offloads:
            try:
                fd, info = offload.open_tun(name, multi_queue=multi_queue)
            except OSError as exc:
                raise OSError(exc.errno, f"failed to create TUN device {name!r}: {exc.strerror}") from None
            self.fd: int = fd
            self.name: str = info.name
            self.vnet_hdr: bool = info.vnet_hdr
            #: what the kernel took: ``csum,tso4,tso6,...`` or ``none`` (shown by ``wg-py show``)
            self.offloads: str = info.describe().split("offloads=", 1)[1]
            log.info("TUN %s (%s I/O)", info.describe(), IO_NAME)
            for note in info.notes:
                log.info("TUN %s: %s", info.name, note)
        else:
            self._dev = _open_plain(name)
            self.fd = self._dev.fileno()
            self.name = self._dev.name
            self.vnet_hdr = False
            self.offloads = "none (WGPY_NO_OFFLOAD=1)"
            log.info("TUN %s: plain (offloads disabled by WGPY_NO_OFFLOAD=1, %s I/O)", self.name, IO_NAME)
        try:
            offload.set_mtu(self.name, mtu)  # as wireguard-go creates its TUN with its default MTU
        except OSError as exc:
            log.debug("cannot set the MTU of %s: %s", self.name, exc)
        os.set_blocking(self.fd, False)
        # TUN GRO: consecutive TCP segments are written as one super-packet (WGPY_NO_TUN_GRO=1
        # turns it off); needs the virtio-net header.
        gro = self.vnet_hdr and os.environ.get("WGPY_NO_TUN_GRO") != "1"
        # A packet larger than its slot (the MTU was raised) is held for a call with larger
        # slots instead of being dropped (see :attr:`needed`).
        self._io = _io.TunBatch(self.fd, vnet_hdr=self.vnet_hdr, gro=gro, hold_oversized=self.vnet_hdr)
        self.gro: bool = gro
        self._fallbacks_logged = 0
        self._errors: Counter[str] = Counter()
        self._own_netns = os.stat("/proc/self/ns/net").st_ino
        self._mtu_sock: socket.socket | None = None
        self._mtu_sock_netns = -1
        self._closed = False
        self.mtu: int = mtu
        self.refresh_mtu()

    @property
    def errors(self) -> Counter[str]:
        """Read/write failures and drops so far (``read:too_big``, ``write:EINVAL``, ...)."""
        total = Counter(self._errors)
        total.update(self._io.errors)
        return total

    @property
    def pending(self) -> int:
        """Packets cut from a super-packet but not handed out yet: call :meth:`read_batch`."""
        return int(self._io.pending)

    @property
    def dropped_too_big(self) -> int:
        """Packets dropped so far because they did not fit their slot (the MTU grew?)."""
        return int(self._io.errors.get("read:too_big", 0))

    @property
    def needed(self) -> int:
        """Bytes (after the headroom) a held packet needs: grow the slots and read again."""
        return int(self._io.needed)

    @property
    def io_errors(self) -> dict[str, int]:
        """The batch I/O's own error dict (a live view, read-only to callers: a cheap poll)."""
        errors: dict[str, int] = self._io.errors
        return errors

    @property
    def coalesced(self) -> int:
        """Super-packets written so far by TUN GRO (a statistic)."""
        return int(getattr(self._io, "coalesced", 0))

    def fileno(self) -> int:
        return self.fd

    # ------------------------------------------------------------------ state

    def current_name(self) -> str:
        """The device's name now (TUNGETIFF). Raises :class:`TunGone` if it was deleted."""
        buf = bytearray(_IFREQ.size)
        try:
            fcntl.ioctl(self.fd, TUNGETIFF, buf)
        except OSError as exc:
            if exc.errno in GONE_ERRNOS:
                raise TunGone(exc.errno, "the TUN device is gone") from None
            raise
        return bytes(buf[:IFNAMSIZ]).split(b"\0", 1)[0].decode()

    def alive(self) -> bool:
        """False once the device was deleted (whatever namespace it was in)."""
        if self._closed:
            return False
        try:
            self.current_name()
        except TunGone:
            return False
        return True

    def refresh_mtu(self) -> int:
        """Read the MTU from the kernel, in the device's current namespace; returns it.

        Keeps the previous value if it cannot be read (raises :class:`TunGone` if deleted).
        """
        name = self.current_name()
        try:
            sock = self._socket_for_device_netns()
            buf = bytearray(_IFREQ.pack(name.encode(), 0))
            fcntl.ioctl(sock.fileno(), SIOCGIFMTU, buf)
            mtu = int.from_bytes(buf[16:20], "little")
        except OSError as exc:
            if exc.errno in GONE_ERRNOS and not self.alive():
                raise TunGone(exc.errno, "the TUN device is gone") from None
            log.debug("cannot read the MTU of %s: %s", name, exc)
            return self.mtu
        if mtu > 0:
            self.mtu = mtu
        return self.mtu

    def _socket_for_device_netns(self) -> socket.socket:
        try:
            ns_fd = fcntl.ioctl(self.fd, TUNGETDEVNETNS)
        except OSError as exc:
            if exc.errno in GONE_ERRNOS:
                raise
            ns_fd = -1  # an old kernel: the device is where we are, as far as we can tell
        try:
            inode = _netns_inode(ns_fd) if ns_fd >= 0 else self._own_netns
            if self._mtu_sock is None or inode != self._mtu_sock_netns:
                if self._mtu_sock is not None:
                    self._mtu_sock.close()
                    self._mtu_sock = None
                if inode == self._own_netns or ns_fd < 0:
                    self._mtu_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                else:
                    log.info("%s now lives in another network namespace", self.name)
                    self._mtu_sock = socket_in_netns(ns_fd)
                self._mtu_sock_netns = inode
            return self._mtu_sock
        finally:
            if ns_fd >= 0:
                os.close(ns_fd)

    # ------------------------------------------------------------------ data path

    def read_batch(self, bufs: Sequence[bytearray], lengths: list[int], headroom: int, mtu: int | None = None) -> int:
        """Read up to ``len(bufs)`` packets, packet ``i`` into ``bufs[i][headroom:]``.

        Stops at EAGAIN. ``lengths[i]`` is set for every packet read; returns the count. TCP
        super-packets are cut into packets of at most ``mtu`` bytes (default :attr:`mtu`). An
        error after some packets were read is kept for the next call's first read to report;
        raises :class:`TunGone` if the device was deleted; other errors are counted.
        """
        try:
            return int(self._io.read(bufs, lengths, headroom, mtu or self.mtu))
        except OSError as exc:
            self.read_failed(exc)
            return 0

    @property
    def io(self) -> Any:
        """The batch I/O object (TunBatch), for the interface's pump, which reads through it
        directly and reports its OSErrors to :meth:`read_failed`."""
        return self._io

    def read_failed(self, exc: OSError) -> None:
        """A read raised ``exc``: raise :class:`TunGone` if the device was deleted, else count it."""
        if exc.errno in GONE_ERRNOS and not self.alive():
            raise TunGone(exc.errno or errno.EBADFD, "the TUN device is gone") from exc
        # A packet that did not fit (EFAULT/EINVAL) or a transient error: the kernel dropped it.
        self._errors[f"read:{errno.errorcode.get(exc.errno or 0, exc.errno)}"] += 1
        log.debug("TUN read failed: %s", exc)

    def write_batch(self, views: Sequence[bytes | bytearray | memoryview]) -> int:
        """Write each packet; returns how many the kernel took.

        A packet the kernel refuses (not IPv4/IPv6, queue full) is counted in :attr:`errors` and
        skipped. Raises :class:`TunGone` if the device was deleted (an error that may mean so on
        a live device, e.g. EIO while it is down, ends the batch and is counted).
        """
        try:
            written = int(self._io.write(views))
        except OSError as exc:
            self.write_failed(exc)
            return 0
        self.log_fallbacks()
        return written

    def write_failed(self, exc: OSError) -> None:
        """A write raised ``exc``: raise :class:`TunGone` if the device was deleted, else count it."""
        if exc.errno in GONE_ERRNOS and not self.alive():
            raise TunGone(exc.errno or errno.EBADFD, "the TUN device is gone") from exc
        self._errors[f"write:{errno.errorcode.get(exc.errno or 0, exc.errno)}"] += 1

    def log_fallbacks(self) -> None:
        """Log (verbose) the offload fallbacks the batch I/O took since the last call."""
        if len(self._io.fallbacks) != self._fallbacks_logged:
            for line in self._io.fallbacks[self._fallbacks_logged:]:
                log.info("TUN %s: %s", self.name, line)
            self._fallbacks_logged = len(self._io.fallbacks)

    def close(self) -> None:
        """Close the fd: the kernel deletes the (non-persistent) device, wherever it is."""
        if self._closed:
            return
        self._closed = True
        if self._mtu_sock is not None:
            self._mtu_sock.close()
            self._mtu_sock = None
        try:
            if self._dev is not None:
                self._dev.close()
            else:
                os.close(self.fd)
        except Exception:  # already closed by the kernel side; nothing left to release
            log.debug("closing the TUN device failed", exc_info=True)


def _open_plain(name: str) -> pytun.TunTapDevice:
    """The plain path: python-pytun, ``IFF_TUN | IFF_NO_PI``. Raises OSError."""
    try:
        return pytun.TunTapDevice(name=name, flags=pytun.IFF_TUN | pytun.IFF_NO_PI)
    except pytun.Error as exc:
        args = exc.args
        code = args[0] if args and isinstance(args[0], int) else errno.EIO
        message = args[1] if len(args) > 1 else str(exc)
        raise OSError(code, f"failed to create TUN device {name!r}: {message}") from None
