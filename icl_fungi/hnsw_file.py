"""Checking a saved hnswlib graph (``hnsw.bin``) before hnswlib reads it.

hnswlib trusts its file: a neighbour id past the end, a list longer than its slot or a level that the node
does not have makes a query read outside the graph (a segmentation fault, or silently wrong neighbours). So
every field that steers a read is checked here against the index's own vectors: the layout sizes for
``dim`` and ``M``, the element count, each list's length and ids (level 0 and the upper levels, every
neighbour present on that level), the entry point and top level, no deleted marks, labels exactly
``0..n-1``, and each stored vector equal to the saved one.

The layout is hnswlib's ``saveIndex`` (0.7, 0.8): a header of 96 bytes, ``n`` level-0 records of
``[count | maxM0 ids | vector | label]`` and, per element, the size of its upper-level lists and the lists.

Example:
    >>> import hnswlib, tempfile, numpy as np
    >>> v = np.eye(4, dtype=np.float32)
    >>> g = hnswlib.Index(space="cosine", dim=4); g.init_index(max_elements=4, M=8); g.add_items(v, np.arange(4))
    >>> path = Path(tempfile.mkdtemp()) / "hnsw.bin"; g.save_index(str(path))
    >>> check_hnsw_file(path, v, M=8)
    >>> check_hnsw_file(path, v[:3], M=8)                         # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: ...hnsw.bin: the graph holds 4 elements, the index 3 vectors
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["check_hnsw_file"]

_HEADER = np.dtype([("offset_level0", "<u8"), ("max_elements", "<u8"), ("count", "<u8"), ("size_per_element", "<u8"),
                    ("label_offset", "<u8"), ("offset_data", "<u8"), ("max_level", "<i4"), ("entry_point", "<u4"),
                    ("max_m", "<u8"), ("max_m0", "<u8"), ("m", "<u8"), ("mult", "<f8"), ("ef_construction", "<u8")])
_MAX_LEVEL = 64  # hnswlib draws levels as -ln(U) * mult; a level past this is not one it wrote


def _layout(h: np.void, n: int, dim: int, M: int) -> str | None:
    """What is wrong with the header ``h`` for ``n`` vectors of size ``dim`` and ``M`` links, or ``None``."""
    links0 = 4 + 4 * 2 * M
    want = {"offset_level0": 0, "count": n, "max_m": M, "max_m0": 2 * M, "m": M, "offset_data": links0,
            "label_offset": links0 + 4 * dim, "size_per_element": links0 + 4 * dim + 8}
    for field, value in want.items():
        if int(h[field]) != value:
            if field == "count":
                return f"the graph holds {int(h[field])} elements, the index {n} vectors"
            return f"header field {field} is {int(h[field])}, expected {value} (dim {dim}, M {M})"
    if not n <= int(h["max_elements"]) < 2**40:
        return f"header field max_elements is {int(h['max_elements'])}"
    if not 0 <= int(h["max_level"]) < _MAX_LEVEL or int(h["entry_point"]) >= n:
        return f"entry point {int(h['entry_point'])} at level {int(h['max_level'])} is out of range"
    return None


def _check_lists(lists: np.ndarray, max_len: int, n: int, what: str) -> str | None:
    """``lists`` (rows of ``[count, ids...]``): each count at most ``max_len`` (no flag bits), ids below ``n``."""
    counts = lists[:, 0]
    if (counts > max_len).any():
        return f"a {what} neighbour list claims {int(counts.max())} entries (at most {max_len})"
    used = np.arange(lists.shape[1] - 1)[None, :] < counts[:, None]
    if (lists[:, 1:][used] >= n).any():
        return f"a {what} neighbour list names an element past the {n} in the graph"
    return None


def _upper_levels(raw: bytes, pos: int, n: int, M: int) -> tuple[list[np.ndarray], np.ndarray, str | None]:
    """Each element's upper-level lists (``(level, M + 1)`` uint32) and levels, read from ``raw[pos:]``."""
    block = 4 * (M + 1)
    lists, levels = [], np.zeros(n, dtype=np.int64)
    for i in range(n):
        if pos + 4 > len(raw):
            return lists, levels, "the file ends inside the upper-level lists"
        size = int(np.frombuffer(raw, "<u4", 1, pos)[0])
        pos += 4
        if size % block or size // block >= _MAX_LEVEL or pos + size > len(raw):
            return lists, levels, f"element {i} has upper-level lists of {size} bytes"
        levels[i] = size // block
        lists.append(np.frombuffer(raw, "<u4", size // 4, pos).reshape(-1, M + 1))
        pos += size
    if pos != len(raw):
        return lists, levels, f"{len(raw) - pos} bytes follow the last list"
    return lists, levels, None


def _graph_problem(raw: bytes, vectors: np.ndarray, M: int) -> str | None:
    n, dim = vectors.shape
    if len(raw) < _HEADER.itemsize:
        return "the file is shorter than its header"
    h = np.frombuffer(raw, _HEADER, 1)[0]
    problem = _layout(h, n, dim, M)
    if problem:
        return problem
    size, start = int(h["size_per_element"]), _HEADER.itemsize
    if len(raw) < start + n * size:
        return "the file ends inside the level-0 records"
    level0 = np.frombuffer(raw, np.uint8, n * size, start).reshape(n, size)
    problem = _check_lists(level0[:, : 4 + 8 * M].copy().view("<u4"), 2 * M, n, "level-0")
    if problem:
        return problem
    labels = level0[:, size - 8:].copy().view("<u8")[:, 0]
    if not np.array_equal(np.sort(labels), np.arange(n)):
        return "its labels are not the ids 0..n-1, each once"
    stored = level0[:, 4 + 8 * M: size - 8].copy().view("<f4")
    if not np.allclose(stored, vectors[labels.astype(np.int64)], atol=1e-5):
        return "its vectors differ from the index's vectors.npy"
    lists, levels, problem = _upper_levels(raw, start + n * size, n, M)
    if problem:
        return problem
    if levels[int(h["entry_point"])] != int(h["max_level"]) or levels.max() != int(h["max_level"]):
        return f"the entry point's level is {levels[int(h['entry_point'])]}, the graph's top level {int(h['max_level'])}"
    for i, own in enumerate(lists):
        for level, row in enumerate(own, start=1):
            problem = _check_lists(row[None, :], M, n, f"level-{level}")
            if problem or (levels[row[1: 1 + row[0]]] < level).any():
                return problem or f"element {i} links at level {level} to an element that has no such level"
    return None


def check_hnsw_file(path: str | Path, vectors: np.ndarray, *, M: int) -> None:
    """Refuse (``ValueError`` naming the problem) an ``hnsw.bin`` that is not the graph of ``vectors`` (n, dim)
    with ``M`` links per node as hnswlib writes it (see the module docstring)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ValueError(f"{path} cannot be read: {err}") from None
    problem = _graph_problem(raw, np.asarray(vectors, dtype=np.float32), M)
    if problem:
        raise ValueError(f"{path}: {problem}")
