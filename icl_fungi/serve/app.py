"""The FastAPI app of ``icl-fungi serve`` and the uvicorn server that runs it.

Routes: ``POST /v1/retrieve``, ``POST /v1/prompt``, ``POST /v1/examples``, ``GET /healthz``, ``GET /readyz``,
``GET /metrics``, and the OpenAPI schema (``/openapi.json``) with its docs page (``/docs``). Every error is
``{"error": {"type", "field", "message"}}`` with a 4xx status for bad input (never a traceback).

Example:
    >>> app = create_app(ServeSettings("banking77.icl"))
    >>> sorted(p for p in route_paths(app) if p.startswith("/v1"))
    ['/v1/examples', '/v1/prompt', '/v1/retrieve']
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from ..version import __version__
from .batcher import Overloaded
from .gate import Gate, retry_headers
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .schemas import (
    AddRequest,
    AddResponse,
    InputError,
    PromptRequest,
    PromptResponse,
    RetrieveRequest,
    RetrieveResponse,
    check_add,
    check_idempotency_key,
    check_prompt,
    check_retrieve,
    error_body,
)
from .service import Service
from .settings import ServeSettings

__all__ = ["create_app", "route_paths", "run_server"]

logger = logging.getLogger(__name__)

OPEN_PATHS = ("/healthz", "/readyz")  # answered without the API key
IDEMPOTENCY_HELP = ("a key of your own (1-255 visible ASCII characters, e.g. a UUID): a retry with the same key and body adds "
                    "nothing and gets the first reply again (header Idempotent-Replayed: true); the same key with another body "
                    "gets 422")


def route_paths(app: FastAPI) -> list[str]:
    """The paths the app answers."""
    return [getattr(r, "path", "") for r in app.router.routes]


def _example(x: Any) -> dict[str, Any]:
    """A retrieved example as JSON: every field of the dataclass (text, label, score, index, ...)."""
    return dataclasses.asdict(x) if dataclasses.is_dataclass(x) else dict(vars(x))


def _field(loc: tuple[Any, ...]) -> str:
    """``("body", "query", "list[str]", 3)`` -> ``query[3]``: the field name and item indices (no union tags)."""
    parts = [p for p in loc if p != "body"]
    if not parts or not isinstance(parts[0], str):
        return "body"
    return parts[0] + "".join(f"[{p}]" for p in parts[1:] if isinstance(p, int))


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse(error_body("body: malformed JSON", "body", "malformed_json"), 400)
        # of a union's errors, the member that got furthest into the input says most ("query[1]" over "query")
        fields = [_field(tuple(e.get("loc", ()))) for e in errors]
        field = max(fields, key=lambda f: f.count("["), default="body")
        messages = list(dict.fromkeys(str(e.get("msg", "invalid")) for e, f in zip(errors, fields, strict=True) if f == field))
        return JSONResponse(error_body(f"{field}: {'; or '.join(messages)}", field), 422)

    @app.exception_handler(InputError)
    async def bad_input(_: Request, exc: InputError) -> JSONResponse:
        kind = exc.kind or {403: "forbidden", 413: "too_large", 503: "not_ready"}.get(exc.status, "invalid_request")
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return JSONResponse(error_body(exc.message, exc.field, kind), exc.status, headers=headers)

    @app.exception_handler(Overloaded)
    async def overloaded(_: Request, exc: Overloaded) -> JSONResponse:
        headers = {name.decode(): value.decode() for name, value in retry_headers(exc.retry_after_s)}
        return JSONResponse(error_body(str(exc), None, "overloaded"), 503, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail), None, "http_error"), exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return JSONResponse(error_body("internal error (see the server's log)", None, "internal"), 500)


def _install_routes(app: FastAPI, service: Service, metrics: Metrics) -> None:
    settings = service.settings

    @app.post("/v1/retrieve", response_model=RetrieveResponse, summary="Examples for one query or a list")
    async def retrieve(req: RetrieveRequest) -> Any:
        queries, selection = check_retrieve(req, settings)
        rows = await service.retrieve(queries, req.k, selection, req.selection)
        found = [[_example(x) for x in row] for row in rows]
        return JSONResponse({"examples": found[0]} if isinstance(req.query, str) else {"results": found})

    @app.post("/v1/prompt", response_model=PromptResponse, summary="The prompt build_prompt makes for these arguments")
    async def prompt(req: PromptRequest) -> Any:
        selection, template = check_prompt(req, settings)
        made = await service.prompt(req.query, req.k, template=template, order=req.order, max_tokens=req.max_tokens,
                                    selection=selection, key=req.selection, seed=req.seed)
        return JSONResponse({"prompt": made, "kind": "completion" if isinstance(made, str) else "chat"})

    @app.post("/v1/examples", response_model=AddResponse, summary="Add examples (acknowledged once durable)")
    async def add(req: AddRequest, idempotency_key: str | None = Header(None, description=IDEMPOTENCY_HELP)) -> Any:
        pool = service.retriever
        check_add(req, settings, has_labels=pool is None or pool.has_labels, has_outputs=pool is not None and pool.has_outputs)
        key = check_idempotency_key(idempotency_key)
        ids, seq, again = await service.add(req.texts, req.labels, req.outputs, key=key)
        headers = {"Idempotent-Replayed": "true"} if again else None
        return JSONResponse({"ids": ids, "seq": seq, "pool_size": len(service.retriever)}, headers=headers)

    @app.get("/healthz", summary="The process is up")
    async def healthz() -> Any:
        return {"status": "ok"}

    @app.get("/readyz", summary="The retriever is loaded and its add log replayed")
    async def readyz() -> Any:
        if service.state != "ready":
            return JSONResponse({"status": service.state, "error": service.error}, 503)
        return {"status": "ready", "pool_size": len(service.retriever)}

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics_page() -> Any:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


def create_app(settings: ServeSettings, *, service: Service | None = None) -> FastAPI:
    """The app serving ``settings.path`` (its retriever is loaded when the app starts, see :class:`Service`)."""
    metrics = service.metrics if service is not None else Metrics(())
    service = service or Service(settings, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.close()

    app = FastAPI(title="icl-fungi", version=__version__, lifespan=lifespan,
                  description="Pick in-context examples with FUNGI features: retrieve, build prompts, add examples.")
    app.state.service = service
    _install_error_handlers(app)
    _install_routes(app, service, metrics)
    metrics.routes = frozenset(route_paths(app))
    app.add_middleware(Gate, metrics=metrics, api_key=settings.api_key, open_paths=OPEN_PATHS,
                       max_body_bytes=settings.max_body_bytes, shed=service.shed)
    return app


def run_server(settings: ServeSettings, *, log_level: str = "info") -> int:
    """Serve until SIGTERM or Ctrl-C (requests in flight finish, then the add log is folded in); the exit code.

    The add log is opened first, so a log held by another server, or damaged, fails before anything binds.
    """
    import uvicorn

    service = Service(settings, Metrics(()))
    service.open_log()
    app = create_app(settings, service=service)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level, lifespan="on",
                            timeout_graceful_shutdown=int(settings.shutdown_timeout), server_header=False)
    server = uvicorn.Server(config)
    service.on_failure = lambda: setattr(server, "should_exit", True)
    for sig in (signal.SIGINT, signal.SIGTERM):  # uvicorn raises the signal again after its clean shutdown: exit 0 then
        signal.signal(sig, lambda *_: sys.exit(0 if service.state == "stopped" else 1))
    server.run()
    return 2 if service.error else 0
