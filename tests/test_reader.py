"""The in-process reader (``icl-fungi eval --reader transformers``): batched greedy generation, stop strings, the
response cache and resume, the tokenizer check; a fake model in the fast tier, the embedded Gemma in the slow one."""

from __future__ import annotations

import json
import os

import pytest

from icl_fungi.cli import main
from icl_fungi.evaluation.llm import ResponseCache
from icl_fungi.evaluation.reader import TokenizerMismatch, TransformersReader, check_tokenizer
from tests.reader_fakes import write_fake_model

PROMPTS = ["Query: where is my card", "Query: top up failed\nIntent:", "Query: my pin is blocked ?",
           "Query: the exchange rate\nIntent: exchange", "Query: a cash fee", "Query: refund\nIntent: refund _",
           "Classify : card arrival\nQuery: where is my card ?\nIntent: card _ arrival\n\nQuery: card\nIntent:"]


@pytest.fixture(scope="module")
def fake_model(tmp_path_factory):
    return write_fake_model(tmp_path_factory.mktemp("fake-lm"))


def _texts(reader: TransformersReader, prompts: list[str]) -> list[str]:
    out: dict[int, str] = {}
    for batch in reader.answer(prompts):
        out.update((i, r.text) for i, r in batch)
    return [out[i] for i in range(len(prompts))]


def test_batches_answer_as_single_prompts(fake_model):
    one = _texts(TransformersReader(fake_model, batch_size=1, stop=()), PROMPTS)
    many = _texts(TransformersReader(fake_model, batch_size=4, stop=()), PROMPTS)
    assert one == many  # left padding changes nothing
    assert len(set(one)) > 1 and all(one)


def test_stop_string_cuts_the_reply_where_the_server_would(fake_model):
    free = _texts(TransformersReader(fake_model, batch_size=3, stop=(), max_tokens=12), PROMPTS)
    word = free[0].split()[1] if len(free[0].split()) > 1 else free[0].strip()
    cut = _texts(TransformersReader(fake_model, batch_size=3, stop=(word,), max_tokens=12), PROMPTS)
    for f, c in zip(free, cut, strict=True):
        assert c == (f[: f.index(word)] if word in f else f)
    assert any(word in f for f in free)


def test_cache_endpoint_id_and_resume(fake_model, tmp_path):
    cache = ResponseCache(tmp_path / "c.jsonl")
    reader = TransformersReader(fake_model, batch_size=4, cache=cache)
    assert reader.endpoint_id.startswith(f"transformers:{fake_model.name}:sha256=")
    assert ":float32:cpu:transformers-" in reader.endpoint_id and ",torch-" in reader.endpoint_id
    first = [reader.complete(p) for p in PROMPTS[:3]]
    assert reader.requests_sent == 3 and not any(r.cached for r in first)
    again = TransformersReader(fake_model, batch_size=4, cache=ResponseCache(tmp_path / "c.jsonl"))
    assert [again.complete(p).text for p in PROMPTS[:3]] == [r.text for r in first]
    assert again.requests_sent == 0
    other = TransformersReader(fake_model, cache=ResponseCache(tmp_path / "c.jsonl"), endpoint_id="elsewhere")
    assert not other.is_cached(PROMPTS[0])  # another endpoint's replies never answer for this one


def test_bad_arguments_are_refused(fake_model):
    with pytest.raises(ValueError, match="batch_size"):
        TransformersReader(fake_model, batch_size=0)
    with pytest.raises(ValueError, match="dtype"):
        TransformersReader(fake_model, dtype="int8")
    with pytest.raises(ValueError, match="no such file"):
        TransformersReader("./no/such/model.gguf")


