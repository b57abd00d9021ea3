"""Retrieval demo: build (or load) the banking-77 retriever, save it, and query it.

    python eval/checks/demo.py [--data ../shared/data/banking77] [--query "..."] [--k 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # eval/: common.py
from common import DEFAULT_DATA

from icl_fungi import ICLRetriever


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: the arguments after the script, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--save", default="banking77.icl", help="where the retriever is saved")
    ap.add_argument("--query", default="I still haven't received my card")
    ap.add_argument("--k", type=int, default=5)
    return ap.parse_args(argv)


def main() -> None:
    args = parse_args()
    save = Path(args.save)
    if (save / "manifest.json").is_file():
        r = ICLRetriever.load(save)
    else:
        r = ICLRetriever.from_dataset(Path(args.data) / "train.csv", text_column="text", label_column="category")
        r.save(save)
    print(f"pool: {len(r)} examples, saved at {save}")
    for ex in r.retrieve(args.query, k=args.k):
        print(f"{ex.score:.3f}  {ex.label:<28} {ex.text}")


if __name__ == "__main__":
    main()
