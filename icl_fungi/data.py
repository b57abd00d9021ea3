"""Loading a labelled example pool from files, datasets, data frames or records.

Example:
    >>> texts, labels = load_pool([{"text": "hi", "label": "greet"}], text_column="text", label_column="label")
    >>> texts, labels
    (['hi'], ['greet'])
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["check_labels", "check_texts", "load_pool", "read_records"]

Label = str | int


def check_texts(texts: object, *, what: str = "text") -> list[str]:
    """Validate a sequence of texts: each a non-empty, non-blank ``str``."""
    if isinstance(texts, str) or not isinstance(texts, Iterable):
        raise TypeError(f"expected a list of strings for {what}s, got {type(texts).__name__}")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"{what} #{i} must be a str, got {type(t).__name__}: {t!r:.60}")
        if not t.strip():
            raise ValueError(f"{what} #{i} is empty or only whitespace")
    return out


def check_labels(labels: object, n: int) -> list[Label]:
    """Validate labels: ``str`` or ``int`` (not bool, not missing), one per text."""
    if isinstance(labels, str) or not isinstance(labels, Iterable):
        raise TypeError(f"expected a list of labels, got {type(labels).__name__}")
    out = list(labels)
    if len(out) != n:
        raise ValueError(f"got {n} texts but {len(out)} labels")
    clean: list[Label] = []
    for i, lab in enumerate(out):
        if hasattr(lab, "item") and not isinstance(lab, str):  # numpy scalars
            lab = lab.item()
        if isinstance(lab, float) and math.isnan(lab):
            raise ValueError(f"label #{i} is missing (NaN)")
        if isinstance(lab, bool) or not isinstance(lab, str | int):
            raise TypeError(f"label #{i} must be a str or int, got {type(lab).__name__}: {lab!r:.60}")
        if isinstance(lab, str) and not lab.strip():
            raise ValueError(f"label #{i} is empty")
        clean.append(lab)
    return clean


def _columns_from_records(records: Sequence[Mapping[str, Any]], text_column: str, label_column: str) -> tuple[list, list]:
    texts, labels = [], []
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise TypeError(f"record #{i} must be a dict, got {type(rec).__name__}")
        for col in (text_column, label_column):
            if col not in rec:
                raise ValueError(f"record #{i} has no column {col!r} (columns: {sorted(rec)})")
        texts.append(rec[text_column])
        labels.append(rec[label_column])
    return texts, labels


def read_records(path: Path) -> list[dict[str, Any]]:
    """The rows of a CSV/TSV/JSONL/JSON file as dicts."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ","))
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
        return rows
    if suffix == ".json":
        rows = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of records")
        return rows
    raise ValueError(f"unsupported file type {suffix!r} for {path} (use .csv, .tsv, .jsonl or .json)")


def _map_int_labels(dataset: Any, label_column: str, labels: list) -> list:
    """Map integer class ids to names when a datasets ClassLabel feature carries them."""
    feature = getattr(dataset, "features", {}).get(label_column) if hasattr(dataset, "features") else None
    names = getattr(feature, "names", None)
    if names and all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
        return [names[v] for v in labels]
    return labels


def load_pool(
    data: Any,
    *,
    text_column: str = "text",
    label_column: str = "label",
    split: str | None = None,
) -> tuple[list[str], list[Label]]:
    """Read ``(texts, labels)`` from any supported source.

    ``data`` may be a CSV/TSV/JSONL/JSON path, a ``datasets.Dataset``, a
    ``datasets.DatasetDict`` with ``split``, a pandas ``DataFrame``, a list of
    dicts, or a Hugging Face hub dataset name (needs the hub; ``split`` defaults
    to ``"train"``). Texts and labels are validated; an empty pool is an error.
    """
    texts: list
    labels: list
    if isinstance(data, str | os.PathLike):
        path = Path(data)
        if path.is_file():
            texts, labels = _columns_from_records(read_records(path), text_column, label_column)
        elif path.exists():
            raise ValueError(f"{path} is a directory; pass a file (e.g. {path / 'train.csv'})")
        elif isinstance(data, str) and not data.endswith((".csv", ".tsv", ".jsonl", ".json", ".ndjson")):
            import datasets

            try:
                ds = datasets.load_dataset(data, split=split or "train")
            except Exception as err:
                raise ValueError(f"{data!r} is neither a local file nor a loadable hub dataset: {err}") from err
            return load_pool(ds, text_column=text_column, label_column=label_column)
        else:
            raise ValueError(f"file not found: {path}")
    elif type(data).__name__ == "DatasetDict":
        if split is None:
            raise ValueError(f"a DatasetDict needs split= (one of {sorted(data)})")
        if split not in data:
            raise ValueError(f"split {split!r} not in the DatasetDict (splits: {sorted(data)})")
        return load_pool(data[split], text_column=text_column, label_column=label_column)
    elif type(data).__name__ in ("Dataset", "DataFrame"):
        columns = list(data.column_names) if hasattr(data, "column_names") else list(data.columns)
        for col in (text_column, label_column):
            if col not in columns:
                raise ValueError(f"no column {col!r} (columns: {columns})")
        texts, labels = list(data[text_column]), list(data[label_column])
        if type(data).__name__ == "Dataset":
            labels = _map_int_labels(data, label_column, labels)
    elif isinstance(data, Sequence) and not isinstance(data, str | bytes):
        texts, labels = _columns_from_records(data, text_column, label_column)
    else:
        raise TypeError(
            "data must be a file path, datasets.Dataset/DatasetDict, pandas.DataFrame, "
            f"list of dicts or hub dataset name, got {type(data).__name__}"
        )
    if not texts:
        raise ValueError("the example pool is empty")
    return check_texts(texts), check_labels(labels, len(texts))
