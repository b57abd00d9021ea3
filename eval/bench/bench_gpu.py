"""FUNGI features on a CUDA GPU: texts/s of the three feature sets at two batch sizes, and CUDA vs CPU agreement.

Meant for a lent GPU machine (the ``device`` tool), which reaches nothing outside it: the model is a folder
(default: the packaged all-MiniLM-L6-v2) and the texts come from ``--texts`` (a JSON of labelled texts) or the
banking-77 train split under ``--data``. The encoder is fitted on the CPU
(KL head, negatives), saved, and loaded on the GPU, so both devices use the same fitted state; the
features of ``--check`` texts must agree within ``--tol`` (max |difference| of unit blocks).

    python eval/bench/bench_gpu.py [--model FOLDER] [--texts texts.json | --data BANKING77] [--batch-sizes 128,512] [--out results.json]

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

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout: icl_fungi without an install (a lent GPU machine)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # eval/: common.py
from common import DEFAULT_DATA, FEATURES_0_3, RESULTS, load_split, markdown_table, run_meta, write_results

from icl_fungi import DEFAULT_MODEL, FeatureConfig, FungiEncoder
from icl_fungi.features import resolve_model

BASE = {k: v for k, v in FEATURES_0_3.items() if k != "features"}  # the 0.3.0 defaults, spelled out; the sets vary `features`
SETS = {"embedding": ("embedding",), "embedding+kl": ("embedding", "kl"), "embedding+kl+simclr": ("embedding", "kl", "simclr")}


def load(folder: str, device: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(folder, device=device).float()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: the arguments after the script, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="sentence-transformers folder (default: the packaged default model)")
    ap.add_argument("--texts", default=None, help='JSON {"texts": [...], "labels": [...]} (default: banking-77 train from --data)')
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--batch-sizes", default="128,512")
    ap.add_argument("--check", type=int, default=512, help="texts compared between CUDA and CPU")
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--out", default=str(RESULTS / "bench_gpu.json"))
    ap.add_argument("--limit", type=int, default=0, help="use the first N texts (0: all)")
    ap.add_argument("--device", default="cuda", help="the accelerator (cpu: a smoke test of this script)")
    return ap.parse_args(argv)


def measure(texts: list[str], labels: list, model: str, device: str, batch_sizes: list[int], check: int) -> dict:
    """Texts/s of every feature set at each batch size on ``device``, and CUDA vs CPU agreement on ``check`` texts."""
    cpu_model, gpu_model = load(model, "cpu"), load(model, device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    result = {"gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else device,
              "torch": torch.__version__, "python": platform.python_version(),
              "n_texts": len(texts), "feature_config": BASE, "sets": {}, "agreement": {}}
    for name, feats in SETS.items():
        cfg = FeatureConfig(**{**BASE, "features": feats})
        cpu = FungiEncoder(cpu_model, cfg, batch_size=64, show_progress_bar=False).fit(texts, labels)
        with tempfile.TemporaryDirectory() as tmp:
            cpu.save(Path(tmp) / "encoder")
            gpu = FungiEncoder.load(Path(tmp) / "encoder", model=gpu_model, show_progress_bar=False)
        a, b = cpu.encode(texts[:check]), gpu.encode(texts[:check])
        result["agreement"][name] = {f: float(np.abs(a[f] - b[f]).max()) for f in feats}
        rows = {}
        for bs in batch_sizes:
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
            if device.startswith("cuda"):
                rows[str(bs)]["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
                torch.cuda.reset_peak_memory_stats()
        result["sets"][name] = rows
        print(name, json.dumps(rows), json.dumps(result["agreement"][name]), flush=True)
    return result


def main() -> None:
    args = parse_args()
    if args.texts:
        data = json.loads(Path(args.texts).read_text())
        texts, labels = data["texts"], data["labels"]
    else:
        texts, labels = load_split(args.data, "train")
    if args.limit:
        texts, labels = texts[: args.limit], labels[: args.limit]
    result = measure(texts, labels, resolve_model(args.model), args.device, [int(x) for x in args.batch_sizes.split(",")], args.check)
    worst = max(v for d in result["agreement"].values() for v in d.values())
    result["max_abs_diff"], result["pass"] = worst, worst <= args.tol
    table = markdown_table([{"features": name, "batch": bs, **row} for name, rows in result["sets"].items() for bs, row in rows.items()],
                           ["features", "batch", "fit_encode_texts_per_s", "encode_texts_per_s", "peak_gpu_mb"], digits=1)
    notes = (f"CUDA vs CPU on the same fitted state ({args.check} texts, max |difference| of unit blocks): "
             f"{json.dumps(result['agreement'])}; largest {worst:.1e} (tolerance {args.tol:g}: {'PASS' if result['pass'] else 'FAIL'}).")
    write_results(Path(args.out), {"meta": run_meta(model=args.model), **result},
                  title=f"FUNGI features on {result['gpu']} ({len(texts):,} texts)", table=table, notes=notes)
    print(f"CUDA vs CPU max |diff| {worst:.2e} ({'PASS' if result['pass'] else 'FAIL'} at {args.tol:g})")

if __name__ == "__main__":
    main()
