"""Block weights against pool shape and encoder: which KL (and SimCLR) weight is best where, and what
about a pool predicts it?

For each setting (an encoder and a pool carved from the dev pool: all of it, or ``n`` examples per
label), the pool and the dev queries are encoded once; then mixes of the blocks are swept without
re-encoding, combined as the retriever does (block means, weights, PCA on the pool, exact search).
Each setting also records statistics of the pool a rule could use: examples per label, and the
leave-one-out 1-NN accuracy and label margin of the plain embedding on a pool sample.

    python eval/explore/explore_weights.py [--encoders minilm,mpnet,gemma] [--per-label 5,20,0] [--simclr 0,0.3]

``--simclr 0`` computes no SimCLR block (the 0.4.0 default features: embedding and KL).

Each setting also gets a row for the library's ``fit_weights="auto"`` rule.

Writes eval/results/ablate_quality/dev-weights.{json,md}. Gemma 3 270M needs the ``gguf`` extra.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # eval/: common.py
sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder's scripts it imports
from common import (
    DEFAULT_DATA,
    FEATURES_0_3,
    RESULTS,
    markdown_table,
    mpnet_folder,
    pool_and_queries,
    read_results,
    run_meta,
    write_results,
)
from explore_small_pools import small_pool

from icl_fungi.combine import BlockCombiner
from icl_fungi.evaluation import retrieval_metrics
from icl_fungi.features import FeatureConfig, FungiEncoder
from icl_fungi.pca import PCA

KL_WEIGHTS = (0.0, 0.15, 0.3, 0.5, 0.75, 1.0, 1.5)


def load_encoder(name: str, config: FeatureConfig) -> FungiEncoder:
    if name == "minilm":
        return FungiEncoder(config=config, show_progress_bar=False)
    if name == "gemma":
        from ablate_gemma import load_gemma

        return FungiEncoder(load_gemma(), config, batch_size=16, show_progress_bar=False)
    if name == "mpnet":  # all-mpnet-base-v2, assembled from its PyPI parts
        return FungiEncoder(str(mpnet_folder()), config, show_progress_bar=False)
    return FungiEncoder(name, config, show_progress_bar=False)  # any sentence-transformers name or folder


def pool_stats(emb: np.ndarray, labels: list, sample: int = 2000, seed: int = 0) -> dict:
    """Examples per label, and the plain embedding's leave-one-out 1-NN accuracy and mean label margin on a sample."""
    lab = np.array([str(x) for x in labels])
    rows = np.random.default_rng(seed).choice(len(lab), min(sample, len(lab)), replace=False)
    sims = emb[rows] @ emb.T
    sims[np.arange(len(rows)), rows] = -np.inf
    nn = np.argmax(sims, axis=1)
    same = lab[None, :] == lab[rows][:, None]
    best_same = np.where(same, sims, -np.inf).max(1)
    best_other = np.where(~same, sims, -np.inf).max(1)
    counts = np.unique(lab, return_counts=True)[1]
    return {"n": len(lab), "labels": len(counts), "per_label": float(np.median(counts)),
            "loo_1nn": float(np.mean(lab[nn] == lab[rows])),
            "margin": float(np.mean(np.where(np.isfinite(best_same), best_same - best_other, -1.0)))}


def evaluate(pool: dict, queries: dict, pool_labels: list, q_labels: list, weights: dict, k: int) -> dict:
    feats = tuple(f for f in ("embedding", "kl", "simclr") if weights.get(f, 0) > 0)
    comb = BlockCombiner(feats, weights={f: weights[f] for f in feats}).fit(pool)
    pca = PCA(pool["embedding"].shape[1]).fit(comb.transform(pool))
    P, Q = pca.transform(comb.transform(pool)), pca.transform(comb.transform(queries))
    P /= np.linalg.norm(P, axis=1, keepdims=True)
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    sims = Q @ P.T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return retrieval_metrics([[pool_labels[i] for i in row] for row in top], np.take_along_axis(sims, top, 1).tolist(), q_labels, k)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: the arguments after the script, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--encoders", default="minilm")
    ap.add_argument("--per-label", default="5,20,0", help="examples per label in the pool (0: the whole dev pool)")
    ap.add_argument("--simclr", default="0,0.3", help="SimCLR weights swept with every KL weight")
    ap.add_argument("--queries", type=int, default=0, help="seeded dev query sample (0: all)")
    ap.add_argument("--out", default=str(RESULTS / "ablate_quality" / "dev-weights.json"))
    return ap.parse_args(argv)


