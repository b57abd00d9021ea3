from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from icl_fungi import ICLRetriever, RetrievedExample, load_pool

from .conftest import DATA
from .helpers import run_alongside, unit_rows


def test_retrieve_returns_best_first_with_fields(fungi_retriever, intent_pool):
    res = fungi_retriever.retrieve("I still haven't received my card", k=20)
    assert len(res) == 20 and all(isinstance(r, RetrievedExample) for r in res)
    assert [r.score for r in res] == sorted((r.score for r in res), reverse=True)
    texts, labels = intent_pool
    for r in res:
        assert texts[r.index] == r.text and labels[r.index] == r.label
    assert res[0].label == "card_arrival"


def test_pool_member_retrieves_itself(fungi_retriever, intent_pool):
    texts, _ = intent_pool
    for i in (0, 17, 119):
        top = fungi_retriever.retrieve(texts[i], k=1)[0]
        assert texts[top.index] == texts[i]
        assert top.score == pytest.approx(1.0, abs=1e-4)


def test_retrieve_batch_equals_single(fungi_retriever):
    qs = ["top up failed", "exchange rate euros", "card got stolen"]
    batch = fungi_retriever.retrieve_batch(qs, k=5)
    for q, res in zip(qs, batch, strict=True):
        single = fungi_retriever.retrieve(q, k=5)
        assert [r.index for r in single] == [r.index for r in res]
        np.testing.assert_allclose([r.score for r in single], [r.score for r in res], atol=1e-5)


def test_features_shape_and_norm(fungi_retriever):
    v = fungi_retriever.vectors(["a", "b c"])
    assert v.shape == (2, 119)  # PCA clamped to n_pool - 1 for a pool of 120
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    assert fungi_retriever.vectors("a").shape == (119,)


def test_k_larger_than_pool_and_bad_k(fungi_retriever):
    assert len(fungi_retriever.retrieve("card", k=10_000)) == len(fungi_retriever)
    with pytest.raises(ValueError, match="k must be >= 1"):
        fungi_retriever.retrieve("card", k=0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        fungi_retriever.retrieve("card", k=-3)
    with pytest.raises(TypeError, match="k must be an int"):
        fungi_retriever.retrieve("card", k=2.5)
    with pytest.raises(TypeError, match="k must be an int"):
        fungi_retriever.retrieve("card", k=True)


def test_bad_queries(fungi_retriever):
    with pytest.raises(ValueError, match="empty"):
        fungi_retriever.retrieve("   ")
    with pytest.raises(TypeError, match="query must be a str"):
        fungi_retriever.retrieve(None)
    with pytest.raises(TypeError, match="query #1"):
        fungi_retriever.retrieve_batch(["ok", 3])
    assert fungi_retriever.retrieve_batch([], k=3) == []


def test_embedding_only_retriever_is_cosine_on_centred_embeddings(intent_pool, st_model):  # same code path as FUNGI
    texts, labels = intent_pool
    r = ICLRetriever.from_texts(texts, labels, model=st_model, features=("embedding",), show_progress_bar=False)
    emb = st_model.encode(texts, normalize_embeddings=True)
    q = st_model.encode(["my card has not arrived"], normalize_embeddings=True)
    # the embedding block is centred on the pool mean and re-normalised, then PCA centres the pool again
    mean = emb.mean(0)
    pool_b, q_b = unit_rows(emb - mean), unit_rows(q - mean)
    centred, qc = pool_b - pool_b.mean(0), q_b - pool_b.mean(0)
    sims = unit_rows(centred) @ unit_rows(qc).T
    expected = np.argsort(-sims[:, 0])[:10]
    got = [x.index for x in r.retrieve("my card has not arrived", k=10)]
    assert got[:5] == expected[:5].tolist()


def test_from_texts_equals_from_dataset(st_model, intent_pool):
    texts, labels = intent_pool
    a = ICLRetriever.from_texts(texts[:40], labels[:40], model=st_model, features=("embedding", "kl"), show_progress_bar=False)
    rows = [{"text": t, "label": lab} for t, lab in zip(texts[:40], labels[:40], strict=True)]
    b = ICLRetriever.from_dataset(rows, model=st_model, features=("embedding", "kl"), show_progress_bar=False)
    np.testing.assert_array_equal(a.vectors(["where is my card"]), b.vectors(["where is my card"]))
    with pytest.raises(ValueError, match="got 40 texts but 3 labels"):
        ICLRetriever.from_texts(texts[:40], labels[:3], model=st_model)
    with pytest.raises(TypeError, match="not a string"):
        ICLRetriever.from_texts(texts[:40], labels[:40], model=st_model, features="embedding")
    with pytest.raises(TypeError, match="encoder must be a FungiEncoder"):
        ICLRetriever("minilm")


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "dataset", "datasetdict", "dataframe", "records"])
def test_from_dataset_sources(fmt, tmp_path, st_model):
    import datasets
    import pandas as pd

    rows = [
        {"text": "my card is lost", "intent": "lost_card"},
        {"text": "where is my card", "intent": "card_arrival"},
        {"text": "top up failed", "intent": "top_up_failed"},
    ]
    if fmt == "csv":
        data = tmp_path / "pool.csv"
        pd.DataFrame(rows).to_csv(data, index=False)
    elif fmt == "jsonl":
        data = tmp_path / "pool.jsonl"
        data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    elif fmt == "dataset":
        data = datasets.Dataset.from_list(rows)
    elif fmt == "datasetdict":
        data = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})
    elif fmt == "dataframe":
        data = pd.DataFrame(rows)
    else:
        data = rows
    r = ICLRetriever.from_dataset(
        data, label_column="intent", split="train" if fmt == "datasetdict" else None,
        model=st_model, features=("embedding", "kl"), show_progress_bar=False,
    )
    assert r.labels == ["lost_card", "card_arrival", "top_up_failed"]
    assert r.retrieve("I lost my card", k=1)[0].label == "lost_card"


