"""The WireGuard engine: a sans-I/O device that turns packets into datagrams and back.

Flows (compare wireguard-go's device/send.go and receive.go):

Outbound: 1. the shell reads a batch of IP packets from TUN, each at ``buf[HEADROOM:]``
2. :meth:`Device.send_batch` routes each by destination through allowed-IPs and groups by peer
3. a peer with a usable keypair seals its group in place (one batch call into the transport
cipher); others stage copies and start a handshake 4. the result lists datagrams for the shell.

Inbound: 1. the shell reads a batch of datagrams into buffers 2. :meth:`Device.receive_batch`
classifies them 3. transport messages are grouped by keypair and opened in place in one batch
call 4. each plaintext passes the padding and allowed-IPs source checks and is listed for the TUN
5. then the handshake messages: the batch screen checks mac1 (and under load mac2, answering
with cookie replies) natively, and only those that pass are handled in order, in Python.

Contract: the engine never reads a clock or does I/O. ``now`` is monotonic seconds; ``wall_offset``
turns it into Unix time for TAI64N and for "latest handshake". Outputs that are memoryviews point
into the caller's buffers and are valid until the caller reuses them. Single-threaded.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from crypto import noise, tai64n
from crypto.backend import HEADROOM, REASONS, TransportCipher
from crypto.cookie import SCREENS, CookieChecker, CookieGenerator, reply_receiver
from crypto.primitives import dh_generate
from tunnel.io.endpoint import Endpoint
from tunnel.wireguard.allowedips import AllowedIPs
from tunnel.wireguard.constants import (
    DEFAULT_MTU,
    INITIATION_SIZE,
    KEEPALIVE_TIMEOUT,
    MAX_STAGED_PACKETS,
    MAX_TIMER_HANDSHAKES,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_ON_RECEIVE_AGE,
    REKEY_TIMEOUT,
    ZERO_KEYS_AFTER,
)
from tunnel.wireguard.datapath import select as select_datapath
from tunnel.wireguard.lane import select as select_lane
from tunnel.wireguard.messages import Drop, count_opened
from tunnel.wireguard.output import Output, packet_buffer
from tunnel.wireguard.peer import Keypair, Peer
from tunnel.wireguard.ratelimiter import HandshakeLoad, InitiationLimiter, RateLimiter
from tunnel.wireguard.timers import Jitter, TimerQueue


class Device:
    """A WireGuard interface without its I/O: peers, keys, routing, timers and counters."""

    def __init__(
        self,
        private_key: bytes | None = None,
        *,
        mtu: int = DEFAULT_MTU,
        wall_offset: float = 0.0,
        random: Callable[[int], bytes] = os.urandom,
        cipher: Callable[[bytes, bytes, int], TransportCipher] | None = None,
        datapath: ModuleType | None = None,
        screen: ModuleType | None = None,
        generation: Any = None,
    ) -> None:
        # Bumped on every change a lane rule reads (tunnel/wireguard/lane_ref.py): the pumps'
        # lane snapshots hold while it does not move. The native twin's unless WGPY_PURE=1.
        self.generation: Any = generation if generation is not None else select_lane()[1].Generation()
        self._mtu = mtu
        # The transport implementation (Cython or the pure-Python reference); tests pick both.
        self._cipher = cipher if cipher is not None else TransportCipher
        self.wall_offset = wall_offset
        self._random = random
        self._jitter = Jitter(random)  # for the handshake timers (pooled system randomness)
        self.identity: noise.StaticIdentity | None = None
        self.cookie_checker = CookieChecker(random)
        # The batch handshake screen (crypto._screen, or its pure twin crypto.screen).
        self._screen = screen if screen is not None else SCREENS.select()[1]
        self.peers: dict[bytes, Peer] = {}
        self.allowed_ips: AllowedIPs[Peer] = AllowedIPs()
        self.allowed_ips.generation = self.generation
        self.drops: Counter[str] = Counter()
        self.rate_limiter = RateLimiter()
        self._initiation_limiters: dict[Peer, InitiationLimiter] = {}
        # Our receiver indices: the peer of a handshake in progress, or a session's keypair.
        self.receivers: dict[int, Peer | Keypair] = {}
        self._timers = TimerQueue()
        # Peers by slot (small ints the native route table returns), and the compiled table.
        self.peer_slots: list[Peer | None] = []
        self._free_slots: list[int] = []
        # The per-packet loops in use (Cython or the pure reference); the shell's pump calls
        # its ``lane`` directly.
        self.datapath = datapath if datapath is not None else select_datapath()[1]
        self._routes: tuple[int, Any] = (-1, None)  # (allowed-IPs version, compiled table)
        self.handshake_load = HandshakeLoad()
        self.set_private_key(private_key)

    # ----------------------------------------------------------------- configuration

    def set_private_key(self, private_key: bytes | None) -> None:
        """Set or clear the static key; every session is dropped, as in wireguard-go."""
        if private_key is not None and private_key == bytes(32):
            private_key = None
        if private_key is None:
            self.identity = None
            self.cookie_checker.set_public_key(None)
        else:
            self.identity = noise.StaticIdentity.from_private(private_key)
            self.cookie_checker.set_public_key(self.identity.public)
            own = self.peers.get(self.identity.public)
            if own is not None:
                self.remove_peer(own.public_key)
        for peer in self.peers.values():
            self._expire_sessions(peer)
        self.generation.bump()

    @property
    def mtu(self) -> int:
        """The interface MTU: the largest packet sealed (a lane rule: setting it bumps the generation)."""
        return self._mtu

    @mtu.setter
    def mtu(self, value: int) -> None:
        self._mtu = value
        self.generation.bump()

    @property
    def private_key(self) -> bytes | None:
        return None if self.identity is None else self.identity.private

    @property
    def public_key(self) -> bytes | None:
        return None if self.identity is None else self.identity.public

    def add_peer(self, public_key: bytes) -> Peer:
        """Create (or return) the peer with this public key."""
        peer = self.peers.get(public_key)
        if peer is None:
            peer = Peer(public_key, noise.Handshake(public_key), CookieGenerator(public_key),
                        generation=self.generation)
            self.peers[public_key] = peer
            self._initiation_limiters[peer] = InitiationLimiter()
            peer.slot = self._free_slots.pop() if self._free_slots else len(self.peer_slots)
            if peer.slot == len(self.peer_slots):
                self.peer_slots.append(peer)
            else:
                self.peer_slots[peer.slot] = peer
            self.generation.bump()
        return peer

    def remove_peer(self, public_key: bytes) -> None:
        peer = self.peers.pop(public_key, None)
        if peer is None:
            return
        self._expire_sessions(peer)
        self.allowed_ips.remove_peer(peer)
        self._initiation_limiters.pop(peer, None)
        self.peer_slots[peer.slot] = None
        self._free_slots.append(peer.slot)
        self._routes = (-1, None)  # the slot may be reused: recompile
        peer.generation = None  # no longer the device's: its later changes are not lane state
        self.generation.bump()

    def set_preshared_key(self, peer: Peer, key: bytes | None) -> None:
        peer.handshake.preshared_key = key if key is not None else noise.ZERO_KEY

    def set_persistent_keepalive(self, peer: Peer, interval: int, now: float) -> Output:
        """Change the interval; going from off to on sends a keepalive at once (like wg-go)."""
        was_off = peer.persistent_keepalive == 0
        peer.persistent_keepalive = interval
        if interval == 0:
            peer.timers.persistent_keepalive = None
        elif was_off:
            return self.send_keepalive(peer, now)
        return Output()

    def send_keepalive(self, peer: Peer, now: float) -> Output:
        """Send a keepalive now (or the staged packets, or a handshake if there is no session)."""
        out = Output()
        if self.identity is not None and peer.endpoint is not None:
            self._send_keepalive(peer, now, out)
        return out

    # ----------------------------------------------------------------- outbound

    def send_batch(self, bufs: Sequence[bytearray], lengths: Sequence[int], now: float) -> Output:
        """Route and seal a batch of IP packets read from the TUN.

        ``bufs[i][HEADROOM:HEADROOM+lengths[i]]`` is a packet; each buffer must have room for
        padding and the tag after it (see :func:`packet_buffer`). Sealed datagrams are written
        in place and returned as views; packets waiting for a handshake are copied.
        """
        out = Output()
        groups, no_route, too_big = self.datapath.route_batch(self.routes(), bufs, lengths, HEADROOM, self.mtu)
        if no_route:
            self.drops[Drop.NO_ROUTE] += no_route
        if too_big:
            self.drops[Drop.TOO_BIG] += too_big
        slots = self.peer_slots
        whole = len(groups) == 1
        for slot, indices in groups.items():
            peer = slots[slot]
            assert peer is not None
            if peer.endpoint is None:
                self.drops[Drop.NO_ENDPOINT] += len(indices)
                continue
            if whole and len(indices) == len(bufs):  # the common case: one flow, no copy of lists
                self._send_packets(peer, list(bufs), list(lengths), now, out)
            else:
                self._send_packets(peer, [bufs[i] for i in indices], [lengths[i] for i in indices], now, out)
        return out

    def routes(self) -> Any:
        """The compiled route table, recompiled when allowed-IPs changed since the last use."""
        allowed = self.allowed_ips
        version, table = self._routes
        if version != allowed.version:
            # version read first, stored with the table in one tuple: a worker (workers N)
            # racing an allowed-IPs change leaves an older version, recompiled on the next call
            version = allowed.version
            entries = [(addr, cidr, peer.slot) for peer, prefixes in allowed.owners() for addr, cidr in prefixes]
            table = self.datapath.RouteTable(entries)
            self._routes = (version, table)
        return table

    def _sending_keypair(self, peer: Peer, now: float) -> Keypair | None:
        keypair = peer.current
        if keypair is None or now - keypair.created >= REJECT_AFTER_TIME:
            return None
        if keypair.cipher.send_counter >= REJECT_AFTER_MESSAGES:
            return None
        return keypair

    def lane(self, bufs: list[bytearray], lengths: list[int], now: float) -> tuple[Peer, Keypair] | None:
        """The fast lane for a batch read from the TUN: ``(peer, keypair)``, or None.

        Granted when sealing is all the batch needs: every packet fits the MTU and routes to the
        same peer, which has an endpoint, no staged packets and a current session that seals
        them all without reaching a rekey or reject limit (the steady state of
        :meth:`send_batch`'s rules; the decision is ``datapath.lane``, which the shell's pump
        calls directly). The shell may then seal the batch
        (``keypair.cipher.seal_batch(bufs, lengths, mtu)``), send the sealed prefix to
        ``peer.endpoint`` and report it with :meth:`lane_sent`, so the datagrams leave before any
        bookkeeping. With None, hand the batch to :meth:`send_batch`. Changes nothing.
        """
        lane: tuple[Peer, Keypair] | None = self.datapath.lane(self, bufs, lengths, HEADROOM, now)
        return lane

    def lane_sent(self, peer: Peer, keypair: Keypair, nbytes: int, now: float) -> Output | None:
        """Account a batch the shell sealed whole with :meth:`lane`'s keypair and sent
        (``nbytes`` datagram bytes). Returns what else to send (None: nothing)."""
        out = Output()
        # A TUN packet is never empty (only the engine makes keepalives): the batch is data.
        self._sealed(peer, keypair, nbytes, True, now, out)
        return out if out.datagrams else None

    def _send_packets(
        self, peer: Peer, bufs: list[bytearray], lengths: list[int], now: float, out: Output
    ) -> None:
        keypair = self._sending_keypair(peer, now) if self.identity is not None else None
        sealed = 0
        if keypair is not None and peer.endpoint is not None:
            had_data = any(lengths)
            sealed = keypair.cipher.seal_batch(bufs, lengths, self.mtu)
            endpoint = peer.endpoint
            datagrams = out.datagrams
            for i in range(sealed):
                datagrams.append((memoryview(bufs[i])[: lengths[i]], endpoint))
            if sealed:
                self._sealed(peer, keypair, sum(lengths[:sealed]), had_data, now, out)
        if sealed < len(bufs):
            for i in range(sealed, len(bufs)):
                self._stage(peer, bytes(memoryview(bufs[i])[HEADROOM : HEADROOM + lengths[i]]))
            self._send_initiation(peer, now, False, out)

    def _sealed(self, peer: Peer, keypair: Keypair, nbytes: int, had_data: bool, now: float, out: Output) -> None:
        """Counters and timers for sealed datagrams (``nbytes`` of them) sent to ``peer``."""
        peer.tx_bytes += nbytes
        if had_data:
            self._timer_data_sent(peer, now)
        self._timer_any_authenticated_packet_sent(peer)
        self._timer_any_authenticated_packet_traversal(peer, now)
        self._keep_key_fresh_sending(peer, keypair, now, out)

    def _stage(self, peer: Peer, payload: bytes) -> None:
        if len(peer.staged) >= MAX_STAGED_PACKETS:
            peer.staged.popleft()
            self.drops[Drop.STAGED_OVERFLOW] += 1
        peer.staged.append(payload)
        self.generation.bump()

    def _flush_staged(self, peer: Peer, now: float, out: Output) -> None:
        if not peer.staged:
            return
        if self._sending_keypair(peer, now) is None:
            self._send_initiation(peer, now, False, out)
            return
        payloads = list(peer.staged)
        peer.staged.clear()
        self.generation.bump()
        bufs = [packet_buffer(p, self.mtu) for p in payloads]
        self._send_packets(peer, bufs, [len(p) for p in payloads], now, out)

    def _send_keepalive(self, peer: Peer, now: float, out: Output) -> None:
        if not peer.staged:
            peer.staged.append(b"")
            self.generation.bump()
        self._flush_staged(peer, now, out)

    def _keep_key_fresh_sending(self, peer: Peer, keypair: Keypair, now: float, out: Output) -> None:
        # As wireguard-go's keepKeyFreshSending: the message count applies to both sides, the
        # age only to the initiator (the responder waits for the initiator's rekey).
        if keypair.cipher.send_counter >= REKEY_AFTER_MESSAGES or (
            keypair.is_initiator and now - keypair.created >= REKEY_AFTER_TIME
        ):
            self._send_initiation(peer, now, False, out)

    # ----------------------------------------------------------------- handshakes out

    def _new_index(self, entry: Peer | Keypair) -> int:
        while True:
            index = int.from_bytes(self._random(4), "little")
            if index not in self.receivers:
                self.receivers[index] = entry
                self.generation.bump()
                return index

    def _send_initiation(self, peer: Peer, now: float, is_retry: bool, out: Output) -> None:
        if not is_retry:
            peer.timers.handshake_attempts = 0
        if peer.last_initiation_sent is not None and now - peer.last_initiation_sent < REKEY_TIMEOUT:
            return
        if self.identity is None:
            return
        hs = peer.handshake
        if hs.local_index and self.receivers.get(hs.local_index) is peer:
            del self.receivers[hs.local_index]
        index = self._new_index(peer)
        ephemeral = dh_generate(self._random(32))
        try:
            msg = noise.create_initiation(
                self.identity, hs, index, ephemeral, tai64n.encode(now + self.wall_offset)
            )
        except Exception:  # a low-order peer key: nothing can ever be sent to it
            del self.receivers[index]
            self.drops[Drop.HANDSHAKE_AUTH] += 1
            return
        peer.cookies.add_macs(msg, now)
        peer.last_initiation_sent = now
        self._arm(peer, "retransmit_handshake", now + REKEY_TIMEOUT + self._jitter.draw())
        self._timer_any_authenticated_packet_traversal(peer, now)
        self._timer_any_authenticated_packet_sent(peer)
        if peer.endpoint is not None:
            peer.tx_bytes += len(msg)
            peer.initiations_sent += 1
            out.datagrams.append((msg, peer.endpoint))

    def initiate(self, peer: Peer, now: float) -> Output:
        """Start a handshake with peer now (subject to the REKEY_TIMEOUT rate limit)."""
        out = Output()
        self._send_initiation(peer, now, False, out)
        return out

    # ----------------------------------------------------------------- inbound

    def receive_batch(
        self,
        bufs: Sequence[bytearray],
        lengths: Sequence[int],
        sources: Sequence[Endpoint],
        now: float,
    ) -> Output:
        """Handle a batch of datagrams ``bufs[i][:lengths[i]]`` from ``sources[i]``.

        Transport messages are decrypted in place; the delivered packets are views of
        ``bufs[i][16:]``. Anything malformed, forged or replayed is dropped and counted in
        :attr:`drops`; nothing raises on peer input.

        Transport messages go first, so a handshake flood cannot delay data already received.
        That changes nothing for the state machine: no transport message of a batch can use a
        keypair that a handshake message of the same batch creates (a responder sends no data
        before the initiator's first transport message confirmed the session, and that comes
        only after our response; an initiator's keypair comes from a response whose sender
        waits for our first transport message), and older keypairs a new session retires are
        still there for the transport messages handled first. The endpoint roams to the last
        authenticated source, now a handshake's rather than a transport message's.
        """
        out = Output()
        transport, handshakes, drops = self.datapath.classify_batch(bufs, lengths)
        for reason, count in drops.items():
            self.drops[reason] += count
        index = self.receivers
        for receiver, indices in transport.items():
            entry = index.get(receiver)
            if isinstance(entry, Keypair):
                self._receive_transport(entry, bufs, lengths, sources, indices, now, out)
            else:
                self.drops[Drop.UNKNOWN_RECEIVER] += len(indices)
        if handshakes:
            self._receive_handshakes(bufs, lengths, sources, handshakes, now, out)
        return out

    def _receive_handshakes(
        self,
        bufs: Sequence[bytearray],
        lengths: Sequence[int],
        sources: Sequence[Endpoint],
        handshakes: list[int],
        now: float,
        out: Output,
    ) -> None:
        """WireGuard's checks in order: mac1; under load mac2 (else a cookie reply) and the
        per-source token bucket; then Noise with the per-peer limit. One call of the batch
        screen (``crypto._screen`` / ``crypto.screen``) does the MACs and the cookie replies
        (appended to ``out.datagrams``); only messages that pass reach a Python frame. The load
        state is ours: valid-mac1 messages counted per second; at the threshold the device is
        under load for ``UNDER_LOAD_HOLD``, from that very message on (``load_after``).
        """
        if self.identity is None:
            for i in handshakes:
                if bufs[i][0] == MESSAGE_COOKIE_REPLY:
                    self._receive_cookie_reply(memoryview(bufs[i])[: lengths[i]], now)
                else:
                    self.drops[Drop.NO_PRIVATE_KEY] += 1
            return
        load = self.handshake_load
        if load.new_second(now):
            self.rate_limiter.collect_garbage(now)  # the table only grows under load, so sweep here
        load_after = load.load_after(now)
        checker = self.cookie_checker
        secret = checker.secret_for(now) if load_after <= len(handshakes) else b""
        verdicts = bytearray(len(bufs))
        passed, invalid, cookies, counted = self._screen.screen_batch(
            checker.mac1_key, checker.cookie_key, secret, bufs, lengths, handshakes, sources, load_after,
            self._random, verdicts, out.datagrams,
        )
        if invalid:
            self.drops[Drop.INVALID_MAC1] += invalid
        if cookies:
            self.drops[Drop.COOKIE_SENT] += cookies
        if counted:
            load.counted(counted, now)
        loaded = self._screen.PASSED_LOADED
        for i in passed:
            buf = bufs[i]
            kind = buf[0]
            msg = memoryview(buf)[: lengths[i]]
            if kind == MESSAGE_COOKIE_REPLY:
                self._receive_cookie_reply(msg, now)
                continue
            source = sources[i]
            if verdicts[i] == loaded and not self.rate_limiter.allow(source.source_bytes()[:-2], now):
                self.drops[Drop.RATE_LIMITED] += 1
                continue
            if kind == MESSAGE_INITIATION:
                self._receive_initiation(msg, source, now, out)
            elif kind == MESSAGE_RESPONSE:
                self._receive_response(msg, source, now, out)

    def _receive_cookie_reply(self, msg: memoryview, now: float) -> None:
        entry = self.receivers.get(reply_receiver(msg))
        peer = entry.peer if isinstance(entry, Keypair) else entry
        if peer is None or not peer.cookies.consume_reply(msg, now):
            self.drops[Drop.INVALID_COOKIE_REPLY] += 1

    def _receive_initiation(self, msg: memoryview, source: Endpoint, now: float, out: Output) -> None:
        assert self.identity is not None and len(msg) == INITIATION_SIZE
        try:
            consumed = noise.consume_initiation(self.identity, msg)
        except noise.HandshakeError:
            self.drops[Drop.HANDSHAKE_AUTH] += 1
            return
        peer = self.peers.get(consumed.remote_static)
        if peer is None:
            self.drops[Drop.UNKNOWN_PEER] += 1
            return
        hs = peer.handshake
        if not tai64n.after(consumed.timestamp, hs.last_timestamp):
            self.drops[Drop.REPLAYED_INITIATION] += 1
            return
        if not self._initiation_limiters[peer].allow(now):
            self.drops[Drop.INITIATION_FLOOD] += 1
            return
        if hs.local_index and self.receivers.get(hs.local_index) is peer:
            del self.receivers[hs.local_index]
        noise.accept_initiation(hs, consumed)
        peer.last_initiation_consumed = now
        peer.endpoint = source
        peer.rx_bytes += len(msg)
        self._timer_any_authenticated_packet_received(peer)
        self._timer_any_authenticated_packet_traversal(peer, now)
        index = self._new_index(peer)
        try:
            response = noise.create_response(hs, index, dh_generate(self._random(32)))
        except noise.HandshakeError:
            del self.receivers[index]
            self.drops[Drop.HANDSHAKE_AUTH] += 1
            return
        peer.cookies.add_macs(response, now)
        self._begin_session(peer, noise.derive_keys(hs), now)
        peer.tx_bytes += len(response)
        peer.last_initiation_sent = now  # wireguard-go's lastSentHandshake covers responses too
        out.datagrams.append((response, source))
        self._timer_any_authenticated_packet_sent(peer)

    def _receive_response(self, msg: memoryview, source: Endpoint, now: float, out: Output) -> None:
        assert self.identity is not None
        entry = self.receivers.get(noise.response_receiver(msg))
        if not isinstance(entry, Peer):
            self.drops[Drop.UNKNOWN_RECEIVER] += 1
            return
        peer = entry
        try:
            noise.consume_response(self.identity, peer.handshake, msg)
        except noise.HandshakeError:
            self.drops[Drop.UNEXPECTED_RESPONSE] += 1
            return
        peer.endpoint = source
        peer.rx_bytes += len(msg)
        self._timer_any_authenticated_packet_received(peer)
        self._timer_any_authenticated_packet_traversal(peer, now)
        self._begin_session(peer, noise.derive_keys(peer.handshake), now)
        self._send_keepalive(peer, now, out)  # confirms the session, or flushes staged packets

    def _begin_session(self, peer: Peer, keys: noise.SessionKeys, now: float) -> None:
        """Install a new keypair: current for the initiator, next for the responder."""
        cipher = self._cipher(keys.send_key, keys.receive_key, keys.remote_index)
        keypair = Keypair(peer, cipher, now, keys.is_initiator, keys.local_index, keys.remote_index)
        self.receivers[keys.local_index] = keypair
        if keys.is_initiator:
            if peer.next is not None:
                self._drop_keypair(peer.previous)
                self._drop_keypair(peer.current)
                peer.previous, peer.next = peer.next, None
            else:
                self._drop_keypair(peer.previous)
                peer.previous = peer.current
            peer.current = keypair
        else:
            self._drop_keypair(peer.next)
            self._drop_keypair(peer.previous)
            peer.next, peer.previous = keypair, None
        self.generation.bump()  # the new receiver index (current/next bumped when set)
        # timersHandshakeComplete + timersSessionDerived
        t = peer.timers
        t.retransmit_handshake = None
        t.handshake_attempts = 0
        t.sent_last_minute_handshake = False
        peer.last_handshake_wall = now + self.wall_offset
        peer.handshakes += 1
        self._arm(peer, "zero_key_material", now + ZERO_KEYS_AFTER)

    def _drop_keypair(self, keypair: Keypair | None) -> None:
        if keypair is None:
            return
        if self.receivers.get(keypair.local_index) is keypair:
            del self.receivers[keypair.local_index]
        keypair.cipher.zero()
        self.generation.bump()

    def _receive_transport(
        self,
        keypair: Keypair,
        bufs: Sequence[bytearray],
        lengths: Sequence[int],
        sources: Sequence[Endpoint],
        indices: list[int],
        now: float,
        out: Output,
    ) -> None:
        peer = keypair.peer
        if now - keypair.created >= REJECT_AFTER_TIME:
            self.drops[Drop.KEYPAIR_EXPIRED] += len(indices)
            return
        if len(indices) == len(bufs):
            sub_bufs, sub_lengths = list(bufs), list(lengths)
        else:
            sub_bufs, sub_lengths = [bufs[i] for i in indices], [lengths[i] for i in indices]
        wire_lengths = list(sub_lengths)
        results = [0] * len(indices)
        opened = keypair.cipher.open_batch(sub_bufs, sub_lengths, results)
        last_ok = count_opened(self.drops, keypair.peer, wire_lengths, results, opened)
        if last_ok < 0:
            return
        if peer.next is keypair:  # the responder's new session is confirmed
            self._drop_keypair(peer.previous)
            peer.previous, peer.current, peer.next = peer.current, keypair, None
            self._flush_staged(peer, now, out)
        packets, keepalives, invalid, disallowed = self.datapath.accept_batch(
            self.routes(), peer.slot, sub_bufs, sub_lengths, results, HEADROOM
        )
        out.packets.extend(packets)
        peer.endpoint = sources[indices[last_ok]]
        self._after_accept(keypair, opened, keepalives, invalid, disallowed, now, out)

    def lane_received(
        self,
        keypair: Keypair,
        nbytes: int,
        opened: int,
        accepted: tuple[int, int, int],
        now: float,
        failures: Sequence[int] = (),
    ) -> Output | None:
        """Account a batch the shell opened through the inbound lane (``datapath.receive_lane``).

        ``nbytes`` is the size of the datagrams that opened (``opened`` of them), ``failures``
        the cipher's result codes of those that did not, ``accepted`` the (keepalives, invalid,
        disallowed) counts of ``datapath.accept_batch``, whose packets the shell wrote to the
        TUN. The lane rule guarantees what the general path would otherwise do here: no session
        to confirm, and every datagram from the peer's current endpoint. Returns what to
        send (a handshake when the session is old), or None.
        """
        for code in failures:
            self.drops[REASONS[code]] += 1
        if not opened:
            return None
        keypair.peer.rx_bytes += nbytes
        out = Output()
        keepalives, invalid, disallowed = accepted
        self._after_accept(keypair, opened, keepalives, invalid, disallowed, now, out)
        return out if out.datagrams else None

    def _after_accept(
        self, keypair: Keypair, opened: int, keepalives: int, invalid: int, disallowed: int, now: float, out: Output
    ) -> None:
        """Drops of the inner checks, the receive timers and the last-minute rekey."""
        peer = keypair.peer
        if invalid:
            self.drops[Drop.INVALID_INNER_PACKET] += invalid
        if disallowed:
            self.drops[Drop.DISALLOWED_SOURCE] += disallowed
        self._timer_any_authenticated_packet_received(peer)
        self._timer_any_authenticated_packet_traversal(peer, now)
        if opened > keepalives:  # wireguard-go counts data before the allowed-IPs check
            self._timer_data_received(peer, now)
        if (
            keypair.is_initiator
            and not peer.timers.sent_last_minute_handshake
            and now - keypair.created >= REKEY_ON_RECEIVE_AGE
        ):
            peer.timers.sent_last_minute_handshake = True
            self._send_initiation(peer, now, False, out)

    # ----------------------------------------------------------------- timers

    def _arm(self, peer: Peer, name: str, deadline: float) -> None:
        self._timers.arm(peer, name, deadline)

    def _timer_data_sent(self, peer: Peer, now: float) -> None:
        if peer.timers.new_handshake is None:
            self._arm(peer, "new_handshake", now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + self._jitter.draw())

    def _timer_data_received(self, peer: Peer, now: float) -> None:
        if peer.timers.send_keepalive is None:
            self._arm(peer, "send_keepalive", now + KEEPALIVE_TIMEOUT)
        else:
            peer.timers.keepalive_needed = True

    @staticmethod
    def _timer_any_authenticated_packet_sent(peer: Peer) -> None:
        peer.timers.send_keepalive = None

    @staticmethod
    def _timer_any_authenticated_packet_received(peer: Peer) -> None:
        peer.timers.new_handshake = None

    def _timer_any_authenticated_packet_traversal(self, peer: Peer, now: float) -> None:
        if peer.persistent_keepalive:
            self._arm(peer, "persistent_keepalive", now + peer.persistent_keepalive)

    def next_timer(self) -> float | None:
        """When the shell should next call :meth:`update_timers` (an early call is harmless)."""
        return self._timers.next_deadline()

    def update_timers(self, now: float) -> Output:
        """Fire every timer due at ``now``."""
        out = Output()
        for peer, name in list(self._timers.due(now)):
            if self.peers.get(peer.public_key) is peer:
                self._fire(peer, name, now, out)
            else:
                setattr(peer.timers, name, None)
        return out

    def _fire(self, peer: Peer, name: str, now: float, out: Output) -> None:
        t = peer.timers
        setattr(t, name, None)
        if name == "retransmit_handshake":
            if t.handshake_attempts > MAX_TIMER_HANDSHAKES:
                peer.staged.clear()  # give up; zero everything later if nothing else will
                self.generation.bump()
                if t.zero_key_material is None:
                    self._arm(peer, "zero_key_material", now + ZERO_KEYS_AFTER)
            else:
                t.handshake_attempts += 1
                self._send_initiation(peer, now, True, out)
        elif name == "send_keepalive":
            self._send_keepalive(peer, now, out)
            if t.keepalive_needed:
                t.keepalive_needed = False
                self._arm(peer, "send_keepalive", now + KEEPALIVE_TIMEOUT)
        elif name == "new_handshake":
            self._send_initiation(peer, now, False, out)
        elif name == "zero_key_material":
            self._expire_sessions(peer)
        elif name == "persistent_keepalive" and peer.persistent_keepalive:
            self._send_keepalive(peer, now, out)

    def _expire_sessions(self, peer: Peer) -> None:
        """Forget every keypair and the handshake in progress (keys zeroed)."""
        for keypair in peer.keypairs():
            self._drop_keypair(keypair)
        peer.previous = peer.current = peer.next = None
        hs = peer.handshake
        if hs.local_index and self.receivers.get(hs.local_index) is peer:
            del self.receivers[hs.local_index]
        hs.clear()
        peer.staged.clear()
        peer.last_initiation_sent = None
        self.generation.bump()

    # ----------------------------------------------------------------- introspection

    def keypair_count(self) -> int:
        return sum(1 for e in self.receivers.values() if isinstance(e, Keypair))
