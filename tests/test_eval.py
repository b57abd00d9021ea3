from __future__ import annotations

import json
import signal
import time

import pytest

from icl_fungi.evaluation import macro_f1, mcnemar_p, paired_comparison, parse_label, wilson_interval
from icl_fungi.evaluation.harness import load_splits, run_icl_eval
from icl_fungi.evaluation.llm import ResponseCache, redact_url

from .helpers import eval_command, start_until_cached
from .llm_fakes import FakeLLM
from .llm_fakes import eval_settings as _settings
from .llm_fakes import report_records as _records

LABELS = ["card_arrival", "reverted_card_payment?", "Refund_not_showing_up", "top_up_failed"]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (" card_arrival", "card_arrival"),
        ("Card Arrival.", "card_arrival"),
        ("card_arrival\nQuery: next", "card_arrival"),
        ("  reverted_card_payment ", "reverted_card_payment?"),
        ("refund not showing up!", "Refund_not_showing_up"),
        ("card_arrival, top_up_failed", None),
        ("", None),
        ("   ", None),
        ("lost_card", None),
        ("The intent is card_arrival", None),
    ],
)
def test_parse_label(reply, expected):
    assert parse_label(reply, LABELS) == expected


def test_metric_helpers():
    lo, hi = wilson_interval(90, 100)
    assert 0.82 < lo < 0.9 < hi < 0.95
    assert wilson_interval(0, 0) == (0.0, 0.0)
    assert macro_f1(["a", "a", "b"], ["a", None, "b"]) == pytest.approx((2 / 3 + 1) / 2)
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(0, 10) == pytest.approx(2 / 1024)
    c = paired_comparison([True, True, False, True], [True, False, False, False])
    assert c["difference"] == 0.5 and c["only_first_correct"] == 2 and c["only_second_correct"] == 0


def test_redact_url_and_cache(tmp_path):
    assert redact_url("https://user:secret@api.example.com:8443/v1?key=abc") == "https://api.example.com:8443/v1"
    cache = ResponseCache(tmp_path / "c.jsonl")
    k1 = ResponseCache.key("e", "m1", {"t": 0}, "prompt")
    assert k1 != ResponseCache.key("e", "m2", {"t": 0}, "prompt")  # another model: no hit
    assert k1 != ResponseCache.key("e", "m1", {"t": 1}, "prompt")
    cache.put(k1, {"text": "x", "prompt_tokens": 1, "completion_tokens": 1, "latency_s": 0.1})
    cache.put(k1, {"text": "y", "prompt_tokens": 1, "completion_tokens": 1, "latency_s": 0.1})
    with (tmp_path / "c.jsonl").open("a") as fh:
        fh.write('{"key": "torn li')  # a kill mid-write
    again = ResponseCache(tmp_path / "c.jsonl")
    assert len(again) == 1 and again.get(k1)["text"] == "x"


def test_load_splits_detects_label_column(intent_data):
    tr, _, te, _, col = load_splits(str(intent_data))
    assert col == "intent" and len(tr) == 120 and len(te) == 36
    tr2, *_ = load_splits(f"{intent_data / 'train.csv'},{intent_data / 'test.csv'}")
    assert tr2 == tr
    with pytest.raises(ValueError, match=r"no column .nope."):
        load_splits(str(intent_data), text_column="text", label_column="nope")
    with pytest.raises(ValueError, match="train and test"):
        load_splits(str(intent_data / "train.csv"))


def test_eval_report_against_fake_endpoint(intent_data, tmp_path):
    with FakeLLM() as llm:
        report = run_icl_eval(_settings(intent_data, tmp_path / "a", llm.base_url, selectors=("fungi", "embedding", "random")))
        sent = sum(llm.requests.values())
        # one request per distinct prompt (selectors choosing the same examples share a prompt)
        assert set(llm.requests.values()) == {1} and report["requests_sent"] == sent
        assert 40 <= sent <= 60 and len(report["records"]) == 60
        again = run_icl_eval(_settings(intent_data, tmp_path / "a", llm.base_url, selectors=("fungi", "embedding", "random")))
        assert sum(llm.requests.values()) == sent and again["requests_sent"] == 0  # all from the cache
        other_model = run_icl_eval(_settings(intent_data, tmp_path / "b", llm.base_url, model="fake-2", selectors=("random",),
                                             cache=str(tmp_path / "a" / "responses.jsonl")))
        assert other_model["requests_sent"] == 20  # another model: no cache hits
    for name in ("fungi", "embedding", "random"):
        m = report["selectors"][name]
        assert m["n"] == 20 and 0 <= m["accuracy"] <= 1 and m["accuracy_ci95"][0] <= m["accuracy"] <= m["accuracy_ci95"][1]
        assert again["selectors"][name]["accuracy"] == m["accuracy"]
    # the fake answers with the nearest example's label: LLM accuracy equals retrieval 1-NN accuracy
    assert report["selectors"]["embedding"]["accuracy"] == report["selectors"]["embedding"]["retrieval"]["1nn_acc"]
    assert report["selectors"]["embedding"]["accuracy"] > report["selectors"]["random"]["accuracy"]
    assert set(report["paired"]) == {"fungi_vs_embedding", "fungi_vs_random", "embedding_vs_random"}
    saved = json.loads((tmp_path / "a" / "report.json").read_text())
    assert saved["selectors"]["fungi"]["n"] == 20 and len(saved["records"]) == 60
    assert {"versions", "endpoint", "settings", "date", "data"} <= set(saved)
    assert (tmp_path / "a" / "report.md").read_text().startswith("# In-context-learning evaluation")
    assert (tmp_path / "a" / "accuracy.png").stat().st_size > 1000
    assert (tmp_path / "a" / "per_class_difference.png").stat().st_size > 1000


