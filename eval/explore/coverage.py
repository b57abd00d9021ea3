"""Coverage against agreement at k = 20 (issue 34): which way of choosing FUNGI's examples keeps the embedding's
coverage (gold label among the k) and FUNGI's precision (k-NN vote, P@k), without lowering 1-NN?

Dev split (80 % of train as the pool, sampled to N per label with pool seed 0; the 20 % held out as queries). Per
pool size, the default FUNGI retriever and the plain-embedding one are built once; every design is simulated on
exact similarities (no LLM): plain top-k of each, reciprocal-rank fusion, and FUNGI top-k with the labels of the
embedding's top candidates guaranteed a slot (``coverM``: the labels of the embedding's top M; ``cover20`` at k = 20
is the library's ``Selection("cover")``), each with the automatic KL weight and with fixed ones (``-klW``). The
embedding's ranking is read either from its own retriever (``true``) or from the FUNGI index queried with the query's
embedding block alone (``proxy``: what the library does, with one index).

    python eval/explore/coverage.py --sizes 5,10,20,all --k 20
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import DEFAULT_DATA, RESULTS, dev_split, load_split, markdown_table, run_meta, write_results

from icl_fungi import ICLRetriever, VectorIndex
from icl_fungi.evaluation import retrieval_metrics
from icl_fungi.evaluation.splits import sample_per_label


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: the arguments after the script, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--sizes", default="5,10,20,all")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--queries", type=int, default=0, help="dev queries (0: all 1,998)")
    ap.add_argument("--kl-weights", default="0.5", help="fixed KL weights besides the automatic one (comma-separated)")
    ap.add_argument("--out", default=str(RESULTS / "explore" / "dev-coverage.json"))
    return ap.parse_args(argv)


def topk(sims: np.ndarray, k: int) -> np.ndarray:
    idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, idx, axis=1), axis=1)
    return np.take_along_axis(idx, order, axis=1)


def rrf(f_rank: np.ndarray, e_rank: np.ndarray, k: int, c: float = 60.0, w_e: float = 1.0) -> list[list[int]]:
    """Reciprocal-rank fusion of two ranked id lists per query."""
    out = []
    for fr, er in zip(f_rank, e_rank, strict=True):
        score: dict[int, float] = {}
        for r, i in enumerate(fr):
            score[int(i)] = score.get(int(i), 0.0) + 1.0 / (c + r + 1)
        for r, i in enumerate(er):
            score[int(i)] = score.get(int(i), 0.0) + w_e / (c + r + 1)
        out.append(sorted(score, key=lambda i: -score[i])[:k])
    return out


def cover(f_rank: np.ndarray, e_rank: np.ndarray, f_sims: np.ndarray, labels: np.ndarray, k: int, m: int,
          nearest: str = "fungi") -> list[list[int]]:
    """FUNGI's top-k, then each label among the embedding's top ``m`` examples that is missing gets a slot: its best
    example by FUNGI similarity replaces the last example of the label FUNGI shows most often; sorted by FUNGI
    similarity. ``nearest="embedding"``: the embedding's nearest example is guaranteed too, and shown nearest."""
    out = []
    for q, (fr, er) in enumerate(zip(f_rank, e_rank, strict=True)):
        chosen = [int(i) for i in fr[:k]]
        want = list(dict.fromkeys(labels[int(i)] for i in er[:m]))
        for lab in want:
            have = Counter(labels[i] for i in chosen)
            if have[lab]:
                continue
            donor = max(have, key=lambda x: (have[x], -max(f_sims[q, i] for i in chosen if labels[i] == x)))
            if have[donor] < 2:
                break
            drop = max((i for i in chosen if labels[i] == donor), key=lambda i: -f_sims[q, i])
            cand = [i for i in fr if labels[int(i)] == lab][:1] or [int(er[list(labels[er[:m]]).index(lab)])]
            chosen[chosen.index(drop)] = int(cand[0])
        chosen.sort(key=lambda i: -f_sims[q, i])
        if nearest == "embedding" and int(er[0]) != chosen[0]:
            first = int(er[0])
            if first in chosen:
                chosen.remove(first)
            else:
                chosen.pop()
            chosen.insert(0, first)
        out.append(chosen)
    return out


def metrics(rows: list, sims: np.ndarray, labels: np.ndarray, gold: list, k: int) -> dict:
    lab = [[labels[i] for i in r] for r in rows]
    sc = [[float(sims[q, i]) for i in r] for q, r in enumerate(rows)]
    m = retrieval_metrics(lab, sc, gold, k)
    return {"gold in k": m[f"gold_in_top{k}"], "1-NN": m["1nn_acc"], "vote": m[f"knn{k}_vote_acc"], "P@k": m[f"p@{k}"],
            "labels": float(np.mean([len(set(x)) for x in lab]))}


