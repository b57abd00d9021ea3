"""KL heads on small pools: does a head's gain hold when each label has few examples?

ICL pools are often small. From the dev pool (stratified 80 % of banking-77 train) a seeded
sample of ``n`` examples per label is kept; the dev queries are searched against it with P@k
for k = min(20, n). Heads: label means (T 0.07) and soft k-NN (T 0.05), centred, KL block
weights 0.3 / 0.5 / 1, combined as the retriever does (exact search).

    python eval/explore/explore_small_pools.py [--per-label 5,20]

Writes eval/results/ablate_quality/dev-small-pools.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # eval/: common.py
from common import (
    DEFAULT_DATA,
    EMBEDDING,
    RESULTS,
    build_retriever,
    markdown_table,
    pool_and_queries,
    retriever_config,
    run_meta,
    write_results,
)

from icl_fungi.evaluation import retrieval_metrics

HEADS = {"labels": {"kl_head": "labels", "kl_temperature": 0.07, "kl_center": True},
         "neighbors": {"kl_head": "neighbors", "kl_temperature": 0.05, "kl_center": True}}


def small_pool(texts: list[str], labels: list, n: int, rng: np.random.Generator) -> tuple[list[str], list]:
    """A seeded sample of ``n`` examples per label (all of a label's examples when it has fewer)."""
    by: dict = {}
    for i, lab in enumerate(labels):
        by.setdefault(lab, []).append(i)
    rows = sorted(j for members in by.values() for j in rng.choice(members, size=min(n, len(members)), replace=False))
    return [texts[i] for i in rows], [labels[i] for i in rows]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: the arguments after the script, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--per-label", default="5,20")
    ap.add_argument("--out", default=str(RESULTS / "ablate_quality" / "dev-small-pools.json"))
    return ap.parse_args(argv)


def main() -> None:
    args = parse_args()
    pool_t, pool_l, q_t, q_l = pool_and_queries(args.data, "dev")
    rows: dict[str, dict] = {}
    rng = np.random.default_rng(0)
    for n in (int(x) for x in args.per_label.split(",")):
        p_t, p_l = small_pool(pool_t, pool_l, n, rng)
        k = min(20, n)
        configs = {"embedding": EMBEDDING}
        for head, spec in HEADS.items():
            for w in (0.3, 0.5, 1.0):
                configs[f"{head} w{w:g}"] = {"features": ("embedding", "kl"), **spec, "block_weights": {"kl": w}}
        for name, spec in configs.items():
            r = build_retriever(p_t, p_l, spec)
            res = r.retrieve_batch(q_t, k)
            m = retrieval_metrics([[x.label for x in row] for row in res], [[x.score for x in row] for row in res], q_l, k)
            rows[f"{n}/label: {name}"] = {**m, "pool": len(p_t), "k": k, "config": retriever_config(r)}
            print(f"{n}/label ({len(p_t)}) {name:<16} P@{k} {m[f'p@{k}']:.4f}  1-NN {m['1nn_acc']:.4f}  "
                  f"vote {m[f'knn{k}_vote_acc']:.4f}", flush=True)
    table = [{"pool": n, "P@k": m[f"p@{m['k']}"], "k": m["k"], "1-NN": m["1nn_acc"], "k-NN vote": m[f"knn{m['k']}_vote_acc"]}
             for n, m in rows.items()]
    write_results(Path(args.out), {"meta": run_meta(split="dev", queries=len(q_t)), "rows": rows},
                  title=f"KL heads on small pools (dev split, {len(q_t)} queries)",
                  table=markdown_table(table, ["pool", "P@k", "k", "1-NN", "k-NN vote"]))


if __name__ == "__main__":
    main()
