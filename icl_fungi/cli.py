"""Command line: ``icl-fungi build``, ``query``, ``eval``, ``serve`` and ``compact``.

Example:
    $ icl-fungi build ../shared/data/banking77/train.csv --label-column category --out banking77.icl
    $ icl-fungi build qa.jsonl --text-column question --output-column answer --no-labels --out qa.icl
    $ icl-fungi query banking77.icl "I still haven't received my card" -k 5 --prompt
    $ icl-fungi eval --data ../shared/data/banking77 --limit 100 --out eval/results/run
    $ ICL_FUNGI_API_KEY=... icl-fungi serve banking77.icl --port 8080 --api-key-env ICL_FUNGI_API_KEY
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .combine import DEFAULT_FIT_WEIGHTS
from .features import DEFAULT_FEATURES, DEFAULT_MODEL, FEATURES
from .index import index_class
from .manifest import check_save_target
from .options import parse_options
from .prompt import ORDERS
from .version import __version__


def _limit(value: str) -> int | None:
    """``--limit``: a positive number of queries, or ``all``."""
    if value.strip().lower() == "all":
        return None
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'all', got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} queries: pass a positive number, or 'all' for the whole test split")
    return n


def _build_parser(sub: Any, quiet: argparse.ArgumentParser) -> None:
    b = sub.add_parser("build", parents=[quiet], help="build a retriever from a pool (labelled texts, pairs or plain texts) and save it")
    b.add_argument("data", help="CSV/TSV/JSONL/JSON file, or a hub dataset name")
    b.add_argument("--out", required=True, help="directory to save the retriever in (new, empty, or a saved retriever)")
    b.add_argument("--text-column", default="text", help="column holding the example text, a pair's input (default: text)")
    labels = b.add_mutually_exclusive_group()
    labels.add_argument("--label-column", default="label", help="column holding the label (default: label)")
    labels.add_argument("--no-labels", action="store_true", help="the pool has no labels (e.g. input -> output pairs, plain texts)")
    b.add_argument("--output-column", default=None,
                   help="column holding each example's output (pairs: answer, reply, SQL...), shown in prompts (default: none)")
    b.add_argument("--split", default=None, help="split of a hub dataset (default: train)")
    b.add_argument("--model", default=DEFAULT_MODEL, help=f"sentence-transformers name or path (default: {DEFAULT_MODEL})")
    b.add_argument("--features", default=",".join(DEFAULT_FEATURES),
                   help=f"comma-separated feature blocks from {','.join(FEATURES)} (default: {','.join(DEFAULT_FEATURES)})")
    b.add_argument("--feature-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a FeatureConfig field, e.g. kl_head=neighbors or simclr_view_mode=word_deletion (repeatable)")
    b.add_argument("--fit-weights", choices=("auto", "loo", "none"), default=DEFAULT_FIT_WEIGHTS,
                   help="block weights from the pool: auto (the KL weight from how well the embedding separates the "
                        "labels; default), loo (leave-one-out search) or none (kl 0.3, simclr 0.3)")
    b.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default: 32)")
    b.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    b.add_argument("--seed", type=int, default=0, help="seed of heads, projections, views (default: 0)")
    b.add_argument("--index", default="hnswlib",
                   help="index backend: hnswlib (in process, default), milvus, or one registered by an --import module")
    b.add_argument("--index-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword of the index backend's constructor, e.g. M=16 (repeatable)")
    b.add_argument("--milvus-uri", default=None, help="with --index milvus: a milvus-lite file (*.db) or http://host:19530")
    b.add_argument("--collection", default="icl_fungi", help="with --index milvus: the collection's name (default: icl_fungi)")
    b.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="build the features in this process (default) or with Ray Data actors")
    b.add_argument("--ray-address", default=None, help="with --executor ray: 'auto' or ray://host:10001 (default: a local Ray)")
    b.add_argument("--workers", type=int, default=2, help="with --executor ray: encoding actors (default: 2)")


def _query_parser(sub: Any, quiet: argparse.ArgumentParser) -> None:
    q = sub.add_parser("query", parents=[quiet], help="print the examples retrieved for a query, and the prompt")
    q.add_argument("retriever", help="directory of a saved retriever")
    q.add_argument("query", help="the query text")
    q.add_argument("-k", type=int, default=20, help="number of examples (default: 20)")
    q.add_argument("--selection", default=None,
                   help="selection strategy and options, e.g. 'label_cap;max_per_label=2' or 'mmr;mmr_lambda=0.3' (default: topk)")
    q.add_argument("--template", default=None,
                   help="prompt template name or JSON file (default: pairs-completion for a pool with outputs, "
                        "else classification-completion)")
    q.add_argument("--order", choices=ORDERS, default="similar_last",
                   help="example order in the prompt (default: similar_last, the most similar next to the query)")
    q.add_argument("--prompt", action="store_true", help="also print the rendered prompt")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _eval_parser(sub: Any, quiet: argparse.ArgumentParser) -> None:
    e = sub.add_parser("eval", parents=[quiet], help="measure in-context-learning accuracy against an OpenAI-compatible endpoint")
    e.add_argument("--data", required=True,
                   help="a folder with train.* and test.* files (e.g. ../shared/data/banking77), 'TRAIN,TEST' files, or a hub name")
    e.add_argument("--text-column", default="text", help="text column (default: text)")
    e.add_argument("--label-column", default=None, help="label column (default: the first of label, category, intent present)")
    e.add_argument("--output-column", default=None,
                   help="a pair task: the column of the outputs the LLM must write (scored by exact match after "
                        "normalisation and token F1; the retriever sees inputs and outputs, no labels)")
    e.add_argument("--max-tokens", type=int, default=None, help="reply length cap (default: 16, or 128 with --output-column)")
    e.add_argument("--retriever", default=None, help="a saved FUNGI retriever built on the train split (default: build one)")
    e.add_argument("--selectors", default="fungi,embedding,random",
                   help="comma-separated selectors: fungi, embedding, bm25, random, or specs NAME=BASE;key=value;... with "
                        "model=NAME_OR_FOLDER, feature options (kl_head=neighbors, w.kl=0.5, features=embedding+kl), a selection "
                        "(selection=label_coverage;n_labels=5) and order=... (default: fungi,embedding,random)")
    e.add_argument("-k", "--k", type=int, default=20, help="examples per prompt (default: 20)")
    e.add_argument("--limit", type=_limit, default=300,
                   help="seeded sample of test queries, or 'all' for the whole test split (default: 300)")
    e.add_argument("--seed", type=int, default=0, help="seed of the query sample and random selector (default: 0)")
    e.add_argument("--per-label", type=int, default=None, metavar="N",
                   help="few-shot pool: a seeded sample of N train examples per label (all of a label's when fewer; default: all)")
    e.add_argument("--pool-seed", type=int, default=0, help="seed of the --per-label pool (default: 0)")
    e.add_argument("--template", default=None,
                   help="prompt template name or file (default: classification-completion, or banking77-chat in chat mode; "
                        "pairs-completion or pairs-chat with --output-column)")
    e.add_argument("--mode", choices=("completion", "chat"), default="completion",
                   help="completions or chat API (default: completion; the embedded model is a base model)")
    e.add_argument("--base-url", default=None,
                   help="OpenAI-compatible endpoint; without it the embedded local LLM (Gemma 3 270M) is started")
    e.add_argument("--model", default=None, help="model name at --base-url (required with it)")
    e.add_argument("--concurrency", type=int, default=1, help="requests in flight (default: 1)")
    e.add_argument("--timeout", type=float, default=120.0, help="per-request timeout in seconds (default: 120)")
    e.add_argument("--max-retries", type=int, default=6, help="client retries for 429/5xx/timeouts (default: 6)")
    e.add_argument("--cache", default=None, help="response cache file (default: OUT/responses.jsonl)")
    e.add_argument("--cached-only", action="store_true",
                   help="report only the queries every selector already has a cached reply for (e.g. an interrupted "
                        "run's, which answers queries in a seeded random order); starts no server, sends nothing")
    e.add_argument("--out", required=True,
                   help="output folder for report.json, report.md, report.html and plots (new, or holding this same run)")
    _reader_flags(e)


def _reader_flags(e: argparse.ArgumentParser) -> None:
    """``icl-fungi eval``'s in-process reader, cache key and prompt export."""
    r = e.add_argument_group("in-process reader (answers without a server, in batches; needs the reader extra)")
    r.add_argument("--reader", choices=("transformers",), default=None,
                   help="answer in this process with transformers (greedy, the template's stop strings cut as the server "
                        "cuts them) instead of an endpoint")
    r.add_argument("--reader-model", default=None, metavar="PATH_OR_NAME",
                   help="a GGUF file, a model folder or a hub name (default: the embedded Gemma 3 270M GGUF)")
    r.add_argument("--reader-tokenizer", default=None, metavar="PATH_OR_NAME",
                   help="the reader's tokenizer (default: the model's own; a GGUF's is checked against the file's)")
    r.add_argument("--device", default="cpu", help="torch device of the reader: cpu, cuda, cuda:1 (default: cpu)")
    r.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="the reader's weights and activations (default: float32, what its fidelity was measured with)")
    r.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass of the reader (default: 8)")
    r.add_argument("--no-tokenizer-check", dest="tokenizer_check", action="store_false",
                   help="load a GGUF reader without checking its rebuilt tokenizer against the file's own")
    e.add_argument("--endpoint-id", default=None,
                   help="the endpoint id the response cache is keyed by (default: the endpoint's or the reader's own), "
                        "e.g. to report replies another machine cached, with --cached-only")
    e.add_argument("--export-prompts", default=None, metavar="FILE",
                   help="write every prompt (JSON lines: selector, query_index, gold, prompt, and its cached reply or "
                        "null) to FILE and stop: nothing is sent or loaded")


