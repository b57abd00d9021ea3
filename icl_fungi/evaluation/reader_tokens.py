"""Is a reader's tokenizer the model file's own? Token ids of a few fixed texts against a reference.

A GGUF file carries its tokenizer; transformers rebuilds it as a ``tokenizers`` object, and some versions rebuild it
wrong (5.17 gave Gemma 3 about 1.8x the tokens and no BOS). The reference is llama.cpp's own tokenizer of the file
(:func:`reference_tokens`, when llama-cpp-python is installed), or ids pinned here for the embedded Gemma 3 270M GGUF
(:data:`PINNED_TOKENS`, read from llama.cpp), so a machine without llama.cpp checks too.

Example:
    >>> class Tok:                                       # a tokenizer that drops the BOS
    ...     def __call__(self, text, add_special_tokens=True): return {"input_ids": [5, 6]}
    >>> check_tokenizer(Tok(), {"hi": [2, 5, 6]})
    "'hi': 2 tokens, the model's own tokenizer gives 3 (ids [5, 6] against [2, 5, 6]; no BOS 2)"
"""

from __future__ import annotations

import logging
import os
from typing import Any

__all__ = ["PINNED_TOKENS", "TOKEN_CHECK_TEXTS", "check_tokenizer", "pinned_tokens", "reference_tokens"]

logger = logging.getLogger(__name__)

# prompt-like texts, with what tokenizers disagree on: digits, punctuation, runs of spaces, newlines, non-ASCII
TOKEN_CHECK_TEXTS = (
    "Query: I still haven't received my card\nIntent: card_arrival\n\nQuery: where is my card?\nIntent:",
    "Classify the intent of each query. Choose one of: activate_my_card, age_limit, apple_pay_or_google_pay.",
    "How do I top up £50 with Apple Pay?  The 2nd time it failed (error #4031).",
    "Pourquoi ma carte a-t-elle été refusée ? ¿Dónde está? 카드가 안 와요 🙂",
)

# llama.cpp's ids (llama-cpp-python 0.3, vocab_only, add_bos=True, special=True) of TOKEN_CHECK_TEXTS, by the sha256 of
# the GGUF file; written by eval/reader/pin_tokens.py
PINNED_TOKENS: dict[str, tuple[tuple[int, ...], ...]] = {
    "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818": (
        (2, 7990, 236787, 564, 2036, 10366, 236789, 236745, 4461, 1041, 3733, 107, 22280, 236787, 3733, 236779,
         46353, 108, 7990, 236787, 1298, 563, 1041, 3733, 236881, 107, 22280, 236787),
        (2, 4335, 1891, 506, 9703, 529, 1546, 7609, 236761, 23399, 886, 529, 236787, 28039, 236779, 3307, 236779,
         6307, 236764, 3911, 236779, 17846, 236764, 17810, 236779, 9346, 236779, 504, 236779, 7239, 236779, 9346,
         236761),
        (2, 3910, 776, 564, 1903, 872, 6903, 236810, 236771, 607, 9947, 9762, 236881, 138, 818, 236743, 236778, 523,
         990, 625, 8428, 568, 1899, 997, 236812, 236771, 236800, 236770, 769),
        (2, 199936, 3504, 35132, 496, 236772, 236745, 236772, 4008, 10267, 125513, 3190, 2360, 7196, 162228, 6227,
         236881, 40776, 114710, 17031, 61568, 237586, 57235),
    ),
}


def pinned_tokens(sha256: str) -> dict[str, list[int]] | None:
    """The pinned ids of :data:`TOKEN_CHECK_TEXTS` for the GGUF file with this sha256, or ``None``."""
    ids = PINNED_TOKENS.get(sha256)
    return None if ids is None else {t: list(x) for t, x in zip(TOKEN_CHECK_TEXTS, ids, strict=True)}


def reference_tokens(gguf_path: str | os.PathLike, texts: tuple[str, ...] = TOKEN_CHECK_TEXTS) -> dict[str, list[int]] | None:
    """llama.cpp's token ids of ``texts`` for a GGUF file, as its server tokenizes a prompt (BOS added, special
    tokens parsed); ``None`` without llama-cpp-python."""
    try:
        import llama_cpp
    except ImportError:
        return None
    llm = llama_cpp.Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    try:
        return {t: list(llm.tokenize(t.encode("utf-8"), add_bos=True, special=True)) for t in texts}
    finally:
        llm.close()


def check_tokenizer(tokenizer: Any, reference: dict[str, list[int]]) -> str | None:
    """``None`` when ``tokenizer`` gives the ``reference`` ids for every text, else what differs first (token count,
    a missing BOS, the first differing ids)."""
    for text, want in reference.items():
        got = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        if got == want:
            continue
        short = f"{text[:40]!r}" if len(text) > 40 else repr(text)
        detail = f"ids {got[:8]} against {want[:8]}"
        if want and got[:1] != want[:1] and got[: len(want) - 1] == want[1:len(got) + 1]:
            detail += f"; no BOS {want[0]}"
        return f"{short}: {len(got)} tokens, the model's own tokenizer gives {len(want)} ({detail})"
    return None