def main() -> None:
    args = parse_args()
    pool_t, pool_l, q_t, q_l = pool_and_queries(args.data, "dev")
    if args.queries:
        rows = np.sort(np.random.default_rng(0).choice(len(q_t), args.queries, replace=False))
        q_t, q_l = [q_t[i] for i in rows], [q_l[i] for i in rows]
    simclr_weights = [float(x) for x in args.simclr.split(",")]
    path = Path(args.out)
    rows_out = read_results(path).get("rows", {})
    for enc_name in args.encoders.split(","):
        # Gemma 3 has no Dropout modules: its SimCLR views delete words; without a SimCLR weight the block is not computed
        feats = ("embedding", "kl", "simclr") if max(simclr_weights) > 0 else ("embedding", "kl")
        cfg = FeatureConfig(**{**FEATURES_0_3, "features": feats,
                               **({"simclr_view_mode": "word_deletion"} if enc_name == "gemma" else {})})
        enc = None
        for per in (int(x) for x in args.per_label.split(",")):
            setting = f"{enc_name}, {per or 'all'}/label"
            if f"{setting}: auto" in rows_out:
                continue
            enc = enc or load_encoder(enc_name, cfg)
            p_t, p_l = (pool_t, pool_l) if per == 0 else small_pool(pool_t, pool_l, per, np.random.default_rng(0))
            k = min(20, per) if per else 20
            t0 = time.perf_counter()
            fresh = FungiEncoder(enc.model, cfg, batch_size=enc.batch_size, show_progress_bar=False)
            pool_b, q_b = fresh.fit_encode(p_t, p_l), fresh.encode(q_t)
            stats = {**pool_stats(pool_b["embedding"], p_l), "encode_s": round(time.perf_counter() - t0, 1)}
            for sc in simclr_weights:
                for w in KL_WEIGHTS:
                    m = evaluate(pool_b, q_b, p_l, q_l, {"embedding": 1.0, "kl": w, "simclr": sc}, k)
                    rows_out[f"{setting}: kl {w:g} simclr {sc:g}"] = {**m, "k": k, "kl": w, "simclr": sc, "setting": setting,
                                                                    "stats": stats, "feature_config": cfg.to_dict()}
                    print(f"{setting:<22} kl {w:<5g} simclr {sc:<4g} P@{k} {m[f'p@{k}']:.4f}  1-NN {m['1nn_acc']:.4f}  "
                          f"vote {m[f'knn{k}_vote_acc']:.4f}", flush=True)
            # the library's fit_weights="auto" rule on this pool (SimCLR, when computed, at 0.3)
            comb = BlockCombiner(cfg.features, weights={"simclr": 0.3} if "simclr" in cfg.features else None).fit(pool_b)
            auto = comb.auto_weights(pool_b, p_l, seed=cfg.seed)
            m = evaluate(pool_b, q_b, p_l, q_l, auto["weights"], k)
            rows_out[f"{setting}: auto"] = {**m, "k": k, "kl": auto["weights"]["kl"], "simclr": auto["weights"].get("simclr", 0.0),
                                            "setting": setting, "rule": "auto", "stats": {**stats, "auto_loo_p@k": auto["loo_p@k"]},
                                            "feature_config": cfg.to_dict()}
            print(f"{setting:<22} auto: kl {auto['weights']['kl']:g} (embedding loo P@{auto['k']} {auto['loo_p@k']:.4f})  "
                  f"P@{k} {m[f'p@{k}']:.4f}  1-NN {m['1nn_acc']:.4f}  vote {m[f'knn{k}_vote_acc']:.4f}", flush=True)
            write_results(path, {"meta": run_meta(queries=len(q_t)), "rows": rows_out}, title="Block weights (dev split)", table="")
    table = [{"setting": r["setting"] + (" (auto)" if r.get("rule") else ""), "kl": r["kl"], "simclr": r["simclr"],
              "P@k": r[f"p@{r['k']}"], "k": r["k"], "1-NN": r["1nn_acc"],
              "k-NN vote": r[f"knn{r['k']}_vote_acc"], "loo 1-NN (pool)": r["stats"]["loo_1nn"],
              "embedding loo P@k": r["stats"].get("auto_loo_p@k"), "margin": r["stats"]["margin"]}
             for r in rows_out.values()]
    cols = ["setting", "kl", "simclr", "P@k", "k", "1-NN", "k-NN vote", "loo 1-NN (pool)", "embedding loo P@k", "margin"]
    write_results(path, {"meta": run_meta(queries=len(q_t)), "rows": rows_out},
                  title=f"Block weights against pool shape and encoder (dev split, {len(q_t)} queries)", table=markdown_table(table, cols))


if __name__ == "__main__":
    main()
