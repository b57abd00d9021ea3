"""Async twins of the retriever's methods: the work runs in a thread, so an event loop keeps serving.

The encoder's forward pass and the index search are CPU work: each async method runs its sync twin in
the event loop's default thread pool (bounded: min(32, CPUs + 4) threads). Results are the sync method's;
a cancelled await leaves its thread to finish.

Example:
    >>> examples = await r.aretrieve("where is my card?", k=5)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pool import RetrievedExample
    from .selection import Selection
    from .template import Prompt, PromptTemplate

__all__ = ["AsyncMethods"]


class AsyncMethods:
    """``aretrieve``, ``aretrieve_batch``, ``abuild_prompt`` and ``aadd_examples`` for a class with the sync
    ``retrieve``, ``retrieve_batch``, ``build_prompt`` and ``add_examples`` (:class:`~icl_fungi.ICLRetriever`)."""

    retrieve: Any
    retrieve_batch: Any
    build_prompt: Any
    add_examples: Any

    async def aretrieve(self, query: str, k: int = 20, *, selection: Selection | str | None = None) -> list[RetrievedExample]:
        """``retrieve`` without blocking the event loop."""
        return await asyncio.to_thread(self.retrieve, query, k, selection=selection)

    async def aretrieve_batch(self, queries: Sequence[str], k: int = 20, *,
                              selection: Selection | str | None = None) -> list[list[RetrievedExample]]:
        """``retrieve_batch`` without blocking the event loop (the queries are encoded together)."""
        return await asyncio.to_thread(self.retrieve_batch, queries, k, selection=selection)

    async def abuild_prompt(self, query: str, k: int = 20, *, template: str | PromptTemplate | None = None,
                            order: str = "similar_last", max_tokens: int | None = None, tokenizer: object = None,
                            selection: Selection | str | None = None, seed: int = 0) -> Prompt:
        """``build_prompt`` without blocking the event loop (same arguments, same prompt)."""
        return await asyncio.to_thread(self.build_prompt, query, k, template=template, order=order, max_tokens=max_tokens,
                                       tokenizer=tokenizer, selection=selection, seed=seed)

    async def aadd_examples(self, texts: Sequence[str], labels: Sequence[Any] | None = None,
                            outputs: Sequence[str] | None = None) -> list[int]:
        """``add_examples`` without blocking the event loop (queries running meanwhile see the old or new pool)."""
        return await asyncio.to_thread(self.add_examples, texts, labels, outputs)
