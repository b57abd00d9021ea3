"""The ASGI layer in front of the routes: metrics of every answer, the bearer check, the body size limit.

Pure ASGI (no per-request task): it times the request, answers 401 when a key is set and the
``Authorization: Bearer`` header does not match it (``hmac.compare_digest``; ``/healthz`` and ``/readyz``
stay open), answers 415 to a body that is not declared JSON, 413 when the body is over the limit (by ``Content-Length``, or while reading a
chunked body), and otherwise hands the app the body it read.

When ``shed(path)`` says so (the service's query queue is full), a query route gets 503 with ``Retry-After``
(seconds, as HTTP has it) and ``Retry-After-Ms`` before its body is parsed: shedding load costs the server as
little as it can.

An early answer (401, 413, 415, 503) is sent only after the client's body was read and discarded, up to ``drain_bytes``:
a server that answers and closes while the client is still sending makes the kernel reset the connection, and a
client blocked in its send (urllib, requests) then sees "connection reset" or "broken pipe" instead of the JSON
error. A client that asked ``Expect: 100-continue`` (curl, for bodies over 1 MB) is answered at once: it has
not sent the body and will not. A body past ``drain_bytes`` is answered with ``Connection: close`` without
reading the rest.
"""

from __future__ import annotations

import hmac
import json
import math
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from .metrics import Metrics
from .schemas import error_body

__all__ = ["Gate", "retry_headers"]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


async def send_json(send: Send, status: int, body: dict[str, Any], headers: Collection[tuple[bytes, bytes]] = ()) -> None:
    """Answer with a JSON body."""
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers]})
    await send({"type": "http.response.body", "body": data})


DRAIN_BYTES = 64 << 20  # the most an early answer reads and discards of a body it refuses


def retry_headers(seconds: float) -> list[tuple[bytes, bytes]]:
    """``Retry-After`` (whole seconds, at least 1) and ``Retry-After-Ms`` (at least 1) of a wait of ``seconds``.

    >>> retry_headers(0.27)
    [(b'retry-after', b'1'), (b'retry-after-ms', b'270')]
    """
    ms = max(1, math.ceil(seconds * 1000))
    return [(b"retry-after", str(max(1, math.ceil(ms / 1000))).encode()), (b"retry-after-ms", str(ms).encode())]


class _TooLarge(Exception):
    pass


class Gate:
    """Wraps an ASGI app: see the module docstring. ``api_key=None`` checks no header."""

    def __init__(self, app: Any, *, metrics: Metrics, api_key: str | None, open_paths: Collection[str], max_body_bytes: int,
                 drain_bytes: int = DRAIN_BYTES, shed: Callable[[str], tuple[str, float] | None] | None = None) -> None:
        self.app = app
        self.shed = shed
        self.drain_bytes = drain_bytes
        self.metrics = metrics
        self._key = None if api_key is None else f"Bearer {api_key}".encode()
        self.open_paths = frozenset(open_paths)
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self._handle(scope, receive, sending)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.observe(scope.get("path", ""), scope.get("method", ""), status, time.perf_counter() - started)

    def _authorized(self, scope: Scope) -> bool:
        if self._key is None or scope.get("path") in self.open_paths:
            return True
        given = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                given = value
                break
        scheme, _, token = given.partition(b" ")
        return hmac.compare_digest(b"Bearer " + token.strip() if scheme.lower() == b"bearer" else b"", self._key)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers", ()))
        if not self._authorized(scope):
            await self._refuse(receive, send, headers, 401, error_body("missing or wrong bearer token (Authorization: Bearer <key>)",
                                                                       "authorization", "unauthorized"), [(b"www-authenticate", b"Bearer")])
            return
        kind = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
        if scope.get("method") in ("POST", "PUT", "PATCH") and not (kind == b"application/json" or kind.endswith(b"+json")):
            await self._refuse(receive, send, headers, 415, error_body("content-type: send the body as application/json",
                                                                       "content-type", "unsupported_media_type"))
            return
        refusal = None if self.shed is None else self.shed(scope.get("path", ""))
        if refusal is not None:
            message, wait_s = refusal
            await self._refuse(receive, send, headers, 503, error_body(message, None, "overloaded"), retry_headers(wait_s))
            return
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            await self._refuse(receive, send, headers, 413, self._too_large())
            return
        try:
            body = await self._read_body(receive)
        except _TooLarge:
            await self._refuse(receive, send, {}, 413, self._too_large())  # the body is being read: no 100-continue to honour
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would

        await self.app(scope, replay, send)

    async def _refuse(self, receive: Receive, send: Send, headers: dict[bytes, bytes], status: int, body: dict[str, Any],
                      extra: Collection[tuple[bytes, bytes]] = ()) -> None:
        """Answer ``status`` once the client's body is read and discarded (see the module docstring)."""
        waiting = headers.get(b"expect", b"").lower() == b"100-continue"
        complete = waiting or await self._drain(receive)
        await send_json(send, status, body, [*extra, *(() if complete else [(b"connection", b"close")])])

    async def _drain(self, receive: Receive) -> bool:
        """Read and discard the request body; False when it went past ``drain_bytes`` (the rest is not read)."""
        size = 0
        while size <= self.drain_bytes:
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                return True
            size += len(message.get("body", b""))
        return False

    async def _read_body(self, receive: Receive) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _too_large(self) -> dict[str, Any]:
        return error_body(f"the request body is larger than the limit of {self.max_body_bytes} bytes", "body", "too_large")
