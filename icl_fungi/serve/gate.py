"""The ASGI layer in front of the routes: metrics of every answer, the bearer check, the body size limit.

Pure ASGI (no per-request task): it times the request, answers 401 when a key is set and the
``Authorization: Bearer`` header does not match it (``hmac.compare_digest``; ``/healthz`` and ``/readyz``
stay open), answers 415 to a body that is not declared JSON, 413 when the body is over the limit (by ``Content-Length``, or while reading a
chunked body), and otherwise hands the app the body it read.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from .metrics import Metrics
from .schemas import error_body

__all__ = ["Gate"]

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


class _TooLarge(Exception):
    pass


class Gate:
    """Wraps an ASGI app: see the module docstring. ``api_key=None`` checks no header."""

    def __init__(self, app: Any, *, metrics: Metrics, api_key: str | None, open_paths: Collection[str], max_body_bytes: int) -> None:
        self.app = app
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
        if not self._authorized(scope):
            await send_json(send, 401, error_body("missing or wrong bearer token (Authorization: Bearer <key>)", "authorization",
                                                  "unauthorized"), [(b"www-authenticate", b"Bearer")])
            return
        headers = dict(scope.get("headers", ()))
        kind = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
        if scope.get("method") in ("POST", "PUT", "PATCH") and not (kind == b"application/json" or kind.endswith(b"+json")):
            await send_json(send, 415, error_body("content-type: send the body as application/json", "content-type",
                                                  "unsupported_media_type"))
            return
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            await self._too_large(send)
            return
        try:
            body = await self._read_body(receive)
        except _TooLarge:
            await self._too_large(send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would

        await self.app(scope, replay, send)

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

    async def _too_large(self, send: Send) -> None:
        await send_json(send, 413, error_body(f"the request body is larger than the limit of {self.max_body_bytes} bytes",
                                              "body", "too_large"))
