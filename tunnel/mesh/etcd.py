"""An etcd v3 :class:`~tunnel.mesh.store.Store` over etcd's HTTP/JSON gateway (asyncio + ssl, stdlib only).

Why not a gRPC client: aetcd has no TLS in its connect path, etcd3 breaks with protobuf >= 4,
etcd3gw is synchronous and its watch hung across an etcd restart. etcd 3.4 serves the same v3
API as JSON over HTTP/1.1 (``/v3/kv/range``, ``/v3/kv/put``, ``/v3/kv/txn``,
``/v3/kv/deleterange``, ``/v3/kv/compaction``, ``/v3/lease/grant|keepalive|revoke``,
``/v3/watch`` as a stream of JSON objects, ``/v3/auth/authenticate``), so this client needs only
the standard library, does TLS (CA, client certificate and key) with :mod:`ssl`, and owns its
failure behaviour: every request has a deadline, a lost or ended watch stream raises
:class:`StoreUnavailable` at once, a compacted start revision raises :class:`Compacted`.

Wire facts relied on: keys and values are base64; int64 fields are JSON strings; fields at
their default value are omitted (a failed txn has no ``succeeded``, a gone lease's keepalive no
``TTL``); errors are HTTP 4xx/5xx with ``{"error", "code", "message"}`` (gRPC codes: 14
unavailable, 16 unauthenticated, 11 out of range for a compacted revision). Authentication:
``/v3/auth/authenticate`` gives a token sent as the ``Authorization`` header; an expired token
is renewed once per request. Limitation of the gateway: with auth enabled, etcd refuses a
client certificate that carries a CommonName (CN-based identity is not passed through it), so
use a client certificate without CN plus user/password; TLS with client certificates alone
(auth disabled) accepts any certificate the CA signed.

One HTTP connection per request (``Connection: close``): simple, and the request rate of an
agent is a few per TTL. Endpoints are tried in order; the one that answered is tried first next.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tunnel.mesh.store import (
    Compacted,
    Event,
    KeyValue,
    StoreAuthError,
    StoreError,
    StoreProtocolError,
    StoreUnavailable,
    WatchBatch,
)

REQUEST_TIMEOUT = 5.0
MAX_BODY = 64 << 20


@dataclass(frozen=True, slots=True)
class EtcdOptions:
    endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = None
    timeout: float = REQUEST_TIMEOUT


@dataclass(frozen=True, slots=True)
class _Endpoint:
    host: str
    port: int
    tls: bool


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: str) -> str:
    """The ``range_end`` that selects every key starting with ``prefix`` (base64)."""
    raw = bytearray(prefix.encode())
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return _b64(b"\0")
    raw[-1] += 1
    return _b64(bytes(raw))


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        raise StoreProtocolError(f"not an integer: {value!r}") from None


def parse_endpoints(text: str) -> tuple[_Endpoint, ...]:
    """``URL[,URL...]`` (``http://`` or ``https://``; a bare ``host:port`` is http)."""
    result = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        url = urlsplit(item if "://" in item else f"http://{item}")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"invalid etcd endpoint {item!r}")
        result.append(_Endpoint(url.hostname, url.port or 2379, url.scheme == "https"))
    if not result:
        raise ValueError("no etcd endpoint given")
    return tuple(result)