def test_csv_path_and_classlabel_mapping():
    import datasets

    texts, labels = load_pool(DATA / "intents-test.csv", label_column="intent")
    assert len(texts) == 36 and labels[0] == "card_arrival"
    with pytest.raises(ValueError, match="no column 'category'"):
        load_pool(DATA / "intents-test.csv", label_column="category")
    ds = datasets.Dataset.from_dict(
        {"text": ["a", "b"], "label": [1, 0]},
        features=datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["x", "y"])}),
    )
    assert load_pool(ds)[1] == ["y", "x"]


@pytest.mark.parametrize(
    ("data", "kwargs", "exc", "match"),
    [
        ([], {}, ValueError, "empty"),
        ([{"text": "a"}], {}, ValueError, "no column 'label'"),
        ([{"text": 5, "label": "x"}], {}, TypeError, "text #0 must be a str"),
        ([{"text": "  ", "label": "x"}], {}, ValueError, "text #0 is empty"),
        ([{"text": "a", "label": None}], {}, TypeError, "label #0"),
        ([{"text": "a", "label": float("nan")}], {}, ValueError, "missing"),
        ("no/such/file.csv", {}, ValueError, "not found"),
        ("pool.txt", {}, ValueError, "unsupported"),
        (42, {}, TypeError, "data must be"),
        ("surely-not-a-dataset-xyz", {}, ValueError, "hub"),
    ],
)
def test_bad_pools(data, kwargs, exc, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pool.txt").write_text("x")
    with pytest.raises(exc, match=match):
        load_pool(data, **kwargs)


def test_datasetdict_needs_split():
    import datasets

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list([{"text": "a", "label": "b"}])})
    with pytest.raises(ValueError, match="split"):
        load_pool(dd)
    with pytest.raises(ValueError, match="not in"):
        load_pool(dd, split="test")


def test_pool_of_one_and_duplicates(st_model, caplog):
    one = ICLRetriever.from_dataset([{"text": "hello there", "label": "greet"}], model=st_model, show_progress_bar=False)
    res = one.retrieve("anything at all", k=5)
    assert len(res) == 1 and res[0].label == "greet" and np.isfinite(res[0].score)
    rows = [{"text": "same text", "label": "a"}, {"text": "same text", "label": "b"}, {"text": "other", "label": "c"}]
    with caplog.at_level("WARNING"):
        dup = ICLRetriever.from_dataset(rows, model=st_model, show_progress_bar=False)
    assert "duplicate" in caplog.text
    top2 = dup.retrieve("same text", k=2)
    assert {r.label for r in top2} == {"a", "b"}  # duplicates are kept as separate examples


