"""``ICLRetriever``: pick in-context examples for a query with FUNGI features.

A retriever composes a :class:`~icl_fungi.features.FungiEncoder` (feature blocks), a
:class:`~icl_fungi.combine.BlockCombiner` (centre, weight, concatenate), a PCA and a
:class:`~icl_fungi.index.VectorIndex`; each part saves and loads its own state. The pool
(:class:`~icl_fungi.pool.ExamplePool`) holds texts with labels, outputs (pairs), both or neither.

Example:
    >>> from icl_fungi import ICLRetriever
    >>> r = ICLRetriever.from_texts(["my card never came", "card still missing", "top up failed", "top-up declined"],
    ...                             ["card_arrival", "card_arrival", "top_up_failed", "top_up_failed"], show_progress_bar=False)
    >>> [ex.label for ex in r.retrieve("where is my card?", k=2)]
    ['card_arrival', 'card_arrival']
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .aio import AsyncMethods
from .combine import DEFAULT_FIT_WEIGHTS, FIT_WEIGHTS, BlockCombiner
from .data import Label, check_texts, load_examples
from .features import DEFAULT_FEATURES, DEFAULT_MODEL, FeatureConfig, FungiEncoder
from .features.config import LABEL_FREE_KL_HEAD
from .index import Index, VectorIndex, index_class, registered_indexes
from .manifest import check_save_target, read_retriever, write_retriever
from .pca import PCA
from .pool import ExamplePool, PoolMethods, RetrievedExample
from .prompt import PromptMethods
from .selection import Selection, select_from_index

__all__ = ["ICLRetriever", "RetrievedExample"]

logger = logging.getLogger(__name__)


def _check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k <= 0:
        raise ValueError(f"k must be >= 1, got {k}")
    return int(k)


class ICLRetriever(PoolMethods, PromptMethods, AsyncMethods):
    """An example pool, its FUNGI feature vectors and a cosine index.

    Build one with :meth:`from_texts`, :meth:`from_pairs` or :meth:`from_dataset` (or construct it with an
    encoder and call :meth:`fit`), query it with :meth:`retrieve` / :meth:`build_prompt`, persist it with
    :meth:`save` / :meth:`load`. Retrieval keys on the texts (a pair's input); labels, when the pool has them,
    drive the KL head, the weights and label selections; outputs travel with their texts into prompts.
    ``features=("embedding",)`` gives a plain-embedding retriever through the same code path (PCA included).

    Args:
        encoder: the :class:`~icl_fungi.features.FungiEncoder` producing feature blocks.
        pca_components: PCA output size (default: the embedding dimension), clamped to the pool size.
        whiten: whiten the PCA output.
        block_weights: multiplier per feature block before concatenation (default: embedding 1, the KL
            weight chosen by ``fit_weights="auto"``, simclr 0.3; measured on dev splits).
        index: the vector index: a configured :class:`~icl_fungi.index.VectorIndex` (the default, in process) or
            another :class:`~icl_fungi.index.Index` backend such as :class:`~icl_fungi.milvus.MilvusIndex`.
        fit_weights: choose the weights from the labelled pool itself (no held-out labels used):
            ``"auto"`` (default) sets the KL weight, unless ``block_weights`` gives it, from how well the
            plain embedding already groups the pool's labels (:data:`~icl_fungi.combine.AUTO_KL_ANCHORS`:
            0.5 on a few examples per label, 0.3 on a pool the embedding already separates); ``"loo"``
            searches the gradient blocks' weights for the best leave-one-out P@20; ``None`` keeps the
            given or default weights (embedding 1, kl 0.3, simclr 0.3).
    """

    def __init__(self, encoder: FungiEncoder, *, pca_components: int | None = None, whiten: bool = False,
                 block_weights: dict[str, float] | None = None, index: Index | None = None,
                 fit_weights: str | None = DEFAULT_FIT_WEIGHTS) -> None:
        if not isinstance(encoder, FungiEncoder):
            raise TypeError(f"encoder must be a FungiEncoder, got {type(encoder).__name__}")
        if fit_weights not in FIT_WEIGHTS:
            raise ValueError(f"fit_weights must be one of {FIT_WEIGHTS}, got {fit_weights!r}")
        if index is not None and not isinstance(index, Index):
            raise TypeError(f"index must be an Index (VectorIndex, MilvusIndex, ...), got {type(index).__name__}")
        self.fit_weights = fit_weights
        self.encoder = encoder
        self.combiner = BlockCombiner(encoder.config.features, weights=block_weights, center=encoder.config.center_blocks)
        self.pca = PCA(pca_components or encoder.dim, whiten=whiten)
        self.index = index if index is not None else VectorIndex(random_state=encoder.config.seed)
        self._pool = ExamplePool()  # replaced whole, never changed in place: readers see one consistent pool
        self._write_lock = threading.Lock()
        self.n_truncated_ = 0
        self._told_k_capped = False

    # ------------------------------------------------------------ building
    @classmethod
    def from_texts(cls, texts: Sequence[str], labels: Sequence[Label] | None = None, *, outputs: Sequence[str] | None = None,
                   model: Any = DEFAULT_MODEL, features: Sequence[str] = DEFAULT_FEATURES, pca_components: int | None = None,
                   whiten: bool = False, block_weights: dict[str, float] | None = None,
                   fit_weights: str | None = DEFAULT_FIT_WEIGHTS, index: Index | None = None, executor: Any = None,
                   batch_size: int = 32, device: str | None = None, show_progress_bar: bool | None = None, seed: int = 0,
                   **feature_options: Any) -> ICLRetriever:
        """Build a retriever over ``texts``, with their ``labels`` (``None``: a pool without labels) and ``outputs``
        (what each text maps to, shown in prompts; ``None``: no outputs).

        ``feature_options`` are :class:`~icl_fungi.features.FeatureConfig` fields (e.g. ``kl_head``);
        ``executor="ray"`` (or a :class:`~icl_fungi.distributed.RayExecutor`) builds the features with Ray Data.
        Without labels the KL head is :data:`~icl_fungi.features.config.LABEL_FREE_KL_HEAD` unless ``kl_head``
        names one that needs no labels.
        """
        if isinstance(features, str):
            raise TypeError("features must be a sequence of block names, e.g. ('embedding', 'kl'), not a string")
        pool = ExamplePool.checked(texts, labels, outputs)  # bad input fails before the model loads
        config = FeatureConfig(features=tuple(features), seed=seed, **feature_options)
        if not pool.has_labels and "kl_head" in feature_options and config.head_needs_labels:
            raise ValueError(f"kl_head={config.kl_head!r} is fitted on the pool's labels, and the pool has none: leave "
                             f"kl_head unset (a pool without labels gets {LABEL_FREE_KL_HEAD!r}) or pick a head without labels")
        encoder = FungiEncoder(model, config, batch_size=batch_size, device=device, show_progress_bar=show_progress_bar)
        retriever = cls(encoder, pca_components=pca_components, whiten=whiten, block_weights=block_weights, index=index,
                        fit_weights=fit_weights)
        return retriever.fit(pool.texts, pool.labels, pool.outputs, executor=executor)

    @classmethod
    def from_pairs(cls, inputs: Sequence[str], outputs: Sequence[str], *, labels: Sequence[Label] | None = None,
                   **kwargs: Any) -> ICLRetriever:
        """Build a retriever over input -> output pairs (question -> answer, ticket -> reply, ...): retrieval keys on
        the inputs, each output travels with its input into prompts (template ``"pairs-completion"`` or
        ``"pairs-chat"``); ``kwargs`` as in :meth:`from_texts`.

        Example:
            >>> r = ICLRetriever.from_pairs(["2 + 2?", "3 + 5?", "capital of France?", "capital of Spain?"],
            ...                             ["4", "8", "Paris", "Madrid"], show_progress_bar=False)
            >>> [(x.text, x.output) for x in r.retrieve("what is the capital of Spain?", k=1)]
            [('capital of Spain?', 'Madrid')]
        """
        if outputs is None:
            raise ValueError("from_pairs needs outputs, one per input (for a pool of plain texts use from_texts(texts))")
        return cls.from_texts(inputs, labels, outputs=outputs, **kwargs)

    @classmethod
    def from_dataset(cls, data: Any, *, text_column: str = "text", label_column: str | None = "label",
                     output_column: str | None = None, split: str | None = None, **kwargs: Any) -> ICLRetriever:
        """Load a pool (a file, ``datasets`` object, data frame, records or hub name; see
        :func:`~icl_fungi.data.load_examples`) and build the retriever; ``label_column=None``: a pool without labels,
        ``output_column``: the outputs of a pool of pairs; ``kwargs`` as in :meth:`from_texts`."""
        texts, labels, outputs = load_examples(data, text_column=text_column, label_column=label_column,
                                               output_column=output_column, split=split)
        return cls.from_texts(texts, labels, outputs=outputs, **kwargs)

    def fit(self, texts: Sequence[str], labels: Sequence[Label] | None = None, outputs: Sequence[str] | None = None, *,
            executor: Any = None) -> ICLRetriever:
        """Encode the pool, fit the block combiner, weights and PCA, and build the index (replaces any pool).

        ``labels=None``: a pool without labels (a KL head that needs labels becomes the label-free one,
        :meth:`~icl_fungi.features.FeatureConfig.for_pool`; ``fit_weights="auto"`` takes its label-free rule).
        ``outputs``: one per text, carried with the examples. ``executor``: ``None`` (this process) or ``"ray"`` /
        a :class:`~icl_fungi.distributed.RayExecutor`, which encodes the batches this method plans on Ray Data actors
        (the fitted parts are fitted here). The index backend and the executor are checked before anything is encoded.
        """
        pool = ExamplePool.checked(texts, labels, outputs)
        if not len(pool):
            raise ValueError("the example pool is empty")
        if not pool.has_labels and self.fit_weights == "loo":
            raise ValueError("fit_weights='loo' searches the weights by the pool's labels, and the pool has none: "
                             "use fit_weights='auto' or None")
        self.encoder.for_pool(pool.has_labels)
        n_dup = len(pool) - len(set(pool.texts))
        if n_dup:
            logger.warning("the pool holds %d duplicate text(s); they are kept as separate examples", n_dup)
        check = getattr(self.index, "check", None)
        if callable(check):
            check()  # e.g. a Milvus server that cannot be reached fails now, not after the encoding
        if executor is None:
            blocks = self.encoder.fit_encode(pool.texts, pool.labels)  # fits the head on the trunk pass it then reuses
            self._set_truncated(self.encoder.n_truncated_)
            vectors = self._fit_parts(blocks, pool.labels)
            self._install(pool, lambda: self.index.build(vectors, labels=pool.index_labels()))
            return self
        from .distributed import as_executor

        runner = as_executor(executor)
        with runner.session(self.encoder):
            self._fit_with(runner, pool)
        return self

    def _set_truncated(self, n: int) -> None:
        self.n_truncated_ = n
        if n:
            logger.warning("%d pool text(s) exceed the model's %d-token limit and were truncated", n, self.encoder.max_seq_length)

    def _fit_parts(self, blocks: dict[str, np.ndarray], labels: Sequence[Label] | None) -> np.ndarray:
        """Fit the combiner, the block weights and the PCA on ``blocks``; returns these rows' PCA output."""
        self.combiner.fit(blocks)
        if self.fit_weights is not None:
            cfg, n = self.encoder.config, len(next(iter(blocks.values())))
            self.weight_search_ = self.combiner.choose_weights(self.fit_weights, blocks, labels, seed=cfg.seed,
                                                               texts_per_row=n / max(1, min(cfg.kl_head_dim, n)))
        return self.pca.fit_transform(self.combiner.transform(blocks))

    def _fit_with(self, runner: Any, pool: ExamplePool) -> None:
        """:meth:`fit` with an executor: the encoder's parts here, the sample's blocks from ``runner``, the combiner,
        weights and PCA on the sample here, then the rest of the pool's blocks from ``runner`` into the index."""
        enc, n, texts, labels = self.encoder, len(pool), pool.texts, pool.labels
        lengths = np.asarray(enc.token_lengths(texts))
        self._set_truncated(int((lengths > enc.max_seq_length).sum()))
        enc.fit(texts, labels)
        size = getattr(runner, "pca_sample", n)
        sample = np.arange(n) if n <= size else np.sort(np.random.default_rng(enc.config.seed).choice(n, size, replace=False))
        position = np.full(n, -1, dtype=np.int64)
        position[sample] = np.arange(len(sample))
        blocks = {f: np.zeros((len(sample), enc.block_dim(f)), np.float32) for f in enc.config.features}
        for rows, got in runner.encode(enc, texts, enc.plan_batches(texts, labels, sample, lengths=lengths)):
            for f in blocks:
                blocks[f][position[rows]] = got[f]
        vectors = self._fit_parts(blocks, None if labels is None else [labels[i] for i in sample])
        str_labels = pool.index_labels()
        rest = np.flatnonzero(position < 0)
        if not len(rest):
            self._install(pool, lambda: self.index.build(vectors, labels=str_labels))
            return

        def chunks() -> Any:
            yield sample, vectors, [str_labels[i] for i in sample]
            for rows, got in runner.encode(enc, texts, enc.plan_batches(texts, labels, rest, lengths=lengths)):
                yield rows, self.vectors_from_blocks(got), [str_labels[i] for i in rows]

        self._install(pool, lambda: self.index.build_from(chunks(), n, vectors.shape[1]))

    def _install(self, pool: ExamplePool, build_index: Any) -> None:
        """Publish a new pool and build its index (``build_index()``) as one step for concurrent readers."""
        with self._write_lock:
            self._pool = pool
            build_index()

    def vectors_from_blocks(self, blocks: dict[str, np.ndarray], weights: dict[str, float] | None = None) -> np.ndarray:
        """The index vectors of feature blocks: combined (with ``weights``, default the fitted ones), PCA-reduced,
        L2-normalised."""
        vectors = self.pca.transform(self.combiner.transform(blocks, weights))
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors

    # ------------------------------------------------------------- queries
    def __len__(self) -> int:
        return len(self.index)

    @property
    def config(self) -> FeatureConfig:
        """The feature configuration."""
        return self.encoder.config

    @property
    def block_weights(self) -> dict[str, float]:
        """The block weights in force (a copy)."""
        return dict(self.combiner.weights)

    def vectors(self, texts: Sequence[str] | str) -> np.ndarray:
        """The combined, PCA-reduced, L2-normalised vectors the index searches (1-D for one string)."""
        single = isinstance(texts, str)
        batch = check_texts([texts] if single else texts, what="query")
        self._check_built()
        vectors = self.vectors_from_blocks(self.encoder.encode(batch))
        return vectors[0] if single else vectors

    def features(self, texts: Sequence[str] | str) -> np.ndarray:
        """Deprecated name of :meth:`vectors` ("features" names the feature blocks, ``FeatureConfig.features``)."""
        warnings.warn("ICLRetriever.features() is deprecated; use ICLRetriever.vectors()", DeprecationWarning, stacklevel=2)
        return self.vectors(texts)

    def _check_built(self) -> None:
        if not len(self.index):
            raise RuntimeError("the retriever has no pool yet; use from_texts(), from_dataset() or fit()")

    def retrieve(self, query: str, k: int = 20, *, selection: Selection | str | None = None) -> list[RetrievedExample]:
        """The ``k`` pool examples chosen for ``query``, most similar first.

        ``selection`` picks the strategy (see :class:`~icl_fungi.Selection`; default: :attr:`default_selection`).
        ``k`` larger than the pool returns the whole pool.
        """
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        return self.retrieve_batch([query], k, selection=selection)[0]

    @property
    def default_selection(self) -> Selection:
        """The selection used when a call gives none: on a labelled pool with FUNGI's gradient blocks,
        ``Selection("cover")`` (FUNGI's top-k, with the labels of the plain embedding's own top-k guaranteed a slot,
        so a reader that reads every example is shown the labels the embedding would show); else top-k."""
        if self._pool.has_labels and self.combiner.reference_weights() is not None:
            return Selection("cover")
        return Selection()

    def reference_vectors_from_blocks(self, blocks: dict[str, np.ndarray]) -> np.ndarray | None:
        """The queries' reference vectors in the index's space: the embedding block alone (the others zeroed,
        :meth:`~icl_fungi.combine.BlockCombiner.reference_weights`); searching the index with them ranks the pool
        almost as the plain embedding does. ``None`` without an embedding block beside other blocks."""
        weights = self.combiner.reference_weights()
        return None if weights is None else self.vectors_from_blocks(blocks, weights)

    def retrieve_batch(self, queries: Sequence[str], k: int = 20, *,
                       selection: Selection | str | None = None) -> list[list[RetrievedExample]]:
        """:meth:`retrieve` for many queries (encoded in batches)."""
        k = _check_k(k)
        sel = self.default_selection if selection is None else Selection.coerce(selection)
        queries = check_texts(queries, what="query")
        if sel.needs_labels and len(self) and not self._pool.has_labels:
            raise ValueError(f"the selection {sel!r} reads the examples' labels, and the pool has none")
        if k > len(self) and len(self) and not self._told_k_capped:
            self._told_k_capped = True  # said once per retriever
            logger.warning("k=%d is larger than the pool (%d examples): every example is returned", k, len(self))
        if not queries:
            return []
        self._check_built()
        blocks = self.encoder.encode(queries)
        vectors = self.vectors_from_blocks(blocks)
        if sel.is_plain:
            ids, scores = self.index.query(vectors, k, labels=sel.allowed_labels)
            picked = [[(a, b) for a, b in zip(i.tolist(), s.tolist(), strict=True) if a >= 0] for i, s in zip(ids, scores, strict=True)]
            pool = self._pool  # read after the query: a pool is published before its ids
        else:
            refs = self.reference_vectors_from_blocks(blocks) if sel.needs_reference else None
            with self._write_lock:  # one consistent snapshot of the pool
                pool = self._pool
            picked = [select_from_index(self.index, v, k, sel, len(pool), pool.label_list(), texts=pool.texts, query=q,
                                        reference_vector=None if refs is None else refs[j])
                      for j, (q, v) in enumerate(zip(queries, vectors, strict=True))]
        return [sorted((pool.example(i, s) for i, s in row), key=lambda x: (-x.score, x.index)) for row in picked]

    def add_examples(self, texts: Sequence[str], labels: Sequence[Label] | None = None,
                     outputs: Sequence[str] | None = None) -> list[int]:
        """Add examples to the pool (the PCA and the KL head fitted on the pool are kept): with labels exactly
        when the pool has labels, with outputs exactly when it has outputs.

        Returns the new examples' pool positions. Safe while other threads query.
        """
        self._check_built()
        new = ExamplePool.checked(texts, labels, outputs)
        self._pool.check_same_kind(new)
        if not len(new):
            return []
        vectors = self.vectors_from_blocks(self.encoder.encode(new.texts))
        with self._write_lock:
            self._pool = self._pool.extended(new)  # published before the index can return the new ids
            ids = self.index.add(vectors, labels=new.index_labels())
        return [int(i) for i in ids]

    # --------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Save to the directory ``path``: a manifest (sha256 of every file) and one folder per part.

        Written to a temporary folder next to ``path`` and renamed into place; an existing retriever
        at ``path`` is replaced only once the new one is complete. Any other existing directory at
        ``path`` is never overwritten.
        """
        self._check_built()
        path = Path(path)
        check_save_target(path)
        backend = getattr(self.index, "backend", None)
        if backend not in registered_indexes() or index_class(backend) is not type(self.index):
            raise ValueError(f"the index backend {backend!r} ({type(self.index).__name__}) is not registered, so a saved retriever "
                             "could not be loaded: call icl_fungi.register_index on its class first")
        with self._write_lock:  # the parts and the pool of one moment
            pool = self._pool
            parts = {"encoder": self.encoder, "combiner": self.combiner, "pca": self.pca, "index": self.index}
            return write_retriever(path, parts, pool.texts, pool.labels, pool.outputs, {
                "model": self.encoder.model_name, "n_truncated": self.n_truncated_, "fit_weights": self.fit_weights})

    @classmethod
    def load(cls, path: str | os.PathLike, *, model: Any = None, batch_size: int = 32, device: str | None = None,
             show_progress_bar: bool | None = None, allow_pickle_weights: bool = False) -> ICLRetriever:
        """Load a retriever saved by :meth:`save`, verifying every file before reading it.

        The encoder is the model the manifest names when that is the packaged default or a model
        name; a local model path is used only when passed as ``model=`` (a saved directory never
        chooses which files run). ``model`` must have the weights the retriever was built with.
        """
        saved = read_retriever(Path(path), model=model, batch_size=batch_size, device=device,
                               show_progress_bar=show_progress_bar, allow_pickle_weights=allow_pickle_weights)
        retriever = cls(saved.encoder, fit_weights=saved.fit_weights)
        retriever.combiner, retriever.pca, retriever.index = saved.combiner, saved.pca, saved.index
        retriever._pool, retriever.n_truncated_ = saved.pool, saved.n_truncated
        return retriever
