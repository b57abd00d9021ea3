"""Benchmark: what FUNGI features cost against a plain embedding, at build and at query time.

For each feature set (each in its own process, so peak RSS is its own): build time on a seeded
banking-77 pool after a warm-up build, ``build_prompt`` latency (p50/p95, k = 20) next to one
sentence-transformers ``encode`` of the same queries, ``retrieve_batch`` of 32 queries per query,
peak RSS, and P@20 / 1-NN on seeded test queries. ``--reference COMMIT`` also times the embedding
and the default feature set of an older commit's code (extracted with ``git archive``) in the same
run, so before and after are measured side by side.

    python eval/bench/bench_features.py [--pool-size 10003] [--queries 1000] [--reference 7c2eceb]

Writes eval/results/bench_features-<pool>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # eval/: common.py
from common import DEFAULT_DATA, FEATURES_0_3, RESULTS, ROOT, load_split, markdown_table, run_meta, write_results

WEIGHTS = {"embedding": 1.0, "kl": 0.3, "simclr": 0.3}
FEATURE_SETS = {  # the current defaults, spelled out; embedding alone is the plain baseline (no block centring)
    "embedding": {**FEATURES_0_3, "features": ("embedding",), "center_blocks": False},
    "embedding+kl": {**FEATURES_0_3, "features": ("embedding", "kl")},
    "embedding+kl+simclr": dict(FEATURES_0_3),
}

# times any icl_fungi tree through the API every version has (from_dataset, build_prompt, retrieve_batch)
TIMING = r"""
import json, sys, time, resource
import numpy as np
args = json.loads(sys.argv[1])
from icl_fungi import ICLRetriever
pool = json.load(open(args["pool"]))
texts, labels, queries = pool["texts"], pool["labels"], pool["queries"]
records = [{"text": t, "label": l} for t, l in zip(texts, labels)]
kw = args["kwargs"]
if "feature_config" in args:
    from icl_fungi import FeatureConfig, FungiEncoder
    cfg = dict(args["feature_config"]); cfg["features"] = tuple(cfg["features"])
    make = lambda rows: ICLRetriever(FungiEncoder(config=FeatureConfig(**cfg), show_progress_bar=False),
                                     block_weights=args["weights"]).fit([r["text"] for r in rows], [r["label"] for r in rows])
else:
    make = lambda rows: ICLRetriever.from_dataset(rows, show_progress_bar=False, **kw)
