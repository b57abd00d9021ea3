"""``icl-fungi serve`` over a pool of input -> output pairs without labels: retrieved examples carry their
outputs, adds take outputs (logged, replayed, folded in on SIGTERM with the outputs intact), and an add that
does not fit the pool's kind gets a 422 naming the field."""

from __future__ import annotations

import httpx
import pytest

from icl_fungi import ICLRetriever

from .serve_helpers import ServerProcess

pytest.importorskip("fastapi")


def test_a_pool_of_pairs_is_served_and_grows_with_its_outputs(intent_pool, st_model, tmp_path):
    texts, labels = intent_pool
    outputs = [f"Reply about {lab.replace('_', ' ')}." for lab in labels]
    path = ICLRetriever.from_pairs(texts, outputs, model=st_model, show_progress_bar=False).save(tmp_path / "pairs.icl")
    server = ServerProcess(path)
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=120) as c:
            (first,) = c.post("/v1/retrieve", json={"query": texts[0], "k": 1}).json()["examples"]
            assert (first["text"], first["label"], first["output"]) == (texts[0], None, outputs[0])
            new = {"texts": ["where is the parcel with my new card"], "outputs": ["Cards arrive within a week.\nTrack it in the app."]}
            added = c.post("/v1/examples", json=new)
            assert added.status_code == 200 and added.json()["ids"] == [len(texts)]
            (hit,) = c.post("/v1/retrieve", json={"query": new["texts"][0], "k": 1}).json()["examples"]
            assert (hit["index"], hit["output"]) == (len(texts), new["outputs"][0])
            for body, field in (({"texts": ["a"]}, "outputs"), ({"texts": ["a"], "outputs": ["b"], "labels": ["x"]}, "labels"),
                                ({"texts": ["a", "b"], "outputs": ["c"]}, "outputs"), ({"texts": ["a"], "outputs": [" "]}, "outputs[0]"),
                                ({"texts": ["a"], "outputs": [None]}, "outputs[0]")):
                r = c.post("/v1/examples", json=body)
                assert r.status_code == 422 and r.json()["error"]["field"] == field, (body, r.text)
        assert server.stop() == 0  # SIGTERM folds the log into the saved retriever
    finally:
        if server.proc.poll() is None:
            server.kill()
    again = ICLRetriever.load(path, model=st_model)
    assert again.outputs == [*outputs, new["outputs"][0]] and again.labels is None
    assert "Traceback" not in server.log.read_text(errors="replace")
