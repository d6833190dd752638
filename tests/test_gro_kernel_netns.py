"""What the kernel makes of our GRO super-packets (TUN and TAP), checked by the kernel itself.

``TunBatch(..., gro=True).write`` coalesces a run of TCP segments into one super-packet (a
virtio-net header with GSO TCPV4/TCPV6 and a partial checksum). The unit tests
(tests/test_tun_gro.py, tests/test_vxlan_offload.py) check its form; here the Linux kernel is the
oracle: we write super-packets into a real TUN (or TAP) device opened as wg-py opens it, the
kernel forwards them to a second, plain TUN device in the same namespace (no IFF_VNET_HDR, no
TUNSETOFFLOAD: the kernel must cut the super-packet into segments and complete their checksums
itself, with its own TSO code), and we read what it delivers there with plain ``os.read``.

Every segment must come out exactly as we gave it (only the TTL / hop limit lowered by the
forwarding, and the IPv4 header checksum with it), with TCP checksums that the independent
one's-complement sum in tests/test_offload.py verifies.
"""

from __future__ import annotations

import os
import select
import subprocess
from types import ModuleType

import pytest

from tests.test_io import in_netns, namespace
from tests.test_offload import l4_checksum_ok, ones_sum, tun_name
from tests.test_tun_gro import stream
from tests.test_vxlan_offload import DST_MAC, segments
from tunnel.io import offload

pytestmark = pytest.mark.netns


def forwarded(packet: bytes) -> bytes:
    """``packet`` as the kernel forwards it: TTL / hop limit one lower (IPv4 header checksum
    recomputed here from scratch)."""
    out = bytearray(packet)
    if out[0] >> 4 == 4:
        out[8] -= 1
        out[10:12] = b"\0\0"
        out[10:12] = ((~ones_sum(bytes(out[:20]))) & 0xFFFF).to_bytes(2, "big")
    else:
        out[7] -= 1
    return bytes(out)


def tcp_only(packets: list[bytes]) -> list[bytes]:
    """The TCP packets (the plain TUN also sees the kernel's own IPv6 chatter: MLD, RS)."""
    return [p for p in packets if (p[0] >> 4 == 4 and p[9] == 6) or (p[0] >> 4 == 6 and p[6] == 6)]


def through_the_kernel(io: ModuleType, frames: list[bytes], l2: int) -> tuple[list[bytes], int]:
    """Write ``frames`` with one GRO batch into device A (TUN, or TAP if ``l2``) in a fresh
    namespace; return the TCP packets the kernel forwarded to the plain TUN device B, and how
    many super-packets the batch wrote."""
    with namespace() as ns:
        a, b = tun_name(), tun_name()
        fd_a, info = in_netns(ns, lambda: offload.open_tun(a, tap=bool(l2)))
        fd_b = -1
        try:
            fd_b, plain = in_netns(ns, lambda: offload.open_tun(b, vnet_hdr=False))
            assert not plain.vnet_hdr and plain.offloads == 0
            if not (info.vnet_hdr and info.tso):
                pytest.skip(f"no IFF_VNET_HDR with TSO here: {info.notes}")
            commands = [
                ["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"],
                ["ip", "addr", "add", "10.1.2.1/24", "dev", a],
                ["ip", "addr", "add", "10.9.8.1/24", "dev", b],
                ["ip", "addr", "add", "fd01::1/64", "dev", a, "nodad"],
                ["ip", "addr", "add", "fd02::1/64", "dev", b, "nodad"],
                ["ip", "link", "set", a, "up"],
                ["ip", "link", "set", b, "up"],
                # tests/test_offload.tcp_packet's addresses: 10.1.2.3 -> 10.9.8.7, fd00::1 -> fd00::ff
                ["ip", "-6", "route", "add", "fd00::1/128", "dev", a],
                ["ip", "-6", "route", "add", "fd00::ff/128", "dev", b],
            ]
            if l2:
                commands.insert(1, ["ip", "link", "set", a, "address", DST_MAC.hex(":")])
            for argv in commands:
                subprocess.run(["ip", "netns", "exec", ns, *argv], check=True, timeout=10)
            batch = io.TunBatch(fd_a, vnet_hdr=True, gro=True, l2=l2)
            assert batch.write(frames) == len(frames)
            got: list[bytes] = []
            for _ in range(40):  # bounded: at most ~40 x 0.25 s of waiting
                if len(tcp_only(got)) >= len(frames):
                    break
                if not select.select([fd_b], [], [], 0.25)[0]:
                    continue
                for _ in range(1000):
                    try:
                        got.append(os.read(fd_b, 65536))
                    except BlockingIOError:
                        break
            return tcp_only(got), batch.coalesced
        finally:
            os.close(fd_a)
            if fd_b >= 0:
                os.close(fd_b)


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("sizes", [[1368] * 2, [1368] * 10 + [500], [1000] * 64 + [1000] * 3])
def test_kernel_cuts_our_tun_super_packets_back_into_our_segments(io: ModuleType, version: int,
                                                                  sizes: list[int]) -> None:
    packets = stream(version, sizes)
    delivered, coalesced = through_the_kernel(io, packets, l2=0)
    assert coalesced >= 1 + (len(sizes) > 64)  # super-packets were written (64 segments at most each)
    assert len(delivered) == len(packets)
    l4 = 20 if version == 4 else 40
    for packet in delivered:
        assert l4_checksum_ok(packet, l4, 6)  # the kernel completed our partial checksum
        if version == 4:
            assert ones_sum(packet[:20]) == 0xFFFF
    assert delivered == [forwarded(p) for p in packets]


@pytest.mark.parametrize("version", [4, 6])
def test_kernel_cuts_our_tap_super_frames_back_into_our_segments(io: ModuleType, version: int) -> None:
    frames = segments(version, [1380] * 10 + [200])
    delivered, coalesced = through_the_kernel(io, frames, l2=14)
    assert coalesced == 1
    l4 = 20 if version == 4 else 40
    assert all(l4_checksum_ok(p, l4, 6) for p in delivered)
    assert delivered == [forwarded(f[14:]) for f in frames]
