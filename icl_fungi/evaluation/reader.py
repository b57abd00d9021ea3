"""An in-process reader: the evaluation's prompts answered by a local causal LM in batches, with transformers.

:class:`TransformersReader` answers as the embedded llama.cpp server does (greedy, temperature 0, the same stop
strings cut the same way, generation ending at the model's end-of-generation tokens) without a server, on the CPU or
a GPU, many prompts per forward pass. It has the :class:`~icl_fungi.evaluation.llm.LLMClient` interface the
evaluation uses (``complete``, the response cache, ``endpoint_id``), plus :meth:`TransformersReader.answer`, which
the dispatcher calls with every uncached prompt at once so that they are sorted by length and batched.

Any causal LM that transformers loads works: a folder or hub name, or a GGUF file (dequantised; the default is the
embedded Gemma 3 270M GGUF). A GGUF's tokenizer is rebuilt by transformers, and some versions rebuild it wrong
(5.17 split prompts into ~1.8x the tokens and added no BOS), so a GGUF reader checks its tokenizer at load against
the file's own (llama.cpp's tokenizer when llama-cpp-python is installed, else ids pinned for the embedded model)
and refuses a tokenizer that disagrees: :func:`check_tokenizer`.

Example:
    >>> reader = TransformersReader(batch_size=16)                       # doctest: +SKIP
    >>> reader.complete("Query: where is my card?\\nIntent:").text        # doctest: +SKIP
    ' card_arrival'
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from transformers import StoppingCriteria, StoppingCriteriaList

from .llm import CachedReplies, LLMResponse, ResponseCache, local_model_path
from .reader_tokens import TOKEN_CHECK_TEXTS, check_tokenizer, pinned_tokens, reference_tokens

__all__ = ["DTYPES", "TokenizerMismatch", "TransformersReader", "check_tokenizer", "model_sha256"]

logger = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


class TokenizerMismatch(ValueError):
    """The reader's tokenizer does not tokenize as the model file's own tokenizer does."""


def model_sha256(path: str | os.PathLike) -> str:
    """sha256 of a model file, or of a folder's weight files (name and content, sorted by name).

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "m.gguf"; _ = f.write_bytes(b"abc")
        >>> model_sha256(f)[:12]
        'ba7816bf8f01'
    """
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    if not files:
        raise ValueError(f"{path}: no model weights found (a GGUF file, or a folder with *.safetensors / *.bin)")
    h = hashlib.sha256()
    for f in files:
        if path.is_dir():
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _versions() -> str:
    import torch
    import transformers

    return f"transformers-{transformers.__version__},torch-{torch.__version__}"


class TransformersReader(CachedReplies):
    """Greedy, batched generation with a transformers causal LM, answering like the embedded llama.cpp server.

    Args:
        model: a GGUF file, a model folder or a hub name (``None``: the embedded Gemma 3 270M GGUF).
        tokenizer: a tokenizer folder or name (default: the model's own; a GGUF's is rebuilt by transformers).
        device: a torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        dtype: ``"float32"`` (default; what the fidelity figures were measured with), ``"bfloat16"`` or ``"float16"``.
        batch_size: prompts per forward pass.
        max_tokens / stop: the reply cap and stop strings, as the server applies them (the text is cut before the
            first stop string).
        cache: a :class:`ResponseCache`; replies are keyed by ``endpoint_id``.
        endpoint_id: the cache's endpoint id (default: names the reader, the model's sha256, the dtype, the device
            kind and the transformers / torch versions, so its replies never mix with a server's or another build's).
        check_tokenizer: refuse a GGUF whose rebuilt tokenizer disagrees with the file's own (default).
        same_length: batch only prompts of the same token count (no padding), for a transformers version whose
            padded batches do not answer as single prompts do.
    """

    batched = True

    def __init__(self, model: str | os.PathLike | None = None, *, tokenizer: str | os.PathLike | None = None,
                 device: str = "cpu", dtype: str = "float32", batch_size: int = 8, max_tokens: int = 16,
                 stop: Sequence[str] = ("\n",), cache: ResponseCache | None = None, endpoint_id: str | None = None,
                 check_tokenizer: bool = True, same_length: bool = False) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
        self.path = Path(model) if model is not None else local_model_path()
        if model is not None and not self.path.exists() and str(model).startswith((".", "/", "~")):
            raise ValueError(f"--reader-model {model}: no such file or folder")
        self.is_gguf = self.path.is_file() and self.path.suffix.lower() == ".gguf"
        self.tokenizer_path = tokenizer
        self.device, self.dtype, self.batch_size = str(device), dtype, batch_size
        self.model = self.path.name if self.path.exists() else str(model)
        self.params = {"temperature": 0.0, "max_tokens": max_tokens, "stop": list(stop)}
        self.stop = tuple(stop)
        self.check_tokens = check_tokenizer
        self.same_length = bool(same_length)
        self.cache = cache
        self.requests_sent = 0
        self.endpoint_id = endpoint_id or self.default_endpoint_id()
        self._tok: Any = None
        self._lm: Any = None
        self._eog: list[int] = []

    @property
    def host(self) -> str:
        """Where the answers come from, for a report."""
        return f"in-process transformers reader ({self.device}, {self.dtype}, batches of {self.batch_size})"

    def default_endpoint_id(self) -> str:
        """``transformers:NAME:sha256=...:DTYPE:DEVICE-KIND:transformers-X,torch-Y``."""
        sha = model_sha256(self.path) if self.path.exists() else "hub"
        kind = self.device.split(":")[0]
        return f"transformers:{self.model}:sha256={sha[:16]}:{self.dtype}:{kind}:{_versions()}"

    # ------------------------------------------------------------ loading
    def check(self, timeout: float = 0.0) -> None:
        """Load the model and tokenizer now (and check the tokenizer), so a problem shows before any retriever build."""
        self._load()

    def _load(self) -> None:
        if self._lm is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        src, kw = (str(self.path.parent), {"gguf_file": self.path.name}) if self.is_gguf else (str(self.path) if self.path.exists()
                                                                                             else self.model, {})
        t0 = time.perf_counter()
        tok = AutoTokenizer.from_pretrained(str(self.tokenizer_path)) if self.tokenizer_path else AutoTokenizer.from_pretrained(src, **kw)
        if self.is_gguf and self.check_tokens:
            self._check_tokens(tok)
        lm = AutoModelForCausalLM.from_pretrained(src, dtype=getattr(torch, self.dtype), **kw).to(self.device).eval()
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        self._eog = _end_of_generation_ids(tok, lm)
        self._tok, self._lm = tok, lm
        logger.info("reader %s loaded on %s in %.1f s (end-of-generation ids %s)", self.model, self.device,
                    time.perf_counter() - t0, self._eog)

    def _check_tokens(self, tok: Any) -> None:
        sha = model_sha256(self.path)
        reference = reference_tokens(self.path, TOKEN_CHECK_TEXTS) or pinned_tokens(sha)
        if reference is None:
            raise TokenizerMismatch(
                f"cannot check the tokenizer transformers rebuilt from {self.path.name}: install llama-cpp-python (its "
                "tokenizer is the reference) or pass check_tokenizer=False / --no-tokenizer-check if you trust it")
        problem = check_tokenizer(tok, reference)
        if problem:
            import transformers

            raise TokenizerMismatch(
                f"the tokenizer transformers {transformers.__version__} built for {self.path.name} does not tokenize as the "
                f"GGUF file's own does ({problem}); its answers would not be the model's. Use transformers >= 5.25, or pass "
                "a matching tokenizer (--reader-tokenizer)")

    # ------------------------------------------------------------ answering
    def complete(self, prompt: str | list[dict[str, str]]) -> LLMResponse:
        """One prompt, from the cache or the model."""
        hit = self.cached(prompt)
        if hit is not None:
            return hit
        return next(self.answer([prompt]))[0][1]

    def answer(self, prompts: Sequence[str | list[dict[str, str]]]) -> Iterator[list[tuple[int, LLMResponse]]]:
        """Answer ``prompts`` (none looked up in the cache; each reply is cached as its batch ends), sorted by length
        and ``batch_size`` at a time; yields each batch's ``(position in prompts, response)`` pairs."""
        self._load()
        texts = [self._as_text(p) for p in prompts]
        ids = [self._tok(t, add_special_tokens=not isinstance(p, list))["input_ids"] for t, p in zip(texts, prompts, strict=True)]
        for chunk in self._batches(ids):
            t0 = time.perf_counter()
            replies = self._generate([ids[i] for i in chunk])
            per = (time.perf_counter() - t0) / len(chunk)
            out = []
            for i, (text, n_gen) in zip(chunk, replies, strict=True):
                resp = LLMResponse(text, len(ids[i]), n_gen, per)
                self.store(prompts[i], resp)
                out.append((i, resp))
            self.requests_sent += len(chunk)
            yield out

    def _batches(self, ids: list[list[int]]) -> Iterator[list[int]]:
        """Positions of the prompts, sorted by token count, ``batch_size`` at a time (with ``same_length``, a batch
        also ends where the count changes)."""
        order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
        batch: list[int] = []
        for i in order:
            if batch and (len(batch) == self.batch_size or (self.same_length and len(ids[i]) != len(ids[batch[0]]))):
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    def _as_text(self, prompt: str | list[dict[str, str]]) -> str:
        if isinstance(prompt, str):
            return prompt
        if not getattr(self._tok, "chat_template", None):
            raise ValueError(f"chat prompts need a chat template, and the tokenizer of {self.model} has none: use --mode completion")
        return self._tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)

    def _generate(self, batch: list[list[int]]) -> list[tuple[str, int]]:
        """Greedy replies to token-id prompts: text cut at the first stop string, and the tokens generated."""
        import torch

        width = max(map(len, batch))
        pad = self._tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(b)) + b for b in batch], device=self.device)
        mask = torch.tensor([[0] * (width - len(b)) + [1] * len(b) for b in batch], device=self.device)
        stops = StoppingCriteriaList([_StopStrings(self, width)] if self.stop else [])
        with torch.inference_mode():
            out = self._lm.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=self.params["max_tokens"],
                                    do_sample=False, eos_token_id=self._eog, pad_token_id=pad, stopping_criteria=stops)
        return [self._reply(row[width:].tolist())[:2] for row in out]

    def _reply(self, generated: list[int]) -> tuple[str, int, bool]:
        """The reply of one generated row as llama.cpp writes it: token pieces joined up to an end-of-generation token
        and cut before the first stop string; the tokens that made it; whether a stop string ended it."""
        raw = b""
        n = 0
        for t in generated:
            if t in self._eog:
                break
            n += 1
            raw += _piece(self._tok, t)
            text = raw.decode("utf-8", errors="ignore")
            cut = _first_stop(text, self.stop)
            if cut >= 0:
                return text[:cut], n, True
        return raw.decode("utf-8", errors="ignore"), n, False


