"""Where the build time goes: cProfile of ``ICLRetriever.fit`` on the banking-77 train pool (default features).

    python eval/profile_build.py [--data ../shared/data/banking77] [--n 10003]

Prints the cumulative time of the build's stages (after a warm-up build of 64 texts).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from pathlib import Path

from icl_fungi import FungiEncoder, ICLRetriever, load_pool

STAGES = {
    "_trunk": "trunk forward (embedding + KL graph)",
    "_gradient_blocks": "gradient blocks (view forward, backward, projections)",
    "run_backward": "  backward (KL + SimCLR, one call per batch)",
    "transform": "  per-sample gradient + projection",
    "hook": "  dropout masks",
    "_fit_negatives": "SimCLR negative bank",
    "spherical_kmeans": "k-means prototypes",
    "build": "index build",
    "_tokenize": "tokenise batches",
    "token_lengths": "length sorting (tokenise)",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/banking77"))
    ap.add_argument("--n", type=int, default=10003)
    args = ap.parse_args()
    texts, labels = load_pool(Path(args.data) / "train.csv", label_column="category")
    texts, labels = texts[: args.n], labels[: args.n]
    warm = ICLRetriever.from_dataset([{"text": t, "label": lab} for t, lab in zip(texts[:64], labels[:64], strict=True)],
                                     show_progress_bar=False)
    retriever = ICLRetriever(FungiEncoder(warm.encoder.model, warm.encoder.config, show_progress_bar=False))
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    retriever.fit(texts, labels)
    prof.disable()
    print(f"build of {len(texts)} texts under the profiler: {time.perf_counter() - t0:.1f} s")
    seen = set()
    for (path, line, fn), (_, _, _, cum, _) in sorted(pstats.Stats(prof).stats.items(), key=lambda kv: -kv[1][3]):
        name = "run_backward" if "run_backward" in fn else fn
        if name in STAGES and name not in seen and ("icl_fungi" in path or name == "run_backward"):
            seen.add(name)  # the largest entry of each name (the gradient projection's transform, not the PCA's)
            print(f"{STAGES[name]:55s} {cum:7.2f} s  ({Path(path).name}:{line})")


if __name__ == "__main__":
    main()
