"""A kill -9 storm against ``icl-fungi serve``: ``--cycles`` times, start the server, let concurrent clients add
examples (each add with an ``Idempotency-Key``, retried with the same key after a lost reply) and query, then
``kill -9`` it at a random moment; between cycles, check that every acknowledged add is in the pool exactly
once and that queries answer. At the end a clean stop folds the add log into the saved retriever, which is
loaded here and counted.

Some adds whose reply a kill cut off are abandoned instead of retried ("unacknowledged"): each of those may be
in the pool (it was logged before the kill) but never twice. An acknowledged add must sit at the pool positions
its reply named.

The pool is the test suite's intent set (tests/data/intents-train.csv, 120 texts), so a restart costs little
more than loading the model. Writes eval/results/storm_serve.{json,md}.

    python eval/bench/storm_serve.py [--cycles 20] [--adders 4] [--queriers 4] [--index hnswlib|milvus]
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # eval/: common.py
from common import RESULTS, ROOT, markdown_table, run_meta, write_results

POOL = ROOT / "tests" / "data" / "intents-train.csv"
TOPICS = ["my card has not arrived", "a refund for a purchase", "my transfer is pending", "the exchange rate is wrong",
          "I was charged a fee", "my pin is blocked", "close my account", "I cannot log in"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: the arguments after the script, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=20, help="kill -9 and restart this many times (default: 20)")
    ap.add_argument("--adders", type=int, default=4, help="concurrent clients adding examples (default: 4)")
    ap.add_argument("--queriers", type=int, default=4, help="concurrent clients querying (default: 4)")
    ap.add_argument("--min-run", type=float, default=0.3, help="seconds of load before a kill, at least (default: 0.3)")
    ap.add_argument("--max-run", type=float, default=4.0, help="seconds of load before a kill, at most (default: 4)")
    ap.add_argument("--abandon", type=float, default=0.25,
                    help="share of adds cut off by a kill that the client gives up instead of retrying (default: 0.25)")
    ap.add_argument("--index", choices=("hnswlib", "milvus"), default="hnswlib", help="the pool's index (milvus: milvus-lite)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "storm_serve.json"))
    return ap.parse_args(argv)


class Storm:
    """The shared state of one storm: the server's URL, whether it is up, and what the clients saw."""

    def __init__(self, url: str, args: argparse.Namespace) -> None:
        self.url, self.args = url, args
        self.up = threading.Event()  # set while a server is ready; cleared just before a kill
        self.stop = threading.Event()  # the clients finish what they are doing, then leave
        self.lock = threading.Lock()
        self.acked: dict[str, tuple[list[str], list[int], int]] = {}  # key -> (texts, ids, seq)
        self.abandoned: list[list[str]] = []  # adds whose reply a kill cut off and that were not retried
        self.tally: Counter[str] = Counter()

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.tally[what] += n


def adder(storm: Storm, who: int) -> None:
    """Adds 1-3 examples at a time, each add under its own key, until the storm stops."""
    import httpx

    rng = random.Random(storm.args.seed * 1000 + who)
    i = 0
    while not storm.stop.is_set():
        key = f"storm-{who}-{i}"
        texts = [f"{rng.choice(TOPICS)} (storm add {who}-{i}-{j})" for j in range(rng.randint(1, 3))]
        body = {"texts": texts, "labels": [rng.choice(["storm_a", "storm_b"]) for _ in texts]}
        tries = 0
        while not storm.stop.is_set():
            storm.up.wait(1.0)
            if not storm.up.is_set():
                continue
            tries += 1
            try:
                r = httpx.post(f"{storm.url}/v1/examples", json=body, headers={"Idempotency-Key": key}, timeout=60)
            except httpx.TransportError:
                storm.count("add replies cut off by a kill")
                if rng.random() < storm.args.abandon:
                    with storm.lock:
                        storm.abandoned.append(texts)
                    break
                continue
            if r.status_code == 503:  # loading after a restart, or shedding load: the same add again
                time.sleep(0.05)
                continue
            if r.status_code != 200:
                storm.count(f"add answered {r.status_code}")
                break
            reply = r.json()
            with storm.lock:
                storm.acked[key] = (texts, reply["ids"], reply["seq"])
            storm.count("adds acknowledged")
            if r.headers.get("idempotent-replayed") == "true":
                storm.count("retries replayed from the log (the first try was durable, its reply lost)")
            if tries > 1:
                storm.count("adds acknowledged after a retry")
            break
        i += 1


