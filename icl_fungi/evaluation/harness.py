"""In-context-learning evaluation: selectors x seeded queries -> LLM -> report.json / report.md / plots.

Used by ``icl-fungi eval``. Every response is cached as it arrives, so a rerun after a
crash sends only the missing requests and gives the same metrics.

Example:
    >>> report = run_icl_eval(EvalSettings(data="../shared/data/banking77", limit=50, out="out"))  # doctest: +SKIP
    >>> report["selectors"]["fungi"]["accuracy"]                                                   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import platform
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..data import check_labels, check_texts
from ..features import FeatureConfig, FungiEncoder
from ..prompt import compose_prompt, get_template, sorted_labels
from ..retriever import ICLRetriever, RetrievedExample
from .dispatch import send_all
from .llm import LLMClient, LocalServer, ResponseCache, redact_url
from .metrics import macro_f1, paired_comparison, parse_label, retrieval_metrics, wilson_interval
from .report import write_report
from .selectors import SelectorSpec, parse_selector
from .splits import load_splits

__all__ = ["SELECTORS", "EvalSettings", "load_splits", "run_icl_eval"]

logger = logging.getLogger(__name__)

SELECTORS = ("fungi", "embedding", "random")
DEFAULT_TEMPLATES = {"completion": "classification-completion", "chat": "banking77-chat"}


@dataclasses.dataclass
class EvalSettings:
    """Options of one evaluation run (the ``icl-fungi eval`` flags)."""

    data: str
    out: str
    text_column: str = "text"
    label_column: str | None = None
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
        if self.base_url and not self.model:
            raise ValueError("--model is required with --base-url")

    @staticmethod
    def spec(text: str) -> SelectorSpec:
        """The :class:`SelectorSpec` of a ``--selectors`` entry."""
        try:
            return parse_selector(text)
        except (TypeError, ValueError) as err:
            raise ValueError(f"--selectors: {err}") from None


# --------------------------------------------------------------- running
def _versions() -> dict[str, str]:
    import openai
    import torch

    from .. import __version__

    return {"icl_fungi": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "openai": openai.__version__}


def _retriever(spec: SelectorSpec, texts: list[str], labels: list, settings: EvalSettings) -> ICLRetriever:
    """The retriever behind a selector; its progress bars say which one they build."""
    base = {} if spec.base == "fungi" else {"features": ("embedding",), "center_blocks": False}  # the plain baseline
    config = FeatureConfig(**{**base, "seed": settings.seed, **spec.features})
    encoder = FungiEncoder(config=config, show_progress_bar=settings.show_progress)
    encoder.progress_desc = f"{spec.name}: encoding"
    return ICLRetriever(encoder, block_weights=spec.weights or None, fit_weights=spec.fit_weights).fit(texts, labels)


def _examples(settings: EvalSettings, spec: SelectorSpec, pool: tuple[list, list], queries: list[str], q_index: Sequence[int],
              retrievers: dict[str, ICLRetriever]) -> list[list[tuple[int, float]]]:
    """Per query, the chosen pool examples ``(index, score)``, most similar first."""
    texts, labels = pool
    k = min(settings.k, len(texts))
    if spec.base == "random":
        return [[(int(i), 0.0) for i in np.random.default_rng([settings.seed, int(qi)]).choice(len(texts), k, replace=False)]
                for qi in q_index]
    key = spec.retriever_key()
    if key not in retrievers:
        retrievers[key] = _retriever(spec, texts, labels, settings)
    return [[(x.index, x.score) for x in row] for row in retrievers[key].retrieve_batch(queries, k, selection=spec.selection)]


def _run_key(settings: EvalSettings, template: str) -> dict:
    """What makes two runs the same run (a rerun may resume in the same folder)."""
    return {"data": settings.data, "k": settings.k, "limit": settings.limit, "seed": settings.seed, "template": template,
            "mode": settings.mode, "selectors": list(settings.selectors), "model": settings.model,
            "base_url": redact_url(settings.base_url) if settings.base_url else None, "retriever": settings.retriever,
            "cached_only": settings.cached_only}


def _check_out(out: Path, key: dict) -> None:
    """Refuse an output folder that holds the report of another run: results are never overwritten."""
    old = out / "report.json"
    if not old.is_file():
        return
    try:
        prior = json.loads(old.read_text()).get("run_key")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        prior = None
    if prior != key:
        raise ValueError(f"{out} holds the report of another run ({old}); choose another --out (a rerun of the same "
                         "command may reuse its folder and resumes from its cache)")


def _open_client(settings: EvalSettings, stack: contextlib.ExitStack, out: Path, stop: tuple[str, ...]) -> tuple[LLMClient, bool]:
    """The client (and, without --base-url, the embedded server), checked before anything is built."""
    cache_path = Path(settings.cache or out / "responses.jsonl")
    if settings.cached_only and not cache_path.is_file():
        raise ValueError(f"--cached-only: no response cache at {cache_path} (pass the run's --cache)")
    cache = ResponseCache(cache_path)
    if settings.cached_only:  # the same endpoint id and model as the run, so its cache keys match; nothing is sent
        local = LocalServer()
        url, model, endpoint = (settings.base_url, settings.model, None) if settings.base_url else (None, local.model, local.endpoint_id)
        return LLMClient(url, model=model, endpoint_id=endpoint, stop=stop, cache=cache), not settings.base_url
    if settings.base_url:
        client = LLMClient(settings.base_url, model=settings.model, timeout=settings.timeout,
                           max_retries=settings.max_retries, stop=stop, cache=cache)
        client.check()
        return client, False
    server = stack.enter_context(LocalServer())
    return LLMClient(server.base_url, model=server.model, endpoint_id=server.endpoint_id, timeout=settings.timeout,
                     max_retries=settings.max_retries, stop=stop, cache=cache), True


def run_icl_eval(settings: EvalSettings, *, client: LLMClient | None = None) -> dict:
    """Run the evaluation and write ``report.json``, ``report.md``, ``report.html`` and plots to ``settings.out``.

    ``settings.out`` must be new or hold the report of this same run (then the run resumes from its cache).
    """
    settings.validate()
    t_start = time.perf_counter()
    out = Path(settings.out)
    template = get_template(settings.template or DEFAULT_TEMPLATES[settings.mode])
    if template.kind != settings.mode:
        raise ValueError(f"template {template.name!r} is a {template.kind} template but --mode is {settings.mode}")
    run_key = _run_key(settings, template.name)
    _check_out(out, run_key)
    tr_texts, tr_labels, te_texts, te_labels, label_column = load_splits(settings.data, settings.text_column, settings.label_column)
    check_texts(te_texts)
    check_labels(te_labels, len(te_texts))
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(settings.seed)
    n = len(te_texts) if settings.limit is None else min(settings.limit, len(te_texts))
    q_index = sorted(rng.choice(len(te_texts), size=n, replace=False).tolist())
    queries = [te_texts[i] for i in q_index]
    gold = [te_labels[i] for i in q_index]
    label_set = sorted_labels(tr_labels)

    embedded = False
    with contextlib.ExitStack() as stack:
        if client is None:  # before the (long) retriever builds: an unreachable endpoint fails at once
            client, embedded = _open_client(settings, stack, out, template.stop or ("\n",))
        specs = {sp.name: sp for sp in map(settings.spec, settings.selectors)}
        retrievers: dict[str, ICLRetriever] = {}
        if settings.retriever:  # a saved FUNGI retriever serves the plain 'fungi' selectors
            saved = ICLRetriever.load(settings.retriever, show_progress_bar=settings.show_progress)
            if saved.texts != tr_texts or saved.labels != tr_labels:
                raise ValueError(f"the retriever at {settings.retriever} was not built on this train split")
            retrievers[parse_selector("fungi").retriever_key()] = saved
        chosen = {name: _examples(settings, sp, (tr_texts, tr_labels), queries, q_index, retrievers) for name, sp in specs.items()}
        prompts = {
            name: [compose_prompt(template, [RetrievedExample(tr_texts[i], tr_labels[i], s, i) for i, s in rows], q, labels=label_set,
                                  order=specs[name].order, seed=settings.seed)
                   for rows, q in zip(chosen[name], queries, strict=True)]
            for name in specs
        }
        names = list(specs)
        if settings.cached_only:
            keep = [j for j in range(n) if all(client.is_cached(prompts[name][j]) for name in names)]
            if not keep:
                raise ValueError("--cached-only: the cache holds no query answered for every selector")
            logger.info("--cached-only: %d of %d queries have a cached reply for every selector", len(keep), n)
            q_index, queries, gold = [q_index[j] for j in keep], [queries[j] for j in keep], [gold[j] for j in keep]
            chosen = {name: [rows[j] for j in keep] for name, rows in chosen.items()}
            prompts = {name: [p[j] for j in keep] for name, p in prompts.items()}
            n = len(keep)
        # query by query in a seeded order: an interrupted run leaves every selector answered on one random subset
        order = np.random.default_rng([settings.seed, n]).permutation(n).tolist()
        jobs = [(name, j) for j in order for name in names]
        replies = send_all(client, [prompts[name][j] for name, j in jobs], concurrency=settings.concurrency,
                           show_progress=settings.show_progress, labels=label_set, mode=settings.mode)
        responses: dict[tuple[str, int], Any] = dict(zip(jobs, replies, strict=True))

    records = []
    for name in names:
        for j in range(n):
            resp = responses[(name, j)]
            pred = parse_label(resp.text, label_set)
            records.append({
                "selector": name, "query_index": q_index[j], "query": queries[j], "gold": gold[j], "reply": resp.text,
                "prediction": pred, "valid": pred is not None, "correct": pred == gold[j],
                "examples": [i for i, _ in chosen[name][j]], "prompt_tokens": resp.prompt_tokens,
                "completion_tokens": resp.completion_tokens, "latency_s": round(resp.latency_s, 4), "cached": resp.cached,
            })
    report = {
        "format": "icl-fungi-eval-report/1",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "versions": _versions(),
        "run_key": run_key,
        "endpoint": {"host": "embedded local server (127.0.0.1)" if embedded else client.endpoint_id,
                     "id": client.endpoint_id, "model": client.model, "params": client.params},
        "data": {"source": redact_url(settings.data) if "://" in settings.data else settings.data, "label_column": label_column,
                 "n_train": len(tr_texts), "n_test": len(te_texts), "n_labels": len(label_set)},
        "settings": {"k": settings.k, "limit": settings.limit, "seed": settings.seed, "template": template.name,
                     "mode": settings.mode, "selectors": list(settings.selectors), "concurrency": settings.concurrency,
                     "timeout": settings.timeout, "retriever": settings.retriever},
        "selector_specs": {name: sp.describe() for name, sp in specs.items()},
        "selector_configs": {name: _config(retrievers.get(sp.retriever_key())) for name, sp in specs.items()},
        "requests_sent": client.requests_sent,
        "selectors": {name: _selector_metrics(name, [r for r in records if r["selector"] == name], chosen[name], tr_labels,
                                              gold, settings.k) for name in names},
        "paired": _paired(records, names),
        "wall_time_s": round(time.perf_counter() - t_start, 1),
        "records": records,
    }
    write_report(report, out, pool=(tr_texts, tr_labels))
    return report


def _config(r: ICLRetriever | None) -> dict | None:
    if r is None:
        return None
    return {"feature_config": r.config.to_dict(), "block_weights": r.block_weights, "fit_weights": r.fit_weights,
            "pca": {"n_components": r.pca.n_components, "whiten": r.pca.whiten}}


def _selector_metrics(name: str, recs: list[dict], chosen: list[list[tuple[int, float]]], pool_labels: list, gold: list,
                      k: int) -> dict:
    n = len(recs)
    correct = sum(r["correct"] for r in recs)
    lo, hi = wilson_interval(correct, n)
    per_class: dict = defaultdict(lambda: [0, 0])
    for r in recs:
        per_class[r["gold"]][0] += r["correct"]
        per_class[r["gold"]][1] += 1
    confusions = Counter((r["gold"], r["prediction"] if r["valid"] else "<invalid>") for r in recs if not r["correct"])
    lat = [r["latency_s"] for r in recs]
    retrieved = [[pool_labels[i] for i, _ in rows] for rows in chosen]
    scores = [[s for _, s in rows] for rows in chosen]
    return {
        "n": n,
        "accuracy": correct / n if n else 0.0,
        "accuracy_ci95": [lo, hi],
        "macro_f1": macro_f1([r["gold"] for r in recs], [r["prediction"] for r in recs]),
        "invalid_rate": sum(not r["valid"] for r in recs) / n if n else 0.0,
        "per_class_accuracy": {str(c): v[0] / v[1] for c, v in sorted(per_class.items(), key=lambda kv: str(kv[0]))},
        "top_confusions": [{"gold": g, "predicted": p, "count": c} for (g, p), c in confusions.most_common(10)],
        "retrieval": retrieval_metrics(retrieved, scores, gold, min(k, len(retrieved[0])) if retrieved else k),
        "prompt_tokens": int(sum(r["prompt_tokens"] for r in recs)),
        "completion_tokens": int(sum(r["completion_tokens"] for r in recs)),
        "latency_s_p50": float(np.percentile(lat, 50)) if lat else 0.0,
        "latency_s_p95": float(np.percentile(lat, 95)) if lat else 0.0,
    }


def _paired(records: list[dict], selectors: Sequence[str]) -> dict:
    by = {s: [r["correct"] for r in records if r["selector"] == s] for s in selectors}
    out = {}
    for i, a in enumerate(selectors):
        for b in selectors[i + 1:]:
            out[f"{a}_vs_{b}"] = {**paired_comparison(by[a], by[b]), "note": f"difference = accuracy({a}) - accuracy({b})"}
    return out
