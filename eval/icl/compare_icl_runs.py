"""Paired comparison of one selector across two ICL runs on the same queries (e.g. two FUNGI heads).

Reads the ``report.json`` of two ``icl-fungi eval`` runs, matches records by query index and
prints accuracy of each, the paired difference with its 95 % interval, the discordant counts
and the exact McNemar p-value (``icl_fungi.evaluation.paired_comparison``).

    python eval/icl/compare_icl_runs.py eval/results/banking77-gemma3-270m-n1000-neighbors/report.json \\
        eval/results/banking77-gemma3-270m-n1000-labels/report.json [--selector fungi]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from icl_fungi.evaluation import paired_comparison


def _correct(path: Path, selector: str) -> dict[int, bool]:
    report = json.loads(path.read_text())
    out = {r["query_index"]: bool(r["correct"]) for r in report["records"] if r["selector"] == selector}
    if not out:
        raise ValueError(f"{path} has no records for selector {selector!r}")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: the arguments after the script, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("first", type=Path)
    ap.add_argument("second", type=Path)
    ap.add_argument("--selector", default="fungi")
    return ap.parse_args(argv)


def main() -> None:
    args = parse_args()
    a, b = _correct(args.first, args.selector), _correct(args.second, args.selector)
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError("the two runs share no query")
    res = paired_comparison([a[q] for q in common], [b[q] for q in common])
    print(f"{len(common)} shared queries; {args.selector}: first {sum(a[q] for q in common) / len(common):.4f}, "
          f"second {sum(b[q] for q in common) / len(common):.4f}")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
