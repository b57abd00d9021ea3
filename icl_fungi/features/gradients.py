"""One batch's feature blocks: a trunk pass for the embedding, then one gradient pass for the KL and
SimCLR losses with a single backward, and the projected per-sample gradients.

The trunk pass records the graph only from the target layer on (the weights are frozen, so nothing
below it is recorded) and caches the hidden state entering the first block the gradient pass
recomputes. Dropout views run only the blocks above that cache; when the views share the target
layer's input (dropout after the layer), their output gradients are summed before the per-sample
gradient is formed and projected once.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .capture import BlockCache, Capture, PreTargetRecorder, StubModules, TrunkCache, hooked, repeat_rows, tile, token_mask
from .views import view_kind_class

__all__ = ["EncoderParts", "GradientPass"]


class EncoderParts(Protocol):
    """What a :class:`GradientPass` reads of its encoder (a :class:`~icl_fungi.features.FungiEncoder`)."""

    config: Any
    model: torch.nn.Module
    target: Any
    device: torch.device
    head: Any
    simclr: Any
    views: Any
    projections: dict[str, Any]

    def forward(self, inputs: dict[str, Any]) -> torch.Tensor: ...

    def tokenize(self, texts: list[str]) -> dict[str, Any]: ...


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple):
        return tuple(v.detach() if isinstance(v, torch.Tensor) else v for v in value)
    return value


class GradientPass:
    """The per-batch computation of a :class:`~icl_fungi.features.FungiEncoder` (reads its parts)."""

    def __init__(self, encoder: EncoderParts) -> None:
        self.enc = encoder
        self._stubs: list[torch.nn.Module] | None = None  # replayed in the gradient pass; None: not known yet
        self._tile: dict[torch.nn.Module, bool] = {}  # replayed values read outside the replayed modules (repeated per view)

    def split_block(self) -> int:
        """Index of the first block with dropout in the SimCLR views (0: the whole model)."""
        cfg, target = self.enc.config, self.enc.target
        if cfg.simclr_view_blocks is None or target.blocks is None or not view_kind_class(cfg.simclr_view_mode).in_blocks:
            return 0
        return max(0, len(target.blocks) - cfg.simclr_view_blocks)

    def tail_start(self) -> int:
        """First block that the gradient pass recomputes (0: the whole model)."""
        cfg, target = self.enc.config, self.enc.target
        if target.blocks is None or target.block_index < 0:
            return 0
        start = target.block_index
        if "simclr" in cfg.features and view_kind_class(cfg.simclr_view_mode).in_blocks:
            start = min(start, self.split_block())
        return start

    def _stubbable(self) -> bool:
        """True when the gradient pass starts in the target's own block, so the modules that ran before the
        target there (and the target itself) can be replayed from the trunk pass instead of recomputed."""
        target = self.enc.target
        return target.blocks is not None and target.block_index >= 0 and self.tail_start() == target.block_index

    def replayed_modules(self) -> list[torch.nn.Module]:
        """The modules the gradient pass replays from the trunk pass (found with one forward of a short text)."""
        if self._stubs is None and self._stubbable():
            self.trunk(self.enc.tokenize(["a short text"]), cache=True)  # records them
        return list(self._stubs or [])

    def trunk(self, inputs: dict[str, Any], *, cache: bool = True, with_kl: bool = False) -> tuple[torch.Tensor, Any, Any]:
        """The model's forward pass: ``(embedding, cached, clean)``.

        ``cached`` (a :class:`TrunkCache`, or ``None`` without ``cache``) holds the hidden state entering block
        :meth:`tail_start` and the outputs the gradient pass replays. With ``with_kl`` the pass also records
        the graph from the target layer on, and ``clean`` is ``(unit embedding, capture)`` for the KL loss.
        """
        enc = self.enc
        store = BlockCache()
        start = self.tail_start() if cache else 0  # (a reference to the block's output: no copy)
        fused = with_kl and "kl" in enc.config.features
        cap = Capture()
        stubbable = cache and self._stubbable()
        watch = enc.target.blocks[start - 1] if start > 0 else None
        recorder = (PreTargetRecorder(enc.target.blocks[start], enc.target.module, watch, root=enc.model,
                                      skipped=list(enc.target.blocks)[:start]) if stubbable and self._stubs is None else None)
        stores = {m: BlockCache() for m in (self._stubs or [])} if stubbable and recorder is None else {}
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.enable_grad() if fused else torch.no_grad())
            if fused:
                stack.enter_context(hooked(enc.target.module, cap))
            if start > 0:
                stack.enter_context(hooked(enc.target.blocks[start - 1], store.store))
            if recorder is not None:
                stack.enter_context(recorder)
            for m, keep in stores.items():
                stack.enter_context(hooked(m, keep.store))
            emb = enc.forward(inputs)
        if recorder is not None:
            self._stubs = recorder.stubs(len(emb))
            replayed = [*self._stubs, *list(enc.target.blocks)[:start]]
            self._tile = {m: recorder.read_outside(m, replayed) for m in self._stubs}
            if watch is not None:
                self._tile[watch] = recorder.read_outside(watch, replayed)
            stores = {m: _detached(recorder.outputs[m]) for m in self._stubs}
        else:
            stores = {m: keep.value for m, keep in stores.items()}
        clean = (F.normalize(emb, dim=-1), cap) if fused else None
        cached = TrunkCache(store.value, stores) if cache else None
        return emb.detach(), cached, clean

    def blocks(self, texts: list[str], inputs: dict[str, Any], emb: torch.Tensor, cached: Any,
               clean: Any = None) -> dict[str, np.ndarray]:
        """All blocks of a batch from its trunk pass: one gradient forward over the rows [clean; dropout views]
        (what ran before the target replayed from ``cached``; no clean rows when the trunk pass gave ``clean``)
        and one backward for both losses."""
        enc = self.enc
        cfg = enc.config
        result: dict[str, np.ndarray] = {}
        if "embedding" in cfg.features:
            result["embedding"] = F.normalize(emb, dim=-1).float().cpu().numpy()
        B, V = len(texts), cfg.simclr_views
        want_kl, want_sc = "kl" in cfg.features, "simclr" in cfg.features
        same_tokens = want_sc and enc.views.same_tokens
        tail_kl = want_kl and clean is None  # the KL rows are recomputed in the tail
        mask = inputs["attention_mask"]
        other: dict[str, Any] = {}
        with torch.enable_grad():
            loss = torch.zeros((), device=enc.device)
            captures: list[Capture] = []
            if clean is not None:
                loss = loss + enc.head.loss(clean[0])
                captures.append(clean[1])
            tail = self._tail_loss(texts, inputs, cached, tail_kl, same_tokens)
            if tail is not None:
                loss = loss + tail[0]
                captures.append(tail[1])
            if want_sc and not same_tokens:  # the views are other token sequences
                vcap = Capture()
                other = enc.tokenize(enc.views.texts(texts, range(V)))
                with hooked(enc.target.module, vcap):
                    views = enc.forward(other)
                loss = loss + enc.simclr.loss(F.normalize(views, dim=-1).reshape(V, B, -1)).sum()
                captures.append(vcap)
            grads = torch.autograd.grad(loss, [c.output for c in captures])
        if want_kl:
            g, x = grads[0][:B], captures[0].inputs[:B]  # (an input replayed once for all rows has B rows)
            result["kl"] = F.normalize(enc.projections["kl"].transform(g, x, token_mask(mask, x)), dim=-1).cpu().numpy()
        if same_tokens:
            i = 1 if clean is not None else 0
            x = captures[i].inputs
            g, x = grads[i][B * tail_kl :], (x if len(x) == B else x[B * tail_kl :])
            result["simclr"] = self.simclr_block(g, x, mask.repeat(V, 1), V)
        if want_sc and not same_tokens:
            result["simclr"] = self.simclr_block(grads[-1], captures[-1].inputs, other["attention_mask"], V)
        return result

    def _tail_loss(self, texts: list[str], inputs: dict[str, Any], cached: Any, tail_kl: bool,
                   same_tokens: bool) -> tuple[torch.Tensor, Capture] | None:
        """The gradient forward over the rows [clean (when ``tail_kl``); same-token views] with what ran before
        the views differ replayed from ``cached``: ``(loss, capture at the target)``, or ``None`` without rows."""
        enc = self.enc
        B, V = len(texts), enc.config.simclr_views
        seeds: list[int | None] = [None] * B if tail_kl else []
        if same_tokens:
            seeds += enc.views.seeds(texts, range(V))
        R = len(seeds) // B
        if not R:
            return None
        cap = Capture()
        start = self.tail_start()
        with contextlib.ExitStack() as stack:
            stack.enter_context(hooked(enc.target.module, cap))
            if same_tokens:
                stack.enter_context(enc.views.apply(seeds))
            if cached is not None:  # replay what the trunk pass computed before the views differ
                replay = {m: tile(v, R) if self._tile.get(m, True) else v for m, v in cached.outputs.items()}
                if start > 0:
                    value = cached.block_input
                    value = tile(value, R) if self._tile.get(enc.target.blocks[start - 1], True) else value
                    replay.update({b: value for b in list(enc.target.blocks)[:start]})
                stack.enter_context(StubModules(replay))
            z = F.normalize(enc.forward(repeat_rows(inputs, R)), dim=-1)
        loss = torch.zeros((), device=enc.device)
        if tail_kl:
            loss = loss + enc.head.loss(z[:B])
        if same_tokens:
            loss = loss + enc.simclr.loss(z[B * tail_kl :].reshape(V, B, -1)).sum()
        return loss, cap

    def encode_batch(self, texts: list[str], inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        """All blocks of one batch from scratch: the trunk pass (recording the KL graph) and the gradient pass;
        plain embeddings need neither graph nor hooks."""
        enc = self.enc
        if enc.config.gradient_features:
            emb, cached, clean = self.trunk(inputs, with_kl=True)
            return self.blocks(texts, inputs, emb, cached, clean)
        with torch.inference_mode():
            return {"embedding": F.normalize(enc.forward(inputs), dim=-1).float().cpu().numpy()}

    def simclr_block(self, g: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, V: int) -> np.ndarray:
        """Project the view-major per-view gradients ``g`` (V * n rows) and sum each text's views; ``x`` is the layer's
        input, per view (V * n rows) or shared by the views (n rows), ``mask`` the (V * n) token mask."""
        proj = self.enc.projections["simclr"]
        n = g.shape[0] // V
        if len(x) == n:  # the views share the layer input: sum_v g_v x^T = (sum_v g_v) x^T
            out = proj.transform(g.reshape(V, n, *g.shape[1:]).sum(0), x, token_mask(mask[:n], x))
            return F.normalize(out, dim=-1).cpu().numpy()
        xs = x.reshape(V, n, *x.shape[1:])
        same = x.shape[:2] == mask.shape and all(torch.equal(xs[0], xs[v]) for v in range(1, V))
        if same and all(torch.equal(mask[:n], mask[v * n : (v + 1) * n]) for v in range(1, V)):
            out = proj.transform(g.reshape(V, n, *g.shape[1:]).sum(0), xs[0], mask[:n])
        else:
            out = proj.transform(g, x, token_mask(mask, x)).reshape(V, n, -1).sum(0)
        return F.normalize(out, dim=-1).cpu().numpy()

    def view_embeddings(self, texts: list[str], inputs: dict[str, Any] | None, view_ids: tuple) -> torch.Tensor:
        """Embeddings of views ``view_ids`` of every text, view-major (V * n, d): a full forward pass."""
        enc = self.enc
        if not enc.views.same_tokens:
            return enc.forward(enc.tokenize(enc.views.texts(texts, view_ids)))
        inputs = inputs if inputs is not None else enc.tokenize(texts)
        with enc.views.apply(enc.views.seeds(texts, view_ids)):
            return enc.forward(repeat_rows(inputs, len(view_ids)))
