"""Block mixes against the k-NN vote: can a gradient mix raise P@20 without lowering the vote?

With the label-mean KL head every weight that raised P@20 on the dev split also lowered the
similarity-weighted 20-NN vote a little (``dev-heads.md``): the label head pulls a text's
neighbours towards the label whose mean it sits closest to, so a text that sits closer to a
wrong mean gets a neighbourhood of that wrong label. This script encodes the dev split
once per head (label means, k-means prototypes, the paper's random head, plus SimCLR) and
then sweeps mixes of the blocks without re-encoding: block weights, a second, label-free KL
block next to the label one, and the PCA size. Each mix is combined as the retriever does
(blocks centred on the pool mean, L2-normalised, weighted, concatenated, PCA fitted on the
pool) and searched exactly.

    python eval/explore_vote.py

Writes eval/results/ablate_quality/dev-vote.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from icl_fungi import load_pool
from icl_fungi.encoder import FeatureConfig
from icl_fungi.evaluation import retrieval_metrics, stratified_split
from icl_fungi.projection import PCA

sys.path.insert(0, str(Path(__file__).resolve().parent))
from explore_kl_losses import LossEncoder

ENCODERS = {  # block name -> (encoder config, block it yields, loss of explore_kl_losses.LossEncoder)
    "labels": ({"features": ("embedding", "kl", "simclr"), "kl_head": "labels"}, None, "entropy"),
    "proto": ({"features": ("embedding", "kl"), "kl_head": "prototypes"}, "kl", "entropy"),
    "random": ({"features": ("embedding", "kl"), "kl_head": "random", "kl_head_dim": 1024, "kl_temperature": 15.0},
               "kl", "entropy"),
    **{f"knn{t}": ({"features": ("embedding", "kl"), "kl_temperature": t}, "kl", "knn") for t in (0.05, 0.07, 0.1)},
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/banking77"))
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "ablate_quality" / "dev-vote"))
    args = ap.parse_args()
    texts, labels = load_pool(Path(args.data) / "train.csv", label_column="category")
    keep, held = stratified_split(labels, 0.2, seed=0)
    pool_t, pool_l = [texts[i] for i in keep], [labels[i] for i in keep]
    q_t, q_l = [texts[i] for i in held], [labels[i] for i in held]

    pool_b: dict[str, np.ndarray] = {}
    query_b: dict[str, np.ndarray] = {}
    build_s: dict[str, float] = {}
    for name, (cfg, block, loss) in ENCODERS.items():
        t0 = time.perf_counter()
        enc = LossEncoder(config=FeatureConfig(**cfg), loss=loss, show_progress_bar=False)
        pb, qb = enc.fit_encode(pool_t, pool_l), enc.encode(q_t)
        build_s[name] = round(time.perf_counter() - t0, 1)
        if block is None:
            pool_b.update(pb)
            query_b.update(qb)
        else:
            pool_b[name], query_b[name] = pb[block], qb[block]
        print(f"encoded {name} in {build_s[name]} s", flush=True)
    means = {f: b.mean(axis=0) for f, b in pool_b.items()}

    doc = {"meta": {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "pool": len(pool_t),
                    "queries": len(q_t), "k": args.k, "python": platform.python_version(),
                    "command": " ".join(sys.argv), "encode_s": build_s,
                    "split": "dev: stratified 20% of banking-77 train (seed 0) held out"},
           "results": {}}
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
        doc["results"][name] = m
        print(f"{name:<40} P@{args.k} {m[f'p@{args.k}']:.4f}  1-NN {m['1nn_acc']:.4f}  "
              f"vote {m[f'knn{args.k}_vote_acc']:.4f}", flush=True)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2))
    write_table(doc, out, args.k)


def write_table(doc: dict, stem: Path, k: int) -> None:
    res = doc["results"]
    base = res["embedding"]
    lines = [f"# Block mixes vs the k-NN vote (dev split; pool {doc['meta']['pool']}, {doc['meta']['queries']} queries, "
             "all-MiniLM-L6-v2, CPU)", "", f"`{doc['meta']['command']}`", "",
             "Blocks: `kl` = label-mean head (default), `proto` = k-means prototype head, `random` = the paper's "
             "random head (T 15, 1024 wide), `knnT` = soft k-NN head at temperature T (see `dev-losses.md`), "
             "`simclr` = 2 dropout views.", "",
             f"| mix | P@{k} | vs embedding | 1-NN acc | weighted {k}-NN vote | vote vs embedding |", "|---|---|---|---|---|---|"]
    for name, m in res.items():
        lines.append(f"| {name} | {m[f'p@{k}']:.4f} | {100 * (m[f'p@{k}'] - base[f'p@{k}']):+.2f} pt | {m['1nn_acc']:.4f} | "
                     f"{m[f'knn{k}_vote_acc']:.4f} | {100 * (m[f'knn{k}_vote_acc'] - base[f'knn{k}_vote_acc']):+.2f} pt |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
