"""``MilvusIndex``: the retriever's vectors in Milvus, for pools past one machine.

A URI that is a file path (``pool.db``) runs milvus-lite embedded in this process (tests, laptops);
``http://host:19530`` or a Zilliz Cloud URI runs against a Milvus server or cluster with the same
code. One collection holds the pool: ``id`` (the pool position, primary key), ``vector`` and
``label`` (so a label filter runs inside the engine), searched with HNSW and cosine similarity.
A saved retriever stores the URI and the collection name, never the vectors, and reconnects on
load. Needs the ``milvus`` extra (``pip install "icl-fungi[milvus]"``).

Example:
    >>> from icl_fungi import ICLRetriever                                                   # doctest: +SKIP
    >>> r = ICLRetriever.from_texts(texts, labels, index=MilvusIndex("pool.db", "banking77"))  # doctest: +SKIP
    >>> r.save("banking77.icl")      # the collection stays in pool.db                       # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .parts import SavedPart
from .vectors import Chunk, check_vectors, normalise, pad_results

__all__ = ["MilvusIndex"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
_MAX_LABEL = 1024  # VARCHAR length of the label field
_REMOTE = ("http://", "https://", "tcp://", "grpc://", "unix:")


class MilvusIndex(SavedPart):
    """A pool's vectors in a Milvus collection (see the module docstring).

    Args:
        uri: a milvus-lite file (``*.db``), or a server / cluster address.
        collection: the collection's name (letters, digits, ``_``).
        token: credentials for a server (``user:password`` or an API key; default: ``MILVUS_TOKEN``);
            never saved.
        M, ef_construction, ef_search: HNSW settings; queries use ``ef = max(ef_search, 2 k)``.
        overwrite: let :meth:`build` replace an existing collection (otherwise it refuses).
        insert_batch: rows per insert request.
    """

    backend: ClassVar[str] = "milvus"

    def __init__(self, uri: str = "icl_fungi.db", collection: str = "icl_fungi", *, token: str | None = None, M: int = 32,
                 ef_construction: int = 200, ef_search: int = 128, overwrite: bool = False, insert_batch: int = 2000) -> None:
        if not isinstance(uri, str | os.PathLike) or not str(uri):
            raise TypeError(f"uri must be a file path or a server address, got {uri!r}")
        uri = str(uri)
        if not uri.startswith(_REMOTE):
            if not uri.endswith(".db"):
                raise ValueError(f"a milvus-lite URI is a file path ending in .db, got {uri!r} (servers: http://host:19530)")
            uri = str(Path(uri).expanduser().resolve())
        if not isinstance(collection, str) or not _NAME.fullmatch(collection):
            raise ValueError(f"collection must be letters, digits and '_' (not starting with a digit), got {collection!r}")
        for name, value in (("M", M), ("ef_construction", ef_construction), ("ef_search", ef_search), ("insert_batch", insert_batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.uri, self.collection = uri, collection
        self.token = token if token is not None else os.environ.get("MILVUS_TOKEN")
        self.M, self.ef_construction, self.ef_search = M, ef_construction, ef_search
        self.overwrite, self.insert_batch = overwrite, insert_batch
        self._lock = threading.RLock()
        self._client_: Any = None
        self._count = 0
        self._dim = 0

    # ------------------------------------------------------------ connection
    @property
    def client(self) -> Any:
        """The ``pymilvus.MilvusClient`` (connected on first use)."""
        with self._lock:
            if self._client_ is None:
                try:
                    from pymilvus import MilvusClient
                except ImportError as err:
                    raise ImportError("MilvusIndex needs the milvus extra: pip install 'icl-fungi[milvus]'") from err
                kwargs = {"token": self.token} if self.token else {}
                try:
                    self._client_ = MilvusClient(uri=self.uri, **kwargs)
                except Exception as err:  # noqa: BLE001 - pymilvus raises its own types for every connection problem
                    raise ValueError(f"cannot connect to Milvus at {self.uri}: {err}") from None
            return self._client_

    def check(self) -> None:
        """Connect now: the retriever calls this before encoding a pool, so a server that cannot be reached fails at once
        (a TCP probe of a server URI first, 5 s at most, then the client's own connection)."""
        if self.uri.startswith(_REMOTE[:4]):
            host_port = self.uri.split("://", 1)[1].split("/", 1)[0]
            host, _, port = host_port.rpartition(":")
            try:
                socket.create_connection((host.strip("[]") or "localhost", int(port or 19530)), timeout=5).close()
            except (OSError, ValueError) as err:
                raise ValueError(f"cannot connect to Milvus at {self.uri}: {err}") from None
        _ = self.client

    def close(self) -> None:
        """Close the connection (it reopens on next use)."""
        with self._lock:
            if self._client_ is not None:
                self._client_.close()
                self._client_ = None

    def __len__(self) -> int:
        return self._count

    @property
    def dim(self) -> int:
        """Vector dimension (0 before building)."""
        return self._dim

    def _create(self, dim: int) -> None:
        from pymilvus import DataType, MilvusClient

        c = self.client
        if c.has_collection(self.collection):
            if not self.overwrite:
                rows = c.get_collection_stats(self.collection).get("row_count")
                raise ValueError(f"collection {self.collection!r} already exists at {self.uri} ({rows} rows); pass "
                                 "overwrite=True to replace it, or ICLRetriever.load the retriever saved with it")
            c.drop_collection(self.collection)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("label", DataType.VARCHAR, max_length=_MAX_LABEL)
        params = c.prepare_index_params()
        params.add_index(field_name="vector", index_type="HNSW", metric_type="COSINE",
                         params={"M": self.M, "efConstruction": self.ef_construction})
        c.create_collection(self.collection, schema=schema, index_params=params, consistency_level="Strong")
        self._count, self._dim = 0, dim

    def _insert(self, ids: np.ndarray, vectors: np.ndarray, labels: Sequence[str]) -> None:
        labels = [str(lab) for lab in labels]
        if any(len(lab) > _MAX_LABEL for lab in labels):
            raise ValueError(f"labels longer than {_MAX_LABEL} characters cannot be stored in Milvus")
        unit = normalise(vectors)
        for s in range(0, len(ids), self.insert_batch):
            rows = [{"id": int(i), "vector": v.tolist(), "label": lab}
                    for i, v, lab in zip(ids[s : s + self.insert_batch], unit[s : s + self.insert_batch],
                                         labels[s : s + self.insert_batch], strict=True)]
            self.client.upsert(self.collection, rows)  # upsert: a repeated id is written once

    # ------------------------------------------------------------- building
    def build(self, vectors: np.ndarray, labels: Sequence[str] | None = None) -> MilvusIndex:
        """Create the collection (see ``overwrite``) and insert ``vectors`` as ids ``0..n-1``."""
        vectors = check_vectors(vectors)
        labels = [""] * len(vectors) if labels is None else list(labels)
        if len(labels) != len(vectors):
            raise ValueError(f"got {len(vectors)} vectors but {len(labels)} labels")
        return self.build_from([(np.arange(len(vectors)), vectors, labels)], len(vectors), vectors.shape[1])

    def build_from(self, chunks: Iterable[Chunk], n: int, dim: int) -> MilvusIndex:
        """Create the collection and insert chunks as they arrive; every id of ``0..n-1`` must come once or more."""
        seen = np.zeros(n, dtype=bool)
        with self._lock:
            self._create(dim)
            for ids, vecs, labs in chunks:
                ids = np.asarray(ids, dtype=np.int64)
                if ids.size and (ids.min() < 0 or ids.max() >= n):
                    raise ValueError(f"chunk ids must lie in 0..{n - 1}")
                self._insert(ids, check_vectors(vecs, dim), labs)
                seen[ids] = True
            if not seen.all():
                raise ValueError(f"{int((~seen).sum())} of {n} ids never arrived")
            self.client.flush(self.collection)
            self.client.load_collection(self.collection)
            self._count = n
        return self

    def add(self, vectors: np.ndarray, labels: Sequence[str] | None = None) -> np.ndarray:
        """Append vectors as the next ids; returns them."""
        if not self._dim:
            self.build(vectors, labels)
            return np.arange(len(self))
        vectors = check_vectors(vectors, self._dim)
        labels = [""] * len(vectors) if labels is None else list(labels)
        with self._lock:
            ids = np.arange(self._count, self._count + len(vectors))
            self._insert(ids, vectors, labels)
            self.client.flush(self.collection)
            self._count += len(vectors)
        return ids

    def rows(self) -> int:
        """The collection's exact row count (a ``count(*)`` query: a server's statistics may still count deleted rows)."""
        got = self.client.query(self.collection, filter="", output_fields=["count(*)"], consistency_level="Strong")
        return int(got[0]["count(*)"])

    def truncate(self, n: int) -> int:
        """Delete the rows with ids ``>= n``; returns how many went. For a collection that outgrew the retriever saved
        with it: ``icl-fungi serve`` adds rows before a compaction saves their count, and its add log puts them back."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        with self._lock:
            self.client.load_collection(self.collection)
            before = self.rows()
            self.client.delete(self.collection, filter=f"id >= {n}")
            self.client.flush(self.collection)
            self._count = min(self._count, n)
            return before - self.rows()

    # -------------------------------------------------------------- queries
    def query(self, queries: np.ndarray, k: int, *, labels: Collection[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, cosine similarities)``, (n_queries, min(k, len)), best first; ``labels`` filters in the engine."""
        if not self._count:
            raise RuntimeError("the index is empty")
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self._dim:
            raise ValueError(f"expected queries of shape (n, {self._dim}), got {queries.shape}")
        k = min(int(k), self._count)
        expr = "" if labels is None else f"label in {json.dumps([str(x) for x in labels], ensure_ascii=False)}"
        hits = self.client.search(self.collection, data=normalise(queries).tolist(), limit=k, filter=expr,
                                  search_params={"metric_type": "COSINE", "params": {"ef": max(self.ef_search, 2 * k)}})
        rows = [(np.array([h["id"] for h in row], dtype=np.int64), np.array([h["distance"] for h in row], dtype=np.float32))
                for row in hits]
        return pad_results(rows, k)

    def get_vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The stored unit vectors of ``ids``."""
        ids = [int(i) for i in ids]
        got = {r["id"]: r["vector"] for r in self.client.get(self.collection, ids=ids, output_fields=["vector"])}
        missing = [i for i in ids if i not in got]
        if missing:
            raise ValueError(f"ids {missing[:5]} are not in collection {self.collection!r}")
        return np.asarray([got[i] for i in ids], dtype=np.float32)

    # ---------------------------------------------------------- persistence
    def _settings(self) -> dict[str, Any]:
        return {"uri": self.uri, "collection": self.collection, "M": self.M, "ef_construction": self.ef_construction,
                "ef_search": self.ef_search, "insert_batch": self.insert_batch}

    def config(self) -> dict[str, Any]:
        """Backend, settings, dimension and row count (JSON-ready; the token is never included)."""
        return {"backend": self.backend, **self._settings(), "dim": self._dim, "count": self._count}

    def describe(self) -> dict[str, Any]:
        """Backend, settings and size."""
        return {"backend": self.backend, **self._settings(), "n": self._count, "dim": self._dim}

    def save(self, path: str | Path) -> None:
        """Write the URI, the collection's name and its size into the folder ``path`` (no vectors: they stay in Milvus)."""
        self.client.flush(self.collection)
        super().save(path)

    @classmethod
    def from_state(cls, config: dict[str, Any], arrays: dict[str, np.ndarray], *, dim: int | None = None,
                   token: str | None = None) -> MilvusIndex:
        """The index a saved config names (not yet connected; :meth:`load` checks the collection)."""
        try:
            index = cls(config["uri"], config["collection"], token=token, M=config["M"], ef_construction=config["ef_construction"],
                        ef_search=config["ef_search"], insert_batch=config["insert_batch"])
            saved_dim, count = int(config["dim"]), int(config["count"])
        except (KeyError, TypeError) as err:
            raise ValueError(f"Milvus index config is invalid: {err!r}") from None
        if arrays:
            raise ValueError(f"a Milvus index keeps its vectors in Milvus, but the saved one holds arrays {sorted(arrays)}")
        if dim is not None and saved_dim != dim:
            raise ValueError(f"the saved Milvus index has {saved_dim}-dimensional vectors, expected {dim}")
        index._count, index._dim = count, saved_dim
        return index

    def load_extra(self, path: Path, config: dict[str, Any]) -> None:
        """Reconnect to the collection; refuses a missing collection, another dimension or another number of rows
        than was saved."""
        c = self.client
        if not c.has_collection(self.collection):
            raise ValueError(f"collection {self.collection!r} is missing at {self.uri}: the retriever saved at {path} "
                             "needs it (rebuild the retriever, or point it at the right Milvus)")
        fields = {f["name"]: f for f in c.describe_collection(self.collection)["fields"]}
        have = int(fields.get("vector", {}).get("params", {}).get("dim", -1))
        if have != self._dim:
            raise ValueError(f"collection {self.collection!r} at {self.uri} holds {have}-dimensional vectors; "
                             f"the retriever saved at {path} has {self._dim}-dimensional ones")
        c.load_collection(self.collection)
        rows = self.rows()
        if rows != self._count:
            raise ValueError(f"collection {self.collection!r} at {self.uri} holds {rows} rows; the retriever saved at "
                             f"{path} has {self._count} examples")

    @classmethod
    def load(cls, path: str | Path, *, dim: int | None = None, token: str | None = None) -> MilvusIndex:
        """Reconnect to the collection a saved retriever names (``token``: credentials, default ``MILVUS_TOKEN``);
        refuses a missing collection, another dimension or another number of rows than was saved."""
        return super().load(path, dim=dim, token=token)
