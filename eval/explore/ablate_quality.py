"""Retrieval quality of feature configurations, no LLM needed: P@k, gold label in top-k, 1-NN
accuracy and the similarity-weighted k-NN vote, with exact search (index recall plays no part).

``--split dev`` (for choosing) searches a seeded stratified 20 % of banking-77 *train* against the
other 80 %; ``--split test`` (for reporting chosen configurations once) searches the test split
against the whole train pool. Every configuration is spelled out against ``common.BASE_FEATURES``;
the result file records each one's full resolved configuration. Resumable.

    python eval/explore/ablate_quality.py --grid final2 --split test [--model NAME] [--device cuda]

Writes eval/results/ablate_quality/<split>-<grid>.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # eval/: common.py
from common import (
    DEFAULT_DATA,
    EMBEDDING,
    RESULTS,
    build_retriever,
    markdown_table,
    mpnet_folder,
    pool_and_queries,
    read_results,
    retriever_config,
    run_meta,
    write_results,
)

from icl_fungi.evaluation import retrieval_metrics

KL_ONLY = {"features": ("embedding", "kl")}
FFN_OUT = "encoder.layer.5.output.dense"  # all-MiniLM-L6-v2's last FFN output projection
V03 = {"projection": "tensor_sketch", "target_layer": FFN_OUT}  # the 0.3.0 defaults that differ from BASE_FEATURES
NEIGHBORS = {"kl_head": "neighbors", "kl_temperature": 0.05, "kl_center": True}
GRIDS: dict[str, dict[str, dict]] = {
    # the 0.2.0 default against plain embeddings (reported on the test split)
    "final2": {
        "embedding": EMBEDDING,
        "default: labels head T0.07 centred, w kl 0.3 / simclr 0.3": {},
        "labels head T0.07 centred, kl only, w 0.3": {**KL_ONLY, "block_weights": {"kl": 0.3}},
    },
    # the soft k-NN head chosen on the dev split (dev-vote; archive: dev-neighbors) but not made the default
    "final3": {
        "embedding": EMBEDDING,
        "neighbors head T0.05, kl only, w 0.5": {**KL_ONLY, **NEIGHBORS, "block_weights": {"kl": 0.5}},
        "neighbors head T0.05, w kl 0.5 / simclr 0.3": {**NEIGHBORS, "block_weights": {"kl": 0.5, "simclr": 0.3}},
    },
    # where the gradient is taken: the last block's attention output projection (the default) or its FFN output
    "target": {
        "embedding": EMBEDDING,
        "labels head, kl only w 0.3, attn-out L5": {**KL_ONLY, "block_weights": {"kl": 0.3}},
        "labels head, kl only w 0.3, ffn-out L5": {**KL_ONLY, "block_weights": {"kl": 0.3}, "target_layer": FFN_OUT},
        "default, attn-out L5": {},
        "default, ffn-out L5": {"target_layer": FFN_OUT},
    },
    # performance round 2 (issue 15): the gradient projected without forming it (tensor sketch), the target layer
    # moved to the last FFN output (views then differ only after it), counter-based dropout masks
    "fast": {
        "embedding": EMBEDDING,
        "default (attn-out L5, sketch)": {},
        "attn-out L5, tensor sketch": {"projection": "tensor_sketch"},
        "ffn-out L5, tensor sketch": {"projection": "tensor_sketch", "target_layer": FFN_OUT},
        "ffn-out L5, tensor sketch, kl only w 0.3": {**KL_ONLY, "projection": "tensor_sketch", "target_layer": FFN_OUT,
                                                    "block_weights": {"kl": 0.3}},
    },
    # issue 16: the 0.4.0 default (KL only, the KL weight from the pool) against 0.3.0's and the embedding, any
    # encoder (target layers by role, so the grid runs on other architectures: --model mpnet)
    "v04": {
        "embedding": EMBEDDING,
        "0.4.0 default (kl only, auto weight)": {**KL_ONLY, "projection": "tensor_sketch", "target_layer": "ffn_output",
                                                 "fit_weights": "auto"},
        "0.3.0 default (kl 0.3, simclr 0.3)": {"projection": "tensor_sketch", "target_layer": "ffn_output"},
    },
    # issue 16: does any SimCLR variant add P@20 over KL only at equal KL weight (0.3.0 target and projection)?
    "simclr": {
        "kl only w 0.3": {**KL_ONLY, **V03, "block_weights": {"kl": 0.3}},
        "0.3.0 default (dropout 0.1, 256 negatives, T 0.07)": V03,
        "dropout 0.3": {**V03, "simclr_dropout": 0.3},
        "dropout 0.5": {**V03, "simclr_dropout": 0.5},
        "1024 negatives": {**V03, "simclr_negatives": 1024},
        "temperature 0.2": {**V03, "simclr_temperature": 0.2},
        "dropout 0.1 in every block": {**V03, "simclr_view_blocks": None},
        "word deletion 0.2": {**V03, "simclr_view_mode": "word_deletion", "word_deletion_p": 0.2},
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``--grid`` must name a grid of :data:`GRIDS` and ``--only`` configurations of that grid."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--grid", required=True, choices=sorted(GRIDS))
    ap.add_argument("--only", default=None, help="run only these configuration names ('|'-separated)")
    ap.add_argument("--split", choices=("dev", "test"), default="dev")
    ap.add_argument("--model", default=None,
                    help="encoder name or path, or 'mpnet' (all-mpnet-base-v2 from its PyPI parts; default: the library's default)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--out", default=str(RESULTS / "ablate_quality"))
    args = ap.parse_args(argv)
    unknown = sorted(set(args.only.split("|")) - set(GRIDS[args.grid])) if args.only else []
    if unknown:
        ap.error(f"--only names no configuration of grid {args.grid!r}: {unknown}")
    return args


def main() -> None:
    args = parse_args()
    grid = GRIDS[args.grid]
    if args.only:
        grid = {k: v for k, v in grid.items() if k in args.only.split("|")}
    if args.model == "mpnet":
        args.model = str(mpnet_folder())
    pool_t, pool_l, q_t, q_l = pool_and_queries(args.data, args.split)
    path = Path(args.out) / f"{args.split}-{args.grid}.json"
    doc = read_results(path)
    rows = doc.get("rows", {})
    k = args.k
    for name, spec in grid.items():
        if name in rows:
            continue
        t0 = time.perf_counter()
        r = build_retriever(pool_t, pool_l, spec, model=args.model, device=args.device, batch_size=args.batch_size)
        build_s = time.perf_counter() - t0
        res = r.retrieve_batch(q_t, k=k)
        m = retrieval_metrics([[x.label for x in row] for row in res], [[x.score for x in row] for row in res], q_l, k)
        rows[name] = {**m, "build_s": round(build_s, 1), "spec": spec, "config": retriever_config(r)}
        print(f"{name:<55} P@{k} {m[f'p@{k}']:.4f}  1-NN {m['1nn_acc']:.4f}  vote {m[f'knn{k}_vote_acc']:.4f}  {build_s:.0f}s",
              flush=True)
        doc = {"meta": run_meta(split=args.split, pool=len(pool_t), queries=len(q_t), k=k), "rows": rows}
        write_results(path, doc, title=f"Retrieval quality: grid {args.grid}, {args.split} split", table="")
    base = rows.get("embedding", {}).get(f"p@{k}")
    table = [{"configuration": n, f"P@{k}": m[f"p@{k}"],
              "vs embedding": f"{100 * (m[f'p@{k}'] - base):+.2f} pt" if base is not None else "",
              f"gold in top-{k}": m[f"gold_in_top{k}"], "1-NN": m["1nn_acc"], f"{k}-NN vote": m[f"knn{k}_vote_acc"],
              "build s": f"{m['build_s']:.0f}"} for n, m in rows.items()]
    cols = ["configuration", f"P@{k}", "vs embedding", f"gold in top-{k}", "1-NN", f"{k}-NN vote", "build s"]
    doc = {"meta": run_meta(split=args.split, pool=len(pool_t), queries=len(q_t), k=k), "rows": rows}
    write_results(path, doc, title=f"Retrieval quality: grid {args.grid}, {args.split} split (pool {len(pool_t)}, {len(q_t)} queries)",
                  table=markdown_table(table, cols))
    print(markdown_table(table, cols))


if __name__ == "__main__":
    main()
