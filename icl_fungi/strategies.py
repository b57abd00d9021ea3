"""Selection strategies and steps: the parts a :class:`~icl_fungi.selection.Selection` is made of.

A strategy (:class:`SelectionStrategy`) chooses up to ``k`` of the candidates; a step (:class:`SelectionStep`)
filters them first. Strategies are registered by name (:func:`register_selection_strategy`), so
``Selection("name", **options)`` and the command line's ``--selection "name;key=value"`` find them.

Example:
    >>> ctx = SelectionContext(labels=["a", "a", "b"])
    >>> LabelCap(max_per_label=1).choose([(0, 0.9), (1, 0.8), (2, 0.7)], k=3, context=ctx)
    [(0, 0.9), (2, 0.7)]
"""

from __future__ import annotations

import dataclasses
import inspect
from collections import defaultdict
from collections.abc import Collection, Sequence
from typing import Any, ClassVar

import numpy as np

from .registry import Registry

__all__ = [
    "MMR",
    "Candidates",
    "Cover",
    "Dedup",
    "ExcludeQuery",
    "LabelCap",
    "LabelCoverage",
    "LabelFilter",
    "RankFusion",
    "SelectionContext",
    "SelectionStep",
    "SelectionStrategy",
    "TopK",
    "register_selection_strategy",
    "registered_selection_strategies",
    "selection_strategy",
]

Candidates = list[tuple[int, float]]  # (pool id, similarity to the query), best first


@dataclasses.dataclass(frozen=True)
class SelectionContext:
    """What strategies and steps may read besides the candidates: the pool's labels and texts, the query, the
    candidates' unit vectors (``vectors[id]``; present when a part ``needs_vectors``) and, for a part that
    ``needs_reference``, the pool's nearest examples by the reference similarity (the encoder's plain embedding),
    in that order, each with its main similarity to the query."""

    labels: Sequence
    texts: Sequence[str] | None = None
    query: str | None = None
    query_vector: np.ndarray | None = None
    vectors: dict[int, np.ndarray] | None = None
    reference: Candidates | None = None  # the reference ranking (the plain embedding's), scored by the main similarity

    def vector(self, i: int) -> np.ndarray:
        """The unit vector of candidate ``i``."""
        if self.vectors is None:
            raise ValueError("this selection needs the candidates' vectors, but none were given")
        return self.vectors[i]


class _Part:
    """Shared by strategies and steps: options as keyword arguments, equality and ``repr`` by name and options."""

    name: ClassVar[str] = ""
    needs_vectors: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = False  # reads context.labels: refused on a pool without labels
    needs_reference: ClassVar[bool] = False  # reads context.reference (the plain embedding's nearest examples)

    def options(self) -> dict[str, Any]:
        """The part's options (JSON-ready), as passed to its constructor."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Name and options (JSON-ready)."""
        return {"name": self.name, **self.options()}

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.options() == self.options()

    def __hash__(self) -> int:
        return hash((type(self).__qualname__, tuple(sorted(self.options().items(), key=lambda kv: kv[0]))))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.options().items())})"


class SelectionStrategy(_Part):
    """Chooses up to ``k`` of the candidates. Subclass it: set ``name`` (and ``needs_vectors`` when
    :meth:`choose` reads ``context.vector``), take options as keyword arguments (returned by
    :meth:`options`), implement :meth:`choose`, and :func:`register_selection_strategy` the class."""

    def choose(self, candidates: Candidates, k: int, context: SelectionContext) -> Candidates:
        """Up to ``k`` ``(id, score)`` pairs, in the order chosen."""
        raise NotImplementedError


class SelectionStep(_Part):
    """A filter applied to the candidates before the strategy (subclass it and implement :meth:`apply`).
    ``index_labels``, when not ``None``, is handed to the index so it filters inside the engine."""

    index_labels: tuple[str, ...] | None = None

    def apply(self, candidates: Candidates, context: SelectionContext) -> Candidates:
        """The candidates kept, in their order."""
        raise NotImplementedError


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


# ----------------------------------------------------------------- strategies
_STRATEGIES = Registry("selection strategy", "name", base=SelectionStrategy,
                       hint="register your own with icl_fungi.selection.register_selection_strategy")


def register_selection_strategy(cls: type[SelectionStrategy]) -> type[SelectionStrategy]:
    """Register a :class:`SelectionStrategy` subclass under its ``name`` (usable as a decorator)."""
    return _STRATEGIES.register(cls)


def registered_selection_strategies() -> tuple[str, ...]:
    """Names of the registered selection strategies."""
    return _STRATEGIES.names()


def selection_strategy(name: object, **options: Any) -> SelectionStrategy:
    """The strategy registered under ``name``, built with ``options``."""
    cls = _STRATEGIES.get(name)
    params = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - set(params))
        if unknown:
            raise ValueError(f"unknown option {unknown[0]!r} for selection strategy {name!r} (its options: {sorted(params)})")
    missing = [p for p, v in params.items() if v.default is v.empty and v.kind is v.POSITIONAL_OR_KEYWORD and p not in options]
    if missing:
        raise ValueError(f"strategy {name!r} needs {missing[0]}")
    return cls(**options)


