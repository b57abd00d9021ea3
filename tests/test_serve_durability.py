"""Nothing acknowledged is lost: the add log (torn tails, damage, the lock, exactly-once replay), ``kill -9``
during a stream of adds and a restart (slow tier), ``icl-fungi compact``, and SIGTERM letting requests in flight
finish, then folding the log into the saved retriever."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from icl_fungi import ICLRetriever
from icl_fungi.cli import main
from icl_fungi.features import DEFAULT_MODEL
from icl_fungi.serve.wal import AddLog, log_dir, replay

from .serve_helpers import ServerProcess, app_ready

pytest.importorskip("fastapi")


class Pool:
    """Stands in for an ICLRetriever in replay: texts, labels, ``add_examples`` giving the next positions."""

    def __init__(self, texts: list[str], *, pairs: bool = False) -> None:
        self.texts = list(texts)
        self.labels = None if pairs else ["old"] * len(texts)
        self.outputs = [f"out {t}" for t in texts] if pairs else None

    def __len__(self) -> int:
        return len(self.texts)

    def add_examples(self, texts: list[str], labels: list | None, outputs: list[str] | None = None) -> list[int]:
        assert (labels is None) == (self.labels is None) and (outputs is None) == (self.outputs is None)
        start = len(self.texts)
        self.texts += texts
        if labels is not None:
            self.labels += labels
        if outputs is not None:
            self.outputs += outputs
        return list(range(start, len(self.texts)))


def test_the_log_lives_beside_the_retriever_and_survives_a_torn_last_record(tmp_path):
    retriever_dir = tmp_path / "pool.icl"
    assert log_dir(retriever_dir) == tmp_path / "pool.icl.wal"
    with AddLog.open(retriever_dir) as log:
        a = log.append(3, ["one", "two"], ["x", 1])
        b = log.append(5, ["three"], ["y"])
        log.abort(b)  # logged, then failed before it was acknowledged
        c = log.append(5, ["four"], ["z"])
    path = log_dir(retriever_dir) / "adds.log"
    intact = path.read_bytes()
    with path.open("ab") as fh:
        fh.write(b'0badc0de {"op":"add","seq":9,"start":6,"texts":["torn')  # a crash mid-write
    with AddLog.open(retriever_dir) as log:
        got = [(r.seq, r.start, r.texts, r.labels) for r in log.pending()]
        assert got == [(a.seq, 3, ["one", "two"], ["x", 1]), (c.seq, 5, ["four"], ["z"])]
        assert path.read_bytes() == intact  # the torn record was cut off
        assert log.append(6, ["five"], ["z"]).seq == c.seq + 1
        log.reset()
        assert log.pending() == [] and log.append(6, ["six"], ["z"]).seq == c.seq + 2  # sequence numbers keep counting


def test_a_damaged_record_before_the_last_or_a_foreign_file_is_refused(tmp_path):
    with AddLog.open(tmp_path / "r") as log:
        log.append(0, ["alpha"], ["x"])
        log.append(1, ["beta"], ["x"])
    path = log_dir(tmp_path / "r") / "adds.log"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + lines[1].replace(b"alpha", b"alphA") + lines[2])
    with pytest.raises(ValueError, match="record 2 of 3 is damaged"):
        AddLog.open(tmp_path / "r")
    path.write_bytes(b'00000000 {"op":"header"}\n')
    with pytest.raises(ValueError, match="not an icl-fungi add log"):
        AddLog.open(tmp_path / "r")


def test_one_process_at_a_time_holds_the_log(tmp_path):
    with AddLog.open(tmp_path / "r"):
        with pytest.raises(ValueError, match="in use by another process"):
            AddLog.open(tmp_path / "r")
    with AddLog.open(tmp_path / "r") as log:  # released on close
        assert log.pending() == []


def test_replay_applies_each_logged_add_exactly_once(tmp_path):
    with AddLog.open(tmp_path / "r") as log:
        log.append(2, ["c", "d"], ["new", "new"])
        log.append(4, ["e"], [7])
        records = log.pending()
    pool = Pool(["a", "b"])
    assert replay(pool, records) == 3 and pool.texts == ["a", "b", "c", "d", "e"] and pool.labels[-1] == 7
    # a compaction saved the pool, then crashed before emptying the log: the records are there already
    assert replay(pool, records) == 0 and pool.texts == ["a", "b", "c", "d", "e"]
    half = Pool(["a", "b"])
    half.add_examples(["c", "d"], ["new", "new"])  # saved after the first record only
    assert replay(half, records) == 1 and half.texts == ["a", "b", "c", "d", "e"]
    with pytest.raises(ValueError, match="another retriever"):
        replay(Pool(["a", "b", "X", "d"]), records)
    with pytest.raises(ValueError, match="starts at position 2 but the pool holds 1"):
        replay(Pool(["a"]), records)


def test_replay_carries_the_outputs_of_a_pool_of_pairs(tmp_path):
    with AddLog.open(tmp_path / "r") as log:
        log.append(1, ["b", "c"], None, ["out b", "a long output\nover two lines"])
        records = log.pending()
    with AddLog.open(tmp_path / "r") as log:  # read back from the file
        assert [(r.labels, r.outputs) for r in log.pending()] == [(None, ["out b", "a long output\nover two lines"])]
    pool = Pool(["a"], pairs=True)
    assert replay(pool, records) == 2 and pool.outputs == ["out a", "out b", "a long output\nover two lines"]
    assert replay(pool, records) == 0  # already there, outputs equal
    other = Pool(["a"], pairs=True)
    other.add_examples(["b", "c"], None, ["out b", "another output"])
    with pytest.raises(ValueError, match="another retriever"):
        replay(other, records)


def test_compact_needs_a_saved_retriever_and_leaves_a_never_served_one_alone(fungi_retriever, tmp_path, capsys):
    assert main(["-q", "compact", str(tmp_path / "nothing")]) == 2
    assert "not a saved retriever" in capsys.readouterr().err and not log_dir(tmp_path / "nothing").exists()
    path, _ = _saved_copy(fungi_retriever, tmp_path)
    assert main(["-q", "compact", str(path)]) == 0
    assert "folded 0 add record(s)" in capsys.readouterr().out and not log_dir(path).exists()


def _saved_copy(fungi_retriever, tmp_path: Path) -> tuple[Path, int]:
    path = fungi_retriever.save(tmp_path / "pool.icl")
    return path, len(json.loads((path / "pool.json").read_text())["texts"])


def _stream_adds(url: str, acked: list[str], unknown: list[str]) -> None:
    """Add two examples per request until the server goes away; acknowledged texts into ``acked``."""
    with httpx.Client(base_url=url, timeout=120) as client:
        for i in itertools.count():
            texts = [f"streamed example {i}a about a lost card", f"streamed example {i}b about a refund"]
            try:
                r = client.post("/v1/examples", json={"texts": texts, "labels": ["lost_card", "refund"]})
            except httpx.TransportError:
                unknown.extend(texts)
                return
            assert r.status_code == 200, r.text
            acked.extend(texts)


@pytest.mark.slow  # two server starts and a compaction: about 40 s on 2 cores
def test_kill_9_during_a_stream_of_adds_then_restart_keeps_every_acknowledged_example_once(fungi_retriever, st_model, tmp_path,
                                                                                               capsys):
    path, base = _saved_copy(fungi_retriever, tmp_path)
    first = ServerProcess(path)
    first.wait_ready()
    acked: list[str] = []
    unknown: list[str] = []
    stream = threading.Thread(target=_stream_adds, args=(first.url, acked, unknown))
    stream.start()
    deadline = time.monotonic() + 180
    while len(acked) < 12 and time.monotonic() < deadline and stream.is_alive():
        time.sleep(0.05)
    first.kill()  # while the stream is still sending
    stream.join(60)
    assert len(acked) >= 12 and unknown, "the stream should have been cut mid-flight"
    second = ServerProcess(path)
    ready = second.wait_ready()  # the log is replayed at start
    assert ready["pool_size"] - base - len(acked) in (0, 2)  # the add in flight at the kill may have been logged
    found = httpx.post(f"{second.url}/v1/retrieve", json={"query": acked, "k": 1}, timeout=120).json()["results"]
    assert [row[0]["text"] for row in found] == acked
    second.kill()  # a second crash after the replay, before any compaction
    assert main(["-q", "compact", str(path), "--model", DEFAULT_MODEL]) == 0
    assert "folded" in capsys.readouterr().out
    texts = ICLRetriever.load(path, model=st_model).texts
    counts = Counter(texts)
    assert [counts[t] for t in acked] == [1] * len(acked)
    assert {counts[t] for t in unknown} <= {0, 1} and len(texts) == base + len(acked) + sum(counts[t] for t in unknown)
    with AddLog.open(path) as log:
        assert log.pending() == []


def _in_flight(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith("icl_fungi_requests_in_flight ")))


def test_sigterm_lets_requests_in_flight_finish_then_folds_the_log(fungi_retriever, st_model, tmp_path, capsys):
    path, base = _saved_copy(fungi_retriever, tmp_path)
    server = ServerProcess(path, "--gather-ms", "1000")  # a query waits up to 1 s for company: long enough to be in flight
    server.wait_ready()
    added = httpx.post(f"{server.url}/v1/examples", json={"texts": ["a brand new example"], "labels": ["new"]}, timeout=120)
    assert added.status_code == 200 and added.json()["ids"] == [base]
    assert main(["-q", "compact", str(path), "--model", DEFAULT_MODEL]) == 2  # not while the server holds the log
    assert "in use" in capsys.readouterr().err
    answer: dict = {}
    asking = threading.Thread(target=lambda: answer.update(r=httpx.post(f"{server.url}/v1/retrieve",
                                                                         json={"query": "my card has not arrived", "k": 3}, timeout=120)))
    asking.start()
    deadline = time.monotonic() + 30
    while _in_flight(server.url) < 2 and time.monotonic() < deadline:  # the scrape itself is one
        time.sleep(0.02)
    server.proc.send_signal(signal.SIGTERM)
    asking.join(60)
    assert answer["r"].status_code == 200 and len(answer["r"].json()["examples"]) == 3
    assert server.proc.wait(60) == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/healthz", timeout=5)
    assert ICLRetriever.load(path, model=st_model).texts[base:] == ["a brand new example"]  # folded into the saved retriever
    with AddLog.open(path) as log:
        assert log.pending() == []
    assert "Traceback" not in server.output()


def _post(url: str, body: dict, key: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/examples", json=body, headers={"Idempotency-Key": key}, timeout=120)


@pytest.mark.slow  # two server starts: 15 s (idle) to 40 s (busy) on 2 cores
def test_a_retry_after_a_kill_between_the_log_and_the_reply_adds_once(fungi_retriever, st_model, tmp_path):
    from fastapi.testclient import TestClient

    from icl_fungi.serve import ServeSettings, create_app
    from icl_fungi.serve.service import FAULT_ENV

    path, base = _saved_copy(fungi_retriever, tmp_path)
    one = {"texts": ["my card was swallowed by the machine"], "labels": ["lost_card"]}
    two = {"texts": ["a refund for a double charge", "refund my duplicate payment"], "labels": ["refund", "refund"]}
    first = ServerProcess(path, env={FAULT_ENV: "after-log"})  # dies once the add is logged and fsynced
    first.wait_ready()
    with pytest.raises(httpx.TransportError):
        _post(first.url, one, "retry-1")
    assert first.proc.wait(60) == -signal.SIGKILL and "killing the server" in first.output()
    second = ServerProcess(path, env={FAULT_ENV: "before-reply"})  # dies with its first new add in the pool, unacknowledged
    second.wait_ready()
    again = _post(second.url, one, "retry-1")  # the replayed log knows the key
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == {"ids": [base], "seq": 0, "pool_size": base + 1}
    with pytest.raises(httpx.TransportError):
        _post(second.url, two, "retry-2")
    assert second.proc.wait(60) == -signal.SIGKILL
    second.kill()
    with TestClient(create_app(ServeSettings(path, model=st_model))) as c:  # restart: both retries answer as the first tries would have
        app_ready(c)
        replies = [c.post("/v1/examples", json=body, headers={"Idempotency-Key": key})
                   for body, key in ((one, "retry-1"), (two, "retry-2"))]
        assert [r.json()["ids"] for r in replies] == [[base], [base + 1, base + 2]] and [r.json()["seq"] for r in replies] == [0, 1]
        reused = c.post("/v1/examples", json=two, headers={"Idempotency-Key": "retry-1"})
        assert reused.status_code == 422 and "retry-1" in reused.json()["error"]["message"]
    texts = ICLRetriever.load(path, model=st_model).texts  # the clean exit folded the log into the saved retriever
    assert texts[base:] == one["texts"] + two["texts"]
    with TestClient(create_app(ServeSettings(path, model=st_model, compact_on_exit=False))) as c:  # keys outlive the compaction
        app_ready(c)
        late = c.post("/v1/examples", json=two, headers={"Idempotency-Key": "retry-2"})
        assert late.json()["ids"] == [base + 1, base + 2] and late.headers["idempotent-replayed"] == "true"
        assert c.get("/readyz").json()["pool_size"] == base + 3


@pytest.mark.slow  # a build and four server starts: about 1 min on 2 idle cores, 2.5 min on busy ones
def test_a_short_kill_9_storm_loses_and_duplicates_nothing(tmp_path):
    """eval/bench/storm_serve.py for 3 cycles (its committed result has 20): kill -9 during concurrent adds and queries."""
    out = tmp_path / "storm.json"
    root = Path(__file__).resolve().parents[1]
    script = root / "eval" / "bench" / "storm_serve.py"
    done = subprocess.run([sys.executable, str(script), "--cycles", "3", "--max-run", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    final = result["final"]
    assert result["passes"] and len(result["cycles"]) == 3 and final["acked_adds"] > 0
    assert final["acked_lost"] == final["acked_duplicated"] == final["acked_misplaced"] == final["unacked_duplicated"] == 0
    assert all(row["missing"] == row["doubled"] == 0 for row in result["cycles"])
    assert result["clients"].get("queries answered 200", 0) > 0 and result["clients"].get("add replies cut off by a kill", 0) > 0
