"""Building a retriever's features with Ray Data: the driver fits, actors encode.

The driver fits everything that depends on the whole pool once: the KL head and the SimCLR
negatives (on their seeded samples), then the block means and the PCA on a seeded sample of at
most ``pca_sample`` rows, whose features Ray computes first. The rest of the pool is encoded by
``ray.data`` ``map_batches`` on a pool of actors that each load the model once and return finished
index vectors, which the driver writes to the index batch by batch. Actors that die are restarted
and their batches retried; a batch that arrives twice is written once.

When the PCA sample covers the pool, the batches are exactly those of the single-process build
(:meth:`FungiEncoder.fit_encode`), so the features are the same.

Example:
    >>> r = ICLRetriever.from_texts(texts, labels, executor=RayExecutor(workers=4))              # doctest: +SKIP
    >>> r = ICLRetriever.from_texts(texts, labels, executor=RayExecutor(address="auto"))         # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .features.encoder import _sorted_batches
from .features.heads import head_sample

if TYPE_CHECKING:
    from .retriever import ICLRetriever

__all__ = ["RayExecutor", "as_executor"]

logger = logging.getLogger(__name__)


def as_executor(executor: Any) -> RayExecutor:
    """``"ray"`` or a :class:`RayExecutor` as an executor."""
    if executor == "ray":
        return RayExecutor()
    if isinstance(executor, RayExecutor):
        return executor
    raise ValueError(f"executor must be None, 'ray' or a RayExecutor, got {executor!r}")


def _pack(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _unpack(files: dict[str, bytes], folder: Path) -> None:
    for name, data in files.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


class _EncodeActor:
    """A Ray Data actor: loads the model and the driver's fitted parts once, then turns planned batches of
    texts into feature blocks (first pass) or index vectors (second pass)."""

    def __init__(self, model: str, state: Any, vectors: bool, batch_size: int, fail_once: tuple | None = None) -> None:
        import ray

        from .combine import BlockCombiner
        from .features import FungiEncoder
        from .pca import PCA

        if isinstance(state, ray.ObjectRef):  # the driver put the fitted parts in the object store once
            state = ray.get(state)
        with tempfile.TemporaryDirectory() as tmp:
            _unpack(state, Path(tmp))
            self.encoder = FungiEncoder.load(Path(tmp) / "encoder", model=model, batch_size=batch_size, show_progress_bar=False)
            features = self.encoder.config.features
            dims = {f: self.encoder.dim if f == "embedding" else self.encoder.projection_dim for f in features}
            self.combiner = BlockCombiner.load(Path(tmp) / "combiner", features=features, dims=dims) if vectors else None
            self.pca = PCA.load(Path(tmp) / "pca") if vectors else None
        self.calls, self.fail_once = 0, fail_once

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.fail_once is not None and self.calls == self.fail_once[1] and not Path(self.fail_once[0]).exists():
            Path(self.fail_once[0]).touch()  # fault injection for tests: this actor dies once, mid-build
            os._exit(1)
        rows, parts = [], []
        for ids, texts, tail in zip(batch["rows"], batch["texts"], batch["tail"], strict=True):
            texts = [str(t) for t in texts]
            features = self.encoder.tokenize(texts)
            if tail:  # the head's sample: trunk pass then gradient pass, as in fit_encode
                emb, cached, _ = self.encoder.gradients.trunk(features, cache=True)
                parts.append(self.encoder.gradients.blocks(texts, features, emb, cached))
            else:
                parts.append(self.encoder.gradients.encode_batch(texts, features))
            rows.append(np.asarray(ids, dtype=np.int64))
        blocks = {f: np.concatenate([p[f] for p in parts]) for f in parts[0]}
        out: dict[str, np.ndarray] = {"rows": np.concatenate(rows)}
        if self.pca is not None:
            v = self.pca.transform(self.combiner.transform(blocks))
            out["vector"] = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        else:
            out.update({f"block_{f}": b for f, b in blocks.items()})
        return out


class RayExecutor:
    """Ray Data for the feature build (see the module docstring).

    Args:
        address: a Ray cluster (``"auto"``, ``"ray://host:10001"``); ``None`` starts a local Ray.
        workers: encoding actors (each loads the model once).
        pca_sample: rows the block means and the PCA are fitted on (a seeded sample when the pool is larger).
        batches_per_task: encoder batches per Ray task.
    """

    def __init__(self, address: str | None = None, *, workers: int = 2, pca_sample: int = 100_000, batches_per_task: int = 8,
                 _fail_once: tuple[str, int] | None = None) -> None:
        for name, value in (("workers", workers), ("pca_sample", pca_sample), ("batches_per_task", batches_per_task)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.address, self.workers, self.pca_sample, self.batches_per_task = address, workers, pca_sample, batches_per_task
        self._fail_once = _fail_once

    def _start(self) -> bool:
        """Connect to (or start) Ray; True when this call started it (and so stops it)."""
        try:
            import ray
        except ImportError as err:
            raise ImportError("executor='ray' needs the ray extra: pip install 'icl-fungi[ray]'") from err
        if ray.is_initialized():
            return False
        kwargs: dict[str, Any] = {"address": self.address} if self.address else {"num_cpus": max(self.workers, os.cpu_count() or 1)}
        ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING, **kwargs)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        return True

    def _run(self, plan: list[tuple[np.ndarray, bool]], texts: Sequence[str], model: str, state: dict[str, bytes],
             vectors: bool, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Stream the actors' outputs for ``plan`` (encoder batches: rows and whether they are head-sample batches)."""
        import ray

        items = [{"rows": rows, "texts": [texts[i] for i in rows], "tail": tail} for rows, tail in plan]
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 4 * self.workers)))
        state_ref = ray.put(state)
        out = ds.map_batches(_EncodeActor, batch_size=self.batches_per_task, batch_format="numpy",
                             fn_constructor_kwargs={"model": model, "state": state_ref, "vectors": vectors,
                                                    "batch_size": batch_size, "fail_once": self._fail_once},
                             compute=ray.data.ActorPoolStrategy(size=self.workers), num_cpus=1)
        # Ray Data restarts dead actors and retries their tasks by default (max_restarts = max_task_retries = -1)
        yield from out.iter_batches(batch_size=None, batch_format="numpy")

    def fit(self, retriever: ICLRetriever, texts: list[str], labels: list) -> None:
        """Fit ``retriever`` on the pool with Ray: parts on the driver, features on the actors, then the index."""
        enc = retriever.encoder
        cfg = enc.config
        if not isinstance(enc.model_name, str) or enc.model_name == "custom":
            raise ValueError("executor='ray' loads the model on every actor: build the encoder from a model name or path")
        started = self._start()
        try:
            n = len(texts)
            lengths = np.asarray(enc.token_lengths(texts))
            enc.n_truncated_ = int((lengths > enc.max_seq_length).sum())
            enc.fit(texts, labels)
            covered = n <= self.pca_sample
            sample = np.arange(n) if covered else np.sort(np.random.default_rng(cfg.seed).choice(n, self.pca_sample, replace=False))
            with tempfile.TemporaryDirectory() as tmp:
                enc.save(Path(tmp) / "encoder")
                state = _pack(Path(tmp))
            plan = self._plan(enc, texts, labels, lengths, sample, covered)
            blocks = {f: np.zeros((n, enc.dim if f == "embedding" else enc.projection_dim), np.float32) for f in cfg.features}
            for out in self._run(plan, texts, enc.model_name, state, False, enc.batch_size):
                for f in cfg.features:
                    blocks[f][out["rows"]] = out[f"block_{f}"]
            sample_blocks = {f: b[sample] for f, b in blocks.items()}
            del blocks
            retriever.combiner.fit(sample_blocks)
            if retriever.fit_weights is not None:
                retriever.weight_search_ = retriever.combiner.choose_weights(retriever.fit_weights, sample_blocks,
                                                                             [labels[i] for i in sample], seed=cfg.seed)
            retriever.pca.fit(retriever.combiner.transform(sample_blocks))
            sample_vectors = retriever.vectors_from_blocks(sample_blocks)
            rest = np.setdiff1d(np.arange(n), sample)
            with tempfile.TemporaryDirectory() as tmp:
                enc.save(Path(tmp) / "encoder")
                retriever.combiner.save(Path(tmp) / "combiner")
                retriever.pca.save(Path(tmp) / "pca")
                state = _pack(Path(tmp))
            str_labels = [str(lab) for lab in labels]

            def chunks() -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
                yield sample, sample_vectors, [str_labels[i] for i in sample]
                if len(rest):
                    plan_rest = [(b, False) for b in _sorted_batches(rest, lengths, enc.batch_size)]
                    for out in self._run(plan_rest, texts, enc.model_name, state, True, enc.batch_size):
                        yield out["rows"], out["vector"], [str_labels[i] for i in out["rows"]]

            retriever._install(texts, labels, lambda: retriever.index.build_from(chunks(), n, sample_vectors.shape[1]))
            retriever.n_truncated_ = enc.n_truncated_
        finally:
            if started:
                import ray

                ray.shutdown()

    @staticmethod
    def _plan(enc: Any, texts: Sequence[str], labels: Sequence | None, lengths: np.ndarray, rows: np.ndarray,
              covered: bool) -> list[tuple[np.ndarray, bool]]:
        """Encoder batches for the first pass: when it covers the pool, exactly ``fit_encode``'s batches (the head's
        sample first, by its trunk-then-gradient path, then the rest), so the features match the single-process build."""
        if covered and enc.config.fitted_head:
            labels_ = list(labels) if enc.config.head_needs_labels else None
            head = np.asarray(head_sample(len(texts), labels_, seed=enc.config.seed))
            in_head = np.zeros(len(texts), dtype=bool)
            in_head[head] = True
            return ([(b, True) for b in _sorted_batches(head, lengths, enc.batch_size)]
                    + [(b, False) for b in _sorted_batches(np.flatnonzero(~in_head), lengths, enc.batch_size)])
        return [(b, False) for b in _sorted_batches(rows, lengths, enc.batch_size)]
