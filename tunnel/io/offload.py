"""TUN offloads: open a TUN device with the virtio-net header and TSO, and pick the batch I/O.

Why not python-pytun: it has neither ``IFF_VNET_HDR`` nor the ``TUNSETOFFLOAD`` ioctl, and both
must be set before the device is used, so :func:`open_tun` opens ``/dev/net/tun`` itself:

1. ``TUNSETIFF`` with ``IFF_TUN | IFF_NO_PI | IFF_VNET_HDR`` (retried without the vnet flag if
   the kernel refuses it);
2. ``TUNSETVNETHDRSZ`` = 10 (the plain ``virtio_net_hdr``; the kernel default, set explicitly);
3. ``TUNSETOFFLOAD`` with ``TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6``, then ``TUN_F_CSUM`` alone,
   then nothing: with TSO the kernel hands us TCP super-packets of up to 64 KiB (cut by
   :class:`TunBatch.read`), with CSUM it may leave checksums partial (completed there too).

``open_tun(name, tap=True)`` does the same for a TAP device (IFF_TAP: Ethernet frames; the
VXLAN daemon's device, read with ``TunBatch(fd, l2=14)``).

What was enabled is returned as a :class:`TunOffload`; each refusal is a line in its ``notes``
that the caller logs at verbose. The per-packet work is in ``tunnel.io._io`` (Cython) and
``tunnel.io.io_ref`` (pure Python); :func:`load_io` picks one (``WGPY_PURE=1`` forces the reference).

Nothing here is per packet. The fd is non-blocking and close-on-exec; closing it deletes the
(non-persistent) device. The caller owns the fd.
"""

from __future__ import annotations

import errno
import fcntl
import importlib
import os
import socket
import struct
from dataclasses import dataclass
from types import ModuleType

TUNSETIFF = 0x400454CA
TUNGETFEATURES = 0x800454CF
TUNSETOFFLOAD = 0x400454D0
TUNGETVNETHDRSZ = 0x800454D7
TUNSETVNETHDRSZ = 0x400454D8
SIOCGIFMTU = 0x8921
SIOCSIFMTU = 0x8922
SIOCGIFHWADDR = 0x8927

IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100

TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40
DEFAULT_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6

VNET_HDR_LEN = 10
IFNAMSIZ = 16
_IFREQ_FLAGS = struct.Struct("16sH22x")
_IFREQ_INT = struct.Struct("16si20x")

_IO_MODULES = {"cython": "tunnel.io._io", "pure": "tunnel.io.io_ref"}


@dataclass(frozen=True, slots=True)
class TunOffload:
    """What :func:`open_tun` got from the kernel.

    ``vnet_hdr``: every read and write carries a 10-byte virtio-net header (use
    ``TunBatch(fd, vnet_hdr=True)``). ``offloads``: the TUN_F_* bits TUNSETOFFLOAD accepted.
    ``notes``: one line per refused feature, for a verbose log.
    """

    name: str
    vnet_hdr: bool
    offloads: int
    notes: tuple[str, ...] = ()

    @property
    def tso(self) -> bool:
        """True if the kernel may hand us TCP super-packets (TSO4 or TSO6 accepted)."""
        return bool(self.offloads & (TUN_F_TSO4 | TUN_F_TSO6))

    def describe(self) -> str:
        names = [n for bit, n in ((TUN_F_CSUM, "csum"), (TUN_F_TSO4, "tso4"), (TUN_F_TSO6, "tso6"),
                                  (TUN_F_USO4, "uso4"), (TUN_F_USO6, "uso6")) if self.offloads & bit]
        return f"{self.name}: vnet_hdr={'on' if self.vnet_hdr else 'off'} offloads={','.join(names) or 'none'}"


def _set_iff(fd: int, name: str, flags: int) -> str:
    request = bytearray(_IFREQ_FLAGS.pack(name.encode(), flags))
    fcntl.ioctl(fd, TUNSETIFF, request)
    return bytes(request[:IFNAMSIZ]).split(b"\0", 1)[0].decode()


