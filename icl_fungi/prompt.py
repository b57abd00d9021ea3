"""Rendering prompts: example order, the label list, token budgets, and :func:`compose_prompt`, the one
function that turns retrieved examples into a prompt (used by ``ICLRetriever.build_prompt`` and the evaluation).

Example:
    >>> from types import SimpleNamespace as Ex
    >>> ex = [Ex(text="card not here", label="card_arrival", score=0.9, index=0)]
    >>> print(compose_prompt("classification-completion", ex, "where is my card?"))
    Query: card not here
    Intent: card_arrival
    <BLANKLINE>
    Query: where is my card?
    Intent:
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .data import sorted_labels
from .template import Prompt, PromptTemplate

if TYPE_CHECKING:
    from .pool import RetrievedExample
    from .selection import Selection

__all__ = ["ORDERS", "PromptMethods", "compose_prompt", "default_template", "get_template", "make_token_counter", "order_examples",
           "render_prompt", "sorted_labels"]

logger = logging.getLogger(__name__)

ORDERS = ("similar_last", "similar_first", "random")


class Example(Protocol):
    """What a prompt needs of a retrieved example (``RetrievedExample`` has it); an ``output`` attribute, when
    present, is the example's output (pairs)."""

    text: str
    label: Any
    score: float
    index: int


# ---------------------------------------------------------------- token counting
_OPENAI_PREFIXES = ("gpt-", "gpt4", "o1", "o3", "o4", "text-davinci", "davinci", "babbage", "chatgpt", "text-embedding")


def _char_estimate(text: str) -> int:
    return math.ceil(len(text) / 4)


def make_token_counter(tokenizer: object = None) -> Callable[[str], int]:
    """A function counting tokens of a string.

    ``tokenizer`` may be: ``None`` (the fallback: ``ceil(characters / 4)``, the usual
    estimate for English BPE tokenizers); a callable ``str -> int``; an object with
    ``encode``; an OpenAI model name (``gpt-4o-mini``...: tiktoken, when it is
    installed and its encoding can be loaded, else the fallback with a warning); or a
    transformers tokenizer name or local path.
    """
    if tokenizer is None:
        return _char_estimate
    if isinstance(tokenizer, str):
        return _named_counter(tokenizer)
    if callable(tokenizer) and not hasattr(tokenizer, "encode"):
        return tokenizer  # type: ignore[return-value]
    if hasattr(tokenizer, "encode"):
        enc = tokenizer
        try:
            enc.encode("x", add_special_tokens=False)
            return lambda s: len(enc.encode(s, add_special_tokens=False))
        except TypeError:
            return lambda s: len(enc.encode(s))
    raise TypeError(f"tokenizer must be None, a name/path, a callable or a tokenizer, got {type(tokenizer).__name__}")


@functools.lru_cache(maxsize=8)
def _named_counter(tokenizer: str) -> Callable[[str], int]:
    """Counter for a tokenizer given by name or path (loaded once per name)."""
    if tokenizer.lower().startswith(_OPENAI_PREFIXES):
        try:
            import tiktoken

            enc = tiktoken.encoding_for_model(tokenizer)
            return lambda s: len(enc.encode(s, disallowed_special=()))
        except Exception as err:  # noqa: BLE001 - not installed, unknown model, or no network for the encoding file
            logger.warning("tiktoken unavailable for %r (%s); counting tokens as ceil(chars / 4)", tokenizer, err)
            return _char_estimate
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(tokenizer)
    except Exception as err:
        raise ValueError(f"could not load tokenizer {tokenizer!r}: {err}") from err
    return lambda s: len(tok.encode(s, add_special_tokens=False))


def count_prompt_tokens(prompt: Prompt, counter: Callable[[str], int]) -> int:
    """Tokens of a rendered prompt; chat messages add 4 tokens each for their framing."""
    if isinstance(prompt, str):
        return counter(prompt)
    return sum(counter(m["content"]) + 4 for m in prompt)


def render_prompt(
    template: PromptTemplate,
    examples: Sequence[tuple[object, ...]],
    query: str,
    *,
    labels: Sequence[object] = (),
    max_tokens: int | None = None,
    counter: Callable[[str], int] | None = None,
    drop_order: Sequence[int] | None = None,
) -> tuple[Prompt, int]:
    """Render ``(text, label)`` or ``(text, label, output)`` examples, dropping examples until the prompt fits
    ``max_tokens``.

    ``drop_order`` lists example positions from least to most similar (dropped in that
    order; default: the given order). Returns ``(prompt, number of examples kept)``.
    """
    if max_tokens is None:
        return template.render(examples, query, labels=labels), len(examples)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0:
        raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
    counter = counter or _char_estimate
    order = list(drop_order) if drop_order is not None else list(range(len(examples)))

    def build(n_drop: int) -> Prompt:
        dropped = set(order[:n_drop])
        return template.render([e for i, e in enumerate(examples) if i not in dropped], query, labels=labels)

    lo, hi = 0, len(examples)  # smallest n_drop that fits, by bisection (length grows with examples)
    if count_prompt_tokens(build(hi), counter) > max_tokens:
        need = count_prompt_tokens(build(hi), counter)
        raise ValueError(f"the prompt needs {need} tokens without any example, more than max_tokens={max_tokens}")
    while lo < hi:
        mid = (lo + hi) // 2
        if count_prompt_tokens(build(mid), counter) <= max_tokens:
            hi = mid
        else:
            lo = mid + 1
    return build(lo), len(examples) - lo


