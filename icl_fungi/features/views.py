"""SimCLR views of a text: deterministic dropout masks, or word deletion, or a kind of your own.

Every view is seeded by the text itself (and the view's tag and the config seed), so a text has
the same views whatever batch it is encoded in. A view kind is one :class:`Views` subclass,
registered by its ``kind`` name with :func:`register_view_kind` and chosen with
``FeatureConfig(simclr_view_mode=kind)`` (saved and loaded by name). Views over the same token rows
(``same_tokens = True``) provide ``seeds`` and an ``apply`` context that perturbs the forward pass;
views that are other token sequences provide ``texts``.

Example:
    >>> WordDeletionViews(p=0.3, seed=0).texts(["my card never arrived at home"], view_ids=(0, 1))
    ['card never arrived at', 'card arrived at home']
    >>> class ReversedViews(Views):                    # a view kind of your own: other token sequences
    ...     kind = "reversed"
    ...     same_tokens = False
    ...     def texts(self, texts, view_ids):
    ...         return [" ".join(t.split()[::-1]) if v else t for v in view_ids for t in texts]
    >>> _ = register_view_kind(ReversedViews)
    >>> view_kind_class("reversed").create(None).texts(["a b"], (0, 1))
    ['a b', 'b a']
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from ..registry import Registry

__all__ = ["DropoutViews", "Views", "WordDeletionViews", "counter_uniform", "delete_words", "dropout_modules",
           "register_view_kind", "registered_view_kinds", "text_seed", "view_kind_class"]

_MASK63 = (1 << 63) - 1


class Views:
    """A kind of SimCLR view. Subclass it: set ``kind`` (its registered name) and ``same_tokens``; implement
    :meth:`create` when the views need the encoder's model or config (``encoder`` has ``model``, ``target``,
    ``config`` and ``gradients``), and either ``seeds`` + ``apply`` (same token rows: ``apply(seeds)`` is a context
    in which the forward pass perturbs each row by its seed, ``None`` leaving a row clean) or ``texts`` (new token
    sequences, view-major). ``in_blocks`` says the views perturb the model from block
    ``FeatureConfig.simclr_view_blocks`` on, so the gradient pass recomputes from there."""

    kind: ClassVar[str] = ""
    same_tokens: ClassVar[bool] = False
    in_blocks: ClassVar[bool] = False

    @classmethod
    def create(cls, encoder: Any) -> Views:
        """The views of ``encoder`` (default: the class built with no arguments)."""
        return cls()

    def seeds(self, texts: Sequence[str], view_ids: Sequence[Any]) -> list[int]:
        """One seed per row, view-major (``same_tokens`` views)."""
        raise NotImplementedError(f"{type(self).__name__} makes views as texts, not seeds")

    def apply(self, seeds: Sequence[int | None]) -> Any:
        """A context perturbing each row of the forward pass by its seed (``same_tokens`` views)."""
        raise NotImplementedError(f"{type(self).__name__} makes views as texts, not seeded passes")

    def texts(self, texts: Sequence[str], view_ids: Sequence[Any]) -> list[str]:
        """The views' texts, view-major (views that are other token sequences)."""
        raise NotImplementedError(f"{type(self).__name__} makes views over the same tokens, not texts")


_VIEW_KINDS = Registry("view kind", "kind", base=Views,
                       hint="register your own with icl_fungi.features.register_view_kind before building or loading")


def register_view_kind(cls: type[Views]) -> type[Views]:
    """Register a :class:`Views` subclass under its ``kind`` (usable as a decorator)."""
    if isinstance(cls, type) and issubclass(cls, Views) and not isinstance(cls.same_tokens, bool):
        raise TypeError(f"{cls.__name__}.same_tokens must be a bool")
    return _VIEW_KINDS.register(cls)


def registered_view_kinds() -> tuple[str, ...]:
    """Names of the registered view kinds."""
    return _VIEW_KINDS.names()


def view_kind_class(kind: object) -> type[Views]:
    """The :class:`Views` class registered under ``kind``."""
    if kind not in _VIEW_KINDS.names():
        raise ValueError(f"simclr_view_mode must be a registered view kind {registered_view_kinds()}, got {kind!r} "
                         "(register your own with icl_fungi.features.register_view_kind before building or loading)")
    return _VIEW_KINDS.get(kind)


