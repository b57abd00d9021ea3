"""Where the time goes: cProfile of ``ICLRetriever.fit`` and of ``build_prompt`` (query string to rendered prompt),
default features, on the banking-77 train pool.

    python eval/bench/profile_build.py [--n 10003] [--queries 200] [--reference 7c2eceb]

With ``--reference COMMIT`` the same profile also runs on that commit's library (``git archive`` into a temporary
folder), so "before" and "after" come from one run of one script. Each profile runs in its own process after a
warm-up build of 64 texts and 20 warm-up queries. Writes eval/results/profile_build.{json,md}.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # eval/: common.py
from common import BASE_WEIGHTS, DEFAULT_DATA, ROOT, load_split, run_meta, write_results

TOP = 14  # rows per table


def _rows(prof: cProfile.Profile, *, key: int, only_library: bool) -> list[dict]:
    """The ``TOP`` largest functions by cumulative (key 3) or self time (key 2); library functions only if asked."""
    rows = []
    for (path, line, fn), stat in sorted(pstats.Stats(prof).stats.items(), key=lambda kv: -kv[1][key]):
        if only_library and "icl_fungi" not in path:
            continue
        where = f"{Path(path).parent.name}/{Path(path).name}:{line}" if path != "~" else "(builtin)"
        rows.append({"function": fn, "where": where, "calls": stat[1], "seconds": round(stat[key], 3)})
        if len(rows) == TOP:
            break
    return rows


def profile_one(args: argparse.Namespace) -> dict:
    """Profile one build and ``--queries`` single-query ``build_prompt`` calls with the library on ``sys.path``."""
    from icl_fungi import FeatureConfig, FungiEncoder, ICLRetriever

    spec = json.loads(args.spec)
    texts, labels = load_split(args.data, "train")
    texts, labels = texts[: args.n], labels[: args.n]
    queries = load_split(args.data, "test")[0][: args.queries + 20]
    config = FeatureConfig(**spec)
    warm = ICLRetriever(FungiEncoder(config=config, show_progress_bar=False), block_weights=BASE_WEIGHTS)
    warm.fit(texts[:64], labels[:64])
    retriever = ICLRetriever(FungiEncoder(warm.encoder.model, config, show_progress_bar=False), block_weights=BASE_WEIGHTS)
    out = {}
    for stage in ("build", "build_prompt"):
        prof = cProfile.Profile()
        if stage == "build":
            t0 = time.perf_counter()
            prof.enable()
            retriever.fit(texts, labels)
            prof.disable()
        else:
            for q in queries[:20]:
                retriever.build_prompt(q, k=20)
            t0 = time.perf_counter()
            prof.enable()
            for q in queries[20:]:
                retriever.build_prompt(q, k=20)
            prof.disable()
        seconds = time.perf_counter() - t0
        out[stage] = {"seconds": round(seconds, 2), "cumulative": _rows(prof, key=3, only_library=True),
                      "self": _rows(prof, key=2, only_library=False)}
    return out


def _table(rows: list[dict], per: float = 1.0, unit: str = "s") -> str:
    lines = [f"| function | where | calls | {unit} |", "|---|---|---|---|"]
    lines += [f"| `{r['function']}` | {r['where']} | {r['calls']} | {r['seconds'] / per:.3g} |" for r in rows]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: the arguments after the script, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--n", type=int, default=10003)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--reference", default="7c2eceb", help="older commit profiled too ('' to skip)")
    ap.add_argument("--out", default=str(ROOT / "eval" / "results" / "profile_build.json"))
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.spec:
        print(json.dumps(profile_one(args)))
        return
    from icl_fungi import FeatureConfig

    default = FeatureConfig().to_dict()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        sources = [("current", ROOT, default)]
        if args.reference:
            ref = Path(tmp) / "reference"
            ref.mkdir()
            data = subprocess.run(["git", "-C", str(ROOT), "archive", args.reference, "icl_fungi", "prompts"],
                                  capture_output=True, check=True).stdout
            tarfile.open(fileobj=io.BytesIO(data)).extractall(ref, filter="data")
            sources.insert(0, (args.reference, ref, {}))  # that commit's own defaults
        for name, src, spec in sources:
            cmd = [sys.executable, __file__, "--spec", json.dumps(spec), "--data", args.data, "--n", str(args.n),
                   "--queries", str(args.queries)]
            env = {**os.environ, "PYTHONPATH": str(src), "TOKENIZERS_PARALLELISM": "false"}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode:
                sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
            runs[name] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(name, {s: runs[name][s]["seconds"] for s in runs[name]}, flush=True)
    parts = []
    for name, run in runs.items():
        b, q = run["build"], run["build_prompt"]
        parts += [f"## {name}: build of {args.n:,} texts, {b['seconds']} s under the profiler",
                  "Library functions by cumulative time:", _table(b["cumulative"]),
                  "All functions by self time:", _table(b["self"]),
                  f"## {name}: build_prompt, {args.queries} single queries, {q['seconds'] / args.queries * 1000:.1f} ms "
                  "per query under the profiler",
                  "Library functions by cumulative time (ms per query):", _table(q["cumulative"], args.queries / 1000, "ms"),
                  "All functions by self time (ms per query):", _table(q["self"], args.queries / 1000, "ms")]
    doc = {"meta": run_meta(n=args.n, queries=args.queries, reference=args.reference, feature_config=default,
                            block_weights=BASE_WEIGHTS), "runs": runs}
    write_results(Path(args.out), doc, title=f"Profile of the build and of build_prompt ({os.cpu_count()} CPUs)",
                  table="\n\n".join(parts),
                  notes="cProfile adds overhead per Python call, so absolute times are above the benchmark's; the "
                        "shares are what to read. The reference runs with its own commit's default features.")


if __name__ == "__main__":
    main()
