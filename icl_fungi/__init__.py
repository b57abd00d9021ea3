"""icl-fungi: pick in-context examples with FUNGI features (embeddings + self-supervised gradients).

Example:
    >>> from icl_fungi import ICLRetriever                                   # doctest: +SKIP
    >>> r = ICLRetriever.from_dataset("train.csv", label_column="category")  # doctest: +SKIP
    >>> r.retrieve("I still haven't received my card", k=20)[0].label        # doctest: +SKIP
    'card_arrival'
"""

from __future__ import annotations

__version__ = "0.1.0"

from .data import load_pool
from .encoder import DEFAULT_FEATURES, DEFAULT_MODEL, FEATURES, FeatureConfig, FungiEncoder, MeanPooledModel, resolve_model
from .index import VectorIndex
from .projection import PCA, GradientProjection
from .retriever import ICLRetriever, RetrievedExample

__all__ = [
    "DEFAULT_FEATURES",
    "DEFAULT_MODEL",
    "FEATURES",
    "PCA",
    "FeatureConfig",
    "FungiEncoder",
    "GradientProjection",
    "ICLRetriever",
    "MeanPooledModel",
    "RetrievedExample",
    "VectorIndex",
    "load_pool",
    "resolve_model",
]
