from __future__ import annotations

import numpy as np
import pytest

from icl_fungi import ICLRetriever
from icl_fungi.selection import Selection, select

from .helpers import unit_rows

# pool: three near-copies of A close to the query, a B a bit further, a C further still
POOL = unit_rows([[1, 0, 0], [1, 0.01, 0], [1, 0, 0.01], [0.8, 0.6, 0], [0.6, 0, 0.8]])
LABELS = ["a", "a", "a", "b", "c"]
TEXTS = ["x", "x copy", "x again", "y", "z"]
Q = unit_rows([1, 0.05, 0.05])
SIMS = POOL @ Q
ORDER = list(np.argsort(-SIMS))


def run(sel, k=3, query_text="q"):
    return [i for i, _ in select(Q, ORDER, SIMS[ORDER], POOL, LABELS, k, sel, texts=TEXTS, query=query_text)]


def test_topk():
    assert run(Selection()) == ORDER[:3]


def test_mmr_skips_near_copies():
    assert set(run(Selection("mmr", mmr_lambda=0.3))) == {ORDER[0], 3, 4}
    assert run(Selection("mmr", mmr_lambda=1.0)) == ORDER[:3]  # lambda 1: plain relevance


def test_label_cap():
    assert run(Selection("label_cap", max_per_label=1)) == [ORDER[0], 3, 4]
    assert [LABELS[i] for i in run(Selection("label_cap", max_per_label=2), k=4)] == ["a", "a", "b", "c"]


def test_label_coverage():
    out = run(Selection("label_coverage", n_labels=3), k=4)
    assert out[:3] == [ORDER[0], 3, 4] and LABELS[out[3]] == "a"
    out = run(Selection("label_coverage", n_labels=1), k=2)
    assert out == ORDER[:2]


def test_exclude_query_and_dedup():
    assert TEXTS[ORDER[0]] not in [TEXTS[i] for i in run(Selection(exclude_query=True), query_text=f"  {TEXTS[ORDER[0]].upper()} ")]
    dedup = run(Selection(dedup_threshold=0.99))
    assert dedup == [ORDER[0], 3, 4]


def test_cover_gives_the_reference_labels_a_slot():
    # the main ranking shows a, a, a; the reference ranks c and b near: each gets a slot in place of the last a
    reference = [(ORDER[0], SIMS[ORDER[0]]), (4, SIMS[4]), (3, SIMS[3])]
    picked = [i for i, _ in select(Q, ORDER, SIMS[ORDER], None, LABELS, 3, Selection("cover"), reference=reference)]
    assert picked[0] == ORDER[0] and sorted(LABELS[i] for i in picked) == ["a", "b", "c"]
    assert picked == sorted(picked, key=lambda i: -SIMS[i])  # shown by the main similarity
    # only the reference's first example lends its label: nothing is missing, top-k
    one = [i for i, _ in select(Q, ORDER, SIMS[ORDER], None, LABELS, 3, Selection("cover", reference_k=1), reference=reference)]
    assert one == ORDER[:3]
    # a label shown once is never the donor: with k = 2 (a, a) only one reference label fits
    two = [LABELS[i] for i, _ in select(Q, ORDER, SIMS[ORDER], None, LABELS, 2, Selection("cover"), reference=reference)]
    assert sorted(two) == ["a", "c"]
    # no reference (a pool without an embedding block): top-k
    assert [i for i, _ in select(Q, ORDER, SIMS[ORDER], None, LABELS, 3, Selection("cover"))] == ORDER[:3]


def test_cover_reference_passes_the_steps():
    reference = [(4, SIMS[4]), (3, SIMS[3])]
    sel = Selection("cover", allowed_labels=("a", "b"))
    picked = [LABELS[i] for i, _ in select(Q, ORDER, SIMS[ORDER], None, LABELS, 3, sel, reference=reference)]
    assert "c" not in picked and "b" in picked


def test_default_selection_covers_the_embeddings_labels(fungi_retriever, intent_queries, st_model):
    r = fungi_retriever
    assert r.default_selection == Selection("cover")
    queries, gold = intent_queries
    default, topk = r.retrieve_batch(queries, 8), r.retrieve_batch(queries, 8, selection="topk")
    plain = ICLRetriever.from_texts(r.texts, r.labels, model=st_model, features=("embedding",), center_blocks=False,
                                    show_progress_bar=False).retrieve_batch(queries, 8)
    covered = lambda rows: np.mean([g in {x.label for x in row} for row, g in zip(rows, gold, strict=True)])  # noqa: E731
    assert covered(default) >= covered(topk) and covered(default) >= covered(plain) - 1 / len(gold)
    assert [row[0].index for row in default] == [row[0].index for row in topk]  # FUNGI's nearest stays nearest
    assert ICLRetriever.from_texts(r.texts, model=st_model, show_progress_bar=False).default_selection == Selection()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"strategy": "best"}, "unknown selection strategy"), ({"strategy": "label_cap"}, "max_per_label"),
     ({"strategy": "label_coverage"}, "n_labels"), ({"mmr_lambda": 2.0}, "mmr_lambda"), ({"fetch_k": 0}, "fetch_k"),
     ({"strategy": "cover", "reference_k": 0}, "reference_k")],
)
def test_bad_selection(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Selection(**kwargs)


def test_retriever_strategies_on_real_pool(st_model):
    rows = [{"text": f"my card has not arrived yet, day {i}", "label": "card_arrival"} for i in range(6)]
    rows += [{"text": "where is my new card?", "label": "card_delivery"},
             {"text": "card delivery takes how long", "label": "card_delivery_estimate"},
             {"text": "exchange rate for dollars", "label": "exchange_rate"}]
    r = ICLRetriever.from_texts([x["text"] for x in rows], [x["label"] for x in rows], model=st_model, features=("embedding", "kl"),
                                show_progress_bar=False)
    q = "my card has not arrived yet, day 3"
    top = r.retrieve(q, k=3)
    assert all(x.label == "card_arrival" for x in top) and top[0].text == q
    assert q not in [x.text for x in r.retrieve(q, k=3, selection=Selection(exclude_query=True))]
    capped = r.retrieve(q, k=3, selection=Selection("label_cap", max_per_label=1))
    assert len({x.label for x in capped}) == 3
    cov = r.retrieve(q, k=4, selection=Selection("label_coverage", n_labels=3))
    assert len({x.label for x in cov}) >= 3
    mmr = r.retrieve(q, k=3, selection=Selection("mmr", mmr_lambda=0.2))
    assert len({x.label for x in mmr}) >= 2
    for res in (capped, cov, mmr):
        assert [x.score for x in res] == sorted((x.score for x in res), reverse=True)
    # filters that leave few candidates fetch more, up to the whole pool
    assert len(r.retrieve(q, k=9, selection=Selection("label_cap", max_per_label=10, fetch_k=2))) == 9
    with pytest.raises(TypeError, match="selection must be a Selection"):
        r.retrieve(q, selection=3)
