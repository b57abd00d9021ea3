"""The retrieval ladder on the test split (issue 34's protocol, no LLM): per pool size, the share of queries whose gold
label is among the k examples (a reader's ceiling), 1-NN (a copier's), the weighted k-NN vote (an aggregator's), P@k
and the labels shown, for the plain embedding, the library's default and the 0.4 default.

The default is what ``ICLRetriever.from_texts(texts, labels)`` retrieves (cover selection, the automatic KL weight);
the 0.4 default is top-k with the KL weight its anchors gave (``auto_kl_weight`` with :data:`OLD_ANCHORS`) for the
same leave-one-out P@k the automatic rule reads. Queries: the ``--limit`` seeded test queries ``icl-fungi eval --limit N
--seed S`` draws; pools: ``--per-label N --pool-seed 0`` (``all``: the whole train split); retrievers built as the eval
builds its selectors, so the figures are those of the eval's reports, at every size, without an LLM run.

    python eval/icl/ladder.py --sizes 5,10,20,all --limit 1000 --out eval/results/round4-test/ladder.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # eval/: common.py
from common import DEFAULT_DATA, RESULTS, load_split, markdown_table, run_meta, write_results

from icl_fungi import ICLRetriever
from icl_fungi.combine import auto_kl_weight
from icl_fungi.evaluation import retrieval_metrics
from icl_fungi.evaluation.splits import sample_per_label, sample_queries

OLD_ANCHORS = ((0.60, 1.0), (0.78, 0.3))  # the 0.4 default's (P@k, KL weight) anchors


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: the arguments after the script, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--sizes", default="5,10,20,all")
    ap.add_argument("-k", type=int, default=20)
    ap.add_argument("--limit", type=int, default=1000, help="seeded test queries")
    ap.add_argument("--seed", type=int, default=0, help="the eval's --seed (query sample and feature seed)")
    ap.add_argument("--out", default=str(RESULTS / "round4-test" / "ladder.json"))
    return ap.parse_args(argv)


def ladder(rows: list, gold: list, k: int) -> dict[str, float]:
    """The retrieval figures of one selector's rows of :class:`~icl_fungi.RetrievedExample`."""
    labels = [[x.label for x in row] for row in rows]
    m = retrieval_metrics(labels, [[x.score for x in row] for row in rows], gold, k)
    return {"gold in top-k": m[f"gold_in_top{k}"], "1-NN": m["1nn_acc"], "k-NN vote": m[f"knn{k}_vote_acc"],
            "P@k": m[f"p@{k}"], "labels shown": float(np.mean([len(set(x)) for x in labels]))}


def run_size(size: str, pool: tuple[list, list], queries: tuple[list, list], k: int, seed: int) -> list[dict]:
    """The ladder rows of one pool size: embedding, default, the 0.4 default."""
    texts, labels = pool if size == "all" else sample_per_label(*pool, int(size), seed=0)
    q_texts, gold = queries
    common = {"seed": seed, "show_progress_bar": False}
    emb = ICLRetriever.from_texts(texts, labels, features=("embedding",), center_blocks=False, **common)
    default = ICLRetriever.from_texts(texts, labels, **common)
    p = default.weight_search_[0]["loo_p@k"]
    old = ICLRetriever.from_texts(texts, labels, block_weights={"kl": auto_kl_weight(p, OLD_ANCHORS)}, **common)
    chosen = {"embedding": (emb, None), "default": (default, None), "fungi-0.4": (old, "topk")}
    out = []
    for name, (r, selection) in chosen.items():
        rows = r.retrieve_batch(q_texts, k, selection=selection)
        out.append({"per label": size, "k": k, "selector": name, "n": len(q_texts),
                    "selection": repr(r.default_selection if selection is None else selection),
                    "kl weight": r.block_weights.get("kl"), "embedding loo P@k": p, **ladder(rows, gold, k)})
        print(f"{size:>4} {name:<10} " + " ".join(f"{key} {out[-1][key]:.4f}" for key in ("gold in top-k", "1-NN", "k-NN vote")),
              flush=True)
    base = out[0]
    for row in out[1:]:
        row.update({f"{key} vs embedding": row[key] - base[key] for key in ("gold in top-k", "1-NN", "k-NN vote")})
    return out


def main() -> None:
    args = parse_args()
    pool = load_split(args.data, "train")
    te_texts, te_labels = load_split(args.data, "test")
    index = sample_queries(len(te_texts), args.limit, seed=args.seed)
    queries = [te_texts[i] for i in index], [te_labels[i] for i in index]
    rows = [row for size in args.sizes.split(",") for row in run_size(size.strip(), pool, queries, args.k, args.seed)]
    columns = ["per label", "selector", "kl weight", "gold in top-k", "gold in top-k vs embedding", "1-NN",
               "1-NN vs embedding", "k-NN vote", "k-NN vote vs embedding", "P@k", "labels shown"]
    write_results(Path(args.out), {"meta": run_meta(k=args.k, limit=args.limit, seed=args.seed, pool_seed=0,
                                                    sizes=args.sizes), "rows": rows},
                  title=f"Retrieval ladder, test split ({args.limit} seeded queries, k = {args.k})",
                  table=markdown_table(rows, columns))


if __name__ == "__main__":
    main()
