"""The example pool: texts (what retrieval keys on) and, per text, an optional label and an optional output,
published by the retriever as one immutable value so a reader always sees one consistent pool.

A pool has labels for every example or for none (``labels is None``), and likewise outputs: a classification
pool is (text, label), a pair pool (input, output), a pool of plain texts has neither.

Example:
    >>> pool = ExamplePool.checked(["2+2?", "capital of France?"], outputs=["4", "Paris"])
    >>> pool.has_labels, pool.has_outputs, pool.example(1, 0.9)
    (False, True, RetrievedExample(text='capital of France?', label=None, score=0.9, index=1, output='Paris'))
    >>> pool.extended(ExamplePool.checked(["3+3?"], labels=["math"], outputs=["6"]))
    Traceback (most recent call last):
    ValueError: the pool has no labels, but labels were given for the new examples; add them without labels
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from collections.abc import Sequence

from .data import Label, check_labels, check_outputs, check_texts, sorted_labels

__all__ = ["ExamplePool", "RetrievedExample"]


@dataclasses.dataclass(frozen=True)
class RetrievedExample:
    """One retrieved pool example: ``index`` is its position in the pool; ``label`` is ``None`` in a pool without
    labels, ``output`` (what the input maps to, in a pool of pairs) ``None`` in a pool without outputs."""

    text: str
    label: Label | None
    score: float
    index: int
    output: str | None = None


def _join(a: list | None, b: list | None) -> list | None:
    return None if a is None or b is None else a + b


@dataclasses.dataclass(frozen=True)
class ExamplePool:
    """Texts, with labels (``None``: the pool has none) and outputs (``None``: the pool has none), one per text.

    Build one with :meth:`checked`, which validates everything; the lists are never changed in place.
    """

    texts: list[str] = dataclasses.field(default_factory=list)
    labels: list[Label] | None = None
    outputs: list[str] | None = None

    @classmethod
    def checked(cls, texts: Sequence[str], labels: Sequence[Label] | None = None, outputs: Sequence[str] | None = None,
                *, what: str = "text") -> ExamplePool:
        """A validated pool: non-blank ``str`` texts; ``labels`` ``None`` or one ``str``/``int`` per text;
        ``outputs`` ``None`` or one non-blank ``str`` per text (kept byte for byte)."""
        texts = check_texts(texts, what=what)
        return cls(texts, None if labels is None else check_labels(labels, len(texts)),
                   None if outputs is None else check_outputs(outputs, len(texts)))

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def has_labels(self) -> bool:
        """True when every example has a label (False: none has)."""
        return self.labels is not None

    @property
    def has_outputs(self) -> bool:
        """True when every example has an output (False: none has)."""
        return self.outputs is not None

    def label(self, i: int) -> Label | None:
        """Example ``i``'s label, or ``None`` in a pool without labels."""
        return None if self.labels is None else self.labels[i]

    def output(self, i: int) -> str | None:
        """Example ``i``'s output, or ``None`` in a pool without outputs."""
        return None if self.outputs is None else self.outputs[i]

    def example(self, i: int, score: float) -> RetrievedExample:
        """Example ``i`` as a :class:`RetrievedExample` with ``score``."""
        return RetrievedExample(self.texts[i], self.label(i), float(score), int(i), self.output(i))

    def label_list(self) -> Sequence[Label | None]:
        """One label per example (``None`` each in a pool without labels), e.g. for a selection's context;
        the pool's own list when it has labels (not to be changed)."""
        return self.labels if self.labels is not None else [None] * len(self.texts)

    def index_labels(self, rows: Sequence[int] | None = None) -> list[str]:
        """The labels an index stores for filtering (as strings; ``""`` in a pool without labels), of ``rows``
        (default: every example)."""
        rows = range(len(self.texts)) if rows is None else rows
        return [str(self.labels[i]) for i in rows] if self.labels is not None else [""] * len(rows)

    @functools.cached_property
    def label_set(self) -> tuple[Label, ...]:
        """The distinct labels, sorted as prompts list them (empty in a pool without labels); computed once per pool,
        which is never changed in place."""
        return tuple(sorted_labels(self.labels)) if self.labels is not None else ()

    def label_counts(self) -> dict[Label, int]:
        """Examples per label (empty in a pool without labels)."""
        return dict(Counter(self.labels)) if self.labels is not None else {}

    def check_same_kind(self, new: ExamplePool) -> None:
        """Refuse adding ``new`` examples unless they have labels exactly when the pool has, and outputs exactly
        when the pool has (``ValueError`` naming what differs)."""
        for what, mine, theirs in (("labels", self.has_labels, new.has_labels), ("outputs", self.has_outputs, new.has_outputs)):
            if mine and not theirs:
                raise ValueError(f"the pool has {what}: give {what} for the new examples too")
            if theirs and not mine:
                raise ValueError(f"the pool has no {what}, but {what} were given for the new examples; add them without {what}")

    def extended(self, new: ExamplePool) -> ExamplePool:
        """This pool followed by ``new`` (a new value; see :meth:`check_same_kind`)."""
        self.check_same_kind(new)
        return ExamplePool(self.texts + new.texts, _join(self.labels, new.labels), _join(self.outputs, new.outputs))


class PoolMethods:
    """The pool's read-only views (texts, labels, outputs, label set and counts) for a class that keeps its
    :class:`ExamplePool` in ``_pool`` (:class:`~icl_fungi.ICLRetriever`): the pool's shape here, retrieval there."""

    _pool: ExamplePool

    @property
    def texts(self) -> list[str]:
        """Pool texts (a copy)."""
        return list(self._pool.texts)

    @property
    def labels(self) -> list[Label] | None:
        """Pool labels (a copy); ``None`` for a pool without labels."""
        return None if (labels := self._pool.labels) is None else list(labels)

    @property
    def outputs(self) -> list[str] | None:
        """Pool outputs (a copy); ``None`` for a pool without outputs."""
        return None if (outputs := self._pool.outputs) is None else list(outputs)

    @property
    def has_labels(self) -> bool:
        """True when the pool's examples have labels."""
        return self._pool.has_labels

    @property
    def has_outputs(self) -> bool:
        """True when the pool's examples have outputs (a pool of pairs)."""
        return self._pool.has_outputs

    def label_set(self) -> list[Label]:
        """The pool's distinct labels, sorted as prompts list them (empty for a pool without labels)."""
        return list(self._pool.label_set)

    def label_counts(self) -> dict[Label, int]:
        """Examples per label in the pool (empty for a pool without labels)."""
        return self._pool.label_counts()
