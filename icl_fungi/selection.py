"""Selection strategies over the index's candidates: top-k, MMR, label caps, label coverage.

Example:
    >>> import numpy as np
    >>> vecs = np.array([[1, 0], [0.99, 0.14], [0.6, 0.8]], dtype=np.float32)  # the candidates' vectors
    >>> sel = Selection(strategy="mmr", mmr_lambda=0.5)
    >>> [i for i, _ in select(np.array([1, 0.1]), [0, 1, 2], [0.99, 0.99, 0.68], vecs, ["a", "a", "b"], 2, sel)]
    [0, 2]
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["STRATEGIES", "Selection", "select", "select_from_index"]

STRATEGIES = ("topk", "mmr", "label_cap", "label_coverage")


@dataclasses.dataclass(frozen=True)
class Selection:
    """How to choose ``k`` examples among the nearest candidates.

    Args:
        strategy: ``"topk"`` (the ``k`` most similar), ``"mmr"`` (maximal marginal
            relevance: ``mmr_lambda * sim(query, x) - (1 - mmr_lambda) * max sim(x, chosen)``),
            ``"label_cap"`` (at most ``max_per_label`` examples per label, by similarity),
            ``"label_coverage"`` (first the best example of each of the ``n_labels`` labels
            with the largest summed similarity among the candidates, then fill by similarity).
        fetch_k: candidates taken from the index (default ``max(5 * k, 50)``); grown
            automatically when filters leave fewer than ``k``.
        exclude_query: drop pool examples whose text equals the query (case and
            whitespace ignored): needed when queries come from the pool.
        dedup_threshold: drop a candidate whose cosine similarity to an already kept
            one is at least this (near-duplicates; 1.0 drops exact duplicates only).
        allowed_labels: only examples with these labels (compared as strings); the index applies
            the filter itself (inside Milvus for a Milvus index).
    """

    strategy: str = "topk"
    fetch_k: int | None = None
    mmr_lambda: float = 0.5
    max_per_label: int | None = None
    n_labels: int | None = None
    exclude_query: bool = False
    dedup_threshold: float | None = None
    allowed_labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown selection strategy {self.strategy!r}; choose from {STRATEGIES}")
        if not 0.0 <= self.mmr_lambda <= 1.0:
            raise ValueError(f"mmr_lambda must be in [0, 1], got {self.mmr_lambda}")
        if self.strategy == "label_cap" and (not isinstance(self.max_per_label, int) or self.max_per_label < 1):
            raise ValueError("strategy 'label_cap' needs max_per_label >= 1")
        if self.strategy == "label_coverage" and (not isinstance(self.n_labels, int) or self.n_labels < 1):
            raise ValueError("strategy 'label_coverage' needs n_labels >= 1")
        if self.fetch_k is not None and (not isinstance(self.fetch_k, int) or self.fetch_k < 1):
            raise ValueError(f"fetch_k must be a positive int, got {self.fetch_k!r}")
        if self.dedup_threshold is not None and not -1.0 <= self.dedup_threshold <= 1.0:
            raise ValueError(f"dedup_threshold must be in [-1, 1], got {self.dedup_threshold}")
        if self.allowed_labels is not None:
            if isinstance(self.allowed_labels, str) or not hasattr(self.allowed_labels, "__iter__"):
                raise TypeError("allowed_labels must be a collection of labels, e.g. ('card_arrival',), not a string")
            allowed = tuple(str(x) for x in self.allowed_labels)
            if not allowed:
                raise ValueError("allowed_labels is empty: no example could be chosen")
            object.__setattr__(self, "allowed_labels", allowed)

    @classmethod
    def coerce(cls, selection: Selection | str | None) -> Selection:
        """Accept a :class:`Selection`, a strategy name or ``None`` (top-k)."""
        if selection is None:
            return cls()
        if isinstance(selection, str):
            return cls(strategy=selection)
        if isinstance(selection, Selection):
            return selection
        raise TypeError(f"selection must be a Selection, a strategy name or None, got {type(selection).__name__}")

    @property
    def is_plain(self) -> bool:
        """Plain top-k with no filter besides the index's label filter: the index answer is the selection."""
        return self.strategy == "topk" and not self.exclude_query and self.dedup_threshold is None

    @property
    def needs_vectors(self) -> bool:
        """True when choosing needs the candidates' vectors (MMR, near-duplicate removal)."""
        return self.strategy == "mmr" or self.dedup_threshold is not None

    def fetch_size(self, k: int) -> int:
        """Candidates to fetch for ``k`` examples."""
        return self.fetch_k or max(5 * k, 50)


