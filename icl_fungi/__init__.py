"""icl-fungi: pick in-context examples with FUNGI features (embeddings + self-supervised gradients).

Example:
    >>> from icl_fungi import ICLRetriever                                                  # doctest: +SKIP
    >>> r = ICLRetriever.from_dataset("train.csv", label_column="category")                 # doctest: +SKIP
    >>> r.retrieve("I still haven't received my card", k=20)[0].label                       # doctest: +SKIP
    'card_arrival'
    >>> print(r.build_prompt("I still haven't received my card", k=20))                     # doctest: +SKIP
"""

from __future__ import annotations

from .data import load_pool
from .features import DEFAULT_FEATURES, DEFAULT_MODEL, FeatureConfig, FungiEncoder, KLHead, register_kl_head
from .index import Index, VectorIndex, register_index
from .retriever import ICLRetriever, RetrievedExample
from .selection import Selection
from .template import PromptTemplate
from .version import __version__ as __version__

__all__ = [
    "DEFAULT_FEATURES",
    "DEFAULT_MODEL",
    "FeatureConfig",
    "FungiEncoder",
    "ICLRetriever",
    "Index",
    "KLHead",
    "PromptTemplate",
    "RetrievedExample",
    "Selection",
    "VectorIndex",
    "load_pool",
    "register_index",
    "register_kl_head",
]
