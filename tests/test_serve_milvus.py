"""A Milvus-backed pool (milvus-lite, a real embedded engine) takes adds through the service: logged, replayed
after an exit that did not fold the log (as after a crash) at the same ids, and folded into the saved retriever
by a clean exit; rows no add log accounts for are refused, never deleted."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("pymilvus")

from fastapi.testclient import TestClient

from icl_fungi import ICLRetriever
from icl_fungi.milvus import MilvusIndex
from icl_fungi.serve import AddLog, ServeSettings, create_app
from icl_fungi.serve.remote import restore_saved_rows

from .serve_helpers import app_ready

NEW = ["my crypto wallet transfer is stuck", "crypto withdrawal to my wallet is pending"]


def test_a_milvus_pool_takes_adds_replays_them_and_folds_them_in(intent_pool, st_model, tmp_path):
    built = ICLRetriever.from_texts(*intent_pool, model=st_model, show_progress_bar=False,
                                    index=MilvusIndex(str(tmp_path / "pool.db"), "served"))
    path = built.save(tmp_path / "pool.icl")
    n = len(built)
    built.index.close()
    with TestClient(create_app(ServeSettings(path, model=st_model, compact_on_exit=False))) as c:  # exits as a crash would
        assert app_ready(c)["pool_size"] == n
        first = c.post("/v1/examples", json={"texts": NEW, "labels": ["crypto", "crypto"]}, headers={"Idempotency-Key": "k-1"})
        assert first.status_code == 200, first.text
        assert first.json()["ids"] == [n, n + 1]
        top = c.post("/v1/retrieve", json={"query": NEW[0], "k": 1}).json()["examples"][0]
        assert (top["index"], top["text"]) == (n, NEW[0])
    with pytest.raises(ValueError, match=f"holds {n + 2} rows"):  # the collection outgrew the saved retriever
        ICLRetriever.load(path, model=st_model)
    with TestClient(create_app(ServeSettings(path, model=st_model))) as c:  # rows past the saved count go, the log puts them back
        assert app_ready(c)["pool_size"] == n + 2
        again = c.post("/v1/examples", json={"texts": NEW, "labels": ["crypto", "crypto"]}, headers={"Idempotency-Key": "k-1"})
        assert again.json() | {"pool_size": 0} == first.json() | {"pool_size": 0}
        assert again.headers["idempotent-replayed"] == "true"
        third = c.post("/v1/examples", json={"texts": ["my crypto top up failed"], "labels": ["crypto"]})
        assert third.json()["ids"] == [n + 2]
        rows = c.post("/v1/retrieve", json={"query": [*NEW, "my crypto top up failed"], "k": 2}).json()["results"]
        assert [(row[0]["index"], row[0]["text"]) for row in rows] == [(n, NEW[0]), (n + 1, NEW[1]), (n + 2, "my crypto top up failed")]
        assert all(row[1]["text"] != row[0]["text"] for row in rows)  # each one once
    saved = ICLRetriever.load(path, model=st_model)  # the clean exit folded the log in
    assert saved.texts[n:] == [*NEW, "my crypto top up failed"] and saved.index.rows() == n + 3
    with AddLog.open(path) as log:
        assert log.pending() == [] and log.lookup("k-1").ids == [n, n + 1]  # the key outlives the compaction
    saved.index.add(saved.vectors(["a row written behind the service's back"]))
    with AddLog.open(path) as log, pytest.raises(ValueError, match="another process wrote to the collection"):
        restore_saved_rows(path, log)
    assert saved.index.rows() == n + 4  # refused, not deleted
