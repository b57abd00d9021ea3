"""FUNGI beside the selectors a user would pick and beside Milios et al. (2023) on banking-77 few-shot pools.

Milios, Reddy and Bahdanau, "In-Context Learning for Text Classification with Many Labels" (2023) report
banking-77 with N examples per class: SBERT 1-NN, and LLaMA-2 reading SBERT-retrieved examples. Their split and
pool differ from ours (stated beside the table). Ours: Gemma 3 270M base (completion prompt) reading k = N
examples chosen by each selector from a seeded pool of N per label, on the same seeded test queries; every
selector's 1-NN (the examples alone) and feature build seconds for the pool beside its accuracy.

    python eval/icl/milios_table.py --per-label 10 --limit 1000

Runs ``icl-fungi eval --per-label N`` with the selectors embedding (MiniLM), fungi (the default), bm25 (bm25s) and
mpnet (all-mpnet-base-v2, assembled from PyPI parts by ``common.mpnet_folder``); replies come from and go to
eval/cache/banking77-gemma3-270m-fewshot-completion.jsonl (the learning curve's cache: embedding and fungi are
shared). Writes eval/results/milios/<data folder name>-<N>pl.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # eval/: common.py
from common import (
    DEFAULT_DATA,
    RESULTS,
    ROOT,
    format_difference,
    markdown_table,
    mpnet_folder,
    run_cli_eval,
    run_meta,
    versus_embedding,
    write_results,
)

CACHE = ROOT / "eval" / "cache" / "banking77-gemma3-270m-fewshot-completion.jsonl"
# Published figures (accuracy %, banking-77 test split, their own N-per-class pools): Milios et al. 2023.
MILIOS = {
    5: [("SBERT 1-NN", 78.41), ("LLaMA-2-70B + SBERT-retrieved examples", 88.96)],
    10: [("SBERT 1-NN", 85.39), ("LLaMA-2-7B + SBERT-retrieved examples", 89.45),
         ("LLaMA-2-70B + SBERT-retrieved examples", 92.11)],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: the arguments after the script, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="the banking-77 folder (train.csv, test.csv)")
    ap.add_argument("--per-label", type=int, default=10, help="examples per label in the pool; k is the same")
    ap.add_argument("--limit", default="1000", help="seeded test queries, or 'all'")
    ap.add_argument("--selectors", default=None,
                    help="icl-fungi eval selector specs (default: embedding, fungi, bm25, mpnet)")
    ap.add_argument("--cache", default=str(CACHE), help=f"response cache (default: {CACHE.relative_to(ROOT)})")
    ap.add_argument("--cached-only", action="store_true", help="report what the cache holds; send nothing")
    ap.add_argument("--base-url", default=None, help="an OpenAI-compatible endpoint (default: the embedded local LLM)")
    ap.add_argument("--model", default=None, help="model name at --base-url")
    ap.add_argument("--runs", default=str(ROOT / "runs"), help="folder of the eval run (milios-<N>pl inside)")
    ap.add_argument("--out", default=str(RESULTS / "milios"), help="folder of the result files")
    return ap.parse_args(argv)


def row(name: str, m: dict, report: dict, k: int) -> dict:
    """One selector's row: accuracy with its CI and paired difference, the reader figures and the build cost."""
    pair = versus_embedding(report["paired"], name)
    config = report["selector_configs"].get(name) or {}
    return {"selector": name, "n": m["n"], "accuracy %": 100 * m["accuracy"],
            "95 % CI": "{:.1f}-{:.1f}".format(*(100 * x for x in m["accuracy_ci95"])),
            "vs embedding (95 % CI), McNemar p": format_difference(pair, ".2g"),
            "1-NN %": 100 * m["retrieval"]["1nn_acc"], f"{k}-NN vote %": 100 * m["retrieval"][f"knn{k}_vote_acc"],
            f"P@{k}": m["retrieval"][f"p@{k}"], "gold in top-k": m["retrieval"][f"gold_in_top{k}"],
            "copies nearest": m["answers_nearest_label"], "invalid": m["invalid_rate"],
            "build s": config.get("build_s"), "model load s": config.get("model_load_s")}


def main() -> None:
    args = parse_args()
    n = args.per_label
    data_name = Path(args.data).resolve().name
    selectors = args.selectors or f"embedding,fungi,bm25,mpnet=embedding;model={mpnet_folder()}"
    options = ["--per-label", str(n), "--pool-seed", "0", "-k", str(n), "--limit", args.limit, "--seed", "0",
               "--selectors", selectors, "--cache", args.cache, *(["--cached-only"] if args.cached_only else [])]
    if args.base_url:
        options += ["--base-url", args.base_url, "--model", args.model or "model"]
    cmd, report = run_cli_eval(args.data, Path(args.runs) / f"milios-{n}pl", *options)
    rows = [row(name, m, report, n) for name, m in report["selectors"].items()]
    table = markdown_table(rows, list(rows[0]), digits=3)
    anchors = "\n".join(f"| {who} | {acc:.2f} |" for who, acc in MILIOS.get(n, []))
    notes = ("Milios et al. 2023 at the same examples per class (their split and pool, not ours; accuracy %):\n\n"
             "| published | accuracy % |\n|---|---|\n" + anchors + "\n\n" if anchors else "")
    notes += ("1-NN is the examples alone (the nearest example's label), the figure to set beside their SBERT 1-NN. "
              "build s: the pool's features (model loading apart, in 'model load s'), one run on this machine's "
              "CPUs. Ours is a 270M base model; theirs are LLaMA-2 7B and 70B.")
    write_results(Path(args.out) / f"{data_name}-{n}pl.json",
                  {"meta": run_meta(eval_command=" ".join(cmd), settings=report["settings"],
                                    selector_configs=report["selector_configs"], endpoint=report["endpoint"],
                                    milios_2023=MILIOS.get(n, [])), "rows": rows},
                  title=f"{data_name}, {n} examples per label, k = {n}: {report['endpoint']['model']} and each selector "
                        f"({rows[0]['n']} test queries)",
                  table=table, notes=notes)
    print(table)


if __name__ == "__main__":
    main()
