"""Selection: which ``k`` of the index's candidates a prompt shows.

A :class:`Selection` is a *strategy* (a :class:`SelectionStrategy`: :class:`TopK`, :class:`MMR`,
:class:`LabelCap`, :class:`LabelCoverage`, or a class of your own registered by name) applied after
composable *steps* (a :class:`SelectionStep`: :class:`LabelFilter`, :class:`ExcludeQuery`,
:class:`Dedup`, or your own) to the candidates the index returns, most similar first.

Example:
    >>> import numpy as np
    >>> vecs = np.array([[1, 0], [0.99, 0.14], [0.6, 0.8]], dtype=np.float32)  # the candidates' vectors
    >>> [i for i, _ in select(np.array([1, 0.1]), [0, 1, 2], [0.99, 0.99, 0.68], vecs, ["a", "a", "b"], 2, Selection("mmr"))]
    [0, 2]
    >>> class FirstLabelOnly(SelectionStrategy):          # a strategy of your own
    ...     name = "first-label-only"
    ...     def choose(self, candidates, k, context):
    ...         first = context.labels[candidates[0][0]] if candidates else None
    ...         return [(i, s) for i, s in candidates if context.labels[i] == first][:k]
    >>> _ = register_selection_strategy(FirstLabelOnly)
    >>> Selection("first-label-only").strategy.name
    'first-label-only'
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from .options import parse_options
from .strategies import (
    MMR,
    Candidates,
    Cover,
    Dedup,
    ExcludeQuery,
    LabelCap,
    LabelCoverage,
    LabelFilter,
    RankFusion,
    SelectionContext,
    SelectionStep,
    SelectionStrategy,
    TopK,
    register_selection_strategy,
    registered_selection_strategies,
    selection_strategy,
)

__all__ = [
    "MMR",
    "Cover",
    "Dedup",
    "ExcludeQuery",
    "LabelCap",
    "LabelCoverage",
    "LabelFilter",
    "RankFusion",
    "Selection",
    "SelectionContext",
    "SelectionStep",
    "SelectionStrategy",
    "TopK",
    "register_selection_strategy",
    "registered_selection_strategies",
    "select",
    "select_from_index",
    "selection_strategy",
]

# ------------------------------------------------------------------ selection
class Selection:
    """How to choose ``k`` examples among the nearest candidates: steps, then a strategy.

    Args:
        strategy: a registered strategy name (``"topk"``, ``"mmr"``, ``"label_cap"``, ``"label_coverage"``, or
            your own) built with ``options`` (``mmr_lambda``, ``max_per_label``, ``n_labels``, ...), or a
            :class:`SelectionStrategy` object.
        steps: :class:`SelectionStep` objects applied in order after the built-in ones below.
        fetch_k: candidates taken from the index (default ``max(5 * k, 50)``); grown automatically when
            steps leave fewer than ``k``.
        allowed_labels: shorthand for a :class:`LabelFilter` step (applied by the index itself).
        exclude_query: shorthand for an :class:`ExcludeQuery` step.
        dedup_threshold: shorthand for a :class:`Dedup` step.

    Example:
        >>> Selection("label_cap", max_per_label=2, exclude_query=True)
        Selection(LabelCap(max_per_label=2), steps=[ExcludeQuery()])
    """

    def __init__(self, strategy: str | SelectionStrategy = "topk", *, steps: Sequence[SelectionStep] = (),
                 fetch_k: int | None = None, allowed_labels: Collection[Any] | None = None, exclude_query: bool = False,
                 dedup_threshold: float | None = None, **options: Any) -> None:
        if isinstance(strategy, SelectionStrategy):
            if options:
                raise ValueError(f"options {sorted(options)} go to the strategy's constructor, not to Selection")
            self.strategy = strategy
        else:
            self.strategy = selection_strategy(strategy, **options)
        if fetch_k is not None and (isinstance(fetch_k, bool) or not isinstance(fetch_k, int | np.integer) or fetch_k < 1):
            raise ValueError(f"fetch_k must be an int >= 1, got {fetch_k!r}")
        if not isinstance(exclude_query, bool):
            raise TypeError(f"exclude_query must be a bool, got {type(exclude_query).__name__}")
        built_in = [LabelFilter(allowed_labels)] if allowed_labels is not None else []
        built_in += [ExcludeQuery()] if exclude_query else []
        built_in += [Dedup(dedup_threshold)] if dedup_threshold is not None else []
        for step in steps:
            if not isinstance(step, SelectionStep):
                raise TypeError(f"steps must be SelectionStep objects, got {type(step).__name__}")
        self.steps: tuple[SelectionStep, ...] = (*built_in, *steps)
        self.fetch_k = fetch_k

    @classmethod
    def from_spec(cls, spec: str) -> Selection:
        """A selection from ``"strategy;key=value;..."`` (the CLI's ``--selection``), e.g. ``"label_cap;max_per_label=1"``
        or ``"mmr;mmr_lambda=0.3;exclude_query=true"``; ``allowed_labels`` takes ``a|b``."""
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError("empty selection spec")
        name, *pairs = [p.strip() for p in spec.split(";") if p.strip()]
        if "=" in name:
            name, pairs = "topk", [name, *pairs]
        options = parse_options(pairs, what="selection option")
        if isinstance(options.get("allowed_labels"), str | int):
            options["allowed_labels"] = tuple(x for x in str(options["allowed_labels"]).split("|") if x)
        return cls(name, **options)

    @classmethod
    def coerce(cls, selection: Selection | str | SelectionStrategy | None) -> Selection:
        """Accept a :class:`Selection`, a strategy (name or object) or ``None`` (top-k)."""
        if selection is None:
            return cls()
        if isinstance(selection, str | SelectionStrategy):
            return cls(selection)
        if isinstance(selection, Selection):
            return selection
        raise TypeError(f"selection must be a Selection, a strategy name or None, got {type(selection).__name__}")

    @property
    def allowed_labels(self) -> tuple[str, ...] | None:
        """The labels the index keeps (the intersection of every step's ``index_labels``), or ``None``."""
        allowed: tuple[str, ...] | None = None
        for step in self.steps:
            if step.index_labels is not None:
                allowed = step.index_labels if allowed is None else tuple(x for x in allowed if x in step.index_labels)
        return allowed

    @property
    def is_plain(self) -> bool:
        """Top-k with no step besides the index's label filter: the index's answer is the selection."""
        return isinstance(self.strategy, TopK) and all(isinstance(s, LabelFilter) for s in self.steps)

    @property
    def needs_labels(self) -> bool:
        """True when a part reads the pool's labels (label strategies, label filters)."""
        return self.strategy.needs_labels or any(s.needs_labels for s in self.steps)

    @property
    def needs_reference(self) -> bool:
        """True when the strategy reads the reference ranking (the plain embedding's nearest examples)."""
        return self.strategy.needs_reference

    @property
    def needs_vectors(self) -> bool:
        """True when choosing needs the candidates' vectors (MMR, near-duplicate removal)."""
        return self.strategy.needs_vectors or any(s.needs_vectors for s in self.steps)

    def fetch_size(self, k: int) -> int:
        """Candidates to fetch for ``k`` examples."""
        return self.fetch_k or max(5 * k, 50)

    def describe(self) -> dict[str, Any]:
        """Strategy, steps and ``fetch_k`` (JSON-ready)."""
        return {"strategy": self.strategy.describe(), "steps": [s.describe() for s in self.steps], "fetch_k": self.fetch_k}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Selection) and (self.strategy, self.steps, self.fetch_k) == (other.strategy, other.steps, other.fetch_k)

    def __hash__(self) -> int:
        return hash((self.strategy, self.steps, self.fetch_k))

    def __repr__(self) -> str:
        extra = (f", steps={list(self.steps)}" if self.steps else "") + (f", fetch_k={self.fetch_k}" if self.fetch_k else "")
        return f"Selection({self.strategy!r}{extra})"


def select(query_vector: np.ndarray, ids: Sequence[int], scores: Sequence[float], vectors: np.ndarray | None,
           labels: Sequence, k: int, selection: Selection, *, texts: Sequence[str] | None = None,
           query: str | None = None, reference: Candidates | None = None,
           reference_vectors: dict[int, np.ndarray] | None = None) -> Candidates:
    """Choose up to ``k`` of the candidates ``ids`` (best first by ``scores``) with ``selection``.

    ``vectors`` are the candidates' unit vectors (row ``j`` for ``ids[j]``; needed by MMR and dedup),
    ``labels``/``texts`` the pool's labels and texts, ``reference`` the reference ranking for a strategy that reads
    it (its ids with their main similarity; the steps filter it as they filter the candidates; steps that read
    vectors read ``reference_vectors``). Returns
    ``(pool id, similarity)`` pairs in the order picked.
    """
    candidates = [(int(i), float(s)) for i, s in zip(ids, scores, strict=True)]
    if selection.needs_vectors and vectors is None and candidates:
        raise ValueError(f"selection {selection!r} needs the candidates' vectors")
    by_id = None if vectors is None else {**(reference_vectors or {}), **{i: vectors[j] for j, (i, _) in enumerate(candidates)}}
    context = SelectionContext(labels, texts, query, query_vector, by_id)
    for step in selection.steps:
        candidates = step.apply(candidates, context)
        reference = None if reference is None else step.apply(reference, context)
    if reference is not None:
        context = SelectionContext(labels, texts, query, query_vector, by_id, reference)
    return selection.strategy.choose(candidates, k, context)


def _reference(index: Any, vector: np.ndarray, reference_vector: np.ndarray, size: int, selection: Selection,
               n: int) -> tuple[Candidates, dict[int, np.ndarray]]:
    """The reference ranking's first ``size`` examples among the first ``n``, each with its main similarity to the
    query, and their vectors."""
    ids, _ = index.query(reference_vector[None], size, labels=selection.allowed_labels)
    ids = ids[0][(ids[0] >= 0) & (ids[0] < n)]
    if not len(ids):
        return [], {}
    vecs = index.get_vectors(ids)
    sims = vecs @ vector
    return [(int(i), float(s)) for i, s in zip(ids, sims, strict=True)], {int(i): v for i, v in zip(ids, vecs, strict=True)}


def select_from_index(index: Any, vector: np.ndarray, k: int, selection: Selection, n: int, labels: Sequence,
                      *, texts: Sequence[str] | None = None, query: str | None = None,
                      reference_vector: np.ndarray | None = None) -> Candidates:
    """:func:`select` over ``index.query`` candidates for one query vector, among the first ``n`` pool examples
    (a snapshot), fetching more while steps leave fewer than ``k``. ``reference_vector``: the query's reference
    vector (for a strategy that ``needs_reference``; ``None``: it gets no reference)."""
    fetch = min(n, selection.fetch_size(k))
    reference, ref_vectors = None, {}
    if selection.needs_reference and reference_vector is not None:
        reference, ref_vectors = _reference(index, vector, reference_vector, min(n, selection.fetch_size(k)), selection, n)
    while True:
        ids, scores = index.query(vector[None], fetch, labels=selection.allowed_labels)
        keep = (ids[0] >= 0) & (ids[0] < n)  # padding, and examples added after the snapshot
        ids_k, scores_k = ids[0][keep], scores[0][keep]
        vectors = index.get_vectors(ids_k) if selection.needs_vectors and len(ids_k) else None
        chosen = select(vector, ids_k, scores_k, vectors, labels, k, selection, texts=texts, query=query, reference=reference,
                        reference_vectors=ref_vectors if selection.needs_vectors else None)
        if len(chosen) >= k or fetch >= n:
            return chosen
        fetch = min(n, fetch * 4)
