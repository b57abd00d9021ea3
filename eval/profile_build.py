"""Where the build time goes: cProfile of ``ICLRetriever.fit`` on the banking-77 train pool (default features).

    python eval/profile_build.py [--data ../shared/data/banking77] [--n 10003]

Prints the cumulative time of the build's stages (after a warm-up build of 64 texts).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BASE_FEATURES, BASE_WEIGHTS, DEFAULT_DATA, load_split

from icl_fungi import FeatureConfig, FungiEncoder, ICLRetriever

STAGES = {
    "trunk": "trunk forward (embedding + KL graph)",
    "blocks": "gradient blocks (view forward, backward, projections)",
    "run_backward": "  backward (KL + SimCLR, one call per batch)",
    "transform": "  per-sample gradient + projection",
    "hook": "  dropout masks",
    "_fit_negatives": "SimCLR negative bank",
    "_fit_head": "KL head",
    "build": "index build",
    "tokenize": "tokenise batches",
    "token_lengths": "length sorting (tokenise)",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--n", type=int, default=10003)
    args = ap.parse_args()
    texts, labels = load_split(args.data, "train")
    texts, labels = texts[: args.n], labels[: args.n]
    config = FeatureConfig(**BASE_FEATURES)  # the 0.2.0 defaults, spelled out
    warm = ICLRetriever(FungiEncoder(config=config, show_progress_bar=False), block_weights=BASE_WEIGHTS).fit(texts[:64], labels[:64])
    retriever = ICLRetriever(FungiEncoder(warm.encoder.model, config, show_progress_bar=False), block_weights=BASE_WEIGHTS)
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