def _serve_parser(sub: Any, quiet: argparse.ArgumentParser) -> None:
    s = sub.add_parser("serve", parents=[quiet], help="serve a saved retriever over HTTP (needs the serve extra)")
    s.add_argument("retriever", help="directory of a saved retriever (its add log is the sibling RETRIEVER.wal)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    s.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    s.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="require 'Authorization: Bearer KEY' on every route but /healthz and /readyz, KEY read from "
                        "the environment variable VAR (never from the command line)")
    s.add_argument("--gather-ms", type=float, default=10.0,
                   help="how long a batch waits at most for the queries expected to share its forward pass (default: 10)")
    s.add_argument("--max-batch", type=int, default=32, help="queries per forward pass at most (default: 32)")
    s.add_argument("--max-queue", type=int, default=64,
                   help="queries waiting for a forward pass at most; past it requests get 503 + Retry-After at once (default: 64)")
    s.add_argument("--max-k", type=int, default=100, help="largest k a request may ask for (default: 100)")
    s.add_argument("--max-queries", type=int, default=64, help="queries per /v1/retrieve request at most (default: 64)")
    s.add_argument("--max-text-chars", type=int, default=4000, help="characters per query or example at most (default: 4000)")
    s.add_argument("--max-examples", type=int, default=256, help="examples per /v1/examples request at most (default: 256)")
    s.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body size limit (default: 1048576)")
    s.add_argument("--read-only", action="store_true", help="refuse adds (and open no add log)")
    s.add_argument("--no-compact-on-exit", dest="compact_on_exit", action="store_false",
                   help="keep the add log on shutdown instead of folding it into the saved retriever")
    s.add_argument("--shutdown-timeout", type=float, default=30.0, help="seconds a SIGTERM waits for requests in flight (default: 30)")
    s.add_argument("--model", default=None, help="the encoder, when the saved retriever names a local path (you trust)")
    s.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def _compact_parser(sub: Any, quiet: argparse.ArgumentParser) -> None:
    c = sub.add_parser("compact", parents=[quiet], help="fold a served retriever's add log into the saved retriever")
    c.add_argument("retriever", help="directory of a saved retriever (not while `icl-fungi serve` runs on it)")
    c.add_argument("--model", default=None, help="the encoder, when the saved retriever names a local path (you trust)")
    c.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="icl-fungi", description="Pick in-context examples with FUNGI features.")
    p.add_argument("--version", action="version", version=f"icl-fungi {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info logs")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import a Python module first (one that registers your KL heads, view kinds, selection "
                        "strategies or index backends); repeatable")
    quiet = argparse.ArgumentParser(add_help=False)  # -q also after the subcommand
    quiet.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars or info logs")
    sub = p.add_subparsers(dest="command", required=True)
    _build_parser(sub, quiet)
    _query_parser(sub, quiet)
    _eval_parser(sub, quiet)
    _serve_parser(sub, quiet)
    _compact_parser(sub, quiet)
    return p


