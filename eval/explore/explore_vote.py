"""Block mixes against the k-NN vote: can a gradient mix raise P@20 without lowering the vote?

With the label-mean KL head every weight that raised P@20 on the dev split also lowered the
similarity-weighted 20-NN vote a little (``eval/archive/results/ablate_quality/dev-heads.md``):
the label head pulls a text's neighbours towards the label whose mean it sits closest to, so a text that sits closer to a
wrong mean gets a neighbourhood of that wrong label. This script encodes the dev split
once per head (label means, k-means prototypes, the paper's random head, plus SimCLR) and
then sweeps mixes of the blocks without re-encoding: block weights, a second, label-free KL
block next to the label one, and the PCA size. Each mix is combined as the retriever does
(blocks centred on the pool mean, L2-normalised, weighted, concatenated, PCA fitted on the
pool) and searched exactly.

    python eval/explore/explore_vote.py

Writes eval/results/ablate_quality/dev-vote.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # eval/: common.py
from common import BASE_FEATURES, DEFAULT_DATA, RESULTS, markdown_table, pool_and_queries, run_meta, write_results

from icl_fungi.evaluation import retrieval_metrics
from icl_fungi.features import FeatureConfig, FungiEncoder
from icl_fungi.pca import PCA

ENCODERS = {  # block name -> (encoder config over common.BASE_FEATURES, block it yields; None: all its blocks)
    "labels": ({"features": ("embedding", "kl", "simclr"), "kl_head": "labels", "kl_center": True, "kl_temperature": 0.07}, None),
    "proto": ({"features": ("embedding", "kl"), "kl_head": "prototypes", "kl_center": False, "kl_temperature": 0.07}, "kl"),
    "random": ({"features": ("embedding", "kl"), "kl_head": "random", "kl_head_dim": 1024, "kl_temperature": 15.0,
                "kl_center": False}, "kl"),
    **{f"knn{t}": ({"features": ("embedding", "kl"), "kl_head": "neighbors", "kl_center": True, "kl_temperature": t}, "kl")
       for t in (0.05, 0.07, 0.1)},
}

# mixes: name -> (block weights, PCA size or None for the embedding dimension)
MIXES: dict[str, tuple[dict[str, float], int | None]] = {"embedding": ({"embedding": 1.0}, None)}
for _kl in (0.15, 0.2, 0.3):
    for _sc in (0.0, 0.3, 0.5, 0.75):
        MIXES[f"kl {_kl} simclr {_sc}"] = ({"embedding": 1.0, "kl": _kl, "simclr": _sc}, None)
for _other in ("proto", "random"):
    for _w in (0.3, 0.5):
        MIXES[f"kl 0.3 simclr 0.3 + {_other} {_w}"] = ({"embedding": 1.0, "kl": 0.3, "simclr": 0.3, _other: _w}, None)
        MIXES[f"{_other} {_w} alone"] = ({"embedding": 1.0, _other: _w}, None)
for _t in (0.05, 0.07, 0.1):  # the soft k-NN head (explore_kl_losses.py), alone and with SimCLR
    for _w in (0.5, 0.75, 1.0):
        for _sc in (0.0, 0.3, 0.5):
            MIXES[f"knn T{_t} {_w} simclr {_sc}"] = ({"embedding": 1.0, f"knn{_t}": _w, "simclr": _sc}, None)
for _pca in (192, 768):
    MIXES[f"kl 0.3 simclr 0.3, PCA {_pca}"] = ({"embedding": 1.0, "kl": 0.3, "simclr": 0.3}, _pca)
    MIXES[f"embedding, PCA {_pca}"] = ({"embedding": 1.0}, _pca)


def combine(blocks: dict[str, np.ndarray], means: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    parts = []
    for f, w in weights.items():
        if w:
            b = blocks[f] - means[f]
            parts.append(w * b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12))
    return np.concatenate(parts, axis=1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: the arguments after the script, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--out", default=str(RESULTS / "ablate_quality" / "dev-vote.json"))
    return ap.parse_args(argv)


def main() -> None:
    args = parse_args()
    pool_t, pool_l, q_t, q_l = pool_and_queries(args.data, "dev")

    pool_b: dict[str, np.ndarray] = {}
    query_b: dict[str, np.ndarray] = {}
    build_s: dict[str, float] = {}
    configs = {}
    for name, (cfg, block) in ENCODERS.items():
        t0 = time.perf_counter()
        configs[name] = FeatureConfig(**{**BASE_FEATURES, **cfg})
        enc = FungiEncoder(config=configs[name], show_progress_bar=False)
        pb, qb = enc.fit_encode(pool_t, pool_l), enc.encode(q_t)
        build_s[name] = round(time.perf_counter() - t0, 1)
        if block is None:
            pool_b.update(pb)
            query_b.update(qb)
        else:
            pool_b[name], query_b[name] = pb[block], qb[block]
        print(f"encoded {name} in {build_s[name]} s", flush=True)
    means = {f: b.mean(axis=0) for f, b in pool_b.items()}

    doc = {"meta": run_meta(split="dev", pool=len(pool_t), queries=len(q_t), k=args.k, encode_s=build_s,
                            encoders={n: c.to_dict() for n, c in configs.items()}),
           "rows": {}}
    for name, (weights, n_comp) in MIXES.items():
        pca = PCA(n_comp or pool_b["embedding"].shape[1])
        pool = pca.fit_transform(combine(pool_b, means, weights)).astype(np.float32)
        qv = pca.transform(combine(query_b, means, weights)).astype(np.float32)
        pool /= np.linalg.norm(pool, axis=1, keepdims=True)
        qv /= np.linalg.norm(qv, axis=1, keepdims=True)
        sims = qv @ pool.T
        top = np.argsort(-sims, axis=1, kind="stable")[:, : args.k]
        m = retrieval_metrics([[pool_l[i] for i in row] for row in top], np.take_along_axis(sims, top, 1).tolist(),
                              q_l, args.k)
        m.update(weights=weights, pca_components=n_comp)
        doc["rows"][name] = m
        print(f"{name:<40} P@{args.k} {m[f'p@{args.k}']:.4f}  1-NN {m['1nn_acc']:.4f}  "
              f"vote {m[f'knn{args.k}_vote_acc']:.4f}", flush=True)
    k, base = args.k, doc["rows"]["embedding"]
    table = [{"mix": n, f"P@{k}": m[f"p@{k}"], "vs embedding": f"{100 * (m[f'p@{k}'] - base[f'p@{k}']):+.2f} pt",
              "1-NN": m["1nn_acc"], f"{k}-NN vote": m[f"knn{k}_vote_acc"],
              "vote vs embedding": f"{100 * (m[f'knn{k}_vote_acc'] - base[f'knn{k}_vote_acc']):+.2f} pt"}
             for n, m in doc["rows"].items()]
    write_results(Path(args.out), doc, title=f"Block mixes vs the k-NN vote (dev split; pool {len(pool_t)}, {len(q_t)} queries)",
                  table=markdown_table(table, ["mix", f"P@{k}", "vs embedding", "1-NN", f"{k}-NN vote", "vote vs embedding"]),
                  notes="Blocks: `kl` = label-mean head, `proto` = k-means prototype head, `random` = the paper's random head "
                        "(T 15, 1024 wide), `knnT` = soft k-NN head at temperature T, `simclr` = 2 dropout views.")


if __name__ == "__main__":
    main()
