"""Milvus (milvus-lite, embedded) as the index and Ray Data (local) for the feature build: both really run."""

from __future__ import annotations

import os

import numpy as np
import pytest

from icl_fungi import ICLRetriever, Selection, VectorIndex

pytest.importorskip("pymilvus") if not os.environ.get("CI") else None
pytest.importorskip("ray") if not os.environ.get("CI") else None

from icl_fungi.distributed import RayExecutor  # noqa: E402
from icl_fungi.milvus import MilvusIndex  # noqa: E402

from .conftest import QUERIES  # noqa: E402
from .helpers import rewrite_manifest, run_alongside  # noqa: E402


@pytest.fixture(scope="module")
def milvus_retriever(tmp_path_factory, intent_pool, st_model):
    uri = tmp_path_factory.mktemp("milvus") / "pool.db"
    return ICLRetriever.from_texts(*intent_pool, model=st_model, features=("embedding", "kl"), show_progress_bar=False,
                                   index=MilvusIndex(str(uri), "intents"))


def test_milvus_answers_like_exact_search(milvus_retriever, intent_pool, st_model):
    exact = ICLRetriever.from_texts(*intent_pool, model=st_model, features=("embedding", "kl"), show_progress_bar=False,
                                    index=VectorIndex(exact_threshold=10**9))
    assert len(milvus_retriever) == 120 and milvus_retriever.index.describe()["backend"] == "milvus"
    for q in QUERIES:
        a, b = milvus_retriever.retrieve(q, k=20), exact.retrieve(q, k=20)
        assert [x.index for x in a] == [x.index for x in b]
        np.testing.assert_allclose([x.score for x in a], [x.score for x in b], atol=1e-5)
    # the label filter runs in the engine; MMR fetches the candidates' vectors from Milvus
    only = milvus_retriever.retrieve(QUERIES[0], k=5, selection=Selection(allowed_labels=("lost_card", "change_pin")))
    assert len(only) == 5 and {x.label for x in only} <= {"lost_card", "change_pin"}
    mmr = milvus_retriever.retrieve(QUERIES[0], k=5, selection="mmr")
    assert [x.index for x in mmr] == [x.index for x in exact.retrieve(QUERIES[0], k=5, selection="mmr")]


def test_milvus_save_load_reconnects_without_copying_vectors(milvus_retriever, tmp_path, st_model):
    path = milvus_retriever.save(tmp_path / "r")
    assert not list((path / "index").glob("*.npy"))  # the vectors stay in Milvus
    back = ICLRetriever.load(path, model=st_model)
    assert isinstance(back.index, MilvusIndex) and len(back) == len(milvus_retriever)
    for q in QUERIES[:4]:
        assert [x.index for x in back.retrieve(q, k=10)] == [x.index for x in milvus_retriever.retrieve(q, k=10)]


def test_milvus_add_during_queries(tmp_path, intent_pool, intent_queries, st_model):
    texts, labels = intent_pool
    r = ICLRetriever.from_texts(texts, labels, model=st_model, features=("embedding",), show_progress_bar=False,
                                index=MilvusIndex(str(tmp_path / "a.db"), "grow"))
    extra = list(zip(*intent_queries, strict=True))

    def reader() -> None:
        got = r.retrieve(QUERIES[1], k=10)
        assert len(got) == 10 and all(r.texts[x.index] == x.text for x in got)

    def writer() -> None:
        for s in range(0, len(extra), 6):
            r.add_examples([t for t, _ in extra[s : s + 6]], [lab for _, lab in extra[s : s + 6]])

    _, errors = run_alongside(reader, writer)
    assert not errors, errors[:2]
    assert len(r) == 156 and r.index.describe()["n"] == 156
    top = r.retrieve(extra[7][0], k=1)[0]
    assert (top.text, top.label) == extra[7]


def test_milvus_refuses_missing_collection_other_dimension_and_count(milvus_retriever, tmp_path, st_model):
    import json

    path = milvus_retriever.save(tmp_path / "r")

    def edit_index(**changes) -> None:
        cfg_file = path / "index" / "config.json"
        cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), **changes}))
        rewrite_manifest(path, rehash=True)

    edit_index(collection="nowhere")
    with pytest.raises(ValueError, match="collection 'nowhere' is missing"):
        ICLRetriever.load(path, model=st_model)
    other = MilvusIndex(milvus_retriever.index.uri, "small").build(np.eye(8, dtype=np.float32))
    assert len(other) == 8
    edit_index(collection="small")
    with pytest.raises(ValueError, match="holds 8-dimensional vectors"):
        ICLRetriever.load(path, model=st_model)
    edit_index(collection="intents", count=7)
    with pytest.raises(ValueError, match=r"holds 120 rows; the retriever saved at .* has 7 examples"):
        ICLRetriever.load(path, model=st_model)
    with pytest.raises(ValueError, match="already exists"):  # building never replaces a collection unasked
        MilvusIndex(milvus_retriever.index.uri, "intents").build(np.eye(4, dtype=np.float32))
    with pytest.raises(ValueError, match=r"ending in \.db"):
        MilvusIndex(str(tmp_path / "pool.sqlite"))


