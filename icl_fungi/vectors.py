"""Vector helpers every index backend shares: input checks, unit normalisation, padded result rows.

Example:
    >>> import numpy as np
    >>> normalise(check_vectors([[3.0, 4.0]])).tolist()
    [[0.6000000238418579, 0.800000011920929]]
    >>> ids, scores = pad_results([(np.array([4]), np.array([0.5], np.float32))], k=2)
    >>> ids.tolist(), scores.tolist()
    ([[4, -1]], [[0.5, -inf]])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["Chunk", "check_vectors", "normalise", "pad_results"]

Chunk = tuple[np.ndarray, np.ndarray, Sequence[str]]  # (ids, vectors, labels): a piece of a pool arriving for build_from


def normalise(x: np.ndarray) -> np.ndarray:
    """The rows of ``x`` scaled to unit length, as float32 (all-zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def check_vectors(vectors: np.ndarray, dim: int | None = None) -> np.ndarray:
    """``vectors`` as a finite float32 (n, dim) array, or a ``ValueError`` naming the problem."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] == 0 or (dim is not None and vectors.shape[1] != dim):
        want = f"(n, {dim})" if dim is not None else "a non-empty (n, dim)"
        raise ValueError(f"expected {want} array, got shape {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise ValueError("vectors contain NaN or infinity")
    return vectors


def pad_results(rows: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, scores)`` of shape (len(rows), k) from per-query ``(ids, scores)`` rows of up to ``k`` hits;
    missing hits are id -1 with score -inf."""
    ids = np.full((len(rows), k), -1, dtype=np.int64)
    scores = np.full((len(rows), k), -np.inf, dtype=np.float32)
    for r, (i, s) in enumerate(rows):
        ids[r, : len(i)], scores[r, : len(s)] = i[:k], s[:k]
    return ids, scores
