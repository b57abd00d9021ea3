"""In-context accuracy on the dev split, the LLM in the loop: which selector should the test run use?

Writes the dev split of train (``common.dev_split``: 80 % pool, 20 % held-out queries) as a data
folder under ``runs/``, runs ``icl-fungi eval`` on it with the given selector specs (same CLI any
user has), then summarises the run: accuracy of each selector, its paired difference to the
``embedding`` selector, and what the LLM saw (share of prompts whose most similar example has the
gold label, share of gold-label examples among the k).

    python eval/icl/icl_dev.py --selectors "embedding,kl=fungi;features=embedding+kl" --limit 300
    python eval/icl/icl_dev.py --selectors embedding,fungi --name dev-icl-tf --eval-args "--reader transformers --device cuda"

Responses are cached in eval/cache/banking77-dev-gemma3-270m-k20-completion.jsonl (resumable).
Writes eval/results/icl_dev/<name>.{json,md} (no texts, only indices, labels and figures). ``--eval-args`` appends
flags to the ``icl-fungi eval`` call (e.g. another reader); the result's meta records them and the eval command.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # eval/: common.py
from common import (
    DEFAULT_DATA,
    RESULTS,
    ROOT,
    eval_extra_args,
    format_difference,
    markdown_table,
    run_cli_eval,
    run_meta,
    write_dev_folder,
    write_results,
)

from icl_fungi.evaluation import paired_comparison

CACHE = ROOT / "eval" / "cache" / "banking77-dev-gemma3-270m-k20-completion.jsonl"
# the icl-fungi eval settings this script sets itself (its own flags); --eval-args may not change them
OWNED = ("data", "out", "selectors", "k", "limit", "seed", "cache", "per_label")


def summarise(report: dict) -> dict[str, dict]:
    """Per selector: accuracy, paired difference to ``embedding`` (in the same order), and from the report's retrieval figures the
    share of queries whose nearest example has the gold label (1-NN), the gold share of the k (P@k) and the mean prompt
    tokens."""
    k = report["settings"]["k"]
    by_sel: dict[str, dict[int, dict]] = {}
    for r in report["records"]:
        by_sel.setdefault(r["selector"], {})[r["query_index"]] = r
    rows = {}
    for sel, recs in by_sel.items():
        idx = sorted(recs)
        retrieval = report["selectors"][sel]["retrieval"]
        row = {"n": len(idx), "accuracy": report["selectors"][sel]["accuracy"], "gold_nearest": retrieval["1nn_acc"],
               "gold_share": retrieval[f"p@{k}"], "prompt_tokens_mean": report["selectors"][sel]["prompt_tokens"] / len(idx),
               "spec": report["selector_specs"][sel]}
        base = f"embedding+{sel.split('+', 1)[1]}" if "+" in sel and f"embedding+{sel.split('+', 1)[1]}" in by_sel else "embedding"
        if sel != base and base in by_sel:  # an order variant X+ORDER against embedding+ORDER
            common = [q for q in idx if q in by_sel[base]]
            row["vs_embedding"] = paired_comparison([recs[q]["correct"] for q in common],
                                                    [by_sel[base][q]["correct"] for q in common])
        rows[sel] = row
    return rows


def pair_table(paired: dict) -> str:
    """The report's paired comparisons between selectors other than ``embedding`` (e.g. two weights) as a table."""
    rows = [{"pair": name.replace("_vs_", " − "), "difference (95 % CI), McNemar p": format_difference(pair, ".2g"),
             "only first right": pair["only_first_correct"], "only second right": pair["only_second_correct"]}
            for name, pair in paired.items() if "embedding" not in name.split("_vs_")]
    return markdown_table(rows, ["pair", "difference (95 % CI), McNemar p", "only first right", "only second right"]) if rows else ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: the arguments after the script, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--selectors", required=True, help="icl-fungi eval selector specs; include 'embedding' for the paired column")
    ap.add_argument("--limit", default="300", help="dev queries (seeded sample), or 'all'")
    ap.add_argument("-k", type=int, default=20)
    ap.add_argument("--per-label", type=int, default=None, help="few-shot pool: N dev-pool examples per label (icl-fungi eval --per-label)")
    ap.add_argument("--cache", default=str(CACHE), help=f"response cache (default: {CACHE.relative_to(ROOT)})")
    ap.add_argument("--name", default="dev-icl", help="result file name under eval/results/icl_dev/")
    ap.add_argument("--eval-args", default="", help="extra icl-fungi eval flags, one quoted string "
                    "(e.g. \"--reader transformers --endpoint-id X\"; write --eval-args=VALUE when VALUE is one flag or "
                    "starts with a short one)")
    args = ap.parse_args(argv)
    try:
        args.eval_extra = eval_extra_args(args.eval_args, OWNED)
    except ValueError as err:
        ap.error(str(err))
    return args


def eval_options(args: argparse.Namespace) -> list[str]:
    """The ``icl-fungi eval`` options of a run (``--data`` and ``--out`` aside), ``--eval-args`` last.

    >>> eval_options(parse_args(["--selectors", "embedding", "--eval-args", "--concurrency 2"]))[-2:]
    ['--concurrency', '2']
    """
    return ["--selectors", args.selectors, "-k", str(args.k), "--limit", args.limit, "--seed", "0", "--cache", args.cache,
            *(["--per-label", str(args.per_label)] if args.per_label else []), *args.eval_extra]


def main() -> None:
    args = parse_args()
    folder = ROOT / "runs" / "dev-banking77"
    write_dev_folder(Path(args.data), folder)
    run_dir = ROOT / "runs" / f"icl-{args.name}"
    cmd, report = run_cli_eval(folder, run_dir, *eval_options(args))
    rows = summarise(report)
    table = [{"selector": s, "spec": json.dumps(r["spec"]), "queries": r["n"], "accuracy": r["accuracy"],
              "vs embedding (95 % CI)": format_difference(r.get("vs_embedding")), "nearest example gold": r["gold_nearest"],
              f"gold share of {args.k}": r["gold_share"], "prompt tokens (mean)": r["prompt_tokens_mean"]}
             for s, r in rows.items()]
    cols = ["selector", "queries", "accuracy", "vs embedding (95 % CI)", "nearest example gold", f"gold share of {args.k}",
            "prompt tokens (mean)", "spec"]
    meta = run_meta(eval_command=" ".join(cmd), eval_args=args.eval_extra, settings=report.get("settings"),
                    selector_configs=report["selector_configs"])
    between = pair_table(report["paired"])
    text = markdown_table(table, cols) + (f"\n\nBetween selectors (paired on the same queries):\n\n{between}" if between else "")
    what = f"{report['endpoint']['model']}, k = {args.k}, {rows[next(iter(rows))]['n']} queries"
    write_results(RESULTS / "icl_dev" / f"{args.name}.json", {"meta": meta, "rows": rows, "paired": report["paired"]},
                  title=f"In-context accuracy on the dev split ({what}"
                        + (f", {args.per_label} examples per label)" if args.per_label else ")"),
                  table=text)
    print(markdown_table(table, cols))


if __name__ == "__main__":
    main()