# ---------------------------------------------------------------- the one prompt path
@functools.lru_cache(maxsize=32)
def _named_template(name: str) -> PromptTemplate:
    return PromptTemplate.load(name)


def get_template(template: str | Path | PromptTemplate) -> PromptTemplate:
    """A template by name or path (shipped names are loaded once), or the template itself."""
    if isinstance(template, PromptTemplate):
        return template
    if isinstance(template, str):
        return _named_template(template)
    if isinstance(template, Path):
        return PromptTemplate.load(template)
    raise TypeError(f"template must be a name, a path or a PromptTemplate, got {type(template).__name__}")


def default_template(*, has_outputs: bool) -> str:
    """The shipped template a pool gets when none is named: ``"pairs-completion"`` for a pool with outputs (pairs),
    else ``"classification-completion"``."""
    return "pairs-completion" if has_outputs else "classification-completion"


def order_examples(examples: Sequence[Example], order: str = "similar_last", seed: int = 0) -> list[Example]:
    """Examples (given most similar first) in prompt order: ``"similar_last"`` (the most similar next to
    the query), ``"similar_first"`` or ``"random"`` (seeded)."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if order == "similar_last":
        return list(examples)[::-1]
    if order == "random":
        return [examples[i] for i in np.random.default_rng(seed).permutation(len(examples))]
    return list(examples)


def compose_prompt(
    template: str | Path | PromptTemplate,
    examples: Sequence[Example],
    query: str,
    *,
    labels: Sequence[object] = (),
    order: str = "similar_last",
    seed: int = 0,
    max_tokens: int | None = None,
    tokenizer: object = None,
) -> Prompt:
    """The prompt for ``query`` from retrieved ``examples`` (most similar first): ordered, with the sorted
    label list when the template shows one, and trimmed to ``max_tokens`` by dropping the least similar.

    This is the one place prompts are made: ``ICLRetriever.build_prompt`` and the evaluation both call it.
    """
    tpl = get_template(template)
    if tpl.uses_labels and not labels:
        raise ValueError(f"prompt template {tpl.name!r} shows the label list, and no labels were given (a pool without labels?)")
    ordered = order_examples(examples, order, seed)
    drop_order = sorted(range(len(ordered)), key=lambda i: (ordered[i].score, -ordered[i].index))
    counter = make_token_counter(tokenizer) if max_tokens is not None else None
    rows = [(x.text, x.label, getattr(x, "output", None)) for x in ordered]
    prompt, _ = render_prompt(tpl, rows, query,
                              labels=sorted_labels(labels) if tpl.uses_labels else (),
                              max_tokens=max_tokens, counter=counter, drop_order=drop_order)
    return prompt


class PromptMethods:
    """``build_prompt``, ``prompt_template`` and ``compose`` for a class with ``retrieve``, ``label_set``,
    ``has_labels`` and ``has_outputs`` (:class:`~icl_fungi.ICLRetriever`): retrieval there, prompts here."""

    retrieve: Any
    label_set: Any
    has_labels: bool
    has_outputs: bool

    def build_prompt(self, query: str, k: int = 20, *, template: str | PromptTemplate | None = None,
                     order: str = "similar_last", max_tokens: int | None = None, tokenizer: object = None,
                     selection: Selection | str | None = None, seed: int = 0) -> Prompt:
        """A ready prompt for ``query`` with ``k`` retrieved examples.

        Returns a string for completion templates and a list of ``{"role", "content"}`` messages for
        chat templates. ``template``: a name, file or :class:`PromptTemplate` (default: ``"pairs-completion"``
        for a pool with outputs, else ``"classification-completion"``); one showing what the pool lacks
        (labels, outputs) is a ``ValueError``. ``order``: ``"similar_last"`` (most similar example next to
        the query), ``"similar_first"`` or ``"random"`` (seeded). With ``max_tokens``, the least similar
        examples are dropped until the prompt fits, counting with ``tokenizer`` (see
        :func:`make_token_counter`; default: ``ceil(characters / 4)``).

        Example:
            >>> r.build_prompt("my card has not arrived", k=5)  # doctest: +SKIP
        """
        tpl = self.prompt_template(template)
        examples = self.retrieve(query, k, selection=selection)
        return self.compose(tpl, examples, query, order=order, seed=seed, max_tokens=max_tokens, tokenizer=tokenizer)

    def prompt_template(self, template: str | PromptTemplate | None = None) -> PromptTemplate:
        """The template ``build_prompt`` uses for ``template`` (``None``: the pool's default), checked against the pool
        (a template showing labels or outputs the pool lacks is a ``ValueError``)."""
        has_labels, has_outputs = self.has_labels, self.has_outputs
        tpl = get_template(template if template is not None else default_template(has_outputs=has_outputs))
        tpl.check_pool(has_labels=has_labels, has_outputs=has_outputs)
        return tpl

    def compose(self, template: PromptTemplate, examples: list[RetrievedExample], query: str, *, order: str = "similar_last",
                seed: int = 0, max_tokens: int | None = None, tokenizer: object = None) -> Prompt:
        """The prompt of ``query`` with ``examples`` already retrieved (the last step of :meth:`build_prompt`, shared
        with the service, which batches the retrieval)."""
        return compose_prompt(template, examples, query, labels=self.label_set(), order=order, seed=seed,
                              max_tokens=max_tokens, tokenizer=tokenizer)
