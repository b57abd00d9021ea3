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

_HNSW_FILE = "hnsw.bin"


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
    def config(self) -> dict[str, Any]:
        """Settings (JSON-ready)."""
        return {"M": self.M, "ef_construction": self.ef_construction, "ef_search": self.ef_search,
                "exact_threshold": self.exact_threshold, "random_state": self.random_state}

    def save(self, path: str | Path) -> None:
        """Write settings, the normalised vectors and (when used) the HNSW graph into the folder ``path``."""
        from .persistence import write_part

        with self._lock:
            if self.vectors_ is None:
                raise RuntimeError("the index is empty")
            write_part(path, {**self.config(), "hnsw": self._hnsw is not None}, {"vectors": self.vectors_})
            if self._hnsw is not None:
                self._hnsw.save_index(str(Path(path) / _HNSW_FILE))

    @classmethod
    def load(cls, path: str | Path, *, dim: int | None = None) -> VectorIndex:
        """Load an index saved by :meth:`save` (vectors of size ``dim``, when given)."""
        from .persistence import read_part

        config, arrays = read_part(path)
        settings = {k: config.get(k) for k in ("M", "ef_construction", "ef_search", "exact_threshold", "random_state")}
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in settings.values()) \
                or not isinstance(config.get("hnsw"), bool):
            raise ValueError(f"{path}: index config is invalid ({config})")
        vectors = arrays.get("vectors")
        if vectors is None or vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.dtype != np.float32 \
                or (dim is not None and vectors.shape[1] != dim) or not np.isfinite(vectors).all():
            raise ValueError(f"{path}: vectors.npy is missing or not a finite float32 (n, {dim or 'dim'}) array")
        index = cls(**settings)
        hnsw_file = Path(path) / _HNSW_FILE
        if config["hnsw"] != hnsw_file.is_file():
            raise ValueError(f"{path}: the index config and the presence of {_HNSW_FILE} disagree")
        return index.restore(vectors, hnsw_file if config["hnsw"] else None)

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
