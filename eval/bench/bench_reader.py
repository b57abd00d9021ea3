"""How fast does the in-process reader answer, against the embedded llama.cpp server, on this machine?

The same ``--n`` prompts (exported from a committed run: by default the full-pool k = 20 run of the learning curve,
the prompts ``make eval`` sends) are answered by the embedded server (one request at a time, as the eval sends them)
and by ``TransformersReader`` at each ``--batch-sizes`` (sorted by length), each in a fresh process with no cache.
Reports requests per second, the ratio to the server, the model's load seconds, the peak RSS of the process that
holds the model (the server's, or the reader's), and the share of replies identical to the server's.

    python eval/bench/bench_reader.py --n 64 --batch-sizes 1,8,32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import DEFAULT_DATA, RESULTS, ROOT, markdown_table, run_meta, write_results

PROMPTS = ROOT / "runs" / "reader-export" / "all.jsonl"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: the arguments after the script, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--prompts", default=str(PROMPTS), help="an exported prompt file (default: made by eval/reader/fidelity.py)")
    ap.add_argument("--n", type=int, default=64, help="prompts answered by each reader (default: 64)")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads of both (default: all cores)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one reader in this process
    ap.add_argument("--out", default=str(RESULTS / "bench" / "bench_reader.json"))
    return ap.parse_args(argv)


def prompts(path: str, n: int) -> list[str]:
    """The first ``n`` distinct prompts of an exported file."""
    seen: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            p = json.loads(line)["prompt"]
            seen.setdefault(p, p)
            if len(seen) == n:
                break
    return list(seen)


class PeakRSS:
    """Samples a process's resident memory every 50 ms; ``peak`` in MiB."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.proc, self.peak, self._stop = psutil.Process(pid), 0.0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss / 2**20)
            except Exception:  # noqa: BLE001 - the process ended
                return
            time.sleep(0.05)

    def __enter__(self) -> PeakRSS:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join()


def run_one(kind: str, texts: list[str], threads: int) -> dict:
    """Answer ``texts`` with one reader in this process: ``server`` or ``reader:BATCH``."""
    import torch

    from icl_fungi.evaluation.dispatch import send_all
    from icl_fungi.evaluation.llm import LLMClient, LocalServer
    from icl_fungi.evaluation.reader import TransformersReader

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    if kind == "server":
        with LocalServer(n_threads=threads) as server, PeakRSS(server.proc.pid) as rss:
            client = LLMClient(server.base_url, model=server.model, endpoint_id=server.endpoint_id)
            load = time.perf_counter() - t0
            t1 = time.perf_counter()
            replies = send_all(client, texts, show_progress=False)
            took = time.perf_counter() - t1
    else:
        with PeakRSS(os.getpid()) as rss:
            reader = TransformersReader(batch_size=int(kind.split(":")[1]))
            reader.check()
            load = time.perf_counter() - t0
            t1 = time.perf_counter()
            replies = send_all(reader, texts, show_progress=False)
            took = time.perf_counter() - t1
    return {"reader": kind, "n": len(texts), "answer_s": round(took, 2), "req_per_s": round(len(texts) / took, 3),
            "load_s": round(load, 1), "peak_rss_mib": round(rss.peak), "prompt_tokens": sum(r.prompt_tokens for r in replies),
            "replies": [r.text for r in replies]}


def main() -> None:
    args = parse_args()
    texts = prompts(args.prompts, args.n)
    if args.one:
        print(json.dumps(run_one(args.one, texts, args.threads)))
        return
    rows = []
    for kind in ["server", *(f"reader:{b}" for b in args.batch_sizes.split(","))]:
        cmd = [sys.executable, __file__, "--one", kind, "--prompts", args.prompts, "--n", str(args.n), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print({k: v for k, v in rows[-1].items() if k != "replies"}, flush=True)
    server = rows[0]
    for r in rows:
        r["vs server"] = round(r["req_per_s"] / server["req_per_s"], 2)
        r["identical to server"] = sum(a == b for a, b in zip(r["replies"], server["replies"], strict=True)) / len(texts)
    cols = ["reader", "n", "req_per_s", "vs server", "answer_s", "load_s", "peak_rss_mib", "identical to server", "prompt_tokens"]
    write_results(Path(args.out), {"meta": run_meta(n=args.n, prompts=Path(args.prompts).name, threads=args.threads,
                                                    batch_sizes=args.batch_sizes), "rows": rows},
                  title=f"In-process reader against the llama.cpp server, {args.n} prompts, {args.threads} threads",
                  table=markdown_table(rows, cols, digits=3))


if __name__ == "__main__":
    main()
