"""The learning curve: in-context accuracy against examples per label, each selector with its 95 % band.

Runs ``icl-fungi eval`` once per pool size (``--per-label N`` for N in ``--sizes``; ``all`` is the whole train
split), on the same seeded test queries and one response cache (``all`` reads ``--all-cache``, the full-pool
run's), so a rerun sends only what is missing (``--cached-only`` draws from the cache alone). k is ``min(-k, N)``
(``--k-rule min``, the default: a prompt never shows more examples than a label has) or ``-k`` at every size
(``--k-rule fixed``); the title says which. ``--eval-args`` appends flags to every ``icl-fungi eval`` call (e.g.
another reader), recorded in ``curve.json``'s meta. Then draws accuracy (and its 95 % Wilson band) against N into
``curve.png`` and writes ``curve.json``, ``curve.md`` and ``curve.html`` (the plot and the table on one page) into
``--out``.

    python eval/icl/learning_curve.py --selectors embedding,fungi --sizes 5,10,20,all --limit 1000 \\
        --cache eval/cache/banking77-gemma3-270m-fewshot-completion.jsonl --out eval/results/learning-curve
    python eval/icl/learning_curve.py --sizes 5,10,20 --k-rule fixed --runs runs/curve-tf --out runs/curve-tf \\
        --eval-args "--reader transformers --device cuda --batch-size 64"
"""

from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # eval/: common.py
from common import (
    DEFAULT_DATA,
    ROOT,
    eval_extra_args,
    format_difference,
    markdown_table,
    run_cli_eval,
    run_meta,
    versus_embedding,
    write_results,
)

# the icl-fungi eval settings this script sets itself (its own flags); --eval-args may not change them
OWNED = ("data", "out", "selectors", "k", "limit", "seed", "cache", "per_label", "pool_seed", "cached_only", "base_url", "model")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: the arguments after the script, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--selectors", default="embedding,fungi", help="icl-fungi eval selector specs")
    ap.add_argument("--sizes", default="5,10,20,all", help="examples per label, 'all' for the whole train split")
    ap.add_argument("-k", type=int, default=20, help="examples per prompt (default: 20; at most N with --k-rule min)")
    ap.add_argument("--k-rule", choices=("min", "fixed"), default="min",
                    help="min: k = min(-k, N) at N per label (default); fixed: k = -k at every size")
    ap.add_argument("--limit", default="1000", help="seeded test queries (or 'all')")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool-seed", type=int, default=0)
    ap.add_argument("--cache", default=str(ROOT / "eval" / "cache" / "banking77-gemma3-270m-fewshot-completion.jsonl"))
    ap.add_argument("--all-cache", default=None,
                    help="the response cache of size 'all' (default: on banking-77 the one of the 3,080-query full-pool run, "
                         "results/banking77-gemma3-270m-test-all/, whose prompts the full pool repeats; else --cache)")
    ap.add_argument("--cached-only", action="store_true", help="report what the cache holds; send nothing")
    ap.add_argument("--base-url", default=None, help="an OpenAI-compatible endpoint (default: the embedded local LLM)")
    ap.add_argument("--model", default=None, help="model name at --base-url")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "curve"), help="folder of the per-size eval runs")
    ap.add_argument("--out", default=str(ROOT / "eval" / "results" / "learning-curve"))
    ap.add_argument("--eval-args", default="", help="extra icl-fungi eval flags for every size, one quoted string "
                    "(e.g. \"--reader transformers --endpoint-id X\"; write --eval-args=VALUE when VALUE is one flag or "
                    "starts with a short one)")
    args = ap.parse_args(argv)
    for size in args.sizes.split(","):
        if size != "all" and not (size.isdigit() and int(size) > 0):
            ap.error(f"--sizes: {size!r} is not a positive number or 'all'")
    if args.k < 1:
        ap.error(f"-k: {args.k} is not a positive number")
    try:
        args.eval_extra = eval_extra_args(args.eval_args, OWNED)
    except ValueError as err:
        ap.error(str(err))
    return args


FULL_POOL_CACHE = ROOT / "eval" / "cache" / "banking77-gemma3-270m-k20-completion.jsonl"


def all_cache(args: argparse.Namespace) -> str:
    """The response cache of size 'all': ``--all-cache``; on banking-77 the full-pool run's; else ``--cache``."""
    if args.all_cache:
        return args.all_cache
    return str(FULL_POOL_CACHE) if Path(args.data).resolve() == Path(DEFAULT_DATA).resolve() else args.cache


