"""The service's settings: where the retriever is, how requests are batched, and the limits on input.

Example:
    >>> s = ServeSettings("banking77.icl", api_key="secret")
    >>> s.host, s.port, s.max_k, "secret" in repr(s)
    ('127.0.0.1', 8080, 100, False)
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

__all__ = ["ServeSettings"]


def _positive(name: str, value: Any, *, allow_zero: bool = False, kind: type = int) -> None:
    ok_type = isinstance(value, int | float) if kind is float else isinstance(value, int)
    if isinstance(value, bool) or not ok_type:
        raise TypeError(f"{name} must be a{'' if kind is int else ' number'} {kind.__name__}, got {type(value).__name__}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    """How ``icl-fungi serve`` runs.

    Args:
        path: the saved retriever's directory (its add log is the sibling ``<path>.wal``).
        host, port: where to listen (loopback unless told otherwise).
        api_key: with a key, every route but ``/healthz`` and ``/readyz`` needs ``Authorization: Bearer <key>``.
        gather_ms: how long a batch waits at most for the queries expected to share its forward pass (and at most
            a quarter of the previous pass).
        max_batch: queries per forward pass at most.
        max_queue: queries waiting for a forward pass at most; past it a query request gets 503 with ``Retry-After``
            at once (overload sheds load instead of growing every client's latency).
        max_k, max_queries, max_text_chars, max_examples, max_body_bytes: input limits (a request over one
            gets a 4xx naming the field).
        read_only: refuse ``POST /v1/examples`` (no add log is opened).
        compact_on_exit: fold the add log into the saved retriever on a clean shutdown.
        model, device: as ``ICLRetriever.load``'s (a local model path, or a loaded model, must be given here).
        shutdown_timeout: seconds a SIGTERM waits for requests in flight.
    """

    path: Path
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = dataclasses.field(default=None, repr=False)
    gather_ms: float = 10.0
    max_batch: int = 32
    max_queue: int = 64
    max_k: int = 100
    max_queries: int = 64
    max_text_chars: int = 4000
    max_examples: int = 256
    max_body_bytes: int = 1 << 20
    read_only: bool = False
    compact_on_exit: bool = True
    model: Any = None
    device: str | None = None
    shutdown_timeout: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.path, str | os.PathLike):
            raise TypeError(f"path must be a path, got {type(self.path).__name__}")
        object.__setattr__(self, "path", Path(self.path))
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key.strip()):
            raise ValueError("api_key must be a non-empty string (or None for no key)")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"port must be an int in 0-65535, got {self.port!r}")
        _positive("gather_ms", self.gather_ms, allow_zero=True, kind=float)
        if self.gather_ms > 1000:
            raise ValueError(f"gather_ms must be at most 1000 (a window, not a delay), got {self.gather_ms}")
        _positive("shutdown_timeout", self.shutdown_timeout, kind=float)
        for name in ("max_batch", "max_queue", "max_k", "max_queries", "max_text_chars", "max_examples", "max_body_bytes"):
            _positive(name, getattr(self, name))
