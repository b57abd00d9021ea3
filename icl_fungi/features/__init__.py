"""Feature parts: config, model adapters, KL heads, views, the SimCLR loss, per-sample gradient capture,
and the encoder that composes them.

Example:
    >>> from icl_fungi.features import FeatureConfig
    >>> FeatureConfig(features=("embedding", "kl")).kl_head
    'labels'
"""

from .config import DEFAULT_FEATURES, FEATURES, FeatureConfig
from .encoder import FungiEncoder
from .heads import KLHead, LabelMeanHead, NeighborsHead, PrototypeHead, RandomHead, register_kl_head, registered_kl_heads
from .models import DEFAULT_MODEL, MeanPooledModel, TargetLayer, resolve_model
from .simclr import SimCLRLoss
from .views import DropoutViews, Views, WordDeletionViews, register_view_kind, registered_view_kinds

__all__ = [
    "DEFAULT_FEATURES",
    "DEFAULT_MODEL",
    "FEATURES",
    "DropoutViews",
    "FeatureConfig",
    "FungiEncoder",
    "KLHead",
    "LabelMeanHead",
    "MeanPooledModel",
    "NeighborsHead",
    "PrototypeHead",
    "RandomHead",
    "SimCLRLoss",
    "TargetLayer",
    "Views",
    "WordDeletionViews",
    "register_kl_head",
    "register_view_kind",
    "registered_kl_heads",
    "registered_view_kinds",
    "resolve_model",
]