def _norm_text(text: str) -> str:
    return " ".join(text.split()).casefold()


def select(
    query_vector: np.ndarray,
    ids: Sequence[int],
    scores: Sequence[float],
    vectors: np.ndarray | None,
    labels: Sequence,
    k: int,
    selection: Selection,
    *,
    texts: Sequence[str] | None = None,
    query: str | None = None,
) -> list[tuple[int, float]]:
    """Choose up to ``k`` of the candidates ``ids`` (best first by ``scores``).

    ``vectors`` are the candidates' L2-normalised vectors (row ``j`` for ``ids[j]``; needed by MMR
    and ``dedup_threshold``), ``labels``/``texts`` the pool's labels and texts. Returns
    ``(pool id, similarity to the query)`` pairs in the order the strategy picked them.
    """
    cand = [(int(i), float(s)) for i, s in zip(ids, scores, strict=True)]
    row = {i: j for j, (i, _) in enumerate(cand)}
    if selection.needs_vectors and vectors is None and cand:
        raise ValueError(f"selection {selection.strategy!r} with these options needs the candidates' vectors")
    if selection.exclude_query:
        if texts is None or query is None:
            raise ValueError("exclude_query needs the pool texts and the query")
        q = _norm_text(query)
        cand = [(i, s) for i, s in cand if _norm_text(texts[i]) != q]
    if selection.dedup_threshold is not None:
        kept: list[tuple[int, float]] = []
        for i, s in cand:
            if kept and float(np.max(vectors[[row[j] for j, _ in kept]] @ vectors[row[i]])) >= selection.dedup_threshold - 1e-6:
                continue
            kept.append((i, s))
        cand = kept
    strategy = selection.strategy
    if strategy == "topk":
        return cand[:k]
    if strategy == "label_cap":
        per_label: dict = defaultdict(int)
        out = []
        for i, s in cand:
            if per_label[labels[i]] < selection.max_per_label:
                per_label[labels[i]] += 1
                out.append((i, s))
                if len(out) == k:
                    break
        return out
    if strategy == "label_coverage":
        mass: dict = defaultdict(float)
        best: dict = {}
        for i, s in cand:
            mass[labels[i]] += max(s, 0.0)
            best.setdefault(labels[i], (i, s))
        top_labels = sorted(mass, key=lambda lab: (-mass[lab], str(lab)))[: selection.n_labels]
        out = [best[lab] for lab in top_labels][:k]
        chosen = {i for i, _ in out}
        out.extend((i, s) for i, s in cand if i not in chosen)
        return out[:k]
    # MMR
    if not cand:
        return []
    vecs = vectors[[row[i] for i, _ in cand]]
    rel = np.array([s for _, s in cand])
    lam = selection.mmr_lambda
    picked: list[int] = []
    max_sim = np.full(len(cand), -np.inf)
    for _ in range(min(k, len(cand))):
        penalty = np.where(np.isfinite(max_sim), max_sim, 0.0)
        gain = lam * rel - (1 - lam) * penalty
        gain[picked] = -np.inf
        j = int(np.argmax(gain))
        picked.append(j)
        max_sim = np.maximum(max_sim, vecs @ vecs[j])
    return [cand[j] for j in picked]


def select_from_index(index: Any, vector: np.ndarray, k: int, selection: Selection, n: int, labels: Sequence,
                      *, texts: Sequence[str] | None = None, query: str | None = None) -> list[tuple[int, float]]:
    """:func:`select` over ``index.query`` candidates for one query vector, among the first ``n`` pool examples
    (a snapshot), fetching more while filters leave fewer than ``k``."""
    fetch = min(n, selection.fetch_size(k))
    while True:
        ids, scores = index.query(vector[None], fetch, labels=selection.allowed_labels)
        keep = (ids[0] >= 0) & (ids[0] < n)  # padding, and examples added after the snapshot
        ids_k, scores_k = ids[0][keep], scores[0][keep]
        vectors = index.get_vectors(ids_k) if selection.needs_vectors and len(ids_k) else None
        chosen = select(vector, ids_k, scores_k, vectors, labels, k, selection, texts=texts, query=query)
        if len(chosen) >= k or fetch >= n:
            return chosen
        fetch = min(n, fetch * 4)
