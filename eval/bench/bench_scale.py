"""Scaling benchmark: build time, index size, peak RSS, query latency and HNSW recall vs pool size.

Pools of 1k / 10k / 100k texts with the default features.
Up to 10,003 texts the pool is a seeded sample of the banking-77 train split; beyond
that, synthetic texts are added by recombining two train sentences of the same intent
(the first half of one with the second half of the other, seeded). Each size runs in
its own process, so its peak RSS is its own. Writes eval/results/bench_scale.{json,md,png}.

    python eval/bench/bench_scale.py [--sizes 1000,10000,100000] [--queries 200]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # eval/: common.py
from common import BASE_WEIGHTS, DEFAULT_DATA, FEATURES_0_3, RESULTS, command_line, load_split, run_meta, write_results


def make_pool(texts: list[str], labels: list[str], n: int, seed: int) -> tuple[list[str], list[str]]:
    """``n`` labelled texts: a sample of the real pool, topped up with same-label recombinations."""
    rng = np.random.default_rng(seed)
    if n <= len(texts):
        idx = np.sort(rng.choice(len(texts), size=n, replace=False))
        return [texts[i] for i in idx], [labels[i] for i in idx]
    out_t, out_l = list(texts), list(labels)
    seen = set(out_t)
    by_label: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by_label.setdefault(lab, []).append(i)
    while len(out_t) < n:
        i = int(rng.integers(len(texts)))
        j = int(rng.choice(by_label[labels[i]]))
        a, b = texts[i].split(), texts[j].split()
        text = " ".join(a[: max(1, len(a) // 2)] + b[len(b) // 2 :])
        if text not in seen:
            seen.add(text)
            out_t.append(text)
            out_l.append(labels[i])
    return out_t, out_l


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 2)


def run_one(n: int, args: argparse.Namespace) -> dict:
    import torch

    from icl_fungi import FeatureConfig, FungiEncoder, ICLRetriever, VectorIndex

    texts, labels = make_pool(*load_split(args.data, "train"), n, args.seed)
    q_texts, _ = load_split(args.data, "test")
    queries = [q_texts[i] for i in np.random.default_rng(args.seed).choice(len(q_texts), size=args.queries, replace=False)]
    config = FeatureConfig(**FEATURES_0_3)  # the 0.3.0 defaults, spelled out
    encoder = FungiEncoder(config=config, show_progress_bar=False)
    ICLRetriever(encoder, block_weights=BASE_WEIGHTS).fit(["warm-up one", "warm-up two"], ["x", "y"])  # load + warm the model
    encoder = FungiEncoder(encoder.model, config, show_progress_bar=False)
    t0 = time.perf_counter()
    r = ICLRetriever(encoder, block_weights=BASE_WEIGHTS).fit(texts, labels)
    build_s = time.perf_counter() - t0
    rss_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tmp = Path(tempfile.mkdtemp())
    try:
        r.save(tmp / "r")
        disk = {f.name: f.stat().st_size for f in (tmp / "r").rglob("*") if f.is_file()}
    finally:
        shutil.rmtree(tmp)
    single, prompt = [], []
    for q in queries:
        t = time.perf_counter()
        r.retrieve(q, k=20)
        single.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        r.build_prompt(q, k=20)
        prompt.append((time.perf_counter() - t) * 1000)
    batched = []
    for start in range(0, len(queries) - 31, 32):
        t = time.perf_counter()
        r.retrieve_batch(queries[start : start + 32], k=20)
        batched.append((time.perf_counter() - t) * 1000)
    # HNSW recall@20 against exact search on the same vectors, at the default ef
    qv = r.vectors(queries)
    pool_v = r.index.vectors_
    exact = np.argsort(-(qv @ pool_v.T), axis=1, kind="stable")[:, :20]
    hnsw = r.index if r.index.uses_hnsw else VectorIndex(exact_threshold=0, random_state=0).build(pool_v)
    got, _ = hnsw.query(qv, 20)
    recall = float(np.mean([len(set(a) & set(b)) / 20 for a, b in zip(got.tolist(), exact.tolist(), strict=True)]))
    return {
        "pool": len(texts),
        "synthetic": max(0, len(texts) - 10003),
        "build_s": round(build_s, 2),
        "texts_per_s": round(len(texts) / build_s, 1),
        "index": "hnsw" if r.index.uses_hnsw else "exact",
        "disk_mb": round(sum(disk.values()) / 2**20, 2),
        "hnsw_file_mb": round(disk.get("hnsw.bin", 0) / 2**20, 2),
        "peak_rss_build_mb": round(rss_build, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "retrieve_ms_p50": _pct(single, 50),
        "retrieve_ms_p95": _pct(single, 95),
        "build_prompt_ms_p50": _pct(prompt, 50),
        "build_prompt_ms_p95": _pct(prompt, 95),
        "batch32_ms_p50": _pct(batched, 50),
        "batch32_ms_p95": _pct(batched, 95),
        "hnsw_recall@20": round(recall, 4),
        "hnsw_ef": max(hnsw.ef_search, 40),
        "torch_threads": torch.get_num_threads(),
    }


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [m["pool"] for m in results]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].plot(sizes, [m["build_s"] for m in results], "o-")
    ax[0].set(xscale="log", yscale="log", xlabel="pool size", ylabel="build time (s)", title="build (embedding+kl+simclr)")
    ax[1].plot(sizes, [m["peak_rss_mb"] for m in results], "o-", label="peak RSS")
    ax[1].plot(sizes, [m["disk_mb"] for m in results], "s--", label="saved size")
    ax[1].set(xscale="log", xlabel="pool size", ylabel="MB", title="memory and disk")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: the arguments after the script, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--queries", type=int, default=200, help="seeded test queries timed (and used for recall)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # sizes not re-run keep their earlier results (each row carries its own date and command)
    previous = json.loads((out / "bench_scale.json").read_text())["results"] if (out / "bench_scale.json").is_file() else []
    sizes = [int(s) for s in args.sizes.split(",")]
    results = [m for m in previous if m.get("requested") not in sizes]
    for n in sizes:
        cmd = [sys.executable, __file__, "--one", str(n), "--data", args.data, "--queries", str(args.queries), "--seed", str(args.seed)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        if proc.returncode:
            sys.exit(f"pool {n} failed:\n{proc.stderr[-3000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row.update(requested=n, date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   command=command_line())
        results.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    results.sort(key=lambda m: m["pool"])
    report = {"meta": run_meta(seed=args.seed, feature_config=FEATURES_0_3, block_weights=BASE_WEIGHTS), "results": results}
    lines = ["| pool | build s | texts/s | index | saved MB | peak RSS MB | retrieve p50/p95 ms | build_prompt p50/p95 ms "
             "| batch of 32 p50/p95 ms | HNSW recall@20 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for m in results:
        lines.append(f"| {m['pool']} | {m['build_s']} | {m['texts_per_s']} | {m['index']} | {m['disk_mb']} | {m['peak_rss_mb']} | "
                     f"{m['retrieve_ms_p50']} / {m['retrieve_ms_p95']} | {m['build_prompt_ms_p50']} / {m['build_prompt_ms_p95']} | "
                     f"{m['batch32_ms_p50']} / {m['batch32_ms_p95']} | {m['hnsw_recall@20']:.4f} |")
    table = "\n".join(lines)
    notes = ("Rows: see each row's `command` and `date` in bench_scale.json. Features: embedding + KL + SimCLR (the 0.3.0 "
             f"defaults, spelled out); {args.queries} seeded banking-77 test queries; recall@20 of the HNSW graph against exact "
             "search on the same vectors at the default ef (for the 1k pool, which the retriever searches exactly, a separate "
             "HNSW graph is built to measure it).")
    write_results(out / "bench_scale.json", report, title=f"bench_scale ({os.cpu_count()} CPUs)", table=table, notes=notes)
    plot(results, out / "bench_scale.png")
    print(table)


if __name__ == "__main__":
    main()
