"""A pair task end to end: banking-77 query -> the reply written for its intent, the LLM writes the reply.

No data set of input -> output pairs installs here from a package (the NL -> SQL and QA packages on PyPI ship
loaders that download from the hub), so the pairs are built from banking-77: each query's output is the reply
written for its intent in eval/data/banking77_replies.json (77 replies, written for this project). The
retriever sees the queries and the replies, never the intents: its features are the label-free ones.

    python eval/icl/pair_task.py --per-label 5 -k 5 --limit 300

Writes the pair data folder runs/banking77-replies/ (train.csv, test.csv: text, reply; not committed), runs
``icl-fungi eval --output-column reply`` on it (exact match after normalisation and token F1), caches the replies in
eval/cache/banking77-replies-gemma3-270m.jsonl and writes eval/results/pair_task/<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # eval/: common.py
from common import (
    DEFAULT_DATA,
    RESULTS,
    ROOT,
    format_difference,
    load_split,
    markdown_table,
    run_cli_eval,
    run_meta,
    versus_embedding,
    write_results,
)

REPLIES = ROOT / "eval" / "data" / "banking77_replies.json"
CACHE = ROOT / "eval" / "cache" / "banking77-replies-gemma3-270m.jsonl"


def write_pair_folder(data: Path, out: Path) -> int:
    """``out/train.csv`` and ``out/test.csv`` with columns text, reply; returns the number of distinct replies."""
    replies = json.loads(REPLIES.read_text())
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        texts, labels = load_split(data, split)
        missing = sorted(set(labels) - set(replies))
        if missing:
            raise ValueError(f"{REPLIES} has no reply for {missing[:5]}")
        with open(out / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "reply"])
            w.writerows((t, replies[lab]) for t, lab in zip(texts, labels, strict=True))
    return len(replies)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: the arguments after the script, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="the banking-77 folder (train.csv, test.csv)")
    ap.add_argument("--selectors", default="embedding,fungi", help="icl-fungi eval selector specs (include 'embedding')")
    ap.add_argument("--per-label", type=int, default=5, help="pool: N train pairs per reply (0: the whole train split)")
    ap.add_argument("-k", type=int, default=5, help="examples per prompt")
    ap.add_argument("--limit", default="300", help="seeded test queries, or 'all'")
    ap.add_argument("--cache", default=str(CACHE), help=f"response cache (default: {CACHE.relative_to(ROOT)})")
    ap.add_argument("--name", default="banking77-replies", help="result file name under eval/results/pair_task/")
    return ap.parse_args(argv)


def main() -> None:
    args = parse_args()
    folder = ROOT / "runs" / "banking77-replies"
    n_replies = write_pair_folder(Path(args.data), folder)
    run_dir = ROOT / "runs" / f"pair-{args.name}"
    options = ["--output-column", "reply", "--selectors", args.selectors, "-k", str(args.k), "--limit", args.limit, "--seed", "0",
               "--cache", args.cache, *(["--per-label", str(args.per_label)] if args.per_label else [])]
    cmd, report = run_cli_eval(folder, run_dir, *options)
    k = report["settings"]["k"]
    rows = []
    for name, m in report["selectors"].items():
        pair = versus_embedding(report["paired"], name)
        rows.append({"selector": name, "n": m["n"], "exact match": m["accuracy"], "95 % CI": "{:.4f}-{:.4f}".format(*m["accuracy_ci95"]),
                     "vs embedding (95 % CI), McNemar p": format_difference(pair),
                     "token F1": m["token_f1"], "1-NN (same reply)": m["retrieval"]["1nn_acc"], f"P@{k}": m["retrieval"][f"p@{k}"],
                     "copies nearest": m["answers_nearest_label"], "invalid": m["invalid_rate"],
                     "build s": (report["selector_configs"].get(name) or {}).get("build_s")})
    cols = list(rows[0])
    table = markdown_table(rows, cols)
    pool = report["settings"]["pool_size"]
    write_results(RESULTS / "pair_task" / f"{args.name}.json",
                  {"meta": run_meta(eval_command=" ".join(cmd), settings=report["settings"], n_replies=n_replies,
                                    selector_configs=report["selector_configs"], endpoint=report["endpoint"]), "rows": rows},
                  title=f"Pair task: banking-77 query -> reply written per intent ({report['endpoint']['model']}, {pool} pairs, "
                        f"k = {k}, {rows[0]['n']} test queries)",
                  table=table,
                  notes="Exact match after normalisation (case, punctuation, articles, spacing); token F1 gives partial "
                        "credit. The retriever sees queries and replies only (label-free features); 1-NN and P@k count "
                        "examples whose reply equals the query's. The replies were written for this project "
                        "(eval/data/README.md): a stand-in for a pair data set, stated as such.")
    print(table)


if __name__ == "__main__":
    main()
