"""Combining feature blocks into one vector: each block centred on its pool mean, L2-normalised,
weighted and concatenated (then PCA-reduced by the retriever).

Example:
    >>> import numpy as np
    >>> blocks = {"embedding": np.eye(3, dtype=np.float32), "kl": np.eye(3, dtype=np.float32)[::-1]}
    >>> BlockCombiner(("embedding", "kl"), weights={"kl": 0.5}).fit(blocks).transform(blocks).shape
    (3, 6)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from .parts import SavedPart

__all__ = [
    "AUTO_KL_ANCHORS",
    "DEFAULT_BLOCK_WEIGHTS",
    "DEFAULT_FIT_WEIGHTS",
    "FIT_WEIGHTS",
    "LABEL_FREE_KL_WEIGHT",
    "LABEL_FREE_KL_WEIGHT_CLUSTERED",
    "LABEL_FREE_MIN_PER_ROW",
    "BlockCombiner",
    "auto_kl_weight",
]

logger = logging.getLogger(__name__)

# measured on the dev split with the default label-mean KL head (eval/README.md, "KL head"): kl 0.3 is the best
# P@20 / 1-NN / vote trade-off on the full pool and gains on every metric on small pools; SimCLR 0.3 about neutral
DEFAULT_BLOCK_WEIGHTS = {"embedding": 1.0, "kl": 0.3, "simclr": 0.3}
_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)  # weights tried by the leave-one-out search
FIT_WEIGHTS = (None, "loo", "auto")
DEFAULT_FIT_WEIGHTS = "auto"
# fit_weights="auto": the KL weight from the plain embedding's leave-one-out P@k on the pool, linear between these
# (P@k, weight) anchors and constant outside them. The better the embedding already groups the pool's labels, the
# less label pull it needs: 0.3 where its P@k is 0.78 or more (a full banking-77 pool, about 0.79), 0.5 where it is
# 0.60 or less (5 to 20 examples per label, about 0.50). The low anchor was 1.0 (the best P@k on dev pools,
# eval/results/ablate_quality/dev-weights.md); with the default cover selection the LLM on dev answered better
# at 0.5 in both example orders (eval/README.md, "Quality round 4": mean +1.4 pt), with gold-among-the-k kept.
AUTO_KL_ANCHORS = ((0.60, 0.5), (0.78, 0.3))
# fit_weights="auto" on a pool without labels (no leave-one-out P@k to read): the KL weight from the texts per row of
# the label-free head (k-means prototypes). Under LABEL_FREE_MIN_PER_ROW texts per prototype the prototypes sit on
# single texts and their gradient mostly re-encodes the text: weight 0.3; with more, they carry the pool's clusters:
# 0.5. On banking-77 dev pools with the labels hidden (eval/results/label_free/dev-label-free.md) these were the best
# P@k weights that keep 1-NN: 5 per label (1.5 texts per prototype) 0.3, 20 per label (6) and the full pool (31) 0.5.
LABEL_FREE_KL_WEIGHT = 0.3
LABEL_FREE_KL_WEIGHT_CLUSTERED = 0.5
LABEL_FREE_MIN_PER_ROW = 4.0


def auto_kl_weight(p_at_k: float, anchors: tuple = AUTO_KL_ANCHORS) -> float:
    """The KL weight ``fit_weights="auto"`` gives a pool whose plain embedding has leave-one-out P@k ``p_at_k``: linear
    between the two ``(P@k, weight)`` anchors, constant outside them.

    >>> auto_kl_weight(0.40), auto_kl_weight(0.69), auto_kl_weight(0.90)
    (0.5, 0.4, 0.3)
    """
    (p_lo, w_hi), (p_hi, w_lo) = anchors
    return round(float(np.interp(p_at_k, [p_lo, p_hi], [w_hi, w_lo])), 3)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _loo_precision(v: np.ndarray, lab: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Leave-one-out P@k of unit vectors ``v`` labelled ``lab``, over the rows ``queries``."""
    hits = 0.0
    for start in range(0, len(queries), 500):
        q = queries[start : start + 500]
        sims = v[q] @ v.T
        sims[np.arange(len(q)), q] = -np.inf  # leave the query itself out
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        hits += float((lab[top] == lab[q][:, None]).sum())
    return hits / (len(queries) * k)


