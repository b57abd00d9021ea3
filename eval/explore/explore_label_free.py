"""Label-free features: which KL head, SimCLR share and block weights beat the plain embedding when the pool
has no labels?

The retriever sees texts only (labels hidden: heads that need none, fixed block weights); banking-77's
labels score the result (P@k, 1-NN, k-NN vote). For each pool (the dev pool, or ``n`` examples per label
carved from it) and each head, the pool and the queries are encoded once and block weights are swept
without re-encoding, combined as the retriever combines them (block means, weights, PCA, exact search).

Heads: ``prototypes`` (spherical k-means centroids, K rows), ``random`` (the FUNGI paper's), and
``instances`` (soft neighbours: every sample text is its own class; registered here from outside the
library, as a user would).

    python eval/explore/explore_label_free.py [--split dev] [--per-label 5,20,0] [--heads proto64,proto256,...]
    python eval/explore/explore_label_free.py --split test --library-default

Writes eval/results/label_free/<split>-label-free.{json,md}. ``--library-default`` instead builds the library's
own retrievers on the pool's texts alone (``ICLRetriever.from_texts(texts, labels=None)``, the label-free
default, against ``features=("embedding",)``) and writes <split>-default.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # eval/: common.py
sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder's scripts it imports
from common import DEFAULT_DATA, RESULTS, markdown_table, pool_and_queries, read_results, run_meta, write_results
from explore_small_pools import small_pool
from explore_weights import evaluate

from icl_fungi.features import FeatureConfig, FungiEncoder, KLHead, register_kl_head


@register_kl_head
class InstanceHead(KLHead):
    """Soft neighbours without labels: the rows are the sample's unit embeddings and every row is its own class;
    a text never matches its own row."""

    name = "instances"
    default_temperature = 0.05
    centered_by_default = True

    def fit_rows(self, z: torch.Tensor, labels: Any = None) -> None:
        self.rows_ = z

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        cos = z @ self.rows_.T
        return (cos - 1e4 * (cos.detach() > 1 - 1e-4)) / self.temperature


# name -> FeatureConfig options of the KL block (features are added per run)
HEADS: dict[str, dict[str, Any]] = {
    "proto64": {"kl_head": "prototypes", "kl_head_dim": 64},
    "proto128": {"kl_head": "prototypes", "kl_head_dim": 128},
    "proto256": {"kl_head": "prototypes", "kl_head_dim": 256},
    "proto1024": {"kl_head": "prototypes", "kl_head_dim": 1024},
    "proto256c": {"kl_head": "prototypes", "kl_head_dim": 256, "kl_center": True},
    "proto256t05": {"kl_head": "prototypes", "kl_head_dim": 256, "kl_temperature": 0.05},
    "instances": {"kl_head": "instances"},
    "random": {"kl_head": "random", "kl_head_dim": 1024, "center_blocks": False},
}
KL_WEIGHTS = (0.0, 0.15, 0.3, 0.5, 0.75, 1.0, 1.5)
SIMCLR_WEIGHTS = (0.0, 0.15, 0.3, 0.5, 1.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: the arguments after the script, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--split", choices=("dev", "test"), default="dev")
    ap.add_argument("--per-label", default="5,20,0", help="examples per label in the pool (0: the whole pool)")
    ap.add_argument("--heads", default=",".join(HEADS), help=f"comma-separated, from {','.join(HEADS)}")
    ap.add_argument("--simclr", default="", help="heads (from --heads) also run with a SimCLR block, swept over its weight")
    ap.add_argument("--kl-weights", default=",".join(f"{w:g}" for w in KL_WEIGHTS))
    ap.add_argument("--queries", type=int, default=0, help="seeded query sample (0: all)")
    ap.add_argument("--library-default", action="store_true",
                    help="score the library's label-free default retriever against the plain embedding (no sweep)")
    ap.add_argument("--out", default=None, help="default: eval/results/label_free/<split>-label-free.json")
    args = ap.parse_args(argv)
    unknown = [h for h in args.heads.split(",") + [s for s in args.simclr.split(",") if s] if h not in HEADS]
    if unknown:
        ap.error(f"unknown head(s) {unknown}; choose from {sorted(HEADS)}")
    return args


def encode(model: Any, options: dict[str, Any], simclr: bool, pool: list[str], queries: list[str]) -> tuple[dict, dict, float]:
    """Pool and query blocks of one feature configuration, fitted on the pool's texts only (no labels)."""
    feats = ("embedding", "kl", "simclr") if simclr else ("embedding", "kl")
    enc = FungiEncoder(model, FeatureConfig(features=feats, **options), show_progress_bar=False)
    t0 = time.perf_counter()
    pool_b = enc.fit_encode(pool, None)
    seconds = time.perf_counter() - t0
    return pool_b, enc.encode(queries), seconds


