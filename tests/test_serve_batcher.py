"""The query batcher on a stand-in retriever (no model): who shares a forward pass, how long a query waits,
and that every caller gets its own rows."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from icl_fungi.serve.batcher import Batcher

pytest.importorskip("fastapi")


class Slow:
    """``retrieve_batch`` taking ``cost`` seconds a call, recording each call's (number of queries, k, selection);
    a query "boom" fails its call."""

    def __init__(self, cost: float = 0.05) -> None:
        self.cost = cost
        self.calls: list[tuple[int, int, object]] = []
        self.lock = threading.Lock()

    def retrieve_batch(self, queries, k, *, selection=None):
        with self.lock:
            self.calls.append((len(queries), k, selection))
        time.sleep(self.cost)
        if "boom" in queries:
            raise ValueError("boom")
        return [[f"{q}:{k}:{selection}"] for q in queries]


def run(coro_fn, retriever, **options):
    async def main():
        b = Batcher(retriever, **options)
        b.start()
        try:
            return await coro_fn(b)
        finally:
            await b.stop()

    return asyncio.run(main())


def test_a_lone_query_does_not_wait_for_the_window():
    async def lone(b):
        t0 = time.perf_counter()
        rows = await b.retrieve(["q"], 3)
        return rows, time.perf_counter() - t0

    rows, took = run(lone, Slow(0.0), window_s=0.5)
    assert rows == [["q:3:None"]] and took < 0.25


def test_concurrent_queries_share_calls_and_each_caller_gets_its_rows():
    fake = Slow(0.05)

    async def burst(b):
        return await asyncio.gather(*(b.retrieve([f"q{i}"], 5) for i in range(20)))

    got = run(burst, fake, window_s=0.01, max_batch=32)
    assert got == [[[f"q{i}:5:None"]] for i in range(20)]
    assert len(fake.calls) <= 2 and sum(n for n, _, _ in fake.calls) == 20


def test_closed_loop_clients_stay_in_one_batch_and_max_batch_holds():
    fake = Slow(0.03)

    async def clients(b):
        async def client(i):
            for j in range(6):
                await asyncio.sleep(0.002 * (i % 3))  # clients come back a little apart
                await b.retrieve([f"c{i}-{j}"], 2)

        await asyncio.gather(*(client(i) for i in range(8)))

    run(clients, fake, window_s=0.02, max_batch=32)
    sizes = [n for n, _, _ in fake.calls]
    assert sum(sizes) == 48 and sizes.count(8) >= 4, sizes  # the window waits for the stragglers of the last batch
    capped = Slow(0.0)
    run(lambda b: asyncio.gather(*(b.retrieve([f"q{i}"], 1) for i in range(10))), capped, window_s=0.01, max_batch=4)
    assert max(n for n, _, _ in capped.calls) <= 4 and sum(n for n, _, _ in capped.calls) == 10


def test_two_halves_of_closed_loop_clients_merge_into_one_batch():
    fake = Slow(0.03)

    async def halves(b):
        async def client(i):
            await asyncio.sleep(0.015 * (i >= 4))  # the second half arrives while the first half's pass runs
            for j in range(8):
                await b.retrieve([f"c{i}-{j}"], 2)

        await asyncio.gather(*(client(i) for i in range(8)))

    run(halves, fake, window_s=0.02, max_batch=32)
    sizes = [n for n, _, _ in fake.calls]
    assert sizes[0] == 4 and sum(sizes) == 64 and sizes.count(8) >= 5, sizes  # the halves do not take turns for ever


def test_groups_of_equal_k_and_selection_are_separate_calls_and_an_error_stays_in_its_group():
    fake = Slow(0.0)

    async def mixed(b):
        return await asyncio.gather(b.retrieve(["a"], 1), b.retrieve(["b"], 2), b.retrieve(["c"], 1, "mmr", "mmr"),
                                    b.retrieve(["boom"], 3), return_exceptions=True)

    a, b_, c, boom = run(mixed, fake, window_s=0.01)
    assert (a, b_, c) == ([["a:1:None"]], [["b:2:None"]], [["c:1:mmr"]])
    assert isinstance(boom, ValueError)
    assert sorted((n, k, str(s)) for n, k, s in fake.calls) == [(1, 1, "None"), (1, 1, "mmr"), (1, 2, "None"), (1, 3, "None")]
