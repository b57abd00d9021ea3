"""FUNGI features on a CUDA GPU: texts/s of the three feature sets at two batch sizes, and CUDA vs CPU agreement.

Meant for a lent GPU machine (the ``device`` tool): the model folder and a JSON of labelled texts are
passed as paths, since such a machine reaches nothing outside it. The encoder is fitted on the CPU
(KL head, negatives), saved, and loaded on the GPU, so both devices use the same fitted state; the
features of ``--check`` texts must agree within ``--tol`` (max |difference| of unit blocks).

    python eval/bench_gpu.py --model FOLDER --texts texts.json [--batch-sizes 128,512] [--out results.json]

``texts.json``: ``{"texts": [...], "labels": [...]}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from icl_fungi import FeatureConfig, FungiEncoder

# the 0.3.0 defaults, spelled out (as common.FEATURES_0_3; this script runs without the rest of eval/)
BASE = {"target_layer": "ffn_output", "kl_head": "labels", "kl_head_dim": 256, "kl_temperature": 0.07, "kl_center": True,
        "center_blocks": True, "simclr_views": 2, "simclr_view_mode": "dropout", "simclr_dropout": None, "simclr_view_blocks": 1,
        "word_deletion_p": 0.1, "simclr_temperature": 0.07, "simclr_negatives": 256, "projection": "tensor_sketch",
        "projection_dim": None, "seed": 0}
SETS = {"embedding": ("embedding",), "embedding+kl": ("embedding", "kl"), "embedding+kl+simclr": ("embedding", "kl", "simclr")}


def load(folder: str, device: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(folder, device=device).float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--texts", required=True)
    ap.add_argument("--batch-sizes", default="128,512")
    ap.add_argument("--check", type=int, default=512, help="texts compared between CUDA and CPU")
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--out", default="bench_gpu.json")
    ap.add_argument("--limit", type=int, default=0, help="use the first N texts (0: all)")
    ap.add_argument("--device", default="cuda", help="the accelerator (cpu: a smoke test of this script)")
    args = ap.parse_args()
    data = json.loads(Path(args.texts).read_text())
    texts, labels = data["texts"], data["labels"]
    if args.limit:
        texts, labels = texts[: args.limit], labels[: args.limit]
    cpu_model, gpu_model = load(args.model, "cpu"), load(args.model, args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    result = {"gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else args.device,
              "torch": torch.__version__, "python": platform.python_version(),
              "n_texts": len(texts), "feature_config": BASE, "sets": {}, "agreement": {}}
    for name, feats in SETS.items():
        cfg = FeatureConfig(**{**BASE, "features": feats})
        cpu = FungiEncoder(cpu_model, cfg, batch_size=64, show_progress_bar=False).fit(texts, labels)
        with tempfile.TemporaryDirectory() as tmp:
            cpu.save(Path(tmp) / "encoder")
            gpu = FungiEncoder.load(Path(tmp) / "encoder", model=gpu_model, show_progress_bar=False)
        a, b = cpu.encode(texts[: args.check]), gpu.encode(texts[: args.check])
        result["agreement"][name] = {f: float(np.abs(a[f] - b[f]).max()) for f in feats}
        rows = {}
        for bs in (int(x) for x in args.batch_sizes.split(",")):
            enc = FungiEncoder(gpu_model, cfg, batch_size=bs, show_progress_bar=False)
            step = max(1, len(texts) // (bs * 2))
            enc.fit_encode(texts[::step][: bs * 2], labels[::step][: bs * 2])  # warm-up: kernels, allocator
            sync()
            t0 = time.perf_counter()
            enc.fit_encode(texts, labels)
            sync()
            build = time.perf_counter() - t0
            t0 = time.perf_counter()
            enc.encode(texts)
            sync()
            query = time.perf_counter() - t0
            rows[str(bs)] = {"fit_encode_texts_per_s": round(len(texts) / build, 1), "encode_texts_per_s": round(len(texts) / query, 1)}
            if args.device.startswith("cuda"):
                rows[str(bs)]["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
                torch.cuda.reset_peak_memory_stats()
        result["sets"][name] = rows
        print(name, json.dumps(rows), json.dumps(result["agreement"][name]), flush=True)
    worst = max(v for d in result["agreement"].values() for v in d.values())
    result["max_abs_diff"], result["pass"] = worst, worst <= args.tol
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"CUDA vs CPU max |diff| {worst:.2e} ({'PASS' if result['pass'] else 'FAIL'} at {args.tol:g})")


if __name__ == "__main__":
    main()