def text_seed(seed: int, tag: str, text: str) -> int:
    """A 63-bit seed from the config seed, a view tag and the text."""
    digest = hashlib.blake2b(f"{seed}\x00{tag}\x00{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _MASK63


def delete_words(text: str, p: float, seed: int) -> str:
    """``text`` with each whitespace-separated word dropped with probability ``p`` (never empty)."""
    words = text.split()
    rng = np.random.default_rng(seed)
    kept = [w for w, r in zip(words, rng.random(len(words)), strict=True) if r >= p]
    return " ".join(kept) if kept else words[int(rng.integers(len(words)))]


def dropout_modules(model: torch.nn.Module, blocks: torch.nn.ModuleList | None, first_block: int,
                    p: float | None) -> list[torch.nn.Dropout]:
    """The ``nn.Dropout`` modules of blocks ``first_block`` on (the whole model when 0 or no blocks)
    that drop something (their own rate > 0, or a rate ``p`` is forced)."""
    if first_block == 0 or blocks is None:
        mods = model.modules()
    else:
        mods = (m for block in list(blocks)[first_block:] for m in block.modules())
    return [m for m in mods if isinstance(m, torch.nn.Dropout) and (m.p > 0 or p)]


@register_view_kind
class DropoutViews(Views):
    """Views as deterministic per-row dropout on (eval-mode) ``nn.Dropout`` modules.

    Each row's mask is a counter-based hash of the row's seed, the module's position and the element
    (:func:`counter_uniform`), computed for all rows at once; the mask of token ``t`` depends only on
    ``t`` (not on the padded length). A row whose seed is ``None`` is left clean. ``p``: the dropout
    rate (``None``: each module's own).
    """

    kind = "dropout"
    same_tokens = True
    in_blocks = True

    def __init__(self, modules: list[torch.nn.Dropout], *, p: float | None = None, seed: int = 0) -> None:
        self.modules, self.p, self.seed = modules, p, seed

    @classmethod
    def create(cls, encoder: Any) -> DropoutViews:
        """The Dropout modules from ``simclr_view_blocks`` on, less those the gradient pass replays clean."""
        cfg, grad = encoder.config, encoder.gradients
        replayed = grad.replayed_modules()
        modules = [m for m in dropout_modules(encoder.model, encoder.target.blocks, grad.split_block(), cfg.simclr_dropout)
                   if not any(m is sub for r in replayed for sub in r.modules())]
        if "simclr" in cfg.features and not modules:
            raise ValueError("the model has no torch.nn.Dropout modules where the SimCLR views are made (simclr_view_blocks="
                             f"{cfg.simclr_view_blocks}); use simclr_view_mode='word_deletion' or more simclr_view_blocks")
        return cls(modules, p=cfg.simclr_dropout, seed=cfg.seed)

    def seeds(self, texts: Sequence[str], view_ids: Sequence[Any]) -> list[int]:
        """One seed per row, view-major (all texts of view 0, then view 1, ...)."""
        return [text_seed(self.seed, f"do{v}", t) for v in view_ids for t in texts]

    def apply(self, seeds: Sequence[int | None]) -> _MaskHooks:
        """A context in which the modules drop with the rows' masks (batches of ``len(seeds)`` rows)."""
        return _MaskHooks(self.modules, list(seeds), self.p)


_M64 = (1 << 64) - 1
_M32 = (1 << 32) - 1


def _i32(v: int) -> int:
    """An unsigned 32-bit constant as the int32 with the same bits."""
    return v - (1 << 32) if v >= 1 << 31 else v


_K1, _K2, _K3 = _i32(0x9E3779B9), _i32(0x85EBCA6B), _i32(0xC2B2AE35)  # golden ratio, murmur3's finaliser


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int32 bits (torch's is arithmetic)."""
    return (x >> k) & ((1 << (32 - k)) - 1)


def _fmix(x: torch.Tensor) -> torch.Tensor:
    x = (x ^ _shr(x, 16)) * _K2
    x = (x ^ _shr(x, 13)) * _K3
    return x ^ _shr(x, 16)


def counter_uniform(seeds: torch.Tensor, position: int, n: int) -> torch.Tensor:
    """Uniform floats in [0, 1), (rows, n): a hash of (row seed, position, element index).

    Counter-based: element ``e`` of a row depends only on its seed, ``position`` and ``e``, so a
    token's mask is the same whatever the batch and its padded length. 32-bit arithmetic (wrapping
    multiplies) with murmur3's finaliser, the 64-bit seed folded in two rounds.
    """
    lo = (seeds & _M32).to(torch.int32)
    hi = _shr64(seeds, 32).to(torch.int32)
    row = _fmix(_fmix(lo ^ _fold(position)) ^ hi)
    x = row[:, None] ^ (torch.arange(n, dtype=torch.int32)[None, :] * _K1)
    return _shr(_fmix(x), 8).to(torch.float32) * (1.0 / (1 << 24))  # the top 24 bits


def _fold(position: int) -> int:
    return _i32(((position + 1) * 0x9E3779B9) & _M32)


def _shr64(x: torch.Tensor, k: int) -> torch.Tensor:
    return (x >> k) & ((1 << (64 - k)) - 1)


class _MaskHooks:
    """Forward hooks replacing each Dropout module's output by ``output * mask / (1 - p)``, all rows at once."""

    def __init__(self, modules: list[torch.nn.Dropout], seeds: list[int | None], p: float | None) -> None:
        self.modules, self.p = modules, p
        self.clean = torch.tensor([s is None for s in seeds])
        self.seeds = torch.tensor([s & ((1 << 63) - 1) if s is not None else 0 for s in seeds], dtype=torch.int64)
        self.handles: list[Any] = []

    def _hook(self, position: int, p: float) -> Any:
        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            if output.shape[0] != len(self.seeds):
                return output
            size = output[0].numel()
            keep = (counter_uniform(self.seeds, position, size) >= p).float() / (1.0 - p)
            keep[self.clean] = 1.0  # clean rows: no dropout
            return output * keep.reshape(output.shape).to(output.device, output.dtype)

        return hook

    def __enter__(self) -> _MaskHooks:
        for i, m in enumerate(self.modules):
            p = self.p if self.p is not None else m.p
            self.handles.append(m.register_forward_hook(self._hook(i, p)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


@register_view_kind
class WordDeletionViews(Views):
    """Views as new token sequences: each word deleted with probability ``p``, seeded per text and view."""

    kind = "word_deletion"
    same_tokens = False

    def __init__(self, *, p: float = 0.1, seed: int = 0) -> None:
        self.p, self.seed = p, seed

    @classmethod
    def create(cls, encoder: Any) -> WordDeletionViews:
        """Views with the config's ``word_deletion_p`` and seed."""
        return cls(p=encoder.config.word_deletion_p, seed=encoder.config.seed)

    def texts(self, texts: Sequence[str], view_ids: Sequence[Any]) -> list[str]:
        """The views' texts, view-major."""
        return [delete_words(t, self.p, text_seed(self.seed, f"wd{v}", t)) for v in view_ids for t in texts]
