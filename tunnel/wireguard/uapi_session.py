"""A UAPI connection, sans-I/O: framing of get/set operations and their replies.

The grammar, validation, atomic application and the get rendering live in :mod:`tunnel.wireguard.uapi`;
this module turns a byte stream from ``wg`` into operations on a :class:`~tunnel.wireguard.uapi.UapiTarget`
and the ``errno=`` replies, for the asyncio shell in :mod:`tunnel.wireguard.uapi_server`.

Extension (wg-py's own, read-only; ``wg`` never sends it): ``stats=1\n\n`` is answered with one
line ``json=`` + a compact JSON object (no newline inside: what
:meth:`tunnel.wireguard.interface.Interface.stats` returns; see ``tunnel/wireguard/stats.py``),
then ``errno=0`` and a blank line, framed like a ``get``. A session made without a ``stats``
callable answers it as any unknown operation (EINVAL, connection closed), as wireguard-go does.

Extension requests (wg-py's own): ``ext=WORDS\n\n`` hands ``WORDS`` (one line of text) to the
session's ``extension`` callable, which the daemon wires to the request handlers it was started
with (e.g. ``ext=vxlan add NAME id 42 ...``: run a VXLAN endpoint inside this daemon); the
answer is framed as for ``stats=1``: ``json=`` + the handler's JSON object, ``errno=0``. A
session without an ``extension`` callable answers EINVAL and closes, as for any unknown
operation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from tunnel.wireguard.uapi import (
    EINVAL,
    EIO,
    ENOANO,
    MAX_LINE,
    MAX_SET_BYTES,
    SetParser,
    UapiError,
    UapiTarget,
    apply_set,
    default_public_from_private,
    render_get,
)

log = logging.getLogger(__name__)


def errno_reply(code: int) -> bytes:
    """``errno=0`` or ``errno=-N`` (wireguard-go writes the negative value), then a blank line."""
    return f"errno={-code if code else 0}\n\n".encode()


class UapiOperation:
    """One request read from a session. Iterating it (once) executes it and yields the reply.

    ``kind`` is "get", "set" or "error". Nothing touches the target before iteration starts, so
    the shell can take the device's UAPI lock first. After iteration, ``errno`` holds the result
    and, for a set, ``keepalive_peers`` the peers to send a keepalive to.
    """

    def __init__(self, kind: str, run: Callable[[UapiOperation], Iterator[bytes]]) -> None:
        self.kind = kind
        self.errno: int | None = None
        self.keepalive_peers: list[bytes] = []
        self._run: Callable[[UapiOperation], Iterator[bytes]] | None = run

    def __iter__(self) -> Iterator[bytes]:
        run, self._run = self._run, None
        if run is None:
            raise RuntimeError("a UAPI operation runs only once")
        return run(self)

    def reply(self) -> bytes:
        """Run the operation and return its whole reply."""
        return b"".join(self)


def _error_op(code: int, message: str) -> UapiOperation:
    def run(op: UapiOperation) -> Iterator[bytes]:
        log.info("UAPI error %d: %s", code, message)
        op.errno = code
        yield errno_reply(code)

    return UapiOperation("error", run)


class UapiSession:
    """One UAPI connection, sans-I/O. The shell feeds bytes and writes the replies.

    Streaming use (the asyncio shell)::

        for op in session.receive(data):          # framing only, target untouched
            async with device.uapi_lock:          # one operation at a time per device
                for chunk in op:                  # executes it; a get streams in chunks
                    writer.write(chunk)
                    await writer.drain()
        if session.closed:
            writer.close()

    ``feed(data)`` runs everything at once and returns whole replies (tests, simple callers).
    At end of input call ``receive_eof()``: like wireguard-go, a set body cut short by EOF is
    still applied (there is nobody left to reply to). ``on_keepalive`` is called with the peers
    whose persistent keepalive was just switched on, right after a set is applied.
    """

    def __init__(
        self,
        target: UapiTarget,
        *,
        public_from_private: Callable[[bytes], bytes] = default_public_from_private,
        on_keepalive: Callable[[list[bytes]], None] | None = None,
        stats: Callable[[], Mapping[str, Any]] | None = None,
        extension: Callable[[str], Mapping[str, Any]] | None = None,
        max_line: int = MAX_LINE,
        max_set_bytes: int = MAX_SET_BYTES,
    ) -> None:
        self.target = target
        self.public_from_private = public_from_private
        self.on_keepalive = on_keepalive
        self.stats = stats
        self.extension = extension
        self._ext_words = ""
        self.max_line = max_line
        self.max_set_bytes = max_set_bytes
        self.closed = False
        self._buf = bytearray()
        self._state = "op"  # "op" (want an operation line), "get"/"stats" (want its "\n"), "set"
        self._parser: SetParser | None = None
        self._set_bytes = 0

    def feed(self, data: bytes) -> list[bytes]:
        return [op.reply() for op in self.receive(data)]

    def receive(self, data: bytes) -> list[UapiOperation]:
        ops: list[UapiOperation] = []
        if self.closed:
            return ops
        buf = self._buf
        buf += data
        pos = 0
        while not self.closed:
            if self._state in ("get", "stats", "ext"):
                if pos >= len(buf):
                    break
                byte = buf[pos]
                pos += 1
                kind, self._state = self._state, "op"
                if byte == 0x0A:
                    run = {"get": self._run_get, "stats": self._run_stats}.get(kind, self._run_ext)
                    ops.append(UapiOperation(kind, run))
                else:
                    ops.append(_error_op(EINVAL, f"trailing character in {kind}: {byte:#x}"))
                continue
            end = buf.find(b"\n", pos)
            if end < 0:
                if len(buf) - pos > self.max_line:
                    self._fail(ops, "request line too long")
                break
            line = bytes(buf[pos:end])
            pos = end + 1
            if self._state == "op":
                if line == b"get=1":
                    self._state = "get"
                elif line == b"stats=1" and self.stats is not None:
                    self._state = "stats"
                elif line.startswith(b"ext=") and self.extension is not None:
                    self._state = "ext"
                    self._ext_words = line[4:].decode("utf-8", "replace")
                elif line == b"set=1":
                    self._state = "set"
                    self._parser = SetParser()
                    self._set_bytes = 0
                else:
                    ops.append(_error_op(EINVAL, f"invalid operation {line[:64]!r}"))
                    self._close()
                continue
            self._set_bytes += len(line) + 1
            if len(line) > self.max_line or self._set_bytes > self.max_set_bytes:
                self._fail(ops, "set request too large")
                break
            if line.endswith(b"\r"):  # as Go's bufio.ScanLines
                line = line[:-1]
            if line:
                assert self._parser is not None
                self._parser.line(line.decode("utf-8", "surrogateescape"))
            else:
                ops.append(self._set_op())
        del buf[:pos]
        return ops

    def receive_eof(self) -> list[UapiOperation]:
        ops: list[UapiOperation] = []
        if not self.closed and self._state == "set" and self._parser is not None:
            rest = bytes(self._buf).rstrip(b"\r")
            if rest and len(rest) <= self.max_line:
                self._parser.line(rest.decode("utf-8", "surrogateescape"))
            ops.append(self._set_op())
        self._close()
        return ops

    def _close(self) -> None:
        self.closed = True
        self._parser = None
        self._buf.clear()

    def _fail(self, ops: list[UapiOperation], message: str) -> None:
        # wireguard-go's scanner fails with EIO on an over-long line; we cannot resynchronise.
        code = EIO if self._state == "set" else EINVAL
        ops.append(_error_op(code, message))
        self._close()

    def _set_op(self) -> UapiOperation:
        parser, self._parser = self._parser, None
        self._state = "op"
        assert parser is not None

        def run(op: UapiOperation) -> Iterator[bytes]:
            op.errno = self._run_set(op, parser)
            yield errno_reply(op.errno)

        return UapiOperation("set", run)

    def _run_set(self, op: UapiOperation, parser: SetParser) -> int:
        try:
            plan = parser.finish()
            private = self.target.get_private_key()
            own = self.public_from_private(private) if private is not None else None
            op.keepalive_peers = apply_set(self.target, plan, own, self.public_from_private)
        except UapiError as exc:
            log.info("UAPI set failed (errno %d): %s", exc.errno, exc.message)
            return exc.errno
        except Exception:
            log.exception("UAPI set failed")
            return ENOANO
        if op.keepalive_peers and self.on_keepalive is not None:
            self.on_keepalive(op.keepalive_peers)
        return 0

    def _run_get(self, op: UapiOperation) -> Iterator[bytes]:
        try:
            for chunk in render_get(self.target):
                yield chunk.encode()
        except Exception:
            log.exception("UAPI get failed")
            op.errno = ENOANO
            yield errno_reply(ENOANO)
            return
        op.errno = 0

    def _run_stats(self, op: UapiOperation) -> Iterator[bytes]:
        assert self.stats is not None
        try:
            text = json.dumps(self.stats(), separators=(",", ":"), sort_keys=True)
        except Exception:
            log.exception("UAPI stats failed")
            op.errno = ENOANO
            yield errno_reply(ENOANO)
            return
        op.errno = 0
        yield f"json={text}\n".encode()
        yield errno_reply(0)

    def _run_ext(self, op: UapiOperation) -> Iterator[bytes]:
        assert self.extension is not None
        try:
            text = json.dumps(self.extension(self._ext_words), separators=(",", ":"), sort_keys=True)
        except Exception:
            log.exception("UAPI extension request failed")
            op.errno = ENOANO
            yield errno_reply(ENOANO)
            return
        op.errno = 0
        yield f"json={text}\n".encode()
        yield errno_reply(0)
