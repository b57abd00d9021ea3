"""``FeatureConfig``: the hyper-parameters of the FUNGI features, saved with every retriever.

Example:
    >>> cfg = FeatureConfig(features=("embedding", "kl"), kl_temperature=0.1)
    >>> cfg.kl_tau, cfg.gradient_features
    (0.1, ('kl',))
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .heads import kl_head_class, registered_kl_heads
from .views import view_kind_class

__all__ = ["DEFAULT_FEATURES", "FEATURES", "LABEL_FREE_KL_HEAD", "FeatureConfig"]

FEATURES = ("embedding", "kl", "simclr")
# SimCLR is computed on request only: across the variants in eval/README.md ("Quality round 2") it moved dev-split
# P@20 by at most 0.1 pt over KL alone with MiniLM and lost with Gemma 3 270M, at 12 % more build time
DEFAULT_FEATURES = ("embedding", "kl")
PROJECTIONS = ("tensor_sketch", "sketch", "dense")
# The KL head of a pool without labels, where the default "labels" head (and "neighbors") cannot be fitted: the
# one place this choice is made (FeatureConfig.for_pool). "prototypes" (k-means of the pool's embeddings) is a
# placeholder until the label-free features are chosen by measurement on banking-77 with the labels hidden
LABEL_FREE_KL_HEAD = "prototypes"


def _number(name: str, value: object, *, integer: bool = False, optional: bool = False) -> None:
    if value is None and optional:
        return
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok:
        kind = "an int" if integer else "a number"
        raise TypeError(f"{name} must be {kind}{' or None' if optional else ''}, got {type(value).__name__}: {value!r}")


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Hyper-parameters of the FUNGI features.

    Args:
        features: blocks to compute, from ``("embedding", "kl", "simclr")`` (default: embedding and kl).
        target_layer: the Linear module whose per-sample gradient is taken: ``"ffn_output"`` (the last
            block's feed-forward output projection: the views and the KL backward then only touch what
            follows it), ``"attention_output"`` (the last block's attention output projection;
            ``None`` means the same), or a module name or unique suffix.
        kl_head: a registered KL head (see :mod:`icl_fungi.features.heads`): ``"labels"`` (one row per
            pool label), ``"neighbors"`` (soft k-NN over a pool sample), ``"prototypes"`` (k-means),
            ``"random"`` (the paper's), or your own class registered with ``register_kl_head``.
        kl_head_dim: rows of the ``"prototypes"`` and ``"random"`` heads.
        kl_temperature: softmax temperature; ``None``: the head's default.
        kl_center: head on pool-centred embeddings; ``None``: the head's default.
        center_blocks: subtract each block's pool mean before L2-normalising it.
        simclr_views: views per text (>= 2).
        simclr_view_mode: a registered view kind (see :mod:`icl_fungi.features.views`): ``"dropout"``,
            ``"word_deletion"``, or your own class registered with ``register_view_kind``.
        simclr_dropout: dropout rate of the views; ``None``: the model's own rates.
        simclr_view_blocks: dropout in the last ``n`` blocks only (``None``: the whole model).
        word_deletion_p: word-deletion probability of ``"word_deletion"`` views.
        simclr_temperature: InfoNCE temperature.
        simclr_negatives: size of the bank of negatives (views of seeded pool texts).
        projection: ``"tensor_sketch"`` (a signed hashing of the gradient computed without forming it),
            ``"sketch"`` (signed hashing of the formed gradient) or ``"dense"`` (+-1 matrix, the paper's).
        projection_dim: size of each projected gradient block; ``None``: the embedding size.
        seed: seed of heads, views, negatives and projections.
    """

    features: tuple[str, ...] = DEFAULT_FEATURES
    target_layer: str | None = "ffn_output"
    kl_head: str = "labels"
    kl_head_dim: int = 256
    kl_temperature: float | None = None
    kl_center: bool | None = None
    center_blocks: bool = True
    simclr_views: int = 2
    simclr_view_mode: str = "dropout"
    simclr_dropout: float | None = None
    simclr_view_blocks: int | None = 1
    word_deletion_p: float = 0.1
    simclr_temperature: float = 0.07
    simclr_negatives: int = 256
    projection: str = "tensor_sketch"
    projection_dim: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.features, str) or not hasattr(self.features, "__iter__"):
            raise TypeError(f"features must be a sequence of block names, got {type(self.features).__name__}")
        feats = tuple(self.features)
        object.__setattr__(self, "features", feats)
        if not feats:
            raise ValueError("features must name at least one block")
        unknown = [f for f in feats if f not in FEATURES]
        if unknown:
            raise ValueError(f"unknown feature(s) {unknown}; choose from {FEATURES}")
        if len(set(feats)) != len(feats):
            raise ValueError(f"features contain duplicates: {feats}")
        if self.target_layer is not None and (not isinstance(self.target_layer, str) or not self.target_layer):
            raise TypeError(f"target_layer must be 'ffn_output', 'attention_output' or a module name, got {self.target_layer!r}")
        if not isinstance(self.kl_head, str) or self.kl_head not in registered_kl_heads():
            raise ValueError(f"kl_head must be one of {registered_kl_heads()}, got {self.kl_head!r}")
        for name in ("simclr_views", "kl_head_dim", "simclr_negatives", "seed"):
            _number(name, getattr(self, name), integer=True)
        for name in ("simclr_view_blocks", "projection_dim"):
            _number(name, getattr(self, name), integer=True, optional=True)
        for name in ("kl_temperature", "simclr_dropout"):
            _number(name, getattr(self, name), optional=True)
        _number("word_deletion_p", self.word_deletion_p)
        _number("simclr_temperature", self.simclr_temperature)
        for name in ("kl_center",):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool or None, got {type(getattr(self, name)).__name__}")
        if not isinstance(self.center_blocks, bool):
            raise TypeError(f"center_blocks must be a bool, got {type(self.center_blocks).__name__}")
        view_kind_class(self.simclr_view_mode)  # a registered view kind, or a ValueError naming them
        if self.projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {self.projection!r}")
        if self.simclr_views < 2:
            raise ValueError(f"simclr_views must be an int >= 2, got {self.simclr_views!r}")
        if self.kl_center and not kl_head_class(self.kl_head).needs_fit:
            raise ValueError(f"kl_center=True needs a fitted KL head; {self.kl_head!r} is fixed")
        for name in ("kl_temperature", "simclr_temperature"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 < self.word_deletion_p < 1:
            raise ValueError(f"word_deletion_p must be in (0, 1), got {self.word_deletion_p!r}")
        if self.simclr_dropout is not None and not 0 < self.simclr_dropout < 1:
            raise ValueError(f"simclr_dropout must be in (0, 1) or None, got {self.simclr_dropout!r}")
        if self.simclr_view_blocks is not None and self.simclr_view_blocks < 1:
            raise ValueError(f"simclr_view_blocks must be >= 1 or None, got {self.simclr_view_blocks!r}")
        if self.projection_dim is not None and self.projection_dim < 1:
            raise ValueError(f"projection_dim must be >= 1 or None, got {self.projection_dim!r}")
        if self.simclr_negatives < 1 or self.kl_head_dim < 2:
            raise ValueError("simclr_negatives must be >= 1 and kl_head_dim >= 2")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    @property
    def kl_tau(self) -> float:
        """The KL temperature in force."""
        if self.kl_temperature is not None:
            return float(self.kl_temperature)
        return float(kl_head_class(self.kl_head).default_temperature)

    @property
    def kl_centered(self) -> bool:
        """Whether the KL head works on pool-centred embeddings (``kl_center`` resolved)."""
        if self.kl_center is None:
            return bool(kl_head_class(self.kl_head).centered_by_default)
        return self.kl_center

    @property
    def fitted_head(self) -> bool:
        """True when the KL block's head is fitted on the pool."""
        return "kl" in self.features and kl_head_class(self.kl_head).needs_fit

    @property
    def head_needs_labels(self) -> bool:
        """True when fitting needs the pool's labels (the label heads)."""
        return self.fitted_head and kl_head_class(self.kl_head).needs_labels

    def for_pool(self, has_labels: bool) -> FeatureConfig:
        """This config for a pool with or without labels: without labels, a head that needs them is replaced by
        :data:`LABEL_FREE_KL_HEAD` (every other field kept); otherwise the config itself.

        Example:
            >>> FeatureConfig().for_pool(has_labels=False).kl_head, FeatureConfig().for_pool(has_labels=True).kl_head
            ('prototypes', 'labels')
        """
        if has_labels or not self.head_needs_labels:
            return self
        return dataclasses.replace(self, kl_head=LABEL_FREE_KL_HEAD)

    @property
    def gradient_features(self) -> tuple[str, ...]:
        """The gradient blocks among ``features``."""
        return tuple(f for f in self.features if f != "embedding")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = dataclasses.asdict(self)
        d["features"] = list(self.features)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureConfig:
        """Inverse of :meth:`to_dict`; unknown keys and bad values are errors."""
        if not isinstance(d, dict):
            raise TypeError(f"a feature config must be a dict, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown feature-config keys {sorted(unknown)}")
        feats = d.get("features", DEFAULT_FEATURES)
        if isinstance(feats, str) or not isinstance(feats, list | tuple):
            raise TypeError(f"features must be a list of block names, got {type(feats).__name__}")
        return cls(**{**d, "features": tuple(feats)})
