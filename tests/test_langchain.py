from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("langchain_core")

from langchain_core.prompts import ChatPromptTemplate, FewShotChatMessagePromptTemplate, FewShotPromptTemplate, PromptTemplate

from icl_fungi import ICLRetriever
from icl_fungi.langchain import ICLFungiExampleSelector, ICLFungiRetriever


@pytest.fixture(scope="module")
def small(st_model):
    rows = [
        {"text": "my card still has not arrived", "label": "card_arrival"},
        {"text": "how long does card delivery take", "label": "card_delivery_estimate"},
        {"text": "my top up failed", "label": "top_up_failed"},
        {"text": "what is the exchange rate", "label": "exchange_rate"},
        {"text": "I was charged a fee for a transfer", "label": "transfer_fee_charged"},
    ]
    return ICLRetriever.from_dataset(rows, model=st_model, features=("embedding", "kl"), show_progress_bar=False)


def test_retriever_invoke_ainvoke_batch(small):
    lc = ICLFungiRetriever(retriever=small, k=2)
    docs = lc.invoke("where is my card?")
    assert len(docs) == 2 and docs[0].metadata["label"] == "card_arrival"
    assert set(docs[0].metadata) == {"label", "score", "index"}
    assert docs[0].page_content == small.texts[docs[0].metadata["index"]]
    adocs = asyncio.run(lc.ainvoke("where is my card?"))
    assert [d.page_content for d in adocs] == [d.page_content for d in docs]
    batch = lc.batch(["where is my card?", "top up did not work"])
    assert batch[1][0].metadata["label"] == "top_up_failed"
    with pytest.raises(TypeError, match="retriever must be an ICLRetriever"):
        ICLFungiRetriever(retriever="nope", k=2)


def test_few_shot_prompt_template(small):
    sel = ICLFungiExampleSelector(retriever=small, k=2)
    prompt = FewShotPromptTemplate(
        example_selector=sel,
        example_prompt=PromptTemplate.from_template("Query: {text}\nIntent: {label}"),
        prefix="Classify the query.",
        suffix="Query: {query}\nIntent:",
        input_variables=["query"],
    )
    text = prompt.format(query="where is my card?")
    assert text.startswith("Classify the query.") and text.endswith("Query: where is my card?\nIntent:")
    assert text.count("Intent:") == 3
    # most similar example next to the query
    assert text.rindex("card_arrival") > text.index("Query: ") and "Intent: card_arrival\n\nQuery: where" in text


def test_few_shot_chat_template_and_add_example(small):
    sel = ICLFungiExampleSelector(retriever=small, k=2, input_key="query")
    prompt = FewShotChatMessagePromptTemplate(
        example_selector=sel,
        example_prompt=ChatPromptTemplate.from_messages([("human", "{text}"), ("ai", "{label}")]),
        input_variables=["query"],
    )
    msgs = prompt.format_messages(query="exchange rate please")
    assert [m.type for m in msgs] == ["human", "ai", "human", "ai"]
    assert msgs[-1].content == "exchange_rate"
    n = len(small)
    idx = sel.add_example({"text": "I want to close my account", "label": "terminate_account"})
    assert idx == n and len(small) == n + 1
    assert sel.select_examples({"query": "please close my account"})[-1]["label"] == "terminate_account"
    with pytest.raises(ValueError, match="lacks"):
        sel.add_example({"text": "no label"})
    with pytest.raises(ValueError, match="input_key"):
        ICLFungiExampleSelector(retriever=small, k=1).select_examples({"a": "x", "b": "y"})


def test_selector_order_has_the_library_spelling(small):
    q = {"query": "where is my card?"}
    best_first = [x.text for x in small.retrieve(q["query"], k=3)]
    last = ICLFungiExampleSelector(retriever=small, k=3).select_examples(q)
    first = ICLFungiExampleSelector(retriever=small, k=3, order="similar_first").select_examples(q)
    assert [e["text"] for e in last] == best_first[::-1] and [e["text"] for e in first] == best_first
    rand = ICLFungiExampleSelector(retriever=small, k=3, order="random", seed=2).select_examples(q)
    assert sorted(e["text"] for e in rand) == sorted(best_first)
    with pytest.raises(ValueError, match="order must be one of"):
        ICLFungiExampleSelector(retriever=small, k=3, order="backwards")
