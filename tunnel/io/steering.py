"""Queue steering of a multi-queue TUN/TAP by the packet's own flow hash (``workers N``).

Without a steering program the tun driver picks the queue a packet from the stack is read on
by its flow table: the queue that flow was last *written* on, else a hash. For the WireGuard
daemon that defeats the spreading: all datagrams of one peer arrive on one socket (one 4-tuple,
one SO_REUSEPORT choice), so one worker writes every inner flow's packets (the TCP ACKs of a
bulk send too) and the driver then pins each flow's outbound packets to that worker's queue.

:func:`attach_flow_steering` installs a small eBPF socket-filter program (``TUNSETSTEERINGEBPF``,
Linux 4.19+) whose return value picks the queue the driver reads the packet on
(``(u16) value % queues``), wherever the flow was written:

- ``skb->hash`` when the packet has one: locally generated TCP and connected UDP carry their
  socket's ``sk_txhash``, so each connection stays on one queue (per-flow order) and distinct
  connections spread;
- otherwise (0: ICMP, unconnected UDP, traffic forwarded from a device that set no hash) a hash
  of the packet's own flow, computed by the program (:func:`fallback_hash` is the same function
  in Python): the IPv4/IPv6 source and destination addresses, and for TCP, UDP, UDP-Lite and
  SCTP (IPv4 unfragmented, IPv6 without extension headers) the 32 bits of the two ports, xor-folded
  and mixed so that the low 16 bits the driver uses depend on all of them. Before, such packets
  all went to queue 0: one worker sealed every ping and every forwarded flow of a gateway.

The program reads the packet relative to its network header (``SKF_NET_OFF``), so it works
for a TUN (L3) and a TAP (Ethernet). A read past the packet's end stops it with 0 (queue 0);
so does anything that is neither IPv4 nor IPv6. The program belongs to the device (one attach
covers every queue) and goes with it.
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
SKF_NET_OFF = -0x100000  # LD_ABS/LD_IND offsets from the network header
_SKB_HASH = 68  # offsetof(struct __sk_buff, hash)
PORT_PROTOCOLS = (6, 17, 132, 136)  # TCP, UDP, SCTP, UDP-Lite: the 4 bytes after the header are the ports
_MIX = 0x45D9F3B  # odd multiplier of the final mix (a 32-bit integer hash's)

# eBPF opcodes used (linux/bpf_common.h, linux/bpf.h)
_MOV64_X, _MOV32_X, _MOV32_K = 0xBF, 0xBC, 0xB4
_LDX_W = 0x61
_LD_ABS_B, _LD_ABS_H, _LD_ABS_W, _LD_IND_W = 0x30, 0x28, 0x20, 0x40
_RSH32_K, _LSH32_K, _AND32_K, _XOR32_X, _MUL32_K = 0x74, 0x64, 0x54, 0xAC, 0x24
_JEQ_K, _JNE_K, _JA = 0x15, 0x55, 0x05
_EXIT = 0x95
_R0, _R1, _R6, _R7, _R8 = 0, 1, 6, 7, 8


Insn = tuple[int, int, int, "int | str", int]  # (opcode, dst, src, offset or jump label, imm)


def _assemble(code: list[Insn | str]) -> bytes:
    """Encode ``code``: instructions, and label names (plain strings) that mark jump targets;
    an instruction's offset may name a label (a forward jump)."""
    labels: dict[str, int] = {}
    insns: list[Insn] = []
    for entry in code:
        if isinstance(entry, str):
            labels[entry] = len(insns)
        else:
            insns.append(entry)
    out = bytearray()
    for at, (op, dst, src, off, imm) in enumerate(insns):
        rel = labels[off] - at - 1 if isinstance(off, str) else off
        out += struct.pack("<BBhi", op, (src << 4) | dst, rel, imm)
    return bytes(out)


