"""``workers N`` without namespaces: the option's parsing (CLI word, configuration file), the
show line, and a worker's timers (what its journal arms). The threads themselves run against
the kernel's vxlan in tests/test_vxlan_workers_netns.py."""

from __future__ import annotations

import time

import pytest

from tunnel.vxlan import cli
from tunnel.vxlan.conf import parse_conf
from tunnel.vxlan.config import MAX_WORKERS, VxlanConfig
from tunnel.vxlan.workers import Timers


def test_workers_word_and_default() -> None:
    cfg, _ = cli.parse_add(["vx0", "id", "5", "remote", "10.0.0.1", "workers", "2"])
    assert cfg.workers == 2
    cfg, _ = cli.parse_add(["vx0", "id", "5"])
    assert cfg.workers == 1


@pytest.mark.parametrize("value", ["0", "-1", str(MAX_WORKERS + 1), "two"])
def test_workers_out_of_range_is_a_usage_error(value: str) -> None:
    with pytest.raises(cli.UsageError, match="workers"):
        cli.parse_add(["vx0", "id", "5", "workers", value])
    if value.lstrip("-").isdigit():
        with pytest.raises(ValueError, match="workers"):
            VxlanConfig(vni=5, workers=int(value))


def test_workers_key_in_a_configuration_file() -> None:
    conf = parse_conf("vx0", "id 42 remote 10.9.0.2\nworkers 2   # two queues\naddress 10.1.0.1/24\n")
    cfg, _ = cli.parse_add([conf.name, *conf.add])
    assert cfg.workers == 2 and conf.addresses == ["10.1.0.1/24"]


def test_show_renders_the_workers_line_only_with_more_than_one() -> None:
    cfg = VxlanConfig(vni=5, remote="10.0.0.1", workers=2).as_dict()
    stats = {"rx_packets": 3, "rx_bytes": 0, "tx_packets": 4, "tx_bytes": 0, "fdb_entries": 1,
             "fdb_learned": 0, "fdb_migrated": 0, "fdb_evicted": 0, "fdb_aged": 0}
    paths = [{"tx_frames": 1, "rx_frames": 2}, {"tx_frames": 3, "rx_frames": 1}]
    text = cli.render_show({"name": "vx0", "config": cfg, "stats": stats, "workers": paths})
    assert "workers 2" in text and "workers: #0 tx 1 rx 2, #1 tx 3 rx 1" in text
    one = cli.render_show({"name": "vx0", "config": VxlanConfig(vni=5).as_dict(), "stats": stats,
                           "workers": paths[:1]})
    assert "workers" not in one


def test_timers_run_what_is_due_in_order() -> None:
    timers = Timers()
    assert timers.timeout() == -1.0
    ran: list[str] = []
    timers.call_later(0.0, lambda: ran.append("a"))
    timers.call_later(30.0, lambda: ran.append("late"))
    timers.call_later(0.0, lambda: ran.append("b"))
    assert 0.0 <= timers.timeout() <= 0.001
    time.sleep(0.001)
    timers.run_due()
    assert ran == ["a", "b"] and len(timers.due) == 1
    assert 29.0 < timers.timeout() <= 30.0
