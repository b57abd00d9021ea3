"""Scoring an evaluation run: one record per (selector, query), metrics per selector, paired comparisons.

Example:
    >>> recs = [{"selector": "a", "correct": True}, {"selector": "b", "correct": False}]
    >>> paired(recs, ["a", "b"])["a_vs_b"]["difference"]
    1.0
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .llm import LLMResponse
from .metrics import macro_f1, paired_comparison, retrieval_metrics, wilson_interval
from .tasks import LabelTask, OutputTask

__all__ = ["Chosen", "make_records", "paired", "retriever_config", "selector_metrics"]

Chosen = list[list[tuple[int, float]]]  # per query, the pool examples shown (index, score), most similar first


def make_records(names: Sequence[str], queries: Any, chosen: Mapping[str, Chosen], responses: Mapping[tuple[str, int], LLMResponse],
                 task: LabelTask | OutputTask) -> list[dict]:
    """One record per selector and query (selector by selector, queries in their sampled order).

    ``queries`` has ``index``, ``texts`` and ``gold`` lists; ``responses`` maps ``(selector, j)`` to the reply;
    ``task`` scores it (``prediction``, ``valid``, ``correct``, and ``token_f1`` for free-text outputs).
    """
    records = []
    for name in names:
        for j, (qi, text, gold) in enumerate(zip(queries.index, queries.texts, queries.gold, strict=True)):
            resp = responses[(name, j)]
            records.append({
                "selector": name, "query_index": qi, "query": text, "gold": gold, "reply": resp.text,
                **task.score(resp.text, gold),
                "examples": [i for i, _ in chosen[name][j]], "prompt_tokens": resp.prompt_tokens,
                "completion_tokens": resp.completion_tokens, "latency_s": round(resp.latency_s, 4), "cached": resp.cached,
            })
    return records


def retriever_config(r: Any) -> dict | None:
    """What a report says about the retriever behind a selector (``None`` for the random selector)."""
    if r is None:
        return None
    return {"feature_config": r.config.to_dict(), "block_weights": r.block_weights, "fit_weights": r.fit_weights,
            "pca": {"n_components": r.pca.n_components, "whiten": r.pca.whiten},
            "default_selection": r.default_selection.describe()}  # what a selector without selection= used


def selector_metrics(recs: list[dict], chosen: Chosen, pool_labels: Sequence, gold: Sequence, k: int,
                     task: LabelTask | OutputTask | None = None) -> dict:
    """Accuracy (with its Wilson interval), macro-F1, invalid rate, per-class accuracy, confusions, retrieval
    metrics of the examples shown, token counts and latency percentiles of one selector.

    ``pool_labels`` and ``gold`` are labels, or outputs for an :class:`OutputTask` (compared in its normalised
    form; the mean token F1 is added)."""
    key = (task or LabelTask(())).key
    n = len(recs)
    correct = sum(r["correct"] for r in recs)
    lo, hi = wilson_interval(correct, n)
    per_class: dict = defaultdict(lambda: [0, 0])
    for r in recs:
        per_class[r["gold"]][0] += r["correct"]
        per_class[r["gold"]][1] += 1
    confusions = Counter((r["gold"], r["prediction"] if r["valid"] else "<invalid>") for r in recs if not r["correct"])
    lat = [r["latency_s"] for r in recs]
    retrieved = [[key(pool_labels[i]) for i, _ in rows] for rows in chosen]
    scores = [[s for _, s in rows] for rows in chosen]
    return {
        "n": n,
        "accuracy": correct / n if n else 0.0,
        "accuracy_ci95": [lo, hi],
        "macro_f1": macro_f1([key(r["gold"]) for r in recs], [key(r["prediction"]) if r["valid"] else None for r in recs]),
        "invalid_rate": sum(not r["valid"] for r in recs) / n if n else 0.0,
        "per_class_accuracy": {str(c): v[0] / v[1] for c, v in sorted(per_class.items(), key=lambda kv: str(kv[0]))},
        "top_confusions": [{"gold": g, "predicted": p, "count": c} for (g, p), c in confusions.most_common(10)],
        "retrieval": retrieval_metrics(retrieved, scores, [key(g) for g in gold], min(k, len(retrieved[0])) if retrieved else k),
        # a reader that copies the most similar example answers with its label: how often this one did
        "answers_nearest_label": (sum(key(r["prediction"]) == row[0] for r, row in zip(recs, retrieved, strict=True) if row) / n
                                  if n else 0.0),
        **({"token_f1": float(np.mean([r["token_f1"] for r in recs]))} if recs and "token_f1" in recs[0] else {}),
        "prompt_tokens": int(sum(r["prompt_tokens"] for r in recs)),
        "completion_tokens": int(sum(r["completion_tokens"] for r in recs)),
        "latency_s_p50": float(np.percentile(lat, 50)) if lat else 0.0,
        "latency_s_p95": float(np.percentile(lat, 95)) if lat else 0.0,
    }


def paired(records: list[dict], selectors: Sequence[str]) -> dict:
    """Every pair of selectors compared on the same queries (see :func:`paired_comparison`)."""
    by = {s: [r["correct"] for r in records if r["selector"] == s] for s in selectors}
    out = {}
    for i, a in enumerate(selectors):
        for b in selectors[i + 1:]:
            out[f"{a}_vs_{b}"] = {**paired_comparison(by[a], by[b]), "note": f"difference = accuracy({a}) - accuracy({b})"}
    return out
