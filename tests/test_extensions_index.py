"""An index backend of the user's own, added from this file only: registered by name, built into a retriever,
saved and loaded back as itself; saved files naming other backends are refused."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from typing import Any, ClassVar

import numpy as np
import pytest

from icl_fungi import ICLRetriever, Index, Selection, register_index
from icl_fungi.index import VectorIndex, index_class, load_index, registered_indexes
from icl_fungi.parts import SavedPart, read_config
from icl_fungi.vectors import Chunk, check_vectors, normalise, pad_results


class BruteForceIndex(SavedPart):
    """Exact cosine search over a plain array: the smallest complete backend."""

    backend: ClassVar[str] = "test-brute-force"

    def __init__(self, *, note: str = "") -> None:
        self.note = note
        self.vectors = np.zeros((0, 0), np.float32)
        self.labels: list[str] = []

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def build(self, vectors: np.ndarray, labels: Sequence[str] | None = None) -> BruteForceIndex:
        self.vectors = normalise(check_vectors(vectors))
        self.labels = [str(x) for x in labels] if labels is not None else [""] * len(self.vectors)
        return self

    def build_from(self, chunks: Iterable[Chunk], n: int, dim: int) -> BruteForceIndex:
        vectors, labels = np.zeros((n, dim), np.float32), [""] * n
        for ids, vecs, labs in chunks:
            vectors[ids] = vecs
            for i, lab in zip(ids, labs, strict=True):
                labels[i] = lab
        return self.build(vectors, labels)

    def add(self, vectors: np.ndarray, labels: Sequence[str] | None = None) -> np.ndarray:
        start = len(self)
        more = normalise(check_vectors(vectors, self.dim))
        self.vectors = np.concatenate([self.vectors, more])
        self.labels += [str(x) for x in labels] if labels is not None else [""] * len(more)
        return np.arange(start, len(self))

    def query(self, queries: np.ndarray, k: int, *, labels: Collection[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        sims = normalise(queries) @ self.vectors.T
        if labels is not None:
            sims[:, ~np.isin(self.labels, [str(x) for x in labels])] = -np.inf
        k = min(k, len(self))
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        rows = [(ids[np.isfinite(s[ids])], s[ids][np.isfinite(s[ids])]) for ids, s in zip(order, sims, strict=True)]
        return pad_results(rows, k)

    def get_vectors(self, ids: Sequence[int]) -> np.ndarray:
        return self.vectors[np.asarray(ids, dtype=np.int64)]

    def describe(self) -> dict[str, Any]:
        return {**self.config(), "n": len(self), "dim": self.dim}

    def config(self) -> dict[str, Any]:
        return {"backend": self.backend, "note": self.note}

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {"vectors": self.vectors, "labels": np.asarray(self.labels, dtype=str)}

    @classmethod
    def from_state(cls, config: dict[str, Any], arrays: dict[str, np.ndarray], *, dim: int | None = None) -> BruteForceIndex:
        vectors = arrays.get("vectors")
        if vectors is None or (dim is not None and vectors.shape[1] != dim):
            raise ValueError(f"vectors.npy is missing or not of size {dim}")
        index = cls(note=config.get("note", ""))
        index.vectors, index.labels = vectors, arrays["labels"].tolist()
        return index


register_index(BruteForceIndex)


def test_users_backend_builds_saves_and_loads_a_retriever(intent_pool, st_model, tmp_path):
    assert isinstance(BruteForceIndex(), Index) and "test-brute-force" in registered_indexes()
    r = ICLRetriever.from_texts(*intent_pool, model=st_model, features=("embedding", "kl"), show_progress_bar=False,
                                index=BruteForceIndex(note="mine"))
    path = r.save(tmp_path / "r")
    assert read_config(path / "index")["backend"] == "test-brute-force"
    back = ICLRetriever.load(path, model=st_model)
    assert type(back.index) is BruteForceIndex and back.index.note == "mine" and len(back.index) == len(r)
    reference = ICLRetriever.load(path, model=st_model)
    reference.index = VectorIndex(exact_threshold=10**9).build(r.index.vectors, r.index.labels)
    for q in ("card arrival", "how to top up", "exchange rate"):
        a, b, c = (x.retrieve(q, k=10) for x in (r, back, reference))
        assert [x.index for x in a] == [x.index for x in b] == [x.index for x in c]
        np.testing.assert_allclose([x.score for x in a], [x.score for x in b], atol=1e-6)
    only = back.retrieve("card arrival", k=3, selection=Selection(allowed_labels=("lost_card",)))
    assert len(only) == 3 and {x.label for x in only} == {"lost_card"}


def _saved_index(tmp_path, backend: object):
    path = tmp_path / "idx"
    BruteForceIndex().build(np.eye(3, dtype=np.float32)).save(path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["backend"] = backend
    (path / "config.json").write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize("backend", ["annoy", "os:system", "icl_fungi.milvus:MilvusIndex", None, 3])
def test_unknown_backend_names_are_refused(tmp_path, backend):
    path = _saved_index(tmp_path, backend)
    with pytest.raises(ValueError, match=rf"{path.name}: unknown index backend .*registered: \('hnswlib', 'milvus'"):
        load_index(path, dim=3)


def test_saved_index_loads_as_its_backend_with_its_checks(tmp_path):
    path = _saved_index(tmp_path, "test-brute-force")
    back = load_index(path, dim=3)
    assert type(back) is BruteForceIndex and back.query(np.eye(3, dtype=np.float32)[:1], 1)[0].tolist() == [[0]]
    with pytest.raises(ValueError, match=r"idx: vectors\.npy is missing or not of size 4"):
        load_index(path, dim=4)


def test_registering_checks_the_class_and_refuses_a_taken_name():
    assert register_index(BruteForceIndex) is BruteForceIndex  # the same class again is fine
    assert index_class("test-brute-force") is BruteForceIndex

    class Other(BruteForceIndex):
        backend = "hnswlib"

    with pytest.raises(ValueError, match=r"index backend named 'hnswlib' is already registered \(icl_fungi\.index:VectorIndex\)"):
        register_index(Other)
    Other.backend = "milvus"
    with pytest.raises(ValueError, match=r"'milvus' is already registered \(icl_fungi\.milvus:MilvusIndex\)"):
        register_index(Other)
    Other.backend = "no spaces"
    with pytest.raises(ValueError, match="must be a non-empty word"):
        register_index(Other)
    with pytest.raises(TypeError, match="needs a class"):
        register_index(BruteForceIndex())
    assert index_class("hnswlib") is VectorIndex


def test_the_milvus_backend_is_imported_only_when_named():
    import subprocess
    import sys

    code = ("import sys, icl_fungi.index as ix; before = 'icl_fungi.milvus' in sys.modules; "
            "cls = ix.index_class('milvus'); print(before, cls.__module__, cls.backend)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "icl_fungi.milvus", "milvus"]


def test_users_backend_through_the_command_line(tmp_path, capsys, monkeypatch):
    """`icl-fungi --import MODULE build --index NAME --index-option key=value`, then `query` loads it back."""
    import sys
    import types

    from icl_fungi.cli import main

    from .conftest import DATA

    plugin = types.ModuleType("icl_fungi_test_index_plugin")
    plugin.BruteForceIndex = BruteForceIndex
    monkeypatch.setitem(sys.modules, plugin.__name__, plugin)
    out = tmp_path / "cli.icl"
    assert main(["-q", "--import", plugin.__name__, "build", str(DATA / "intents-train.csv"), "--label-column", "intent",
                 "--index", "test-brute-force", "--index-option", "note=from-cli", "--out", str(out)]) == 0
    assert read_config(out / "index") == {"backend": "test-brute-force", "note": "from-cli"}
    capsys.readouterr()
    assert main(["-q", "query", str(out), "my card has not arrived", "-k", "3", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["examples"]) == 3
    assert main(["-q", "build", str(DATA / "intents-train.csv"), "--label-column", "intent", "--index", "annoy",
                 "--out", str(tmp_path / "x.icl")]) == 2
    assert "unknown index backend 'annoy'" in capsys.readouterr().err
    assert main(["-q", "build", str(DATA / "intents-train.csv"), "--label-column", "intent", "--index", "test-brute-force",
                 "--index-option", "nope=1", "--out", str(tmp_path / "y.icl")]) == 2
    assert "--index test-brute-force" in capsys.readouterr().err and not (tmp_path / "y.icl").exists()


def test_an_unregistered_backend_is_refused_at_save_not_at_load(intent_pool, st_model, tmp_path):
    class Unlisted(BruteForceIndex):
        backend = "test-unlisted"

    r = ICLRetriever.from_texts(*intent_pool, model=st_model, features=("embedding",), show_progress_bar=False, index=Unlisted())
    with pytest.raises(ValueError, match=r"'test-unlisted' .*is not registered"):
        r.save(tmp_path / "r")
    assert not (tmp_path / "r").exists()
