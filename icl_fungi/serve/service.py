"""What the routes call: the loaded retriever, its add log and the query batcher, with the service's life cycle.

Life cycle: :meth:`Service.open_log` (before the server binds: a log held by another process or damaged fails
at once), :meth:`Service.start` (in the event loop: starts the batcher, loads the retriever and replays the log
on a thread; ``ready`` once done), :meth:`Service.close` (after the server drained its requests: stops the
batcher, folds the log into the saved retriever when examples were added, releases the log).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..template import Prompt, PromptTemplate
from .batcher import Batcher, Overloaded
from .metrics import Metrics
from .remote import ADDABLE_INDEXES, restore_saved_rows, saved_backend
from .schemas import InputError
from .settings import ServeSettings
from .wal import AddLog, replay, request_digest

__all__ = ["Service"]

logger = logging.getLogger(__name__)

QUERY_PATHS = frozenset({"/v1/retrieve", "/v1/prompt"})  # the routes that go through the batcher's queue

# Test-only fault injection (docs/serve.md, "Fault injection"): ICL_FUNGI_SERVE_FAULT=POINT[:N] kills the process with
# SIGKILL at POINT of the N-th add (default 1): "after-log" (logged and fsynced, not yet in the pool), "before-reply"
# (in the pool, not yet acknowledged). Read once when a Service is made; no option or setting exposes it.
FAULT_ENV = "ICL_FUNGI_SERVE_FAULT"
FAULT_POINTS = ("after-log", "before-reply")


def fault_plan(spec: str | None) -> tuple[str, int] | None:
    """``"before-reply:3"`` -> ``("before-reply", 3)``; ValueError naming the variable for anything else.

    >>> fault_plan("after-log"), fault_plan(None)
    (('after-log', 1), None)
    """
    if not spec:
        return None
    point, _, nth = spec.partition(":")
    if point not in FAULT_POINTS or not (nth or "1").isdigit() or int(nth or "1") < 1:
        raise ValueError(f"{FAULT_ENV}={spec!r}: expected one of {FAULT_POINTS}, optionally followed by :N (N >= 1)")
    return point, int(nth or "1")


class Service:
    """The retriever behind the routes. ``state``: ``loading``, ``ready``, ``failed`` or ``stopped``."""

    def __init__(self, settings: ServeSettings, metrics: Metrics, *, on_failure: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.on_failure = on_failure
        self.state = "loading"
        self.error: str | None = None
        self.retriever: Any = None
        self.log: AddLog | None = None
        self.batcher: Batcher | None = None
        self._dirty = False  # examples added since the retriever was saved
        self._add_lock = threading.Lock()
        self._adds = ThreadPoolExecutor(max_workers=1, thread_name_prefix="icl-fungi-add")
        self._loader: asyncio.Future | None = None
        self._fault = fault_plan(os.environ.get(FAULT_ENV))
        self._n_adds = 0

    # ------------------------------------------------------------------ life cycle
    def open_log(self) -> None:
        """Lock and read the add log (not in read-only mode); ValueError when it is in use or damaged."""
        if not self.settings.read_only and self.log is None:
            self.log = AddLog.open(self.settings.path)

    def load(self) -> None:
        """Load the retriever and replay the add log into it (on a thread; may take a while)."""
        from ..retriever import ICLRetriever

        s = self.settings
        if self.log is not None:
            backend = saved_backend(s.path)
            if backend not in ADDABLE_INDEXES:
                raise ValueError(f"adds need an index the add log can replay into ({', '.join(ADDABLE_INDEXES)}), not {backend!r}: "
                                 "serve it with --read-only")
            restore_saved_rows(s.path, self.log, backend=backend)
        retriever = ICLRetriever.load(s.path, model=s.model, device=s.device, show_progress_bar=False)
        if self.log is not None:
            pending = self.log.pending()
            added = replay(retriever, pending)
            self._dirty = bool(pending)
            logger.info("replayed %d logged add(s): %d example(s) added to the saved pool", len(pending), added)
        self.retriever = retriever

    async def start(self) -> None:
        """Start the batcher and load the retriever in the background (``/readyz`` says when it is done)."""
        self.open_log()
        loop = asyncio.get_running_loop()
        self._loader = loop.run_in_executor(self._adds, self.load)
        self._loader.add_done_callback(self._loaded)

    def _loaded(self, fut: asyncio.Future) -> None:
        err = fut.exception()
        if err is not None:
            self.state, self.error = "failed", f"{type(err).__name__}: {err}"
            logger.error("could not load %s: %s", self.settings.path, self.error)
            if self.on_failure is not None:
                self.on_failure()
            return
        s = self.settings
        self.batcher = Batcher(self.retriever, window_s=s.gather_ms / 1000, max_batch=s.max_batch, max_queue=s.max_queue,
                               on_batch=self.metrics.observe_batch)
        self.batcher.start()
        self.metrics.track_pool(lambda: len(self.retriever))
        self.metrics.track_queue(lambda: self.batcher.queued)
        self.metrics.ready.set(1)
        self.state = "ready"
        logger.info("ready: %d examples from %s", len(self.retriever), s.path)

    async def close(self) -> None:
        """Stop the batcher, fold the add log into the saved retriever (when examples were added), release the log."""
        if self._loader is not None and not self._loader.done():
            await asyncio.wait([self._loader])
        if self.batcher is not None:
            await self.batcher.stop()
        self.metrics.ready.set(0)
        try:
            if self.state == "ready" and self._dirty and self.log is not None and self.settings.compact_on_exit:
                await asyncio.get_running_loop().run_in_executor(self._adds, self._compact)
        finally:
            self.state = "stopped"
            self._adds.shutdown(wait=True)
            if self.log is not None:
                self.log.close()

    def _compact(self) -> None:
        with self._add_lock:
            self.retriever.save(self.settings.path)  # atomic: the old directory stays until the new one is complete
            assert self.log is not None
            self.log.reset()
            self._dirty = False
        logger.info("folded the add log into %s (%d examples)", self.settings.path, len(self.retriever))

    # ------------------------------------------------------------------ requests
    def shed(self, path: str) -> tuple[str, float] | None:
        """For the gate: ``(message, seconds to wait)`` when a request to ``path`` would find the query queue full."""
        refusal = self.batcher.refusal() if self.batcher is not None and path in QUERY_PATHS else None
        if refusal is None:
            return None
        self.metrics.rejected.inc()
        return str(refusal), refusal.retry_after_s

    def check_ready(self) -> None:
        if self.state != "ready":
            raise InputError(None, f"the retriever is {self.state}" + (f": {self.error}" if self.error else ""), 503)

    async def retrieve(self, queries: Sequence[str], k: int, selection: Any, key: str | None) -> list[list[Any]]:
        """``retrieve_batch(queries, k, selection=selection)``, in a batch shared with concurrent requests."""
        self.check_ready()
        assert self.batcher is not None
        try:
            return await self.batcher.retrieve(queries, k, selection, key)
        except Overloaded:
            self.metrics.rejected.inc()
            raise

    async def prompt(self, query: str, k: int, *, template: str | PromptTemplate | None, order: str, max_tokens: int | None,
                     selection: Any, key: str | None, seed: int) -> Prompt:
        """What ``retriever.build_prompt(query, k, template=, order=, max_tokens=, selection=, seed=)`` returns: the same
        template check, the same retrieval (batched) and the same ``retriever.compose`` call."""
        try:
            tpl = self.retriever.prompt_template(template)  # checked against the pool before the retrieval
        except ValueError as err:
            raise InputError("template", f"template: {err}") from None
        examples = (await self.retrieve([query], k, selection, key))[0]
        try:
            return self.retriever.compose(tpl, examples, query, order=order, seed=seed, max_tokens=max_tokens)
        except ValueError as err:
            if max_tokens is not None and "max_tokens" in str(err):
                raise InputError("max_tokens", f"max_tokens: {err}") from None
            raise

    async def add(self, texts: list[str], labels: list[Any] | None, outputs: list[str] | None = None, *,
                  key: str | None = None) -> tuple[list[int], int | None, bool]:
        """Add examples; returns their pool positions, the add log's sequence number, and whether this was a retry
        of an add already logged with idempotency key ``key`` (then nothing is added), once the add is durable."""
        self.check_ready()
        if self.settings.read_only:
            raise InputError(None, "this service is read-only (started with --read-only): adds are refused", 403)
        ids, seq, again = await asyncio.get_running_loop().run_in_executor(self._adds, self._add, texts, labels, outputs, key)
        if not again:
            self.metrics.adds.inc(len(ids))
        return ids, seq, again

    def _add(self, texts: list[str], labels: list[Any] | None, outputs: list[str] | None,
             key: str | None) -> tuple[list[int], int | None, bool]:
        """Log and fsync, then add to the pool; a failed add is marked aborted in the log (never acknowledged).
        A key already in the log answers what its add answered (the same request) or 422 (another request)."""
        with self._add_lock:
            if key is not None and self.log is not None and (seen := self.log.lookup(key)) is not None:
                if seen.digest != request_digest(texts, labels, outputs):
                    raise InputError("idempotency-key", f"idempotency-key: {key!r} was used for another add (other texts, "
                                     "labels or outputs); send a new key for a new add", 422, "idempotency_key_reused")
                return seen.ids, seen.seq, True
            self._n_adds += 1
            start = len(self.retriever)
            rec = self.log.append(start, texts, labels, outputs, key=key) if self.log is not None else None
            self._crash_if("after-log")
            try:
                ids = self.retriever.add_examples(texts, labels, outputs)
            except BaseException:
                if rec is not None and self.log is not None:
                    self.log.abort(rec)
                raise
            self._dirty = True
            if ids != list(range(start, start + len(texts))):
                raise RuntimeError(f"the index placed the new examples at {ids[:3]}..., not at {start}...: the add log cannot replay them")
            self._crash_if("before-reply")
            return ids, None if rec is None else rec.seq, False

    def _crash_if(self, point: str) -> None:
        """The test-only fault: SIGKILL this process at ``point`` of the planned add (see ``FAULT_ENV``)."""
        if self._fault == (point, self._n_adds):
            logger.warning("%s=%s: killing the server (SIGKILL) at %s of add %d", FAULT_ENV, os.environ.get(FAULT_ENV), point,
                           self._n_adds)
            os.kill(os.getpid(), signal.SIGKILL)