def size_options(args: argparse.Namespace, size: str) -> list[str]:
    """The ``icl-fungi eval`` options at one pool size (``--data`` and ``--out`` aside).

    >>> opts = size_options(parse_args(["--eval-args", "--concurrency 2", "--cache", "c.jsonl"]), "5")
    >>> opts[opts.index("-k") + 1], opts[-2:]
    ('5', ['--concurrency', '2'])
    >>> opts = size_options(parse_args(["--k-rule", "fixed", "--cache", "c.jsonl"]), "5")
    >>> opts[opts.index("-k") + 1]
    '20'
    """
    k = args.k if size == "all" or args.k_rule == "fixed" else min(args.k, int(size))
    options = ["--selectors", args.selectors, "-k", str(k), "--limit", args.limit, "--seed", str(args.seed),
               "--cache", all_cache(args) if size == "all" else args.cache]
    if size != "all":
        options += ["--per-label", size, "--pool-seed", str(args.pool_seed)]
    if args.cached_only:
        options.append("--cached-only")
    if args.base_url:
        options += ["--base-url", args.base_url, "--model", args.model or "model"]
    return options + args.eval_extra


def run_size(args: argparse.Namespace, size: str) -> dict:
    """``icl-fungi eval`` at one pool size; returns its report."""
    return run_cli_eval(args.data, Path(args.runs) / f"per-label-{size}", *size_options(args, size))[1]


def curve_rows(reports: dict[str, dict]) -> list[dict]:
    """One row per pool size and selector: accuracy with its interval, the readers' figures, the paired difference."""
    rows = []
    for size, rep in reports.items():
        k = rep["settings"]["k"]
        for name, m in rep["selectors"].items():
            r = m["retrieval"]
            pair = versus_embedding(rep["paired"], name)
            order = (rep.get("selector_specs", {}).get(name) or {}).get("order", "similar_last")
            rows.append({"per label": size, "k": k, "selector": name, "order": order, "n": m["n"], "accuracy": m["accuracy"],
                         "ci95": m["accuracy_ci95"], "1-NN": r["1nn_acc"], "k-NN vote": r[f"knn{k}_vote_acc"], "P@k": r[f"p@{k}"],
                         "gold in top-k": r[f"gold_in_top{k}"], "copies nearest": m.get("answers_nearest_label"),
                         "build s": (rep["selector_configs"].get(name) or {}).get("build_s"),
                         "vs embedding": None if pair is None else pair["difference"],
                         "vs embedding ci95": None if pair is None else pair["ci95"],
                         "mcnemar p": None if pair is None else pair["mcnemar_p"]})
    return rows


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(dict.fromkeys(r["per label"] for r in rows))
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["selector"] for r in rows):
        mine = [r for r in rows if r["selector"] == name]
        x = [sizes.index(r["per label"]) for r in mine]
        ax.plot(x, [r["accuracy"] for r in mine], marker="o", label=name)
        ax.fill_between(x, [r["ci95"][0] for r in mine], [r["ci95"][1] for r in mine], alpha=0.2)
    ax.set_xticks(range(len(sizes)), sizes)
    ax.set_xlabel("examples per label in the pool")
    ax.set_ylabel("accuracy (95 % band)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_html(path: Path, png: Path, table: str, title: str) -> None:
    image = base64.b64encode(png.read_bytes()).decode()
    rows = [line.strip("|").split("|") for line in table.splitlines() if line.startswith("|") and not line.startswith("|---")]
    cells = "".join("<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{c.strip()}</{'th' if i == 0 else 'td'}>" for c in row) + "</tr>"
                    for i, row in enumerate(rows))
    path.write_text(f"<!doctype html><meta charset='utf-8'><title>{title}</title><h1>{title}</h1>"
                    f"<img alt='learning curve' src='data:image/png;base64,{image}'><table border=1 cellpadding=4>{cells}</table>\n")


def main() -> None:
    args = parse_args()
    reports = {size: run_size(args, size) for size in args.sizes.split(",")}
    rows = curve_rows(reports)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    first = next(iter(reports.values()))
    k_text = f"k = min({args.k}, N)" if args.k_rule == "min" else f"k = {args.k} at every size"
    title = f"{first['endpoint']['model']}, {rows[0]['n']} banking-77 test queries, {k_text}"
    plot(rows, out / "curve.png", title)
    table_rows = [{**r, "ci95": f"{r['ci95'][0]:.4f}-{r['ci95'][1]:.4f}",
                   "vs embedding": "" if r["vs embedding"] is None else
                   format_difference({"difference": r["vs embedding"], "ci95": r["vs embedding ci95"]}, p_format=None)}
                  for r in rows]
    cols = ["per label", "k", "selector", "order", "n", "accuracy", "ci95", "vs embedding", "mcnemar p", "1-NN", "k-NN vote", "P@k",
            "gold in top-k", "copies nearest", "build s"]
    table = markdown_table(table_rows, cols, digits=4)
    write_results(out / "curve.json", {"meta": run_meta(sizes=args.sizes, selectors=args.selectors, limit=args.limit, k=args.k,
                                                         k_rule=args.k_rule, eval_args=args.eval_extra),
                                       "rows": rows, "run_keys": {s: r["run_key"] for s, r in reports.items()}},
                  title=f"Learning curve: {title}", table=table + "\n\n![learning curve](curve.png)")
    write_html(out / "curve.html", out / "curve.png", table, f"Learning curve: {title}")
    print(table)


if __name__ == "__main__":
    main()
