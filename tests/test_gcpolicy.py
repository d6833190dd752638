"""The daemon's GC policy (tunnel/runtime/gcpolicy.py, ``WGPY_GC``): what it freezes and when,
that it leaves CPython's collector alone in ``default`` mode, what ``wg-py show`` reports, and
that the long-lived state it freezes (peers, sessions) does not depend on the collector.

The collector is the process's: every test restores it (unfreeze, no active policy)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import weakref
from collections.abc import Iterator
from types import ModuleType

import pytest

from tunnel.runtime import gcpolicy
from tunnel.wireguard.datapath import load as load_datapath

from .wgpair import Pair, ipv4_packet


class Marker:
    """A tracked object we can find among the collector's (and refer to weakly)."""

    def __init__(self) -> None:
        self.other: Marker | None = None


def tracked(obj: object) -> bool:
    """Whether the collector still looks at ``obj`` (frozen objects are in no generation)."""
    return any(o is obj for o in gc.get_objects())


@pytest.fixture(autouse=True)
def clean_collector() -> Iterator[None]:
    gc.unfreeze()
    gcpolicy._active = None
    yield
    gc.unfreeze()
    gcpolicy._active = None


@pytest.mark.parametrize(("value", "mode"), [(None, "freeze"), ("", "freeze"), (" Freeze ", "freeze"),
                                             ("default", "default")])
def test_parse_mode(value: str | None, mode: str) -> None:
    assert gcpolicy.parse_mode(value) == mode


@pytest.mark.parametrize("value", ["off", "freeze,default", "0"])
def test_a_bad_mode_is_a_clear_error(value: str) -> None:
    with pytest.raises(ValueError, match="WGPY_GC must be one of freeze, default"):
        gcpolicy.parse_mode(value)


def test_a_bad_mode_fails_the_daemon_start() -> None:
    """Refused before anything is created, with the reason on stderr and exit status 1."""
    done = subprocess.run([sys.executable, "-m", "tunnel.wireguard.daemon", "wgpygc0"],
                          env={**os.environ, "WGPY_GC": "never"}, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 1
    assert "WGPY_GC must be one of" in done.stderr
    assert not os.path.exists("/sys/class/net/wgpygc0")


def test_start_collects_the_garbage_then_freezes_the_rest() -> None:
    kept = Marker()
    garbage = Marker()
    garbage.other = garbage  # a cycle: only the collector frees it
    gone = weakref.ref(garbage)
    del garbage
    assert tracked(kept)
    policy = gcpolicy.GcPolicy("freeze")
    policy.start()
    assert gone() is None
    assert not tracked(kept) and gc.get_freeze_count() > 0
    assert policy.freezes == 1
    state = gcpolicy.state()
    assert state["mode"] == "freeze" and state["freezes"] == 1 and state["frozen"] == gc.get_freeze_count()
    assert state["threshold"] == list(gc.get_threshold()) and len(state["collections"]) == 3


def test_default_mode_leaves_the_collector_alone() -> None:
    kept = Marker()
    policy = gcpolicy.GcPolicy("default")
    policy.start()
    policy.housekeeping()
    assert tracked(kept) and gc.get_freeze_count() == 0 and policy.freezes == 0
    assert gcpolicy.state()["mode"] == "default"


def test_housekeeping_freezes_what_reached_the_oldest_generation_only_past_the_threshold() -> None:
    policy = gcpolicy.GcPolicy("freeze")
    policy.start()
    few = [Marker() for _ in range(gcpolicy.REFREEZE_OBJECTS // 10)]
    gc.collect()  # survivors of a full collection are in the oldest generation
    policy.housekeeping()
    assert policy.freezes == 1 and tracked(few[0])
    many = [Marker() for _ in range(gcpolicy.REFREEZE_OBJECTS)]
    gc.collect()
    policy.housekeeping()
    assert policy.freezes == 2
    assert not tracked(many[0]) and not tracked(few[0])
    policy.housekeeping()  # nothing new: no freeze
    assert policy.freezes == 2


def test_young_objects_are_not_counted_for_a_freeze() -> None:
    """Objects that never survived a collection (a batch's, a request's) do not trigger one."""
    policy = gcpolicy.GcPolicy("freeze")
    policy.start()
    gc.disable()
    try:
        young = [Marker() for _ in range(2 * gcpolicy.REFREEZE_OBJECTS)]
        policy.housekeeping()
        assert policy.freezes == 1 and tracked(young[0])
    finally:
        gc.enable()


def test_state_without_a_policy_is_default() -> None:
    assert gcpolicy.state()["mode"] == "default" and gcpolicy.state()["freezes"] == 0


def test_show_renders_the_policy() -> None:
    from tunnel.ops import show

    stats = {"interface": "wg0", "gc": {"mode": "freeze", "frozen": 28000, "freezes": 1,
                                        "collections": [4, 0, 0], "collected": [32, 0, 0],
                                        "threshold": [700, 10, 10], "last_pause_us": 7000}}
    assert "  gc: freeze, 28000 objects frozen (1 freezes), collections 4/0/0" in show.render(stats, 0.0)


def test_a_removed_peer_with_sessions_is_freed_without_the_collector(backend: ModuleType) -> None:
    """What freezing relies on: the engine's long-lived objects form no reference cycles that
    only the collector could break. A peer with a handshake done and data sent both ways,
    removed from its device, is freed by reference counting alone (collector off), once the
    timer queue's entries for it came due (they hold it until then, as a plain reference)."""
    native = backend.__name__ == "crypto._transport"
    pair = Pair(cipher=backend.TransportCipher, datapath=load_datapath("cython" if native else "pure"))
    pair.send(pair.a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    pair.send(pair.b, ipv4_packet("10.0.0.2", "10.0.0.1"))
    assert pair.a.delivered and pair.b.delivered
    peer = pair.peer_ab
    public_key = peer.public_key
    assert peer.current is not None
    gone = weakref.ref(peer)
    keypair, keypair_id = type(peer.current), id(peer.current)  # a Keypair takes no weak reference
    gc.collect()
    gc.disable()
    try:
        pair.a.device.remove_peer(public_key)
        del peer
        pair.peer_ab = None  # type: ignore[assignment]
        assert gone() is not None  # the timer queue's stale entries
        pair.advance(600.0, step=30.0)  # past every timer (zero key material: 540 s)
        assert gone() is None
        assert not any(type(o) is keypair and id(o) == keypair_id for o in gc.get_objects())
    finally:
        gc.enable()
