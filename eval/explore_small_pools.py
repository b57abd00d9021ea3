"""KL heads on small pools: does the soft k-NN head keep its gain when each label has few examples?

ICL pools are often small. From the dev pool (stratified 80 % of banking-77 train) a seeded
sample of ``n`` examples per label is kept; the 1,998 dev queries are searched against it
with P@k for k = min(20, n). Heads: label means (T 0.07) and soft k-NN (T 0.05), centred,
KL block weights 0.3 / 0.5 / 1, combined as the retriever does (exact search).

    python eval/explore_small_pools.py [--per-label 5,20]

Writes eval/results/ablate_quality/dev-small-pools.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from icl_fungi import ICLRetriever, load_pool
from icl_fungi.evaluation import retrieval_metrics, stratified_split

HEADS = ("labels", "neighbors")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/banking77"))
    ap.add_argument("--per-label", default="5,20")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "ablate_quality" / "dev-small-pools"))
    args = ap.parse_args()
    texts, labels = load_pool(Path(args.data) / "train.csv", label_column="category")
    keep, held = stratified_split(labels, 0.2, seed=0)
    q_t, q_l = [texts[i] for i in held], [labels[i] for i in held]
    doc = {"meta": {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "queries": len(q_t),
                    "python": platform.python_version(), "command": " ".join(sys.argv)}, "results": {}}
    by: dict[str, list[int]] = {}
    for i in keep:
        by.setdefault(labels[i], []).append(i)
    rng = np.random.default_rng(0)
    for n in (int(x) for x in args.per_label.split(",")):
        pool = sorted(j for members in by.values() for j in rng.choice(members, size=min(n, len(members)), replace=False))
        p_t, p_l = [texts[i] for i in pool], [labels[i] for i in pool]
        k = min(20, n)
        configs = {"embedding": ({"features": ("embedding",), "center_blocks": False}, {})}
        for head in HEADS:
            for w in (0.3, 0.5, 1.0):
                configs[f"{head} w{w:g}"] = ({"features": ("embedding", "kl"), "kl_head": head}, {"kl": w})
        for name, (cfg, weights) in configs.items():
            r = ICLRetriever.from_dataset([{"text": t, "label": lab} for t, lab in zip(p_t, p_l, strict=True)],
                                          block_weights=weights or None, show_progress_bar=False,
                                          **cfg)
            res = r.retrieve_batch(q_t, k)
            m = retrieval_metrics([[x.label for x in row] for row in res], [[x.score for x in row] for row in res], q_l, k)
            doc["results"][f"{n}/label: {name}"] = {**m, "pool": len(p_t), "k": k}
            print(f"{n}/label ({len(p_t)}) {name:<16} P@{k} {m[f'p@{k}']:.4f}  1-NN {m['1nn_acc']:.4f}  "
                  f"vote {m[f'knn{k}_vote_acc']:.4f}", flush=True)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2))
    lines = [f"# KL heads on small pools (dev queries: {len(q_t)}; all-MiniLM-L6-v2, CPU)", "", f"`{doc['meta']['command']}`", "",
             "| pool | P@k | k | 1-NN acc | weighted k-NN vote |", "|---|---|---|---|---|"]
    for name, m in doc["results"].items():
        k = m["k"]
        lines.append(f"| {name} | {m[f'p@{k}']:.4f} | {k} | {m['1nn_acc']:.4f} | {m[f'knn{k}_vote_acc']:.4f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
