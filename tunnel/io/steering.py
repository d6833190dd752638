"""Queue steering of a multi-queue TUN/TAP by the packet's own flow hash (``workers N``).

Without a steering program the tun driver picks the queue a packet from the stack is read on
by its flow table: the queue that flow was last *written* on, else a hash. For the WireGuard
daemon that defeats the spreading: all datagrams of one peer arrive on one socket (one 4-tuple,
one SO_REUSEPORT choice), so one worker writes every inner flow's packets (the TCP ACKs of a
bulk send too) and the driver then pins each flow's outbound packets to that worker's queue.

:func:`attach_flow_steering` installs a two-instruction eBPF program (``TUNSETSTEERINGEBPF``,
Linux 4.19+; a socket-filter program, as the driver takes) that returns ``skb->hash``: the
driver reads the packet on queue ``hash % queues``, wherever the flow was written. Locally
generated TCP carries its socket's hash (``sk_txhash``), so each connection stays on one queue
(per-flow order) and distinct connections spread; a packet without a hash (0: e.g. ICMP,
forwarded traffic from a device that set none) goes to queue 0. The program belongs to the
device (one attach covers every queue) and goes with it.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import struct

log = logging.getLogger(__name__)

SYS_BPF = 321  # x86_64
BPF_PROG_LOAD = 5
BPF_PROG_TYPE_SOCKET_FILTER = 1
TUNSETSTEERINGEBPF = 0x800454E0  # _IOR('T', 224, int)
_SKB_HASH = 68  # offsetof(struct __sk_buff, hash)
# r0 = *(u32 *)(r1 + offsetof(__sk_buff, hash)); exit
_PROGRAM = struct.pack("<BBhi", 0x61, 1 << 4, _SKB_HASH, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)


def _load_program() -> int:
    """The program's fd (OSError if the kernel refuses it)."""
    if os.uname().machine != "x86_64":
        raise OSError(0, "the bpf() syscall number is known for x86_64 only")
    libc = ctypes.CDLL(None, use_errno=True)
    insns = ctypes.create_string_buffer(_PROGRAM, len(_PROGRAM))
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = (ctypes.c_char * 128)()  # union bpf_attr, the rest zero
    struct.pack_into("<IIQQ", attr, 0, BPF_PROG_TYPE_SOCKET_FILTER, len(_PROGRAM) // 8,
                     ctypes.addressof(insns), ctypes.addressof(license_))
    fd = int(libc.syscall(SYS_BPF, BPF_PROG_LOAD, attr, ctypes.sizeof(attr)))
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"BPF_PROG_LOAD: {os.strerror(code)}")
    return fd


def attach_flow_steering(tun_fd: int) -> bool:
    """Steer the multi-queue device of ``tun_fd`` by ``skb->hash`` (see the module doc). False
    (logged at verbose) if the kernel refuses: the driver's own choice then stands."""
    try:
        prog = _load_program()
    except OSError as exc:
        log.info("TUN flow steering unavailable: %s", exc.strerror or exc)
        return False
    try:
        fcntl.ioctl(tun_fd, TUNSETSTEERINGEBPF, struct.pack("i", prog))
    except OSError as exc:
        log.info("TUN flow steering refused: TUNSETSTEERINGEBPF: %s", exc.strerror)
        return False
    finally:
        os.close(prog)  # the device keeps its own reference
    return True


__all__ = ["attach_flow_steering"]
