"""A saved retriever's directory: one folder per part (:mod:`icl_fungi.parts`), ``pool.json`` and a manifest
of every file's sha256.

Guarantees: a directory is written to a temporary folder, flushed to disk and renamed into place (an existing
retriever is replaced only once the new one is complete, and a crash at any moment of the switch leaves a complete
copy that the next load puts back, see :mod:`icl_fungi.switch`; any other existing directory is never touched); before anything
is read, every manifest entry must be a plain relative name inside the directory (no ``..``, no absolute
path, no symbolic link), the directory must hold exactly those files, every hash must match, and the
manifest's own checksum must match its content.

Example:
    >>> import tempfile
    >>> d = save_directory(Path(tempfile.mkdtemp()) / "r", lambda tmp: write_pool(tmp, ["hi", "bye"], ["a", "b"]),
    ...                    {"n_examples": 2})
    >>> manifest = open_directory(d)
    >>> sorted(manifest["files"]), read_pool(d, manifest["n_examples"])
    (['pool.json'], (['hi', 'bye'], ['a', 'b'], None))
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import switch
from .parts import PLAIN_NAME

__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "SavedRetriever", "file_sha256", "library_versions", "manifest_checksum",
           "manifest_model", "open_directory", "read_pool", "read_retriever", "restore_interrupted_save", "save_directory",
           "write_pool", "write_retriever"]

FORMAT = "icl-fungi-retriever"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
_HEX64 = re.compile(r"[0-9a-f]{64}")


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes (hex), read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_checksum(manifest: dict[str, Any]) -> str:
    """The sha256 of a manifest's content without its ``checksum`` entry (canonical JSON)."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _files(root: Path) -> dict[str, Path]:
    """Every file under ``root`` by its relative POSIX name; a symbolic link anywhere is an error."""
    out: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                raise ValueError(f"{root}: {p.relative_to(root).as_posix()} is a symbolic link; saved retrievers hold none")
        for name in filenames:
            p = Path(dirpath) / name
            out[p.relative_to(root).as_posix()] = p
    return out


def check_save_target(path: str | os.PathLike) -> None:
    """Refuse ``path`` as a place to save a retriever unless it is new, an empty folder or a saved retriever."""
    path = Path(path)
    if path.is_symlink():
        raise ValueError(f"{path} is a symbolic link; refusing to save through it")
    if path.exists() and not (path / MANIFEST).is_file() and not (path.is_dir() and not any(path.iterdir())):
        raise ValueError(f"{path} exists and is not a saved retriever (nor an empty folder); refusing to overwrite it")


def save_directory(path: str | os.PathLike, write: Callable[[Path], None], info: dict[str, Any]) -> Path:
    """Call ``write(tmp)`` to fill a temporary folder next to ``path``, add the manifest (``info`` plus
    format, creation time and every file's sha256) and put it in place of ``path`` (:func:`switch.put_in_place`:
    a crash at any moment leaves a complete copy that :func:`open_directory` finds)."""
    path = Path(path)
    check_save_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with switch.save_lock(path):
        with contextlib.suppress(ValueError):  # copies left that are all incomplete: this save makes a complete one
            switch.recover(path, open_directory, marker=MANIFEST, locked=True)
        switch.remove_stale(path, marker=MANIFEST)
        check_save_target(path)
        tmp = switch.new_sibling(path, "tmp")
        try:
            write(tmp)
            switch.step("parts_written")
            files = {name: file_sha256(p) for name, p in sorted(_files(tmp).items())}
            manifest = {"format": FORMAT, "format_version": FORMAT_VERSION,
                        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **info, "files": files}
            manifest["checksum"] = manifest_checksum(manifest)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False), encoding="utf-8")
            switch.step("manifest_written")
            switch.put_in_place(tmp, path, marker=MANIFEST)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return path


def restore_interrupted_save(path: str | os.PathLike) -> bool:
    """When ``path`` is missing because a save into it was interrupted (a crash between its two renames), put the
    complete copy back (the previous save's; the new one's when the previous is gone) and return ``True``.

    Every load does this first; call it before looking for ``path/manifest.json`` yourself.
    """
    return switch.recover(Path(path), open_directory, marker=MANIFEST)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different (a repeated key would escape the checksum: json keeps the last)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"the key {twice!r} appears twice in one object")
    return out