@register_selection_strategy
class TopK(SelectionStrategy):
    """The ``k`` most similar candidates."""

    name = "topk"

    def choose(self, candidates: Candidates, k: int, context: SelectionContext) -> Candidates:
        return candidates[:k]


@register_selection_strategy
class MMR(SelectionStrategy):
    """Maximal marginal relevance: ``mmr_lambda * sim(query, x) - (1 - mmr_lambda) * max sim(x, chosen)``."""

    name = "mmr"
    needs_vectors = True

    def __init__(self, mmr_lambda: float = 0.5) -> None:
        if isinstance(mmr_lambda, bool) or not isinstance(mmr_lambda, int | float) or not 0.0 <= mmr_lambda <= 1.0:
            raise ValueError(f"mmr_lambda must be in [0, 1], got {mmr_lambda!r}")
        self.mmr_lambda = float(mmr_lambda)

    def options(self) -> dict[str, Any]:
        return {"mmr_lambda": self.mmr_lambda}

    def choose(self, candidates: Candidates, k: int, context: SelectionContext) -> Candidates:
        if not candidates:
            return []
        vecs = np.stack([context.vector(i) for i, _ in candidates])
        rel = np.array([s for _, s in candidates])
        picked: list[int] = []
        max_sim = np.full(len(candidates), -np.inf)
        for _ in range(min(k, len(candidates))):
            penalty = np.where(np.isfinite(max_sim), max_sim, 0.0)
            gain = self.mmr_lambda * rel - (1 - self.mmr_lambda) * penalty
            gain[picked] = -np.inf
            j = int(np.argmax(gain))
            picked.append(j)
            max_sim = np.maximum(max_sim, vecs @ vecs[j])
        return [candidates[j] for j in picked]


@register_selection_strategy
class LabelCap(SelectionStrategy):
    """By similarity, at most ``max_per_label`` examples of each label."""

    name = "label_cap"
    needs_labels = True

    def __init__(self, max_per_label: int) -> None:
        self.max_per_label = _positive_int("max_per_label", max_per_label)

    def options(self) -> dict[str, Any]:
        return {"max_per_label": self.max_per_label}

    def choose(self, candidates: Candidates, k: int, context: SelectionContext) -> Candidates:
        per_label: dict = defaultdict(int)
        out = []
        for i, s in candidates:
            if per_label[context.labels[i]] < self.max_per_label:
                per_label[context.labels[i]] += 1
                out.append((i, s))
                if len(out) == k:
                    break
        return out


@register_selection_strategy
class LabelCoverage(SelectionStrategy):
    """First the best example of each of the ``n_labels`` labels with the largest summed similarity among the
    candidates, then the rest by similarity."""

    name = "label_coverage"
    needs_labels = True

    def __init__(self, n_labels: int) -> None:
        self.n_labels = _positive_int("n_labels", n_labels)

    def options(self) -> dict[str, Any]:
        return {"n_labels": self.n_labels}

    def choose(self, candidates: Candidates, k: int, context: SelectionContext) -> Candidates:
        mass: dict = defaultdict(float)
        best: dict = {}
        for i, s in candidates:
            mass[context.labels[i]] += max(s, 0.0)
            best.setdefault(context.labels[i], (i, s))
        top_labels = sorted(mass, key=lambda lab: (-mass[lab], str(lab)))[: self.n_labels]
        out = [best[lab] for lab in top_labels][:k]
        chosen = {i for i, _ in out}
        out.extend((i, s) for i, s in candidates if i not in chosen)
        return out[:k]


@register_selection_strategy
class Cover(SelectionStrategy):
    """The top ``k`` by the main similarity, with every label among the reference ranking's first ``reference_k``
    examples given a slot: a missing label's most similar example replaces the least similar example of the label
    shown most often (while one is shown at least twice). The result is sorted by the main similarity.

    With FUNGI features the reference is the plain embedding, so the prompt keeps FUNGI's nearest, agreeing examples
    and the labels the embedding's own top ``k`` would show (a reader can only answer a label it is shown). Without
    labels or a reference it is top-k.

    Args:
        reference_k: how many of the reference's nearest examples lend their labels (default: ``k``).
    """

    name = "cover"
    needs_reference = True

    def __init__(self, reference_k: int | None = None) -> None:
        self.reference_k = None if reference_k is None else _positive_int("reference_k", reference_k)

    def options(self) -> dict[str, Any]:
        return {"reference_k": self.reference_k}

    def choose(self, candidates: Candidates, k: int, context: SelectionContext) -> Candidates:
        chosen = list(candidates[:k])
        reference = context.reference or []
        if not reference or not chosen or context.labels is None:
            return chosen
        labels = context.labels
        for label in dict.fromkeys(labels[i] for i, _ in reference[: self.reference_k or k]):
            shown = defaultdict(list)
            for pos, (i, s) in enumerate(chosen):
                shown[labels[i]].append((s, pos))
            if label in shown:
                continue
            donor = max(shown, key=lambda lab: (len(shown[lab]), -max(shown[lab])[0]))
            if len(shown[donor]) < 2:
                break
            new = next((c for c in (*candidates, *reference) if labels[c[0]] == label), None)
            if new is None:
                continue
            chosen[min(shown[donor], key=lambda t: (t[0], -t[1]))[1]] = new  # its least similar, the later on a tie
        chosen.sort(key=lambda c: (-c[1], c[0]))
        return chosen