def querier(storm: Storm, who: int) -> None:
    """Queries while a server is up; transport errors are the kills, any status but 200 and 503 is a failure."""
    import httpx

    rng = random.Random(-1 - who)
    while not storm.stop.is_set():
        storm.up.wait(1.0)
        if not storm.up.is_set():
            continue
        try:
            r = httpx.post(f"{storm.url}/v1/retrieve", json={"query": rng.choice(TOPICS), "k": 5}, timeout=60)
        except httpx.TransportError:
            storm.count("queries cut off by a kill")
            continue
        storm.count("queries answered 200" if r.status_code == 200 else f"queries answered {r.status_code}")


def check_served(url: str, acked: dict[str, tuple[list[str], list[int], int]]) -> dict[str, int]:
    """Every acknowledged text, asked for with k = 2: found first, at the position its reply named, and not twice."""
    import httpx

    wanted = [(t, i) for texts, ids, _ in acked.values() for t, i in zip(texts, ids, strict=True)]
    missing = misplaced = doubled = 0
    with httpx.Client(base_url=url, timeout=120) as c:
        for s in range(0, len(wanted), 64):
            part = wanted[s : s + 64]
            r = c.post("/v1/retrieve", json={"query": [t for t, _ in part], "k": 2})
            r.raise_for_status()
            for (text, pos), row in zip(part, r.json()["results"], strict=True):
                missing += row[0]["text"] != text
                misplaced += row[0]["text"] == text and row[0]["index"] != pos
                doubled += row[1]["text"] == text
    return {"checked": len(wanted), "missing": missing, "misplaced": misplaced, "doubled": doubled}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(path: Path, port: int, log: Path) -> tuple[subprocess.Popen, float]:
    """``icl-fungi serve`` on ``port``; returns it and the seconds until ``/readyz`` said ready."""
    import httpx

    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "icl_fungi.cli", "-q", "serve", str(path), "--port", str(port)],
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)
    while time.perf_counter() - t0 < 600:
        if proc.poll() is not None:
            sys.exit(f"the server exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                return proc, time.perf_counter() - t0
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    sys.exit("the server was not ready after 600 s")


def build(tmp: Path, index: str) -> tuple[Path, int]:
    """The intent pool saved as a retriever (default model, named so the server loads it by name). Run in a child
    process: milvus-lite lets one process at a time open a database file, and holds it until that process ends."""
    from icl_fungi import ICLRetriever
    from icl_fungi.milvus import MilvusIndex

    with POOL.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    extra = {"index": MilvusIndex(str(tmp / "pool.db"), "storm")} if index == "milvus" else {}
    r = ICLRetriever.from_texts([x["text"] for x in rows], [x["intent"] for x in rows], show_progress_bar=False, **extra)
    return r.save(tmp / "pool.icl"), len(r)


def run_cycles(storm: Storm, path: Path, port: int, log: Path) -> list[dict[str, Any]]:
    """Start, check, load, kill -9: ``--cycles`` times. One row per cycle."""
    rng = random.Random(storm.args.seed)
    rows = []
    for cycle in range(1, storm.args.cycles + 1):
        proc, ready_s = start(path, port, log)
        with storm.lock:
            acked = dict(storm.acked)
        check = check_served(storm.url, acked)
        storm.up.set()
        before = storm.tally["adds acknowledged"]
        run_s = rng.uniform(storm.args.min_run, storm.args.max_run)
        time.sleep(run_s)
        storm.up.clear()
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
        rows.append({"cycle": cycle, "ready_s": round(ready_s, 1), **check, "load_s": round(run_s, 2),
                     "acked_in_cycle": storm.tally["adds acknowledged"] - before})
        print(f"cycle {cycle}: ready in {ready_s:.1f} s, {check}, killed after {run_s:.2f} s of load", flush=True)
    return rows


def final_count(storm: Storm, path: Path, base: int) -> dict[str, Any]:
    """Load the saved retriever (after the clean stop folded the log in) and count every add's texts."""
    from icl_fungi import ICLRetriever

    r = ICLRetriever.load(path, show_progress_bar=False)
    texts = r.texts
    counts = Counter(texts)
    acked_texts = [t for ts, _, _ in storm.acked.values() for t in ts]
    at = {t: i for ts, ids, _ in storm.acked.values() for t, i in zip(ts, ids, strict=True)}
    abandoned = [t for ts in storm.abandoned for t in ts]
    known = set(acked_texts) | set(abandoned) | set(texts[:base])
    return {"pool_size": len(texts), "saved_pool": base, "acked_adds": len(storm.acked), "acked_texts": len(acked_texts),
            "acked_lost": sum(counts[t] == 0 for t in acked_texts), "acked_duplicated": sum(counts[t] > 1 for t in acked_texts),
            "acked_misplaced": sum(texts[at[t]] != t for t in acked_texts if at[t] < len(texts)),
            "unacked_adds": len(storm.abandoned), "unacked_texts": len(abandoned),
            "unacked_present": sum(counts[t] == 1 for t in abandoned), "unacked_duplicated": sum(counts[t] > 1 for t in abandoned),
            "unexpected_texts": sum(t not in known for t in texts),
            "index_rows": r.index.rows() if hasattr(r.index, "rows") else len(r.index)}


def main() -> None:
    args = parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="storm_serve-"))
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
            path, base = child.submit(build, tmp, args.index).result()
        port = free_port()
        storm = Storm(f"http://127.0.0.1:{port}", args)
        workers = [threading.Thread(target=adder, args=(storm, i), daemon=True) for i in range(args.adders)]
        workers += [threading.Thread(target=querier, args=(storm, i), daemon=True) for i in range(args.queriers)]
        for w in workers:
            w.start()
        t0 = time.perf_counter()
        rows = run_cycles(storm, path, port, tmp / "server.log")
        proc, _ = start(path, port, tmp / "server.log")  # the last restart: retried adds finish, then a clean stop
        storm.up.set()
        time.sleep(2.0)
        storm.stop.set()
        for w in workers:
            w.join(120)
        storm.up.clear()
        last = check_served(storm.url, dict(storm.acked))
        proc.send_signal(signal.SIGTERM)
        exit_code = proc.wait(300)
        final = {**final_count(storm, path, base), "served_check": last, "clean_stop_exit_code": exit_code,
                 "wall_s": round(time.perf_counter() - t0, 1)}
        report(args, rows, storm, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report(args: argparse.Namespace, rows: list[dict[str, Any]], storm: Storm, final: dict[str, Any]) -> None:
    tally = dict(sorted(storm.tally.items()))
    failures = {k: v for k, v in tally.items() if " answered " in k and not k.endswith(("200", "503"))}
    ok = (final["acked_lost"] == 0 and final["acked_duplicated"] == 0 and final["acked_misplaced"] == 0
          and final["unacked_duplicated"] == 0 and final["unexpected_texts"] == 0 and not failures
          and all(r["missing"] == r["misplaced"] == r["doubled"] == 0 for r in [*rows, final["served_check"]]))
    notes = [f"{args.cycles} cycles of kill -9 at a random moment ({args.min_run}-{args.max_run} s of load), {args.adders} adders "
             f"(Idempotency-Key, retried after a lost reply; {args.abandon:.0%} of those given up instead) and {args.queriers} "
             f"queriers; index {args.index}; the 120-text intent pool. {'PASS' if ok else 'FAIL'}.",
             f"At the end (a clean stop folded the log in, then the saved retriever was loaded and counted): "
             f"{final['acked_adds']} acknowledged adds ({final['acked_texts']} texts): {final['acked_lost']} lost, "
             f"{final['acked_duplicated']} duplicated, {final['acked_misplaced']} not at the positions their reply named; "
             f"{final['unacked_adds']} unacknowledged adds given up ({final['unacked_texts']} texts): {final['unacked_present']} "
             f"present once (logged before the kill), {final['unacked_duplicated']} twice; {final['unexpected_texts']} unexpected "
             f"texts; pool {final['pool_size']} = saved {final['saved_pool']} + acknowledged + present unacknowledged.",
             "Clients saw: " + ", ".join(f"{k}: {v}" for k, v in tally.items()) + ".",
             f"Restart to ready: median {np.median([r['ready_s'] for r in rows]):.1f} s; wall time {final['wall_s']} s; the "
             "machine (2 cores) was shared with other work."]
    payload = {"meta": run_meta(seed=args.seed, cycles=args.cycles, adders=args.adders, queriers=args.queriers,
                                index=args.index, min_run=args.min_run, max_run=args.max_run, abandon=args.abandon),
               "passes": ok, "final": final, "clients": tally, "cycles": rows}
    columns = ["cycle", "ready_s", "checked", "missing", "misplaced", "doubled", "load_s", "acked_in_cycle"]
    write_results(Path(args.out), payload, title="storm_serve: kill -9 storm against icl-fungi serve",
                  table=markdown_table(rows, columns, digits=2), notes="\n\n".join(notes))
    print("\n\n".join(notes))
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
