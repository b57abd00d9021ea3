"""Vector indexes: the :class:`Index` protocol the retriever searches through, :class:`VectorIndex`, the
in-process backend (hnswlib HNSW, exact search for small pools), and the registry of backends by name that
:func:`load_index` reads saved indexes with. ``MilvusIndex`` (:mod:`icl_fungi.milvus`) is the backend for
pools past one machine; a backend of your own is one class and one :func:`register_index` call.

Ids are pool positions ``0..n-1``; scores are cosine similarities; every vector carries its
example's label (as a string), so a query can be restricted to some labels inside the engine.

Example:
    >>> import numpy as np
    >>> idx = VectorIndex().build(np.eye(3, dtype=np.float32), labels=["a", "b", "b"])
    >>> ids, scores = idx.query(np.eye(3, dtype=np.float32)[:1], k=2)
    >>> ids[0].tolist(), idx.query(np.eye(3, dtype=np.float32)[:1], k=2, labels={"b"})[0][0].tolist()
    ([0, 1], [1, 2])
    >>> registered_indexes()[:2]
    ('hnswlib', 'milvus')
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import numpy as np

from .hnsw_file import check_hnsw_file
from .parts import SavedPart, read_config
from .registry import Registry
from .vectors import Chunk, check_vectors, normalise, pad_results

__all__ = ["Index", "VectorIndex", "index_class", "load_index", "register_index", "registered_indexes"]

_HNSW_FILE = "hnsw.bin"
_SETTINGS = ("M", "ef_construction", "ef_search", "exact_threshold", "random_state")
T = TypeVar("T", bound=type)


@runtime_checkable
class Index(Protocol):
    """What the retriever needs of a vector index. A new backend is one class with these members, registered
    with :func:`register_index` under its ``backend`` name; its :meth:`save` writes a part folder whose
    ``config.json`` holds that name (``{"backend": ...}``), which is how :func:`load_index` finds the class.
    An optional ``check()`` method is called before a pool is encoded (e.g. to fail fast on a server that
    cannot be reached)."""

    backend: ClassVar[str]

    def __len__(self) -> int: ...

    @property
    def dim(self) -> int: ...

    def build(self, vectors: np.ndarray, labels: Sequence[str] | None = None) -> Index:
        """Index ``vectors`` (n, dim) as ids ``0..n-1``, replacing any content."""

    def build_from(self, chunks: Iterable[Chunk], n: int, dim: int) -> Index:
        """Index ``n`` vectors arriving as ``(ids, vectors, labels)`` chunks in any order; every id in ``0..n-1``
        must come, a repeated id counts once."""

    def add(self, vectors: np.ndarray, labels: Sequence[str] | None = None) -> np.ndarray:
        """Append vectors; returns their ids."""

    def query(self, queries: np.ndarray, k: int, *, labels: Collection[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, scores)``, (n_queries, k') best first, k' = min(k, len); rows with fewer hits are padded with id -1."""

    def get_vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The stored unit vectors of ``ids``."""

    def save(self, path: str | Path) -> None:
        """Write what restores the index into the folder ``path`` (``config.json`` naming the backend)."""

    @classmethod
    def load(cls, path: str | Path, *, dim: int | None = None) -> Index:
        """The index saved at ``path``, its vectors of size ``dim`` when given."""

    def describe(self) -> dict[str, Any]:
        """Backend, settings and size (JSON-ready)."""


def _label_array(labels: Sequence[Any] | None, n: int) -> np.ndarray:
    if labels is None:
        return np.full(n, "", dtype=str)
    if len(labels) != n:
        raise ValueError(f"got {n} vectors but {len(labels)} labels")
    return np.asarray([str(lab) for lab in labels], dtype=str)


class VectorIndex(SavedPart):
    """In-process cosine index; ids are row positions.

    Pools with at most ``exact_threshold`` vectors are searched exactly; larger ones use an HNSW graph
    (``M``, ``ef_construction``). At query time ``ef`` is ``max(ef_search, 2 * k)``, so it is always at
    least ``k``. ``k`` is capped at the pool size. Safe to query from many threads while another adds.
    """

    backend: ClassVar[str] = "hnswlib"

    def __init__(self, *, M: int = 32, ef_construction: int = 200, ef_search: int = 128, exact_threshold: int = 2000,
                 random_state: int = 0) -> None:
        self.M = M
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.exact_threshold = exact_threshold
        self.random_state = random_state
        self._lock = threading.RLock()
        self.vectors_: np.ndarray | None = None
        self.labels_: np.ndarray | None = None  # str label of each vector (for label filters)
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

    def build(self, vectors: np.ndarray, labels: Sequence[str] | None = None) -> VectorIndex:
        """Index ``vectors`` (n, dim); replaces any previous content."""
        vectors = check_vectors(vectors)
        label_arr = _label_array(labels, len(vectors))
        with self._lock:
            self.vectors_, self.labels_ = normalise(vectors), label_arr
            self._hnsw = None
            if len(vectors) > self.exact_threshold:
                self._hnsw = self._new_hnsw(vectors.shape[1], len(vectors))
                self._hnsw.add_items(self.vectors_, np.arange(len(vectors)), num_threads=1)
        return self

    def build_from(self, chunks: Iterable[Chunk], n: int, dim: int) -> VectorIndex:
        """Collect ``(ids, vectors, labels)`` chunks into place, then :meth:`build`."""
        vectors = np.zeros((n, dim), np.float32)
        labels = np.full(n, "", dtype=object)
        seen = np.zeros(n, dtype=bool)
        for ids, vecs, labs in chunks:
            ids = np.asarray(ids, dtype=np.int64)
            if ids.size and (ids.min() < 0 or ids.max() >= n):
                raise ValueError(f"chunk ids must lie in 0..{n - 1}")
            vectors[ids], labels[ids], seen[ids] = check_vectors(vecs, dim), list(labs), True
        if not seen.all():
            raise ValueError(f"{int((~seen).sum())} of {n} ids never arrived")
        return self.build(vectors, labels.tolist())

    def add(self, vectors: np.ndarray, labels: Sequence[str] | None = None) -> np.ndarray:
        """Append vectors; returns their ids. Queries running meanwhile see the old or new pool, never half of it."""
        if self.vectors_ is None:
            self.build(vectors, labels)
            return np.arange(len(self))
        vectors = check_vectors(vectors, self.dim)
        label_arr = _label_array(labels, len(vectors))
        with self._lock:
            start = len(self)
            ids = np.arange(start, start + len(vectors))
            normed = normalise(vectors)
            all_vectors = np.concatenate([self.vectors_, normed])
            if self._hnsw is None and len(all_vectors) > self.exact_threshold:
                hnsw = self._new_hnsw(self.dim, len(all_vectors))
                hnsw.add_items(all_vectors, np.arange(len(all_vectors)), num_threads=1)
                self._hnsw = hnsw
            elif self._hnsw is not None:
                self._hnsw.resize_index(len(all_vectors))
                self._hnsw.add_items(normed, ids, num_threads=1)
            self.labels_ = np.concatenate([self.labels_, label_arr])
            self.vectors_ = all_vectors
        return ids

    def query(self, queries: np.ndarray, k: int, *, labels: Collection[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, cosine similarities)``, each (n_queries, min(k, len)), best first; with ``labels``, only
        vectors of those labels (rows padded with id -1 when fewer match)."""
        if self.vectors_ is None:
            raise RuntimeError("the index is empty")
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"expected queries of shape (n, {self.dim}), got {queries.shape}")
        with self._lock:
            k = min(int(k), len(self))
            allowed = None if labels is None else np.isin(self.labels_, [str(x) for x in labels])
            if self._hnsw is None:
                return self.exact_query(queries, k, allowed=allowed)
            self._hnsw.set_ef(max(self.ef_search, 2 * k))
            if allowed is None:
                ids, distances = self._hnsw.knn_query(normalise(queries), k=k, num_threads=1)
                return ids.astype(np.int64), (1.0 - distances).astype(np.float32)
            kk = min(k, int(allowed.sum()))
            if kk == 0:
                return pad_results([(np.empty(0, np.int64), np.empty(0, np.float32))] * len(queries), k)
            ids, distances = self._hnsw.knn_query(normalise(queries), k=kk, num_threads=1, filter=lambda i: bool(allowed[i]))
        return pad_results([(i.astype(np.int64), (1.0 - d).astype(np.float32)) for i, d in zip(ids, distances, strict=True)], k)

    def exact_query(self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force search (the reference for recall measurements); ``allowed`` masks vectors out."""
        vectors = self.vectors_
        k = min(int(k), len(vectors))
        sims = normalise(queries) @ vectors.T
        if allowed is not None:
            sims[:, ~allowed] = -np.inf
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        part_sims = np.take_along_axis(sims, part, axis=1)
        order = np.lexsort((part, -part_sims), axis=1)  # by score, then by id for ties
        ids = np.take_along_axis(part, order, axis=1).astype(np.int64)
        scores = np.take_along_axis(sims, ids, axis=1).astype(np.float32)
        ids[~np.isfinite(scores)] = -1
        return ids, scores

    def get_vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The stored unit vectors of ``ids``."""
        return self.vectors_[np.asarray(ids, dtype=np.int64)]

    # ------------------------------------------------------------- persistence
    def config(self) -> dict[str, Any]:
        """Backend, settings and whether an HNSW graph is in use (JSON-ready; what ``config.json`` holds)."""
        return {"backend": self.backend, "M": self.M, "ef_construction": self.ef_construction, "ef_search": self.ef_search,
                "exact_threshold": self.exact_threshold, "random_state": self.random_state, "hnsw": self._hnsw is not None}

    def describe(self) -> dict[str, Any]:
        """Backend, settings and size."""
        return {**self.config(), "n": len(self), "dim": self.dim}

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The normalised vectors and their labels."""
        if self.vectors_ is None:
            raise RuntimeError("the index is empty")
        return {"vectors": self.vectors_, "labels": self.labels_.astype(str)}

    def save_extra(self, path: Path) -> None:
        """The HNSW graph (when used) as ``hnsw.bin``."""
        if self._hnsw is not None:
            self._hnsw.save_index(str(path / _HNSW_FILE))

    def save(self, path: str | Path) -> None:
        """Write settings, the normalised vectors, their labels and (when used) the HNSW graph into the folder ``path``."""
        with self._lock:  # vectors, labels and graph from one moment
            super().save(path)

    @classmethod
    def from_state(cls, config: dict[str, Any], arrays: dict[str, np.ndarray], *, dim: int | None = None) -> VectorIndex:
        """An exact-search index from its config and arrays (vectors of size ``dim``, when given); :meth:`load`
        then attaches the saved HNSW graph."""
        settings = {k: config.get(k) for k in _SETTINGS}
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in settings.values()) \
                or not isinstance(config.get("hnsw"), bool):
            raise ValueError(f"index config is invalid ({config})")
        vectors, labels = arrays.get("vectors"), arrays.get("labels")
        if vectors is None or vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.dtype != np.float32 \
                or (dim is not None and vectors.shape[1] != dim) or not np.isfinite(vectors).all():
            raise ValueError(f"vectors.npy is missing or not a finite float32 (n, {dim or 'dim'}) array")
        if labels is None or labels.shape != (len(vectors),) or labels.dtype.kind != "U":
            raise ValueError("labels.npy is missing or does not hold one string per vector")
        index = cls(**settings).restore(vectors, None)
        index.labels_ = labels
        return index

    def load_extra(self, path: Path, config: dict[str, Any]) -> None:
        """Attach ``hnsw.bin`` when the config says the graph was in use (and refuse it otherwise)."""
        hnsw_file = path / _HNSW_FILE
        if config["hnsw"] != hnsw_file.is_file():
            raise ValueError(f"{path}: the index config and the presence of {_HNSW_FILE} disagree")
        if config["hnsw"]:
            with self._lock:
                self._hnsw = self._read_graph(hnsw_file)

    def restore(self, vectors: np.ndarray, hnsw_path: str | Path | None) -> VectorIndex:
        """Restore from saved (already normalised) vectors and an optional HNSW file (labels reset to "")."""
        vectors = np.asarray(vectors, dtype=np.float32)
        with self._lock:
            self.vectors_ = vectors
            self.labels_ = np.full(len(vectors), "", dtype=str)
            self._hnsw = None if hnsw_path is None else self._read_graph(hnsw_path)
        return self

    def _read_graph(self, hnsw_path: str | Path) -> Any:
        """The hnswlib graph in ``hnsw_path``, which must hold exactly the stored vectors."""
        import hnswlib

        n = len(self.vectors_)
        check_hnsw_file(hnsw_path, self.vectors_, M=self.M)  # hnswlib trusts its file: a bad id would crash a query
        index = hnswlib.Index(space="cosine", dim=self.vectors_.shape[1])
        try:
            index.load_index(str(hnsw_path), max_elements=n)
        except RuntimeError as err:
            raise ValueError(f"{hnsw_path}: hnswlib cannot read it ({err})") from None
        if index.get_current_count() != n:
            raise ValueError(f"HNSW file holds {index.get_current_count()} vectors but the pool has {n}")
        index.set_ef(self.ef_search)
        return index


# ------------------------------------------------------------------ backends by name
# a built-in backend whose module needs an extra is named by "module:Class" and imported on first use
_BACKENDS = Registry("index backend", "backend", hint="register your own with icl_fungi.register_index before building or loading")
_BACKENDS.register(VectorIndex)
_BACKENDS.register_lazy("milvus", "icl_fungi.milvus:MilvusIndex")  # pymilvus is imported only when it is named


def register_index(cls: T) -> T:
    """Register an index backend class under its ``backend`` name, so saved indexes of it load by that name
    (usable as a decorator). The class needs a ``load(path, dim=...)`` classmethod; a name taken by another
    class is refused.

    Example:
        >>> class Exact(VectorIndex):
        ...     backend = "exact-doc"
        >>> register_index(Exact) is Exact, "exact-doc" in registered_indexes()
        (True, True)
    """
    if isinstance(cls, type) and (not callable(getattr(cls, "load", None)) or not callable(getattr(cls, "save", None))):
        raise TypeError(f"{cls.__name__} needs save(path) and a load(path, dim=...) classmethod to be an index backend")
    return _BACKENDS.register(cls)


def registered_indexes() -> tuple[str, ...]:
    """Names of the registered index backends."""
    return _BACKENDS.names()


def index_class(name: object) -> type[Index]:
    """The index class registered under ``name`` (a built-in one imported on first use)."""
    return _BACKENDS.get(name)


def load_index(path: str | Path, *, dim: int | None = None) -> Index:
    """Load a saved index with the registered backend its ``config.json`` names (``hnswlib`` when it names none)."""
    backend = read_config(path).get("backend", VectorIndex.backend)
    try:
        cls = index_class(backend)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return cls.load(path, dim=dim)
