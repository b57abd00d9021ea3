"""Sending an evaluation's prompts: bounded concurrency, a progress bar, the count and a time estimate up
front, an early warning when most replies are not labels, and a Ctrl-C that cancels what is queued.

Example:
    >>> replies = send_all(client, prompts, concurrency=4, labels=label_set)      # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .llm import LLMClient, LLMResponse
from .metrics import parse_label

__all__ = ["announce_plan", "send_all", "send_by_query"]

logger = logging.getLogger(__name__)

_CHECK_AFTER = 20  # replies looked at before warning that most are invalid


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _announce(client: LLMClient, prompts: Sequence[Any], concurrency: int) -> int:
    """Log how many requests will be sent and, from cached latencies, about how long they take; returns the count."""
    distinct = {json.dumps(p, sort_keys=True, ensure_ascii=False): p for p in prompts}
    to_send = sum(not client.is_cached(p) for p in distinct.values())
    latencies = client.cached_latencies()
    if to_send and latencies:
        eta = f"; about {_duration(float(np.median(latencies)) * to_send / concurrency)} at the median of {len(latencies)} cached replies"
    elif to_send:
        eta = "; a time estimate follows the first replies"
    else:
        eta = ""
    logger.info("%d prompts: %d answered from the cache, %d requests to send (concurrency %d)%s",
                len(prompts), len(distinct) - to_send, to_send, concurrency, eta)
    return to_send


def send_all(client: LLMClient, prompts: Sequence[Any], *, concurrency: int = 1, show_progress: bool = True,
             labels: Sequence[Any] = (), mode: str = "completion") -> list[LLMResponse]:
    """Responses to ``prompts`` (same order), each cached as it arrives.

    A failed request (after the client's retries) raises ``RuntimeError``; Ctrl-C cancels every queued
    request at once and re-raises ``KeyboardInterrupt`` (requests in flight finish on their own). An in-process
    reader (``client.batched``) gets every uncached prompt at once and answers them in batches.
    """
    if getattr(client, "batched", False):
        return _send_batched(client, prompts, show_progress=show_progress, labels=labels, mode=mode)
    to_send = _announce(client, prompts, concurrency)
    responses: list[LLMResponse | None] = [None] * len(prompts)
    pool = ThreadPoolExecutor(max_workers=concurrency)
    bar = tqdm(total=len(prompts), desc="LLM requests", disable=not show_progress, unit="req")
    futures = {pool.submit(client.complete, p): i for i, p in enumerate(prompts)}
    seen: list[LLMResponse] = []
    t0, sent_seen, warned = time.perf_counter(), 0, False
    try:
        for f in as_completed(futures):
            resp = f.result()
            responses[futures[f]] = resp
            bar.update(1)
            seen.append(resp)
            if not resp.cached:
                sent_seen += 1
                if sent_seen == 10 and to_send > 10:
                    rate = (time.perf_counter() - t0) / sent_seen
                    logger.info("about %s left for %d requests", _duration(rate * (to_send - sent_seen)), to_send - sent_seen)
            if len(seen) == _CHECK_AFTER and labels and not warned:
                warned = True
                _warn_if_invalid(seen, labels, mode)
    except Exception as err:
        pool.shutdown(wait=False, cancel_futures=True)
        raise RuntimeError(f"an LLM request failed after retries ({type(err).__name__}: {err}); "
                           "responses so far are cached: rerun to resume") from err
    except BaseException:  # Ctrl-C: drop the queue now, not after every queued request has run
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        bar.close()
    pool.shutdown(wait=True)
    return responses  # type: ignore[return-value]


def _warn_if_invalid(seen: Sequence[LLMResponse], labels: Sequence[Any], mode: str) -> None:
    """Warn when most of the first replies are not labels (a wrong template or mode shows early)."""
    invalid = sum(parse_label(r.text, labels) is None for r in seen)
    if invalid > len(seen) // 2:
        hint = ("a base model rarely answers a chat prompt with a label: try --mode completion, or an instruct model"
                if mode == "chat" else "check the template and --stop, or try an instruct model with --mode chat")
        logger.warning("%d of the first %d replies are not one of the labels (e.g. %r): %s",
                       invalid, len(seen), seen[0].text[:60], hint)


def _send_batched(reader: Any, prompts: Sequence[Any], *, show_progress: bool, labels: Sequence[Any], mode: str
                  ) -> list[LLMResponse]:
    """Responses to ``prompts`` from an in-process reader: the cache first, then every distinct uncached prompt
    through ``reader.answer`` (sorted by length and batched there), each batch cached as it ends; Ctrl-C stops after
    the batch in progress."""
    distinct: dict[str, Any] = {}
    for p in prompts:
        distinct.setdefault(json.dumps(p, sort_keys=True, ensure_ascii=False), p)
    replies: dict[str, LLMResponse | None] = {key: reader.cached(p) for key, p in distinct.items()}
    todo = [key for key, r in replies.items() if r is None]
    logger.info("%d prompts: %d answered from the cache, %d to answer in process (batches of %d)",
                len(prompts), len(distinct) - len(todo), len(todo), reader.batch_size)
    bar = tqdm(total=len(todo), desc="LLM replies", disable=not show_progress or not todo, unit="reply")
    fresh: list[LLMResponse] = []
    try:
        for batch in reader.answer([distinct[key] for key in todo]):
            bar.update(len(batch))
            before = len(fresh)
            for i, resp in batch:
                replies[todo[i]] = resp
                fresh.append(resp)
            if labels and before < _CHECK_AFTER <= len(fresh):
                _warn_if_invalid(fresh[:_CHECK_AFTER], labels, mode)
    finally:
        bar.close()
    return [replies[json.dumps(p, sort_keys=True, ensure_ascii=False)] for p in prompts]  # type: ignore[misc]


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def announce_plan(client: LLMClient, selectors: Sequence[str], n_queries: int, known: dict[str, list]) -> None:
    """Log the size of a run before any retriever is built (a build takes minutes on a large pool).

    ``known`` holds the prompts already written (those of the random selectors): how many of them the cache
    answers is counted exactly; for the others the exact count follows once their retrievers are built.
    """
    total = len(selectors) * n_queries
    held = 0 if client.cache is None else len(client.cache)
    msg = f"{_count(len(selectors), 'selector', 'selectors')} x {_count(n_queries, 'query', 'queries')} = {total} prompts"
    msg += f"; the response cache holds {held} replies" if held else f"; nothing cached yet: up to {total} requests to send"
    if known and held:
        n_known = sum(len(p) for p in known.values())
        msg += f" ({sum(client.is_cached(p) for ps in known.values() for p in ps)} of the {n_known} prompts of {', '.join(known)})"
    building = [name for name in selectors if name not in known]
    if building:
        msg += f"; first the retrievers of {', '.join(building)} are built" + ("" if not held else ", then the exact count follows")
    logger.info("%s", msg)


def send_by_query(client: LLMClient, prompts: dict[str, list], n: int, *, seed: int = 0, concurrency: int = 1,
                  show_progress: bool = True, labels: Sequence[Any] = (), mode: str = "completion"
                  ) -> dict[tuple[str, int], LLMResponse]:
    """Every selector's reply to each of ``n`` queries, by ``(selector, query position)``.

    Query by query in a seeded order: an interrupted run leaves every selector answered on one random subset.
    """
    order = np.random.default_rng([seed, n]).permutation(n).tolist()
    jobs = [(name, j) for j in order for name in prompts]
    replies = send_all(client, [prompts[name][j] for name, j in jobs], concurrency=concurrency,
                       show_progress=show_progress, labels=labels, mode=mode)
    return dict(zip(jobs, replies, strict=True))
