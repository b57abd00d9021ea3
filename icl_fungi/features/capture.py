"""Per-sample gradient capture: forward hooks that make a layer's output the gradient leaf, and
the helpers that run only the top of a model from a cached hidden state.

A linear layer ``y_t = W x_t + b`` seen by one sample has the weight gradient
``sum_t g_t [x_t; 1]^T`` with ``g_t = dL/dy_t``. :class:`Capture` keeps ``x`` and makes ``y`` a leaf,
so one ``autograd.grad`` call w.r.t. the leaves gives every sample's ``g`` at once.

Example:
    >>> import torch
    >>> layer, cap = torch.nn.Linear(3, 2), Capture()
    >>> with hooked(layer, cap):
    ...     y = layer(torch.ones(4, 5, 3))
    >>> torch.autograd.grad(y.sum(), cap.output)[0].shape, cap.inputs.shape
    (torch.Size([4, 5, 2]), torch.Size([4, 5, 3]))
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

__all__ = ["BlockCache", "Capture", "SkipBlocks", "hooked", "in_row_order", "repeat_rows", "tile", "token_mask"]


class Capture:
    """Forward hook keeping a layer's input and turning its output into a leaf that requires grad."""

    def __init__(self) -> None:
        self.inputs: torch.Tensor | None = None
        self.output: torch.Tensor | None = None

    def __call__(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        self.inputs = args[0].detach()
        self.output = output.detach().requires_grad_(True)
        return self.output


class BlockCache:
    """Forward hook keeping one block's output (to skip the blocks below it later)."""

    def __init__(self) -> None:
        self.value: Any = None

    def store(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        self.value = output.detach() if isinstance(output, torch.Tensor) else output


@contextlib.contextmanager
def hooked(module: torch.nn.Module, fn: Any) -> Iterator[None]:
    """A forward hook on ``module`` for the duration of the block."""
    handle = module.register_forward_hook(fn)
    try:
        yield
    finally:
        handle.remove()


class SkipBlocks:
    """Replace blocks ``[0, split)`` by a stub returning a cached hidden state ``value``."""

    def __init__(self, blocks: torch.nn.ModuleList, split: int, value: Any) -> None:
        self.blocks, self.split, self.value = blocks, split, value

    def __enter__(self) -> SkipBlocks:
        for block in list(self.blocks)[: self.split]:
            block.forward = lambda *a, **k: self.value
        return self

    def __exit__(self, *exc: object) -> None:
        for block in list(self.blocks)[: self.split]:
            del block.forward


def in_row_order(parts: list[tuple[np.ndarray, torch.Tensor]]) -> torch.Tensor:
    """Concatenate per-batch ``(rows, tensor)`` pairs in ascending row order."""
    rows = np.concatenate([r for r, _ in parts])
    return torch.cat([t for _, t in parts])[torch.from_numpy(np.argsort(rows, kind="stable"))]


def _repeat(t: Any, R: int) -> Any:
    """A tensor repeated ``R`` times along its first (batch) dimension; anything else as is."""
    return t.detach().repeat(R, *([1] * (t.ndim - 1))) if isinstance(t, torch.Tensor) else t


def repeat_rows(features: dict[str, Any], R: int) -> dict[str, Any]:
    """Model inputs with every row repeated ``R`` times (view-major)."""
    return {k: _repeat(v, R) for k, v in features.items()}


def tile(value: Any, R: int) -> Any:
    """A cached block output repeated ``R`` times along the batch (tuples: their first element)."""
    if isinstance(value, tuple):
        return (_repeat(value[0], R), *value[1:])
    return _repeat(value, R)


def token_mask(mask: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor | None:
    """The attention mask when the layer sees (batch, tokens, dim); other layouts are summed unmasked."""
    if inputs.ndim == 3 and tuple(inputs.shape[:2]) == tuple(mask.shape):
        return mask
    return None
