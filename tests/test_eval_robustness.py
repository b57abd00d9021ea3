"""The evaluation never dies at its last step, stops on the first Ctrl-C, fails fast and never overwrites results."""

from __future__ import annotations

import csv
import json
import re
import signal
import time

import pytest

from icl_fungi import ICLRetriever
from icl_fungi.evaluation.harness import run_icl_eval
from icl_fungi.evaluation.llm import ResponseCache

from .conftest import DATA
from .helpers import eval_command, start_until_cached
from .llm_fakes import FakeLLM
from .llm_fakes import eval_settings as _settings


def _gold() -> dict[str, str]:
    with (DATA / "intents-test.csv").open(newline="") as fh:
        return {r["text"]: r["intent"] for r in csv.DictReader(fh)}


def _query(prompt: str) -> str:
    return re.findall(r"Query: (.*)\n", prompt)[-1]


@pytest.mark.parametrize(("case", "limit"), [("all right", 6), ("all wrong", 6), ("one query", 1)])
def test_reports_and_plots_at_0_and_100_percent_and_n_1(intent_data, tmp_path, case, limit):
    gold = _gold()
    answer = {"all right": lambda p: " " + gold[_query(p)], "all wrong": lambda p: " lost_card_xyz",
              "one query": lambda p: " " + gold[_query(p)]}[case]
    with FakeLLM(answer=answer) as llm:
        report = run_icl_eval(_settings(intent_data, tmp_path / "o", llm.base_url, limit=limit))
    want = {"all right": 1.0, "all wrong": 0.0, "one query": 1.0}[case]
    for m in report["selectors"].values():
        lo, hi = m["accuracy_ci95"]
        assert m["accuracy"] == want and m["n"] == limit and lo <= m["accuracy"] <= hi
    for name in ("report.json", "report.md", "report.html", "accuracy.png"):
        assert (tmp_path / "o" / name).stat().st_size > 500, name


def test_first_ctrl_c_stops_within_seconds_with_replies_cached(intent_data, tmp_path):
    with FakeLLM(delay=1.0) as llm:
        out = tmp_path / "int"
        cache = out / "responses.jsonl"
        proc = start_until_cached(eval_command(intent_data, out, llm.base_url, "--limit", "30", "--concurrency", "2"), cache, 4)
        proc.send_signal(signal.SIGINT)
        t0 = time.time()
        _, err = proc.communicate(timeout=30)
        stopped_in = time.time() - t0
        n_at_exit = sum(llm.requests.values())
        time.sleep(2.5)  # nothing keeps going after the exit
        assert sum(llm.requests.values()) == n_at_exit
    assert proc.returncode == 130 and "interrupted" in err.decode()
    assert stopped_in < 5, stopped_in
    assert 4 <= len(ResponseCache(cache)) <= n_at_exit < 60  # the queue (60 prompts) was dropped, not drained


def test_a_folder_with_another_runs_report_is_refused(intent_data, tmp_path):
    with FakeLLM() as llm:
        run_icl_eval(_settings(intent_data, tmp_path / "r", llm.base_url, limit=5))
        first = (tmp_path / "r" / "report.json").read_text()
        with pytest.raises(ValueError, match="holds the report of another run"):
            run_icl_eval(_settings(intent_data, tmp_path / "r", llm.base_url, limit=6))
        assert (tmp_path / "r" / "report.json").read_text() == first
        again = run_icl_eval(_settings(intent_data, tmp_path / "r", llm.base_url, limit=5))  # the same run resumes
    assert again["requests_sent"] == 0