def proxy_sims(r: ICLRetriever, queries: list[str], pool_vectors: np.ndarray) -> np.ndarray:
    """Similarity of the pool's FUNGI vectors to each query's embedding block alone (the KL block zeroed)."""
    blocks = r.encoder.encode(queries)
    only = {f: (1.0 if f == "embedding" else 0.0) for f in r.config.features}
    v = r.pca.transform(r.combiner.transform(blocks, only))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v @ pool_vectors.T


def designs_for(tag: str, fungi: ICLRetriever, texts: list, lab: np.ndarray, q_texts: list, e_rank: np.ndarray, k: int,
                with_true: bool) -> dict:
    """The FUNGI-based designs of one FUNGI retriever (``tag``: its KL weight's name)."""
    f_pool = fungi.index.get_vectors(range(len(texts)))
    f_sims = fungi.vectors(q_texts) @ f_pool.T
    p_sims = proxy_sims(fungi, q_texts, f_pool)
    deep = min(200, len(texts))
    f_rank, p_rank = topk(f_sims, deep), topk(p_sims, deep)
    out = {f"fungi{tag}": (f_rank[:, :k].tolist(), f_sims), f"rrf-proxy{tag}": (rrf(f_rank, p_rank, k), f_sims),
           f"cover10-proxy{tag}": (cover(f_rank, p_rank, f_sims, lab, k, 10), f_sims),
           f"cover20-proxy{tag}": (cover(f_rank, p_rank, f_sims, lab, k, 20), f_sims)}
    if with_true:
        overlap = float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(e_rank, p_rank, strict=True)]))
        out.update({"proxy-embedding": (p_rank[:, :k].tolist(), p_sims, overlap), "rrf-true": (rrf(f_rank, e_rank, k), f_sims),
                    "cover20-true": (cover(f_rank, e_rank, f_sims, lab, k, 20), f_sims)})
    return out


def run_size(size: str, pool: tuple, queries: tuple, k: int, kl_weights: list[float]) -> list[dict]:
    texts, labels = pool if size == "all" else sample_per_label(*pool, int(size), seed=0)
    lab = np.array(labels, dtype=object)
    q_texts, gold = queries
    emb = ICLRetriever.from_texts(texts, labels, features=("embedding",), center_blocks=False,
                                  index=VectorIndex(exact_threshold=10**9), show_progress_bar=False)
    e_pool = emb.index.get_vectors(range(len(texts)))
    e_sims = emb.vectors(q_texts) @ e_pool.T
    e_rank = topk(e_sims, min(200, len(texts)))
    designs = {"embedding": (e_rank[:, :k].tolist(), e_sims)}
    weights = {}
    for w in [None, *kl_weights]:  # None: the automatic weight
        fungi = ICLRetriever.from_texts(texts, labels, index=VectorIndex(exact_threshold=10**9), show_progress_bar=False,
                                        block_weights=None if w is None else {"kl": w})
        tag = "" if w is None else f"-kl{w:g}"
        weights[tag] = fungi.block_weights.get("kl")
        designs.update(designs_for(tag, fungi, texts, lab, q_texts, e_rank, k, with_true=w is None))
    rows = []
    for name, (chosen, sims, *overlap) in designs.items():
        tag = next((t for t in weights if t and name.endswith(t)), "")
        rows.append({"per label": size, "design": name, **metrics(chosen, sims, lab, gold, k),
                     "proxy top-k overlap": overlap[0] if overlap else None,
                     "kl weight": None if name == "embedding" else weights[tag]})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    args = parse_args()
    pool_t, pool_l, dev_t, dev_l = dev_split(*load_split(args.data, "train"))
    if args.queries:
        pick = np.random.default_rng(0).choice(len(dev_t), args.queries, replace=False)
        dev_t, dev_l = [dev_t[i] for i in pick], [dev_l[i] for i in pick]
    weights = [float(w) for w in args.kl_weights.split(",") if w]
    rows = [r for size in args.sizes.split(",") for r in run_size(size, (pool_t, pool_l), (dev_t, dev_l), args.k, weights)]
    cols = ["per label", "design", "gold in k", "1-NN", "vote", "P@k", "labels", "kl weight", "proxy top-k overlap"]
    write_results(Path(args.out), {"meta": run_meta(sizes=args.sizes, k=args.k, queries=len(dev_t), kl_weights=weights),
                                   "rows": rows},
                  title=f"Coverage against agreement at k = {args.k}, dev split ({len(dev_t)} queries)",
                  table=markdown_table(rows, cols, digits=4))


if __name__ == "__main__":
    main()
