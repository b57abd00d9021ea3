"""Encoding a pool's batches with Ray Data: the retriever fits, actors encode.

``ICLRetriever.fit`` owns every stage: it fits the encoder's pool-wide parts (KL head, SimCLR
negatives), then the block means, weights and PCA on a seeded sample of at most ``pca_sample`` rows,
and builds the index. A :class:`RayExecutor` only encodes the batches it is given: ``ray.data``
``map_batches`` on a pool of actors that each load the model and the fitted encoder once and return
the batches' feature blocks. Actors that die are restarted and their batches retried.

When the sample covers the pool, the batches are exactly those of the single-process build
(:meth:`~icl_fungi.features.FungiEncoder.plan_batches`), so the features are the same.

Example:
    >>> r = ICLRetriever.from_texts(texts, labels, executor=RayExecutor(workers=4))              # doctest: +SKIP
    >>> r = ICLRetriever.from_texts(texts, labels, executor=RayExecutor(address="auto"))         # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

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
    """A Ray Data actor: loads the model and the fitted encoder once, then turns planned batches of texts into
    feature blocks."""

    def __init__(self, model: str, state: Any, batch_size: int, fail_once: tuple | None = None) -> None:
        import ray

        from .features import FungiEncoder

        if isinstance(state, ray.ObjectRef):  # the driver put the fitted encoder in the object store once
            state = ray.get(state)
        with tempfile.TemporaryDirectory() as tmp:
            _unpack(state, Path(tmp))
            self.encoder = FungiEncoder.load(Path(tmp) / "encoder", model=model, batch_size=batch_size, show_progress_bar=False)
        self.calls, self.fail_once = 0, fail_once

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.fail_once is not None and self.calls == self.fail_once[1] and not Path(self.fail_once[0]).exists():
            Path(self.fail_once[0]).touch()  # fault injection for tests: this actor dies once, mid-build
            os._exit(1)
        rows, parts = [], []
        for ids, texts, via_trunk in zip(batch["rows"], batch["texts"], batch["via_trunk"], strict=True):
            parts.append(self.encoder.encode_planned([str(t) for t in texts], bool(via_trunk)))
            rows.append(np.asarray(ids, dtype=np.int64))
        out = {f"block_{f}": np.concatenate([p[f] for p in parts]) for f in parts[0]}
        return {"rows": np.concatenate(rows), **out}


def _reachable(address: str) -> None:
    """Fail at once, before any encoding, when ``address`` names no Ray cluster that can be reached."""
    if address == "auto":
        if os.environ.get("RAY_ADDRESS"):
            return
        if not (Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster").exists():  # written by `ray start`
            raise RuntimeError("RayExecutor(address='auto') found no running Ray cluster on this machine: start one with "
                               "`ray start --head`, set RAY_ADDRESS, or use address=None for a local Ray")
        return
    host_port = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"a Ray address is 'auto', host:port or ray://host:port, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise RuntimeError(f"cannot reach the Ray cluster at {address!r}: {err}") from None


class RayExecutor:
    """Encodes planned batches with Ray Data actors (see the module docstring).

    Args:
        address: a Ray cluster (``"auto"``, ``"host:6379"``, ``"ray://host:10001"``); ``None`` starts a local Ray.
        workers: encoding actors (each loads the model once).
        pca_sample: rows the block means, weights and PCA are fitted on (a seeded sample when the pool is larger).
        batches_per_task: encoder batches per Ray task.
    """

    def __init__(self, address: str | None = None, *, workers: int = 2, pca_sample: int = 100_000, batches_per_task: int = 8,
                 _fail_once: tuple[str, int] | None = None) -> None:
        for name, value in (("workers", workers), ("pca_sample", pca_sample), ("batches_per_task", batches_per_task)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ValueError(f"address must be None or a Ray address string, got {address!r}")
        self.address, self.workers, self.pca_sample, self.batches_per_task = address, workers, pca_sample, batches_per_task
        self._fail_once = _fail_once

    @staticmethod
    def check_encoder(encoder: Any) -> None:
        """Actors load the model by name: an encoder built from a model object cannot be shipped."""
        if not isinstance(encoder.model_name, str) or encoder.model_name == "custom":
            raise ValueError("executor='ray' loads the model on every actor: build the encoder from a model name or path")

    @contextlib.contextmanager
    def session(self, encoder: Any) -> Iterator[RayExecutor]:
        """Check the encoder and connect to (or start) Ray before any encoding; a Ray this call started is stopped
        on exit."""
        self.check_encoder(encoder)
        try:
            import ray
        except ImportError as err:
            raise ImportError("executor='ray' needs the ray extra: pip install 'icl-fungi[ray]'") from err
        started = False
        if not ray.is_initialized():
            if self.address:
                _reachable(self.address)
            kwargs: dict[str, Any] = {"address": self.address} if self.address else {"num_cpus": max(self.workers, os.cpu_count() or 1)}
            ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING, **kwargs)
            ray.data.DataContext.get_current().enable_progress_bars = False
            logging.getLogger("ray.data").setLevel(logging.WARNING)
            started = True
        try:
            yield self
        finally:
            if started:
                ray.shutdown()

    def encode(self, encoder: Any, texts: Sequence[str],
               batches: list[tuple[np.ndarray, bool]]) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Stream ``(rows, blocks)`` for the planned ``batches`` (from ``encoder.plan_batches``), in any order; call
        inside :meth:`session`. ``encoder`` must be fitted: its state is shipped to the actors once."""
        import ray

        if not batches:
            return
        with tempfile.TemporaryDirectory() as tmp:
            encoder.save(Path(tmp) / "encoder")
            state_ref = ray.put(_pack(Path(tmp)))
        items = [{"rows": rows, "texts": [texts[i] for i in rows], "via_trunk": via} for rows, via in batches]
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 4 * self.workers)))
        out = ds.map_batches(_EncodeActor, batch_size=self.batches_per_task, batch_format="numpy",
                             fn_constructor_kwargs={"model": encoder.model_name, "state": state_ref,
                                                    "batch_size": encoder.batch_size, "fail_once": self._fail_once},
                             compute=ray.data.ActorPoolStrategy(size=self.workers), num_cpus=1)
        # Ray Data restarts dead actors and retries their tasks by default (max_restarts = max_task_retries = -1)
        for res in out.iter_batches(batch_size=None, batch_format="numpy"):
            yield res["rows"], {k[len("block_"):]: v for k, v in res.items() if k.startswith("block_")}