def _make_index(args: argparse.Namespace) -> Any:
    """The index backend ``--index`` names, built with ``--index-option`` (and the Milvus flags); ``None``: hnswlib
    with the retriever's defaults."""
    options = parse_options(args.index_option, what="--index-option")
    if args.index == "milvus":
        if not args.milvus_uri:
            raise ValueError("--index milvus needs --milvus-uri (a milvus-lite file *.db, or http://host:19530)")
        options = {"uri": args.milvus_uri, "collection": args.collection, **options}
    if args.index == "hnswlib" and not options:
        return None
    cls = index_class(args.index)
    try:
        return cls(**options)
    except TypeError as err:
        raise ValueError(f"--index {args.index}: {err}") from None


def _build(args: argparse.Namespace) -> None:
    from .retriever import ICLRetriever

    check_save_target(Path(args.out))  # before the (long) build
    index = _make_index(args)
    executor = None
    if args.executor == "ray":
        from .distributed import RayExecutor

        executor = RayExecutor(args.ray_address, workers=args.workers)
    feature_options = parse_options(args.feature_option, what="--feature-option")
    r = ICLRetriever.from_dataset(
        args.data, text_column=args.text_column, label_column=None if args.no_labels else args.label_column,
        output_column=args.output_column, split=args.split,
        model=args.model, features=tuple(f.strip() for f in args.features.split(",") if f.strip()),
        batch_size=args.batch_size, device=args.device, seed=args.seed, index=index, executor=executor,
        fit_weights=None if args.fit_weights == "none" else args.fit_weights, **feature_options,
    )
    path = r.save(args.out)
    kind = " and ".join(what for what, has in (("labels", r.has_labels), ("outputs", r.has_outputs)) if has)
    print(f"saved a retriever over {len(r)} examples {f'with {kind}' if kind else 'of plain text'} to {path}")


