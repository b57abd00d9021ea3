"""Opening what answers an evaluation's prompts: an OpenAI-compatible endpoint, the embedded llama.cpp server, or
an in-process reader (``--reader transformers``), each with the run's response cache.

Example:
    >>> import contextlib, pathlib, tempfile
    >>> s = EvalSettings(data="d", out="o", export_prompts="p.jsonl")
    >>> client, embedded = open_client(s, contextlib.ExitStack(), pathlib.Path(tempfile.mkdtemp()), ("\\n",))
    >>> client.endpoint_id, embedded
    ('embedded:gemma-3-270m-q4_k_m', True)
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from .llm import LLMClient, LocalServer, ResponseCache
from .settings import EvalSettings, max_tokens

__all__ = ["open_client"]


def open_client(settings: EvalSettings, stack: contextlib.ExitStack, out: Path, stop: tuple[str, ...]) -> tuple[Any, bool]:
    """The client (and, without --base-url or --reader, the embedded server), checked before anything is built;
    ``--cached-only`` and ``--export-prompts`` start and load nothing."""
    cache_path = Path(settings.cache or out / "responses.jsonl")
    if settings.cached_only and not cache_path.is_file():
        raise ValueError(f"--cached-only: no response cache at {cache_path} (pass the run's --cache)")
    idle = settings.cached_only or bool(settings.export_prompts)
    cache = ResponseCache(cache_path) if not settings.export_prompts or cache_path.is_file() else None
    common = {"max_tokens": max_tokens(settings), "stop": stop, "cache": cache}
    if settings.reader:
        from .reader import TransformersReader

        reader = TransformersReader(settings.reader_model, tokenizer=settings.reader_tokenizer, device=settings.device,
                                    dtype=settings.dtype, batch_size=settings.batch_size, endpoint_id=settings.endpoint_id,
                                    check_tokenizer=settings.tokenizer_check, **common)
        if not idle:
            reader.check()
        return reader, False
    if idle:  # the same endpoint id and model as the run, so its cache keys match; nothing is sent
        local = LocalServer()
        url, model, endpoint = (settings.base_url, settings.model, None) if settings.base_url else (None, local.model, local.endpoint_id)
        return LLMClient(url, model=model, endpoint_id=settings.endpoint_id or endpoint, **common), not settings.base_url
    if settings.base_url:
        client = LLMClient(settings.base_url, model=settings.model, timeout=settings.timeout, endpoint_id=settings.endpoint_id,
                           max_retries=settings.max_retries, **common)
        client.check()
        return client, False
    server = stack.enter_context(LocalServer())
    return LLMClient(server.base_url, model=server.model, endpoint_id=settings.endpoint_id or server.endpoint_id,
                     timeout=settings.timeout, max_retries=settings.max_retries, **common), True
