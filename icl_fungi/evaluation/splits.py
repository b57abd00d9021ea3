"""Train and test splits for the evaluation: a folder with ``train.*`` and ``test.*``, two files, or a hub name.

Example:
    >>> load_splits("tests/data/does-not-exist")                       # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ..data import load_pool

__all__ = ["LABEL_COLUMNS", "load_splits"]

LABEL_COLUMNS = ("label", "category", "intent")
_SPLIT_FILES = ("csv", "tsv", "jsonl", "json")


def _split_file(folder: Path, split: str) -> Path:
    for ext in _SPLIT_FILES:
        if (folder / f"{split}.{ext}").is_file():
            return folder / f"{split}.{ext}"
    raise ValueError(f"{folder} has no {split} file ({', '.join(f'{split}.{e}' for e in _SPLIT_FILES)})")


def _file_columns(path: Path) -> list[str]:
    """The column names of a split file: the CSV/TSV header, or the keys of the first JSON record."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".jsonl", ".ndjson", ".json"):
        raise ValueError(f"unsupported file type {suffix!r} for {path} (use .csv, .tsv, .jsonl or .json)")
    with path.open(newline="", encoding="utf-8") as fh:
        if suffix in (".csv", ".tsv"):
            return next(csv.reader(fh, delimiter="\t" if suffix == ".tsv" else ","), [])
        try:
            if suffix == ".json":
                rows = json.load(fh)
                record = rows[0] if isinstance(rows, list) and rows else {}
            else:
                first = next((line for line in fh if line.strip()), "{}")
                record = json.loads(first)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err.msg})") from None
    return list(record) if isinstance(record, dict) else []


def _columns(source: Any) -> list[str]:
    return _file_columns(source) if isinstance(source, Path) else list(source.column_names)


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
