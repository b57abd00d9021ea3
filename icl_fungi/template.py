"""Prompt templates: JSON files under ``prompts/`` (shipped in the wheel), parsed and validated.

A template is a JSON file. Completion templates have ``"template"``; chat templates
have ``"messages"``. Placeholders are ``{labels}``, ``{examples}``, ``{query}`` in the
prompt and ``{text}`` with ``{label}`` (classification) and/or ``{output}`` (pairs:
input -> output) in an example; ``{{`` and ``}}`` are literal braces. Values are
inserted as data: braces, newlines or role-like text in an example or query never
change the prompt's structure.

Example:
    >>> t = PromptTemplate.load("classification-completion")
    >>> print(t.render([("card not here", "card_arrival")], "where is my card?", labels=["card_arrival"]))
    Query: card not here
    Intent: card_arrival
    <BLANKLINE>
    Query: where is my card?
    Intent:
    >>> print(PromptTemplate.load("pairs-completion").render([("2 + 2?", None, "4")], "3 + 5?"))
    Input: 2 + 2?
    Output: 4
    <BLANKLINE>
    Input: 3 + 5?
    Output:
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["Message", "Prompt", "PromptTemplate", "available_templates"]

logger = logging.getLogger(__name__)

PROMPT_FIELDS = ("labels", "examples", "query")
EXAMPLE_FIELDS = ("text", "label", "output")
SHOWN_FIELDS = ("label", "output")  # an example shows its text and at least one of these
_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}|\{|\}")
_KNOWN_KEYS = {"name", "kind", "description", "template", "messages", "example", "example_separator",
               "example_messages", "label_separator", "single_line", "stop"}
_ROLES = ("system", "user", "assistant")

Message = dict[str, str]
Prompt = str | list[Message]


def _prompts_dir() -> Path | None:
    """Where the shipped templates are: ``icl_fungi/prompts`` in a wheel, ``prompts/`` in a checkout."""
    try:
        packaged = Path(str(resources.files("icl_fungi.prompts")))
        if any(packaged.glob("*.json")):
            return packaged
    except (ModuleNotFoundError, TypeError):
        pass
    source = Path(__file__).resolve().parents[1] / "prompts"
    return source if source.is_dir() else None


def available_templates() -> list[str]:
    """Names of the templates shipped with the package."""
    d = _prompts_dir()
    return sorted(p.stem for p in d.glob("*.json")) if d else []


@dataclass(frozen=True)
class _Parsed:
    """A template string split into literal text and placeholder names."""

    parts: tuple[tuple[bool, str], ...]  # (is_placeholder, text or name)

    @property
    def names(self) -> set[str]:
        return {s for is_ph, s in self.parts if is_ph}

    def fill(self, values: dict[str, str]) -> str:
        return "".join(values[s] if is_ph else s for is_ph, s in self.parts)


def _parse(text: Any, where: str, allowed: Sequence[str]) -> _Parsed:
    if not isinstance(text, str):
        raise ValueError(f"{where} must be a string, got {type(text).__name__}")
    parts: list[tuple[bool, str]] = []
    pos = 0
    for m in _TOKEN.finditer(text):
        if m.start() > pos:
            parts.append((False, text[pos : m.start()]))
        tok = m.group(0)
        if tok in ("{{", "}}"):
            parts.append((False, tok[0]))
        elif m.group(1) is not None:
            if m.group(1) not in allowed:
                raise ValueError(f"{where}: unknown placeholder {{{m.group(1)}}} (allowed: {', '.join(allowed)})")
            parts.append((True, m.group(1)))
        else:
            raise ValueError(f"{where}: unmatched {tok!r} at position {m.start()} (write {tok * 2} for a literal brace)")
        pos = m.end()
    if pos < len(text):
        parts.append((False, text[pos:]))
    return _Parsed(tuple(parts))


def _chat_messages(data: dict, source: str) -> tuple[tuple, set[str]]:
    """A chat template's ``messages``, parsed, and the placeholders they use."""
    if "messages" not in data or "template" in data or not isinstance(data["messages"], list) or not data["messages"]:
        raise ValueError(f"{source}: a chat template needs a non-empty 'messages' list (and no 'template')")
    msgs: list = []
    names: set[str] = set()
    for i, m in enumerate(data["messages"]):
        role = m.get("role") if isinstance(m, dict) else None
        if role == "examples":
            msgs.append(("examples", None))
            continue
        if role not in _ROLES:
            raise ValueError(f"{source}: messages[{i}] has role {role!r}; use one of {(*_ROLES, 'examples')}")
        parsed = _parse(m.get("content"), f"{source}: messages[{i}]", PROMPT_FIELDS)
        names |= parsed.names
        msgs.append((role, parsed))
    return tuple(msgs), names


