"""Does the current code give the same features as a reference commit?

Builds the default retriever on a seeded sample of banking-77 train texts with the code of the
reference commit (extracted with ``git archive``, run in its own process) and with the current
tree, then compares every feature block of the pool, the vectors the index searches, the query
vectors and the top-20 rankings. Exits with status 1 when any max |difference| exceeds ``--tol``.

    python eval/checks/check_feature_equality.py [--reference cf6f40c] [--n 500] [--queries 200]

Writes eval/results/feature_equality.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # eval/: common.py
from common import DEFAULT_DATA, RESULTS, ROOT, load_split, markdown_table, run_meta, write_results

# runs under either tree: only API that both the reference and the current code have
SNIPPET = r"""
import json, sys
import numpy as np
import icl_fungi
from icl_fungi import ICLRetriever
pool = json.load(open(sys.argv[1]))
r = ICLRetriever.from_dataset([{"text": t, "label": l} for t, l in zip(pool["texts"], pool["labels"])], show_progress_bar=False,
                               features=tuple(pool["features"]))
blocks = r.encoder.encode(pool["texts"])
res = r.retrieve_batch(pool["queries"], k=20)
np.savez(sys.argv[2], index_vectors=r.index.vectors_, query_vectors=getattr(r, "vectors", r.features)(pool["queries"]),
         top20=np.array([[x.index for x in row] for row in res]), **{"block_" + k: v for k, v in blocks.items()})
print(icl_fungi.__file__, icl_fungi.__version__)
"""


def fixture_pool() -> tuple[list[str], list[str], list[str]]:
    """The test suite's intent set (tests/data): 120 pool texts with labels and 36 queries."""
    import csv

    def read(name: str) -> list[dict[str, str]]:
        with (ROOT / "tests" / "data" / name).open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))

    train, test = read("intents-train.csv"), read("intents-test.csv")
    return [r["text"] for r in train], [r["intent"] for r in train], [r["text"] for r in test]


def run_tree(src: Path, pool_json: Path, out: Path) -> dict[str, np.ndarray]:
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", SNIPPET, str(pool_json), str(out)], env=env, capture_output=True, text=True,
                          cwd=out.parent)  # not the checkout: '' on sys.path would import its icl_fungi
    if proc.returncode != 0:
        sys.exit(f"the run under {src} failed:\n{proc.stderr[-3000:]}")
    where = proc.stdout.strip().splitlines()[-1]
    if not where.startswith(str(src)):
        sys.exit(f"the run under {src} imported icl_fungi from elsewhere: {where}")
    with np.load(out) as z:
        return {k: z[k] for k in z.files}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: the arguments after the script, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", default="cf6f40c", help="git commit of the reference code (default: the last pre-redesign commit)")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--n", type=int, default=500, help="pool texts (seeded sample of banking-77 train)")
    ap.add_argument("--pool", choices=("banking77", "fixture"), default="banking77",
                    help="banking77 (a seeded sample of --n train texts) or fixture (tests/data intents, all of it)")
    ap.add_argument("--features", default="embedding,kl", help="feature blocks of the retriever (default: embedding,kl)")
    ap.add_argument("--queries", type=int, default=200, help="test queries for the rankings")
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--out", default=str(RESULTS / "feature_equality.json"))
    return ap.parse_args(argv)


def main() -> None:
    args = parse_args()
    import json

    if args.pool == "fixture":
        texts, labels, queries = fixture_pool()
        args.n, args.queries = len(texts), len(queries)
        rows = list(range(len(texts)))
    else:
        texts, labels = load_split(args.data, "train")
        q_texts, _ = load_split(args.data, "test")
        rng = np.random.default_rng(0)
        rows = sorted(rng.choice(len(texts), size=args.n, replace=False).tolist())
        queries = [q_texts[i] for i in sorted(rng.choice(len(q_texts), size=args.queries, replace=False).tolist())]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pool_json = tmp / "pool.json"
        pool_json.write_text(json.dumps({"texts": [texts[i] for i in rows], "labels": [labels[i] for i in rows], "queries": queries,
                                         "features": args.features.split(",")}))
        ref_src = tmp / "reference"
        ref_src.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.reference, "icl_fungi", "prompts"],
                                 capture_output=True, check=True).stdout
        (tmp / "ref.tar").write_bytes(archive)
        with tarfile.open(tmp / "ref.tar") as tar:
            tar.extractall(ref_src, filter="data")
        ref = run_tree(ref_src, pool_json, tmp / "ref.npz")
        cur = run_tree(ROOT, pool_json, tmp / "cur.npz")
    table = []
    for key in sorted(ref):
        if key == "top20":
            same = float(np.mean([list(a) == list(b) for a, b in zip(ref[key], cur[key], strict=True)]))
            table.append({"array": key, "shape": str(ref[key].shape), "max_abs_diff": None, "identical_rankings": same})
        else:
            if ref[key].shape != cur[key].shape:
                sys.exit(f"{key}: shape {ref[key].shape} vs {cur[key].shape}")
            table.append({"array": key, "shape": str(ref[key].shape),
                          "max_abs_diff": float(np.abs(ref[key].astype(np.float64) - cur[key]).max()), "identical_rankings": None})
    worst = max(t["max_abs_diff"] for t in table if t["max_abs_diff"] is not None)
    ok = worst <= args.tol and all(t["identical_rankings"] in (None, 1.0) for t in table)
    payload = {"meta": run_meta(reference=args.reference, pool=args.pool, features=args.features, n_pool=args.n,
                                n_queries=args.queries, tol=args.tol),
               "max_abs_diff": worst, "pass": ok, "rows": table}
    write_results(Path(args.out), payload, title=f"Features of the current code vs commit {args.reference}",
                  table=markdown_table(table, ["array", "shape", "max_abs_diff", "identical_rankings"], digits=10),
                  notes=f"Retriever with features {args.features} on {args.n} texts ({args.pool}), {args.queries} queries. "
                        f"Largest |difference| {worst:.3g} (tolerance {args.tol:g}): {'PASS' if ok else 'FAIL'}.")
    print(markdown_table(table, ["array", "shape", "max_abs_diff", "identical_rankings"], digits=10))
    print(f"max |diff| {worst:.3g}: {'PASS' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
