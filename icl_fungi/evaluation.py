"""Retrieval metrics that need no LLM, and a seeded stratified dev split.

Example:
    >>> precision_at_k([["a", "a", "b"]], ["a"], k=3)
    0.6666666666666666
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

__all__ = ["knn_vote_accuracy", "precision_at_k", "retrieval_metrics", "stratified_split"]


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
