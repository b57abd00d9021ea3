"""Benchmark: build the banking-77 pool with each feature set; time, latency, memory, P@20.

Each feature set runs in its own process (so peak RSS is its own). Prints a table and
writes eval/results/bench_features.json and .md.

    python eval/bench_features.py [--data ../shared/data/banking77] [--queries 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BASE_FEATURES, BASE_WEIGHTS, DEFAULT_DATA, EMBEDDING, RESULTS, load_split, run_meta

FEATURE_SETS = {
    "embedding": ("embedding",),
    "embedding+kl": ("embedding", "kl"),
    "embedding+kl+simclr": ("embedding", "kl", "simclr"),
}


def run_one(name: str, args: argparse.Namespace) -> dict:
    from icl_fungi import FeatureConfig, FungiEncoder, ICLRetriever
    from icl_fungi.evaluation import retrieval_metrics

    texts, labels = load_split(args.data, "train")
    q_texts, q_labels = load_split(args.data, "test")
    t0 = time.perf_counter()
    # embeddings alone: the plain baseline (no block centring); the others: the 0.2.0 defaults, spelled out
    fields = {**BASE_FEATURES, **(EMBEDDING if FEATURE_SETS[name] == ("embedding",) else {}), "features": FEATURE_SETS[name]}
    weights = {f: BASE_WEIGHTS[f] for f in FEATURE_SETS[name]}
    encoder = FungiEncoder(config=FeatureConfig(**fields), show_progress_bar=False)
    load_s = time.perf_counter() - t0
    ICLRetriever(encoder, block_weights=weights).fit(texts[:64], labels[:64])  # warm-up (first-call allocations, thread pools)
    encoder = FungiEncoder(encoder.model, FeatureConfig(**fields), show_progress_bar=False)
    t0 = time.perf_counter()
    r = ICLRetriever(encoder, block_weights=weights).fit(texts, labels)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(args.seed)
    sample = rng.choice(len(q_texts), size=min(args.queries, len(q_texts)), replace=False)
    lat, prompt_lat = [], []
    for i in sample[: args.latency_queries]:
        t = time.perf_counter()
        r.retrieve(q_texts[i], k=20)
        lat.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        r.build_prompt(q_texts[i], k=20)
        prompt_lat.append((time.perf_counter() - t) * 1000)
    res = r.retrieve_batch([q_texts[i] for i in sample], k=20)
    metrics = retrieval_metrics([[x.label for x in row] for row in res], [[x.score for x in row] for row in res],
                                [q_labels[i] for i in sample], 20)
    return {
        "features": list(FEATURE_SETS[name]),
        "pool": len(texts),
        "model_load_s": round(load_s, 2),
        "build_s": round(build_s, 2),
        "retrieve_ms_p50": round(float(np.percentile(lat, 50)), 2),
        "retrieve_ms_p95": round(float(np.percentile(lat, 95)), 2),
        "build_prompt_ms_p50": round(float(np.percentile(prompt_lat, 50)), 2),
        "build_prompt_ms_p95": round(float(np.percentile(prompt_lat, 95)), 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "retrieval": metrics,
        "hnsw": r.index.uses_hnsw,
        "config": {"feature_config": r.config.to_dict(), "block_weights": r.block_weights},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--queries", type=int, default=1000, help="seeded test queries for P@20")
    ap.add_argument("--latency-queries", type=int, default=200, help="single queries timed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--sets", default=",".join(FEATURE_SETS), help="comma-separated feature sets (embedding is always run)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return
    results = {}
    wanted = {"embedding", *args.sets.split(",")}
    for name in [n for n in FEATURE_SETS if n in wanted]:
        cmd = [sys.executable, __file__, "--one", name, "--data", args.data, "--queries", str(args.queries),
               "--latency-queries", str(args.latency_queries), "--seed", str(args.seed)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        if proc.returncode:
            sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(name, json.dumps(results[name]), file=sys.stderr, flush=True)
    base = results["embedding"]["build_s"]
    for m in results.values():
        m["build_ratio_to_embedding"] = round(m["build_s"] / base, 3)
    report = {"meta": run_meta(seed=args.seed), "results": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_features.json").write_text(json.dumps(report, indent=2))
    lines = ["| features | build s | ratio | retrieve p50 / p95 ms | build_prompt p50 / p95 ms | peak RSS MB | P@20 | 1-NN acc |",
             "|---|---|---|---|---|---|---|---|"]
    for name, m in results.items():
        lines.append(f"| {name} | {m['build_s']} | {m['build_ratio_to_embedding']} | {m['retrieve_ms_p50']} / {m['retrieve_ms_p95']} | "
                     f"{m['build_prompt_ms_p50']} / {m['build_prompt_ms_p95']} | {m['peak_rss_mb']} | {m['retrieval']['p@20']:.4f} | "
                     f"{m['retrieval']['1nn_acc']:.4f} |")
    table = "\n".join(lines)
    (out / "bench_features.md").write_text(
        f"# bench_features ({report['meta']['date']}, {os.cpu_count()} CPUs, commit {report['meta']['commit'][:12]})\n\n"
        f"`{report['meta']['command']}`; build time "
        "after a warm-up build of 64 texts (model loading excluded); "
        f"P@20 on {args.queries} seeded banking-77 test queries, pool = full train split.\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
