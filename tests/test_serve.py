"""``icl-fungi serve`` over real HTTP: every route, the bearer key, each kind of bad input, and answers equal to
the same calls made in process (batched queries included). One server (a subprocess on a free loopback port)
serves the whole module; the in-process reference is the same saved retriever loaded here."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time

import httpx
import pytest

from icl_fungi import ICLRetriever, PromptTemplate, Selection

from .conftest import QUERIES
from .serve_helpers import ServerProcess

pytest.importorskip("fastapi")

KEY = "test-key-7f3a9c"  # a made-up key: the tests check it never shows up in the log or the metrics
AUTH = {"Authorization": f"Bearer {KEY}"}
INLINE_TEMPLATE = {"kind": "completion", "template": "{examples}\n\nQ: {query}\nA:", "example": "Q: {text}\nA: {label}"}


@pytest.fixture(scope="module")
def saved(fungi_retriever, tmp_path_factory):
    return fungi_retriever.save(tmp_path_factory.mktemp("serve") / "pool.icl")


@pytest.fixture(scope="module")
def local(saved, st_model) -> ICLRetriever:
    """The in-process reference: the saved retriever the server serves."""
    return ICLRetriever.load(saved, model=st_model)


@pytest.fixture(scope="module")
def server(saved):
    srv = ServerProcess(saved, "--api-key-env", "ICL_TEST_KEY", "--gather-ms", "5", "--max-k", "50", env={"ICL_TEST_KEY": KEY})
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as c:
        yield c


def same(served: list[dict], local: list) -> None:
    """Served examples equal in-process ones: ids, texts and labels identical, scores to 1e-5."""
    assert [(x["index"], x["text"], x["label"]) for x in served] == [(x.index, x.text, x.label) for x in local]
    assert [x["score"] for x in served] == pytest.approx([x.score for x in local], abs=1e-5)


def test_health_checks_are_open_and_every_other_route_needs_the_key(server, client):
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz").json()
    assert ready["status"] == "ready" and ready["pool_size"] > 0
    routes = [("POST", "/v1/retrieve"), ("POST", "/v1/prompt"), ("POST", "/v1/examples"), ("GET", "/metrics"),
              ("GET", "/docs"), ("GET", "/openapi.json")]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}, {"Authorization": KEY}):
        for method, path in routes:
            r = httpx.request(method, f"{server.url}{path}", headers=headers, json={"query": "x"})
            assert r.status_code == 401, (headers, path)
            assert r.headers["www-authenticate"] == "Bearer" and r.json()["error"]["field"] == "authorization"
    schema = client.get("/openapi.json").json()
    assert {"/v1/retrieve", "/v1/prompt", "/v1/examples", "/healthz", "/readyz", "/metrics"} <= set(schema["paths"])
    assert "swagger" in client.get("/docs").text.lower()


def test_retrieve_equals_in_process_calls(client, local):
    one = client.post("/v1/retrieve", json={"query": QUERIES[0], "k": 7})
    assert one.status_code == 200
    same(one.json()["examples"], local.retrieve(QUERIES[0], k=7))
    many = client.post("/v1/retrieve", json={"query": QUERIES[:4], "k": 5, "selection": "label_cap;max_per_label=2"}).json()
    assert len(many["results"]) == 4
    for q, got in zip(QUERIES[:4], many["results"], strict=True):
        same(got, local.retrieve(q, k=5, selection=Selection("label_cap", max_per_label=2)))
    mmr = client.post("/v1/retrieve", json={"query": QUERIES[5], "k": 6, "selection": "mmr;mmr_lambda=0.3"}).json()
    same(mmr["examples"], local.retrieve(QUERIES[5], k=6, selection=Selection("mmr", mmr_lambda=0.3)))


def test_concurrent_queries_share_forward_passes_and_equal_single_calls(server, client, local, intent_queries):
    queries = (QUERIES + intent_queries[0])[:16]
    before = _metric(client, "icl_fungi_batch_queries_count")
    barrier = threading.Barrier(len(queries))
    answers: dict[int, dict] = {}

    def ask(i: int) -> None:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as c:
            barrier.wait()
            answers[i] = c.post("/v1/retrieve", json={"query": queries[i], "k": 10}).json()

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, q in enumerate(queries):
        same(answers[i]["examples"], local.retrieve(q, k=10))
    passes = _metric(client, "icl_fungi_batch_queries_count") - before
    assert 1 <= passes < len(queries) / 2  # concurrent requests were answered by shared forward passes


def _metric(client: httpx.Client, name: str, labels: str = "") -> float:
    text = client.get("/metrics").text
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.mark.parametrize("args", [
    {},
    {"k": 3, "template": "banking77-chat"},
    {"k": 8, "order": "random", "seed": 3},
    {"k": 8, "order": "similar_first", "max_tokens": 90},
    {"k": 6, "selection": "label_cap;max_per_label=1", "template": "classification-chat-fewshot"},
    {"k": 4, "template": INLINE_TEMPLATE},
])
def test_prompt_is_what_build_prompt_returns(client, local, args):
    query = QUERIES[2]
    got = client.post("/v1/prompt", json={"query": query, **args})
    assert got.status_code == 200, got.text
    kwargs = dict(args)
    if isinstance(kwargs.get("template"), dict):
        kwargs["template"] = PromptTemplate.from_dict(kwargs["template"])
    if "selection" in kwargs:
        kwargs["selection"] = Selection.from_spec(kwargs["selection"])
    expected = local.build_prompt(query, **kwargs)
    assert got.json()["prompt"] == expected
    assert got.json()["kind"] == ("completion" if isinstance(expected, str) else "chat")


BAD = [  # (route, body: JSON value, or bytes sent as is, expected status, field the error names)
    ("/v1/retrieve", b'{"query": "card", ', 400, "body"),
    ("/v1/retrieve", b"", 422, "body"),
    ("/v1/retrieve", [1, 2], 422, "body"),
    ("/v1/retrieve", {"k": 3}, 422, "query"),
    ("/v1/retrieve", {"query": 5}, 422, "query"),
    ("/v1/retrieve", {"query": ["card", 3]}, 422, "query[1]"),
    ("/v1/retrieve", {"query": "card", "k": "5"}, 422, "k"),
    ("/v1/retrieve", {"query": "card", "k": 2.5}, 422, "k"),
    ("/v1/retrieve", {"query": "card", "k": True}, 422, "k"),
    ("/v1/retrieve", {"query": "card", "k": 0}, 422, "k"),
    ("/v1/retrieve", {"query": "card", "k": -3}, 422, "k"),
    ("/v1/retrieve", {"query": "card", "k": 51}, 422, "k"),
    ("/v1/retrieve", {"query": ""}, 422, "query"),
    ("/v1/retrieve", {"query": "   "}, 422, "query"),
    ("/v1/retrieve", {"query": []}, 422, "query"),
    ("/v1/retrieve", {"query": ["card", ""]}, 422, "query[1]"),
    ("/v1/retrieve", {"query": "x" * 4001}, 413, "query"),
    ("/v1/retrieve", {"query": ["card"] * 65}, 413, "query"),
    ("/v1/retrieve", {"query": "card", "selection": "no_such_strategy"}, 422, "selection"),
    ("/v1/retrieve", {"query": "card", "selection": "mmr;mmr_lambda=7"}, 422, "selection"),
    ("/v1/retrieve", {"query": "card", "kk": 3}, 422, "kk"),
    ("/v1/prompt", {"query": "card", "template": "no-such-template"}, 422, "template"),
    ("/v1/prompt", {"query": "card", "template": "../prompts/banking77-chat"}, 422, "template"),
    ("/v1/prompt", {"query": "card", "template": {"kind": "completion"}}, 422, "template"),
    ("/v1/prompt", {"query": "card", "template": 7}, 422, "template"),
    ("/v1/prompt", {"query": "card", "order": "sideways"}, 422, "order"),
    ("/v1/prompt", {"query": "card", "max_tokens": 0}, 422, "max_tokens"),
    ("/v1/prompt", {"query": "card", "max_tokens": 2}, 422, "max_tokens"),
    ("/v1/prompt", {"query": "card", "seed": -1}, 422, "seed"),
    ("/v1/prompt", {"query": ["card"]}, 422, "query"),
    ("/v1/examples", {"texts": ["a new text"]}, 422, "labels"),
    ("/v1/examples", {"texts": ["a"], "labels": ["x"], "outputs": ["an output"]}, 422, "outputs"),
    ("/v1/examples", {"texts": [], "labels": []}, 422, "texts"),
    ("/v1/examples", {"texts": ["a", "b"], "labels": ["x"]}, 422, "labels"),
    ("/v1/examples", {"texts": ["a"], "labels": [True]}, 422, "labels[0]"),
    ("/v1/examples", {"texts": ["a"], "labels": [" "]}, 422, "labels[0]"),
    ("/v1/examples", {"texts": [" "], "labels": ["x"]}, 422, "texts[0]"),
    ("/v1/examples", {"texts": "a", "labels": "x"}, 422, "texts"),
    ("/v1/examples", {"texts": ["t"] * 257, "labels": ["x"] * 257}, 413, "texts"),
]


@pytest.mark.parametrize(("route", "body", "status", "field"), BAD, ids=[f"{r[0]}-{i}" for i, r in enumerate(BAD)])
def test_bad_input_gets_a_4xx_naming_the_field(client, route, body, status, field):
    if isinstance(body, bytes):
        r = client.post(route, content=body, headers={"Content-Type": "application/json"})
    else:
        r = client.post(route, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["field"] == field and field in error["message"]
    assert "Traceback" not in r.text and 'File "' not in r.text


def test_oversized_body_wrong_content_type_and_unknown_routes(client):
    big = client.post("/v1/retrieve", content=json.dumps({"query": "x" * (1 << 20)}), headers={"Content-Type": "application/json"})
    assert big.status_code == 413 and big.json()["error"]["field"] == "body"

    def chunks():
        for _ in range(40):
            yield b" " * 32768  # no Content-Length: the limit holds while reading

    streamed = client.post("/v1/retrieve", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    form = client.post("/v1/retrieve", content=b"query=card", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415 and form.json()["error"]["field"] == "content-type"
    assert client.get("/v1/nothing").status_code == 404
    assert client.get("/v1/retrieve").status_code == 405
    assert all("error" in r.json() for r in (big, streamed, form, client.get("/v1/nothing")))


def test_added_examples_are_retrieved_at_once(client, local):
    texts = ["my crypto wallet transfer is stuck", "crypto withdrawal to my wallet is pending"]
    added = client.post("/v1/examples", json={"texts": texts, "labels": ["crypto", "crypto"]})
    assert added.status_code == 200, added.text
    body = added.json()
    assert body["ids"] == [len(local), len(local) + 1] and body["pool_size"] == len(local) + 2 and body["seq"] == 0
    local.add_examples(texts, ["crypto", "crypto"])  # the reference follows, so later comparisons still hold
    got = client.post("/v1/retrieve", json={"query": texts[0], "k": 3}).json()["examples"]
    same(got, local.retrieve(texts[0], k=3))
    assert got[0]["index"] == body["ids"][0] and got[0]["label"] == "crypto"


def test_metrics_count_requests_errors_latency_and_pool_size(server, client, local):
    ok = _metric(client, "icl_fungi_requests_total", '{method="POST",route="/v1/retrieve",status="200"}')
    client.post("/v1/retrieve", json={"query": "card", "k": 1})
    client.post("/v1/retrieve", json={"query": "card", "k": 0})
    assert _metric(client, "icl_fungi_requests_total", '{method="POST",route="/v1/retrieve",status="200"}') == ok + 1
    assert _metric(client, "icl_fungi_request_errors_total", '{method="POST",route="/v1/retrieve",status="422"}') >= 1
    assert _metric(client, "icl_fungi_request_seconds_count", '{route="/v1/retrieve"}') >= ok + 2
    assert _metric(client, "icl_fungi_pool_size") == len(local)
    client.get("/some/random/path")
    text = client.get("/metrics").text
    assert 'route="other"' in text and "/some/random/path" not in text
    assert KEY not in text and KEY not in server.output()


def _wait_ready(client, timeout: float = 60) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while (r := client.get("/readyz")).json()["status"] == "loading" and time.monotonic() < deadline:
        time.sleep(0.05)
    return r


def test_read_only_refuses_adds_and_a_broken_retriever_never_gets_ready(fungi_retriever, st_model, tmp_path):
    from fastapi.testclient import TestClient

    from icl_fungi.serve import ServeSettings, create_app, log_dir

    path = fungi_retriever.save(tmp_path / "ro.icl")
    with TestClient(create_app(ServeSettings(path, read_only=True, model=st_model))) as c:
        assert _wait_ready(c).status_code == 200
        refused = c.post("/v1/examples", json={"texts": ["new"], "labels": ["x"]})
        assert refused.status_code == 403 and "read-only" in refused.json()["error"]["message"]
        assert len(c.post("/v1/retrieve", json={"query": "card", "k": 2}).json()["examples"]) == 2
    assert not log_dir(path).exists()
    with (path / "pool.json").open("a") as fh:
        fh.write(" ")
    with TestClient(create_app(ServeSettings(path, model=st_model))) as c:
        ready = _wait_ready(c)
        assert ready.status_code == 503 and ready.json()["status"] == "failed" and "pool.json" in ready.json()["error"]
        down = c.post("/v1/retrieve", json={"query": "card"})
        assert down.status_code == 503 and down.json()["error"]["type"] == "not_ready"


def test_serve_command_refuses_bad_arguments_before_binding(saved, tmp_path, capsys, monkeypatch):
    from icl_fungi.cli import main

    monkeypatch.delenv("ICL_UNSET_KEY_VAR", raising=False)
    assert main(["-q", "serve", str(tmp_path / "missing")]) == 2
    assert "not a saved retriever" in capsys.readouterr().err
    assert main(["-q", "serve", str(saved), "--api-key-env", "ICL_UNSET_KEY_VAR"]) == 2
    assert "ICL_UNSET_KEY_VAR" in capsys.readouterr().err
    assert main(["-q", "serve", str(saved), "--gather-ms", "5000"]) == 2
    assert "gather_ms" in capsys.readouterr().err
    probe = "import sys, icl_fungi.cli; print(sorted(m for m in ('fastapi', 'uvicorn', 'icl_fungi.serve') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "[]"