@pytest.mark.slow  # starts Ray (about 20 s)
def test_ray_build_equals_single_process_build(intent_pool, st_model):
    texts, labels = intent_pool
    single = ICLRetriever.from_texts(texts, labels, show_progress_bar=False)
    ray_built = ICLRetriever.from_texts(texts, labels, show_progress_bar=False, executor=RayExecutor(workers=2))
    assert np.abs(single.index.vectors_ - ray_built.index.vectors_).max() <= 1e-5
    np.testing.assert_allclose(ray_built.vectors(QUERIES), single.vectors(QUERIES), atol=1e-5, rtol=0)
    assert ray_built.labels == labels and ray_built.texts == texts


@pytest.mark.slow  # starts Ray (about 20 s)
def test_ray_worker_killed_mid_build_is_retried_and_every_example_lands_once(intent_pool, tmp_path):
    texts, labels = intent_pool
    marker = tmp_path / "died"
    r = ICLRetriever.from_texts(texts, labels, show_progress_bar=False, features=("embedding", "kl"),
                                index=MilvusIndex(str(tmp_path / "k.db"), "killed"),
                                executor=RayExecutor(workers=1, pca_sample=40, batches_per_task=1, _fail_once=(str(marker), 3)))
    assert marker.exists()  # an actor really died on its 3rd batch
    ids = r.index.client.query("killed", filter="id >= 0", output_fields=["id"])
    assert sorted(x["id"] for x in ids) == list(range(120))  # every example exactly once
    for q, lab in [("my card never arrived", "card_arrival"), ("I forgot my PIN", "change_pin")]:
        assert r.retrieve(q, k=1)[0].label == lab


@pytest.mark.slow
def test_milvus_top20_matches_hnswlib_on_banking77(banking_train, st_model, tmp_path):
    """Same features searched by milvus-lite's HNSW and by hnswlib's: the top-20 id lists agree for >= 99 % of 500 queries."""
    from icl_fungi import load_pool

    from .conftest import BANKING77

    texts, labels = banking_train
    hnsw = ICLRetriever.from_texts(texts, labels, model=st_model, show_progress_bar=False)
    assert hnsw.index.uses_hnsw
    milvus = MilvusIndex(str(tmp_path / "b77.db"), "banking77").build(hnsw.index.vectors_, labels=labels)
    q_texts, _ = load_pool(BANKING77 / "test.csv", label_column="category")
    rows = np.random.default_rng(0).choice(len(q_texts), 500, replace=False)
    qv = hnsw.vectors([q_texts[i] for i in rows])
    a, _ = hnsw.index.query(qv, 20)
    b, _ = milvus.query(qv, 20)
    same = np.mean([set(x) == set(y) for x, y in zip(a.tolist(), b.tolist(), strict=True)])
    assert same >= 0.99, same


@pytest.mark.slow
def test_ray_features_equal_single_process_on_2000_banking77_texts(banking_train, st_model):
    texts, labels = banking_train
    rows = sorted(np.random.default_rng(1).choice(len(texts), 2000, replace=False).tolist())
    t, lab = [texts[i] for i in rows], [labels[i] for i in rows]
    single = ICLRetriever.from_texts(t, lab, show_progress_bar=False)
    ray_built = ICLRetriever.from_texts(t, lab, show_progress_bar=False, executor=RayExecutor(workers=2, pca_sample=2000))
    assert np.abs(single.index.vectors_ - ray_built.index.vectors_).max() <= 1e-5
    q = texts[:50]
    assert np.abs(single.vectors(q) - ray_built.vectors(q)).max() <= 1e-5


@pytest.mark.slow  # starts Ray (about 20 s)
def test_cli_build_with_milvus_and_ray(tmp_path, capsys):
    import json

    from icl_fungi.cli import main

    from .conftest import DATA

    out = tmp_path / "r"
    assert main(["build", "-q", str(DATA / "intents-train.csv"), "--label-column", "intent", "--features", "embedding,kl",
                 "--index", "milvus", "--milvus-uri", str(tmp_path / "cli.db"), "--collection", "cli",
                 "--executor", "ray", "--workers", "1", "--out", str(out)]) == 0
    assert json.loads((out / "index" / "config.json").read_text())["collection"] == "cli"
    assert main(["query", "-q", str(out), "I lost my wallet and card", "-k", "3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.split("\n", 1)[1])["examples"]
    assert res[0]["label"] == "lost_card"
    assert main(["build", "-q", str(DATA / "intents-train.csv"), "--index", "milvus", "--out", str(tmp_path / "x")]) == 2
    assert "--milvus-uri" in capsys.readouterr().err


def test_extras_are_imported_only_when_used():
    import subprocess
    import sys

    code = ("import sys, icl_fungi, icl_fungi.cli; from icl_fungi import ICLRetriever; "
            "print(any(m.split('.')[0] in ('ray', 'pymilvus', 'milvus_lite') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