def test_add_examples_and_concurrent_queries(intent_pool, st_model):
    texts, labels = intent_pool
    r = ICLRetriever.from_texts(texts[:100], labels[:100], model=st_model, features=("embedding", "kl"), show_progress_bar=False)
    expected = [x.index for x in r.retrieve("card arrival", k=5)]

    def reader() -> None:
        for x in r.retrieve("card arrival", k=5):
            assert r.texts[x.index] == x.text

    ids, errors = run_alongside(reader, lambda: r.add_examples(["brand new example about crypto", "another one on refunds"],
                                                               ["crypto", "refund"]))
    assert not errors
    assert ids == [100, 101] and len(r) == 102
    assert r.retrieve("brand new example about crypto", k=1)[0].label == "crypto"
    assert [x.index for x in r.retrieve("card arrival", k=5)][:3] == expected[:3]
    with pytest.raises(ValueError, match="labels"):
        r.add_examples(["x"], ["a", "b"])


def test_cli_build_and_query(tmp_path, capsys):
    from icl_fungi.cli import main

    pool = tmp_path / "pool.jsonl"
    pool.write_text("\n".join(json.dumps({"text": t, "intent": i}) for t, i in [
        ("my card never arrived", "card_arrival"), ("top up did not work", "top_up_failed"),
        ("what fees do you charge", "fees")]) + "\n")
    assert main(["-q", "build", str(pool), "--label-column", "intent", "--features", "embedding,kl",
                 "--out", str(tmp_path / "r")]) == 0
    assert main(["-q", "query", str(tmp_path / "r"), "where is my card", "-k", "2", "--json"]) == 0
    out = capsys.readouterr().out
    res = json.loads(out[out.index("{"):])["examples"]
    assert len(res) == 2 and res[0]["label"] == "card_arrival"
    assert main(["-q", "query", str(tmp_path / "missing"), "x"]) == 2
    assert "not a saved retriever" in capsys.readouterr().err
    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["fit_weights"] == "auto"  # the default
    assert main(["-q", "build", str(pool), "--label-column", "intent", "--fit-weights", "none",
                 "--out", str(tmp_path / "fixed")]) == 0
    fixed = ICLRetriever.load(tmp_path / "fixed")
    assert fixed.fit_weights is None and fixed.block_weights == {"embedding": 1.0, "kl": 0.3}
    assert main(["-q", "build", str(pool), "--label-column", "nope", "--out", str(tmp_path / "r2")]) == 2
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    from unittest import mock

    with mock.patch("icl_fungi.retriever.ICLRetriever.from_dataset") as build:  # refused before any encoding
        assert main(["-q", "build", str(pool), "--label-column", "intent", "--out", str(mine)]) == 2
    assert not build.called and "refusing to overwrite" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "precious"




def test_vectors_and_the_deprecated_features_alias(fungi_retriever):
    with pytest.warns(DeprecationWarning, match=r"use ICLRetriever.vectors\(\)"):
        old = fungi_retriever.features("card arrival")
    np.testing.assert_array_equal(old, fungi_retriever.vectors("card arrival"))


def test_k_above_the_pool_is_said_once(intent_pool, st_model, caplog):
    r = ICLRetriever.from_texts(*intent_pool, model=st_model, features=("embedding",), show_progress_bar=False)
    with caplog.at_level(logging.WARNING, logger="icl_fungi.retriever"):
        assert len(r.retrieve("card", k=500)) == len(r)
        r.retrieve("card", k=500)
        r.retrieve("card", k=5)
    said = [rec.getMessage() for rec in caplog.records if "larger than the pool" in rec.getMessage()]
    assert said == [f"k=500 is larger than the pool ({len(r)} examples): every example is returned"]


def test_save_takes_an_empty_folder_and_refuses_a_full_one(fungi_retriever, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (fungi_retriever.save(empty) / "manifest.json").is_file()
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a saved retriever"):
        fungi_retriever.save(full)
    assert (full / "notes.txt").read_text() == "mine" and sorted(p.name for p in full.iterdir()) == ["notes.txt"]


def test_no_loading_bar_without_progress_bars(capfd):
    from icl_fungi import FungiEncoder

    FungiEncoder(show_progress_bar=False)
    assert "Loading weights" not in capfd.readouterr().err
