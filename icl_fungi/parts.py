"""How a part saves itself without pickle: ``config.json`` and one ``.npy`` per array in its own folder.

:class:`SavedPart` is the base of every part of a retriever (PCA, the block combiner, the gradient
projections, the SimCLR loss, KL heads, the indexes): a part says what it is (:meth:`SavedPart.config`,
JSON), what it learned (:meth:`SavedPart.state_arrays`, numeric arrays) and how to come back from both
(:meth:`SavedPart.from_state`, which checks everything it reads); ``save`` and ``load`` follow. Arrays load
with ``allow_pickle=False`` after their header is checked against the file's size, float arrays must be finite,
symbolic links are refused. A saved retriever is a directory of such parts
with a manifest (:mod:`icl_fungi.manifest`).

Example:
    >>> import tempfile, numpy as np
    >>> class Scale(SavedPart):
    ...     def __init__(self, factor): self.factor = factor
    ...     def config(self): return {"kind": "scale"}
    ...     def state_arrays(self): return {"factor": np.asarray(self.factor, np.float32)}
    ...     @classmethod
    ...     def from_state(cls, config, arrays, *, size=None):
    ...         factor = arrays.get("factor")
    ...         if factor is None or (size is not None and factor.shape != (size,)):
    ...             raise ValueError(f"factor.npy is missing or not of size {size}")
    ...         return cls(factor)
    >>> d = Path(tempfile.mkdtemp()) / "scale"
    >>> Scale([1.0, 2.0]).save(d)
    >>> Scale.load(d, size=2).factor.tolist(), read_config(d)
    ([1.0, 2.0], {'kind': 'scale'})
    >>> Scale.load(d, size=3)                          # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: .../scale: factor.npy is missing or not of size 3
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import numpy as np

__all__ = ["CONFIG_FILE", "PLAIN_NAME", "SavedPart", "check_name", "read_array", "read_config", "read_part", "write_part"]

CONFIG_FILE = "config.json"
PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a part, array or file name: no separators, no leading dot

P = TypeVar("P", bound="SavedPart")


def check_name(name: str) -> None:
    """Refuse a part or array name that is not a plain file name (``ValueError``)."""
    if not isinstance(name, str) or not PLAIN_NAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(f"invalid part or array name {name!r} (letters, digits, '_', '.', '-')")


def write_part(path: str | os.PathLike, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Write ``config.json`` and one ``<name>.npy`` per array into the new folder ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=1, sort_keys=True, ensure_ascii=False), encoding="utf-8")
    for name, arr in arrays.items():
        check_name(name)
        arr = np.asarray(arr)
        if arr.dtype == object:
            raise TypeError(f"array {name!r} has dtype object: only numeric arrays are saved")
        np.save(path / f"{name}.npy", np.ascontiguousarray(arr), allow_pickle=False)


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a part folder (symbolic links are refused)."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        raise ValueError(f"{path} is not a saved part (missing folder or a symbolic link)")
    cfg_file = path / CONFIG_FILE
    if cfg_file.is_symlink() or not cfg_file.is_file():
        raise ValueError(f"{path} has no {CONFIG_FILE}")
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as err:  # ValueError: bad JSON or UTF-8
        raise ValueError(f"{cfg_file} is corrupt: {err!s:.200}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{cfg_file} must hold a JSON object")
    return config


def read_part(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(config, arrays)`` of a folder written by :func:`write_part` (symbolic links are refused)."""
    path = Path(path)
    config = read_config(path)
    arrays = {}
    for f in sorted(path.glob("*.npy")):
        if f.is_symlink() or not f.is_file():
            raise ValueError(f"{f} is not a regular file")
        arrays[f.stem] = read_array(f)
    return config, arrays


def read_array(f: Path) -> np.ndarray:
    """A ``.npy`` file's array, its header checked first: a numeric dtype and a shape that the file's size holds
    exactly (an edited header must not ask for terabytes), and finite values; ``ValueError`` naming the file
    otherwise."""
    try:
        with f.open("rb") as fh:
            version = np.lib.format.read_magic(fh)
            shape, dtype = _read_header(fh, version)
            if dtype.hasobject:
                raise ValueError("its dtype holds Python objects (pickle)")
            expected = fh.tell() + int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            if f.stat().st_size != expected:
                raise ValueError(f"it holds {f.stat().st_size} bytes, its header (shape {shape}, {dtype}) needs {expected}")
            fh.seek(0)
            array = np.load(fh, allow_pickle=False)
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            raise ValueError("it holds NaN or infinite values")  # they would spread through every score
        return array
    except (ValueError, EOFError, OverflowError, TypeError) as err:
        raise ValueError(f"{f} is not a plain numeric array: {err!s:.200}") from None


def _read_header(fh: BinaryIO, version: tuple[int, int]) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` from a ``.npy`` header. numpy parses the header text with ``ast`` and ``tokenize``, which
    raise their own errors on damaged bytes (``SyntaxError``, ``tokenize.TokenError``, ``RecursionError`` on deep
    nesting): every one of them means the same thing here, a header that is not one numpy wrote."""
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    try:
        shape, _, dtype = read_header(fh)
    except Exception as err:  # noqa: BLE001 - any parse failure of untrusted header text is a damaged file
        raise ValueError(f"its header does not parse ({type(err).__name__}: {err!s:.120})") from None
    return shape, dtype


class SavedPart:
    """Base of a part that saves itself as ``config.json`` plus ``.npy`` arrays (see the module docstring).

    A subclass implements :meth:`config`, :meth:`state_arrays` and :meth:`from_state`; a part with more
    than that to keep (a graph file, a remote collection) also implements :meth:`save_extra` and
    :meth:`load_extra`.
    """

    def config(self) -> dict[str, Any]:
        """What the part is: its settings (JSON-ready)."""
        raise NotImplementedError

    def state_arrays(self) -> dict[str, np.ndarray]:
        """What the part learned, as named numeric arrays (default: nothing)."""
        return {}

    @classmethod
    def from_state(cls: type[P], config: dict[str, Any], arrays: dict[str, np.ndarray], **checks: Any) -> P:
        """The part back from its :meth:`config` and :meth:`state_arrays`, checked against ``checks`` (sizes
        the caller expects); anything invalid is a ``ValueError`` naming it."""
        raise NotImplementedError

    def save_extra(self, path: Path) -> None:
        """Write what the part keeps beyond its config and arrays into its folder ``path`` (default: nothing)."""

    def load_extra(self, path: Path, config: dict[str, Any]) -> None:
        """Restore what :meth:`save_extra` kept, after :meth:`from_state` (default: nothing)."""

    def save(self, path: str | os.PathLike) -> None:
        """Write the part into the folder ``path``."""
        path = Path(path)
        write_part(path, self.config(), self.state_arrays())
        self.save_extra(path)

    @classmethod
    def load(cls: type[P], path: str | os.PathLike, **checks: Any) -> P:
        """Load a part saved by :meth:`save`; ``checks`` go to :meth:`from_state`, whose errors name ``path``."""
        path = Path(path)
        config, arrays = read_part(path)
        try:
            part = cls.from_state(config, arrays, **checks)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        part.load_extra(path, config)
        return part
