from __future__ import annotations

import numpy as np
import pytest
import torch

from icl_fungi.pca import PCA
from icl_fungi.projection import GradientProjection


def _gram_error(kind: str, k: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(1, 24, 17))
    # correlated matrices, like per-sample gradients of one layer
    G = (base + 0.8 * rng.normal(size=(12, 24, 17))).astype(np.float32)
    proj = GradientProjection(k, kind=kind, random_state=seed).fit(n_features=(24, 17))
    P = proj.transform_matrices(G)
    flat = G.reshape(12, -1)
    true = flat @ flat.T
    est = P @ P.T
    scale = np.sqrt(np.outer(np.diag(true), np.diag(true)))
    return float(np.abs(est - true).max() / scale.max())


@pytest.mark.parametrize("kind", ["tensor_sketch", "sketch", "dense"])
def test_projection_preserves_inner_products(kind):
    # JL: error shrinks like 1/sqrt(k); 2048 dims keep every pairwise product within 15 %
    assert _gram_error(kind, 2048) < 0.15
    errs = [_gram_error(kind, 64, seed) for seed in range(5)]
    assert np.mean(errs) > _gram_error(kind, 2048)  # fewer dims, larger error: the test can fail


@pytest.mark.parametrize("kind", ["tensor_sketch", "sketch", "dense"])
def test_hook_form_matches_explicit_gradients(kind):
    torch.manual_seed(0)
    g = torch.randn(3, 7, 6)
    x = torch.randn(3, 7, 5)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    proj = GradientProjection(32, kind=kind, random_state=3).fit(n_features=(6, 6))
    fast = proj.transform(g, x, mask).numpy()
    xa = torch.cat([x, torch.ones(3, 7, 1)], dim=-1)
    G = torch.einsum("nto,nti->noi", g * mask[..., None], xa)
    ref = proj.transform_matrices(G)
    np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-5)


def test_projection_seeded_and_dense_blocks_bounded():
    G = np.random.default_rng(1).normal(size=(4, 10, 9)).astype(np.float32)
    a = GradientProjection(50, kind="dense", random_state=7).fit(n_features=(10, 9))
    b = GradientProjection(50, kind="dense", random_state=7).fit(n_features=(10, 9))
    np.testing.assert_array_equal(a.transform_matrices(G), b.transform_matrices(G))
    # a memory cap far below the matrix size: generated in blocks, those past the cache regenerated on every call
    small = GradientProjection(50, kind="dense", random_state=7, max_bytes=50 * 4 * 8).fit(n_features=(10, 9))
    assert small.n_blocks_ > 1
    held = sum(blk.numel() * 4 for blk in small._cache.values())
    assert held <= 50 * 4 * 8
    blocked = small.transform_matrices(G)
    np.testing.assert_array_equal(small.transform_matrices(G), blocked)  # a regenerated block is the same block
    again = GradientProjection(50, kind="dense", random_state=7, max_bytes=50 * 4 * 8).fit(n_features=(10, 9))
    np.testing.assert_array_equal(again.transform_matrices(G), blocked)
    c = GradientProjection(50, kind="dense", random_state=8).fit(n_features=(10, 9))
    assert not np.allclose(a.transform_matrices(G), c.transform_matrices(G))


@pytest.mark.parametrize("kind", ["tensor_sketch", "sketch", "dense"])
def test_projection_save_load(tmp_path, kind):
    p = GradientProjection(16, kind=kind, random_state=2).fit(n_features=(5, 4))
    p.save(tmp_path / "p")
    q = GradientProjection.load(tmp_path / "p", n_features=(5, 4))
    G = np.random.default_rng(0).normal(size=(2, 5, 4)).astype(np.float32)
    np.testing.assert_array_equal(p.transform_matrices(G), q.transform_matrices(G))
    with pytest.raises(ValueError, match=r"shape \(5, 4\)"):
        GradientProjection.load(tmp_path / "p", n_features=(6, 4))