def _check_entry(root: Path, name: object) -> None:
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name:
        raise ValueError(f"{root}: manifest entry {name!r} is not a plain relative file name")
    for part in name.split("/"):
        if part in ("", ".", "..") or not PLAIN_NAME.fullmatch(part):
            raise ValueError(f"{root}: manifest entry {name!r} is not a plain file name inside the directory")


def open_directory(path: str | os.PathLike) -> dict[str, Any]:
    """Verify a saved retriever directory and return its manifest (see the module docstring)."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if path.is_symlink():
        raise ValueError(f"{path} is a symbolic link; pass the directory itself")
    if not restore_interrupted_save(path):
        switch.tidy(path, marker=MANIFEST)
    if not manifest_path.is_file() or manifest_path.is_symlink():
        raise ValueError(f"{path} is not a saved retriever (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"), object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as err:  # ValueError: bad JSON, UTF-8 or a repeated key
        raise ValueError(f"{manifest_path} is corrupt: {err!s:.200}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        fmt = manifest.get("format") if isinstance(manifest, dict) else None
        raise ValueError(f"{path} is not an icl-fungi retriever (format {fmt!r})")
    version = manifest.get("format_version")
    if version == 1:
        made_by = (manifest.get("versions") or {}).get("icl_fungi", "0.1.0")
        raise ValueError(f"{path} was saved by icl-fungi {made_by} (format version 1); this version reads format "
                         f"{FORMAT_VERSION}. Rebuild it from its pool: ICLRetriever.from_dataset(...).save(path), or "
                         "`icl-fungi build DATA --out PATH` (its texts and labels are in pool.json)")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path} has format version {version!r}; this icl_fungi reads version {FORMAT_VERSION}")
    if manifest.get("checksum") != manifest_checksum(manifest):
        raise ValueError(f"{manifest_path} was edited or is corrupt (its checksum does not match its content)")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ValueError(f"{manifest_path} lists no files")
    for name, digest in files.items():
        _check_entry(path, name)
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise ValueError(f"{path}: manifest entry {name!r} has no sha256")
    present = _files(path)
    present.pop(MANIFEST, None)
    missing = sorted(set(files) - set(present))
    if missing:
        raise ValueError(f"{path}: file {missing[0]} listed in the manifest is missing")
    extra = sorted(set(present) - set(files))
    if extra:
        raise ValueError(f"{path}: file {extra[0]} is not listed in the manifest")
    root = path.resolve()
    for name, digest in files.items():
        f = present[name]
        if root not in f.resolve().parents or not f.is_file():
            raise ValueError(f"{path}: manifest entry {name!r} leaves the directory")
        if file_sha256(f) != digest:
            raise ValueError(f"{path}: file {name} is corrupt or truncated (sha256 mismatch)")
    return manifest


def write_pool(root: Path, texts: list[str], labels: list | None, outputs: list[str] | None = None) -> None:
    """The pool as ``pool.json``: its texts, labels (``null`` in a pool without labels) and, in a pool with
    outputs, its outputs."""
    pool: dict[str, Any] = {"texts": texts, "labels": labels}
    if outputs is not None:
        pool["outputs"] = outputs
    (root / "pool.json").write_text(json.dumps(pool, ensure_ascii=False), encoding="utf-8")


def read_pool(root: Path, n: int) -> tuple[list[str], list | None, list[str] | None]:
    """``pool.json`` checked: ``(texts, labels, outputs)``, ``n`` non-empty string texts, ``n`` str/int labels or
    ``None`` (no labels), ``n`` non-empty string outputs or ``None`` (no outputs; also a pool saved before
    outputs existed)."""
    from .data import check_labels, check_outputs, check_texts

    try:
        pool = json.loads((root / "pool.json").read_text(encoding="utf-8"))
        texts, labels, outputs = pool["texts"], pool["labels"], pool.get("outputs")
    except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError) as err:  # ValueError: JSON, UTF-8
        raise ValueError(f"{root}: pool.json is unreadable: {err!r:.200}") from None
    try:
        if not all(isinstance(v, list) for v in (texts, labels if labels is not None else [], outputs if outputs is not None else [])):
            raise TypeError("texts, labels and outputs must be JSON lists (labels and outputs may be null)")
        texts = check_texts(texts)
        labels = None if labels is None else check_labels(labels, len(texts))
        outputs = None if outputs is None else check_outputs(outputs, len(texts))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{root}: pool.json is invalid: {err}") from None
    if len(texts) != n:
        raise ValueError(f"{root}: pool.json holds {len(texts)} examples, the manifest says {n}")
    return texts, labels, outputs


def library_versions() -> dict[str, str]:
    """Versions of the libraries that make the features (recorded with saved retrievers and results)."""
    import hnswlib
    import sentence_transformers
    import torch
    import transformers

    from .version import __version__

    return {"icl_fungi": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "hnswlib": getattr(hnswlib, "__version__", "unknown"), "numpy": np.__version__}


def manifest_model(name: object, root: Path) -> str:
    """The model a manifest names, if it may be loaded without the caller naming it: the packaged default or a
    hub model name. Local paths (inside the saved directory or anywhere else) must be passed as ``model=``."""
    from .features.models import DEFAULT_ALIASES

    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{root}: the manifest names no model; pass model= to ICLRetriever.load")
    if name in DEFAULT_ALIASES:
        return name
    if name == "custom":
        raise ValueError(f"{root} was built with a model object, not a name: pass it as ICLRetriever.load(path, model=...)")
    p = Path(name)
    local = (p.is_absolute() or name.startswith((".", "~")) or "\\" in name or ".." in p.parts or len(p.parts) > 2
             or p.exists() or (root / name).exists())
    if local:
        raise ValueError(f"{root}: the manifest names the local model path {name!r}; a saved retriever never chooses "
                         f"local files to load. If you trust that model, pass ICLRetriever.load(path, model={name!r})")
    return name


# ---------------------------------------------------------------- a retriever's parts
@dataclasses.dataclass(frozen=True)
class SavedRetriever:
    """The parts of a saved retriever, each read and checked (what ``ICLRetriever.load`` assembles)."""

    encoder: Any
    combiner: Any
    pca: Any
    index: Any
    pool: Any  # an icl_fungi.pool.ExamplePool
    fit_weights: str | None
    n_truncated: int


def write_retriever(path: Path, parts: dict[str, Any], texts: list[str], labels: list | None, outputs: list[str] | None,
                    info: dict[str, Any]) -> Path:
    """Save a retriever into the directory ``path``: each of ``parts`` (name -> an object with ``save(folder)``) in
    its own folder, the pool as ``pool.json``, and the manifest (``info`` plus versions and the pool's size)."""

    def write(tmp: Path) -> None:
        for name, part in parts.items():
            part.save(tmp / name)
        write_pool(tmp, texts, labels, outputs)

    return save_directory(path, write, {"versions": library_versions(), "n_examples": len(texts), **info})


def read_retriever(path: Path, *, model: Any, **encoder_options: Any) -> SavedRetriever:
    """Read a retriever saved by :func:`write_retriever` from its verified directory: encoder (on ``model``, or the
    one the manifest names, see :func:`manifest_model`), combiner, PCA, index and pool, each checked against the others."""
    from .combine import FIT_WEIGHTS, BlockCombiner
    from .features import FungiEncoder
    from .index import load_index
    from .pca import PCA
    from .pool import ExamplePool

    manifest = open_directory(path)  # every file checked before anything is read
    n = manifest.get("n_examples")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{path}: the manifest's n_examples must be a positive int, got {n!r}")
    fit_weights = manifest.get("fit_weights")
    if fit_weights not in FIT_WEIGHTS:
        raise ValueError(f"{path}: the manifest's fit_weights must be one of {FIT_WEIGHTS}, got {fit_weights!r}")
    source = model if model is not None else manifest_model(manifest.get("model"), path)
    encoder = FungiEncoder.load(path / "encoder", model=source, **encoder_options)
    dims = {f: encoder.block_dim(f) for f in encoder.config.features}
    combiner = BlockCombiner.load(path / "combiner", features=encoder.config.features, dims=dims)
    pca = PCA.load(path / "pca", n_features=sum(dims.values()))
    index = load_index(path / "index", dim=pca.n_components_)
    texts, labels, outputs = read_pool(path, n)
    if len(index) != n:
        raise ValueError(f"{path}: the index holds {len(index)} vectors, the pool {n} examples")
    truncated = manifest.get("n_truncated", 0)
    truncated = truncated if isinstance(truncated, int) and not isinstance(truncated, bool) and 0 <= truncated <= n else 0
    return SavedRetriever(encoder, combiner, pca, index, ExamplePool(texts, labels, outputs), fit_weights, truncated)
