"""Does the in-process reader answer as the embedded llama.cpp server did? Identical replies and accuracy, on prompts
the committed caches answered.

Exports the prompts of committed runs with their cached llama.cpp replies (``icl-fungi eval --export-prompts``; by
default the learning curve's four runs, 1,000 test queries x embedding / FUNGI at 5, 10, 20 per label and the full
pool), draws a seeded sample of ``--n`` distinct prompts, answers them with ``TransformersReader`` (replies cached
in ``--cache``, so a rerun answers nothing twice; ``--endpoint-id`` reads replies another machine cached) and
reports the share of identical replies, of identical prompt token counts, and the accuracy of both with the paired
difference (95 % CI, McNemar p).

    python eval/reader/fidelity.py --n 1000 --batch-size 8 --out eval/results/reader/fidelity-cpu.json
"""

from __future__ import annotations

import argparse
import json
import lzma
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import DEFAULT_DATA, ROOT, load_split, markdown_table, run_meta, write_results

from icl_fungi.evaluation.dispatch import send_all
from icl_fungi.evaluation.llm import ResponseCache
from icl_fungi.evaluation.metrics import paired_comparison, parse_label
from icl_fungi.evaluation.reader import TransformersReader

FEWSHOT = "eval/cache/banking77-gemma3-270m-fewshot-completion.jsonl"
FULL = "eval/cache/banking77-gemma3-270m-k20-completion.jsonl"
# the learning curve's runs (eval/results/learning-curve): name -> icl-fungi eval options
RUNS = {f"{n}pl": ["--per-label", str(n), "-k", str(n), "--cache", FEWSHOT] for n in (5, 10, 20)}
RUNS["all"] = ["-k", "20", "--cache", FULL]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: the arguments after the script, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--prompts", default=None, help="exported prompt files, comma-separated (default: export the learning curve's)")
    ap.add_argument("--limit", default="1000", help="test queries of each exported run (default: 1000)")
    ap.add_argument("--n", type=int, default=1000, help="distinct prompts compared (seeded sample; default: 1000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=str(ROOT / "eval" / "cache" / "reader-fidelity-cpu.jsonl"), help="the reader's response cache")
    ap.add_argument("--endpoint-id", default=None, help="read the reader's replies under this endpoint id (another machine's)")
    ap.add_argument("--reader-model", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--runs", default=str(ROOT / "runs" / "reader-export"), help="where the exported prompts go")
    ap.add_argument("--out", default=str(ROOT / "eval" / "results" / "reader" / "fidelity-cpu.json"))
    return ap.parse_args(argv)


def export(args: argparse.Namespace) -> list[Path]:
    """The learning curve's prompts with their cached replies, one file per run."""
    files = []
    for name, options in RUNS.items():
        path = Path(args.runs) / f"{name}.jsonl"
        if not path.is_file():
            cmd = [sys.executable, "-m", "icl_fungi.cli", "-q", "eval", "--data", args.data, "--selectors", "embedding,fungi",
                   "--limit", args.limit, "--cached-only", "--export-prompts", str(path), "--out", str(Path(args.runs) / f"out-{name}"),
                   *options]
            subprocess.run(cmd, check=True, cwd=ROOT)
        files.append(path)
    return files


def read_rows(files: list[Path]) -> list[dict]:
    """Rows with a cached reply, one per distinct prompt (the first seen), each with the file it came from."""
    rows: dict[str, dict] = {}
    for f in files:
        opener = lzma.open if f.suffix == ".xz" else open
        with opener(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                if row.get("reply") is not None:
                    rows.setdefault(json.dumps(row["prompt"], sort_keys=True, ensure_ascii=False), {**row, "file": f.name})
    return list(rows.values())


def compare(rows: list[dict], replies: list, labels: list) -> dict:
    """Identical replies and token counts, both accuracies and their paired difference."""
    same = [r["reply"] == x.text for r, x in zip(rows, replies, strict=True)]
    same_label = [parse_label(r["reply"], labels) == parse_label(x.text, labels) for r, x in zip(rows, replies, strict=True)]
    tokens = [r.get("prompt_tokens") == x.prompt_tokens for r, x in zip(rows, replies, strict=True) if r.get("prompt_tokens")]
    server_ok = [parse_label(r["reply"], labels) == r["gold"] for r in rows]
    reader_ok = [parse_label(x.text, labels) == r["gold"] for r, x in zip(rows, replies, strict=True)]
    pair = paired_comparison(reader_ok, server_ok)
    return {"n": len(rows), "identical": float(np.mean(same)), "same_label": float(np.mean(same_label)),
            "same_prompt_tokens": float(np.mean(tokens)) if tokens else None, "n_with_tokens": len(tokens),
            "accuracy_server": float(np.mean(server_ok)), "accuracy_reader": float(np.mean(reader_ok)),
            "difference": pair["difference"], "ci95": pair["ci95"], "mcnemar_p": pair["mcnemar_p"]}


def main() -> None:
    args = parse_args()
    files = [Path(f) for f in args.prompts.split(",")] if args.prompts else export(args)
    rows = read_rows(files)
    pick = np.sort(np.random.default_rng(args.seed).choice(len(rows), size=min(args.n, len(rows)), replace=False))
    rows = [rows[i] for i in pick]
    labels = sorted(set(load_split(args.data, "train")[1]))
    reader = TransformersReader(args.reader_model, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                                cache=ResponseCache(args.cache), endpoint_id=args.endpoint_id)
    replies = send_all(reader, [r["prompt"] for r in rows], show_progress=sys.stderr.isatty())
    overall = compare(rows, replies, labels)
    by_file = {f: compare([r for r in rows if r["file"] == f], [x for r, x in zip(rows, replies, strict=True) if r["file"] == f], labels)
               for f in dict.fromkeys(r["file"] for r in rows)}
    table_rows = [{"prompts": name, **m} for name, m in {"all": overall, **by_file}.items()]
    table = markdown_table(table_rows, ["prompts", "n", "identical", "same_label", "same_prompt_tokens", "accuracy_server",
                                        "accuracy_reader", "difference", "mcnemar_p"], digits=4)
    mismatches = [{"server": r["reply"], "reader": x.text, "gold": r["gold"]} for r, x in zip(rows, replies, strict=True)
                  if r["reply"] != x.text][:20]
    write_results(Path(args.out), {"meta": run_meta(reader=reader.endpoint_id, device=args.device, dtype=args.dtype,
                                                    batch_size=args.batch_size, n=args.n, seed=args.seed,
                                                    prompt_files=[f.name for f in files], server="embedded:gemma-3-270m-q4_k_m"),
                                   "overall": overall, "by_file": by_file, "mismatches": mismatches},
                  title=f"In-process reader against the llama.cpp server: {reader.endpoint_id}", table=table)
    print(table)


if __name__ == "__main__":
    main()