def open_tun(name: str, *, vnet_hdr: bool = True, offloads: int = DEFAULT_OFFLOADS,
             mtu: int | None = None, tap: bool = False,
             multi_queue: bool = False) -> tuple[int, TunOffload]:
    """Create TUN device ``name`` (IFF_NO_PI) with as many of the asked offloads as the kernel
    takes; returns ``(fd, what_was_enabled)``. Raises OSError if even a plain TUN fails.
    ``tap``: a TAP device (Ethernet frames) instead of a TUN device. ``multi_queue``:
    IFF_MULTI_QUEUE; opening the same name again with it attaches one more queue (one fd
    each; the flags, IFF_VNET_HDR included, must match the first queue's).

    ``mtu`` (optional) is set with SIOCSIFMTU in the current network namespace.
    """
    if not name or len(name.encode()) >= IFNAMSIZ or "/" in name:
        raise ValueError(f"invalid interface name {name!r}")
    notes: list[str] = []
    kind = (IFF_TAP if tap else IFF_TUN) | (IFF_MULTI_QUEUE if multi_queue else 0)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        got_vnet = False
        if vnet_hdr:
            try:
                features = int.from_bytes(fcntl.ioctl(fd, TUNGETFEATURES, bytes(4)), "little")
            except OSError:
                features = 0
            if features & IFF_VNET_HDR:
                try:
                    actual = _set_iff(fd, name, kind | IFF_NO_PI | IFF_VNET_HDR)
                    got_vnet = True
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    notes.append(f"IFF_VNET_HDR refused ({exc.strerror}): plain TUN reads and writes")
            else:
                notes.append("IFF_VNET_HDR not offered by this kernel: plain TUN reads and writes")
        if not got_vnet:
            actual = _set_iff(fd, name, kind | IFF_NO_PI)
        accepted = 0
        if got_vnet:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
            for attempt in (offloads, offloads & TUN_F_CSUM):
                if not attempt:
                    continue
                try:
                    fcntl.ioctl(fd, TUNSETOFFLOAD, attempt)
                    accepted = attempt
                    break
                except OSError as exc:
                    notes.append(f"TUNSETOFFLOAD {attempt:#x} refused ({exc.strerror})")
            if accepted != offloads:
                notes.append(f"TUN offloads {offloads:#x} asked, {accepted:#x} enabled")
        if mtu is not None:
            set_mtu(actual, mtu)
    except BaseException:
        os.close(fd)
        raise
    return fd, TunOffload(actual, got_vnet, accepted, tuple(notes))


def set_mtu(name: str, mtu: int) -> None:
    """SIOCSIFMTU on ``name`` in the current network namespace. Raises OSError."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), SIOCSIFMTU, _IFREQ_INT.pack(name.encode(), mtu))


def get_mtu(name: str) -> int:
    """SIOCGIFMTU of ``name`` in the current network namespace. Raises OSError."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        answer = fcntl.ioctl(sock.fileno(), SIOCGIFMTU, _IFREQ_INT.pack(name.encode(), 0))
    return int(_IFREQ_INT.unpack(answer)[1])


def get_hwaddr(name: str) -> bytes:
    """The 6-byte hardware address of ``name`` (SIOCGIFHWADDR). Raises OSError."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        answer = fcntl.ioctl(sock.fileno(), SIOCGIFHWADDR, struct.pack("16s16x", name.encode()))
    return bytes(answer[18:24])  # struct sockaddr: family (2 bytes), then the address


def load_io(name: str) -> ModuleType:
    """The batch I/O implementation ``name``: "cython" (tunnel.io._io) or "pure" (tunnel.io.io_ref).

    Raises ImportError if the extension is asked for but not built.
    """
    try:
        module = _IO_MODULES[name]
    except KeyError:
        raise ValueError(f"unknown I/O backend {name!r}; use one of {sorted(_IO_MODULES)}") from None
    return importlib.import_module(module)


def select_io() -> tuple[str, ModuleType]:
    """``("cython", tunnel.io._io)`` unless WGPY_PURE=1 or the extension is not built."""
    if os.environ.get("WGPY_PURE") != "1":
        try:
            return "cython", load_io("cython")
        except ImportError:
            pass
    return "pure", load_io("pure")
