"""Inputs that broke the "parse or reject" rule while fuzzing (fuzz/), each now a rejection.

Every test feeds the parser the offending input and expects the parser's documented error type
(never another exception), with the error's reason/code where the parser gives one.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from crypto.keys import KeyError_, from_base64
from tunnel.cni import plugin
from tunnel.cni.spec import DECODING_FAILURE, INVALID_CONFIG, CniError, decode, parse_config
from tunnel.mesh.config import ConfigError, NetworkConfig, subnet_token
from tunnel.mesh.record import RecordError, parse_claim
from tunnel.wireguard.config import ConfigError as WgConfigError
from tunnel.wireguard.config import parse_config as parse_wg_quick

MESH = NetworkConfig(ipaddress.ip_network("10.244.0.0/16"), 24)
KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
DEEP = "[" * 4000  # deeper than the interpreter's recursion limit: json raises RecursionError


@pytest.mark.parametrize("renewed", ["1e999", "-1e999", "NaN", "Infinity"])
def test_claim_with_a_non_finite_renewal_time_is_rejected(renewed: str) -> None:
    token = subnet_token(ipaddress.ip_network("10.244.3.0/24"))
    raw = f'{{"public_key": "{KEY}", "name": "n", "renewed": {renewed}}}'
    with pytest.raises(RecordError) as info:
        parse_claim(token, raw, MESH)
    assert info.value.reason == "bad_claim"


def test_deeply_nested_network_config_is_rejected() -> None:
    with pytest.raises(ConfigError, match="not JSON"):
        NetworkConfig.from_json(DEEP)


def test_deeply_nested_cni_config_is_a_decoding_failure() -> None:
    with pytest.raises(CniError) as info:
        decode(DEEP.encode())
    assert info.value.code == DECODING_FAILURE


def test_deeply_nested_mesh_state_is_error_100(tmp_path: Path) -> None:
    (tmp_path / "wg0.json").write_text(DEEP)
    config = parse_config({"cniVersion": "1.0.0", "name": "pods", "type": "wg-py-cni", "mesh": "wg0",
                           "stateDir": str(tmp_path)}, "ADD")
    with pytest.raises(CniError) as info:
        plugin.read_state(config, {})
    assert info.value.code == 100


def test_deeply_nested_cache_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "cache.json"
    path.write_text(DEEP)
    assert plugin.read_cache(path) is None


@pytest.mark.parametrize("prev", [
    {"interfaces": [1]}, {"interfaces": "eth0"}, {"ips": 5}, {"ips": ["10.0.0.1/24"]},
    {"routes": {"dst": "0.0.0.0/0"}}, {"dns": ["1.1.1.1"]},
])
def test_prev_result_of_the_wrong_shape_is_error_7(prev: dict[str, object]) -> None:
    raw = {"cniVersion": "1.0.0", "name": "pods", "type": "wg-py-cni", "mesh": "wg0", "prevResult": prev}
    for command in ("ADD", "DEL", "CHECK"):
        with pytest.raises(CniError) as info:
            parse_config(json.loads(json.dumps(raw)), command)
        assert info.value.code == INVALID_CONFIG


def test_prev_result_with_nulls_is_fine() -> None:
    raw = {"cniVersion": "1.0.0", "name": "pods", "type": "wg-py-cni", "mesh": "wg0",
           "prevResult": {"interfaces": None, "ips": [], "routes": None, "dns": {}}}
    assert parse_config(raw, "CHECK").prev_result == raw["prevResult"]


@pytest.mark.parametrize("key", ["\u06fe" + "Q" * 42 + "=", "QEBA" * 10 + "QE\u00e9="])
def test_wg_quick_key_with_a_non_ascii_character_is_a_config_error(key: str) -> None:
    # found by fuzz/wg_quick.py: base64 raised a plain ValueError for non-ASCII text
    with pytest.raises(WgConfigError, match="wg0.conf:2: Key is not the correct length or format"):
        parse_wg_quick(f"[Interface]\nPrivateKey = {key}\n", "wg0.conf")
    with pytest.raises(KeyError_):
        from_base64(key)