def test_check_tokenizer_names_what_differs(fake_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(fake_model)
    text = "where is my card"
    good = {text: tok(text)["input_ids"]}
    assert check_tokenizer(tok, good) is None
    problem = check_tokenizer(tok, {text: [2, *good[text], 7]})
    assert "4 tokens" in problem and "gives 6" in problem


def test_eval_with_the_reader_end_to_end_and_resumes(fake_model, intent_data, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["-q", "eval", "--data", str(intent_data), "--selectors", "embedding,random", "--limit", "6", "-k", "3",
            "--reader", "transformers", "--reader-model", str(fake_model), "--batch-size", "4", "--out", str(out)]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["endpoint"]["id"].startswith("transformers:") and "in-process" in report["endpoint"]["host"]
    assert report["requests_sent"] == 12 and report["run_key"]["reader"] == "transformers"
    assert main(argv) == 0  # a rerun answers from the cache
    again = json.loads((out / "report.json").read_text())
    assert again["requests_sent"] == 0
    assert [r["reply"] for r in again["records"]] == [r["reply"] for r in report["records"]]


def test_export_prompts_then_report_replies_cached_elsewhere(fake_model, intent_data, tmp_path):
    """--export-prompts writes the prompts and sends nothing; another machine answers them into a cache; --cached-only
    with its --endpoint-id draws the report."""
    export = tmp_path / "prompts.jsonl"
    base = ["-q", "eval", "--data", str(intent_data), "--selectors", "embedding", "--limit", "4", "-k", "2"]
    assert main([*base, "--export-prompts", str(export), "--out", str(tmp_path / "x")]) == 0
    rows = [json.loads(line) for line in export.read_text().splitlines()]
    assert len(rows) == 4 and all(r["reply"] is None for r in rows) and not (tmp_path / "x").exists()
    cache = ResponseCache(tmp_path / "elsewhere.jsonl")
    remote = TransformersReader(fake_model, cache=cache, endpoint_id="gpu-box")
    for batch in remote.answer([r["prompt"] for r in rows]):
        assert batch
    assert main([*base, "--reader", "transformers", "--reader-model", str(fake_model), "--cached-only", "--cache",
                 str(tmp_path / "elsewhere.jsonl"), "--endpoint-id", "gpu-box", "--out", str(tmp_path / "rep")]) == 0
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["endpoint"]["id"] == "gpu-box" and report["selectors"]["embedding"]["n"] == 4


def test_reader_flags_are_checked_before_anything_loads(intent_data, tmp_path, capsys):
    base = ["-q", "eval", "--data", str(intent_data), "--out", str(tmp_path / "o")]
    assert main([*base, "--reader", "transformers", "--base-url", "http://127.0.0.1:9/v1", "--model", "m"]) == 2
    assert "--reader answers in process" in capsys.readouterr().err
    assert main([*base, "--reader-model", "x.gguf"]) == 2
    assert "need --reader transformers" in capsys.readouterr().err
    assert main([*base, "--reader", "transformers", "--batch-size", "0"]) == 2


# ----------------------------------------------------------------- slow: the embedded Gemma 3 270M GGUF
@pytest.mark.slow
def test_gemma_reader_refuses_a_wrong_tokenizer():
    pytest.importorskip("gguf")
    from icl_fungi.features import DEFAULT_MODEL, resolve_model

    wrong = resolve_model(DEFAULT_MODEL)  # all-MiniLM-L6-v2's folder: a WordPiece tokenizer, not Gemma's
    folder = wrong if isinstance(wrong, str | os.PathLike) else DEFAULT_MODEL
    reader = TransformersReader(tokenizer=folder)
    with pytest.raises(TokenizerMismatch, match="does not tokenize as the GGUF file's own"):
        reader.check()


@pytest.mark.slow
def test_gemma_reader_answers_as_the_llama_cpp_server_did(banking_train, tmp_path):
    """Eight banking-77 prompts (5 per label, k 5) whose llama.cpp replies the committed cache holds: the reader
    gives the same replies (one may differ: float32 here against llama.cpp's quantised kernels)."""
    pytest.importorskip("gguf")
    from pathlib import Path

    from tests.conftest import BANKING77

    cache = Path(__file__).resolve().parents[1] / "eval" / "cache" / "banking77-gemma3-270m-fewshot-completion.jsonl"
    export = tmp_path / "p.jsonl"
    assert main(["-q", "eval", "--data", str(BANKING77), "--selectors", "embedding", "--per-label", "5", "-k", "5",
                 "--limit", "1000", "--cache", str(cache), "--export-prompts", str(export), "--out", str(tmp_path / "x")]) == 0
    rows = [r for r in map(json.loads, export.read_text().splitlines()) if r["reply"] is not None][:8]
    assert len(rows) == 8
    reader = TransformersReader(batch_size=4, cache=ResponseCache(tmp_path / "c.jsonl"))
    got = _texts(reader, [r["prompt"] for r in rows])
    same = sum(g == r["reply"] for g, r in zip(got, rows, strict=True))
    assert same >= len(rows) - 1, list(zip(got, [r["reply"] for r in rows], strict=True))
