"""What an evaluation scores: a label (classification) or a free-text output (a pool of input -> output pairs).

A task turns the LLM's reply into a prediction and says whether it is right. :class:`LabelTask` maps the
reply to one of the labels (:func:`~icl_fungi.evaluation.metrics.parse_label`); :class:`OutputTask` reads the
reply's first line as the output and scores it by exact match after normalisation (case, punctuation,
articles and spacing ignored, as in SQuAD) and by token F1.

Example:
    >>> OutputTask().score("The card arrives in 3 days.", "the card arrives in 3 days")["correct"]
    True
    >>> round(token_f1("card arrives in 3 days", "the card arrives in 5 days"), 2)
    0.8
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

from ..pool import RetrievedExample
from .metrics import parse_label

__all__ = ["LabelTask", "OutputTask", "normalize_answer", "token_f1"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces: the form exact match and token F1 compare.

    >>> normalize_answer("  The Card, arrives!  ")
    'card arrives'
    """
    return " ".join(_ARTICLES.sub(" ", str(text).lower().translate(_PUNCT)).split())


def token_f1(prediction: str, gold: str) -> float:
    """F1 of the normalised tokens of ``prediction`` against ``gold`` (1.0 when both are empty)."""
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


class LabelTask:
    """Classification: the reply names one of ``labels`` (anything else is invalid)."""

    kind = "labels"
    column = "label_column"  # the report's name for the data column the task reads
    max_tokens = 16  # reply length cap: a label
    templates: ClassVar[dict[str, str]] = {"completion": "classification-completion", "chat": "banking77-chat"}

    def __init__(self, labels: Sequence[Any]) -> None:
        self.labels = list(labels)

    def score(self, reply: str, gold: Any) -> dict[str, Any]:
        """The record fields of one reply: ``prediction``, ``valid`` and ``correct``."""
        pred = parse_label(reply, self.labels)
        return {"prediction": pred, "valid": pred is not None, "correct": pred == gold}

    def key(self, value: Any) -> Any:
        """The form two answers are compared in (a label as it is)."""
        return value

    def fit(self, retriever: Any, texts: Sequence[str], labels: Sequence[Any]) -> Any:
        """Fit ``retriever`` on the pool: texts with their labels."""
        return retriever.fit(texts, labels)

    def example(self, text: str, label: Any, score: float, index: int) -> RetrievedExample:
        """A pool example as a prompt shows it."""
        return RetrievedExample(text, label, score, index)

    def pool_values(self, retriever: Any) -> list | None:
        """What a saved retriever holds beside its texts, to compare with the pool (its labels)."""
        return retriever.labels


class OutputTask:
    """Free-text outputs: the reply's first line is the prediction; exact match after :func:`normalize_answer`
    decides ``correct``, :func:`token_f1` gives partial credit."""

    kind = "outputs"
    column = "output_column"
    max_tokens = 128  # reply length cap: a sentence or two
    templates: ClassVar[dict[str, str]] = {"completion": "pairs-completion", "chat": "pairs-chat"}
    labels: ClassVar[tuple] = ()  # no label set: replies are not checked against one while they arrive

    def score(self, reply: str, gold: str) -> dict[str, Any]:
        """The record fields of one reply: ``prediction``, ``valid`` (a non-empty answer), ``correct`` and
        ``token_f1``."""
        lines = [line.strip() for line in str(reply).splitlines() if line.strip()]
        pred = lines[0] if lines else ""
        return {"prediction": pred, "valid": bool(normalize_answer(pred)),
                "correct": normalize_answer(pred) == normalize_answer(gold), "token_f1": token_f1(pred, gold)}

    def key(self, value: Any) -> Any:
        """The form two answers are compared in (:func:`normalize_answer`; ``None`` stays ``None``)."""
        return None if value is None else normalize_answer(value)

    def fit(self, retriever: Any, texts: Sequence[str], outputs: Sequence[str]) -> Any:
        """Fit ``retriever`` on the inputs and their outputs, without labels (the label-free features)."""
        return retriever.fit(texts, None, outputs)

    def example(self, text: str, output: str, score: float, index: int) -> RetrievedExample:
        """A pool pair as a prompt shows it."""
        return RetrievedExample(text, None, score, index, output=output)

    def pool_values(self, retriever: Any) -> list | None:
        """What a saved retriever holds beside its texts, to compare with the pool (its outputs)."""
        return retriever.outputs
