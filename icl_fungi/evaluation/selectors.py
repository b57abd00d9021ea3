"""Example selectors of an evaluation run, from ``icl-fungi eval --selectors`` specs.

A spec is a name, optionally ``=BASE;key=value;...``. BASE is ``fungi`` (FUNGI features),
``embedding`` (the plain-embedding baseline), ``bm25`` (lexical BM25) or ``random``. Keys: ``model`` (the
encoder: a sentence-transformers name or folder), any :class:`FeatureConfig` field
(``kl_head=neighbors``, ``features=embedding+kl``), ``w.<block>`` block weights (``w.kl=0.5``),
``fit_weights``, the :class:`Selection` options (``selection=label_coverage``, ``n_labels``,
``max_per_label``, ``mmr_lambda``, ``fetch_k``, ``exclude_query``, ``dedup_threshold``,
``allowed_labels=a|b``) and
``order`` (as in ``build_prompt``). Without ``selection``, a selector uses its retriever's
``default_selection`` (what a user's ``retrieve`` call gets).

Example:
    >>> spec = parse_selector("cov=fungi;selection=label_coverage;n_labels=4;w.kl=0.5")
    >>> spec.base, spec.selection.strategy, spec.weights
    ('fungi', LabelCoverage(n_labels=4), {'kl': 0.5})
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from ..combine import DEFAULT_FIT_WEIGHTS, FIT_WEIGHTS
from ..features import FeatureConfig
from ..options import parse_value
from ..prompt import ORDERS
from ..selection import Selection

__all__ = ["BASES", "SelectorSpec", "parse_selector"]

BASES = ("fungi", "embedding", "bm25", "random")
FIXED = ("bm25", "random")  # bases that take only 'order'
_NAME = re.compile(r"[A-Za-z0-9_.+-]+")
_FEATURE_KEYS = {f.name for f in dataclasses.fields(FeatureConfig)}


@dataclasses.dataclass(frozen=True)
class SelectorSpec:
    """One selector: its name, base, feature-config overrides, block weights, selection and example order."""

    name: str
    base: str
    features: dict[str, Any] = dataclasses.field(default_factory=dict)
    weights: dict[str, float] = dataclasses.field(default_factory=dict)
    fit_weights: str | None = DEFAULT_FIT_WEIGHTS
    selection: Selection | None = None  # None: the retriever's default_selection
    order: str = "similar_last"
    model: str | None = None

    def retriever_key(self) -> str:
        """Selectors with the same key share one retriever."""
        return json.dumps({"base": self.base, "features": self.features, "weights": self.weights, "fit": self.fit_weights,
                           "model": self.model}, sort_keys=True, default=str)

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (for the report)."""
        return {"base": self.base, "model": self.model, "features": self.features, "weights": self.weights,
                "fit_weights": self.fit_weights,
                "selection": None if self.selection is None else self.selection.describe(), "order": self.order}


def parse_selector(text: str) -> SelectorSpec:
    """A :class:`SelectorSpec` from ``NAME`` or ``NAME=BASE;key=value;...`` (see the module docstring)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty selector spec")
    name, _, rest = text.strip().partition("=")
    name = name.strip()
    if not _NAME.fullmatch(name):
        raise ValueError(f"selector name {name!r} must be letters, digits and '_.+-'")
    parts = [p.strip() for p in rest.split(";") if p.strip()] if rest else []
    base = parts.pop(0) if parts else name
    if base not in BASES:
        raise ValueError(f"selector {name!r}: base must be one of {BASES}, got {base!r}")
    features: dict[str, Any] = {}
    weights: dict[str, float] = {}
    selection: dict[str, Any] = {}
    fit_weights, fit_given, order, model = DEFAULT_FIT_WEIGHTS, False, "similar_last", None
    for part in parts:
        key, eq, raw = part.partition("=")
        key = key.strip()
        if not eq:
            raise ValueError(f"selector {name!r}: {part!r} is not key=value")
        value = parse_value(raw)
        if key.startswith("w."):
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ValueError(f"selector {name!r}: weight {key} must be a number, got {raw!r}")
            weights[key[2:]] = float(value)
        elif key == "selection":
            selection["strategy"] = value
        elif key == "allowed_labels":
            selection[key] = tuple(x for x in raw.strip().split("|") if x)
        elif key == "order":
            if value not in ORDERS:
                raise ValueError(f"selector {name!r}: order must be one of {ORDERS}, got {raw!r}")
            order = value
        elif key == "fit_weights":
            if value not in FIT_WEIGHTS:
                raise ValueError(f"selector {name!r}: fit_weights must be one of {FIT_WEIGHTS}, got {raw!r}")
            fit_weights, fit_given = value, True
        elif key == "features":
            features["features"] = tuple(f for f in str(raw).split("+") if f)
        elif key == "model":
            model = raw.strip()
        elif key in _FEATURE_KEYS:
            features[key] = value
        else:  # a Selection option (fetch_k, exclude_query, dedup_threshold) or the strategy's; Selection checks it
            selection[key] = value
    if base in FIXED and (features or weights or selection or fit_given or model):
        raise ValueError(f"selector {name!r}: the {base} selector takes only 'order'")
    try:
        if base not in FIXED:
            FeatureConfig(**features)  # checks the values now, not after a build
        chosen = Selection(**selection) if selection else None
    except (TypeError, ValueError) as err:
        raise ValueError(f"selector {name!r}: {err}") from None
    return SelectorSpec(name, base, features, weights, fit_weights, chosen, order, model)
