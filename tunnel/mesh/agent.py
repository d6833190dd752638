"""The mesh agent: the asyncio shell joining one node to a network through a :class:`Store`.

Life of an agent (:meth:`Agent.run`):

1. **Config.** Read ``config``; absent or invalid is a :class:`MeshError` (run ``mesh init``).
2. **Claim** (:meth:`Agent.claim`). A node is its public key. If a claim already names the key,
   that subnet is the node's again (sticky across restarts and IP changes) and its ``renewed``
   time is refreshed. Otherwise a random free subnet is claimed with create-if-absent (a lost
   race just tries another); only when none is free is a claim reclaimed, and only one whose
   key has no live record and whose ``renewed`` is older than the config's ``claim_grace``
   (compare-and-swap on its revision, so two reclaimers cannot both win).
3. **Data plane.** The backend brings up (or adopts) the interface with the node's address.
4. **Publish.** Grant a lease of ``ttl`` seconds, put the node record attached to it.
5. **Run** three loops until stopped:
   * keepalive every ``ttl/3``; a lease found gone (expired during an outage) is granted
     again and the record re-put: the agent never exits because its lease was lost. The claim's
     ``renewed`` is refreshed every ``min(claim_grace/4, 1 h)``.
   * watch: list the prefix, reconcile, watch from the next revision and reconcile after each
     batch (coalesced: see :meth:`Agent._reconcile_loop`; values are parsed once per
     ``(key, mod_revision)`` by :class:`~tunnel.mesh.record.RecordCache`). A compacted or lost
     watch, a recovered store and every ``resync`` seconds lead to a full re-list (so deletes
     missed around a compaction are caught: etcd-io/etcd#18089).
   * a periodic reconcile every ``interval`` seconds (roaming timeouts, a drifted device).
6. **Leave** (:meth:`Agent.leave`, on SIGTERM): revoke the lease (its record goes with it),
   take the interface down, remove the state file. The claim stays: the key comes back to it.

Store outages: every store call failing is counted by kind and retried with backoff (0.5 s
doubling, capped at ``ttl/3`` for the keepalive so the lease survives short outages); nothing is
reconciled from a failed read, so the data plane stays exactly as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from tunnel.mesh.backend import Backend, BackendError
from tunnel.mesh.config import IPNetwork, Keys, NetworkConfig, first_host, parse_key_token, parse_subnet_token
from tunnel.mesh.reconcile import Installed, PeerSpec, apply_partial, reconcile
from tunnel.mesh.record import (
    Claim,
    Node,
    NodeRecord,
    RecordCache,
    RecordError,
    View,
    decode_key,
    encode_key,
    format_endpoint,
    parse_claim,
)
from tunnel.mesh.state import Counters, read_state, remove_state, state_path, write_state
from tunnel.mesh.store import Compacted, KeyValue, Store, StoreError

log = logging.getLogger("tunnel.mesh")
T = TypeVar("T")

DEFAULT_TTL = 30
BACKOFF_MIN = 0.5
BACKOFF_MAX = 10.0
L2_REFUSED = ("l2 mode is not built yet: the mesh does not drive the VXLAN endpoints; use --mode l3 and "
              "add one by hand inside the mesh interface's daemon ('wg-py vxlan add NAME id VNI dev IFACE' "
              "and 'wg-py vxlan fdb append 00:00:00:00:00:00 NAME dst ADDR' per node)")


class MeshError(RuntimeError):
    """The agent cannot go on (no network config, network full); the message says why."""


@dataclass
class AgentOptions:
    network: str
    iface: str
    private_key: bytes
    public_key: bytes
    endpoints: tuple[tuple[str, int], ...] = ()
    name: str = ""
    ttl: int = DEFAULT_TTL
    keepalive: int | None = None  # None: the network config's
    listen_port: int | None = None  # None: the network config's port
    interval: float = 10.0  # periodic reconcile
    resync: float = 60.0  # periodic full re-list
    coalesce: float = 0.05  # minimum spacing of watch-driven reconciles (seconds)
    duty: float = 0.01  # ... stretched so that planning takes at most this share of the time
    coalesce_max: float = 1.0  # ... but never beyond this many seconds
    state_dir: Path | None = None  # None: no state file
    wall: Callable[[], float] = field(default=time.time)
    rng: random.Random = field(default_factory=random.Random)


class Agent:
    def __init__(self, store: Store, backend: Backend, options: AgentOptions) -> None:
        self.store = store
        self.backend = backend
        self.options = options
        self.keys = Keys(options.network)
        self.counters = Counters()
        self.config: NetworkConfig | None = None
        self.subnet: IPNetwork | None = None
        self.lease = 0
        self.revision = 0
        self.installed = Installed()
        self.view = View()
        self.joined = asyncio.Event()  # set once the record is published
        self.cache: RecordCache | None = None  # made once the config is read
        self._seen: dict[bytes, tuple[int, Node]] = {}  # key -> (revision, the node with its seen_at)
        self._view_generation = -1  # the cache generation self.view was built from
        self._rejected: dict[str, tuple[str, bytes]] = {}
        self._claim_revision = 0
        self._claim_renewed = 0.0
        self._restart = asyncio.Event()
        self._restart_reason = ""
        self._reconcile_lock = asyncio.Lock()
        self._wanted = asyncio.Event()  # a watch batch arrived: reconcile (coalesced)
        self._plan_seconds = 0.0  # CPU time of the last reconcile's planning (view + plan)
        self._stopping = False

    # -- helpers -------------------------------------------------------------------------------

    @property
    def keepalive(self) -> int:
        assert self.config is not None
        return self.config.keepalive if self.options.keepalive is None else self.options.keepalive

    def _store_error(self, exc: StoreError, what: str) -> None:
        self.counters.store_errors[exc.kind] += 1
        self.counters.store_up = False
        log.warning("%s: store error while %s: %s", self.options.iface, what, exc)

    async def _retry(self, what: str, call: Callable[[], Awaitable[T]], cap: float = BACKOFF_MAX) -> T:
        """``call()`` until it succeeds, with backoff; store errors are counted, others propagate."""
        delay = BACKOFF_MIN
        while True:
            try:
                result = await call()
            except StoreError as exc:
                self._store_error(exc, what)
                await asyncio.sleep(delay * (0.75 + self.options.rng.random() / 2))
                delay = min(delay * 2, cap)
                continue
            self.counters.store_up = True
            return result

    def _record(self) -> NodeRecord:
        """This node's record; an endpoint given without a port (port 0) gets the listen port."""
        assert self.subnet is not None and self.config is not None
        port = self.options.listen_port or self.config.port
        endpoints = tuple((host, p or port) for host, p in self.options.endpoints)
        return NodeRecord(self.options.public_key, self.subnet, self.options.name, endpoints)

    # -- joining -------------------------------------------------------------------------------

    async def load_config(self) -> NetworkConfig:
        kv = await self.store.get(self.keys.config)
        if kv is None:
            raise MeshError(f"network {self.options.network!r} has no config: run 'wg-py mesh init' first")
        config = NetworkConfig.from_json(kv.value)
        if config.mode == "l2":
            raise MeshError(L2_REFUSED)
        self.config = config
        if self.cache is None:
            self.cache = RecordCache(config)
        else:
            self.cache.set_config(config)
        return config

    async def claim(self) -> IPNetwork:
        """Find or claim this key's subnet (see the module docstring); MeshError if the network is full."""
        config = self.config
        assert config is not None
        me = self.options.public_key
        parsed: dict[str, tuple[int, Claim | None]] = {}  # token -> (mod_revision, claim); retries reparse changes only
        for _attempt in range(64):
            kvs, _ = await self.store.list(self.keys.claims)
            taken: set[IPNetwork] = set()
            mine: list[tuple[int, Claim, KeyValue]] = []
            valid: list[tuple[Claim, KeyValue]] = []
            for kv in kvs:
                token = kv.key[len(self.keys.claims):]
                memo = parsed.get(token)
                if memo is None or memo[0] != kv.mod_revision:
                    try:
                        memo = (kv.mod_revision, parse_claim(token, kv.value, config))
                    except ValueError:
                        memo = (kv.mod_revision, None)
                    parsed[token] = memo
                claim_or_none = memo[1]
                if claim_or_none is None:
                    broken = parse_subnet_token(token)
                    if broken is not None:
                        taken.add(broken)
                    continue
                claim = claim_or_none
                taken.add(claim.subnet)
                valid.append((claim, kv))
                if claim.public_key == me:
                    mine.append((config.index_of(claim.subnet) or 0, claim, kv))
            if mine:
                _, claim, kv = min(mine, key=lambda item: item[0])
                if await self._renew_claim(claim.subnet, kv.mod_revision):
                    return claim.subnet
                continue
            subnet = self._pick_free(config, taken)
            now = int(self.options.wall())
            fresh = Claim(subnet, me, self.options.name, now) if subnet is not None else None
            if fresh is not None:
                if await self.store.create(self.keys.claim(fresh.subnet), fresh.to_json().encode()):
                    kv_new = await self.store.get(self.keys.claim(fresh.subnet))
                    self._claim_revision = kv_new.mod_revision if kv_new else 0
                    self._claim_renewed = self.options.wall()
                    log.info("%s: claimed %s", self.options.iface, fresh.subnet)
                    return fresh.subnet
                continue  # lost a race: list again
            reclaimed = await self._reclaim(config, valid, now)
            if reclaimed is not None:
                return reclaimed
            raise MeshError(f"network {config.network} has no free subnet of /{config.subnet_len}")
        raise MeshError("could not claim a subnet after 64 attempts (too much contention?)")

    def _pick_free(self, config: NetworkConfig, taken: set[IPNetwork]) -> IPNetwork | None:
        """A random subnet no claim names (random, so that agents joining at once rarely collide)."""
        count = config.subnet_count
        used = {i for i in (config.index_of(s) for s in taken) if i is not None}
        if len(used) >= count:
            return None
        if len(used) <= count // 2:
            for _ in range(64):
                index = self.options.rng.randrange(count)
                if index not in used:
                    return config.subnet_at(index)
        free = [i for i in range(count) if i not in used]
        return config.subnet_at(self.options.rng.choice(free)) if free else None

    async def _reclaim(self, config: NetworkConfig, valid: list[tuple[Claim, KeyValue]], now: int) -> IPNetwork | None:
        nodes, _ = await self.store.list(self.keys.nodes)
        live = {parse_key_token(kv.key[len(self.keys.nodes):]) for kv in nodes}
        for claim, kv in sorted(valid, key=lambda item: item[0].renewed):
            if claim.public_key in live or claim.renewed + config.claim_grace > now:
                continue
            fresh = Claim(claim.subnet, self.options.public_key, self.options.name, now)
            if await self.store.replace(kv.key, fresh.to_json().encode(), kv.mod_revision):
                log.warning("%s: reclaimed %s from an absent key (renewed %ds ago)", self.options.iface,
                            claim.subnet, now - claim.renewed)
                return await self.claim()  # picks it up as ours, with its revision
        return None

    async def _renew_claim(self, subnet: IPNetwork, mod_revision: int) -> bool:
        fresh = Claim(subnet, self.options.public_key, self.options.name, int(self.options.wall()))
        key = self.keys.claim(subnet)
        if not await self.store.replace(key, fresh.to_json().encode(), mod_revision):
            return False
        kv = await self.store.get(key)
        self._claim_revision = kv.mod_revision if kv else 0
        self._claim_renewed = self.options.wall()
        self.counters.claim_renewals += 1
        return True

    async def publish(self) -> None:
        """Grant a fresh lease and put this node's record on it."""
        lease = await self.store.grant(self.options.ttl)
        try:
            await self.store.put(self.keys.node(self.options.public_key), self._record().to_json().encode(), lease)
        except StoreError:
            with contextlib.suppress(StoreError):
                await self.store.revoke(lease)
            raise
        old, self.lease = self.lease, lease
        if old:
            self.counters.lease_regrants += 1
        log.info("%s: published %s on lease %x (ttl %ds)", self.options.iface, self.subnet, lease, self.options.ttl)

    async def join(self) -> None:
        """Steps 1-4 of the module docstring."""
        config = await self._retry("reading the config", self.load_config)
        self.subnet = await self._retry("claiming a subnet", self.claim)
        self._adopt_state()
        listen_port = self.options.listen_port or config.port
        await self.backend.setup(self.options.private_key, listen_port, first_host(self.subnet), config.mtu)
        await self._retry("publishing the record", self.publish)
        self.joined.set()

    def _adopt_state(self) -> None:
        """Take over what a previous agent on this interface installed (its state file's ``owned``)."""
        if self.options.state_dir is None:
            return
        state = read_state(state_path(self.options.state_dir, self.options.iface))
        if not state or state.get("network") != self.options.network:
            return
        owned = state.get("owned") or {}
        with contextlib.suppress(RecordError, ValueError, TypeError, AttributeError):
            for key_text in owned.get("peers", []):
                key = decode_key(key_text)
                self.installed.peers[key] = PeerSpec(key, (), None, -1)  # -1: unknown, rewritten
            for prefix in owned.get("routes", []):
                self.installed.routes.add(ipaddress.ip_network(prefix))

    # -- running -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Join, then keep the node in sync until ``stop`` is set; then leave."""
        tasks: list[asyncio.Task[None]] = []
        try:
            joining = asyncio.ensure_future(self.join())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({joining, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not joining.done():
                joining.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await joining
                return
            stopping.cancel()
            joining.result()
            tasks = [asyncio.ensure_future(loop()) for loop in (self._keepalive_loop, self._watch_loop,
                                                               self._periodic_loop, self._reconcile_loop)]
            await stop.wait()
        finally:
            self._stopping = True
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.leave()

    async def leave(self) -> None:
        """Delete the record (revoke the lease), take the interface down, remove the state file."""
        try:
            async with asyncio.timeout(5.0):
                await self.store.delete(self.keys.node(self.options.public_key))
                if self.lease:
                    await self.store.revoke(self.lease)
        except (StoreError, TimeoutError) as exc:
            log.warning("%s: could not delete the record (%s); it expires with its lease", self.options.iface, exc)
        with contextlib.suppress(BackendError):
            await self.backend.teardown()
        if self.options.state_dir is not None:
            remove_state(state_path(self.options.state_dir, self.options.iface))

    async def _keepalive_loop(self) -> None:
        assert self.config is not None
        period = max(self.options.ttl / 3, 0.2)
        delay = period
        outage = False
        while True:
            await asyncio.sleep(delay)
            try:
                remaining = await self.store.keepalive(self.lease)
                if remaining <= 0:
                    log.warning("%s: lease %x is gone; publishing again", self.options.iface, self.lease)
                    await self.publish()
                renew_every = max(min(self.config.claim_grace / 4, 3600.0), float(self.options.ttl))
                if self.options.wall() - self._claim_renewed >= renew_every and self.subnet is not None:
                    if not await self._renew_claim(self.subnet, self._claim_revision):
                        log.error("%s: the claim of %s changed under us; re-listing", self.options.iface, self.subnet)
                        kv = await self.store.get(self.keys.claim(self.subnet))
                        if kv is not None:
                            await self._renew_claim(self.subnet, kv.mod_revision)
            except StoreError as exc:
                self._store_error(exc, "keeping the lease alive")
                outage = True
                delay = min(max(delay / 2, BACKOFF_MIN) if delay >= period else delay * 2, period)
                continue
            self.counters.store_up = True
            delay = period
            if outage:
                outage = False
                self.restart_watch("store_recovered")

    def restart_watch(self, reason: str) -> None:
        """End the current watch; the watch loop re-lists everything and watches again."""
        self._restart_reason = reason
        self._restart.set()

    async def _periodic_loop(self) -> None:
        last_resync = time.monotonic()
        while True:
            await asyncio.sleep(self.options.interval)
            if time.monotonic() - last_resync >= self.options.resync:
                last_resync = time.monotonic()
                self.restart_watch("resync")
            else:
                await self.reconcile_now()

    async def _watch_loop(self) -> None:
        delay = BACKOFF_MIN
        while True:
            self._restart.clear()
            inner = asyncio.ensure_future(self._list_and_watch())
            restart = asyncio.ensure_future(self._restart.wait())
            try:
                await asyncio.wait({inner, restart}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                inner.cancel()
                restart.cancel()
                raise
            if not inner.done():
                inner.cancel()
                with contextlib.suppress(asyncio.CancelledError, StoreError):
                    await inner
                self.counters.watch_restarts[self._restart_reason or "restart"] += 1
                delay = BACKOFF_MIN
                continue
            restart.cancel()
            exc = inner.exception()
            if isinstance(exc, Compacted):
                self.counters.watch_restarts["compacted"] += 1
                log.info("%s: watch compacted; re-listing", self.options.iface)
                continue
            if isinstance(exc, StoreError):
                self._store_error(exc, "watching")
                self.counters.watch_restarts[exc.kind] += 1
                try:
                    async with asyncio.timeout(delay * (0.75 + self.options.rng.random() / 2)):
                        await self._restart.wait()
                except TimeoutError:
                    pass
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            if exc is not None:
                raise exc
            delay = BACKOFF_MIN

    async def _list_and_watch(self) -> None:
        kvs, revision = await self.store.list(self.keys.prefix)
        self._load(kvs)
        self.revision = revision
        self.counters.store_up = True
        await self.reconcile_now()
        async for batch in self.store.watch(self.keys.prefix, revision + 1):
            for event in batch.events:
                self._event(event.kind, event.key, event.value, event.mod_revision)
            self.revision = batch.revision
            self._wanted.set()

    async def _reconcile_loop(self) -> None:
        """Reconcile after watch batches, coalesced.

        The first batch after a quiet spell is reconciled at once; batches arriving in the window
        after it are folded into one reconcile at the window's end. The window is ``coalesce``
        seconds, stretched to ``plan time / duty`` (at most ``coalesce_max``), so that during a storm (a few
        hundred nodes joining) the O(nodes) planning takes at most ``duty`` of the agent's time
        and each batch costs only O(changed) parses (the cache).
        """
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            await self.reconcile_now()
            window = max(self.options.coalesce, self._plan_seconds / self.options.duty)
            await asyncio.sleep(min(window, self.options.coalesce_max))

    # -- the cache of store values -------------------------------------------------------------

    def _load(self, kvs: list[KeyValue]) -> None:
        """A full listing replaces the cache (keys absent from it are forgotten)."""
        assert self.cache is not None
        claims: dict[str, tuple[bytes, int]] = {}
        records: dict[str, tuple[bytes, int]] = {}
        for kv in kvs:
            if kv.key == self.keys.config:
                self._config_changed(kv.value)
            elif kv.key.startswith(self.keys.claims):
                claims[kv.key[len(self.keys.claims):]] = (kv.value, kv.mod_revision)
            elif kv.key.startswith(self.keys.nodes):
                records[kv.key[len(self.keys.nodes):]] = (kv.value, kv.mod_revision)
        self.cache.load(claims, records)

    def _event(self, kind: str, key: str, value: bytes, revision: int) -> None:
        assert self.cache is not None
        if key == self.keys.config:
            if kind == "put":
                self._config_changed(value)
        elif key.startswith(self.keys.claims):
            token = key[len(self.keys.claims):]
            if kind == "put":
                self.cache.put_claim(token, value, revision)
            else:
                self.cache.delete_claim(token)
        elif key.startswith(self.keys.nodes):
            token = key[len(self.keys.nodes):]
            if kind == "put":
                self.cache.put_record(token, value, revision)
            else:
                self.cache.delete_record(token)

    def _config_changed(self, value: bytes) -> None:
        assert self.config is not None
        try:
            new = NetworkConfig.from_json(value)
        except ValueError as exc:
            log.error("%s: the network config no longer validates (%s); keeping the old one", self.options.iface, exc)
            return
        if (new.network, new.subnet_len, new.mode) != (self.config.network, self.config.subnet_len, self.config.mode):
            log.error("%s: the network config changed its network, subnet length or mode; "
                      "restart the agent to apply it (keeping the old one)", self.options.iface)
            return
        self.config = new
        if self.cache is not None:
            self.cache.set_config(new)

    # -- reconciling ---------------------------------------------------------------------------

    async def reconcile_now(self) -> None:
        """Rebuild the view from the cache and apply the reconciler's plan (serialized)."""
        async with self._reconcile_lock:
            assert self.config is not None
            now = self.options.wall()
            started = time.perf_counter()
            assert self.cache is not None
            if self.cache.generation != self._view_generation:  # else: nothing changed, keep the view
                self._view_generation = self.cache.generation
                view = self.cache.view()
                self._count_rejects(view)
                for key, node in list(view.nodes.items()):
                    seen = self._seen.get(key)
                    if seen is None or seen[0] != node.revision:
                        seen = (node.revision, _with_seen(node, now))
                        self._seen[key] = seen
                    view.nodes[key] = seen[1]  # same revision: the same record, the same node
                for key in set(self._seen) - set(view.nodes):
                    del self._seen[key]
                self.view = view
            view = self.view
            self.counters.nodes_alive = len(view.nodes)
            viewed = time.perf_counter()
            try:
                observed = await self.backend.observe()
                planning = time.perf_counter()
                plan = reconcile(view.nodes, self.installed, observed, now, self.keepalive, self.options.public_key)
                self._plan_seconds = (viewed - started) + (time.perf_counter() - planning)
                if plan.actions:
                    done = await self.backend.apply(plan)
                    self.installed = apply_partial(self.installed, plan, done)
                    self.counters.actions_applied += sum(1 for ok in done.values() if ok)
                    if not all(done.get(i, False) for i in range(len(plan.actions))):
                        self.counters.reconcile_failures += 1
                else:
                    self.installed = plan.installed
            except BackendError as exc:
                self.counters.reconcile_failures += 1
                log.error("%s: reconcile failed: %s", self.options.iface, exc)
            self.counters.reconciles += 1
            self.write_state()

    def _count_rejects(self, view: View) -> None:
        """Count each rejected value once (again only if its value or reason changes)."""
        assert self.cache is not None
        current: dict[str, tuple[str, bytes]] = {}
        for key, reason in view.rejects.items():
            if key.startswith("claims/"):
                raw = self.cache.claim_raw(key[len("claims/"):])
            else:
                raw = self.cache.record_raw(key[len("nodes/"):])
            current[key] = (reason, raw)
            if self._rejected.get(key) != (reason, raw):
                self.counters.hostile_records[reason] += 1
                log.warning("%s: ignoring %s%s: %s", self.options.iface, self.keys.prefix, key, reason)
        self._rejected = current

    def metrics_snapshot(self) -> dict[str, Any]:
        """The counters as plain data (for ``tunnel.metrics.mesh``; call on the agent's loop)."""
        return {"interface": self.options.iface, "network": self.options.network, "joined": self.joined.is_set(),
                "counters": self.counters.as_dict()}

    # -- the state file ------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        assert self.config is not None and self.subnet is not None
        nodes = [{
            "name": node.name, "public_key": encode_key(node.public_key), "subnet": str(node.subnet),
            "address": str(node.address), "endpoints": [format_endpoint(e) for e in node.endpoints],
            "alive": True,
        } for node in sorted(self.view.nodes.values(), key=lambda n: n.subnet.network_address)]
        return {
            "network": self.options.network, "interface": self.options.iface, "mode": self.config.mode,
            "network_cidr": str(self.config.network), "subnet": str(self.subnet),
            "address": str(first_host(self.subnet)), "mtu": self.config.mtu,
            "public_key": encode_key(self.options.public_key), "nodes": nodes,
            "owned": {"peers": sorted(encode_key(k) for k in self.installed.peers),
                      "routes": sorted(str(r) for r in self.installed.routes)},
            "counters": self.counters.as_dict(), "pid": _pid(), "updated": self.options.wall(),
        }

    def write_state(self) -> None:
        if self.options.state_dir is None or self.subnet is None:
            return
        try:
            write_state(state_path(self.options.state_dir, self.options.iface), self.state())
        except OSError as exc:
            log.error("%s: cannot write the state file: %s", self.options.iface, exc)


def _with_seen(node: Node, seen_at: float) -> Node:
    return replace(node, seen_at=seen_at)


def _pid() -> int:
    return os.getpid()