def _program() -> bytes:
    net = SKF_NET_OFF
    # r0 = the transport protocol, r8 = where the ports start: read them if it has ports
    to_ports: list[Insn | str] = [(_JEQ_K, _R0, 0, "ports", proto) for proto in PORT_PROTOCOLS]
    to_ports.append((_JA, 0, 0, "mix", 0))
    ipv6_addresses: list[Insn | str] = [(_LD_ABS_W, 0, 0, 0, net + 8), (_MOV32_X, _R7, _R0, 0, 0)]
    for word in range(1, 8):  # the rest of the source address, then the destination
        ipv6_addresses += [(_LD_ABS_W, 0, 0, 0, net + 8 + 4 * word), (_XOR32_X, _R7, _R0, 0, 0)]
    code: list[Insn | str] = [
        (_MOV64_X, _R6, _R1, 0, 0),  # LD_ABS/LD_IND read the skb in r6
        (_LDX_W, _R0, _R1, _SKB_HASH, 0),
        (_JNE_K, _R0, 0, "out", 0),  # the packet's own hash
        (_LD_ABS_B, 0, 0, 0, net),
        (_RSH32_K, _R0, 0, 0, 4),
        (_JEQ_K, _R0, 0, "v4", 4),
        (_JEQ_K, _R0, 0, "v6", 6),
        (_MOV32_K, _R0, 0, 0, 0),
        "out",
        (_EXIT, 0, 0, 0, 0),
        "v4",
        (_LD_ABS_W, 0, 0, 0, net + 12),  # source address
        (_MOV32_X, _R7, _R0, 0, 0),
        (_LD_ABS_W, 0, 0, 0, net + 16),  # destination address
        (_XOR32_X, _R7, _R0, 0, 0),
        (_LD_ABS_H, 0, 0, 0, net + 6),  # flags and fragment offset
        (_AND32_K, _R0, 0, 0, 0x3FFF),  # MF or an offset: a fragment, no ports to read
        (_JNE_K, _R0, 0, "mix", 0),
        (_LD_ABS_B, 0, 0, 0, net),
        (_AND32_K, _R0, 0, 0, 0x0F),
        (_LSH32_K, _R0, 0, 0, 2),
        (_MOV32_X, _R8, _R0, 0, 0),  # the header's length
        (_LD_ABS_B, 0, 0, 0, net + 9),  # protocol
        *to_ports,
        "v6",
        *ipv6_addresses,
        (_MOV32_K, _R8, 0, 0, 40),  # the fixed header; an extension header is not a protocol with ports
        (_LD_ABS_B, 0, 0, 0, net + 6),  # next header
        *to_ports,
        "ports",
        (_LD_IND_W, 0, _R8, 0, net),  # source and destination port
        (_XOR32_X, _R7, _R0, 0, 0),
        "mix",  # fold the high half into the low one, multiply, fold again
        (_MOV32_X, _R0, _R7, 0, 0),
        (_MOV32_X, _R1, _R0, 0, 0),
        (_RSH32_K, _R1, 0, 0, 16),
        (_XOR32_X, _R0, _R1, 0, 0),
        (_MUL32_K, _R0, 0, 0, _MIX),
        (_MOV32_X, _R1, _R0, 0, 0),
        (_RSH32_K, _R1, 0, 0, 16),
        (_XOR32_X, _R0, _R1, 0, 0),
        (_EXIT, 0, 0, 0, 0),
    ]
    return _assemble(code)


_PROGRAM = _program()


def fallback_hash(packet: bytes) -> int:
    """The value the steering program returns for an IP ``packet`` (starting at its network
    header) that carries no ``skb->hash``: the same function, in Python (for tests and
    tools). 0 for anything the program stops on (not IPv4/IPv6, too short)."""
    def word(at: int) -> int:
        if at + 4 > len(packet):
            raise IndexError
        return int.from_bytes(packet[at:at + 4], "big")
    try:
        version = packet[0] >> 4
        if version == 4:
            acc = word(12) ^ word(16)
            if int.from_bytes(packet[6:8], "big") & 0x3FFF == 0:
                if packet[9] in PORT_PROTOCOLS:
                    acc ^= word((packet[0] & 0x0F) * 4)
        elif version == 6:
            acc = 0
            for i in range(8):
                acc ^= word(8 + 4 * i)
            if packet[6] in PORT_PROTOCOLS:
                acc ^= word(40)
        else:
            return 0
    except IndexError:
        return 0
    acc ^= acc >> 16
    acc = (acc * _MIX) & 0xFFFFFFFF
    return acc ^ (acc >> 16)


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


__all__ = ["attach_flow_steering", "fallback_hash"]
