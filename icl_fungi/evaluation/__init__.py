"""Evaluation: retrieval metrics, the OpenAI-compatible LLM client, the ICL evaluation run and its reports.

The library core never imports this package; ``icl-fungi eval`` and the scripts under ``eval/`` do.

Example:
    >>> from icl_fungi.evaluation import precision_at_k
    >>> precision_at_k([["a", "a", "b"]], ["a"], k=3)
    0.6666666666666666
"""

from .metrics import (
    knn_vote_accuracy,
    macro_f1,
    mcnemar_p,
    paired_comparison,
    parse_label,
    precision_at_k,
    retrieval_metrics,
    stratified_split,
    wilson_interval,
)

__all__ = [
    "knn_vote_accuracy",
    "macro_f1",
    "mcnemar_p",
    "paired_comparison",
    "parse_label",
    "precision_at_k",
    "retrieval_metrics",
    "stratified_split",
    "wilson_interval",
]