class _StopStrings(StoppingCriteria):
    """Ends a row once its reply holds a stop string (the check llama.cpp's server makes after each token)."""

    def __init__(self, reader: TransformersReader, width: int) -> None:
        self.reader, self.width = reader, width

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = [self.reader._reply(row[self.width:])[2] for row in input_ids.tolist()]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _first_stop(text: str, stop: Sequence[str]) -> int:
    """Where the first stop string starts in ``text`` (-1: none)."""
    return min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)


def _piece(tok: Any, token_id: int) -> bytes:
    """A token's bytes as llama.cpp's detokenizer gives them (a SentencePiece word boundary as a space, a byte token
    as its byte), not stripped of a leading space as ``decode`` of a lone token may be."""
    token = tok.convert_ids_to_tokens(token_id)
    if token is None:
        return b""
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        return bytes([int(token[3:5], 16)])
    return token.replace("\u2581", " ").encode("utf-8")


def _end_of_generation_ids(tok: Any, lm: Any) -> list[int]:
    """The token ids that end a reply: the model's EOS ids and, as llama.cpp treats them, ``<end_of_turn>`` /
    ``<|eot_id|>`` / ``<|im_end|>`` where the vocabulary has them."""
    ids: set[int] = set()
    eos = getattr(lm.generation_config, "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    vocab = tok.get_vocab()
    ids.update(vocab[t] for t in ("<end_of_turn>", "<|eot_id|>", "<|im_end|>", "<|endoftext|>") if t in vocab)
    return sorted(int(i) for i in ids)
