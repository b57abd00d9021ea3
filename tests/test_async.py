"""Async selection: ``ICLRetriever.aretrieve`` / ``aretrieve_batch`` / ``abuild_prompt`` / ``aadd_examples`` and the
LangChain retriever's and example selector's async methods give the sync results and keep the event loop running."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

import pytest

from icl_fungi import ICLRetriever, Selection

from .conftest import QUERIES

SMALL = [("my card still has not arrived", "card_arrival"), ("the card you sent me never came", "card_arrival"),
         ("my top up failed", "top_up_failed"), ("the top-up did not go through", "top_up_failed"),
         ("what is the exchange rate", "exchange_rate"), ("which rate do you use to convert money", "exchange_rate")]


@pytest.fixture
def small(st_model) -> ICLRetriever:
    """A fresh small retriever per test (the tests that add examples must not grow a shared one)."""
    return ICLRetriever.from_texts([t for t, _ in SMALL], [y for _, y in SMALL], model=st_model, show_progress_bar=False)


@pytest.fixture
def slow_encoder(monkeypatch):
    """Make a retriever's encoder hold its thread for ``delay`` seconds per call (a long forward pass)."""

    def make(retriever: ICLRetriever, delay: float = 0.3) -> None:
        encode = retriever.encoder.encode

        def slow(*args: Any, **kwargs: Any) -> Any:
            time.sleep(delay)
            return encode(*args, **kwargs)

        monkeypatch.setattr(retriever.encoder, "encode", slow)

    return make


async def ticks_during(awaitable: Awaitable[Any]) -> tuple[Any, int]:
    """Await ``awaitable`` while a ticker coroutine counts 10 ms sleeps; returns its result and the tick count
    (about one tick if the awaitable blocked the loop)."""
    ticks, done = 0, False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)  # the ticker is running before the awaitable starts
    try:
        result = await awaitable
    finally:
        done = True
        await task
    return result, ticks


def test_async_methods_equal_the_sync_ones(fungi_retriever):
    r, sel = fungi_retriever, Selection("label_cap", max_per_label=1)

    async def main() -> tuple:
        return (await r.aretrieve(QUERIES[0], k=5), await r.aretrieve(QUERIES[1], k=5, selection=sel),
                await r.aretrieve_batch(QUERIES, k=3), await r.abuild_prompt(QUERIES[2], k=4),
                await r.abuild_prompt(QUERIES[3], k=4, template="banking77-chat", order="random", seed=3, max_tokens=200))

    one, capped, batch, text, chat = asyncio.run(main())
    assert one == r.retrieve(QUERIES[0], k=5) and len(one) == 5
    assert capped == r.retrieve(QUERIES[1], k=5, selection=sel) and len({x.label for x in capped}) == 5
    assert batch == r.retrieve_batch(QUERIES, k=3) and len(batch) == len(QUERIES)
    assert text == r.build_prompt(QUERIES[2], k=4) and isinstance(text, str)
    assert chat == r.build_prompt(QUERIES[3], k=4, template="banking77-chat", order="random", seed=3, max_tokens=200)
    assert isinstance(chat, list) and chat[0]["role"] == "system"


def test_concurrent_awaits_each_get_their_own_answer(fungi_retriever):
    async def main() -> list:
        return await asyncio.gather(*(fungi_retriever.aretrieve(q, k=4) for q in QUERIES))

    assert asyncio.run(main()) == [fungi_retriever.retrieve(q, k=4) for q in QUERIES]


def test_retrieval_does_not_block_the_event_loop(fungi_retriever, slow_encoder):
    expected = fungi_retriever.retrieve(QUERIES[0], k=3)
    slow_encoder(fungi_retriever)
    got, ticks = asyncio.run(ticks_during(fungi_retriever.aretrieve(QUERIES[0], k=3)))
    assert got == expected
    assert ticks >= 5, f"the loop ticked {ticks} times during a 0.3 s retrieval: it was blocked"
    prompt, ticks = asyncio.run(ticks_during(fungi_retriever.abuild_prompt(QUERIES[0], k=3)))
    assert prompt == fungi_retriever.build_prompt(QUERIES[0], k=3) and ticks >= 5


def test_bad_input_raises_through_the_await(fungi_retriever):
    with pytest.raises(ValueError, match="k must be >= 1"):
        asyncio.run(fungi_retriever.aretrieve("where is my card?", k=0))
    with pytest.raises(TypeError, match="query must be a str"):
        asyncio.run(fungi_retriever.aretrieve(["a list"], k=2))
    with pytest.raises(ValueError, match="empty"):
        asyncio.run(fungi_retriever.aretrieve_batch(["ok", " "], k=2))


def test_aadd_examples_grows_the_pool_while_the_loop_runs(small, slow_encoder):
    slow_encoder(small, delay=0.2)
    ids, ticks = asyncio.run(ticks_during(small.aadd_examples(["please close my account"], ["terminate_account"])))
    assert ids == [len(SMALL)] and len(small) == len(SMALL) + 1 and ticks >= 3
    assert small.retrieve("I want to close my account", k=1)[0].label == "terminate_account"


# ------------------------------------------------------------------ LangChain
def test_langchain_async_methods(small, slow_encoder):
    pytest.importorskip("langchain_core")
    from langchain_core.prompts import FewShotPromptTemplate, PromptTemplate

    from icl_fungi.langchain import ICLFungiExampleSelector, ICLFungiRetriever

    selector = ICLFungiExampleSelector(retriever=small, k=3, order="similar_first")
    lc = ICLFungiRetriever(retriever=small, k=2)
    prompt = FewShotPromptTemplate(example_selector=selector, example_prompt=PromptTemplate.from_template("Q: {text}\nA: {label}"),
                                   suffix="Q: {query}\nA:", input_variables=["query"])
    q = {"query": "where is my card?"}
    sync = (selector.select_examples(q), [d.page_content for d in lc.invoke(q["query"])], prompt.format(**q))
    slow_encoder(small, delay=0.2)

    async def main() -> tuple:
        picked, t1 = await ticks_during(selector.aselect_examples(q))
        docs, t2 = await ticks_during(lc.ainvoke(q["query"]))
        text, t3 = await ticks_during(prompt.aformat(**q))
        return (picked, [d.page_content for d in docs], text), (t1, t2, t3)

    got, ticks = asyncio.run(main())
    assert got == sync and got[0][0]["label"] == "card_arrival"
    assert min(ticks) >= 3, f"the loop was blocked: ticks {ticks}"


def test_langchain_aadd_example(small):
    pytest.importorskip("langchain_core")
    from icl_fungi.langchain import ICLFungiExampleSelector

    selector = ICLFungiExampleSelector(retriever=small, k=1, input_key="query")
    idx = asyncio.run(selector.aadd_example({"text": "I want to close my account", "label": "terminate_account"}))
    assert idx == len(SMALL) and len(small) == len(SMALL) + 1
    assert asyncio.run(selector.aselect_examples({"query": "please close my account"}))[0]["label"] == "terminate_account"
    with pytest.raises(ValueError, match="lacks 'label'"):
        asyncio.run(selector.aadd_example({"text": "no label"}))