def _check_placeholders(source: str, names: set[str], messages: tuple, example: Any, ex_msgs: tuple) -> None:
    """The query and the examples each have a place, and an example's format shows every example field."""
    slot = any(role == "examples" for role, _ in messages)
    if "query" not in names:
        raise ValueError(f"{source}: missing placeholder {{query}}")
    if slot and not ex_msgs:
        raise ValueError(f"{source}: an 'examples' message slot needs 'example_messages'")
    if not slot and "examples" not in names:
        raise ValueError(f"{source}: missing placeholder {{examples}} (or an 'examples' message slot)")
    if "examples" in names:
        if example is None:
            raise ValueError(f"{source}: {{examples}} needs an 'example' format")
        _check_example_fields(f"{source}: example", example.names)
    if slot:
        _check_example_fields(f"{source}: example_messages", set().union(*(p.names for _, p in ex_msgs)))


def _check_example_fields(where: str, used: set[str]) -> None:
    """An example format shows the text and its label or its output (or both)."""
    if "text" not in used:
        raise ValueError(f"{where}: missing placeholder {{text}}")
    if not used & set(SHOWN_FIELDS):
        raise ValueError(f"{where}: missing placeholder {{label}} (classification) or {{output}} (pairs)")


@dataclass(frozen=True)
class PromptTemplate:
    """A validated prompt template; build one with :meth:`load` or :meth:`from_dict`."""

    name: str
    kind: str  # "chat" | "completion"
    description: str = ""
    template: _Parsed | None = None
    messages: tuple[tuple[str, _Parsed | None], ...] = ()  # role "examples" marks the example slot
    example: _Parsed | None = None
    example_messages: tuple[tuple[str, _Parsed], ...] = ()
    example_separator: str = "\n\n"
    label_separator: str = ", "
    single_line: bool = True
    stop: tuple[str, ...] = ()
    source: str = "<dict>"
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def load(cls, name_or_path: str | Path) -> PromptTemplate:
        """Load a shipped template by name (see :func:`available_templates`) or a JSON file by path."""
        if isinstance(name_or_path, PromptTemplate):
            return name_or_path
        path = Path(name_or_path)
        if not path.is_file():
            d = _prompts_dir()
            candidate = d / f"{name_or_path}.json" if d else None
            if candidate is None or not candidate.is_file():
                raise ValueError(f"no prompt template {str(name_or_path)!r}: not a file, and not one of {available_templates()}")
            path = candidate
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "<dict>") -> PromptTemplate:
        """Validate a template given as a dict (the JSON file's content)."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: a template must be a JSON object")
        unknown = set(data) - _KNOWN_KEYS
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {sorted(unknown)}")
        kind = data.get("kind")
        if kind not in ("chat", "completion"):
            raise ValueError(f"{source}: 'kind' must be 'chat' or 'completion', got {kind!r}")
        example = _parse(data["example"], f"{source}: example", EXAMPLE_FIELDS) if "example" in data else None
        ex_msgs = tuple(
            (m.get("role"), _parse(m.get("content"), f"{source}: example_messages[{i}]", EXAMPLE_FIELDS))
            for i, m in enumerate(data.get("example_messages", []))
        )
        for i, (role, _) in enumerate(ex_msgs):
            if role not in _ROLES:
                raise ValueError(f"{source}: example_messages[{i}] has role {role!r}; use one of {_ROLES}")
        names: set[str] = set()
        template, messages = None, ()
        if kind == "completion":
            if "template" not in data or "messages" in data:
                raise ValueError(f"{source}: a completion template needs 'template' (and no 'messages')")
            template = _parse(data["template"], f"{source}: template", PROMPT_FIELDS)
            names = template.names
        else:
            messages, names = _chat_messages(data, source)
        _check_placeholders(source, names, messages, example, ex_msgs)
        stop = data.get("stop", [])
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise ValueError(f"{source}: 'stop' must be a list of strings")
        return cls(
            name=str(data.get("name") or Path(source).stem),
            kind=kind,
            description=str(data.get("description", "")),
            template=template,
            messages=messages,
            example=example,
            example_messages=ex_msgs,
            example_separator=str(data.get("example_separator", "\n\n")),
            label_separator=str(data.get("label_separator", ", ")),
            single_line=bool(data.get("single_line", True)),
            stop=tuple(stop),
            source=source,
            raw=data,
        )

    @property
    def uses_labels(self) -> bool:
        """True when the template shows the label list."""
        if self.template is not None:
            return "labels" in self.template.names
        return any(p is not None and "labels" in p.names for _, p in self.messages)

    @property
    def example_fields(self) -> frozenset[str]:
        """The example fields (``text``, ``label``, ``output``) the template shows."""
        parts = ([self.example] if self.example is not None else []) + [p for _, p in self.example_messages]
        return frozenset().union(*(p.names for p in parts))

    @property
    def needs_labels(self) -> bool:
        """True when the template shows the label list or each example's label."""
        return self.uses_labels or "label" in self.example_fields

    @property
    def needs_outputs(self) -> bool:
        """True when the template shows each example's output."""
        return "output" in self.example_fields

    def check_pool(self, *, has_labels: bool, has_outputs: bool) -> None:
        """Refuse (``ValueError``) a pool that lacks what the template shows: labels or outputs.

        Example:
            >>> PromptTemplate.load("classification-completion").check_pool(has_labels=False, has_outputs=True)  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ValueError: prompt template 'classification-completion' shows the examples' labels, and the pool has none (...)
        """
        missing = [what for what, need, have in (("labels", self.needs_labels, has_labels), ("outputs", self.needs_outputs, has_outputs))
                   if need and not have]
        if not missing:
            return
        if not has_labels and not has_outputs:
            hint = "a pool of plain texts (no labels, no outputs) can be retrieved from, but a prompt needs one of them to show"
        elif has_outputs:
            hint = "for a pool of pairs use template='pairs-completion' or 'pairs-chat'"
        else:
            hint = "for a labelled pool use template='classification-completion' or another that shows {label}"
        raise ValueError(f"prompt template {self.name!r} shows the examples' {' and '.join(missing)}, and the pool has none ({hint})")

    def _clean(self, value: object) -> str:
        text = str(value)
        return " ".join(text.split()) if self.single_line else text

    def _example_values(self, i: int, example: Sequence[object]) -> dict[str, str]:
        """The cleaned ``text``/``label``/``output`` of an example tuple; a field the template shows must not be missing."""
        if not isinstance(example, tuple | list) or len(example) not in (2, 3):
            raise TypeError(f"example #{i} must be a (text, label) or (text, label, output) tuple, got {example!r:.80}")
        values = dict(zip(EXAMPLE_FIELDS, example, strict=False))
        for f in self.example_fields:
            if values.get(f) is None:
                raise ValueError(f"prompt template {self.name!r} shows each example's {{{f}}}, and example #{i} has none")
        return {f: self._clean(v) for f, v in values.items() if v is not None}

    def render(self, examples: Sequence[Sequence[object]], query: str, *, labels: Sequence[object] = ()) -> Prompt:
        """Render ``examples`` (``(text, label)`` or ``(text, label, output)`` tuples, in prompt order) and ``query``."""
        label_list = self.label_separator.join(str(lab) for lab in labels)
        ex_values = [self._example_values(i, ex) for i, ex in enumerate(examples)]
        rendered = self.example_separator.join(self.example.fill(v) for v in ex_values) if self.example is not None else ""
        values = {"labels": label_list, "examples": rendered, "query": self._clean(query)}
        if self.kind == "completion":
            return self.template.fill(values)
        out: list[Message] = []
        for role, parsed in self.messages:
            if role == "examples":
                for v in ex_values:
                    out.extend({"role": r, "content": p.fill(v)} for r, p in self.example_messages)
            else:
                out.append({"role": role, "content": parsed.fill(values)})
        return out
