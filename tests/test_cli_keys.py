"""`wg-py genkey|pubkey|genpsk` are interchangeable with `wg genkey|pubkey|genpsk`."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from crypto import keys

WG = shutil.which("wg")
needs_wg = pytest.mark.skipif(WG is None, reason="wireguard-tools (wg) is not installed")


def wgpy(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunnel.cli", *args], input=stdin, capture_output=True, text=True, timeout=30
    )


def wg(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert WG is not None
    return subprocess.run([WG, *args], input=stdin, capture_output=True, text=True, timeout=30)


@needs_wg
def test_wg_genkey_into_wgpy_pubkey() -> None:
    private = wg("genkey").stdout
    assert wgpy("pubkey", stdin=private).stdout == wg("pubkey", stdin=private).stdout


@needs_wg
def test_wgpy_genkey_into_wg_pubkey() -> None:
    result = wgpy("genkey")
    assert result.returncode == 0
    private = result.stdout
    assert len(private.strip()) == 44
    expected = wg("pubkey", stdin=private)
    assert expected.returncode == 0
    assert wgpy("pubkey", stdin=private).stdout == expected.stdout


@needs_wg
def test_genpsk_both_ways() -> None:
    for psk in (wgpy("genpsk").stdout, wg("genpsk").stdout):
        assert len(keys.from_base64(psk)) == 32
        assert wg("pubkey", stdin=psk).returncode == 0  # wg accepts it as a 32-byte key


@pytest.mark.parametrize("bad", ["", "hello\n", "A" * 44 + "\n", "AAAA" * 10 + "AAB=\n", "!" * 43 + "=\n"])
def test_malformed_key_is_refused(bad: str) -> None:
    result = wgpy("pubkey", stdin=bad)
    assert result.returncode == 1
    assert "Key is not the correct length or format" in result.stderr
    assert result.stdout == ""
    if WG is not None:
        assert wg("pubkey", stdin=bad).returncode == 1  # and wg agrees it is malformed


def test_genkey_is_clamped_and_fresh() -> None:
    a = keys.from_base64(wgpy("genkey").stdout)
    b = keys.from_base64(wgpy("genkey").stdout)
    assert a != b
    assert a[0] & 7 == 0 and a[31] & 0x80 == 0 and a[31] & 0x40
