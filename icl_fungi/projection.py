"""Random projection of per-sample gradients of a linear layer, without forming them where it can.

A scikit-learn-style estimator: ``__init__`` stores arguments, ``fit`` returns ``self``,
learned attributes end in ``_``.

Example:
    >>> import numpy as np
    >>> proj = GradientProjection(n_components=64, random_state=0).fit(n_features=(8, 5))
    >>> proj.transform_matrices(np.ones((2, 8, 5), dtype=np.float32)).shape
    (2, 64)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .parts import SavedPart

__all__ = ["GradientProjection"]

_KINDS = ("tensor_sketch", "sketch", "dense")
_CHUNK_ELEMENTS = 1 << 24  # elements of per-sample gradients formed at once (64 MB)


def _sketch(arrays: dict[str, np.ndarray], prefix: str, size: int, n_components: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The saved ``<prefix>buckets`` and ``<prefix>signs`` of a CountSketch over ``size`` inputs, checked:
    ``size`` buckets in ``0..n_components-1`` and ``size`` signs of +-1."""
    buckets, signs = arrays.get(f"{prefix}buckets"), arrays.get(f"{prefix}signs")
    what = f"tensor sketch ({prefix[:-1]}s)" if prefix else "projection"
    if buckets is None or signs is None or buckets.shape != (size,) or signs.shape != (size,):
        raise ValueError(f"saved {what} does not match the target layer's shape")
    if buckets.dtype.kind not in "iu" or signs.dtype.kind != "i" or buckets.min() < 0 or buckets.max() >= n_components \
            or not np.isin(signs, (-1, 1)).all():
        raise ValueError(f"saved {what} holds out-of-range buckets or signs")
    return torch.from_numpy(buckets.astype(np.int64)), torch.from_numpy(signs.astype(np.int8))


