"""Metrics: retrieval-only (no LLM), LLM answer parsing, accuracy intervals and paired tests.

Example:
    >>> precision_at_k([["a", "a", "b"]], ["a"], k=3)
    0.6666666666666666
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

__all__ = [
    "knn_vote_accuracy",
    "macro_f1",
    "mcnemar_p",
    "paired_comparison",
    "parse_label",
    "precision_at_k",
    "retrieval_metrics",
    "stratified_split",
    "wilson_interval",
]


def precision_at_k(retrieved_labels: Sequence[Sequence], query_labels: Sequence, k: int) -> float:
    """Mean share of the first ``k`` retrieved labels that equal the query's label."""
    return float(np.mean([np.mean([lab == q for lab in row[:k]]) for row, q in zip(retrieved_labels, query_labels, strict=True)]))


def knn_vote_accuracy(
    retrieved_labels: Sequence[Sequence], scores: Sequence[Sequence[float]], query_labels: Sequence, k: int
) -> float:
    """Accuracy of a similarity-weighted vote among the first ``k`` neighbours."""
    correct = 0
    for row, sc, q in zip(retrieved_labels, scores, query_labels, strict=True):
        votes: dict = defaultdict(float)
        for lab, s in zip(row[:k], sc[:k], strict=True):
            votes[lab] += max(float(s), 0.0) + 1e-9
        correct += max(votes, key=votes.get) == q
    return correct / len(query_labels)


def retrieval_metrics(retrieved_labels: Sequence[Sequence], scores: Sequence[Sequence[float]], query_labels: Sequence, k: int) -> dict:
    """P@k, gold-label-in-top-k, 1-NN accuracy and weighted k-NN vote accuracy."""
    return {
        f"p@{k}": precision_at_k(retrieved_labels, query_labels, k),
        f"gold_in_top{k}": float(np.mean([q in row[:k] for row, q in zip(retrieved_labels, query_labels, strict=True)])),
        "1nn_acc": float(np.mean([row[0] == q for row, q in zip(retrieved_labels, query_labels, strict=True)])),
        f"knn{k}_vote_acc": knn_vote_accuracy(retrieved_labels, scores, query_labels, k),
        "n_queries": len(query_labels),
    }


def stratified_split(labels: Sequence, fraction: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    """Seeded stratified split of positions into ``(keep, held_out)``; ``fraction`` per label held out."""
    rng = np.random.default_rng(seed)
    by_label: dict = defaultdict(list)
    for i, lab in enumerate(labels):
        by_label[lab].append(i)
    keep, held = [], []
    for lab in sorted(by_label, key=str):
        idx = rng.permutation(by_label[lab]).tolist()
        n_held = round(fraction * len(idx))
        held.extend(idx[:n_held])
        keep.extend(idx[n_held:])
    return sorted(keep), sorted(held)


# ---------------------------------------------------------------- LLM evaluation
def _norm_label(text: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", str(text).casefold()).split())


def parse_label(reply: str, labels: Sequence) -> object | None:
    """Map an LLM reply to a label, or ``None`` (invalid).

    Case, whitespace and punctuation are normalised on both sides (``"Card arrival."``
    matches ``card_arrival``); only the first line counts; anything but an exact match
    of one label (two labels, an unknown label, an empty reply) is invalid.
    """
    table: dict[str, object] = {}
    for lab in labels:
        table.setdefault(_norm_label(lab), lab)
    lines = (reply or "").strip().splitlines()
    first = _norm_label(lines[0]) if lines else ""
    return table.get(first) if first else None


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95 % interval for a proportion."""
    if n == 0:
        return (0.0, 0.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # the bounds contain p also in floating point (at p = 1, centre + half can round to 0.9999999999999998)
    return (max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)))


def macro_f1(gold: Sequence, pred: Sequence) -> float:
    """Macro-F1 over the gold labels (an invalid prediction ``None`` is wrong for every class)."""
    classes = sorted(set(gold), key=str)
    f1s = []
    for c in classes:
        tp = sum(1 for g, p in zip(gold, pred, strict=True) if g == c and p == c)
        fp = sum(1 for g, p in zip(gold, pred, strict=True) if g != c and p == c)
        fn = sum(1 for g, p in zip(gold, pred, strict=True) if g == c and p != c)
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else 0.0


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts ``b`` and ``c``."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_comparison(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict:
    """Accuracy difference A - B on the same queries: 95 % interval and McNemar p-value."""
    a = np.asarray(correct_a, dtype=bool)
    b_ = np.asarray(correct_b, dtype=bool)
    n = len(a)
    only_a = int(np.sum(a & ~b_))
    only_b = int(np.sum(~a & b_))
    diff = (only_a - only_b) / n if n else 0.0
    var = (only_a + only_b - (only_a - only_b) ** 2 / n) / n**2 if n else 0.0
    half = 1.959964 * math.sqrt(max(var, 0.0))
    return {"difference": diff, "ci95": [diff - half, diff + half], "only_first_correct": only_a,
            "only_second_correct": only_b, "mcnemar_p": mcnemar_p(only_a, only_b), "n": n}
