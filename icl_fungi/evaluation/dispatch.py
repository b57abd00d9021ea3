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

__all__ = ["send_all"]

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
    request at once and re-raises ``KeyboardInterrupt`` (requests in flight finish on their own).
    """
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
                invalid = sum(parse_label(r.text, labels) is None for r in seen)
                if invalid > _CHECK_AFTER // 2:
                    hint = ("a base model rarely answers a chat prompt with a label: try --mode completion, or an instruct model"
                            if mode == "chat" else "check the template and --stop, or try an instruct model with --mode chat")
                    logger.warning("%d of the first %d replies are not one of the labels (e.g. %r): %s",
                                   invalid, _CHECK_AFTER, seen[0].text[:60], hint)
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
