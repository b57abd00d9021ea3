"""Cosine nearest-neighbour index: hnswlib HNSW, exact search for small pools.

Example:
    >>> import numpy as np
    >>> idx = VectorIndex().build(np.eye(3, dtype=np.float32))
    >>> ids, scores = idx.query(np.eye(3, dtype=np.float32)[:1], k=2)
    >>> int(ids[0, 0])
    0
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["VectorIndex"]


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class VectorIndex:
    """Cosine-similarity index over row vectors; ids are row positions.

    Pools with at most ``exact_threshold`` vectors are searched exactly; larger
    ones use an HNSW graph (``M``, ``ef_construction``). At query time ``ef`` is
    ``max(ef_search, 2 * k)``, so it is always at least ``k``. ``k`` is capped at
    the pool size. Safe to query from many threads while another adds vectors.
    """

    def __init__(
        self,
        *,
        M: int = 32,
        ef_construction: int = 200,
        ef_search: int = 128,
        exact_threshold: int = 2000,
        random_state: int = 0,
    ) -> None:
        self.M = M
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.exact_threshold = exact_threshold
        self.random_state = random_state
        self._lock = threading.RLock()
        self.vectors_: np.ndarray | None = None
        self._hnsw: Any = None  # an hnswlib.Index when the pool is large

    def __len__(self) -> int:
        return 0 if self.vectors_ is None else self.vectors_.shape[0]

    @property
    def dim(self) -> int:
        """Vector dimension (0 before building)."""
        return 0 if self.vectors_ is None else self.vectors_.shape[1]

    @property
    def uses_hnsw(self) -> bool:
        """True when queries go through the HNSW graph rather than exact search."""
        return self._hnsw is not None

    def _new_hnsw(self, dim: int, capacity: int) -> Any:
        import hnswlib

        index = hnswlib.Index(space="cosine", dim=dim)
        index.init_index(max_elements=capacity, ef_construction=self.ef_construction, M=self.M, random_seed=self.random_state)
        return index

    def build(self, vectors: np.ndarray) -> VectorIndex:
        """Index ``vectors`` (n, dim); replaces any previous content."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] == 0:
            raise ValueError(f"expected a non-empty (n, dim) array, got shape {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise ValueError("vectors contain NaN or infinity")
        with self._lock:
            self.vectors_ = _normalise(vectors)
            self._hnsw = None
            if len(vectors) > self.exact_threshold:
                self._hnsw = self._new_hnsw(vectors.shape[1], len(vectors))
                self._hnsw.add_items(self.vectors_, np.arange(len(vectors)), num_threads=1)
        return self

    def add(self, vectors: np.ndarray) -> np.ndarray:
        """Append vectors; returns their ids. Queries running meanwhile see the old or new pool, never half of it."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.vectors_ is None:
            self.build(vectors)
            return np.arange(len(vectors))
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected shape (n, {self.dim}), got {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise ValueError("vectors contain NaN or infinity")
        with self._lock:
            start = len(self)
            ids = np.arange(start, start + len(vectors))
            normed = _normalise(vectors)
            all_vectors = np.concatenate([self.vectors_, normed])
            if self._hnsw is None and len(all_vectors) > self.exact_threshold:
                hnsw = self._new_hnsw(self.dim, len(all_vectors))
                hnsw.add_items(all_vectors, np.arange(len(all_vectors)), num_threads=1)
                self._hnsw = hnsw
            elif self._hnsw is not None:
                self._hnsw.resize_index(len(all_vectors))
                self._hnsw.add_items(normed, ids, num_threads=1)
            self.vectors_ = all_vectors
        return ids

    def query(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(ids, cosine similarities)``, each (n_queries, min(k, len)), best first."""
        if self.vectors_ is None:
            raise RuntimeError("the index is empty")
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"expected queries of shape (n, {self.dim}), got {queries.shape}")
        with self._lock:
            k = min(int(k), len(self))
            if self._hnsw is None:
                return self.exact_query(queries, k)
            self._hnsw.set_ef(max(self.ef_search, 2 * k))
            labels, distances = self._hnsw.knn_query(_normalise(queries), k=k, num_threads=1)
        return labels.astype(np.int64), (1.0 - distances).astype(np.float32)

    def exact_query(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force search (the reference for recall measurements)."""
        vectors = self.vectors_
        k = min(int(k), len(vectors))
        sims = _normalise(queries) @ vectors.T
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        part_sims = np.take_along_axis(sims, part, axis=1)
        order = np.lexsort((part, -part_sims), axis=1)  # by score, then by id for ties
        ids = np.take_along_axis(part, order, axis=1)
        return ids.astype(np.int64), np.take_along_axis(sims, ids, axis=1).astype(np.float32)

    # ------------------------------------------------------------- persistence
    def save_hnsw(self, path: str | Path) -> bool:
        """Write the HNSW graph to ``path``; returns False when the index is exact."""
        with self._lock:
            if self._hnsw is None:
                return False
            self._hnsw.save_index(str(path))
            return True

    def restore(self, vectors: np.ndarray, hnsw_path: str | Path | None) -> VectorIndex:
        """Restore from saved (already normalised) vectors and an optional HNSW file."""
        vectors = np.asarray(vectors, dtype=np.float32)
        with self._lock:
            self.vectors_ = vectors
            self._hnsw = None
            if hnsw_path is not None:
                import hnswlib

                index = hnswlib.Index(space="cosine", dim=vectors.shape[1])
                index.load_index(str(hnsw_path), max_elements=len(vectors))
                if index.get_current_count() != len(vectors):
                    raise ValueError(
                        f"HNSW file holds {index.get_current_count()} vectors but the pool has {len(vectors)}"
                    )
                index.set_ef(self.ef_search)
                self._hnsw = index
        return self
