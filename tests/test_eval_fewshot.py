"""Few-shot pools (`--per-label`), the BM25 and other-encoder selectors, and the reader-in-the-loop figures."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from icl_fungi.cli import build_parser
from icl_fungi.evaluation.harness import run_icl_eval
from icl_fungi.evaluation.selectors import parse_selector
from icl_fungi.evaluation.splits import sample_per_label

from .conftest import DATA
from .llm_fakes import FakeLLM
from .llm_fakes import eval_settings as _settings


def test_sample_per_label_is_seeded_and_keeps_small_labels_whole():
    labels = ["a"] * 10 + ["b"] * 2 + ["c"] * 5
    texts = [f"t{i}" for i in range(len(labels))]
    t1, l1 = sample_per_label(texts, labels, 3, seed=0)
    assert Counter(l1) == {"a": 3, "b": 2, "c": 3} and sample_per_label(texts, labels, 3, seed=0) == (t1, l1)
    assert sample_per_label(texts, labels, 3, seed=1)[0] != t1  # another seed, another pool
    assert t1 == sorted(t1, key=texts.index)  # pool order kept


def test_per_label_pool_bm25_and_reader_figures(intent_data, tmp_path):
    specs = ("fungi", "embedding", "bm25", "random")
    with FakeLLM() as llm:  # answers with the label of the last example, i.e. the most similar one
        report = run_icl_eval(_settings(intent_data, tmp_path / "few", llm.base_url, selectors=specs, per_label=3, pool_seed=1,
                                        k=3, limit=12))
        again = run_icl_eval(_settings(intent_data, tmp_path / "few2", llm.base_url, selectors=("embedding",), per_label=3,
                                       pool_seed=1, k=3, limit=12))
    s = report["settings"]
    assert (s["per_label"], s["pool_seed"], s["pool_size"]) == (3, 1, 36) and report["data"]["n_test"] == 36
    rec = [r for r in report["records"] if r["selector"] == "embedding"]
    assert [r["examples"] for r in rec] == [r["examples"] for r in again["records"]]  # same pool, same queries
    assert max(max(r["examples"]) for r in report["records"]) < 36  # indices into the 36-example pool
    for name in specs:
        m = report["selectors"][name]
        assert {"1nn_acc", "p@3", "gold_in_top3", "knn3_vote_acc"} <= set(m["retrieval"])
        assert m["answers_nearest_label"] == 1.0  # the fake copies the nearest example, and the figure says so
    configs = report["selector_configs"]
    assert configs["bm25"]["build_s"] >= 0 and configs["fungi"]["build_s"] > 0 and configs["random"] is None
    assert configs["fungi"]["model_load_s"] >= 0 and "model_load_s" not in configs["bm25"]  # build cost without loading
    assert configs["embedding"]["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    md = (tmp_path / "few" / "report.md").read_text()
    assert "- pool: 3 examples per label (seed 1), 36 examples" in md and "| bm25 |" in md and "copies nearest" in md
    assert "· pool: 3 examples per label (seed 1), 36 examples ·" in (tmp_path / "few" / "report.html").read_text()
    assert json.loads((tmp_path / "few" / "report.json").read_text())["run_key"]["per_label"] == 3


def test_bm25_ranks_by_words():
    from icl_fungi.evaluation.bm25 import BM25Pool

    pool = BM25Pool(["my card never arrived", "top up failed again", "how long does card delivery take", "exchange rate"])
    (first,) = pool.retrieve_batch(["card delivery time"], k=2)
    assert [i for i, _ in first] == [2, 0] and first[0][1] > first[1][1] > 0
    (none,) = pool.retrieve_batch(["zzz qqq"], k=2)  # no known word: still k examples
    assert len(none) == 2 and all(s == 0 for _, s in none)


def test_selector_specs_for_baselines():
    assert parse_selector("mp=embedding;model=some/folder").model == "some/folder"
    assert parse_selector("bm25").base == "bm25"
    with pytest.raises(ValueError, match="the bm25 selector takes only 'order'"):
        parse_selector("x=bm25;w.kl=1")
    args = build_parser().parse_args(["eval", "--data", str(DATA), "--out", "o", "--per-label", "5", "--pool-seed", "2"])
    assert (args.per_label, args.pool_seed) == (5, 2)


@pytest.mark.slow  # three eval runs in subprocesses (about a minute)
def test_learning_curve_script_draws_every_size(intent_data, tmp_path):
    """eval/icl/learning_curve.py runs one eval per pool size on the same queries and draws them into one PNG and page."""
    import subprocess
    import sys

    from .conftest import ROOT

    with FakeLLM() as llm:
        subprocess.run([sys.executable, str(ROOT / "eval" / "icl" / "learning_curve.py"), "--data", str(intent_data), "--selectors",
                        "embedding,bm25", "--sizes", "2,5,all", "-k", "4", "--limit", "10", "--base-url", llm.base_url,
                        "--cache", str(tmp_path / "cache.jsonl"), "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "curve"),
                        "--eval-args", "--timeout 30 --max-retries 1"],
                       check=True, capture_output=True, timeout=600)
    report_all = json.loads((tmp_path / "runs" / "per-label-all" / "report.json").read_text())
    assert str(tmp_path / "cache.jsonl") in report_all["command"]  # another data set: size 'all' shares --cache
    assert "--timeout 30 --max-retries 1 --out" in report_all["command"]  # --eval-args reach every eval call
    curve = json.loads((tmp_path / "curve" / "curve.json").read_text())
    assert (curve["meta"]["eval_args"], curve["meta"]["k_rule"]) == (["--timeout", "30", "--max-retries", "1"], "min")
    assert "k = min(4, N)" in (tmp_path / "curve" / "curve.md").read_text()
    rows = curve["rows"]
    assert [(r["per label"], r["k"], r["selector"]) for r in rows] == [
        ("2", 2, "embedding"), ("2", 2, "bm25"), ("5", 4, "embedding"), ("5", 4, "bm25"), ("all", 4, "embedding"), ("all", 4, "bm25")]
    assert all(r["n"] == 10 and r["ci95"][0] <= r["accuracy"] <= r["ci95"][1] for r in rows)
    assert (tmp_path / "curve" / "curve.png").stat().st_size > 1000
    assert "data:image/png;base64," in (tmp_path / "curve" / "curve.html").read_text()


@pytest.mark.slow  # one eval run in a subprocess
def test_milios_table_script_sets_ours_beside_the_published_figures(intent_data, tmp_path):
    """eval/icl/milios_table.py: one row per selector (accuracy, paired difference, 1-NN, build s) and the published anchors."""
    import subprocess
    import sys

    from .conftest import ROOT

    with FakeLLM() as llm:
        subprocess.run([sys.executable, str(ROOT / "eval" / "icl" / "milios_table.py"), "--data", str(intent_data), "--per-label", "5",
                        "--limit", "8", "--selectors", "embedding,bm25", "--base-url", llm.base_url, "--cache",
                        str(tmp_path / "cache.jsonl"), "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")],
                       check=True, capture_output=True, timeout=600)
    result = json.loads((tmp_path / "out" / f"{intent_data.name}-5pl.json").read_text())
    assert [r["selector"] for r in result["rows"]] == ["embedding", "bm25"]
    assert all(r["n"] == 8 and 0 <= r["1-NN %"] <= 100 and r["build s"] >= 0 for r in result["rows"])
    assert result["rows"][0]["vs embedding (95 % CI), McNemar p"] == "" and "pt (" in result["rows"][1]["vs embedding (95 % CI), McNemar p"]
    assert result["meta"]["settings"]["per_label"] == 5 and result["meta"]["settings"]["k"] == 5
    md = (tmp_path / "out" / f"{intent_data.name}-5pl.md").read_text()
    assert "| SBERT 1-NN | 78.41 |" in md and "their split and pool, not ours" in md
