"""Gathering concurrent queries into one forward pass.

A batch takes every query already queued; it waits for more only while it holds fewer queries than are
expected (those of the previous batch, whose clients are coming back, plus those that queued while it ran, so
closed-loop clients that arrived in two halves merge into one batch instead of taking turns), and then at most
``window_s``, and at most a quarter of the previous forward pass, once the worker is free; never past
``max_batch`` queries. The batch runs on one worker thread, split into
groups of equal ``k`` and selection, each one ``retrieve_batch`` call; queries that arrive meanwhile form the
next batch. Throughput grows with the number of clients, while a lone client pays at most the window
(usually nothing: its previous batch held one query). The queue is bounded: past ``max_queue`` queries waiting,
:meth:`Batcher.retrieve` raises :class:`Overloaded` at once (the service answers 503 with ``Retry-After``), so a
served query waits for at most ``max_queue / max_batch + 1`` forward passes however many clients call. Results
equal single in-process calls (padding in a batch moves scores by ~1e-7; ``tests/test_serve.py`` checks ids and
scores against ``retrieve``).

Example:
    >>> import asyncio
    >>> class Echo:                       # stands in for an ICLRetriever
    ...     def retrieve_batch(self, queries, k, *, selection=None):
    ...         return [[q.upper()] * k for q in queries]
    >>> async def main():
    ...     b = Batcher(Echo(), window_s=0.002, max_batch=8)
    ...     b.start()
    ...     got = await asyncio.gather(b.retrieve(["a"], 1), b.retrieve(["b", "c"], 2))
    ...     await b.stop()
    ...     return got, b.batches
    >>> asyncio.run(main())
    ([[['A']], [['B', 'B'], ['C', 'C']]], 1)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["Batcher", "Overloaded"]

FIRST_PASS_GUESS_S = 0.05  # what Retry-After assumes a forward pass takes until one was timed
WAIT_SHARE = 0.25  # a batch waits for stragglers at most this share of the previous forward pass


class Overloaded(Exception):
    """The batcher's queue is full; ``retry_after_s``: about how long it takes to drain."""

    def __init__(self, queued: int, limit: int, retry_after_s: float) -> None:
        super().__init__(f"overloaded: {queued} queries are waiting (the limit is {limit}); retry in about "
                         f"{retry_after_s * 1000:.0f} ms")
        self.queued, self.limit, self.retry_after_s = queued, limit, retry_after_s


@dataclasses.dataclass
class _Job:
    queries: list[str]
    k: int
    selection: Any
    key: Hashable  # jobs with equal (k, key) share one retrieve_batch call
    future: asyncio.Future


class Batcher:
    """Batches ``retrieve`` calls of many requests into ``retriever.retrieve_batch`` calls on one worker thread.

    ``max_queue``: queries waiting (not yet in a forward pass) at most, ``None`` for no bound; a request that would
    go past it is refused with :class:`Overloaded`, unless nothing waits (so any request can get in).
    ``on_batch(n_queries, seconds)`` is called after each forward pass (for metrics).
    """

    def __init__(self, retriever: Any, *, window_s: float = 0.003, max_batch: int = 32, max_queue: int | None = None,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        self.retriever = retriever
        self.window_s = window_s
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.batches = 0
        self.queued = 0  # queries waiting for a forward pass
        self.last_batch_s = FIRST_PASS_GUESS_S  # the time of the latest forward pass (a guess before the first)
        self._expected = 1  # queries worth waiting for: the previous batch's and those that queued while it ran
        self._queue: asyncio.Queue[_Job | None] | None = None
        self._task: asyncio.Task | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="icl-fungi-batch")

    def start(self) -> None:
        """Start gathering (inside the running event loop)."""
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Finish the queued jobs, then stop the gathering task and the worker thread."""
        if self._task is not None and self._queue is not None:
            self._queue.put_nowait(None)
            await self._task
            self._task = None
        self._worker.shutdown(wait=True)

    async def retrieve(self, queries: Sequence[str], k: int, selection: Any = None, key: Hashable = None) -> list[list[Any]]:
        """What ``retriever.retrieve_batch(queries, k, selection=selection)`` returns, computed in a shared batch.

        ``key`` identifies the selection (jobs with equal ``k`` and ``key`` share a call); ``None`` is top-k.
        """
        if self._queue is None or self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        n = len(queries)
        refusal = self.refusal(n)
        if refusal is not None:
            raise refusal
        loop = asyncio.get_running_loop()
        job = _Job(list(queries), k, selection, key, loop.create_future())
        self._queue.put_nowait(job)
        self.queued += n
        return await job.future

    def refusal(self, n: int = 1) -> Overloaded | None:
        """The :class:`Overloaded` error a request of ``n`` queries would get now, or None when it would be queued."""
        if self.max_queue is None or not self.queued or self.queued + n <= self.max_queue:
            return None
        return Overloaded(self.queued, self.max_queue, (self.queued / self.max_batch + 1) * self.last_batch_s)

    def _took(self, job: _Job | None) -> _Job | None:
        if job is not None:
            self.queued -= len(job.queries)
        return job

    async def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        """``first``, the jobs already queued, and those arriving within its window while the batch is smaller than
        the previous one (never past ``max_batch`` queries); True when the stop sentinel was taken."""
        assert self._queue is not None
        jobs, n = [first], len(first.queries)
        # from when the worker is free (queued clients' peers get their window too), never long next to a forward pass
        deadline = time.monotonic() + min(self.window_s, WAIT_SHARE * self.last_batch_s)
        while n < self.max_batch:
            try:
                nxt = self._took(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if n >= self._expected or remaining <= 0:
                    break
                try:
                    nxt = self._took(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            if nxt is None:
                return jobs, True
            jobs.append(nxt)
            n += len(nxt.queries)
        return jobs, False

    async def _loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = self._took(await self._queue.get())
            if first is None:
                break
            jobs, stopping = await self._gather(first)
            outcomes = await loop.run_in_executor(self._worker, self._run, jobs)
            # who comes next: this batch's clients, coming back, and those that queued meanwhile (one batch, not two halves)
            self._expected = min(self.max_batch, sum(len(j.queries) for j in jobs) + self.queued)
            for job, outcome in zip(jobs, outcomes, strict=True):
                if job.future.done():  # the client went away
                    continue
                if isinstance(outcome, BaseException):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(outcome)
        while not self._queue.empty():  # jobs queued behind the stop sentinel
            job = self._queue.get_nowait()
            if job is not None and not job.future.done():
                job.future.set_exception(RuntimeError("the service is shutting down"))

    def _run(self, jobs: list[_Job]) -> list[Any]:
        """On the worker thread: one ``retrieve_batch`` per group of equal (k, key); each job's rows, or the error."""
        started = time.perf_counter()
        groups: dict[tuple[int, Hashable], list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault((job.k, job.key), []).append(i)
        outcomes: list[Any] = [None] * len(jobs)
        for members in groups.values():
            queries = [q for i in members for q in jobs[i].queries]
            head = jobs[members[0]]
            try:
                rows = self.retriever.retrieve_batch(queries, head.k, selection=head.selection)
            except Exception as err:  # noqa: BLE001 - handed to each waiting request
                for i in members:
                    outcomes[i] = err
                continue
            at = 0
            for i in members:
                outcomes[i] = rows[at : at + len(jobs[i].queries)]
                at += len(jobs[i].queries)
        self.batches += 1
        self.last_batch_s = time.perf_counter() - started
        if self.on_batch is not None:
            with contextlib.suppress(Exception):
                self.on_batch(sum(len(j.queries) for j in jobs), self.last_batch_s)
        return outcomes
