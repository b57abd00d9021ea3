"""Load for eval/bench/bench_serve.py: closed-loop client threads, the served and in-process calls they make, the cost of
one in-process forward pass, and the server's own view of its batches (from ``/metrics``).

Example:
    >>> stats = run_clients(2, 0.2, lambda t, i: True)
    >>> stats["clients"], stats["errors"]
    (2, 0)
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def server_batches(url: str) -> dict[str, float]:
    """The server's forward passes so far: how many, their queries and seconds (sums, from ``/metrics``)."""
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=60).text
    found = {m.group(1): float(m.group(2)) for m in re.finditer(r"^icl_fungi_batch_(queries_sum|queries_count|seconds_sum) (\S+)$",
                                                                    text, re.MULTILINE)}
    return {"passes": found["queries_count"], "queries": found["queries_sum"], "seconds": found["seconds_sum"]}


def batches_between(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """Mean queries per forward pass and mean ms per pass between two :func:`server_batches` snapshots."""
    passes = after["passes"] - before["passes"]
    if not passes:
        return {"passes": 0, "mean_queries": None, "mean_pass_ms": None}
    return {"passes": int(passes), "mean_queries": round((after["queries"] - before["queries"]) / passes, 2),
            "mean_pass_ms": round((after["seconds"] - before["seconds"]) / passes * 1000, 1)}


def run_clients(n: int, seconds: float, call: Callable[[int, int], bool], setup: Callable[[], Any] | None = None) -> dict[str, Any]:
    """``n`` threads calling ``call(thread, i)`` (True: success) back to back for ``seconds``; throughput and latency."""
    latencies: list[list[float]] = [[] for _ in range(n)]
    errors = [0] * n
    start = threading.Barrier(n + 1)
    stop_at = [0.0]

    def loop(t: int) -> None:
        if setup is not None:
            setup()
        start.wait()
        i = 0
        while time.perf_counter() < stop_at[0]:
            t0 = time.perf_counter()
            ok = call(t, i)
            latencies[t].append(time.perf_counter() - t0)
            errors[t] += not ok
            i += 1

    threads = [threading.Thread(target=loop, args=(t,), daemon=True) for t in range(n)]
    for th in threads:
        th.start()
    stop_at[0] = time.perf_counter() + 1e9
    start.wait()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    for th in threads:
        th.join()
    wall = time.perf_counter() - began
    flat = [x for row in latencies for x in row]
    return {"clients": n, "requests": len(flat), "errors": sum(errors), "seconds": round(wall, 2),
            "rps": round(len(flat) / wall, 2), "p50_ms": round(float(np.percentile(flat, 50)) * 1000, 1),
            "p99_ms": round(float(np.percentile(flat, 99)) * 1000, 1), "latencies_s": flat}


def served_call(url: str, route: str, queries: list[str], k: int) -> tuple[Callable[[int, int], bool], Callable[[], None]]:
    """A client call for ``route`` (one keep-alive connection per thread) and the per-thread setup that opens it."""
    import httpx

    local = threading.local()

    def setup() -> None:
        local.client = httpx.Client(base_url=url, timeout=120)

    def call(t: int, i: int) -> bool:
        q = queries[(t * 7919 + i) % len(queries)]
        try:
            return local.client.post(route, json={"query": q, "k": k}).status_code == 200
        except httpx.HTTPError:
            return False

    return call, setup


def in_process_call(r: Any, route: str, queries: list[str], k: int) -> Callable[[int, int], bool]:
    """The same call made in process: ``retrieve`` or ``build_prompt``."""
    fn = r.retrieve if route == "/v1/retrieve" else r.build_prompt

    def call(t: int, i: int) -> bool:
        fn(queries[(t * 7919 + i) % len(queries)], k)
        return True

    return call


def _passes(r: Any, queries: list[str], n: int, k: int, repeats: int) -> list[float]:
    """Seconds of ``repeats`` in-process ``retrieve_batch`` calls of ``n`` queries (after one untimed call), on one
    worker thread as the server runs them."""
    from concurrent.futures import ThreadPoolExecutor

    def timed(batch: list[str]) -> float:
        t0 = time.perf_counter()
        r.retrieve_batch(batch, k)
        return time.perf_counter() - t0

    with ThreadPoolExecutor(1) as worker:
        worker.submit(timed, queries[:n]).result()
        batches = [[queries[(j * n + i) % len(queries)] for i in range(n)] for j in range(repeats)]
        return [worker.submit(timed, b).result() for b in batches]


def batch_cost(r: Any, queries: list[str], sizes: list[int], k: int, repeats: int = 9) -> dict[int, float]:
    """Median ms of one in-process ``retrieve_batch`` of ``n`` queries, for each ``n`` of ``sizes``: the floor of a
    batched server's latency."""
    return {n: round(float(np.median(_passes(r, queries, n, k, repeats))) * 1000, 1) for n in sizes}


def pass_times(r: Any, queries: list[str], n: int, k: int, repeats: int = 15) -> dict[str, float]:
    """Median and slowest ms of ``repeats`` in-process passes of ``n`` queries."""
    ms = np.asarray(_passes(r, queries, n, k, repeats)) * 1000
    return {"p50_ms": round(float(np.median(ms)), 1), "max_ms": round(float(ms.max()), 1)}


def interleaved_bar(url: str, r: Any, queries: list[str], k: int, route: str, rounds: int, seconds: float = 2.0,
                    passes: int = 4) -> dict[str, Any]:
    """The 2-core bar on a shared machine: ``rounds`` times, 8 served clients for ``seconds`` then ``passes`` in-process
    passes of 8 queries, so that both sample the same moments' load; p99 of every served request over the median pass."""
    call, setup = served_call(url, route, queries, k)
    served: list[float] = []
    own: list[float] = []
    before = server_batches(url)
    for _ in range(rounds):
        served += run_clients(8, seconds, call, setup)["latencies_s"]
        own += _passes(r, queries, 8, k, passes)
    p99, pass_8 = float(np.percentile(served, 99)) * 1000, float(np.median(own)) * 1000
    return {"rounds": rounds, "requests": len(served), "p50_ms": round(float(np.median(served)) * 1000, 1), "p99_ms": round(p99, 1),
            "pass_of_8_ms": round(pass_8, 1), "pass_of_8_p90_ms": round(float(np.percentile(own, 90)) * 1000, 1),
            "server_batches": batches_between(before, server_batches(url)), "ratio": round(p99 / pass_8, 2)}
