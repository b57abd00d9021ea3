"""Export the prompts of a protocol (selectors x orders x pool sizes, dev or test split) for a reader elsewhere.

One ``icl-fungi eval --export-prompts`` per pool size, every selector in every order (``--orders``: each order
besides similar_last adds a variant ``NAME+ORDER`` of each selector), written to ``OUT_DIR/<split>-<size>.jsonl``
(and ``.jsonl.xz`` with ``--xz``). ``dev``: the dev split (80 % of train as the pool, 1,998 held-out queries),
``test``: train and test. Then answer them (``answer_prompts.py``, e.g. on a GPU) and draw the reports with
``--cached-only --endpoint-id``.

    python eval/reader/export_round.py --split dev --sizes 5,10,20 --limit 1000 \\
        --selectors "embedding,fungi" --orders similar_last,random --xz
"""

from __future__ import annotations

import argparse
import lzma
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import DEFAULT_DATA, ROOT, write_dev_folder


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: the arguments after the script, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--split", choices=("dev", "test"), default="dev")
    ap.add_argument("--sizes", default="5,10,20,all")
    ap.add_argument("--limit", default="1000", help="seeded queries (or 'all')")
    ap.add_argument("-k", type=int, default=20)
    ap.add_argument("--selectors", default="embedding,fungi")
    ap.add_argument("--orders", default="similar_last", help="similar_last, random, similar_first (comma-separated)")
    ap.add_argument("--template", default=None, help="prompt template (default: the eval's)")
    ap.add_argument("--xz", action="store_true", help="also write each file xz-compressed")
    ap.add_argument("--out-dir", default=str(ROOT / "runs" / "export-round"))
    return ap.parse_args(argv)


def with_orders(selectors: str, orders: list[str]) -> str:
    """Each selector in each order: ``similar_last`` keeps the spec, another order adds ``NAME+ORDER=...;order=ORDER``.

    >>> with_orders("embedding,cov=fungi;selection=cover", ["similar_last", "random"])
    'embedding,cov=fungi;selection=cover,embedding+random=embedding;order=random,cov+random=fungi;selection=cover;order=random'
    """
    specs = [s.strip() for s in selectors.split(",") if s.strip()]
    out = list(specs) if "similar_last" in orders else []
    for order in (o for o in orders if o != "similar_last"):
        for spec in specs:
            name, _, body = spec.partition("=")
            out.append(f"{name}+{order}={body or name};order={order}")
    return ",".join(out)


def main() -> None:
    args = parse_args()
    out = Path(args.out_dir)
    data = write_dev_folder(args.data, out / "dev-data") if args.split == "dev" else Path(args.data)
    selectors = with_orders(args.selectors, args.orders.split(","))
    for size in args.sizes.split(","):
        path = out / f"{args.split}-{size}.jsonl"
        cmd = [sys.executable, "-m", "icl_fungi.cli", "-q", "eval", "--data", str(data), "--selectors", selectors, "-k", str(args.k),
               "--limit", args.limit, "--export-prompts", str(path), "--out", str(out / f"unused-{args.split}-{size}")]
        if size != "all":
            cmd += ["--per-label", size, "--pool-seed", "0"]
        if args.template:
            cmd += ["--template", args.template]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
        if args.xz:
            with open(path, "rb") as src, lzma.open(path.with_name(path.name + ".xz"), "wb", preset=9) as dst:
                shutil.copyfileobj(src, dst)


if __name__ == "__main__":
    main()
