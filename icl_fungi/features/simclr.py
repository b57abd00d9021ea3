"""The SimCLR loss of the ``simclr`` block: InfoNCE between a text's views against a fixed bank of negatives.

Example:
    >>> import torch, torch.nn.functional as F
    >>> loss = SimCLRLoss(temperature=0.1).fit(F.normalize(torch.randn(16, 8), dim=-1))
    >>> loss.loss(F.normalize(torch.randn(2, 3, 8), dim=-1)).shape   # (views, texts, dim) -> per text
    torch.Size([3])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..parts import SavedPart

__all__ = ["SimCLRLoss"]


class SimCLRLoss(SavedPart):
    """InfoNCE over ``V`` views of each text, against a bank of negatives fitted on the pool.

    Args:
        temperature: InfoNCE temperature.
        n_negatives: size of the bank (clamped to the pool).
        seed: seed of the pool texts chosen as negatives.
    """

    def __init__(self, *, temperature: float = 0.07, n_negatives: int = 256, seed: int = 0) -> None:
        self.temperature = float(temperature)
        self.n_negatives = int(n_negatives)
        self.seed = int(seed)
        self.negatives_: torch.Tensor | None = None

    @property
    def fitted(self) -> bool:
        """True once the bank of negatives is set."""
        return self.negatives_ is not None

    def choose_negatives(self, texts: Sequence[str]) -> list[str]:
        """The seeded pool texts whose views make the bank (in pool order)."""
        rng = np.random.default_rng(self.seed)
        n = min(self.n_negatives, len(texts))
        return [texts[i] for i in sorted(rng.choice(len(texts), size=n, replace=False))]

    def fit(self, negative_embeddings: torch.Tensor) -> SimCLRLoss:
        """Set the bank from the embeddings (n, d) of one view of each chosen negative."""
        self.negatives_ = F.normalize(negative_embeddings.detach(), dim=-1)
        return self

    def loss(self, z: torch.Tensor) -> torch.Tensor:
        """Per-text InfoNCE (n,) over its unit views ``z`` (V, n, d): for each anchor view and each other view."""
        if self.negatives_ is None:
            raise RuntimeError("the SimCLR loss has no negatives; fit it on the pool first")
        V = z.shape[0]
        tau = self.temperature
        neg = z @ self.negatives_.T / tau  # (V, n, N)
        pos = torch.einsum("vnd,wnd->nvw", z, z) / tau  # (n, V, V)
        eye = torch.eye(V, dtype=torch.bool, device=z.device)
        pos = pos.masked_fill(eye, float("-inf"))
        denom = torch.logsumexp(torch.cat([pos, neg.permute(1, 0, 2)], dim=-1), dim=-1)  # (n, V)
        terms = (pos - denom[..., None]).masked_fill(eye, 0.0)  # -(s_vw - log sum) for w != v
        return -terms.sum(dim=(1, 2)) / (V * (V - 1))

    def to(self, device: torch.device | str) -> SimCLRLoss:
        """Move the bank to ``device``."""
        if self.negatives_ is not None:
            self.negatives_ = self.negatives_.to(device)
        return self

    # ------------------------------------------------------------------ state
    def config(self) -> dict[str, Any]:
        """Settings (JSON-ready)."""
        return {"temperature": self.temperature, "n_negatives": self.n_negatives, "seed": self.seed}

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The bank of negatives (unit vectors)."""
        if self.negatives_ is None:
            raise RuntimeError("the SimCLR loss has no negatives; fit it on the pool first")
        return {"negatives": self.negatives_.detach().cpu().numpy()}

    @classmethod
    def from_state(cls, config: dict[str, Any], arrays: dict[str, np.ndarray], *, dim: int) -> SimCLRLoss:
        """A loss from its :meth:`config` and arrays; its bank must hold ``dim``-sized unit vectors
        (``SimCLRLoss.load(path, dim=...)`` reads both from a folder)."""
        try:
            loss = cls(temperature=config["temperature"], n_negatives=config["n_negatives"], seed=config["seed"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"SimCLR config is invalid: {err!r}") from None
        neg = arrays.get("negatives")
        if neg is None or neg.ndim != 2 or neg.shape[1] != dim or not 1 <= neg.shape[0] <= loss.n_negatives or neg.dtype.kind != "f":
            raise ValueError(f"SimCLR negatives must be a float array of shape (1..{loss.n_negatives}, {dim}), got "
                             f"{None if neg is None else neg.shape}")
        if not np.allclose(np.linalg.norm(neg, axis=1), 1.0, atol=1e-3):
            raise ValueError("SimCLR negatives must be unit vectors")
        loss.negatives_ = torch.from_numpy(np.ascontiguousarray(neg, dtype=np.float32))
        return loss
