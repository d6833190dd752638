"""What a WireGuard interface reports beyond a UAPI ``get``: rates, drops, handshakes, sans-I/O.

:func:`device_stats` turns a :class:`~tunnel.wireguard.device.Device`'s counters into a
JSON-ready dict; the shell (:meth:`tunnel.wireguard.interface.Interface.stats`) adds its own
facts (batch I/O, offloads, pumps) and serves the result on the UAPI socket as the ``stats=1``
request (see :mod:`tunnel.wireguard.uapi_session`), to ``wg-py show``/``top`` and to the
Prometheus collector (``tunnel.metrics``).

Rates: :class:`RateMeter` keeps samples of each peer's (tx, rx) byte counters, taken by the
daemon about once a second, and answers bytes per second over the last ``window`` seconds
(from the oldest sample inside the window to the counters now). Nothing reads a clock here:
every call takes ``now``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Mapping
from typing import Any, Generic, TypeVar

from crypto import keys
from tunnel.wireguard.device import Device
from tunnel.wireguard.messages import Drop
from tunnel.wireguard.uapi import format_endpoint, format_prefix

RATE_WINDOW = 5.0  # seconds of history the rates are computed over
K = TypeVar("K", bound=Hashable)


class RateMeter(Generic[K]):
    """Rates of monotonic (tx, rx) byte counters per key, over the last ``window`` seconds."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        if window <= 0:
            raise ValueError("the rate window must be positive")
        self.window = window
        self._samples: deque[tuple[float, dict[K, tuple[int, int]]]] = deque()

    def sample(self, now: float, counters: Mapping[K, tuple[int, int]]) -> None:
        """Record the counters at ``now`` (monotonic seconds, not decreasing)."""
        samples = self._samples
        if samples and now <= samples[-1][0]:
            samples[-1] = (samples[-1][0], dict(counters))
            return
        samples.append((now, dict(counters)))
        # Keep one sample at or before the window's start, so a rate covers the whole window.
        while len(samples) > 1 and samples[1][0] <= now - self.window:
            samples.popleft()

    def rates(self, now: float, counters: Mapping[K, tuple[int, int]]) -> dict[K, tuple[float, float]]:
        """Bytes per second (tx, rx) per key of ``counters`` since the oldest kept sample.

        A key without an earlier sample, or whose counter went down (a peer removed and added
        again), has rate 0. Without any sample older than ``now`` every rate is 0.
        """
        base: dict[K, tuple[int, int]] | None = None
        elapsed = 0.0
        for when, values in self._samples:
            if when < now:
                base, elapsed = values, now - when
                break
        out: dict[K, tuple[float, float]] = {}
        for key, (tx, rx) in counters.items():
            old = base.get(key) if base is not None else None
            if old is None or elapsed <= 0:
                out[key] = (0.0, 0.0)
            else:
                out[key] = (max(0, tx - old[0]) / elapsed, max(0, rx - old[1]) / elapsed)
        return out


def peer_counters(device: Device) -> dict[bytes, tuple[int, int]]:
    """``{public key: (tx_bytes, rx_bytes)}`` of every peer (what :class:`RateMeter` samples)."""
    return {pk: (peer.tx_bytes, peer.rx_bytes) for pk, peer in device.peers.items()}


def implementation_name(module: Any) -> str:
    """``cython`` or ``pure`` for a native/pure twin module (pure twins end in ``_ref``)."""
    name: str = getattr(module, "__name__", "")
    return "pure" if name.endswith("_ref") or name.endswith(".transport") else "cython"


def device_stats(device: Device, rates: Mapping[bytes, tuple[float, float]]) -> dict[str, Any]:
    """The engine's part of the stats (JSON-ready; keys base64 as ``wg`` prints them).

    ``peers`` lists, per peer: ``public_key``, ``endpoint`` (``ip:port`` or None),
    ``allowed_ips``, ``latest_handshake`` (Unix time or 0), ``handshakes`` (sessions derived),
    ``initiations_sent``, ``tx_bytes``/``rx_bytes``, ``tx_rate``/``rx_rate`` (bytes/s),
    ``persistent_keepalive``, ``staged`` (packets waiting for a session). ``drops`` counts by
    :class:`~tunnel.wireguard.messages.Drop` name; ``cookie_replies_sent``.
    """
    peers = []
    for pk, peer in device.peers.items():
        tx_rate, rx_rate = rates.get(pk, (0.0, 0.0))
        endpoint = peer.endpoint
        peers.append({
            "public_key": keys.to_base64(pk),
            "endpoint": None if endpoint is None else format_endpoint((endpoint.ip, endpoint.port)),
            "allowed_ips": [format_prefix(addr, cidr) for addr, cidr in device.allowed_ips.entries(peer)],
            "latest_handshake": int(peer.last_handshake_wall or 0),
            "handshakes": peer.handshakes,
            "initiations_sent": peer.initiations_sent,
            "tx_bytes": peer.tx_bytes,
            "rx_bytes": peer.rx_bytes,
            "tx_rate": round(tx_rate, 1),
            "rx_rate": round(rx_rate, 1),
            "persistent_keepalive": peer.persistent_keepalive,
            "staged": len(peer.staged),
        })
    public = device.public_key
    return {
        "public_key": None if public is None else keys.to_base64(public),
        "peers": peers,
        "drops": dict(sorted((k, v) for k, v in device.drops.items() if v)),
        "cookie_replies_sent": device.drops[Drop.COOKIE_SENT],  # each one answered a message instead
        "datapath": implementation_name(device.datapath),
    }
