"""Train and test splits for the evaluation: a folder with ``train.*`` and ``test.*``, two files, or a hub name.

Example:
    >>> load_splits("tests/data/does-not-exist")                       # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data import load_pool, looks_like_hub_name

__all__ = ["LABEL_COLUMNS", "load_splits", "sample_per_label", "sample_queries"]

LABEL_COLUMNS = ("label", "category", "intent")
_SPLIT_FILES = ("csv", "tsv", "jsonl", "json")


def _split_file(folder: Path, split: str) -> Path:
    for ext in _SPLIT_FILES:
        if (folder / f"{split}.{ext}").is_file():
            return folder / f"{split}.{ext}"
    raise ValueError(f"{folder} has no {split} file ({', '.join(f'{split}.{e}' for e in _SPLIT_FILES)})")


def _columns(source: Any) -> list[str]:
    if isinstance(source, Path):
        from ..data import read_records

        rows = read_records(source)
        return list(rows[0]) if rows else []
    return list(source.column_names)


def load_splits(data: str, text_column: str = "text", label_column: str | None = None) -> tuple[list, list, list, list, str]:
    """``(train_texts, train_labels, test_texts, test_labels, label_column)`` from a folder, two files or a hub name.

    ``data`` is a folder with ``train.*`` and ``test.*``, ``"TRAIN_FILE,TEST_FILE"``, or a
    hub dataset with train and test splits. The label column defaults to the first of
    ``label``, ``category``, ``intent`` present.
    """
    path = Path(data)
    if path.is_dir():
        sources: list[Any] = [_split_file(path, "train"), _split_file(path, "test")]
    elif "," in data:
        sources = [Path(p.strip()) for p in data.split(",", 1)]
        for p in sources:
            if not p.is_file():
                raise ValueError(f"file not found: {p}")
    elif path.is_file():
        raise ValueError(f"--data needs train and test: a folder, 'TRAIN,TEST' files or a hub name (got one file {path})")
    elif not looks_like_hub_name(data):  # a path: the hub's answer would be its rules for dataset ids
        raise ValueError(f"--data {data}: no such folder (expected a folder with train.* and test.*, 'TRAIN,TEST' files "
                         "or a hub dataset name)")
    else:
        import datasets

        try:
            dd = datasets.load_dataset(data)
        except Exception as err:
            raise ValueError(f"{data!r} is not a folder, 'TRAIN,TEST' files or a loadable hub dataset: {err}") from err
        if "train" not in dd or "test" not in dd:
            raise ValueError(f"hub dataset {data!r} needs train and test splits (has {sorted(dd)})")
        sources = [dd["train"], dd["test"]]
    if label_column is None:
        cols = _columns(sources[0])
        found = [c for c in LABEL_COLUMNS if c in cols]
        if not found:
            raise ValueError(f"no label column found (tried {LABEL_COLUMNS}; columns: {cols}); pass --label-column")
        label_column = found[0]
    train = load_pool(sources[0], text_column=text_column, label_column=label_column)
    test = load_pool(sources[1], text_column=text_column, label_column=label_column)
    return train[0], train[1], test[0], test[1], label_column


def sample_queries(n: int, limit: int | None, *, seed: int = 0) -> list[int]:
    """Positions of the ``limit`` test queries ``icl-fungi eval --limit --seed`` answers (all ``n`` when ``limit`` is
    ``None``): a seeded sample without replacement, in split order.

    >>> sample_queries(10, 3, seed=0) == sample_queries(10, 3, seed=0)
    True
    """
    size = n if limit is None else min(limit, n)
    return sorted(np.random.default_rng(seed).choice(n, size=size, replace=False).tolist())


def sample_per_label(texts: Sequence[str], labels: Sequence, n: int, *, seed: int = 0) -> tuple[list[str], list]:
    """A seeded sample of ``n`` examples per label (all of a label's examples when it has fewer), in pool order.

    The few-shot pools of ``icl-fungi eval --per-label``: the same seed gives the same pool.

    >>> sample_per_label(["a1", "a2", "a3", "b1"], ["a", "a", "a", "b"], 2, seed=0)[1]
    ['a', 'a', 'b']
    """
    rng = np.random.default_rng(seed)
    groups: dict[Any, list[int]] = {}
    for i, lab in enumerate(labels):
        groups.setdefault(lab, []).append(i)
    rows = sorted(j for members in groups.values() for j in rng.choice(members, size=min(n, len(members)), replace=False))
    return [texts[i] for i in rows], [labels[i] for i in rows]
