"""Issue 34's test table in one file: the LLM rows of several learning-curve runs, each checked against its bars.

Reads ``curve.json`` files written by ``learning_curve.py`` (rows: per label, selector, order, k, n, accuracy, vs
embedding with its paired 95 % CI, 1-NN, k-NN vote, gold in top-k), keeps each row's source file and commit, and
for every (per label, order) pair of ``--default`` and ``--baseline`` rows states each bar met or missed:

- gold among the k: no more than 1.0 pt below the baseline, at every size;
- 1-NN: not lower, at every size; k-NN vote: at least +2.0 pt at 5, 10 and 20 per label;
- LLM, most similar last: at least +3.0 pt with the CI above 0 at 5 and 10, not below at 20 and on the full pool;
- LLM, random order: at least +2.0 pt with the CI above 0 at 5 and 10.

    python eval/icl/round_table.py eval/results/round4-test/curve-*/curve.json \\
        --out eval/results/round4-test/table.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # eval/: common.py
from common import format_difference, markdown_table, run_meta, write_results

COLUMNS = ["per label", "selector", "order", "k", "n", "accuracy", "vs embedding", "mcnemar p",
           "1-NN", "k-NN vote", "gold in top-k", "copies nearest", "source"]
BAR_COLUMNS = ["per label", "order", "bar", "default", "baseline", "difference", "target", "met"]


def read_rows(paths: list[Path]) -> list[dict[str, Any]]:
    """Every row of the curve files, with ``source`` (path and commit); ValueError for a file with no rows."""
    rows = []
    for path in paths:
        curve = json.loads(path.read_text())
        if not curve.get("rows"):
            raise ValueError(f"{path}: no rows (is it a learning_curve.py curve.json?)")
        source = f"{path.as_posix()} @ {curve['provenance']['commit'][:12]}"
        rows += [{**row, "selector": row["selector"].split("+")[0], "source": source} for row in curve["rows"]]
    return rows


# issue 34's bars: (bar, metric, sizes it holds at, orders, least difference, the CI must be above 0)
BARS = [("gold in top-k", "gold in top-k", ("5", "10", "20", "all"), ("similar_last",), -0.010, False),
        ("1-NN", "1-NN", ("5", "10", "20", "all"), ("similar_last",), 0.0, False),
        ("k-NN vote", "k-NN vote", ("5", "10", "20"), ("similar_last",), 0.020, False),
        ("LLM", "accuracy", ("5", "10"), ("similar_last",), 0.030, True),
        ("LLM", "accuracy", ("20", "all"), ("similar_last",), 0.0, False),
        ("LLM", "accuracy", ("5", "10"), ("random",), 0.020, True)]


def bar_checks(default: dict, base: dict) -> list[dict[str, Any]]:
    """Each bar that holds for this pair of rows (same size and order): values, difference, target and whether met."""
    size, order = str(default["per label"]), default["order"]
    checks = []
    for bar, metric, sizes, orders, least, ci_above_zero in BARS:
        if size not in sizes or order not in orders:
            continue
        diff = round(default[metric] - base[metric], 6)  # no float noise in the saved table
        met = diff >= least - 1e-9 and (not ci_above_zero or default["vs embedding ci95"][0] > 0)
        checks.append({"per label": size, "order": order, "bar": bar, "default": default[metric],
                       "baseline": base[metric], "difference": diff,
                       "target": f">= {least:+.3f}" + (", CI low > 0" if ci_above_zero else ""), "met": met})
    return checks


def bars(rows: list[dict], default: str, baseline: str) -> list[dict[str, Any]]:
    """One row per bar and (per label, order) where both selectors have a row."""
    keyed = {(str(r["per label"]), r["order"], r["selector"]): r for r in rows}
    out = []
    for (size, order, selector), row in keyed.items():
        base = keyed.get((size, order, baseline))
        if selector != default or base is None:
            continue
        out += bar_checks(row, base)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: the arguments after the script, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("curves", nargs="+", type=Path, help="curve.json files of learning_curve.py")
    ap.add_argument("--default", default="fungi", help="the selector held to the bars")
    ap.add_argument("--baseline", default="embedding")
    ap.add_argument("--out", required=True, type=Path)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    order = {"5": 0, "10": 1, "20": 2, "all": 3}
    rows = sorted(read_rows(args.curves), key=lambda r: (order.get(str(r["per label"]), 9), r["order"] != "similar_last",
                                                         r["selector"] != args.baseline))
    checked = bars(rows, args.default, args.baseline)
    shown = [{**r, "vs embedding": format_difference(None if r.get("vs embedding") is None else
                                                     {"difference": r["vs embedding"], "ci95": r["vs embedding ci95"]},
                                                     p_format=None)} for r in rows]
    missed = [f"{b['bar']} at {b['per label']} ({b['order']})" for b in checked if not b["met"]]
    write_results(args.out, {"meta": run_meta(curves=[p.as_posix() for p in args.curves], default=args.default,
                                              baseline=args.baseline), "rows": rows, "bars": checked},
                  title=f"Issue 34's table: {args.default} against {args.baseline}",
                  table=markdown_table(shown, COLUMNS) + "\n\n" + markdown_table(checked, BAR_COLUMNS),
                  notes=f"Bars met: {len(checked) - len(missed)} of {len(checked)}; missed: {', '.join(missed) or 'none'}.")
    print(f"{len(rows)} rows; bars met {len(checked) - len(missed)} of {len(checked)}; missed: {missed or 'none'}")


if __name__ == "__main__":
    main()
