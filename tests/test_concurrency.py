"""Many threads at once: the same answers as one thread; adding examples never tears an answer."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from icl_fungi import FeatureConfig, FungiEncoder, ICLRetriever, VectorIndex
from icl_fungi.selection import Selection

from .conftest import QUERIES
from .helpers import run_alongside


def _hnsw_retriever(pool: tuple[list, list], st_model) -> ICLRetriever:
    """All three blocks, searched through the HNSW graph (exact search switched off)."""
    encoder = FungiEncoder(st_model, FeatureConfig(features=("embedding", "kl", "simclr")), show_progress_bar=False)
    retriever = ICLRetriever(encoder, index=VectorIndex(exact_threshold=0)).fit(*pool)
    assert retriever.index.uses_hnsw
    return retriever


@pytest.fixture(scope="module")
def hnsw_retriever(intent_pool, st_model) -> ICLRetriever:
    return _hnsw_retriever(intent_pool, st_model)


def _run_threads(n: int, fn) -> list:
    barrier = threading.Barrier(n)

    def task(i: int):
        barrier.wait()  # all threads start together
        return fn(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(task, range(n)))


def test_32_threads_get_what_one_thread_gets(hnsw_retriever):
    r = hnsw_retriever
    alone_retrieve = {q: r.retrieve(q, k=20) for q in QUERIES}
    alone_prompt = {q: r.build_prompt(q, k=20) for q in QUERIES}
    alone_mmr = {q: r.retrieve(q, k=10, selection="mmr") for q in QUERIES}

    def work(i: int):
        q = QUERIES[i % len(QUERIES)]
        return q, r.retrieve(q, k=20), r.build_prompt(q, k=20), r.retrieve(q, k=10, selection="mmr")

    for q, got, prompt, mmr in _run_threads(32, work):
        assert [(x.index, x.text, x.label) for x in got] == [(x.index, x.text, x.label) for x in alone_retrieve[q]]
        assert [x.score for x in got] == pytest.approx([x.score for x in alone_retrieve[q]], abs=1e-6)
        assert prompt == alone_prompt[q]
        assert [x.index for x in mmr] == [x.index for x in alone_mmr[q]]


def test_add_examples_while_32_threads_query(intent_pool, intent_queries, st_model):
    texts, _ = intent_pool
    r = _hnsw_retriever(intent_pool, st_model)  # a retriever of its own: this test adds to it
    pool = set(texts)
    extra = [(t, lab) for t, lab in zip(*intent_queries, strict=True) if t not in pool]
    assert len(extra) == 36
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for start in range(0, len(extra), 4):
                chunk = extra[start : start + 4]
                r.add_examples([t for t, _ in chunk], [lab for _, lab in chunk])
        except BaseException as err:  # noqa: BLE001 - reported by the test below
            errors.append(err)
        finally:
            stop.set()

    def reader(i: int) -> int:
        checked = 0
        q = QUERIES[i % len(QUERIES)]
        while not stop.is_set() or checked == 0:
            got = r.retrieve(q, k=20, selection=Selection("label_cap", max_per_label=5) if i % 4 == 0 else None)
            assert len(got) == 20
            scores = [x.score for x in got]
            assert scores == sorted(scores, reverse=True)
            snapshot_texts, snapshot_labels = r.texts, r.labels
            for x in got:  # every answer names an example exactly as it is stored in the pool
                assert snapshot_texts[x.index] == x.text and snapshot_labels[x.index] == x.label
            checked += 1
        return checked

    thread = threading.Thread(target=writer)
    thread.start()
    counts = _run_threads(32, reader)
    thread.join()
    assert not errors, errors
    assert sum(counts) > len(counts)  # readers went on querying while examples were being added, not once after
    assert len(r) == len(texts) + len(extra)
    # every added example is in the index and is its own nearest neighbour
    for text, label in extra[::5]:
        top = r.retrieve(text, k=1)[0]
        assert (top.text, top.label) == (text, label)


def test_token_counting_and_encoding_from_many_threads(st_model, intent_pool):
    """Fast tokenizers keep truncation/padding state: token_lengths (length sorting) racing with an encode's
    padded tokenisation used to fail with 'Unable to create tensor' before the encoder serialised them."""
    encoder = FungiEncoder(st_model, FeatureConfig(features=("embedding",)), show_progress_bar=False)
    texts = intent_pool[0][:64]
    want = encoder.token_lengths(texts)

    def reader() -> None:
        assert encoder.token_lengths(texts) == want

    _, errors = run_alongside(reader, lambda: [encoder.encode(texts[:8]) for _ in range(40)], n_readers=8)
    assert not errors, errors[:2]
