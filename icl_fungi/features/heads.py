"""KL heads: the distribution ``p(z)`` whose KL to the uniform distribution gives the ``kl`` block.

A head maps a unit embedding ``z`` to probabilities over ``C`` outcomes; the loss of a batch is
``sum_i sum_c p_ic log p_ic`` (``KL(p_i || uniform) - log C``, i.e. minus the entropy), and the
``kl`` feature is its per-sample gradient at the target layer. Heads are fitted on unit
embeddings of a pool sample (and, for the label heads, their labels) and save their own state.

Four heads ship, registered by name for :class:`~icl_fungi.features.FeatureConfig`'s ``kl_head``:
``"labels"`` (one row per pool label: the unit mean of its embeddings; the default),
``"neighbors"`` (soft k-NN: the sample's own rows, probabilities summed per label),
``"prototypes"`` (spherical k-means centroids, no labels) and ``"random"`` (the paper's seeded
Gaussian head). A head of your own is one subclass and one call:

Example:
    >>> import torch
    >>> class Farthest(KLHead):
    ...     name = "farthest"                      # what FeatureConfig(kl_head=...) names
    ...     def fit_rows(self, z, labels=None):    # z: (n, d) unit (and centred, if self.centered)
    ...         self.rows_ = -z[:8]
    >>> _ = register_kl_head(Farthest)
    >>> head = kl_head_class("farthest")(dim=4).fit(torch.eye(4).repeat(3, 1))
    >>> head.rows_.shape, float(head.loss(torch.eye(4)[:1])) < 0
    (torch.Size([8, 4]), True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..parts import SavedPart
from ..registry import Registry

__all__ = [
    "KLHead",
    "LabelMeanHead",
    "NeighborsHead",
    "PrototypeHead",
    "RandomHead",
    "head_sample",
    "is_categorical",
    "kl_head_class",
    "register_kl_head",
    "registered_kl_heads",
    "spherical_kmeans",
]

_SAMPLE = 4096  # pool texts whose embeddings fit a head
_SELF_MATCH = 1.0 - 1e-4  # a "neighbors" row this close to the text is the text itself (or an identical one)


def spherical_kmeans(x: torch.Tensor, k: int, *, seed: int = 0, iters: int = 25) -> torch.Tensor:
    """Unit-norm centroids of the unit vectors ``x`` (n, d) by seeded spherical k-means (k clamped to n)."""
    k = min(k, x.shape[0])
    gen = torch.Generator().manual_seed(seed)
    centroids = x[torch.randperm(x.shape[0], generator=gen)[:k]].clone()
    for _ in range(iters):
        assign = (x @ centroids.T).argmax(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        empty = counts == 0
        sums[empty] = centroids[empty]  # keep a centroid that lost all its points
        centroids = F.normalize(sums, dim=-1)
    return centroids


def is_categorical(labels: Sequence | None, n: int) -> bool:
    """True when ``labels`` look like categories: at least 2 distinct, about 2 or more texts each."""
    if labels is None:
        return False
    return 2 <= len(set(labels)) <= n // 2


def head_sample(n: int, labels: Sequence | None = None, *, seed: int = 0, size: int = _SAMPLE) -> list[int]:
    """The seeded pool sample (at most ``size`` texts) a KL head is fitted on, sorted; stratified by ``labels``
    when given (every label keeps its share, at least one text)."""
    rng = np.random.default_rng(seed)
    if labels is None or n <= size:
        return sorted(rng.choice(n, size=min(n, size), replace=False).tolist())
    groups: dict[Any, list[int]] = {}
    for i, lab in enumerate(labels):
        groups.setdefault(lab, []).append(i)
    if len(groups) > size:  # free-text labels: the head falls back to prototypes anyway
        return sorted(rng.choice(n, size=size, replace=False).tolist())
    rows: list[int] = []
    for members in groups.values():
        m = min(len(members), max(1, round(size * len(members) / n)))
        rows += rng.choice(members, size=m, replace=False).tolist()
    return sorted(rows)


def _label_ids(labels: Sequence) -> torch.Tensor:
    """Label ids 0..C-1 in first-seen order."""
    classes: dict[Any, int] = {}
    return torch.tensor([classes.setdefault(lab, len(classes)) for lab in labels], dtype=torch.long)


class KLHead(SavedPart):
    """Base class of KL heads (see the module docstring).

    Subclasses set ``name`` and implement :meth:`fit_rows` (store ``rows_``, shape (C, dim)); the
    default :meth:`logits` are the cosines to the rows over the temperature. Override :meth:`logits`
    or :meth:`loss` for other distributions, and :meth:`state_arrays` / :meth:`load_state` for more state.

    Args:
        dim: embedding size.
        temperature: softmax temperature (``None``: ``default_temperature``).
        center: work on pool-centred embeddings (``None``: ``centered_by_default``).
        n_rows: rows of heads that choose their size (k-means, random).
        seed: seed of any randomness in the head.
    """

    name: ClassVar[str] = ""
    needs_fit: ClassVar[bool] = True  # False: the head is fixed at construction (no pool needed)
    needs_labels: ClassVar[bool] = False
    default_temperature: ClassVar[float] = 0.07
    centered_by_default: ClassVar[bool] = False

    def __init__(self, dim: int, *, temperature: float | None = None, center: bool | None = None, n_rows: int = 256,
                 seed: int = 0) -> None:
        self.dim = int(dim)
        self.temperature = float(self.default_temperature if temperature is None else temperature)
        self.centered = bool(self.centered_by_default if center is None else center)
        self.n_rows = int(n_rows)
        self.seed = int(seed)
        self.rows_: torch.Tensor | None = None
        self.center_: torch.Tensor | None = None  # the fit sample's mean unit embedding (centered heads)

    @property
    def fitted(self) -> bool:
        """True once the head has its rows."""
        return self.rows_ is not None

    def fit(self, embeddings: torch.Tensor, labels: Sequence | None = None) -> KLHead:
        """Fit on a pool sample's embeddings (n, dim) and, for label heads, their ``labels``."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"expected embeddings of shape (n, {self.dim}), got {tuple(embeddings.shape)}")
        z = F.normalize(embeddings.float().cpu(), dim=-1)
        self.center_ = None
        if self.centered:
            self.center_ = z.mean(dim=0)
            z = F.normalize(z - self.center_, dim=-1)
        self.fit_rows(z, labels)
        if self.rows_ is None:
            raise RuntimeError(f"{type(self).__name__}.fit_rows did not set rows_")
        return self

    def fit_rows(self, z: torch.Tensor, labels: Sequence | None = None) -> None:
        """Set ``rows_`` from the unit (and, when ``centered``, centred) sample embeddings ``z``."""
        raise NotImplementedError

    def prepare(self, z: torch.Tensor) -> torch.Tensor:
        """Unit embeddings as the head sees them (centred on the pool mean when ``centered``)."""
        if self.center_ is not None:
            z = F.normalize(z - self.center_, dim=-1)
        return z

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Logits (batch, C) for prepared unit embeddings ``z``: cosines to the rows over the temperature."""
        return z @ self.rows_.T / self.temperature

    def loss(self, z: torch.Tensor) -> torch.Tensor:
        """``sum_i sum_c p_ic log p_ic`` with ``p = softmax(logits)``, over the batch of unit embeddings ``z``."""
        if self.rows_ is None:
            raise RuntimeError(f"the {self.name!r} KL head is not fitted; fit it on pool embeddings first")
        logp = F.log_softmax(self.logits(self.prepare(z)), dim=-1)
        return (logp.exp() * logp).sum()

    def to(self, device: torch.device | str) -> KLHead:
        """Move the head's tensors to ``device``."""
        for key, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, key, value.to(device))
        return self

    # ------------------------------------------------------------------ state
    def config(self) -> dict[str, Any]:
        """The head's settings (JSON-ready)."""
        return {"name": self.name, "dim": self.dim, "temperature": self.temperature, "centered": self.centered,
                "n_rows": self.n_rows, "seed": self.seed}

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Fitted arrays to save."""
        if self.rows_ is None:
            raise RuntimeError(f"the {self.name!r} KL head is not fitted; fit it on pool embeddings first")
        arrays = {"rows": self.rows_.detach().cpu().numpy()}
        if self.center_ is not None:
            arrays["center"] = self.center_.detach().cpu().numpy()
        return arrays

    def load_state(self, arrays: dict[str, np.ndarray]) -> KLHead:
        """Restore :meth:`state_arrays` output, checking shapes."""
        rows = arrays.get("rows")
        if rows is None or rows.ndim != 2 or rows.shape[1] != self.dim or rows.shape[0] < 1 or rows.dtype.kind != "f":
            raise ValueError(f"KL head rows must be a float array of shape (n, {self.dim}), got "
                             f"{None if rows is None else (rows.shape, rows.dtype.name)}")
        self.rows_ = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
        center = arrays.get("center")
        if self.centered != (center is not None):
            raise ValueError(f"KL head: centered={self.centered} but the saved state {'has' if center is not None else 'lacks'} a centre")
        if center is not None:
            if center.shape != (self.dim,) or center.dtype.kind != "f":
                raise ValueError(f"KL head centre must have shape ({self.dim},), got {center.shape}")
            self.center_ = torch.from_numpy(np.ascontiguousarray(center, dtype=np.float32))
        return self

    @classmethod
    def from_state(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> KLHead:
        """A head from its :meth:`config` and :meth:`state_arrays`, its class looked up by name in the registry
        (``KLHead.load(path)`` reads both from a folder)."""
        head_cls = kl_head_class(config.get("name"))
        try:
            head = head_cls(config["dim"], temperature=config["temperature"], center=config["centered"],
                            n_rows=config["n_rows"], seed=config["seed"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"KL head config is invalid: {err!r}") from None
        return head.load_state(arrays)


_HEADS = Registry("KL head", "name", base=KLHead,
                  hint="register your own with icl_fungi.register_kl_head before building or loading")


def register_kl_head(cls: type[KLHead]) -> type[KLHead]:
    """Register a :class:`KLHead` subclass under its ``name`` (usable as a decorator)."""
    return _HEADS.register(cls)


def registered_kl_heads() -> tuple[str, ...]:
    """Names of the registered KL heads."""
    return _HEADS.names()


def kl_head_class(name: object) -> type[KLHead]:
    """The KL head class registered under ``name``."""
    return _HEADS.get(name)


@register_kl_head
class LabelMeanHead(KLHead):
    """One row per pool label: the unit mean of its (centred) unit embeddings; ``p`` = softmax over labels."""

    name = "labels"
    needs_labels = True
    centered_by_default = True

    def fit_rows(self, z: torch.Tensor, labels: Sequence | None = None) -> None:
        ids = _label_ids(labels)
        sums = torch.zeros(int(ids.max()) + 1, z.shape[1]).index_add_(0, ids, z)
        self.rows_ = F.normalize(sums, dim=-1)


@register_kl_head
class NeighborsHead(KLHead):
    """Soft k-NN: the rows are the sample's own unit embeddings; their softmax is summed per label.

    A text never matches its own row (nor an identical text's): cosines above ``1 - 1e-4`` are masked.
    """

    name = "neighbors"
    needs_labels = True
    default_temperature = 0.05
    centered_by_default = True

    def __init__(self, dim: int, **kwargs: Any) -> None:
        super().__init__(dim, **kwargs)
        self.row_labels_: torch.Tensor | None = None  # label id (0..C-1) of each row

    def fit_rows(self, z: torch.Tensor, labels: Sequence | None = None) -> None:
        self.rows_, self.row_labels_ = z, _label_ids(labels)

    def label_probabilities(self, z: torch.Tensor) -> torch.Tensor:
        """``p`` (batch, labels): the softmax over the rows summed per label, self-matches masked."""
        logits = z @ self.rows_.T
        logits = logits - 1e4 * (logits.detach() > _SELF_MATCH)
        p = F.softmax(logits / self.temperature, dim=-1)
        n_labels = int(self.row_labels_.max()) + 1
        return torch.zeros(len(z), n_labels, device=z.device, dtype=p.dtype).index_add_(1, self.row_labels_, p)

    def loss(self, z: torch.Tensor) -> torch.Tensor:
        if self.rows_ is None:
            raise RuntimeError("the 'neighbors' KL head is not fitted; fit it on pool embeddings first")
        probs = self.label_probabilities(self.prepare(z))
        return (probs * torch.log(probs.clamp_min(1e-12))).sum()

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {**super().state_arrays(), "row_labels": self.row_labels_.cpu().numpy()}

    def load_state(self, arrays: dict[str, np.ndarray]) -> NeighborsHead:
        super().load_state(arrays)
        ids = arrays.get("row_labels")
        if ids is None or ids.shape != (self.rows_.shape[0],) or ids.dtype.kind not in "iu" or ids.min() < 0:
            raise ValueError(f"neighbors head row_labels must be ({self.rows_.shape[0]},) non-negative ints")
        self.row_labels_ = torch.from_numpy(ids.astype(np.int64))
        return self


@register_kl_head
class PrototypeHead(KLHead):
    """``n_rows`` unit centroids of seeded spherical k-means on the sample (no labels used)."""

    name = "prototypes"

    def fit_rows(self, z: torch.Tensor, labels: Sequence | None = None) -> None:
        self.rows_ = spherical_kmeans(z, self.n_rows, seed=self.seed)


@register_kl_head
class RandomHead(KLHead):
    """The FUNGI paper's head: a fixed seeded Gaussian layer of ``n_rows`` rows, temperature 15."""

    name = "random"
    needs_fit = False
    default_temperature = 15.0

    def __init__(self, dim: int, **kwargs: Any) -> None:
        super().__init__(dim, **kwargs)
        if self.centered:
            raise ValueError("the random KL head is fixed: it cannot be centred on the pool")
        gen = torch.Generator().manual_seed(self.seed)
        self.rows_ = torch.randn(self.n_rows, self.dim, generator=gen) / self.dim**0.5

    def fit_rows(self, z: torch.Tensor, labels: Sequence | None = None) -> None:
        """Nothing to fit: the rows are fixed by the seed."""
