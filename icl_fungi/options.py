"""``key=value`` options as the command line and selector specs spell them.

Example:
    >>> parse_value("0.5"), parse_value("true"), parse_value("none"), parse_value("labels")
    (0.5, True, None, 'labels')
    >>> parse_options(["max_per_label=2", "exclude_query=true"])
    {'max_per_label': 2, 'exclude_query': True}
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["parse_options", "parse_value"]


def parse_value(text: str) -> Any:
    """``text`` as a bool (``true``/``false``), ``None`` (``none``/``null``), an int, a float, or else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def parse_options(pairs: Iterable[str], *, what: str = "option") -> dict[str, Any]:
    """``["key=value", ...]`` as a dict of parsed values; a pair without ``=`` or a repeated key is a ``ValueError``."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, eq, raw = pair.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ValueError(f"{what} {pair!r} is not key=value")
        if key in out:
            raise ValueError(f"{what} {key!r} is given twice")
        out[key] = parse_value(raw)
    return out
