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

import dataclasses
import inspect
from collections import defaultdict
from collections.abc import Collection, Sequence
from typing import Any, ClassVar

import numpy as np

from .options import parse_options

__all__ = [
    "MMR",
    "Dedup",
    "ExcludeQuery",
    "LabelCap",
    "LabelCoverage",
    "LabelFilter",
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

Candidates = list[tuple[int, float]]  # (pool id, similarity to the query), best first


@dataclasses.dataclass(frozen=True)
class SelectionContext:
    """What strategies and steps may read besides the candidates: the pool's labels and texts, the query, and
    the candidates' unit vectors (``vectors[id]``; present when a part ``needs_vectors``)."""

    labels: Sequence
    texts: Sequence[str] | None = None
    query: str | None = None
    query_vector: np.ndarray | None = None
    vectors: dict[int, np.ndarray] | None = None

    def vector(self, i: int) -> np.ndarray:
        """The unit vector of candidate ``i``."""
        if self.vectors is None:
            raise ValueError("this selection needs the candidates' vectors, but none were given")
        return self.vectors[i]


class _Part:
    """Shared by strategies and steps: options as keyword arguments, equality and ``repr`` by name and options."""

    name: ClassVar[str] = ""
    needs_vectors: ClassVar[bool] = False

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
_STRATEGIES: dict[str, type[SelectionStrategy]] = {}


def register_selection_strategy(cls: type[SelectionStrategy]) -> type[SelectionStrategy]:
    """Register a :class:`SelectionStrategy` subclass under its ``name`` (usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, SelectionStrategy)):
        raise TypeError(f"register_selection_strategy needs a SelectionStrategy subclass, got {cls!r}")
    if not isinstance(cls.name, str) or not cls.name or not cls.name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"{cls.__name__}.name must be a non-empty word (letters, digits, '-', '_'), got {cls.name!r}")
    known = _STRATEGIES.get(cls.name)
    if known is not None and known.__qualname__ != cls.__qualname__:
        raise ValueError(f"a selection strategy named {cls.name!r} is already registered ({known.__qualname__})")
    _STRATEGIES[cls.name] = cls
    return cls


def registered_selection_strategies() -> tuple[str, ...]:
    """Names of the registered selection strategies."""
    return tuple(_STRATEGIES)


def selection_strategy(name: object, **options: Any) -> SelectionStrategy:
    """The strategy registered under ``name``, built with ``options``."""
    if not isinstance(name, str) or name not in _STRATEGIES:
        raise ValueError(f"unknown selection strategy {name!r}; registered: {registered_selection_strategies()} "
                         "(register your own with icl_fungi.selection.register_selection_strategy)")
    cls = _STRATEGIES[name]
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


# ---------------------------------------------------------------------- steps
class LabelFilter(SelectionStep):
    """Only examples with these labels (compared as strings); the index applies it inside the engine."""

    name = "labels"

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
        if fetch_k is not None:
            fetch_k = _positive_int("fetch_k", fetch_k)
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
           query: str | None = None) -> Candidates:
    """Choose up to ``k`` of the candidates ``ids`` (best first by ``scores``) with ``selection``.

    ``vectors`` are the candidates' unit vectors (row ``j`` for ``ids[j]``; needed by MMR and dedup),
    ``labels``/``texts`` the pool's labels and texts. Returns ``(pool id, similarity)`` pairs in the order picked.
    """
    candidates = [(int(i), float(s)) for i, s in zip(ids, scores, strict=True)]
    if selection.needs_vectors and vectors is None and candidates:
        raise ValueError(f"selection {selection!r} needs the candidates' vectors")
    by_id = None if vectors is None else {i: vectors[j] for j, (i, _) in enumerate(candidates)}
    context = SelectionContext(labels, texts, query, query_vector, by_id)
    for step in selection.steps:
        candidates = step.apply(candidates, context)
    return selection.strategy.choose(candidates, k, context)


def select_from_index(index: Any, vector: np.ndarray, k: int, selection: Selection, n: int, labels: Sequence,
                      *, texts: Sequence[str] | None = None, query: str | None = None) -> Candidates:
    """:func:`select` over ``index.query`` candidates for one query vector, among the first ``n`` pool examples
    (a snapshot), fetching more while steps leave fewer than ``k``."""
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
