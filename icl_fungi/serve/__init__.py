"""``icl-fungi serve``: the retriever as an HTTP service (FastAPI + uvicorn; the ``serve`` extra).

Modules, one role each: :mod:`.settings` (options and limits), :mod:`.schemas` (request bodies and their
checks), :mod:`.batcher` (concurrent queries into one forward pass), :mod:`.wal` (the add log: durable adds,
replay, compaction), :mod:`.service` (the retriever's life cycle behind the routes), :mod:`.gate` (metrics,
bearer check, body limit), :mod:`.metrics` (Prometheus), :mod:`.app` (routes and the server).
How to run and call it: docs/serve.md.
"""

from __future__ import annotations

from .app import create_app, run_server
from .settings import ServeSettings
from .wal import AddLog, compact, log_dir

__all__ = ["AddLog", "ServeSettings", "compact", "create_app", "log_dir", "run_server"]
