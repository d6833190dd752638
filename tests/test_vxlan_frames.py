"""Frame builders for the VXLAN tests, written from the RFCs (not from the engine's code)."""

from __future__ import annotations

import ipaddress
import struct

BROADCAST = b"\xff" * 6


def mac(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


def ip4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def ether(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack(">H", ethertype) + payload


def ipv4_udp(src: str, dst: str, sport: int, dport: int, data: bytes = b"x") -> bytes:
    udp = struct.pack(">HHHH", sport, dport, 8 + len(data), 0) + data
    hdr = struct.pack(
        ">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0, ip4(src), ip4(dst)
    )
    return hdr + udp


def ipv4_tcp(src: str, dst: str, sport: int, dport: int) -> bytes:
    tcp = struct.pack(">HHIIBBHHH", sport, dport, 1, 0, 0x50, 0x02, 1024, 0, 0)
    hdr = struct.pack(
        ">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, ip4(src), ip4(dst)
    )
    return hdr + tcp


def arp(op: int, sha: bytes, spa: str, tha: bytes, tpa: str) -> bytes:
    return struct.pack(">HHBBH", 1, 0x0800, 6, 4, op) + sha + ip4(spa) + tha + ip4(tpa)


def vxlan_header(vni: int, flags: int = 0x08) -> bytes:
    return bytes([flags, 0, 0, 0]) + vni.to_bytes(3, "big") + b"\x00"