def _query(args: argparse.Namespace) -> None:
    from .retriever import ICLRetriever
    from .selection import Selection

    # every argument is checked before the model loads (tens of seconds on a busy machine)
    if args.k < 1:
        raise ValueError(f"-k must be >= 1, got {args.k}")
    if not args.query.strip():
        raise ValueError("the query is empty")
    selection = Selection.from_spec(args.selection) if args.selection else None
    if args.prompt and args.template:
        from .template import PromptTemplate

        PromptTemplate.load(args.template)
    r = ICLRetriever.load(args.retriever)
    res = r.retrieve(args.query, k=args.k, selection=selection)
    prompt = None
    if args.prompt:
        prompt = r.build_prompt(args.query, k=args.k, template=args.template, order=args.order, selection=selection)
    if args.json:
        print(json.dumps({"examples": [{"index": x.index, "score": x.score, "label": x.label, "text": x.text, "output": x.output}
                                       for x in res],
                          "prompt": prompt}, ensure_ascii=False, indent=2))
        return
    for x in res:  # score, label (when the pool has labels), text, output (when it has outputs)
        print("\t".join([f"{x.score:.3f}", *([str(x.label)] if r.has_labels else []), x.text, *([x.output] if r.has_outputs else [])]))
    if prompt is not None:
        print("\n--- prompt ---")
        print(prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False, indent=2))


