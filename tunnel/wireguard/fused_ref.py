"""A lane batch's steps as one call (pure-Python reference of ``tunnel.wireguard._fused``).

Why it exists (docs/multicore.md 4.7): a worker thread of ``workers N`` runs the pumps with the
GIL held and gives it up around each native step of a lane batch (the AEAD, each system call).
Two busy workers then hand the GIL back and forth several times per batch. The Cython twin runs
the steps of one batch (seal and send; open, check and write) in **one** ``with nogil:``
section through the native objects' C entry points, so a batch gives the GIL up once.

Contract (both twins; the Cython one takes the one-nogil path only when every object is the
native one and every buffer a ``bytearray``, else it makes exactly these calls):

- :meth:`Fused.seal_send` ``(cipher, udp, bufs, lengths, mtu, endpoint)`` is
  ``sealed = cipher.seal_batch(bufs, lengths, mtu)`` then
  ``udp.send_slots(bufs, lengths, 0, sealed, endpoint)``, and returns ``sealed``: the same
  counters, datagrams, ``lengths`` and errors (seal_batch's ValueError or RuntimeError before
  anything is sent; send errors counted by the UDP batch I/O as for any send).
- :meth:`Fused.open_deliver` ``(cipher, accept_slots, table, slot, tun, bufs, lengths, results,
  headroom, verdicts)`` is ``opened = cipher.open_batch(bufs, lengths, results)``; when
  ``opened``, ``accept_slots(table, slot, bufs, lengths, results, headroom, verdicts)`` (a
  datapath module's rule; the Cython twin runs the native rule itself for a native table);
  when that delivers any, ``tun.write_slots(bufs, lengths, headroom, verdicts, len(bufs))``. It
  returns ``(opened, delivered, (keepalives, invalid, disallowed), written, write_error)``: an
  OSError of the write is returned (as the pump records it), any other error raised.

:attr:`Fused.native_batches` counts the batches that took the one-nogil path (always 0 here).
One :class:`Fused` per thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Fused:
    """The fused lane steps of one thread (see the module doc)."""

    def __init__(self) -> None:
        self.native_batches = 0

    def seal_send(self, cipher: Any, udp: Any, bufs: list[bytearray], lengths: list[int], mtu: int,
                  endpoint: Any) -> int:
        """Seal a prefix of the batch, send what was sealed; returns how many were sealed."""
        _require_lists(bufs, lengths)
        sealed: int = cipher.seal_batch(bufs, lengths, mtu)
        udp.send_slots(bufs, lengths, 0, sealed, endpoint)
        return sealed

    def open_deliver(self, cipher: Any, accept_slots: Callable[..., tuple[int, int, int, int]], table: Any,
                     slot: int, tun: Any, bufs: list[bytearray], lengths: list[int], results: list[int],
                     headroom: int, verdicts: bytearray
                     ) -> tuple[int, int, tuple[int, int, int], int, OSError | None]:
        """Open the batch, check the plaintexts, write the accepted ones (see the module doc)."""
        _require_lists(bufs, lengths, results)
        opened: int = cipher.open_batch(bufs, lengths, results)
        delivered = 0
        accepted = (0, 0, 0)
        written = 0
        write_error: OSError | None = None
        if opened:
            delivered, keepalives, invalid, disallowed = accept_slots(table, slot, bufs, lengths, results,
                                                                      headroom, verdicts)
            accepted = (keepalives, invalid, disallowed)
            if delivered:
                try:
                    written = tun.write_slots(bufs, lengths, headroom, verdicts, len(bufs))
                except OSError as exc:
                    write_error = exc
        return opened, delivered, accepted, written, write_error


def _require_lists(*values: object) -> None:
    """The batch arguments are lists (the Cython twin's signature says so; None included)."""
    for value in values:
        if type(value) is not list:
            raise TypeError(f"expected list, got {type(value).__name__}")


__all__ = ["Fused"]
