"""Dev-split ablation that chose the core defaults (views depth, projection kind, SimCLR views).

Tunes on a seeded, stratified 20 % dev split carved from banking-77 *train*; the
test split is not touched. Prints a table and writes JSON + Markdown under eval/results/.

    python eval/ablate_core.py [--data ../shared/data/banking77] [--configs NAME,...]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from icl_fungi import ICLRetriever, __version__, load_pool
from icl_fungi.evaluation import retrieval_metrics, stratified_split

# the paper's recipe, spelled out (the library defaults changed after this ablation: see ablate_quality.py)
_RECIPE = {"kl_head": "random", "kl_head_dim": 1024, "kl_temperature": 15.0, "center_blocks": False}
PAPER = {**_RECIPE, "block_weights": {"kl": 1.0, "simclr": 1.0}}
PAPER_KL = {**_RECIPE, "block_weights": {"kl": 1.0}}
CONFIGS: dict[str, dict] = {
    "embedding": {"features": ("embedding",), "center_blocks": False},
    "emb+kl": {"features": ("embedding", "kl"), **PAPER_KL},
    "emb+kl+simclr (views: all blocks)": {"features": ("embedding", "kl", "simclr"), **PAPER, "simclr_view_blocks": None},
    "emb+kl+simclr (views: last block)": {"features": ("embedding", "kl", "simclr"), **PAPER, "simclr_view_blocks": 1},
    "emb+kl+simclr (last block; dense proj)": {
        "features": ("embedding", "kl", "simclr"), **PAPER, "simclr_view_blocks": 1, "projection": "dense"},
    "emb+kl+simclr (last block; 4 views)": {
        "features": ("embedding", "kl", "simclr"), **PAPER, "simclr_view_blocks": 1, "simclr_views": 4},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/banking77"))
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated config names")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "ablate_core"))
    args = ap.parse_args()
    texts, labels = load_pool(Path(args.data) / "train.csv", label_column="category")
    keep, dev = stratified_split(labels, 0.2, seed=0)
    pool = [{"text": texts[i], "label": labels[i]} for i in keep]
    q_texts, q_labels = [texts[i] for i in dev], [labels[i] for i in dev]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in args.configs.split(","):
        if name in results:  # resumable: finished configs are kept
            print(f"{name}: cached", file=sys.stderr)
            continue
        t0 = time.perf_counter()
        r = ICLRetriever.from_dataset(pool, show_progress_bar=False, **CONFIGS[name])
        build = time.perf_counter() - t0
        res = r.retrieve_batch(q_texts, k=args.k)
        m = retrieval_metrics([[x.label for x in row] for row in res], [[x.score for x in row] for row in res], q_labels, args.k)
        m.update(build_s=round(build, 1), config={k: list(v) if isinstance(v, tuple) else v for k, v in CONFIGS[name].items()})
        results[name] = m
        print(name, json.dumps(m), file=sys.stderr, flush=True)
        results_path.write_text(json.dumps(results, indent=2))
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "icl_fungi": __version__,
            "python": platform.python_version(), "pool": len(pool), "dev_queries": len(dev), "k": args.k,
            "split": "stratified 20% of banking-77 train, seed 0"}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    k = args.k
    lines = [f"# Core ablation (dev split: {meta['split']}; pool {len(pool)}, {len(dev)} queries)", "",
             f"| config | P@{k} | gold in top-{k} | 1-NN acc | weighted {k}-NN vote | build s |", "|---|---|---|---|---|---|"]
    for name, m in results.items():
        lines.append(f"| {name} | {m[f'p@{k}']:.4f} | {m[f'gold_in_top{k}']:.4f} | {m['1nn_acc']:.4f} | "
                     f"{m[f'knn{k}_vote_acc']:.4f} | {m['build_s']} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
