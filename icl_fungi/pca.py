"""PCA of the combined feature vectors: exact, deterministic signs, bounded extra memory.

Example:
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(50, 8))
    >>> PCA(n_components=3).fit(X).transform(X).shape
    (50, 3)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .parts import SavedPart

__all__ = ["PCA"]

_PCA_ROWS = 8192  # rows converted to float64 at once


class PCA(SavedPart):
    """Principal component analysis, exact (deterministic signs); saves itself as a :class:`~icl_fungi.parts.SavedPart`.

    Tall inputs (more than twice as many samples as features) use the eigendecomposition
    of the scatter matrix, others the SVD; both in float64.

    ``n_components`` is clamped to ``min(n_samples - 1, n_features)``; with fewer
    than two samples the transform only centres nothing and is the identity.

    Example:
        >>> import numpy as np
        >>> X = np.random.default_rng(0).normal(size=(50, 8))
        >>> PCA(n_components=3).fit(X).transform(X).shape
        (50, 3)
    """

    def __init__(self, n_components: int | None = None, *, whiten: bool = False) -> None:
        self.n_components = n_components
        self.whiten = whiten

    def fit(self, X: np.ndarray, y: object = None) -> PCA:
        """Fit on the rows of ``X`` (n_samples, n_features)."""
        X = np.asarray(X)
        if not np.issubdtype(X.dtype, np.number):
            raise TypeError(f"PCA needs a numeric array, got dtype {X.dtype}")
        if X.ndim != 2 or X.shape[0] == 0:
            raise ValueError(f"PCA needs a non-empty 2-D array, got shape {X.shape}")
        if self.n_components is not None and (not isinstance(self.n_components, int) or self.n_components <= 0):
            raise ValueError(f"n_components must be a positive int or None, got {self.n_components!r}")
        n, d = X.shape
        self.n_features_in_ = d
        if n < 2:
            self.mean_ = np.zeros(d)
            self.components_ = np.eye(d)
            self.explained_variance_ = np.ones(d)
            self.n_components_ = d
            return self
        want = d if self.n_components is None else self.n_components
        k = max(1, min(want, n - 1, d))
        self.mean_ = np.zeros(d)
        for lo in range(0, n, _PCA_ROWS):
            self.mean_ += X[lo : lo + _PCA_ROWS].sum(axis=0, dtype=np.float64)
        self.mean_ /= n
        if n > 2 * d:  # tall: eigendecomposition of the d x d scatter matrix, accumulated in row chunks
            scatter = np.zeros((d, d))
            for lo in range(0, n, _PCA_ROWS):
                Xc = X[lo : lo + _PCA_ROWS].astype(np.float64) - self.mean_
                scatter += Xc.T @ Xc
            evals, evecs = np.linalg.eigh(scatter)
            S = np.sqrt(np.clip(evals[::-1], 0.0, None))
            Vt = np.ascontiguousarray(evecs[:, ::-1].T)
        else:
            _, S, Vt = np.linalg.svd(X.astype(np.float64) - self.mean_, full_matrices=False)
        # deterministic sign: the largest-magnitude entry of each component is positive
        signs = np.sign(Vt[np.arange(Vt.shape[0]), np.argmax(np.abs(Vt), axis=1)])
        signs[signs == 0] = 1
        Vt *= signs[:, None]
        self.components_ = Vt[:k]
        self.explained_variance_ = (S[:k] ** 2) / (n - 1)
        self.n_components_ = k
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Project rows of ``X`` on the fitted components (float32)."""
        if not hasattr(self, "components_"):
            raise RuntimeError("PCA is not fitted; call fit(X) first")
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"expected shape (n, {self.n_features_in_}), got {X.shape}")
        Z = np.empty((X.shape[0], self.components_.shape[0]), dtype=np.float32)
        scale = 1.0 / np.sqrt(np.maximum(self.explained_variance_, 1e-12)) if self.whiten else None
        for lo in range(0, X.shape[0], _PCA_ROWS):  # float64 in row chunks: bounded extra memory
            z = (X[lo : lo + _PCA_ROWS].astype(np.float64) - self.mean_) @ self.components_.T
            Z[lo : lo + _PCA_ROWS] = z * scale if scale is not None else z
        return Z

    def fit_transform(self, X: np.ndarray, y: object = None) -> np.ndarray:
        """``fit(X).transform(X)``."""
        return self.fit(X).transform(X)

    # ------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        """Settings (JSON-ready)."""
        return {"n_components": self.n_components, "whiten": self.whiten}

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The fitted mean, components and explained variances."""
        if not hasattr(self, "components_"):
            raise RuntimeError("PCA is not fitted; call fit(X) first")
        return {"mean": self.mean_, "components": self.components_, "explained_variance": self.explained_variance_}

    @classmethod
    def from_state(cls, config: dict[str, Any], arrays: dict[str, np.ndarray], *, n_features: int | None = None) -> PCA:
        """A fitted PCA from its config and arrays, checking them (and its input size, when given)."""
        n_components, whiten = config.get("n_components"), config.get("whiten")
        if not isinstance(whiten, bool) or not (n_components is None or (isinstance(n_components, int) and n_components > 0)):
            raise ValueError(f"PCA config is invalid ({config})")
        mean, comps, var = (arrays.get(k) for k in ("mean", "components", "explained_variance"))
        if mean is None or comps is None or var is None or comps.ndim != 2 or mean.shape != (comps.shape[1],) \
                or var.shape != (comps.shape[0],) or comps.dtype.kind != "f":
            raise ValueError("PCA arrays are missing or of inconsistent shapes")
        if not (np.isfinite(mean).all() and np.isfinite(comps).all() and np.isfinite(var).all()) or (var < 0).any():
            raise ValueError("PCA arrays hold NaN, infinity or negative variances")
        if n_features is not None and comps.shape[1] != n_features:
            raise ValueError(f"PCA expects {comps.shape[1]} input features, the encoder gives {n_features}")
        if n_components is not None and comps.shape[0] > n_components:
            raise ValueError(f"PCA holds {comps.shape[0]} components, more than n_components={n_components}")
        pca = cls(n_components, whiten=whiten)
        pca.mean_ = mean.astype(np.float64)
        pca.components_ = comps.astype(np.float64)
        pca.explained_variance_ = var.astype(np.float64)
        pca.n_components_ = comps.shape[0]
        pca.n_features_in_ = comps.shape[1]
        return pca
