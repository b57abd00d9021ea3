"""Loading an example pool (texts, and per text an optional label and an optional output) from files,
datasets, data frames or records.

Example:
    >>> texts, labels = load_pool([{"text": "hi", "label": "greet"}], text_column="text", label_column="label")
    >>> texts, labels
    (['hi'], ['greet'])
    >>> load_examples([{"q": "2+2?", "a": "4"}], text_column="q", label_column=None, output_column="a")
    (['2+2?'], None, ['4'])
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["check_labels", "check_outputs", "check_texts", "load_examples", "load_pool", "looks_like_hub_name", "read_records",
           "sorted_labels"]

Label = str | int


def sorted_labels(labels: Iterable[object]) -> list[object]:
    """Distinct labels in the order prompts list them: case-insensitive, then exact.

    Example:
        >>> sorted_labels(["b", "A", "a", "b"])
        ['A', 'a', 'b']
    """
    return sorted(set(labels), key=lambda lab: (str(lab).casefold(), str(lab)))


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
        if lab is None:
            raise TypeError(f"label #{i} is missing (None); for a pool without labels pass labels=None")
        if isinstance(lab, bool) or not isinstance(lab, str | int):
            raise TypeError(f"label #{i} must be a str or int, got {type(lab).__name__}: {lab!r:.60}")
        if isinstance(lab, str) and not lab.strip():
            raise ValueError(f"label #{i} is empty")
        clean.append(lab)
    return clean


def check_outputs(outputs: object, n: int) -> list[str]:
    """Validate outputs (what each example's input maps to: an answer, a reply, a query): one non-empty ``str``
    per text, kept exactly as given (no stripping), long or repeated ones included."""
    if isinstance(outputs, str | bytes) or not isinstance(outputs, Iterable):
        raise TypeError(f"expected a list of output strings, got {type(outputs).__name__}")
    out = list(outputs)
    if len(out) != n:
        raise ValueError(f"got {n} inputs but {len(out)} outputs: give one output per input")
    for i, o in enumerate(out):
        if o is None or (isinstance(o, float) and math.isnan(o)):
            raise ValueError(f"output #{i} is missing ({o!r})")
        if not isinstance(o, str):
            raise TypeError(f"output #{i} must be a str, got {type(o).__name__}: {o!r:.60}")
        if not o.strip():
            raise ValueError(f"output #{i} is empty or only whitespace")
        if not o.isascii():
            try:
                o.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"output #{i} is not valid Unicode text (a lone surrogate): it could not be saved") from None
    return out


_HUB_NAME = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


def looks_like_hub_name(name: str) -> bool:
    """Whether ``name`` could be a hub dataset id (``name`` or ``owner/name``); a path such as ``./data``,
    ``/data``, ``~/data`` or ``a/b/c`` cannot, so it is never sent to the hub (whose answer would be its id rules).

    >>> looks_like_hub_name("PolyAI/banking77"), looks_like_hub_name("./nosuchdir"), looks_like_hub_name("runs/a/b")
    (True, False, False)
    """
    return bool(_HUB_NAME.fullmatch(name)) and ".." not in name and "--" not in name and not name.endswith((".", "-"))


_NO_LABELS_HINT = "for a pool without labels pass label_column=None (icl-fungi build: --no-labels)"


def _missing(col: str, roles: dict[str, str], columns: list[str], where: str = "") -> ValueError:
    hint = f"; {_NO_LABELS_HINT}" if roles.get(col) == "label" else ""
    return ValueError(f"{where}no column {col!r} (columns: {columns}){hint}")


def _columns_from_records(records: Sequence[Mapping[str, Any]], roles: dict[str, str]) -> dict[str, list]:
    """The values of the columns ``roles`` names (column -> "text" / "label" / "output"), one list per column."""
    values: dict[str, list] = {col: [] for col in roles}
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise TypeError(f"record #{i} must be a dict, got {type(rec).__name__}")
        for col in roles:
            if col not in rec:
                raise _missing(col, roles, sorted(rec), f"record #{i} has ")
            values[col].append(rec[col])
    return values


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


def _read_columns(data: Any, roles: dict[str, str], split: str | None) -> dict[str, list]:
    """The values of the columns ``roles`` names, from any supported source (see :func:`load_examples`)."""
    if isinstance(data, str | os.PathLike):
        path = Path(data)
        if path.is_file():
            return _columns_from_records(read_records(path), roles)
        if path.exists():
            raise ValueError(f"{path} is a directory; pass a file (e.g. {path / 'train.csv'})")
        if isinstance(data, str) and not data.endswith((".csv", ".tsv", ".jsonl", ".json", ".ndjson")) and looks_like_hub_name(data):
            import datasets

            try:
                ds = datasets.load_dataset(data, split=split or "train")
            except Exception as err:
                raise ValueError(f"{data!r} is neither a local file nor a loadable hub dataset: {err}") from err
            return _read_columns(ds, roles, None)
        raise ValueError(f"file not found: {path}")
    if type(data).__name__ == "DatasetDict":
        if split is None:
            raise ValueError(f"a DatasetDict needs split= (one of {sorted(data)})")
        if split not in data:
            raise ValueError(f"split {split!r} not in the DatasetDict (splits: {sorted(data)})")
        return _read_columns(data[split], roles, None)
    if type(data).__name__ in ("Dataset", "DataFrame"):
        columns = list(data.column_names) if hasattr(data, "column_names") else list(data.columns)
        for col in roles:
            if col not in columns:
                raise _missing(col, roles, columns)
        values = {col: list(data[col]) for col in roles}
        if type(data).__name__ == "Dataset":
            values.update({col: _map_int_labels(data, col, values[col]) for col, role in roles.items() if role == "label"})
        return values
    if isinstance(data, Sequence) and not isinstance(data, str | bytes):
        return _columns_from_records(data, roles)
    raise TypeError("data must be a file path, datasets.Dataset/DatasetDict, pandas.DataFrame, "
                    f"list of dicts or hub dataset name, got {type(data).__name__}")


def _check_column(name: str, value: object, *, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a column name (a non-empty str){' or None' if optional else ''}, got {value!r}")


def load_examples(data: Any, *, text_column: str = "text", label_column: str | None = "label", output_column: str | None = None,
                  split: str | None = None) -> tuple[list[str], list[Label] | None, list[str] | None]:
    """Read ``(texts, labels, outputs)`` from any supported source; ``labels`` is ``None`` when ``label_column``
    is ``None`` (a pool without labels), ``outputs`` is ``None`` unless ``output_column`` names a column.

    ``data`` may be a CSV/TSV/JSONL/JSON path, a ``datasets.Dataset``, a ``datasets.DatasetDict`` with
    ``split``, a pandas ``DataFrame``, a list of dicts, or a Hugging Face hub dataset name (needs the hub;
    ``split`` defaults to ``"train"``). Every value is validated; an empty pool is an error.
    """
    _check_column("text_column", text_column, optional=False)
    _check_column("label_column", label_column, optional=True)
    _check_column("output_column", output_column, optional=True)
    roles = {text_column: "text"}
    for col, role in ((label_column, "label"), (output_column, "output")):
        if col is not None:
            roles.setdefault(col, role)
    values = _read_columns(data, roles, split)
    if not values[text_column]:
        raise ValueError("the example pool is empty")
    texts = check_texts(values[text_column])
    labels = None if label_column is None else check_labels(values[label_column], len(texts))
    outputs = None if output_column is None else check_outputs(values[output_column], len(texts))
    return texts, labels, outputs


def load_pool(data: Any, *, text_column: str = "text", label_column: str | None = "label",
              split: str | None = None) -> tuple[list[str], list[Label] | None]:
    """Read ``(texts, labels)`` from any supported source (see :func:`load_examples`; ``label_column=None``
    gives ``labels=None``)."""
    texts, labels, _ = load_examples(data, text_column=text_column, label_column=label_column, split=split)
    return texts, labels
