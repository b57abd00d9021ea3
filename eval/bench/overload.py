"""Overload of a served retriever, for eval/bench/bench_serve.py: many concurrent closed-loop clients on raw asyncio
sockets (one keep-alive connection each; a lean client, so that on a small machine the load generator is not
what is measured), and a lone probe client in a process of its own, which sees what one client sees while the
others overload the server.

A client that gets 503 waits what ``Retry-After-Ms`` says (as a polite client would), then sends its next
request. Latencies are from sending a request to reading its whole answer.

Example (against a running server):
    >>> overload(8080, clients=256, seconds=20, queries=["card"], k=20)       # doctest: +SKIP
    {'served': {...}, 'rejected': {...}, 'probe': {...}, ...}
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import socket
import time
from collections import Counter
from typing import Any

import numpy as np

HOST = "127.0.0.1"


def request_bytes(path: str, body: dict[str, Any]) -> bytes:
    """An HTTP/1.1 POST of ``body`` as JSON (keep-alive)."""
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
            .encode() + data)


def _latency(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    ms = np.asarray(values) * 1000
    return {"n": len(values), "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "max_ms": round(float(ms.max()), 1)}


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status = int((await reader.readline()).split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    await reader.readexactly(int(headers.get("content-length", 0)))
    return status, headers


async def _client(port: int, requests: list[bytes], stop_at: float, out: list[tuple[int, float]]) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    i = 0
    try:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            writer.write(requests[i % len(requests)])
            try:
                status, headers = await _read_answer(reader)
            except (ConnectionError, asyncio.IncompleteReadError):
                out.append((-1, time.perf_counter() - t0))
                reader, writer = await asyncio.open_connection(HOST, port)
                continue
            out.append((status, time.perf_counter() - t0))
            i += 1
            if status == 503:
                await asyncio.sleep(int(headers.get("retry-after-ms", "100")) / 1000)
    finally:
        writer.close()


def closed_loop(port: int, clients: int, seconds: float, requests: list[bytes]) -> dict[str, Any]:
    """``clients`` connections sending ``requests`` (each its own rotation) back to back for ``seconds``."""
    out: list[tuple[int, float]] = []

    async def main() -> None:
        stop_at = time.perf_counter() + seconds
        await asyncio.gather(*(_client(port, requests[c:] + requests[:c], stop_at, out) for c in range(clients)))

    began = time.perf_counter()
    asyncio.run(main())
    wall = time.perf_counter() - began
    statuses = Counter(status for status, _ in out)
    return {"clients": clients, "seconds": round(wall, 1), "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "served_rps": round(statuses[200] / wall, 1), "served": _latency([t for s, t in out if s == 200]),
            "rejected": _latency([t for s, t in out if s == 503])}


def probe(port: int, seconds: float, request: bytes, delay: float) -> dict[str, Any]:
    """One client alone (in its own process): after ``delay`` s, a request every 20 ms for ``seconds``."""
    time.sleep(delay)
    times: dict[int, list[float]] = {}
    with socket.create_connection((HOST, port)) as s, s.makefile("rb") as f:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            s.sendall(request)
            status = int(f.readline().split()[1])
            length = 0
            while (line := f.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            f.read(length)
            times.setdefault(status, []).append(time.perf_counter() - t0)
            time.sleep(0.02)
    return {"served": _latency(times.get(200, [])), "rejected": _latency(times.get(503, [])),
            "other": {str(k): len(v) for k, v in times.items() if k not in (200, 503)}}


def overload(port: int, *, clients: int, seconds: float, queries: list[str], k: int, route: str = "/v1/retrieve") -> dict[str, Any]:
    """The closed loop of ``clients`` clients, with the probe measuring from the 3rd second to the end."""
    requests = [request_bytes(route, {"query": q, "k": k}) for q in queries]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        lone = pool.apply_async(probe, (port, max(1.0, seconds - 4), requests[0], 3.0))
        load = closed_loop(port, clients, seconds, requests)
        return {**load, "probe": lone.get(timeout=seconds + 120)}


def run_overload(url: str, queries: list[str], clients: int, seconds: float, k: int) -> dict[str, Any]:
    """:func:`overload` against the server at ``url``, with the server's own count of rejections (``rejected_total``)."""
    import httpx

    o = overload(int(url.rsplit(":", 1)[1]), clients=clients, seconds=seconds, queries=queries, k=k)
    text = httpx.get(f"{url}/metrics", timeout=60).text
    o["rejected_total"] = float(next(ln.split()[-1] for ln in text.splitlines() if ln.startswith("icl_fungi_rejected_total ")))
    print(overload_notes({"run": o})[0], flush=True)
    return o


def overload_notes(runs: dict[str, dict[str, Any]]) -> list[str]:
    """One line per overload run: served and rejected latency, as the load generator and the lone probe saw them."""
    notes = []
    for name, o in runs.items():
        sv, rj, pr = o["served"], o["rejected"], o["probe"]
        line = (f"Overload, {o['clients']} clients, {name}: statuses {o['statuses']} in {o['seconds']} s ({o['served_rps']} served/s); "
                f"served p50 {sv.get('p50_ms')} p99 {sv.get('p99_ms')} max {sv.get('max_ms')} ms")
        if rj["n"]:
            line += f"; rejected p50 {rj['p50_ms']} p99 {rj['p99_ms']} ms"
        line += (f". A lone probe client meanwhile: served p50 {pr['served'].get('p50_ms')} p99 {pr['served'].get('p99_ms')} ms "
                 f"({pr['served']['n']})")
        if pr["rejected"]["n"]:
            line += f", rejected p50 {pr['rejected']['p50_ms']} p99 {pr['rejected']['p99_ms']} ms ({pr['rejected']['n']})"
        notes.append(line + f"; server-side rejections counted {o.get('rejected_total')}.")
    return notes