def test_api_key_never_written(intent_data, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-test-key-123")
    with FakeLLM() as llm:
        run_icl_eval(_settings(intent_data, tmp_path / "k", llm.base_url, selectors=("random",), limit=3))
    written = {f.name: f.read_text() for f in (tmp_path / "k").iterdir() if f.suffix in (".json", ".md", ".jsonl", ".html")}
    assert set(written) == {"report.json", "report.md", "report.html", "responses.jsonl"}
    for name, text in written.items():
        assert "sk-secret" not in text, name


def test_kill_and_resume_gives_the_same_report(intent_data, tmp_path):
    with FakeLLM(delay=0.15) as llm:
        full = run_icl_eval(_settings(intent_data, tmp_path / "full", llm.base_url))
        out = tmp_path / "killed"
        cache = out / "responses.jsonl"
        proc = start_until_cached(eval_command(intent_data, out, llm.base_url, "--limit", "20"), cache, 10)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        n_cached = len(ResponseCache(cache))
        assert 10 <= n_cached < 40
        before = sum(llm.requests.values())
        # the cached replies so far: queries are answered one by one for every selector, so they pair up
        partial = run_icl_eval(_settings(intent_data, tmp_path / "partial", llm.base_url, cache=str(cache), cached_only=True))
        assert sum(llm.requests.values()) == before and partial["requests_sent"] == 0
        n_pairs = partial["selectors"]["embedding"]["n"]
        assert n_pairs == partial["selectors"]["random"]["n"] >= n_cached // 2 - 1 and "embedding_vs_random" in partial["paired"]
        resumed = run_icl_eval(_settings(intent_data, out, llm.base_url))
        sent_after = sum(llm.requests.values()) - before
    assert resumed["requests_sent"] == sent_after == 40 - n_cached  # only the missing requests
    assert _records(resumed) == _records(full)
    for name in ("embedding", "random"):
        a, b = full["selectors"][name], resumed["selectors"][name]
        for key in ("n", "accuracy", "accuracy_ci95", "macro_f1", "invalid_rate", "per_class_accuracy", "retrieval"):
            assert a[key] == b[key]
    assert len(ResponseCache(cache)) == 40
    done = {(r["selector"], r["query_index"]): r for r in resumed["records"]}
    assert all(done[(r["selector"], r["query_index"])]["reply"] == r["reply"] for r in partial["records"])
    with pytest.raises(ValueError, match="no response cache"):
        run_icl_eval(_settings(intent_data, tmp_path / "none", None, cached_only=True))


def test_bad_settings(intent_data, tmp_path):
    with pytest.raises(ValueError, match="selector"):
        run_icl_eval(_settings(intent_data, tmp_path, "http://127.0.0.1:9/v1", selectors=("best",)))
    with pytest.raises(ValueError, match="--model"):
        run_icl_eval(_settings(intent_data, tmp_path, "http://127.0.0.1:9/v1", model=None))
    with pytest.raises(ValueError, match="chat template"):
        run_icl_eval(_settings(intent_data, tmp_path, "http://127.0.0.1:9/v1", template="banking77-chat"))


@pytest.mark.parametrize("data", ["missing", "intents"])
def test_cli_eval_errors_are_one_line_and_leave_no_folder(intent_data, tmp_path, capsys, data):
    from icl_fungi.cli import main

    source = tmp_path / "nothing" if data == "missing" else intent_data  # no data; data but no endpoint
    assert main(["-q", "eval", "--data", str(source), "--out", str(tmp_path / "o" / "run"),
                 "--base-url", "http://127.0.0.1:9/v1", "--model", "m"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("icl-fungi: error:") and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_unreachable_endpoint_fails_before_anything_is_built(intent_data, tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"cannot reach http://127\.0\.0\.1:9/v1"):
        run_icl_eval(_settings(intent_data, tmp_path / "u", "http://127.0.0.1:9/v1", selectors=("fungi", "embedding")))
    assert time.perf_counter() - t0 < 15  # a check of /models, no retriever built
    assert not (tmp_path / "u").exists()  # nothing to write: no folder


def test_request_failing_after_retries_is_a_clean_error(intent_data, tmp_path):
    with FakeLLM() as llm:  # /models answers; the completions then go to a port where nothing listens
        settings = _settings(intent_data, tmp_path / "f", llm.base_url, max_retries=0, timeout=2, limit=2, selectors=("random",))
        from icl_fungi.evaluation.llm import LLMClient, ResponseCache

        client = LLMClient("http://127.0.0.1:9/v1", model="fake", max_retries=0, timeout=2, cache=ResponseCache(tmp_path / "c.jsonl"))
        with pytest.raises(RuntimeError, match="rerun to resume"):
            run_icl_eval(settings, client=client)
    assert not (tmp_path / "f").exists()  # no reply, no report: no folder
