"""The settings of an evaluation run (the ``icl-fungi eval`` flags), checked before anything loads.

Example:
    >>> EvalSettings(data="data", out="out", k=0).validate()
    Traceback (most recent call last):
    ...
    ValueError: --k must be >= 1
"""

from __future__ import annotations

import dataclasses

from .selectors import SelectorSpec, parse_selector
from .tasks import LabelTask, OutputTask

__all__ = ["READERS", "SELECTORS", "EvalSettings", "max_tokens", "task_class"]

SELECTORS = ("fungi", "embedding", "random")
READERS = ("transformers",)
DEFAULT_TEMPLATES = LabelTask.templates  # OutputTask.templates with --output-column


@dataclasses.dataclass
class EvalSettings:
    """Options of one evaluation run (the ``icl-fungi eval`` flags)."""

    data: str
    out: str
    text_column: str = "text"
    label_column: str | None = None
    output_column: str | None = None  # a pool of input -> output pairs: the LLM writes the output (OutputTask)
    max_tokens: int | None = None  # reply length cap (None: 16 for a label, 128 for an output)
    retriever: str | None = None
    selectors: tuple[str, ...] = SELECTORS
    k: int = 20
    limit: int | None = 300
    seed: int = 0
    template: str | None = None
    mode: str = "completion"
    base_url: str | None = None
    model: str | None = None
    concurrency: int = 1
    timeout: float = 120.0
    max_retries: int = 6
    cache: str | None = None
    show_progress: bool = True
    cached_only: bool = False  # report the queries every selector has a cached reply for; start and send nothing
    per_label: int | None = None  # the pool: a seeded sample of this many train examples per label (None: all of train)
    pool_seed: int = 0
    reader: str | None = None  # "transformers": answer in process (TransformersReader) instead of an endpoint
    reader_model: str | None = None  # its model: a GGUF file, a folder or a hub name (None: the embedded Gemma 3 270M)
    reader_tokenizer: str | None = None  # its tokenizer (None: the model's own)
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 8
    tokenizer_check: bool = True
    endpoint_id: str | None = None  # the cache's endpoint id (None: the endpoint's or reader's own), e.g. replies another machine cached
    export_prompts: str | None = None  # write every prompt (with its cached reply, if any) to this JSONL file and stop

    def validate(self) -> None:
        if not self.selectors:
            raise ValueError(f"no selector; choose from {SELECTORS} or write specs (NAME=BASE;key=value;...)")
        names = [self.spec(s).name for s in self.selectors]
        if len(set(names)) != len(names):
            raise ValueError(f"selector names must be unique, got {names}")
        if self.mode not in DEFAULT_TEMPLATES:
            raise ValueError(f"mode must be 'chat' or 'completion', got {self.mode!r}")
        for name in ("k", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError("--limit must be >= 1")
        if self.per_label is not None and (isinstance(self.per_label, bool) or not isinstance(self.per_label, int) or self.per_label < 1):
            raise ValueError(f"--per-label must be an int >= 1, got {self.per_label!r}")
        if self.max_tokens is not None and (isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int)
                                            or self.max_tokens < 1):
            raise ValueError(f"--max-tokens must be an int >= 1, got {self.max_tokens!r}")
        if self.output_column and self.label_column:
            raise ValueError("--output-column and --label-column: a pair task scores outputs, a classification labels; give one")
        if self.base_url and not self.model:
            raise ValueError("--model is required with --base-url")
        if self.reader not in (None, *READERS):
            raise ValueError(f"--reader must be one of {READERS}, got {self.reader!r}")
        if self.reader and self.base_url:
            raise ValueError("--reader answers in process: drop --base-url (or drop --reader to use the endpoint)")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"--batch-size must be an int >= 1, got {self.batch_size!r}")
        if not self.reader and any((self.reader_model, self.reader_tokenizer)):
            raise ValueError("--reader-model / --reader-tokenizer need --reader transformers")

    @staticmethod
    def spec(text: str) -> SelectorSpec:
        """The :class:`SelectorSpec` of a ``--selectors`` entry."""
        try:
            return parse_selector(text)
        except (TypeError, ValueError) as err:
            raise ValueError(f"--selectors: {err}") from None


def task_class(settings: EvalSettings) -> type[LabelTask] | type[OutputTask]:
    """The task of a run: outputs to write (``--output-column``) or labels to choose."""
    return OutputTask if settings.output_column else LabelTask


def max_tokens(settings: EvalSettings) -> int:
    """The reply length cap: ``--max-tokens``, else the task's."""
    return settings.max_tokens or task_class(settings).max_tokens
