"""Registries of the extension points (KL heads, view kinds, selection strategies, index backends): classes by name.

A registry maps a name (a class attribute such as ``name``, ``kind`` or ``backend``) to a class. Registering
checks the class and refuses a name another class holds; looking up an unknown name is a ``ValueError`` that
lists the registered ones. An entry may be a ``"module:Class"`` string, imported on first use (built-ins whose
modules are heavy); names stored in saved files are only ever looked up, never imported from.

Example:
    >>> class Base: ...
    >>> shapes = Registry("shape", "name", base=Base, hint="register your own with register_shape")
    >>> class Circle(Base):
    ...     name = "circle"
    >>> shapes.register(Circle) is Circle, shapes.names(), shapes.get("circle") is Circle
    (True, ('circle',), True)
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Registry"]


def _qualified(entry: type | str) -> str:
    return entry if isinstance(entry, str) else f"{entry.__module__}:{entry.__qualname__}"


class Registry:
    """Classes by name: ``what`` names the kind in messages, ``key`` is the class attribute holding the name,
    ``base`` (optional) the class every entry must subclass, ``hint`` how to register your own."""

    def __init__(self, what: str, key: str, *, base: type | None = None, hint: str = "") -> None:
        self.what, self.key, self.base, self.hint = what, key, base, hint
        self._entries: dict[str, type | str] = {}

    def register(self, cls: Any) -> Any:
        """Add ``cls`` under its ``key`` attribute (the same class again is a no-op); returns ``cls``."""
        if not isinstance(cls, type) or (self.base is not None and not issubclass(cls, self.base)):
            need = f"a {self.base.__name__} subclass" if self.base is not None else "a class"
            raise TypeError(f"registering a {self.what} needs {need}, got {cls!r}")
        name = getattr(cls, self.key, None)
        if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"{cls.__name__}.{self.key} must be a non-empty word (letters, digits, '-', '_'), got {name!r}")
        known = self._entries.get(name)
        if known is not None and _qualified(known) != _qualified(cls) and getattr(known, "__qualname__", None) != cls.__qualname__:
            raise ValueError(f"a {self.what} named {name!r} is already registered ({_qualified(known)})")
        self._entries[name] = cls
        return cls

    def register_lazy(self, name: str, target: str) -> None:
        """Add ``"module:Class"`` under ``name``, imported when first looked up."""
        self._entries[name] = target

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def get(self, name: object) -> Any:
        """The class registered under ``name``."""
        if not isinstance(name, str) or name not in self._entries:
            raise ValueError(f"unknown {self.what} {name!r}; registered: {self.names()}" + (f" ({self.hint})" if self.hint else ""))
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, qualname = entry.partition(":")
            entry = self._entries[name] = getattr(importlib.import_module(module), qualname)
        return entry
