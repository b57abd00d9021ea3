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

__all__ = ["BlockCache", "Capture", "PreTargetRecorder", "StubModules", "TrunkCache", "hooked", "in_row_order", "repeat_rows",
           "tile", "token_mask"]


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


class StubModules:
    """Replace the forward of each module by a stub that returns a given value (its cached output).

    Forward hooks still run on the stub's value, so a :class:`Capture` on a stubbed layer still sees
    the layer's input and makes its (cached) output the gradient leaf.
    """

    def __init__(self, values: dict[torch.nn.Module, Any]) -> None:
        self.values = values

    def __enter__(self) -> StubModules:
        for module, value in self.values.items():
            module.forward = (lambda v: lambda *a, **k: v)(value)
        return self

    def __exit__(self, *exc: object) -> None:
        for module in self.values:
            del module.forward


class TrunkCache:
    """What a trunk pass keeps for the gradient pass: the hidden state entering the first recomputed block,
    and the outputs of the modules that ran before the target layer inside that block (and the target's own)."""

    def __init__(self, block_input: Any = None, outputs: dict[torch.nn.Module, Any] | None = None) -> None:
        self.block_input = block_input
        self.outputs = outputs or {}

    def nbytes(self) -> int:
        """Bytes held (tensors only)."""
        values = [self.block_input, *self.outputs.values()]
        tensors = [v[0] if isinstance(v, tuple) else v for v in values]
        return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _first_tensor(value: Any) -> torch.Tensor | None:
    value = value[0] if isinstance(value, tuple) and value else value
    return value if isinstance(value, torch.Tensor) else None


# operations that read a tensor's metadata (shape, dtype, grad flags), not its values
_METADATA = {"getset_descriptor.__get__", "TensorBase.size", "TensorBase.dim", "TensorBase.numel", "TensorBase.stride",
             "TensorBase.is_contiguous", "TensorBase.is_floating_point", "TensorBase.element_size", "TensorBase.get_device",
             "TensorBase.__len__", "Tensor.__len__", "TensorBase.data_ptr"}


class PreTargetRecorder:
    """Records, during one forward pass, which modules of ``block`` finished before ``target`` started, and
    which of their outputs other code reads.

    :meth:`stubs` returns the outermost such modules that are not ancestors of the target and whose
    output is a batch-first tensor (or a tuple starting with one), plus the target itself: in a pass
    whose inputs before the target are unchanged, their outputs can be replayed from a cache.
    :meth:`read_outside` tells whether a replayed value is read by any operation outside the
    replayed modules (only those values must be repeated for a batch of several views); ``watch``
    also tracks the output of that module (e.g. the block before ``block``).
    """

    def __init__(self, block: torch.nn.Module, target: torch.nn.Module, watch: torch.nn.Module | None = None,
                 root: torch.nn.Module | None = None, skipped: list[torch.nn.Module] | None = None) -> None:
        self.block, self.target, self.watch = block, target, watch
        self.root = root if root is not None else block  # modules outside ``block`` are looked at too (embeddings)
        self.skipped = skipped or []  # blocks the gradient pass skips as a whole
        self.done: list[torch.nn.Module] = []
        self.outputs: dict[torch.nn.Module, Any] = {}
        self.start: int | None = None
        self.handles: list[Any] = []
        self.stack: list[torch.nn.Module] = []
        self.reads: list[tuple[tuple[torch.nn.Module, ...], set[int], str]] = []  # (modules running, tensor ids read, op)
        self.mode: Any = None
        self.created: dict[torch.nn.Module, int] = {}  # number of reads recorded when each output appeared

    def __enter__(self) -> PreTargetRecorder:
        from torch.overrides import TorchFunctionMode

        recorder = self

        class _Reads(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                ids = {id(a) for a in (*args, *(kwargs or {}).values()) if isinstance(a, torch.Tensor)}
                ids |= {id(t) for a in args if isinstance(a, list | tuple) for t in a if isinstance(t, torch.Tensor)}
                recorder.reads.append((tuple(recorder.stack), ids, getattr(func, "__qualname__", repr(func))))
                return func(*args, **(kwargs or {}))

        modules = [m for m in self.root.modules() if m is not self.root]
        for m in modules:
            self.handles.append(m.register_forward_pre_hook(self._enter))
            self.handles.append(m.register_forward_hook(self._done))
        if self.watch is not None:
            self.handles.append(self.watch.register_forward_hook(self._watched))
        self.handles.append(self.target.register_forward_pre_hook(self._started))
        self.mode = _Reads()
        self.mode.__enter__()
        return self

    def _enter(self, module: torch.nn.Module, args: tuple) -> None:
        self.stack.append(module)

    def _done(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        if self.stack and self.stack[-1] is module:
            self.stack.pop()
        self.done.append(module)
        self.outputs[module] = output
        self.created[module] = len(self.reads)

    def _watched(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        self.outputs[module] = output
        self.created[module] = len(self.reads)

    def _started(self, module: torch.nn.Module, args: tuple) -> None:
        if self.start is None:
            self.start = len(self.done)

    def __exit__(self, *exc: object) -> None:
        self.mode.__exit__(*exc)
        for h in self.handles:
            h.remove()
        self.handles = []

    def stubs(self, batch: int) -> list[torch.nn.Module]:
        if self.start is None:
            return []
        before, after = self.done[: self.start], set(self.done[self.start :])
        ancestors = {m for m in self.root.modules() if any(sub is self.target for sub in m.modules())}
        skipped = {id(sub) for b in self.skipped for sub in b.modules()}
        candidates = [m for m in dict.fromkeys(before) if m not in ancestors and m not in after and id(m) not in skipped]
        outermost = [m for m in candidates if not any(m is not c and any(sub is m for sub in c.modules()) for c in candidates)]
        ok = []
        for m in [*outermost, self.target]:
            t = _first_tensor(self.outputs.get(m))
            if t is None or t.shape[0] != batch:
                return []  # something this pass cannot replay: recompute the whole block instead
            ok.append(m)
        return ok

    def read_outside(self, module: torch.nn.Module, replayed: list[torch.nn.Module]) -> bool:
        """True when an operation outside the ``replayed`` modules read ``module``'s recorded output."""
        t = _first_tensor(self.outputs.get(module))
        if t is None:
            return True
        inside = set(map(id, replayed))
        later = self.reads[self.created.get(module, 0) :]  # before it existed, its id may have been another tensor's
        return any(id(t) in ids and op not in _METADATA and not any(id(m) in inside for m in stack) for stack, ids, op in later)


def in_row_order(parts: list[tuple[np.ndarray, torch.Tensor]]) -> torch.Tensor:
    """Concatenate per-batch ``(rows, tensor)`` pairs in ascending row order."""
    rows = np.concatenate([r for r, _ in parts])
    return torch.cat([t for _, t in parts])[torch.from_numpy(np.argsort(rows, kind="stable"))]


def _repeat(t: Any, R: int) -> Any:
    """A tensor repeated ``R`` times along its first (batch) dimension; anything else as is."""
    return t.detach().repeat(R, *([1] * (t.ndim - 1))) if isinstance(t, torch.Tensor) else t


def repeat_rows(inputs: dict[str, Any], R: int) -> dict[str, Any]:
    """Model inputs with every row repeated ``R`` times (view-major)."""
    return {k: _repeat(v, R) for k, v in inputs.items()}


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