def test_a_folder_with_a_users_own_files_or_a_file_is_refused_before_anything_runs(intent_data, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    (mine / "responses.jsonl").write_text("")  # a run's name beside it does not make the folder a run's
    with FakeLLM() as llm:
        with pytest.raises(ValueError, match=r"holds files an icl-fungi eval run does not write \(notes\.txt\)"):
            run_icl_eval(_settings(intent_data, mine, llm.base_url, limit=5))
        (tmp_path / "a-file").write_text("x")
        with pytest.raises(ValueError, match="is a file"):
            run_icl_eval(_settings(intent_data, tmp_path / "a-file", llm.base_url, limit=5))
        assert sum(llm.requests.values()) == 0
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt", "responses.jsonl"] and (mine / "notes.txt").read_text() == "precious"


def test_limit_all_refuses_zero_and_announces_requests(intent_data, tmp_path, capsys, caplog):
    from icl_fungi.cli import main

    with pytest.raises(SystemExit):
        main(["eval", "--data", str(intent_data), "--limit", "0", "--out", str(tmp_path / "z")])
    assert "'all' for the whole test split" in capsys.readouterr().err
    with FakeLLM() as llm, caplog.at_level("INFO"):
        assert main(["eval", "-q", "--data", str(intent_data), "--selectors", "random", "-k", "3", "--limit", "all",
                     "--base-url", llm.base_url, "--model", "fake", "--out", str(tmp_path / "a")]) == 0
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["selectors"]["random"]["n"] == 36 and report["settings"]["limit"] is None
    assert re.search(r"36 prompts: 0 answered from the cache, 36 requests to send", caplog.text)
    assert "HTTP Request" not in caplog.text  # the openai client's per-request logs stay quiet


def test_progress_bars_name_the_retriever_they_build(intent_data, tmp_path, capsys):
    with FakeLLM() as llm:
        run_icl_eval(_settings(intent_data, tmp_path / "b", llm.base_url, selectors=("fungi", "embedding"), limit=3,
                               show_progress=True))
    err = capsys.readouterr().err
    assert "fungi: encoding" in err and "embedding: encoding" in err and "LLM requests" in err


def test_chat_mode_with_a_model_that_answers_no_label_warns(intent_data, tmp_path, caplog):
    with FakeLLM(answer=lambda p: "Sure! Here is what I think about your banking question.") as llm, caplog.at_level("WARNING"):
        run_icl_eval(_settings(intent_data, tmp_path / "c", llm.base_url, mode="chat", limit=12))
    assert re.search(r"\d+ of the first 20 replies are not one of the labels", caplog.text)
    assert "--mode completion" in caplog.text


def test_the_run_size_is_announced_before_any_retriever_is_built(intent_data, tmp_path, caplog, monkeypatch):
    """A build takes minutes on a large pool: the number of prompts comes first. A run that fails before any
    reply leaves no --out folder behind (a folder the user had stays)."""
    with FakeLLM() as llm:
        run_icl_eval(_settings(intent_data, tmp_path / "first", llm.base_url, selectors=("random",)))
        logs_at_build: list[str] = []

        def stop_at_build(self, *args, **kwargs):
            logs_at_build.append(caplog.text)
            raise RuntimeError("stopped at the first retriever build")

        monkeypatch.setattr(ICLRetriever, "fit", stop_at_build)
        for out, cache in ((tmp_path / "new", None), (tmp_path / "cached", str(tmp_path / "first" / "responses.jsonl"))):
            caplog.clear()
            with caplog.at_level("INFO"), pytest.raises(RuntimeError, match="stopped at the first retriever build"):
                run_icl_eval(_settings(intent_data, out, llm.base_url, selectors=("fungi", "embedding", "random"), cache=cache))
            assert not out.exists()
        mine = tmp_path / "mine"
        mine.mkdir()
        with pytest.raises(RuntimeError, match="stopped at the first retriever build"):
            run_icl_eval(_settings(intent_data, mine, llm.base_url, selectors=("embedding",)))
        assert mine.is_dir() and not any(mine.iterdir())
    fresh, cached = logs_at_build[:2]
    assert "3 selectors x 20 queries = 60 prompts; nothing cached yet: up to 60 requests to send; " \
           "first the retrievers of fungi, embedding are built" in fresh
    assert "3 selectors x 20 queries = 60 prompts; the response cache holds 20 replies (20 of the 20 prompts of random)" in cached


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_server_child_dies_with_a_parent_killed_outright(tmp_path):
    """LocalServer starts llama.cpp in its own session, so Ctrl-C never reaches it; when the eval is killed outright
    (SIGKILL, or a wrapper script's Ctrl-C), the kernel must still stop the server: here a ``sleep`` stands in."""
    import subprocess
    import sys

    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        "from icl_fungi.evaluation.llm import _dies_with_parent\n"
        "child = subprocess.Popen(['sleep', '600'], start_new_session=True, preexec_fn=_dies_with_parent())\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n")], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait(timeout=10)

    def alive(pid: int) -> bool:  # a zombie waiting for its reaper counts as gone
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(child):
        import os

        os.kill(child, signal.SIGKILL)
        pytest.fail("the child outlived its killed parent")
