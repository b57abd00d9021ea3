"""What the LLM did with the examples it saw: accuracy of an ICL run by bucket of its prompts.

Reads the ``report.json`` of an ``icl-fungi eval`` run and the train labels of the data it ran on
(its records hold pool indices, not labels), and prints per selector: the share of answers that
repeat the label of the first selected example (with top-k, the nearest one, placed next to the
query by the default ``similar_last`` order), and the accuracy in four buckets: that example gold
or not, crossed with at least ``--min-gold`` of the k examples gold or not.

    python eval/icl/icl_buckets.py eval/results/banking77-gemma3-270m-test-all/report.json
    python eval/icl/icl_buckets.py runs/icl-dev-icl-kl-weights/report.json --data runs/dev-banking77
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # eval/: common.py
from common import DEFAULT_DATA, load_split, markdown_table


def buckets(records: list[dict], pool_labels: list, min_gold: int) -> list[dict]:
    """One row per (selector, bucket): queries and share right; plus a row per selector for copying."""
    stats: dict[tuple[str, str], list[int]] = {}
    copied: dict[str, list[int]] = {}
    for r in records:
        ex = r["examples"]
        if not ex:
            raise ValueError(f"record of query {r['query_index']} ({r['selector']}) has no examples")
        if max(ex) >= len(pool_labels):
            raise ValueError(f"example index {max(ex)} is outside the pool of {len(pool_labels)} labels: wrong --data?")
        nearest = "nearest gold" if pool_labels[ex[0]] == r["gold"] else "nearest wrong"
        many = sum(pool_labels[i] == r["gold"] for i in ex) >= min_gold
        key = (r["selector"], f"{nearest}, {'≥' if many else '<'} {min_gold} of {len(ex)} gold")
        s = stats.setdefault(key, [0, 0])
        s[0] += bool(r["correct"])
        s[1] += 1
        c = copied.setdefault(r["selector"], [0, 0])
        c[0] += r["prediction"] == pool_labels[ex[0]]
        c[1] += 1
    rows = [{"selector": sel, "bucket": b, "queries": n, "right": right / n} for (sel, b), (right, n) in sorted(stats.items())]
    rows += [{"selector": sel, "bucket": "answer = nearest example's label", "queries": n, "right": same / n}
             for sel, (same, n) in copied.items()]
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: the arguments after the script, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report", type=Path)
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="the data folder the run used (its train split is the pool)")
    ap.add_argument("--min-gold", type=int, default=16, help="gold examples (of k) that make a prompt 'mostly gold'")
    return ap.parse_args(argv)


def main() -> None:
    args = parse_args()
    report = json.loads(args.report.read_text())
    _, labels = load_split(args.data, "train")
    print(markdown_table(buckets(report["records"], labels, args.min_gold), ["selector", "bucket", "queries", "right"], digits=3))


if __name__ == "__main__":
    main()