def sweep(rows: dict, setting: str, head: str, pool_b: dict, q_b: dict, p_l: list, q_l: list, k: int,
          kl_weights: list[float], simclr_weights: tuple[float, ...], seconds: float) -> None:
    for sc in simclr_weights:
        for w in kl_weights:
            key = f"{setting}: {head} kl {w:g} simclr {sc:g}"
            m = evaluate(pool_b, q_b, p_l, q_l, {"embedding": 1.0, "kl": w, "simclr": sc}, k)
            rows[key] = {**m, "k": k, "setting": setting, "head": head, "kl": w, "simclr": sc, "encode_s": round(seconds, 1),
                         "options": HEADS[head.removesuffix("+simclr")]}
            print(f"{key:<48} P@{k} {m[f'p@{k}']:.4f}  1-NN {m['1nn_acc']:.4f}  vote {m[f'knn{k}_vote_acc']:.4f}", flush=True)


def table_rows(rows: dict) -> list[dict]:
    """The Markdown table: per setting, the embedding row and each head's best row by P@k."""
    out = []
    for setting in dict.fromkeys(r["setting"] for r in rows.values()):
        mine = [r for r in rows.values() if r["setting"] == setting]
        base = next(r for r in mine if r["kl"] == 0 and r["simclr"] == 0)
        k = base["k"]
        picks = [base] + [max((r for r in mine if r["head"] == h and (r["kl"] or r["simclr"])), key=lambda r: r[f"p@{k}"])
                          for h in dict.fromkeys(r["head"] for r in mine)]
        for r in picks:
            plain = r is base
            out.append({"setting": setting, "features": "embedding" if plain else f"{r['head']} kl {r['kl']:g} simclr {r['simclr']:g}",
                        "k": k, "P@k": r[f"p@{k}"], "vs embedding": 100 * (r[f"p@{k}"] - base[f"p@{k}"]),
                        "1-NN": r["1nn_acc"], "1-NN vs embedding": 100 * (r["1nn_acc"] - base["1nn_acc"]),
                        "k-NN vote": r[f"knn{k}_vote_acc"]})
    return out


