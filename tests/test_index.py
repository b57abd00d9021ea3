from __future__ import annotations

import numpy as np
import pytest

from icl_fungi import ICLRetriever, VectorIndex

from .helpers import run_alongside


def _recall(index: VectorIndex, queries: np.ndarray, k: int) -> float:
    got, _ = index.query(queries, k)
    exact, _ = index.exact_query(queries, k)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(got, exact, strict=True)]))


def test_small_pool_is_exact_and_k_capped():
    vecs = np.random.default_rng(0).normal(size=(10, 8)).astype(np.float32)
    index = VectorIndex().build(vecs)
    assert not index.uses_hnsw
    ids, scores = index.query(vecs[:2], k=50)
    assert ids.shape == (2, 10)
    assert ids[0, 0] == 0 and ids[1, 0] == 1
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    np.testing.assert_allclose(scores[0, 0], 1.0, rtol=1e-5)


def test_hnsw_recall_random_vectors_and_save_load(tmp_path):
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(3000, 32)).astype(np.float32)
    queries = rng.normal(size=(100, 32)).astype(np.float32)
    index = VectorIndex(exact_threshold=100).build(vecs)
    assert index.uses_hnsw
    assert _recall(index, queries, 20) >= 0.99
    index.save(tmp_path / "idx")
    assert (tmp_path / "idx" / "hnsw.bin").is_file()
    again = VectorIndex.load(tmp_path / "idx", dim=32)
    assert again.uses_hnsw and again.config() == index.config()
    for k in (1, 20, 300):  # ef is raised to >= k after loading too
        a, sa = index.query(queries, k)
        b, sb = again.query(queries, k)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(sa, sb)
    assert again.query(queries[:1], 300)[0].shape == (1, 300)


def test_add_switches_to_hnsw_and_keeps_ids():
    rng = np.random.default_rng(2)
    index = VectorIndex(exact_threshold=50).build(rng.normal(size=(40, 16)))
    ids = index.add(rng.normal(size=(30, 16)))
    assert list(ids) == list(range(40, 70)) and index.uses_hnsw and len(index) == 70
    ids = index.add(rng.normal(size=(5, 16)))
    assert list(ids) == list(range(70, 75))
    got, _ = index.query(index.vectors_[72:73], 1)
    assert got[0, 0] == 72


def test_bad_vectors():
    with pytest.raises(ValueError, match="non-empty"):
        VectorIndex().build(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="NaN"):
        VectorIndex().build(np.full((3, 4), np.nan))
    index = VectorIndex().build(np.eye(4))
    with pytest.raises(ValueError, match=r"queries of shape \(n, 4\)"):
        index.query(np.ones((1, 3)), 2)
    with pytest.raises(ValueError, match=r"expected \(n, 4\) array, got shape \(1, 3\)"):
        index.add(np.ones((1, 3)))


def test_concurrent_queries_while_adding():
    rng = np.random.default_rng(3)
    index = VectorIndex(exact_threshold=200).build(rng.normal(size=(300, 16)))
    queries = rng.normal(size=(20, 16)).astype(np.float32)
    batches = [rng.normal(size=(20, 16)) for _ in range(10)]

    def reader() -> None:
        ids, _ = index.query(queries, 10)
        assert ids.max() < len(index.vectors_)

    _, errors = run_alongside(reader, lambda: [index.add(b) for b in batches])
    assert not errors and len(index) == 500


@pytest.mark.slow
def test_recall_at_20_on_full_banking77_pool(banking_train, st_model):
    """HNSW recall@20 against exact search, default FUNGI features, whole banking-77 train pool."""
    texts, labels = banking_train
    r = ICLRetriever.from_texts(texts, labels, model=st_model, show_progress_bar=False)
    assert r.index.uses_hnsw and len(r) == len(texts) == 10003
    queries = r.index.vectors_[np.random.default_rng(0).choice(len(texts), 500, replace=False)]
    assert _recall(r.index, queries, 20) >= 0.99
