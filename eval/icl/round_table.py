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
from common import markdown_table, run_meta, write_results

COLUMNS = ["per label", "selector", "order", "k", "n", "accuracy", "vs embedding", "vs embedding ci95", "mcnemar p",
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


def bar_checks(default: dict, base: dict) -> list[tuple[str, float, float, float, str, bool]]:
    """(bar, default, baseline, difference, target, met) for one pair of rows (same size and order)."""
    size, shuffled = str(default["per label"]), default["order"] == "random"
    few = size in ("5", "10")
    diff, low = default["vs embedding"], default["vs embedding ci95"][0]
    checks = []
    if not shuffled:
        for name, target in (("gold in top-k", -0.010), ("1-NN", 0.0)):
            d = default[name] - base[name]
            checks.append((name, default[name], base[name], d, f">= {target:+.3f}", d >= target - 1e-9))
        if size != "all":
            d = default["k-NN vote"] - base["k-NN vote"]
            checks.append(("k-NN vote", default["k-NN vote"], base["k-NN vote"], d, ">= +0.020", d >= 0.02 - 1e-9))
    if few:
        target = 0.02 if shuffled else 0.03
        checks.append(("LLM", default["accuracy"], base["accuracy"], diff, f">= {target:+.3f}, CI low > 0",
                       diff >= target - 1e-9 and low > 0))
    elif not shuffled:
        checks.append(("LLM", default["accuracy"], base["accuracy"], diff, ">= 0", diff >= 0))
    return checks


def bars(rows: list[dict], default: str, baseline: str) -> list[dict[str, Any]]:
    """One row per bar and (per label, order) where both selectors have a row."""
    keyed = {(str(r["per label"]), r["order"], r["selector"]): r for r in rows}
    out = []
    for (size, order, selector), row in keyed.items():
        base = keyed.get((size, order, baseline))
        if selector != default or base is None:
            continue
        for name, value, ref, diff, target, met in bar_checks(row, base):
            out.append({"per label": size, "order": order, "bar": name, "default": value, "baseline": ref,
                        "difference": diff, "target": target, "met": met})
    return out


def _interval(ci: list[float] | None) -> str:
    return "" if not ci else f"{ci[0]:+.4f} to {ci[1]:+.4f}"


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
    shown = [{**r, "vs embedding ci95": _interval(r.get("vs embedding ci95"))} for r in rows]
    missed = [f"{b['bar']} at {b['per label']} ({b['order']})" for b in checked if not b["met"]]
    write_results(args.out, {"meta": run_meta(curves=[p.as_posix() for p in args.curves], default=args.default,
                                              baseline=args.baseline), "rows": rows, "bars": checked},
                  title=f"Issue 34's table: {args.default} against {args.baseline}",
                  table=markdown_table(shown, COLUMNS) + "\n\n" + markdown_table(checked, BAR_COLUMNS),
                  notes=f"Bars met: {len(checked) - len(missed)} of {len(checked)}; missed: {', '.join(missed) or 'none'}.")
    print(f"{len(rows)} rows; bars met {len(checked) - len(missed)} of {len(checked)}; missed: {missed or 'none'}")


if __name__ == "__main__":
    main()