def test_pca_save_load(tmp_path):
    X = np.random.default_rng(3).normal(size=(30, 5))
    pca = PCA(3, whiten=True).fit(X)
    pca.save(tmp_path / "pca")
    back = PCA.load(tmp_path / "pca", n_features=5)
    np.testing.assert_array_equal(back.transform(X), pca.transform(X))
    with pytest.raises(ValueError, match="expects 5 input features"):
        PCA.load(tmp_path / "pca", n_features=6)


def test_projection_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        GradientProjection(8, kind="bogus").fit(n_features=(2, 2))
    with pytest.raises(ValueError, match="n_components"):
        GradientProjection(0).fit(n_features=(2, 2))
    with pytest.raises(RuntimeError, match="not fitted"):
        GradientProjection(8).transform_matrices(np.ones((1, 2, 2)))
    p = GradientProjection(8).fit(n_features=(2, 2))
    with pytest.raises(ValueError, match="shape"):
        p.transform_matrices(np.ones((1, 3, 2)))


def test_pca_matches_svd_and_clamps():
    X = np.random.default_rng(0).normal(size=(40, 6)) @ np.diag([5, 4, 3, 2, 1, 0.5])
    pca = PCA(n_components=3)
    assert pca.fit(X) is pca
    Z = pca.transform(X)
    assert Z.shape == (40, 3) and pca.n_components_ == 3
    # variance is captured in decreasing order and matches the eigenvalues of the covariance
    eig = np.sort(np.linalg.eigvalsh(np.cov(X.T)))[::-1][:3]
    np.testing.assert_allclose(pca.explained_variance_, eig, rtol=1e-6)
    np.testing.assert_allclose(Z.var(axis=0, ddof=1), eig, rtol=1e-4)
    assert PCA(n_components=50).fit(X[:5]).n_components_ == 4  # clamped to n - 1
    one = PCA(n_components=3).fit(X[:1])
    np.testing.assert_allclose(one.transform(X[:2]), X[:2], rtol=1e-6)  # identity for one sample
    with pytest.raises(RuntimeError, match="not fitted"):
        PCA().transform(X)
    with pytest.raises(ValueError, match=r"expected shape \(n, 6\)"):
        pca.transform(X[:, :4])
    with pytest.raises(ValueError, match="non-empty 2-D"):
        PCA().fit(np.zeros((0, 3)))


def test_pca_whiten():
    X = np.random.default_rng(1).normal(size=(200, 4)) * [10, 1, 1, 1]
    Z = PCA(n_components=4, whiten=True).fit_transform(X)
    np.testing.assert_allclose(Z.var(axis=0, ddof=1), 1.0, rtol=1e-3)


def test_pca_tall_path_matches_svd_and_chunks():
    """Tall inputs use the scatter-matrix eigendecomposition in row chunks: same result as the SVD."""
    from icl_fungi import pca as pca_module

    rng = np.random.default_rng(3)
    X = (rng.normal(size=(20_000, 24)) * np.linspace(3, 0.1, 24)).astype(np.float32)
    pca = PCA(8).fit(X)
    Xc = X.astype(np.float64) - X.astype(np.float64).mean(0)
    _, S, Vt = np.linalg.svd(Xc, full_matrices=False)
    Vt *= np.sign(Vt[np.arange(24), np.argmax(np.abs(Vt), axis=1)])[:, None]
    np.testing.assert_allclose(pca.components_, Vt[:8], atol=1e-8)
    np.testing.assert_allclose(pca.explained_variance_, S[:8] ** 2 / (len(X) - 1), rtol=1e-8)
    assert len(X) > 2 * pca_module._PCA_ROWS  # several chunks were used
    np.testing.assert_allclose(pca.transform(X), (Xc @ Vt[:8].T).astype(np.float32), atol=1e-4)
    with pytest.raises(TypeError, match="numeric"):
        PCA(2).fit(np.array([["a", "b"], ["c", "d"]]))