class GradientProjection(SavedPart):
    """Seeded random projection of per-sample linear-layer gradients.

    The gradient of a linear layer ``y = W x + b`` for one sample is
    ``G = sum_t g_t [x_t; 1]^T`` (``g_t`` the gradient at the output of token ``t``).
    ``G`` has ``d_out * (d_in + 1)`` entries (weight and bias). This class maps its
    flattened form to ``n_components`` dimensions while preserving inner products
    in expectation, and never holds more than ``max_bytes`` of projection state.

    kinds:
        ``"tensor_sketch"``: a CountSketch of ``G`` whose hash of entry ``(i, j)`` is
            ``(h1(i) + h2(j)) mod n_components`` with sign ``s1(i) s2(j)``. Because ``G`` is a sum
            of outer products, its sketch is ``sum_t IFFT(FFT(C1 g_t) * FFT(C2 x_t))``: ``G`` is
            never formed. Memory O(d_out + d_in); cost per token O(d_out + d_in + D log D)
            instead of O(d_out * d_in). Unbiased for inner products.
        ``"sketch"``: a signed hashing (CountSketch) projection: each gradient entry
            is added, with a seeded random sign, to one seeded random output
            coordinate. Memory is O(d_out * d_in) integers; cost O(d_out * d_in) per
            sample. Unbiased for inner products.
        ``"dense"``: a dense Rademacher (+-1 / sqrt(n_components)) matrix as in the
            FUNGI paper, generated in seeded column blocks. Blocks are kept up to
            ``max_bytes`` and regenerated on every call beyond that.

    Example:
        >>> p = GradientProjection(n_components=16, kind="dense", random_state=1)
        >>> p.fit(n_features=(4, 3)).n_features_
        16
    """

    def __init__(
        self,
        n_components: int = 384,
        *,
        kind: str = "sketch",
        max_bytes: int = 256 * 1024 * 1024,
        random_state: int = 0,
    ) -> None:
        self.n_components = n_components
        self.kind = kind
        self.max_bytes = max_bytes
        self.random_state = random_state

    # ------------------------------------------------------------------ fitting
    def fit(self, X: object = None, *, n_features: tuple[int, int]) -> GradientProjection:
        """Draw the projection for gradients of shape ``n_features = (d_out, d_in + 1)``."""
        if self.kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {self.kind!r}")
        if not isinstance(self.n_components, int) or self.n_components <= 0:
            raise ValueError(f"n_components must be a positive int, got {self.n_components!r}")
        rows, cols = (int(v) for v in n_features)
        if rows <= 0 or cols <= 0:
            raise ValueError(f"n_features must be positive, got {n_features!r}")
        self.shape_ = (rows, cols)
        self.n_features_ = self.n_components
        total = rows * cols
        if self.kind == "tensor_sketch":
            gen = torch.Generator().manual_seed(int(self.random_state))
            self.row_buckets_ = torch.randint(0, self.n_components, (rows,), generator=gen)
            self.row_signs_ = torch.randint(0, 2, (rows,), generator=gen, dtype=torch.int8) * 2 - 1
            self.col_buckets_ = torch.randint(0, self.n_components, (cols,), generator=gen)
            self.col_signs_ = torch.randint(0, 2, (cols,), generator=gen, dtype=torch.int8) * 2 - 1
        elif self.kind == "sketch":
            gen = torch.Generator().manual_seed(int(self.random_state))
            self.buckets_ = torch.randint(0, self.n_components, (total,), generator=gen)
            self.signs_ = torch.randint(0, 2, (total,), generator=gen, dtype=torch.int8) * 2 - 1
            self._cols_per_block = total
        else:
            bytes_per_col = 4 * self.n_components
            if total * bytes_per_col <= self.max_bytes:
                cols_per_block = total  # the whole matrix fits: one cached block
            else:  # one cached block of half the budget plus one transient block
                cols_per_block = max(1, self.max_bytes // (2 * bytes_per_col))
            self._cols_per_block = cols_per_block
            self.n_blocks_ = math.ceil(total / cols_per_block)
            self._cache = {0: self._dense_block(0)}
        return self

    def _dense_block(self, b: int) -> torch.Tensor:
        total = self.shape_[0] * self.shape_[1]
        lo = b * self._cols_per_block
        hi = min(total, lo + self._cols_per_block)
        gen = torch.Generator().manual_seed(int(self.random_state) * 1_000_003 + b)
        block = torch.randint(0, 2, (hi - lo, self.n_components), generator=gen, dtype=torch.int8)
        return (block.to(torch.float32) * 2 - 1) / math.sqrt(self.n_components)

    # -------------------------------------------------------------- persistence
    def config(self) -> dict[str, Any]:
        """Settings and the gradient shape fitted for (JSON-ready)."""
        self._check_fitted()
        return {"n_components": self.n_components, "kind": self.kind, "max_bytes": self.max_bytes,
                "random_state": self.random_state, "shape": list(self.shape_)}

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The sketches' buckets and signs (none for the dense kind: it is regenerated from its seed)."""
        self._check_fitted()
        if self.kind == "sketch":
            return {"buckets": self.buckets_.numpy().astype(np.int32), "signs": self.signs_.numpy()}
        if self.kind == "tensor_sketch":
            return {"row_buckets": self.row_buckets_.numpy().astype(np.int32), "row_signs": self.row_signs_.numpy(),
                    "col_buckets": self.col_buckets_.numpy().astype(np.int32), "col_signs": self.col_signs_.numpy()}
        return {}

    @classmethod
    def from_state(cls, config: dict[str, Any], arrays: dict[str, np.ndarray], *,
                   n_features: tuple[int, int]) -> GradientProjection:
        """A fitted projection from its config and arrays, for gradients of shape ``n_features``."""
        try:
            proj = cls(config["n_components"], kind=config["kind"], max_bytes=config["max_bytes"],
                       random_state=config["random_state"])
            shape = tuple(config["shape"])
        except (KeyError, TypeError) as err:
            raise ValueError(f"projection config is invalid: {err!r}") from None
        if shape != tuple(n_features):
            raise ValueError(f"saved projection is for gradients of shape {shape}, the target layer's is {tuple(n_features)}")
        proj.fit(n_features=n_features)
        if proj.kind == "sketch":
            total = n_features[0] * n_features[1]
            proj.buckets_, proj.signs_ = _sketch(arrays, "", total, proj.n_components)
        elif proj.kind == "tensor_sketch":
            for part, size in (("row", n_features[0]), ("col", n_features[1])):
                buckets, signs = _sketch(arrays, f"{part}_", size, proj.n_components)
                setattr(proj, f"{part}_buckets_", buckets)
                setattr(proj, f"{part}_signs_", signs)
        return proj

    # ---------------------------------------------------------------- transform
    def _check_fitted(self) -> None:
        if not hasattr(self, "shape_"):
            raise RuntimeError("GradientProjection is not fitted; call fit(n_features=...) first")

    def _project_flat(self, flat: torch.Tensor, col_offset: int, out: torch.Tensor) -> None:
        """Add the projection of flattened gradient columns [col_offset, +n) into ``out``."""
        n = flat.shape[1]
        if self.kind == "sketch":
            idx = self.buckets_[col_offset : col_offset + n]
            sgn = self.signs_[col_offset : col_offset + n].to(flat.dtype)
            out.index_add_(1, idx.to(flat.device), flat * sgn.to(flat.device))
            return
        pos = col_offset
        end = col_offset + n
        while pos < end:
            b = pos // self._cols_per_block
            blo = b * self._cols_per_block
            block = self._cache.get(b)
            if block is None:
                block = self._dense_block(b)
            bhi = blo + block.shape[0]
            hi = min(end, bhi)
            out += flat[:, pos - col_offset : hi - col_offset] @ block[pos - blo : hi - blo].to(flat.device)
            pos = hi

    def transform_matrices(self, G: np.ndarray | torch.Tensor) -> np.ndarray:
        """Project explicit per-sample gradient matrices ``G`` of shape (n, d_out, d_in + 1)."""
        self._check_fitted()
        G = torch.as_tensor(G, dtype=torch.float32)
        if G.ndim != 3 or tuple(G.shape[1:]) != self.shape_:
            raise ValueError(f"expected gradients of shape (n, {self.shape_[0]}, {self.shape_[1]}), got {tuple(G.shape)}")
        out = torch.zeros(G.shape[0], self.n_components)
        if self.kind == "tensor_sketch":  # the equivalent CountSketch of the flattened matrix
            idx = (self.row_buckets_[:, None] + self.col_buckets_[None, :]) % self.n_components
            sign = (self.row_signs_[:, None] * self.col_signs_[None, :]).to(torch.float32)
            out.index_add_(1, idx.reshape(-1), (G * sign).reshape(G.shape[0], -1))
            return out.numpy()
        self._project_flat(G.reshape(G.shape[0], -1), 0, out)
        return out.numpy()

    def _tensor_sketch(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``sum_t TS(g_t (x) [x_t; 1])`` for g (n, T, d_out), x (n, T, d_in): count sketches, FFT, product, sum, IFFT."""
        D, dev = self.n_components, g.device
        n, T, _ = g.shape
        cg = torch.zeros(n, T, D, dtype=torch.float32, device=dev)
        cg.index_add_(2, self.row_buckets_.to(dev), g.float() * self.row_signs_.to(dev, torch.float32))
        cx = torch.zeros(n, T, D, dtype=torch.float32, device=dev)
        d_in = x.shape[-1]
        cx.index_add_(2, self.col_buckets_[:d_in].to(dev), x.float() * self.col_signs_[:d_in].to(dev, torch.float32))
        cx[..., int(self.col_buckets_[d_in])] += float(self.col_signs_[d_in])  # the bias' constant input 1
        spectrum = (torch.fft.rfft(cg, dim=-1) * torch.fft.rfft(cx, dim=-1)).sum(dim=1)
        return torch.fft.irfft(spectrum, n=D, dim=-1)

    def transform(self, grad_output: torch.Tensor, layer_input: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Project per-sample gradients of a linear layer from its hooks' tensors.

        ``grad_output``: (n, T, d_out); ``layer_input``: (n, T, d_in); ``mask``: (n, T).
        Returns (n, n_components). The gradient of the bias is included through an
        appended constant input of 1.
        """
        self._check_fitted()
        n, T, d_out = grad_output.shape
        if mask is not None:
            grad_output = grad_output * mask[..., None].to(grad_output.dtype)
        if self.kind == "tensor_sketch":
            if (d_out, layer_input.shape[-1] + 1) != self.shape_:
                raise ValueError(f"gradient shape {(d_out, layer_input.shape[-1] + 1)} does not match the fitted shape {self.shape_}")
            return self._tensor_sketch(grad_output, layer_input)
        ones = torch.ones(n, T, 1, dtype=layer_input.dtype, device=layer_input.device)
        xa = torch.cat([layer_input, ones], dim=-1)
        d_in1 = xa.shape[-1]
        if (d_out, d_in1) != self.shape_:
            raise ValueError(f"gradient shape {(d_out, d_in1)} does not match the fitted shape {self.shape_}")
        out = torch.zeros(n, self.n_components, dtype=torch.float32, device=grad_output.device)
        rows_per_chunk = max(1, _CHUNK_ELEMENTS // max(1, n * d_in1))
        for r0 in range(0, d_out, rows_per_chunk):
            r1 = min(d_out, r0 + rows_per_chunk)
            G = torch.einsum("nto,nti->noi", grad_output[..., r0:r1], xa)
            self._project_flat(G.reshape(n, -1), r0 * d_in1, out)
        return out
