"""Print llama.cpp's token ids of the tokenizer check's fixed texts for a GGUF file, keyed by its sha256: the entry
``icl_fungi.evaluation.reader_tokens.PINNED_TOKENS`` holds for the embedded Gemma 3 270M, so a machine without
llama-cpp-python checks a reader's tokenizer too. Needs llama-cpp-python.

    python eval/reader/pin_tokens.py [--model FILE.gguf]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from icl_fungi.evaluation.llm import local_model_path
from icl_fungi.evaluation.reader import model_sha256
from icl_fungi.evaluation.reader_tokens import TOKEN_CHECK_TEXTS, reference_tokens


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: the arguments after the script, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a GGUF file (default: the embedded Gemma 3 270M)")
    return ap.parse_args(argv)


def main() -> None:
    args = parse_args()
    path = Path(args.model) if args.model else local_model_path()
    ids = reference_tokens(path, TOKEN_CHECK_TEXTS)
    if ids is None:
        raise SystemExit("needs llama-cpp-python")
    print(json.dumps({model_sha256(path): [ids[t] for t in TOKEN_CHECK_TEXTS]}))


if __name__ == "__main__":
    main()