def library_default(args: argparse.Namespace, pool_t: list, pool_l: list, q_t: list, q_l: list) -> None:
    """The library's retrievers built without labels; labels only score what they return."""
    from icl_fungi import ICLRetriever
    from icl_fungi.evaluation import retrieval_metrics

    path = Path(args.out or RESULTS / "label_free" / f"{args.split}-default.json")
    rows, table = {}, []
    for per in (int(x) for x in args.per_label.split(",")):
        setting = f"{per or 'all'}/label"
        p_t, p_l = (pool_t, pool_l) if per == 0 else small_pool(pool_t, pool_l, per, np.random.default_rng(0))
        k = min(20, per) if per else 20
        for name, options in (("embedding", {"features": ("embedding",)}), ("label-free default", {})):
            t0 = time.perf_counter()
            r = ICLRetriever.from_texts(p_t, None, show_progress_bar=False, **options)
            seconds = time.perf_counter() - t0
            hits = r.retrieve_batch(q_t, k)
            m = retrieval_metrics([[p_l[x.index] for x in row] for row in hits], [[x.score for x in row] for row in hits], q_l, k)
            rows[f"{setting}: {name}"] = {**m, "k": k, "setting": setting, "retriever": name, "build_s": round(seconds, 1),
                                          "kl_head": r.config.kl_head if "kl" in r.config.features else None,
                                          "block_weights": r.block_weights}
            print(f"{setting:<10} {name:<20} P@{k} {m[f'p@{k}']:.4f}  1-NN {m['1nn_acc']:.4f}  vote {m[f'knn{k}_vote_acc']:.4f}",
                  flush=True)
        base, mine = rows[f"{setting}: embedding"], rows[f"{setting}: label-free default"]
        for r_ in (base, mine):
            table.append({"setting": setting, "retriever": r_["retriever"], "k": k, "P@k": r_[f"p@{k}"],
                          "vs embedding": 100 * (r_[f"p@{k}"] - base[f"p@{k}"]), "1-NN": r_["1nn_acc"],
                          "1-NN vs embedding": 100 * (r_["1nn_acc"] - base["1nn_acc"]), "k-NN vote": r_[f"knn{k}_vote_acc"],
                          "weights": json.dumps(r_["block_weights"]), "build s": r_["build_s"]})
    cols = ["setting", "retriever", "k", "P@k", "vs embedding", "1-NN", "1-NN vs embedding", "k-NN vote", "weights", "build s"]
    write_results(path, {"meta": run_meta(split=args.split, queries=len(q_t)), "rows": rows},
                  title=f"The label-free default against the plain embedding ({args.split} split; labels hidden from the "
                        "retriever, used only to score)", table=markdown_table(table, cols, digits=4),
                  notes="'vs embedding' columns are percentage points. Both retrievers are ICLRetriever.from_texts(texts, None).")
    print(markdown_table(table, cols, digits=4))


def main() -> None:
    args = parse_args()
    pool_t, pool_l, q_t, q_l = pool_and_queries(args.data, args.split)
    if args.queries:
        pick = np.sort(np.random.default_rng(0).choice(len(q_t), args.queries, replace=False))
        q_t, q_l = [q_t[i] for i in pick], [q_l[i] for i in pick]
    if args.library_default:
        library_default(args, pool_t, pool_l, q_t, q_l)
        return
    path = Path(args.out or RESULTS / "label_free" / f"{args.split}-label-free.json")
    rows = read_results(path).get("rows", {})
    model = FungiEncoder(show_progress_bar=False).model
    kl_weights = [float(x) for x in args.kl_weights.split(",")]
    runs = [(h, False) for h in args.heads.split(",")] + [(h, True) for h in args.simclr.split(",") if h]
    for per in (int(x) for x in args.per_label.split(",")):
        setting = f"{per or 'all'}/label"
        p_t, p_l = (pool_t, pool_l) if per == 0 else small_pool(pool_t, pool_l, per, np.random.default_rng(0))
        k = min(20, per) if per else 20
        for head, simclr in runs:
            name = head + ("+simclr" if simclr else "")
            if any(r["setting"] == setting and r["head"] == name for r in rows.values()):
                continue  # resumes: this head and pool are done
            pool_b, q_b, seconds = encode(model, HEADS[head], simclr, p_t, q_t)
            sweep(rows, setting, name, pool_b, q_b, p_l, q_l, k, kl_weights, SIMCLR_WEIGHTS if simclr else (0.0,), seconds)
            write_results(path, {"meta": run_meta(split=args.split, queries=len(q_t)), "rows": rows},
                          title=f"Label-free features ({args.split} split)", table="")
    cols = ["setting", "features", "k", "P@k", "vs embedding", "1-NN", "1-NN vs embedding", "k-NN vote"]
    table = table_rows(rows)
    write_results(path, {"meta": run_meta(split=args.split, queries=len(q_t)), "rows": rows},
                  title=f"Label-free features ({args.split} split; labels hidden from the retriever, used only to score)",
                  table=markdown_table(table, cols, digits=4),
                  notes="Each head's best row by P@k among the swept weights (every row is in the JSON). k = 20, or the "
                        "examples per label where fewer. 'vs embedding' columns are percentage points.")
    print(markdown_table(table, cols, digits=4))


if __name__ == "__main__":
    main()
