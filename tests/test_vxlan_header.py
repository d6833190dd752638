"""VXLAN header codec and the kernel's header receive rules."""

from __future__ import annotations

import pytest

from tests.test_vxlan_frames import vxlan_header
from tunnel.vxlan.header import (
    check_header,
    decode_header,
    encode_header,
    tap_mtu,
    write_header,
)


def test_encode_exact_bytes() -> None:
    assert encode_header(42) == bytes.fromhex("080000000000" "2a00")
    assert encode_header(0) == bytes.fromhex("0800000000000000")
    assert encode_header(0xFFFFFF) == bytes([8, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0])
    assert encode_header(0x123456) == bytes([8, 0, 0, 0, 0x12, 0x34, 0x56, 0])


@pytest.mark.parametrize("vni", [-1, 1 << 24])
def test_encode_rejects_out_of_range(vni: int) -> None:
    with pytest.raises(ValueError):
        encode_header(vni)


def test_write_in_place_and_decode() -> None:
    buf = bytearray(b"\xaa" * 20)
    write_header(buf, 4, 4097)
    assert bytes(buf[4:12]) == vxlan_header(4097)
    assert buf[:4] == b"\xaa" * 4 and buf[12:] == b"\xaa" * 8
    assert decode_header(memoryview(buf)[4:]) == (0x08000000, 4097)
    with pytest.raises(ValueError):
        decode_header(b"\x08\x00")


def test_check_header_accepts_valid() -> None:
    assert check_header(vxlan_header(42) + bytes(14), 42) is None


@pytest.mark.parametrize("n", [0, 1, 7])
def test_short_header(n: int) -> None:
    assert check_header(vxlan_header(42)[:n], 42) == "too_short"


@pytest.mark.parametrize("n", [8, 13, 21])
def test_short_inner_frame(n: int) -> None:
    assert check_header((vxlan_header(42) + bytes(14))[:n], 42) == "too_short"


def test_i_flag_required() -> None:
    assert check_header(vxlan_header(42, flags=0) + bytes(14), 42) == "no_i_flag"
    # I missing takes precedence over other faults, as in the kernel
    assert check_header(vxlan_header(7, flags=0x80) + bytes(14), 42) == "no_i_flag"


def test_wrong_vni_before_reserved_bits() -> None:
    assert check_header(vxlan_header(43) + bytes(14), 42) == "wrong_vni"
    assert check_header(vxlan_header(43, flags=0x0C) + bytes(14), 42) == "wrong_vni"


@pytest.mark.parametrize("bit", [b for b in range(64) if b != 4 and not 32 <= b < 56])
def test_every_reserved_bit_drops(bit: int) -> None:
    # bit numbering from the most significant bit of the 8-byte header; bit 4 is I and bits
    # 32..55 the VNI: everything else is reserved.
    hdr = bytearray(vxlan_header(42))
    hdr[bit // 8] |= 0x80 >> (bit % 8)
    assert check_header(bytes(hdr) + bytes(14), 42) == "reserved_bits"


def test_tap_mtu() -> None:
    assert tap_mtu(1500, False) == 1450
    assert tap_mtu(1500, True) == 1430
    assert tap_mtu(9000, False) == 8950
    with pytest.raises(ValueError):
        tap_mtu(100, True)