def _eval(args: argparse.Namespace) -> None:
    from .evaluation.harness import EvalSettings, run_icl_eval

    settings = EvalSettings(
        data=args.data, out=args.out, text_column=args.text_column, label_column=args.label_column,
        output_column=args.output_column, max_tokens=args.max_tokens, retriever=args.retriever,
        selectors=tuple(s.strip() for s in args.selectors.split(",") if s.strip()),
        k=args.k, limit=args.limit, seed=args.seed, template=args.template, mode=args.mode,
        base_url=args.base_url, model=args.model, concurrency=args.concurrency, timeout=args.timeout,
        max_retries=args.max_retries, cache=args.cache, show_progress=not args.quiet, cached_only=args.cached_only,
        per_label=args.per_label, pool_seed=args.pool_seed, reader=args.reader, reader_model=args.reader_model,
        reader_tokenizer=args.reader_tokenizer, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
        tokenizer_check=args.tokenizer_check, endpoint_id=args.endpoint_id, export_prompts=args.export_prompts,
    )
    report = run_icl_eval(settings)
    if "exported" in report:
        print(f"wrote {report['exported']} prompts to {report['path']}")
        return
    for name, m in report["selectors"].items():
        lo, hi = m["accuracy_ci95"]
        f1 = f"  token F1 {m['token_f1']:.4f}" if "token_f1" in m else ""
        print(f"{name:<10} accuracy {m['accuracy']:.4f} (95% CI {lo:.4f}-{hi:.4f}){f1}  invalid {m['invalid_rate']:.4f}  n={m['n']}")
    print(f"report: {Path(args.out) / 'report.md'}  (wall time {report['wall_time_s']} s)")


def _serve(args: argparse.Namespace) -> int:
    from .manifest import MANIFEST, restore_interrupted_save

    restore_interrupted_save(args.retriever)
    if not (Path(args.retriever) / MANIFEST).is_file():
        raise ValueError(f"{args.retriever} is not a saved retriever (no {MANIFEST})")
    key = None
    if args.api_key_env:
        key = os.environ.get(args.api_key_env, "")
        if not key.strip():
            raise ValueError(f"--api-key-env {args.api_key_env}: that environment variable is empty or not set")
    try:
        from .serve import ServeSettings, run_server
    except ImportError as err:
        raise RuntimeError(f"icl-fungi serve needs the serve extra: pip install 'icl-fungi[serve]' ({err})") from None
    settings = ServeSettings(
        args.retriever, host=args.host, port=args.port, api_key=key, gather_ms=args.gather_ms, max_batch=args.max_batch,
        max_queue=args.max_queue, max_k=args.max_k, max_queries=args.max_queries, max_text_chars=args.max_text_chars,
        max_examples=args.max_examples, max_body_bytes=args.max_body_bytes, read_only=args.read_only,
        compact_on_exit=args.compact_on_exit, model=args.model, device=args.device, shutdown_timeout=args.shutdown_timeout,
    )
    if key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("icl_fungi").warning("serving on %s without --api-key-env: anyone who reaches it can add examples", args.host)
    return run_server(settings, log_level="warning" if args.quiet else "info")


def _compact(args: argparse.Namespace) -> None:
    from .serve.wal import compact, log_dir

    records, added = compact(args.retriever, model=args.model, device=args.device)
    print(f"folded {records} add record(s) ({added} new example(s)) from {log_dir(args.retriever)} into {args.retriever}")


def _import_modules(names: Sequence[str]) -> None:
    """``--import``: the user's modules that register their own parts."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ValueError(f"--import {name}: {err}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``icl-fungi`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    for noisy in ("httpx", "httpx2", "openai", "httpcore", "httpcore2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        _import_modules(args.imports)
        commands = {"build": _build, "query": _query, "eval": _eval, "serve": _serve, "compact": _compact}
        code = commands[args.command](args)
    except KeyboardInterrupt:
        print("icl-fungi: interrupted (responses received so far are cached)", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, RuntimeError) as err:
        print(f"icl-fungi: error: {err}", file=sys.stderr)
        return 2
    return code or 0


def run() -> None:
    """The console script: ``main()``, and after Ctrl-C an immediate exit (requests still in flight are not
    waited for; every response received is already in the cache)."""
    code = main()
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(code)


if __name__ == "__main__":
    run()