class _Response:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int,
                 headers: dict[str, str]) -> None:
        self.reader = reader
        self.writer = writer
        self.status = status
        self.headers = headers

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk (chunked, Content-Length, or until the connection closes)."""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = await self.reader.readline()
                if not size_line:
                    raise StoreUnavailable("connection closed inside a chunked body")
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    await self.reader.readline()
                    return
                data = await self.reader.readexactly(size)
                await self.reader.readexactly(2)
                yield data
        elif "content-length" in self.headers:
            length = int(self.headers["content-length"])
            if length > MAX_BODY:
                raise StoreProtocolError("response too large")
            if length:
                yield await self.reader.readexactly(length)
        else:
            while data := await self.reader.read(1 << 16):
                yield data

    async def body(self) -> bytes:
        parts = bytearray()
        async for chunk in self.chunks():
            parts += chunk
            if len(parts) > MAX_BODY:
                raise StoreProtocolError("response too large")
        return bytes(parts)

    def close(self) -> None:
        self.writer.close()


class EtcdStore:
    """The :class:`~tunnel.mesh.store.Store` contract on etcd v3 (see the module docstring)."""

    def __init__(self, options: EtcdOptions) -> None:
        self.options = options
        self.endpoints = list(parse_endpoints(",".join(options.endpoints)))
        self._ssl: ssl.SSLContext | None = None
        if any(e.tls for e in self.endpoints):
            ctx = ssl.create_default_context(cafile=options.cacert)
            if options.cert:
                ctx.load_cert_chain(options.cert, options.key)
            self._ssl = ctx
        self._token: str | None = None
        self._auth_lock = asyncio.Lock()

    # -- transport -----------------------------------------------------------------------------

    async def _open(self, endpoint: _Endpoint, path: str, body: dict[str, Any]) -> _Response:
        payload = json.dumps(body).encode()
        headers = [
            f"POST {path} HTTP/1.1", f"Host: {endpoint.host}:{endpoint.port}",
            "Content-Type: application/json", f"Content-Length: {len(payload)}", "Connection: close",
        ]
        if self._token and path != "/v3/auth/authenticate":
            headers.append(f"Authorization: {self._token}")
        reader, writer = await asyncio.open_connection(
            endpoint.host, endpoint.port, ssl=self._ssl if endpoint.tls else None,
            server_hostname=endpoint.host if endpoint.tls else None,
        )
        try:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            writer.write(("\r\n".join(headers) + "\r\n\r\n").encode() + payload)
            await writer.drain()
            status_line = await reader.readline()
            parts = status_line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
                raise StoreProtocolError(f"not an HTTP response: {status_line[:80]!r}")
            status = int(parts[1])
            fields: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                fields[name.strip().lower()] = value.strip()
        except BaseException:
            writer.close()
            raise
        return _Response(reader, writer, status, fields)

    async def _request_once(self, endpoint: _Endpoint, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self._open(endpoint, path, body)
        try:
            raw = await response.body()
        finally:
            response.close()
        return self._decode(response.status, raw)

    def _decode(self, status: int, raw: bytes) -> dict[str, Any]:
        try:
            data = json.loads(raw.split(b"\n", 1)[0] if raw.strip() else b"{}")
        except ValueError:
            if b"CommonName" in raw:
                raise StoreAuthError(
                    "etcd's HTTP gateway refuses client certificates that carry a CommonName while "
                    "auth is enabled; use a client certificate without CN (identity from --user)") from None
            raise StoreProtocolError(f"HTTP {status}: not JSON: {raw[:120]!r}") from None
        if not isinstance(data, dict):
            raise StoreProtocolError(f"HTTP {status}: not a JSON object")
        if "result" in data and isinstance(data["result"], dict):
            data = data["result"]
        if status != 200 or "error" in data and "header" not in data:
            self._raise(status, data)
        return data

    def _raise(self, status: int, data: dict[str, Any]) -> None:
        inner = data.get("error")
        if isinstance(inner, dict):  # a stream's error: {"error": {"grpc_code":..., "message":...}}
            code, message = _int(inner.get("grpc_code", inner.get("code"))), str(inner.get("message", ""))
        else:
            code, message = _int(data.get("code")), str(data.get("message") or inner or f"HTTP {status}")
        if code == 16 or "auth token" in message or "authentication failed" in message \
                or "permission denied" in message or "user name is empty" in message:
            raise StoreAuthError(message)
        if code == 11 and "compacted" in message:
            raise Compacted(0)
        if code in (14, 4) or status in (502, 503, 504):
            raise StoreUnavailable(message)
        raise StoreError(message)

    async def _authenticate(self, endpoint: _Endpoint) -> None:
        if self.options.user is None:
            return
        reply = await self._request_once(
            endpoint, "/v3/auth/authenticate", {"name": self.options.user, "password": self.options.password or ""}
        )
        token = reply.get("token")
        if not isinstance(token, str):
            raise StoreAuthError("etcd gave no token")
        self._token = token

    async def _with_endpoint(self, call: Any) -> Any:
        """Run ``call(endpoint)`` on the first endpoint that answers, authenticating as needed."""
        last: Exception | None = None
        for index, endpoint in enumerate(list(self.endpoints)):
            try:
                async with asyncio.timeout(self.options.timeout):
                    if self.options.user is not None and self._token is None:
                        async with self._auth_lock:
                            if self._token is None:
                                await self._authenticate(endpoint)
                    try:
                        result = await call(endpoint)
                    except StoreAuthError:
                        if self.options.user is None:
                            raise
                        self._token = None  # expired or revoked: once more with a fresh token
                        await self._authenticate(endpoint)
                        result = await call(endpoint)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, StoreUnavailable) as exc:
                last = exc
                continue
            except ssl.SSLError as exc:
                last = exc
                continue
            if index:
                self.endpoints.insert(0, self.endpoints.pop(index))
            return result
        raise StoreUnavailable(f"no etcd endpoint answered: {last!r}")

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._with_endpoint(lambda ep: self._request_once(ep, path, body))
        return result

    # -- the Store operations ------------------------------------------------------------------

    @staticmethod
    def _kv(item: dict[str, Any]) -> KeyValue:
        return KeyValue(
            _unb64(item.get("key", "")).decode(errors="replace"), _unb64(item.get("value", "")),
            _int(item.get("mod_revision")), _int(item.get("lease")),
        )

    async def get(self, key: str) -> KeyValue | None:
        reply = await self._call("/v3/kv/range", {"key": _b64(key)})
        kvs = reply.get("kvs") or []
        return self._kv(kvs[0]) if kvs else None

    async def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        reply = await self._call("/v3/kv/range", {"key": _b64(prefix), "range_end": prefix_end(prefix)})
        return [self._kv(item) for item in reply.get("kvs") or []], _int(reply.get("header", {}).get("revision"))

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        reply = await self._call("/v3/kv/put", body)
        return _int(reply.get("header", {}).get("revision"))

    async def _txn(self, compare: dict[str, Any], key: str, value: bytes, lease: int) -> bool:
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        reply = await self._call("/v3/kv/txn", {"compare": [compare], "success": [{"request_put": put}]})
        return bool(reply.get("succeeded", False))

    async def create(self, key: str, value: bytes, lease: int = 0) -> bool:
        compare = {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
        return await self._txn(compare, key, value, lease)

    async def replace(self, key: str, value: bytes, mod_revision: int, lease: int = 0) -> bool:
        compare = {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod_revision)}
        return await self._txn(compare, key, value, lease)

    async def delete(self, key: str) -> bool:
        reply = await self._call("/v3/kv/deleterange", {"key": _b64(key)})
        return _int(reply.get("deleted")) > 0

    async def grant(self, ttl: int) -> int:
        reply = await self._call("/v3/lease/grant", {"TTL": str(ttl)})
        if reply.get("error"):
            raise StoreError(str(reply["error"]))
        return _int(reply.get("ID"))

    async def keepalive(self, lease: int) -> int:
        reply = await self._call("/v3/lease/keepalive", {"ID": str(lease)})
        return _int(reply.get("TTL"))

    async def revoke(self, lease: int) -> None:
        try:
            await self._call("/v3/lease/revoke", {"ID": str(lease)})
        except StoreError as exc:
            if "lease not found" not in str(exc):
                raise

    async def compact(self, revision: int) -> None:
        await self._call("/v3/kv/compaction", {"revision": str(revision), "physical": True})

    async def close(self) -> None:
        return None

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchBatch]:
        body = {"create_request": {"key": _b64(prefix), "range_end": prefix_end(prefix),
                                   "start_revision": str(start_revision), "progress_notify": True}}

        async def opener(endpoint: _Endpoint) -> _Response:
            response = await self._open(endpoint, "/v3/watch", body)
            if response.status != 200:
                try:
                    raw = await response.body()
                finally:
                    response.close()
                self._decode(response.status, raw)
                raise StoreProtocolError(f"watch refused: HTTP {response.status}")
            return response

        response: _Response = await self._with_endpoint(opener)
        buffer = bytearray()
        try:
            async for chunk in response.chunks():
                buffer += chunk
                while (end := buffer.find(b"\n")) >= 0:
                    line, buffer = bytes(buffer[:end]), buffer[end + 1:]
                    if line.strip():
                        batch = self._watch_message(line)
                        if batch is not None:
                            yield batch
                if len(buffer) > MAX_BODY:
                    raise StoreProtocolError("watch message too large")
            if buffer.strip():
                batch = self._watch_message(bytes(buffer))
                if batch is not None:
                    yield batch
            raise StoreUnavailable("watch stream ended")
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError, ValueError) as exc:
            raise StoreUnavailable(f"watch stream lost: {exc}") from None
        finally:
            response.close()

    def _watch_message(self, line: bytes) -> WatchBatch | None:
        try:
            message = json.loads(line)
        except ValueError:
            raise StoreProtocolError(f"watch: not JSON: {line[:120]!r}") from None
        if not isinstance(message, dict):
            raise StoreProtocolError("watch: not a JSON object")
        if "error" in message:
            self._raise(200, message)
        result = message.get("result", {})
        if not isinstance(result, dict):
            raise StoreProtocolError("watch: result is not an object")
        compact = _int(result.get("compact_revision"))
        if compact:
            raise Compacted(compact)
        if result.get("canceled"):
            raise StoreUnavailable(f"watch canceled: {result.get('cancel_reason', '')}")
        events = []
        for item in result.get("events") or []:
            kv = self._kv(item.get("kv", {}))
            if item.get("type") == "DELETE":
                events.append(Event("delete", kv.key, b"", kv.mod_revision))
            else:
                events.append(Event("put", kv.key, kv.value, kv.mod_revision))
        if not events:
            return None  # created / progress notification
        revision = _int(result.get("header", {}).get("revision"))
        return WatchBatch(tuple(events), max(revision, events[-1].mod_revision))


def sequence_of(text: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(text, str):
        return tuple(part for part in text.split(",") if part.strip())
    return tuple(text)