@register_selection_strategy
class RankFusion(SelectionStrategy):
    """Reciprocal-rank fusion of the main ranking and the reference ranking (the plain embedding's): an example's
    score is ``1 / (c + its main rank) + reference_weight / (c + its reference rank)`` (ranks from 1, a list it is
    not in adds nothing); the ``k`` best, sorted by the main similarity. Without a reference it is top-k.

    Example:
        >>> ctx = SelectionContext(labels=["a", "b", "c"], reference=[(2, 0.5), (1, 0.7)])
        >>> RankFusion().choose([(0, 0.9), (1, 0.7), (2, 0.5)], k=2, context=ctx)
        [(1, 0.7), (2, 0.5)]
    """

    name = "rrf"
    needs_reference = True

    def __init__(self, c: float = 60.0, reference_weight: float = 1.0) -> None:
        for key, value in (("c", c), ("reference_weight", reference_weight)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"{key} must be a number >= 0, got {value!r}")
        self.c, self.reference_weight = float(c), float(reference_weight)

    def options(self) -> dict[str, Any]:
        return {"c": self.c, "reference_weight": self.reference_weight}

    def choose(self, candidates: Candidates, k: int, context: SelectionContext) -> Candidates:
        if not context.reference:
            return list(candidates[:k])
        fused: dict[int, float] = defaultdict(float)
        main: dict[int, float] = {}
        for weight, ranking in ((1.0, candidates), (self.reference_weight, context.reference)):
            for rank, (i, s) in enumerate(ranking, start=1):
                fused[i] += weight / (self.c + rank)
                main.setdefault(i, s)
        best = sorted(fused, key=lambda i: (-fused[i], i))[:k]
        return sorted(((i, main[i]) for i in best), key=lambda c: (-c[1], c[0]))


# ---------------------------------------------------------------------- steps
class LabelFilter(SelectionStep):
    """Only examples with these labels (compared as strings); the index applies it inside the engine."""

    name = "labels"
    needs_labels = True

    def __init__(self, labels: Collection[Any]) -> None:
        if isinstance(labels, str) or not hasattr(labels, "__iter__"):
            raise TypeError("allowed_labels must be a collection of labels, e.g. ('card_arrival',), not a string")
        self.index_labels = tuple(str(x) for x in labels)
        if not self.index_labels:
            raise ValueError("allowed_labels is empty: no example could be chosen")

    def options(self) -> dict[str, Any]:
        return {"labels": list(self.index_labels)}

    def apply(self, candidates: Candidates, context: SelectionContext) -> Candidates:
        allowed = set(self.index_labels)
        return [(i, s) for i, s in candidates if str(context.labels[i]) in allowed]


def _norm_text(text: str) -> str:
    return " ".join(text.split()).casefold()


class ExcludeQuery(SelectionStep):
    """Drop pool examples whose text equals the query (case and whitespace ignored): needed when queries come
    from the pool."""

    name = "exclude_query"

    def apply(self, candidates: Candidates, context: SelectionContext) -> Candidates:
        if context.texts is None or context.query is None:
            raise ValueError("exclude_query needs the pool texts and the query")
        q = _norm_text(context.query)
        return [(i, s) for i, s in candidates if _norm_text(context.texts[i]) != q]


class Dedup(SelectionStep):
    """Drop a candidate whose cosine similarity to an already kept one is at least ``threshold`` (near-duplicates;
    1.0 drops exact duplicates only)."""

    name = "dedup"
    needs_vectors = True

    def __init__(self, threshold: float) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not -1.0 <= threshold <= 1.0:
            raise ValueError(f"dedup_threshold must be in [-1, 1], got {threshold!r}")
        self.threshold = float(threshold)

    def options(self) -> dict[str, Any]:
        return {"threshold": self.threshold}

    def apply(self, candidates: Candidates, context: SelectionContext) -> Candidates:
        kept: Candidates = []
        for i, s in candidates:
            v = context.vector(i)
            if kept and max(float(context.vector(j) @ v) for j, _ in kept) >= self.threshold - 1e-6:
                continue
            kept.append((i, s))
        return kept
