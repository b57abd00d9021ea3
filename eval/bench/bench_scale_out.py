"""Scale-out benchmark: the feature build single-process vs Ray Data (local, 1 and 2 workers), and the index
hnswlib vs milvus-lite (query latency, recall@20 against exact search, build time, memory).

The pool is the bench_scale recipe (banking-77 train, topped up with same-intent recombinations to
``--size``). Each measurement runs in its own process, so its peak RSS is its own; for Ray the
driver's RSS is reported and the actors' is sampled while they run. Query vectors come from
seeded banking-77 test queries encoded by the single-process retriever.

    python eval/bench/bench_scale_out.py [--size 100000] [--workers 1,2] [--queries 200]

Writes eval/results/bench_scale_out.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # eval/: common.py
sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder's scripts it imports
from bench_scale import make_pool
from common import BASE_WEIGHTS, DEFAULT_DATA, FEATURES_0_3, RESULTS, load_split, markdown_table, run_meta, write_results


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _tree_rss_mb(stop: threading.Event, peak: list[float]) -> None:
    """Sample the summed RSS of this process's children (Ray's actors) every 0.5 s."""
    import psutil  # the dev extra

    me = psutil.Process()
    while not stop.is_set():
        total = 0
        for p in me.children(recursive=True):
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        peak[0] = max(peak[0], total / 2**20)
        stop.wait(0.5)


def build(args: argparse.Namespace, executor: str, workers: int, work: Path) -> dict:
    """Build the retriever once (after a warm-up), timing the build; saves the index vectors for the index runs."""
    from icl_fungi import FeatureConfig, FungiEncoder, ICLRetriever
    from icl_fungi.distributed import RayExecutor

    texts, labels = make_pool(*load_split(args.data, "train"), args.size, args.seed)
    config = FeatureConfig(**FEATURES_0_3)
    ICLRetriever(FungiEncoder(config=config, show_progress_bar=False), block_weights=BASE_WEIGHTS).fit(texts[:64], labels[:64])
    run = None if executor == "single" else RayExecutor(workers=workers, pca_sample=args.pca_sample)
    if run is not None:
        run._start()  # Ray's own start-up is not part of the build
    stop, peak = threading.Event(), [0.0]
    sampler = threading.Thread(target=_tree_rss_mb, args=(stop, peak), daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    r = ICLRetriever(FungiEncoder(config=config, show_progress_bar=False), block_weights=BASE_WEIGHTS).fit(texts, labels, executor=run)
    build_s = time.perf_counter() - t0
    stop.set()
    out = {"executor": executor, "workers": workers, "pool": len(texts), "build_s": round(build_s, 1),
           "texts_per_s": round(len(texts) / build_s, 1), "texts_per_s_per_worker": round(len(texts) / build_s / workers, 1),
           "peak_rss_driver_mb": round(_rss_mb(), 1), "peak_rss_children_mb": round(peak[0], 1)}
    if executor == "single":
        q_texts, _ = load_split(args.data, "test")
        queries = [q_texts[i] for i in np.random.default_rng(args.seed).choice(len(q_texts), args.queries, replace=False)]
        np.save(work / "vectors.npy", r.index.vectors_, allow_pickle=False)
        np.save(work / "queries.npy", r.vectors(queries), allow_pickle=False)
        (work / "labels.json").write_text(json.dumps([str(x) for x in labels]))
    return out


def index_run(args: argparse.Namespace, backend: str, work: Path) -> dict:
    """Build one index over the saved vectors and time single queries; recall@20 against exact search."""
    from icl_fungi import VectorIndex
    from icl_fungi.milvus import MilvusIndex

    vectors = np.load(work / "vectors.npy", allow_pickle=False)
    queries = np.load(work / "queries.npy", allow_pickle=False)
    labels = json.loads((work / "labels.json").read_text())
    exact = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :20]
    t0 = time.perf_counter()
    if backend == "hnswlib":
        index = VectorIndex().build(vectors, labels)
    else:
        index = MilvusIndex(str(work / "bench.db"), "bench", overwrite=True).build(vectors, labels)
    build_s = time.perf_counter() - t0
    index.query(queries[:5], 20)  # warm-up
    lat = []
    got = []
    for q in queries:
        t = time.perf_counter()
        ids, _ = index.query(q[None], 20)
        lat.append((time.perf_counter() - t) * 1000)
        got.append(ids[0])
    recall = float(np.mean([len(set(a.tolist()) & set(b.tolist())) / 20 for a, b in zip(got, exact, strict=True)]))
    return {"backend": backend, "pool": len(vectors), "index_build_s": round(build_s, 1),
            "query_ms_p50": round(float(np.percentile(lat, 50)), 2), "query_ms_p95": round(float(np.percentile(lat, 95)), 2),
            "recall@20": round(recall, 4), "peak_rss_mb": round(_rss_mb(), 1),
            "disk_mb": round(sum(p.stat().st_size for p in (work / "bench.db").rglob("*") if p.is_file()) / 2**20, 1)
            if backend == "milvus" else None}  # milvus-lite keeps a folder named like the file URI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: the arguments after the script, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--workers", default="1,2", help="Ray worker counts to time")
    ap.add_argument("--pca-sample", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "bench_scale_out.json"))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.one:
        kind, _, arg = args.one.partition(":")
        work = Path(args.work)
        row = build(args, kind, int(arg or 1), work) if kind in ("single", "ray") else index_run(args, kind, work)
        print(json.dumps(row))
        return
    builds, indexes = [], []
    with tempfile.TemporaryDirectory() as work:
        jobs = ["single:1", *(f"ray:{w}" for w in args.workers.split(",")), "hnswlib", "milvus"]
        for job in jobs:
            cmd = [sys.executable, __file__, "--one", job, "--work", work, "--data", args.data, "--size", str(args.size),
                   "--pca-sample", str(args.pca_sample), "--queries", str(args.queries), "--seed", str(args.seed)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            if proc.returncode:
                sys.exit(f"{job} failed:\n{proc.stderr[-3000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            (builds if job.startswith(("single", "ray")) else indexes).append(row)
            print(job, json.dumps(row), flush=True)
    base = builds[0]["build_s"]
    for b in builds:
        b["speed-up vs single"] = round(base / b["build_s"], 2)
    cols_b = ["executor", "workers", "pool", "build_s", "speed-up vs single", "texts_per_s", "texts_per_s_per_worker",
              "peak_rss_driver_mb", "peak_rss_children_mb"]
    cols_i = ["backend", "pool", "index_build_s", "query_ms_p50", "query_ms_p95", "recall@20", "peak_rss_mb", "disk_mb"]
    table = markdown_table(builds, cols_b, digits=1) + "\n\n" + markdown_table(indexes, cols_i, digits=2)
    doc = {"meta": run_meta(size=args.size, pca_sample=args.pca_sample, queries=args.queries, feature_config=FEATURES_0_3,
                            block_weights=BASE_WEIGHTS), "builds": builds, "indexes": indexes}
    write_results(Path(args.out), doc, title=f"Scale-out benchmark ({args.size:,} texts, {os.cpu_count()} CPUs)", table=table,
                  notes="Build: the 0.3.0 default features; Ray local with one CPU per actor; driver fits head, negatives, block means "
                        "and PCA. Index: the single-process build's vectors, HNSW (M 32, efConstruction 200, ef max(128, 2k)) "
                        "in hnswlib and in milvus-lite; single queries, k = 20; recall against exact search.")
    print(table)


if __name__ == "__main__":
    main()
