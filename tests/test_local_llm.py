"""End-to-end tests against the real embedded LLM (Gemma 3 270M via llama-cpp-python's server)."""

from __future__ import annotations

import os

import pytest

from icl_fungi.evaluation.harness import EvalSettings, run_icl_eval
from icl_fungi.evaluation.llm import ResponseCache

from .llm_fakes import FaultProxy
from .llm_fakes import eval_settings as _settings
from .llm_fakes import report_records as _records

pytestmark = pytest.mark.slow  # starts the real llama.cpp server

# ----------------------------------------------------------- real local LLM
if os.environ.get("CI"):
    import llama_cpp  # noqa: F401 - in CI the embedded LLM must be installed: fail, never skip
else:
    pytest.importorskip("llama_cpp", reason="the embedded LLM needs the llm extra")


@pytest.fixture(scope="module")
def local_server():
    from icl_fungi.evaluation.llm import LocalServer

    with LocalServer() as server:
        yield server


def test_end_to_end_embedded_server(intent_data, tmp_path):
    """The default path: no --base-url starts the embedded Gemma 3 270M server and stops it."""
    settings = EvalSettings(data=str(intent_data), out=str(tmp_path / "e2e"), k=5, limit=4, show_progress=False)
    report = run_icl_eval(settings)
    for name in ("fungi", "embedding", "random"):
        m = report["selectors"][name]
        assert m["n"] == 4 and m["prompt_tokens"] > 0 and m["latency_s_p50"] > 0
    assert report["endpoint"]["id"] == "embedded:gemma-3-270m-q4_k_m"
    # one request per distinct prompt: selectors that pick the same examples share one
    assert report["requests_sent"] == len({(tuple(r["examples"]), r["query"]) for r in report["records"]}) >= 8
    replies = [r["reply"] for r in report["records"]]
    assert all("\n" not in r for r in replies)  # generation stopped at the newline


def test_fault_injecting_proxy_loses_and_duplicates_nothing(intent_data, tmp_path, local_server):
    direct = run_icl_eval(_settings(intent_data, tmp_path / "direct", local_server.base_url, model=local_server.model, limit=4,
                                    timeout=60))
    with FaultProxy(local_server.base_url) as proxy:
        via = run_icl_eval(_settings(intent_data, tmp_path / "proxy", proxy.base_url, model=local_server.model, limit=4,
                                     timeout=60))
    assert set(proxy.faults) == {"429", "503", "drop", "slow", "ok"}
    assert via["requests_sent"] == 8
    keys = [(r["selector"], r["query_index"]) for r in via["records"]]
    assert len(keys) == len(set(keys)) == 8
    assert len(ResponseCache(tmp_path / "proxy" / "responses.jsonl")) == 8
    assert _records(via) == _records(direct)
    for name in ("embedding", "random"):
        assert via["selectors"][name]["n"] == 4
        assert via["selectors"][name]["accuracy"] == direct["selectors"][name]["accuracy"]


def test_the_servers_memory_does_not_grow_with_prompt_length(local_server):
    """llama-cpp-python's server keeps every prompt token's logits by default (1 MiB a token with Gemma's vocabulary):
    its RSS grew to 8.3 GiB after a 6,901-token prompt. LocalServer turns that off; a 1,151-token prompt now adds
    about 50 MiB (it added 2.1 GiB)."""
    import json
    import urllib.request

    import psutil

    rss = lambda: psutil.Process(local_server.proc.pid).memory_info().rss  # noqa: E731
    before = rss()
    prompt = "Customer: my card has not arrived yet, what should I do about the delivery? Intent: card_arrival\n" * 50
    body = json.dumps({"model": local_server.model, "prompt": prompt, "max_tokens": 1, "temperature": 0}).encode()
    request = urllib.request.Request(f"{local_server.base_url}/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as reply:
        assert json.load(reply)["usage"]["prompt_tokens"] > 1000
    assert rss() - before < 300 * 2**20, (before, rss())

