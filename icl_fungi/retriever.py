"""``ICLRetriever``: pick in-context examples for a query with FUNGI features.

Example:
    >>> from icl_fungi import ICLRetriever                           # doctest: +SKIP
    >>> r = ICLRetriever.from_dataset("train.csv", text_column="text", label_column="category")  # doctest: +SKIP
    >>> [ex.label for ex in r.retrieve("I still haven't received my card", k=3)]  # doctest: +SKIP
    ['card_arrival', 'card_arrival', 'card_delivery_estimate']
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import hashlib
import json
import logging
import os
import shutil
import threading
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .data import Label, check_labels, check_texts, load_pool
from .encoder import DEFAULT_FEATURES, DEFAULT_MODEL, FeatureConfig, FungiEncoder
from .index import VectorIndex
from .projection import PCA
from .selection import Selection, select

if TYPE_CHECKING:
    from .prompt import PromptTemplate

__all__ = ["ICLRetriever", "RetrievedExample"]

ORDERS = ("similar_last", "similar_first", "random")
# measured on the dev split with the default label-mean KL head (eval/results/ablate_quality/dev-heads.md,
# dev-vote.md): kl 0.3 is the best P@20 / 1-NN / vote trade-off on the full pool (larger weights raise P@20 and
# lower the vote) and gains on every metric on small pools (dev-small-pools.md); SimCLR at 0.3 is about neutral
DEFAULT_BLOCK_WEIGHTS = {"embedding": 1.0, "kl": 0.3, "simclr": 0.3}

logger = logging.getLogger(__name__)

FORMAT = "icl-fungi-retriever"
FORMAT_VERSION = 1
_MANIFEST = "manifest.json"
_POOL = "pool.json"
_HNSW = "hnsw.bin"


@dataclasses.dataclass(frozen=True)
class RetrievedExample:
    """One retrieved pool example: ``index`` is its position in the pool."""

    text: str
    label: Label
    score: float
    index: int


def _check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k <= 0:
        raise ValueError(f"k must be >= 1, got {k}")
    return int(k)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=32)
def _load_template(name: str) -> PromptTemplate:
    from .prompt import PromptTemplate

    return PromptTemplate.load(name)


def _versions() -> dict[str, str]:
    import hnswlib
    import sentence_transformers
    import transformers

    from . import __version__

    return {
        "icl_fungi": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "hnswlib": getattr(hnswlib, "__version__", "unknown"),
        "numpy": np.__version__,
    }


class ICLRetriever:
    """A labelled example pool, its FUNGI feature vectors and a cosine index.

    Build one with :meth:`from_dataset` (or construct it with an encoder and call
    :meth:`fit`), query it with :meth:`retrieve`, persist it with :meth:`save` /
    :meth:`load`. ``features=("embedding",)`` gives a plain-embedding retriever
    through the same code path (PCA included), for fair comparisons.

    Args:
        encoder: the :class:`FungiEncoder` producing feature blocks.
        pca_components: PCA output size (default: the embedding dimension), clamped
            to the pool size.
        whiten: whiten the PCA output.
        block_weights: multiplier per feature block before concatenation (default: embedding 1,
            kl 0.3, simclr 0.3, measured on the dev split).
        index: a configured :class:`VectorIndex` (default settings otherwise).
        fit_weights: ``"loo"`` chooses the gradient blocks' weights by leave-one-out
            P@20 on the labelled pool itself (no held-out labels used).
    """

    def __init__(
        self,
        encoder: FungiEncoder,
        *,
        pca_components: int | None = None,
        whiten: bool = False,
        block_weights: dict[str, float] | None = None,
        index: VectorIndex | None = None,
        fit_weights: str | None = None,
    ) -> None:
        if fit_weights not in (None, "loo"):
            raise ValueError(f"fit_weights must be None or 'loo', got {fit_weights!r}")
        self.fit_weights = fit_weights
        self.encoder = encoder
        self.pca = PCA(pca_components or encoder.dim, whiten=whiten)
        weights = dict(block_weights or {})
        unknown = set(weights) - set(encoder.config.features)
        if unknown:
            raise ValueError(f"block_weights names blocks not in features: {sorted(unknown)}")
        self.block_weights = {f: float(weights.get(f, DEFAULT_BLOCK_WEIGHTS[f])) for f in encoder.config.features}
        self.index = index if index is not None else VectorIndex(random_state=encoder.config.seed)
        self._texts: list[str] = []
        self._labels: list[Label] = []
        self._write_lock = threading.Lock()
        self._label_cache: tuple[list | None, list] = (None, [])
        self.block_means_: dict[str, np.ndarray] = {}
        self.n_truncated_ = 0

    # ------------------------------------------------------------ building
    @classmethod
    def from_dataset(
        cls,
        data: Any,
        *,
        text_column: str = "text",
        label_column: str = "label",
        split: str | None = None,
        model: Any = DEFAULT_MODEL,
        features: Sequence[str] = DEFAULT_FEATURES,
        pca_components: int | None = None,
        whiten: bool = False,
        block_weights: dict[str, float] | None = None,
        fit_weights: str | None = None,
        batch_size: int = 32,
        device: str | None = None,
        show_progress_bar: bool | None = None,
        seed: int = 0,
        **feature_options: Any,
    ) -> ICLRetriever:
        """Load a pool (see :func:`icl_fungi.data.load_pool`) and build the retriever.

        ``feature_options`` are :class:`FeatureConfig` fields (e.g. ``kl_temperature``).
        """
        texts, labels = load_pool(data, text_column=text_column, label_column=label_column, split=split)
        config = FeatureConfig(features=tuple(features), seed=seed, **feature_options)
        encoder = FungiEncoder(model, config, batch_size=batch_size, device=device, show_progress_bar=show_progress_bar)
        retriever = cls(encoder, pca_components=pca_components, whiten=whiten, block_weights=block_weights,
                        fit_weights=fit_weights)
        return retriever.fit(texts, labels)

    def fit(self, texts: Sequence[str], labels: Sequence[Label]) -> ICLRetriever:
        """Encode the pool, fit the PCA and build the index (replaces any pool)."""
        texts = check_texts(texts)
        if not texts:
            raise ValueError("the example pool is empty")
        labels = check_labels(labels, len(texts))
        n_dup = len(texts) - len(set(texts))
        if n_dup:
            logger.warning("the pool holds %d duplicate text(s); they are kept as separate examples", n_dup)
        blocks = self.encoder.fit_encode(texts, labels)
        self.n_truncated_ = self.encoder.n_truncated_
        if self.n_truncated_:
            logger.warning(
                "%d pool text(s) exceed the model's %d-token limit and were truncated",
                self.n_truncated_,
                self.encoder.max_seq_length,
            )
        if self.encoder.config.center_blocks:
            self.block_means_ = {f: b.mean(axis=0) for f, b in blocks.items()}
        if self.fit_weights == "loo":
            self.block_weights = self._loo_weights(blocks, labels)
        combined = self._concat(blocks)
        vectors = self.pca.fit_transform(combined)
        with self._write_lock:
            self._texts, self._labels = texts, labels
            self.index.build(vectors)
        return self

    def _loo_weights(self, blocks: dict[str, np.ndarray], labels: list, k: int = 20, n_queries: int = 2000) -> dict[str, float]:
        """Gradient-block weights maximising leave-one-out P@k on the labelled pool (coordinate search)."""
        grid = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)
        weights = dict(self.block_weights)
        grads = [f for f in self.encoder.config.features if f != "embedding"]
        n = len(labels)
        if not grads or n < 3:
            return weights
        lab = np.array([str(x) for x in labels])
        rng = np.random.default_rng(self.encoder.config.seed)
        queries = np.sort(rng.choice(n, size=min(n, n_queries), replace=False))
        kk = min(k, n - 1)

        def score(w: dict[str, float]) -> float:
            v = self._concat(blocks, w).astype(np.float32)
            v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
            hits = 0.0
            for start in range(0, len(queries), 500):
                q = queries[start : start + 500]
                sims = v[q] @ v.T
                sims[np.arange(len(q)), q] = -np.inf  # leave the query itself out
                top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
                hits += float((lab[top] == lab[q][:, None]).sum())
            return hits / (len(queries) * kk)

        best = score(weights)
        self.weight_search_ = [{"weights": dict(weights), "loo_p@k": best}]
        for _ in range(2):
            changed = False
            for f in grads:
                for g in grid:
                    if g == weights[f]:
                        continue
                    trial = {**weights, f: g}
                    sc = score(trial)
                    self.weight_search_.append({"weights": trial, "loo_p@k": sc})
                    if sc > best + 1e-9:
                        best, weights, changed = sc, trial, True
            if not changed:
                break
        logger.info("leave-one-out block weights: %s (P@%d %.4f)", weights, kk, best)
        return weights

    def _concat(self, blocks: dict[str, np.ndarray], weights: dict[str, float] | None = None) -> np.ndarray:
        weights = self.block_weights if weights is None else weights
        parts = []
        for f in self.encoder.config.features:
            b = blocks[f]
            if self.encoder.config.center_blocks:
                b = b - self.block_means_[f]
                b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
            parts.append(weights[f] * b)
        return np.concatenate(parts, axis=1)

    # ------------------------------------------------------------- queries
    def __len__(self) -> int:
        return len(self.index)

    @property
    def texts(self) -> list[str]:
        """Pool texts (a copy)."""
        return list(self._texts)

    @property
    def labels(self) -> list[Label]:
        """Pool labels (a copy)."""
        return list(self._labels)

    @property
    def config(self) -> FeatureConfig:
        """The feature configuration."""
        return self.encoder.config

    def features(self, texts: Sequence[str] | str) -> np.ndarray:
        """The combined, PCA-reduced, L2-normalised vectors the index searches.

        One string gives a 1-D vector; a list gives (n, dim).
        """
        single = isinstance(texts, str)
        batch = check_texts([texts] if single else texts, what="query")
        self._check_built()
        vectors = self.pca.transform(self._concat(self.encoder.encode(batch)))
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors[0] if single else vectors

    def _check_built(self) -> None:
        if not len(self.index):
            raise RuntimeError("the retriever has no pool yet; use from_dataset() or fit()")

    def retrieve(self, query: str, k: int = 20, *, selection: Selection | str | None = None) -> list[RetrievedExample]:
        """The ``k`` pool examples chosen for ``query``, most similar first.

        ``selection`` picks the strategy (see :class:`~icl_fungi.selection.Selection`;
        default: plain top-k). ``k`` larger than the pool returns the whole pool.
        """
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        return self.retrieve_batch([query], k, selection=selection)[0]

    def retrieve_batch(
        self, queries: Sequence[str], k: int = 20, *, selection: Selection | str | None = None
    ) -> list[list[RetrievedExample]]:
        """:meth:`retrieve` for many queries (encoded in batches)."""
        k = _check_k(k)
        sel = Selection.coerce(selection)
        queries = check_texts(queries, what="query")
        if not queries:
            return []
        vectors = self.features(queries)
        if sel.is_plain:
            ids, scores = self.index.query(vectors, k)
            picked = [list(zip(i.tolist(), s.tolist(), strict=True)) for i, s in zip(ids, scores, strict=True)]
            texts, labels = self._texts, self._labels  # read after the query: texts are published before ids
        else:
            with self._write_lock:  # one consistent snapshot of the pool
                texts, labels, pool_vectors = self._texts, self._labels, self.index.vectors_
            picked = [self._select(q, v, k, sel, texts, labels, pool_vectors) for q, v in zip(queries, vectors, strict=True)]
        return [
            sorted((RetrievedExample(texts[i], labels[i], float(s), int(i)) for i, s in row), key=lambda x: (-x.score, x.index))
            for row in picked
        ]

    def _select(self, query: str, vector: np.ndarray, k: int, sel: Selection, texts: list, labels: list,
                pool_vectors: np.ndarray) -> list[tuple[int, float]]:
        n = len(pool_vectors)
        fetch = min(n, sel.fetch_size(k))
        while True:
            ids, scores = self.index.query(vector[None], fetch)
            keep = ids[0] < n  # ignore examples added after the snapshot
            chosen = select(vector, ids[0][keep], scores[0][keep], pool_vectors, labels, k, sel, texts=texts, query=query)
            if len(chosen) >= k or fetch >= n:
                return chosen
            fetch = min(n, fetch * 4)

    def build_prompt(
        self,
        query: str,
        k: int = 20,
        *,
        template: str | PromptTemplate = "classification-completion",
        order: str = "similar_last",
        max_tokens: int | None = None,
        tokenizer: object = None,
        selection: Selection | str | None = None,
        seed: int = 0,
    ) -> str | list[dict[str, str]]:
        """A ready prompt for ``query`` with ``k`` retrieved examples.

        Returns a string for completion templates and a list of ``{"role", "content"}``
        messages for chat templates. ``order``: ``"similar_last"`` (most similar example
        next to the query), ``"similar_first"`` or ``"random"`` (seeded). With
        ``max_tokens``, the least similar examples are dropped until the prompt fits,
        counting with ``tokenizer`` (see :func:`icl_fungi.prompt.make_token_counter`;
        default: ``ceil(characters / 4)``).
        """
        from .prompt import PromptTemplate, make_token_counter, render_prompt

        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        tpl = _load_template(template) if isinstance(template, str) else PromptTemplate.load(template)
        examples = self.retrieve(query, k, selection=selection)  # most similar first
        if order == "similar_last":
            examples = examples[::-1]
        elif order == "random":
            examples = [examples[i] for i in np.random.default_rng(seed).permutation(len(examples))]
        drop_order = sorted(range(len(examples)), key=lambda i: (examples[i].score, -examples[i].index))
        counter = make_token_counter(tokenizer) if max_tokens is not None else None
        prompt, _ = render_prompt(
            tpl, [(x.text, x.label) for x in examples], query,
            labels=self.label_set() if tpl.uses_labels else (),
            max_tokens=max_tokens, counter=counter, drop_order=drop_order,
        )
        return prompt

    def label_set(self) -> list[Label]:
        """The pool's distinct labels, sorted."""
        labels = self._labels
        if self._label_cache[0] is not labels:
            self._label_cache = (labels, sorted(set(labels), key=lambda lab: (str(lab).casefold(), str(lab))))
        return list(self._label_cache[1])

    def add_examples(self, texts: Sequence[str], labels: Sequence[Label]) -> list[int]:
        """Add labelled examples to the pool (the PCA fitted on the pool is kept).

        Returns the new examples' pool positions. Safe while other threads query.
        """
        self._check_built()
        texts = check_texts(texts)
        labels = check_labels(labels, len(texts))
        if not texts:
            return []
        vectors = self.pca.transform(self._concat(self.encoder.encode(texts)))
        with self._write_lock:
            # publish the texts before the index can return their ids
            self._texts = self._texts + texts
            self._labels = self._labels + labels
            ids = self.index.add(vectors)
        return [int(i) for i in ids]

    def label_counts(self) -> dict[Label, int]:
        """Examples per label in the pool."""
        return dict(Counter(self._labels))

    # --------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Save to directory ``path`` (JSON manifest + ``.npy`` arrays + HNSW file).

        Written to a temporary folder next to ``path`` and renamed into place; an
        existing retriever at ``path`` is replaced only once the new one is complete.
        A non-retriever directory at ``path`` is never overwritten.
        """
        self._check_built()
        path = Path(path)
        if path.exists() and not (path / _MANIFEST).is_file():
            raise ValueError(f"{path} exists and is not a saved retriever; refusing to overwrite it")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            with self._write_lock:
                arrays = self._state_arrays()
                files: dict[str, str] = {}
                for name, arr in arrays.items():
                    np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr), allow_pickle=False)
                (tmp / _POOL).write_text(json.dumps({"texts": self._texts, "labels": self._labels}, ensure_ascii=False))
                has_hnsw = self.index.save_hnsw(tmp / _HNSW)
                for f in sorted(tmp.iterdir()):
                    files[f.name] = _sha256(f)
                manifest = self._manifest(files, has_hnsw)
            (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
            old = None
            if path.exists():
                old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
                path.rename(old)
            tmp.rename(path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    def _state_arrays(self) -> dict[str, np.ndarray]:
        enc = self.encoder
        arrays = {"vectors": self.index.vectors_, "kl_head": enc.kl_head.cpu().numpy()}
        arrays.update({f"pca_{k}": v for k, v in self.pca.state_arrays().items()})
        if enc.negatives is not None:
            arrays["simclr_negatives"] = enc.negatives.cpu().numpy()
        if enc.kl_center_ is not None:
            arrays["kl_center"] = enc.kl_center_.cpu().numpy()
        if enc.kl_head_labels_ is not None:
            arrays["kl_head_labels"] = enc.kl_head_labels_.cpu().numpy()
        if enc.config.center_blocks:
            arrays.update({f"block_mean_{f}": m for f, m in self.block_means_.items()})
        for name, proj in enc.projections.items():
            arrays.update({f"projection_{name}_{k}": v for k, v in proj.state_arrays().items()})
        return arrays

    def _manifest(self, files: dict[str, str], has_hnsw: bool) -> dict[str, Any]:
        enc = self.encoder
        idx = self.index
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(),
            "model": enc.model_name,
            "target_layer": enc.target_layer_name,
            "target_fingerprint": enc.target_fingerprint(),
            "feature_config": enc.config.to_dict(),
            "kl_head_source": enc.kl_head_source_,
            "block_weights": self.block_weights,
            "pca": {"n_components": self.pca.n_components, "whiten": self.pca.whiten},
            "index": {
                "M": idx.M,
                "ef_construction": idx.ef_construction,
                "ef_search": idx.ef_search,
                "exact_threshold": idx.exact_threshold,
                "random_state": idx.random_state,
                "hnsw": has_hnsw,
            },
            "dims": {"embedding": enc.dim, "projection": enc.projection_dim, "vectors": idx.dim},
            "n_examples": len(self._texts),
            "n_truncated": self.n_truncated_,
            "files": files,
        }

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        model: Any = None,
        batch_size: int = 32,
        device: str | None = None,
        show_progress_bar: bool | None = None,
    ) -> ICLRetriever:
        """Load a retriever saved by :meth:`save`, checking the manifest and file hashes.

        ``model`` overrides where the encoder is loaded from (same weights required).
        """
        path = Path(path)
        manifest_path = path / _MANIFEST
        if not manifest_path.is_file():
            raise ValueError(f"{path} is not a saved retriever (no {_MANIFEST})")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{manifest_path} is corrupt: {err}") from None
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{path} is not an icl-fungi retriever (format {manifest.get('format')!r})")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{path} has format version {manifest.get('format_version')}; this icl_fungi reads version {FORMAT_VERSION}"
            )
        files = manifest.get("files", {})
        for name, digest in files.items():
            f = path / name
            if not f.is_file():
                raise ValueError(f"{path}: file {name} listed in the manifest is missing")
            if _sha256(f) != digest:
                raise ValueError(f"{path}: file {name} is corrupt or truncated (sha256 mismatch)")

        def array(name: str) -> np.ndarray:
            if f"{name}.npy" not in files:
                raise ValueError(f"{path}: the manifest lists no {name}.npy")
            return np.load(path / f"{name}.npy", allow_pickle=False)

        config = FeatureConfig.from_dict(manifest["feature_config"])
        encoder = FungiEncoder(
            model if model is not None else manifest["model"],
            config,
            batch_size=batch_size,
            device=device,
            show_progress_bar=show_progress_bar,
        )
        encoder.model_name = manifest["model"]
        if encoder.target_layer_name != manifest["target_layer"] or encoder.target_fingerprint() != manifest["target_fingerprint"]:
            raise ValueError(
                f"the model loaded for {manifest['model']!r} differs from the one the retriever was built with "
                "(target layer weights do not match)"
            )
        head = array("kl_head")
        if head.ndim != 2 or head.shape[1] != encoder.dim or head.shape[0] < 1:
            raise ValueError(f"{path}: kl_head.npy has shape {head.shape}; expected (n, {encoder.dim})")
        encoder.kl_head = torch.from_numpy(head).to(encoder.device)
        encoder.kl_head_source_ = manifest.get("kl_head_source", config.kl_head)
        if encoder.kl_head_source_ == "neighbors":
            rows = array("kl_head_labels")
            if rows.shape != (head.shape[0],) or rows.dtype.kind not in "iu" or rows.min() < 0:
                raise ValueError(f"{path}: kl_head_labels.npy has shape {rows.shape} and dtype {rows.dtype}; "
                                 f"expected ({head.shape[0]},) non-negative ints")
            encoder.kl_head_labels_ = torch.from_numpy(rows.astype(np.int64)).to(encoder.device)
        if config.fitted_head and config.kl_centered:
            encoder.kl_center_ = torch.from_numpy(array("kl_center")).to(encoder.device)
        encoder._prototypes_fitted = True
        if "simclr" in config.features:
            encoder.negatives = torch.from_numpy(array("simclr_negatives")).to(encoder.device)
        shape = (encoder.target.out_features, encoder.target.in_features + 1)
        for name, proj in encoder.projections.items():
            keys = [k[: -len(".npy")] for k in files if k.startswith(f"projection_{name}_")]
            proj.load_state({k[len(f"projection_{name}_") :]: array(k) for k in keys}, shape)
        index_cfg = manifest["index"]
        index = VectorIndex(
            M=index_cfg["M"],
            ef_construction=index_cfg["ef_construction"],
            ef_search=index_cfg["ef_search"],
            exact_threshold=index_cfg["exact_threshold"],
            random_state=index_cfg["random_state"],
        )
        pca_cfg = manifest["pca"]
        retriever = cls(encoder, pca_components=pca_cfg["n_components"], whiten=pca_cfg["whiten"],
                        block_weights=manifest["block_weights"], index=index)
        retriever.pca = PCA.from_state(
            {k: array(f"pca_{k}") for k in ("mean", "components", "explained_variance")},
            n_components=pca_cfg["n_components"],
            whiten=pca_cfg["whiten"],
        )
        if config.center_blocks:
            retriever.block_means_ = {f: array(f"block_mean_{f}") for f in config.features}
        pool = json.loads((path / _POOL).read_text(encoding="utf-8"))
        texts, labels = pool["texts"], pool["labels"]
        vectors = array("vectors")
        if len(texts) != len(labels) or len(texts) != vectors.shape[0] or len(texts) != manifest["n_examples"]:
            raise ValueError(f"{path}: pool, labels and vectors disagree in size")
        if index_cfg["hnsw"] and _HNSW not in files:
            raise ValueError(f"{path}: the manifest lists no {_HNSW}")
        index.restore(vectors, path / _HNSW if index_cfg["hnsw"] else None)
        retriever._texts, retriever._labels = texts, labels
        retriever.n_truncated_ = manifest.get("n_truncated", 0)
        return retriever