make(records[::max(1, len(records) // 64)][:64])  # warm-up: first-call allocations, thread pools
t0 = time.perf_counter(); r = make(records); build_s = time.perf_counter() - t0
rss_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
st = r.encoder.model
def p(fn, qs):
    for q in qs[:10]: fn(q)
    lat = []
    for q in qs:
        t = time.perf_counter(); fn(q); lat.append((time.perf_counter() - t) * 1000)
    return [round(float(np.percentile(lat, 50)), 2), round(float(np.percentile(lat, 95)), 2)]
lq = queries[: args["latency_queries"]]
st_ms = p(lambda q: st.encode(q, show_progress_bar=False), lq)
bp_ms = p(lambda q: r.build_prompt(q, k=20), lq)
r.retrieve_batch(queries[:32], k=20)
t0 = time.perf_counter(); n = 0
for s in range(0, len(queries) - 31, 32):
    r.retrieve_batch(queries[s:s + 32], k=20); n += 32
batch_ms = (time.perf_counter() - t0) * 1000 / n
res = r.retrieve_batch(queries, k=20)
gold = pool["query_labels"]
p20 = float(np.mean([np.mean([x.label == g for x in row]) for row, g in zip(res, gold)]))
nn1 = float(np.mean([row[0].label == g for row, g in zip(res, gold)]))
print(json.dumps({"build_s": round(build_s, 2), "st_encode_ms": st_ms, "build_prompt_ms": bp_ms,
                  "retrieve_batch32_ms_per_query": round(batch_ms, 2), "peak_rss_build_mb": round(rss_build, 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "p@20": round(p20, 4), "1nn_acc": round(nn1, 4)}))
"""


def _run(src: Path, pool_json: Path, spec: dict, latency_queries: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    arg = json.dumps({"pool": str(pool_json), "latency_queries": latency_queries, **spec})
    proc = subprocess.run([sys.executable, "-c", TIMING, arg], env=env, capture_output=True, text=True, cwd=pool_json.parent)
    if proc.returncode:
        sys.exit(f"run under {src} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: the arguments after the script, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--pool-size", type=int, default=10003, help="seeded sample of banking-77 train (10003: all)")
    ap.add_argument("--queries", type=int, default=1000, help="seeded test queries for P@20 and the batch timing")
    ap.add_argument("--latency-queries", type=int, default=200, help="single queries timed")
    ap.add_argument("--reference", default="7c2eceb", help="older commit timed side by side ('' to skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    return ap.parse_args(argv)


def main() -> None:
    args = parse_args()
    texts, labels = load_split(args.data, "train")
    q_texts, q_labels = load_split(args.data, "test")
    rng = np.random.default_rng(args.seed)
    rows = sorted(rng.choice(len(texts), min(args.pool_size, len(texts)), replace=False).tolist())
    qrows = rng.choice(len(q_texts), min(args.queries, len(q_texts)), replace=False)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pool_json = tmp / "pool.json"
        pool_json.write_text(json.dumps({"texts": [texts[i] for i in rows], "labels": [labels[i] for i in rows],
                                         "queries": [q_texts[i] for i in qrows], "query_labels": [q_labels[i] for i in qrows]}))
        runs = []
        if args.reference:
            ref = tmp / "reference"
            ref.mkdir()
            data = subprocess.run(["git", "-C", str(ROOT), "archive", args.reference, "icl_fungi", "prompts"],
                                  capture_output=True, check=True).stdout
            (tmp / "ref.tar").write_bytes(data)
            with tarfile.open(tmp / "ref.tar") as tar:
                tar.extractall(ref, filter="data")
            runs += [(f"{args.reference}: embedding", ref, {"kwargs": {"features": ["embedding"], "center_blocks": False}}),
                     (f"{args.reference}: default", ref, {"kwargs": {}})]
        for name, fields in FEATURE_SETS.items():
            cfg = {**fields, "features": list(fields["features"])}
            runs.append((name, ROOT, {"kwargs": {}, "feature_config": cfg, "weights": {f: WEIGHTS[f] for f in fields["features"]}}))
        for name, src, spec in runs:
            t0 = time.perf_counter()
            row = {"run": name, **_run(src, pool_json, spec, args.latency_queries)}
            print(json.dumps(row), f"({time.perf_counter() - t0:.0f} s)", flush=True)
            results.append(row)
    by = {r["run"]: r for r in results}
    for r in results:
        base = by[f"{args.reference}: embedding"] if r["run"].startswith(f"{args.reference}:") else by["embedding"]
        r["build_ratio"] = round(r["build_s"] / base["build_s"], 2)
        r["build_prompt_ratio"] = round(r["build_prompt_ms"][0] / base["build_prompt_ms"][0], 2)
        r["build_prompt_vs_st_encode"] = round(r["build_prompt_ms"][0] / r["st_encode_ms"][0], 2)
    cols = ["run", "build_s", "build_ratio", "build_prompt_ms", "build_prompt_ratio", "st_encode_ms", "build_prompt_vs_st_encode",
            "retrieve_batch32_ms_per_query", "peak_rss_mb", "p@20", "1nn_acc"]
    table = markdown_table(results, cols, digits=4)
    out = Path(args.out) if args.out else RESULTS / f"bench_features-{len(rows)}.json"
    doc = {"meta": run_meta(pool=len(rows), queries=len(qrows), latency_queries=args.latency_queries, reference=args.reference,
                            feature_sets={k: {**v, "features": list(v["features"])} for k, v in FEATURE_SETS.items()},
                            block_weights=WEIGHTS),
           "results": results}
    write_results(out, doc, title=f"Feature cost: build and query ({len(rows):,}-text pool, {os.cpu_count()} CPUs)", table=table,
                  notes="Ratios are to the embedding-only run of the same code in the same benchmark run; latencies are "
                        "[p50, p95] in ms. build_prompt includes encoding the query, the search and the prompt.")
    print(table)


if __name__ == "__main__":
    main()
