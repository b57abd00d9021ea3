"""Answer exported prompts with the in-process reader, into a response cache (a GPU machine's half of a run).

``icl-fungi eval --export-prompts FILE`` writes a run's prompts without sending them; this script loads the reader
once and answers every distinct prompt of each given file (``.jsonl`` or ``.jsonl.xz``), in the order given, into
``OUT_DIR/<file>.cache.jsonl`` (appended as each batch ends: a run cut short keeps what it answered, a rerun answers
only what is missing; a prompt an earlier file held is not answered again), and writes ``OUT_DIR/summary.json``
(the reader's endpoint id, prompts/s per file). The report is
then drawn where the data is: ``icl-fungi eval ... --reader transformers --cached-only --cache CACHE --endpoint-id ID``.
Needs only torch, transformers, gguf (for a GGUF model) and numpy.

    python eval/reader/answer_prompts.py --prompts runs/export/a.jsonl.xz,runs/export/b.jsonl.xz --out-dir runs/gpu \\
        --device cuda --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import logging
import lzma
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from icl_fungi.evaluation.dispatch import send_all
from icl_fungi.evaluation.llm import ResponseCache
from icl_fungi.evaluation.reader import TransformersReader


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: the arguments after the script, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", required=True, help="comma-separated exported prompt files (.jsonl or .jsonl.xz)")
    ap.add_argument("--out-dir", required=True, help="folder of the caches (one per prompt file) and summary.json")
    ap.add_argument("--reader-model", default=None, help="GGUF file or model folder (default: the embedded Gemma 3 270M)")
    ap.add_argument("--reader-tokenizer", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--stop", default="\\n", help="stop string (default: a newline; the label templates' stop)")
    ap.add_argument("--limit", type=int, default=0, help="answer only the first N distinct prompts (0: all)")
    ap.add_argument("--same-length", action="store_true", help="batch only prompts of one token count (no padding)")
    ap.add_argument("--probe", type=int, default=0,
                    help="first answer N prompts of the first file that carry a cached reply with and without padding; "
                         "where under --probe-min of the replies agree, batch without padding")
    ap.add_argument("--probe-min", type=float, default=0.99)
    return ap.parse_args(argv)


def read_prompts(path: str) -> list:
    """The distinct prompts of an exported file, in file order."""
    seen: dict[str, object] = {}
    opener = lzma.open if path.endswith(".xz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            prompt = json.loads(line)["prompt"]
            seen.setdefault(json.dumps(prompt, sort_keys=True, ensure_ascii=False), prompt)
    return list(seen.values())


def probe(reader: TransformersReader, path: str, n: int, out: Path, minimum: float) -> dict:
    """Answer ``n`` prompts of ``path`` in padded batches and in batches without padding (each into its own cache in
    ``out``); where fewer than ``minimum`` of the replies agree, padding changes answers with this transformers, and
    the reader keeps batches without padding. Also the share identical to the cached replies the rows carry."""
    opener = lzma.open if path.endswith(".xz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        rows = [r for r in map(json.loads, fh) if r.get("reply") is not None][:n]
    texts = {}
    for same_length in (False, True):
        reader.same_length = same_length
        reader.cache = ResponseCache(out / f"probe-{'same-length' if same_length else 'padded'}.cache.jsonl")
        texts[same_length] = [x.text for x in send_all(reader, [r["prompt"] for r in rows], show_progress=False)]
    agree = sum(a == b for a, b in zip(texts[False], texts[True], strict=True)) / max(1, len(rows))
    reader.same_length = agree < minimum
    result = {"n": len(rows), "padded_agrees_with_unpadded": round(agree, 4),
              "identical_to_cached": round(sum(a == r["reply"] for a, r in zip(texts[False], rows, strict=True)) / max(1, len(rows)), 4),
              "same_length_batches": reader.same_length}
    print("probe", result, flush=True)
    return result


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stop = tuple(args.stop.encode().decode("unicode_escape").split(",")) if args.stop else ()
    reader = TransformersReader(args.reader_model, tokenizer=args.reader_tokenizer, device=args.device, dtype=args.dtype,
                                batch_size=args.batch_size, max_tokens=args.max_tokens, stop=stop, same_length=args.same_length)
    t0 = time.perf_counter()
    reader.check()
    summary = {"endpoint_id": reader.endpoint_id, "model": reader.model, "device": args.device, "dtype": args.dtype,
               "batch_size": args.batch_size, "load_s": round(time.perf_counter() - t0, 1), "files": {}}
    if args.probe:
        summary["probe"] = probe(reader, args.prompts.split(",")[0], args.probe, out, args.probe_min)
    earlier: set[str] = set()
    for path in args.prompts.split(","):
        name = Path(path).name.removesuffix(".xz").removesuffix(".jsonl")
        prompts = read_prompts(path)[: args.limit or None]
        keys = [json.dumps(p, sort_keys=True, ensure_ascii=False) for p in prompts]
        prompts = [p for p, key in zip(prompts, keys, strict=True) if key not in earlier]
        earlier.update(keys)
        reader.cache = ResponseCache(out / f"{name}.cache.jsonl")
        todo = sum(not reader.is_cached(p) for p in prompts)
        t1 = time.perf_counter()
        replies = send_all(reader, prompts, show_progress=sys.stderr.isatty())
        took = time.perf_counter() - t1
        summary["files"][name] = {"prompts": len(prompts), "answered": todo, "answer_s": round(took, 1),
                                  "prompts_per_s": round(todo / took, 2) if todo else None,
                                  "prompt_tokens": sum(r.prompt_tokens for r in replies)}
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        print(name, summary["files"][name], flush=True)
    return summary


if __name__ == "__main__":
    main()
