"""Request and response bodies of the service, and the checks that turn bad input into a 4xx naming its field.

Types are checked strictly by pydantic (``"5"`` is not a ``k``, unknown fields are refused); limits that
depend on the settings (``k``, text sizes, list lengths) and the library's own parsing (selection specs,
templates) raise :class:`InputError`, which the app answers with ``{"error": {"field", "message", "type"}}``.

Example:
    >>> from icl_fungi.serve.settings import ServeSettings
    >>> req = RetrieveRequest(query="where is my card?", k=0)
    >>> try:
    ...     check_retrieve(req, ServeSettings("r.icl"))
    ... except InputError as err:
    ...     print(err.field, err.status)
    k 422
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..selection import Selection
from ..template import PromptTemplate, available_templates
from .settings import ServeSettings

__all__ = ["AddRequest", "InputError", "PromptRequest", "RetrieveRequest", "check_add", "check_idempotency_key", "check_prompt",
           "check_retrieve", "error_body"]

MAX_SPEC_CHARS = 1000
MAX_LABEL_CHARS = 500
MAX_PROMPT_TOKENS = 10_000_000
MAX_SEED = 2**32 - 1
MAX_KEY_CHARS = 255


class InputError(Exception):
    """Bad input: answered with ``status`` and a JSON error naming ``field``."""

    def __init__(self, field: str | None, message: str, status: int = 422, kind: str | None = None) -> None:
        super().__init__(message)
        self.field, self.message, self.status, self.kind = field, message, status, kind


def error_body(message: str, field: str | None = None, kind: str = "invalid_request") -> dict[str, Any]:
    """The JSON body of every error the service answers."""
    return {"error": {"type": kind, "field": field, "message": message}}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class RetrieveRequest(_Strict):
    query: str | list[str] = Field(description="one query, or a list of queries")
    k: int = Field(20, description="examples per query (1 to the server's --max-k)")
    selection: str | None = Field(None, description="a selection spec, e.g. 'label_cap;max_per_label=2' (default: top-k)")


class PromptRequest(_Strict):
    query: str
    k: int = 20
    template: str | dict[str, Any] | None = Field(None, description="a shipped template's name, or a template object (the JSON "
                                                        "file's content); default: the pool's, as build_prompt chooses")
    order: Literal["similar_last", "similar_first", "random"] = "similar_last"
    max_tokens: int | None = Field(None, description="drop the least similar examples until the prompt fits (ceil(chars / 4))")
    selection: str | None = None
    seed: int = Field(0, description="seed of order='random'")


class AddRequest(_Strict):
    texts: list[str] = Field(description="the new examples' texts (inputs, in a pool of pairs)")
    labels: list[str | int] | None = Field(None, description="one label per text; required when the pool has labels, "
                                                            "refused when it has none")
    outputs: list[str] | None = Field(None, description="one output per text; required when the pool holds input -> output "
                                                       "pairs, refused when it does not")


class Example(BaseModel):
    model_config = ConfigDict(extra="allow")
    text: str
    label: str | int | None = Field(description="None in a pool without labels")
    score: float
    index: int
    output: str | None = Field(None, description="what the text maps to, in a pool of pairs")


class RetrieveResponse(BaseModel):
    examples: list[Example] | None = Field(None, description="for one query")
    results: list[list[Example]] | None = Field(None, description="for a list of queries, in order")


class PromptResponse(BaseModel):
    prompt: str | list[dict[str, str]]
    kind: Literal["completion", "chat"]


class AddResponse(BaseModel):
    ids: list[int] = Field(description="the new examples' pool positions")
    seq: int | None = Field(description="the add log's sequence number of this add")
    pool_size: int


def _check_text(field: str, text: str, limit: int, what: str = "text") -> None:
    if not text.strip():
        raise InputError(field, f"{field}: the {what} is empty or only whitespace")
    if len(text) > limit:
        raise InputError(field, f"{field}: the {what} has {len(text)} characters, more than the limit of {limit}", 413)


def _check_k(k: int, settings: ServeSettings) -> None:
    if not 1 <= k <= settings.max_k:
        raise InputError("k", f"k must be between 1 and {settings.max_k}, got {k}")


def _selection(spec: str | None) -> Selection | None:
    if spec is None:
        return None
    if len(spec) > MAX_SPEC_CHARS:
        raise InputError("selection", f"selection: the spec has {len(spec)} characters, more than {MAX_SPEC_CHARS}")
    try:
        return Selection.from_spec(spec)
    except (ValueError, TypeError, LookupError) as err:
        raise InputError("selection", f"selection: {err}") from None


def check_retrieve(req: RetrieveRequest, settings: ServeSettings) -> tuple[list[str], Selection | None]:
    """The queries of a retrieve request and its parsed selection; InputError naming the field otherwise."""
    _check_k(req.k, settings)
    queries = [req.query] if isinstance(req.query, str) else req.query
    if not queries:
        raise InputError("query", "query: the list is empty")
    if len(queries) > settings.max_queries:
        raise InputError("query", f"query: {len(queries)} queries, more than the limit of {settings.max_queries}", 413)
    for i, q in enumerate(queries):
        _check_text("query" if isinstance(req.query, str) else f"query[{i}]", q, settings.max_text_chars, "query")
    return queries, _selection(req.selection)


def _template(value: str | dict[str, Any] | None) -> str | PromptTemplate | None:
    """A shipped template's name (never a path: the service reads no file a request names), an inline one, or
    ``None`` (the pool's default)."""
    if value is None:
        return None
    if isinstance(value, str):
        if value not in available_templates():
            raise InputError("template", f"template: unknown template {value!r}; the shipped ones are {available_templates()}")
        return value
    try:
        return PromptTemplate.from_dict(value, source="the template object")
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise InputError("template", f"template: {err}") from None


def check_prompt(req: PromptRequest, settings: ServeSettings) -> tuple[Selection | None, str | PromptTemplate]:
    """The parsed selection and template of a prompt request; InputError naming the field otherwise."""
    _check_k(req.k, settings)
    _check_text("query", req.query, settings.max_text_chars, "query")
    if req.max_tokens is not None and not 1 <= req.max_tokens <= MAX_PROMPT_TOKENS:
        raise InputError("max_tokens", f"max_tokens must be between 1 and {MAX_PROMPT_TOKENS}, got {req.max_tokens}")
    if not 0 <= req.seed <= MAX_SEED:
        raise InputError("seed", f"seed must be between 0 and {MAX_SEED}, got {req.seed}")
    return _selection(req.selection), _template(req.template)


def check_add(req: AddRequest, settings: ServeSettings, *, has_labels: bool = True, has_outputs: bool = False) -> None:
    """An add request's texts, labels and outputs: 1 to ``max_examples`` texts, none empty; one label per text
    exactly when the pool has labels, one output per text exactly when it holds pairs."""
    if not req.texts:
        raise InputError("texts", "texts: the list is empty")
    if len(req.texts) > settings.max_examples:
        raise InputError("texts", f"texts: {len(req.texts)} examples, more than the limit of {settings.max_examples}", 413)
    for i, text in enumerate(req.texts):
        _check_text(f"texts[{i}]", text, settings.max_text_chars)
    for field, values, needed, what in (("labels", req.labels, has_labels, "the pool has labels"),
                                        ("outputs", req.outputs, has_outputs, "the pool holds input -> output pairs")):
        if needed and values is None:
            raise InputError(field, f"{field}: required, one per text ({what})")
        if not needed and values is not None:
            raise InputError(field, f"{field}: this pool has no {field}; leave the field out")
        if values is not None and len(values) != len(req.texts):
            raise InputError(field, f"{field}: {len(values)} {field} for {len(req.texts)} texts")
    for i, output in enumerate(req.outputs or ()):
        _check_text(f"outputs[{i}]", output, settings.max_text_chars, "output")
    for i, label in enumerate(req.labels or ()):
        if isinstance(label, str):
            _check_text(f"labels[{i}]", label, MAX_LABEL_CHARS, "label")


def check_idempotency_key(value: str | None) -> str | None:
    """The ``Idempotency-Key`` header: ``None``, or 1 to 255 visible ASCII characters (no spaces); InputError otherwise.

    >>> check_idempotency_key("9b2f-41c7"), check_idempotency_key(None)
    ('9b2f-41c7', None)
    """
    if value is None:
        return None
    if not 1 <= len(value) <= MAX_KEY_CHARS or not all("!" <= c <= "~" for c in value):
        raise InputError("idempotency-key", f"idempotency-key: expected 1 to {MAX_KEY_CHARS} visible ASCII characters "
                         f"(no spaces), got {len(value)} characters")
    return value