class BlockCombiner(SavedPart):
    """Weighted concatenation of feature blocks, optionally centred on the pool's block means.

    Args:
        features: block names, in concatenation order.
        weights: multiplier per block (default :data:`DEFAULT_BLOCK_WEIGHTS`).
        center: subtract each block's pool mean (``fit``) and re-normalise before weighting.
    """

    def __init__(self, features: Sequence[str], *, weights: dict[str, float] | None = None, center: bool = True) -> None:
        self.features = tuple(features)
        given = dict(weights or {})
        unknown = set(given) - set(self.features)
        if unknown:
            raise ValueError(f"block_weights names blocks not in features: {sorted(unknown)}")
        for name, w in given.items():
            if isinstance(w, bool) or not isinstance(w, int | float) or not np.isfinite(w) or w < 0:
                raise ValueError(f"block weight {name!r} must be a finite number >= 0, got {w!r}")
        self.weights = {f: float(given.get(f, DEFAULT_BLOCK_WEIGHTS.get(f, 1.0))) for f in self.features}
        self.fixed = frozenset(given)  # weights the caller chose: auto_weights leaves them alone
        if not any(self.weights.values()):
            raise ValueError("block_weights are all zero")
        self.center = bool(center)
        self.means_: dict[str, np.ndarray] = {}

    def fit(self, blocks: dict[str, np.ndarray]) -> BlockCombiner:
        """Learn each block's pool mean (when centring)."""
        self.means_ = {f: blocks[f].mean(axis=0) for f in self.features} if self.center else {}
        return self

    def transform(self, blocks: dict[str, np.ndarray], weights: dict[str, float] | None = None) -> np.ndarray:
        """The combined vectors (n, sum of block sizes); ``weights`` overrides the fitted ones."""
        weights = self.weights if weights is None else weights
        parts = []
        for f in self.features:
            b = blocks[f]
            if self.center:
                b = _unit(b - self.means_[f])
            parts.append(weights[f] * b)
        return np.concatenate(parts, axis=1)

    def reference_weights(self) -> dict[str, float] | None:
        """Weights that keep the embedding block alone (the reference ranking of a ``"cover"`` selection), or
        ``None`` when there is no embedding block beside other blocks.

        Example:
            >>> BlockCombiner(("embedding", "kl")).reference_weights()
            {'embedding': 1.0, 'kl': 0.0}
        """
        if "embedding" not in self.features or len(self.features) < 2 or not self.weights.get("embedding"):
            return None
        return {f: float(f == "embedding") for f in self.features}

    def choose_weights(self, how: str, blocks: dict[str, np.ndarray], labels: Sequence | None, *,
                       seed: int = 0, texts_per_row: float | None = None) -> list[dict[str, Any]]:
        """Set the weights from the pool itself: ``"loo"`` (:meth:`search_weights`, needs labels) or ``"auto"``
        (:meth:`auto_weights`; ``labels=None``: :meth:`label_free_weights` with ``texts_per_row``, the pool's texts
        per row of the label-free KL head); returns the trials made."""
        if labels is None and how in FIT_WEIGHTS:
            if how == "loo":
                raise ValueError("fit_weights='loo' searches the weights by the pool's labels, and the pool has none: "
                                 "use fit_weights='auto' or None")
            return [self.label_free_weights(texts_per_row)]
        if how == "loo":
            return self.search_weights(blocks, labels, seed=seed)
        if how == "auto":
            return [self.auto_weights(blocks, labels, seed=seed)]
        raise ValueError(f"fit_weights must be one of {FIT_WEIGHTS}, got {how!r}")

    def label_free_weights(self, texts_per_row: float | None = None) -> dict[str, Any]:
        """``fit_weights="auto"`` on a pool without labels (unless the caller gave the KL weight):
        :data:`LABEL_FREE_KL_WEIGHT_CLUSTERED` with at least :data:`LABEL_FREE_MIN_PER_ROW` pool texts per row of the
        KL head, else :data:`LABEL_FREE_KL_WEIGHT`; returns ``{"weights", "loo_p@k": None, "k": None, "rule": "label-free",
        "texts_per_row"}``.

        Example:
            >>> BlockCombiner(("embedding", "kl")).label_free_weights(31.3)["weights"]["kl"]
            0.5
        """
        if "kl" in self.features and "kl" not in self.fixed:
            clustered = texts_per_row is not None and texts_per_row >= LABEL_FREE_MIN_PER_ROW
            self.weights["kl"] = LABEL_FREE_KL_WEIGHT_CLUSTERED if clustered else LABEL_FREE_KL_WEIGHT
        return {"weights": dict(self.weights), "loo_p@k": None, "k": None, "rule": "label-free", "texts_per_row": texts_per_row}

    def auto_weights(self, blocks: dict[str, np.ndarray], labels: Sequence, *, k: int = 20, n_queries: int = 2000,
                     seed: int = 0) -> dict[str, Any]:
        """Set the KL weight by :data:`AUTO_KL_ANCHORS` from the plain embedding's leave-one-out P@k on the pool
        (``k = min(k, median examples per label - 1)``, on a seeded sample of ``n_queries`` texts); returns
        ``{"weights", "loo_p@k", "k"}``. Without an embedding or a KL block, with a KL weight the caller gave, or
        with under 3 texts, nothing changes."""
        n = len(labels)
        if "kl" not in self.features or "embedding" not in self.features or "kl" in self.fixed or n < 3:
            return {"weights": dict(self.weights), "loo_p@k": None, "k": None}
        lab = np.array([str(x) for x in labels])
        per_label = float(np.median(np.unique(lab, return_counts=True)[1]))
        kk = int(max(1, min(k, per_label - 1, n - 1)))
        only = {f: float(f == "embedding") for f in self.features}
        queries = np.sort(np.random.default_rng(seed).choice(n, size=min(n, n_queries), replace=False))
        p = _loo_precision(_unit(self.transform(blocks, only).astype(np.float32)), lab, queries, kk)
        self.weights["kl"] = auto_kl_weight(p)
        logger.info("automatic block weights: %s (the embedding's leave-one-out P@%d on the pool: %.4f)", self.weights, kk, p)
        return {"weights": dict(self.weights), "loo_p@k": p, "k": kk}

    def search_weights(self, blocks: dict[str, np.ndarray], labels: Sequence, *, k: int = 20, n_queries: int = 2000,
                       seed: int = 0) -> list[dict[str, Any]]:
        """Set the gradient blocks' weights to maximise leave-one-out P@k on the labelled pool (coordinate
        search over a grid, two sweeps); returns every trial ``{"weights", "loo_p@k"}``."""
        grads = [f for f in self.features if f != "embedding"]
        n = len(labels)
        if not grads or n < 3:
            return [{"weights": dict(self.weights), "loo_p@k": None}]
        lab = np.array([str(x) for x in labels])
        queries = np.sort(np.random.default_rng(seed).choice(n, size=min(n, n_queries), replace=False))
        kk = min(k, n - 1)

        def score(w: dict[str, float]) -> float:
            return _loo_precision(_unit(self.transform(blocks, w).astype(np.float32)), lab, queries, kk)

        weights = dict(self.weights)
        best = score(weights)
        trials = [{"weights": dict(weights), "loo_p@k": best}]
        for _ in range(2):
            changed = False
            for f in grads:
                for g in _GRID:
                    if g == weights[f]:
                        continue
                    trial = {**weights, f: g}
                    sc = score(trial)
                    trials.append({"weights": trial, "loo_p@k": sc})
                    if sc > best + 1e-9:
                        best, weights, changed = sc, trial, True
            if not changed:
                break
        logger.info("leave-one-out block weights: %s (P@%d %.4f)", weights, kk, best)
        self.weights = weights
        return trials

    # ------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        """Blocks, weights and centring (JSON-ready)."""
        return {"features": list(self.features), "weights": self.weights, "center": self.center}

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The pool mean of each block (when centring), as ``mean_<block>``."""
        return {f"mean_{f}": m for f, m in self.means_.items()}

    @classmethod
    def from_state(cls, config: dict[str, Any], arrays: dict[str, np.ndarray], *, features: Sequence[str],
                   dims: dict[str, int]) -> BlockCombiner:
        """A combiner from its config and arrays; it must combine ``features`` with block sizes ``dims``."""
        if config.get("features") != list(features) or not isinstance(config.get("weights"), dict) \
                or set(config["weights"]) != set(features) or not isinstance(config.get("center"), bool):
            raise ValueError(f"block combiner config does not match the features {list(features)}")
        comb = cls(features, weights=config["weights"], center=config["center"])
        if comb.center:
            for f in features:
                m = arrays.get(f"mean_{f}")
                if m is None or m.shape != (dims[f],) or m.dtype.kind != "f" or not np.isfinite(m).all():
                    raise ValueError(f"block mean of {f!r} is missing or not a finite ({dims[f]},) array")
                comb.means_[f] = m
        elif arrays:
            raise ValueError("an uncentred combiner holds block means")
        return comb
