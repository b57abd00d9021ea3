"""Command line: ``icl-fungi build`` and ``icl-fungi query``.

Example:
    $ icl-fungi build ../shared/data/banking77/train.csv --label-column category --out banking77.icl
    $ icl-fungi query banking77.icl "I still haven't received my card" -k 5
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from . import __version__
from .encoder import DEFAULT_MODEL, FEATURES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="icl-fungi", description="Pick in-context examples with FUNGI features.")
    p.add_argument("--version", action="version", version=f"icl-fungi {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info logs")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build a retriever from a labelled pool and save it")
    b.add_argument("data", help="CSV/TSV/JSONL/JSON file, or a hub dataset name")
    b.add_argument("--out", required=True, help="directory to save the retriever in")
    b.add_argument("--text-column", default="text", help="column holding the example text (default: text)")
    b.add_argument("--label-column", default="label", help="column holding the label (default: label)")
    b.add_argument("--split", default=None, help="split of a hub dataset (default: train)")
    b.add_argument("--model", default=DEFAULT_MODEL, help=f"sentence-transformers name or path (default: {DEFAULT_MODEL})")
    b.add_argument("--features", default=",".join(FEATURES),
                   help=f"comma-separated feature blocks from {','.join(FEATURES)} (default: all)")
    b.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default: 32)")
    b.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    b.add_argument("--seed", type=int, default=0, help="seed of heads, projections, views (default: 0)")

    q = sub.add_parser("query", help="print the examples retrieved for a query")
    q.add_argument("retriever", help="directory of a saved retriever")
    q.add_argument("query", help="the query text")
    q.add_argument("-k", type=int, default=20, help="number of examples (default: 20)")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``icl-fungi`` console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    from .retriever import ICLRetriever

    try:
        if args.command == "build":
            r = ICLRetriever.from_dataset(
                args.data, text_column=args.text_column, label_column=args.label_column, split=args.split,
                model=args.model, features=tuple(f.strip() for f in args.features.split(",") if f.strip()),
                batch_size=args.batch_size, device=args.device, seed=args.seed,
            )
            path = r.save(args.out)
            print(f"saved a retriever over {len(r)} examples to {path}")
        else:
            r = ICLRetriever.load(args.retriever)
            res = r.retrieve(args.query, k=args.k)
            if args.json:
                print(json.dumps([{"index": x.index, "score": x.score, "label": x.label, "text": x.text} for x in res],
                                 ensure_ascii=False, indent=2))
            else:
                for x in res:
                    print(f"{x.score:.3f}\t{x.label}\t{x.text}")
    except (ValueError, TypeError, OSError, RuntimeError) as err:
        print(f"icl-fungi: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
