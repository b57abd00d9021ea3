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
import os
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..data import check_labels, check_texts
from ..features import DEFAULT_MODEL, FeatureConfig, FungiEncoder
from ..prompt import compose_prompt, get_template, sorted_labels
from ..retriever import ICLRetriever
from ..template import PromptTemplate
from .bm25 import BM25Pool
from .clients import open_client
from .dispatch import announce_plan, send_by_query
from .llm import CachedReplies, redact_url
from .report import check_out_folder, eval_versions, write_report
from .scoring import Chosen, make_records, paired, retriever_config, selector_metrics
from .selectors import SelectorSpec, parse_selector
from .settings import SELECTORS, EvalSettings, task_class
from .splits import load_splits, sample_per_label, sample_queries
from .tasks import LabelTask, OutputTask

__all__ = ["SELECTORS", "EvalSettings", "load_splits", "run_icl_eval"]

logger = logging.getLogger(__name__)



# --------------------------------------------------------------- running
def _run_key(settings: EvalSettings, template: str) -> dict:
    """What makes two runs the same run (a rerun may resume in the same folder)."""
    return {"data": settings.data, "k": settings.k, "limit": settings.limit, "seed": settings.seed, "template": template,
            "mode": settings.mode, "selectors": list(settings.selectors), "model": settings.model,
            "base_url": redact_url(settings.base_url) if settings.base_url else None, "retriever": settings.retriever,
            "cached_only": settings.cached_only, **({"output_column": settings.output_column} if settings.output_column else {}),
            **({"max_tokens": settings.max_tokens} if settings.max_tokens else {}),
            **({"per_label": settings.per_label, "pool_seed": settings.pool_seed} if settings.per_label else {}),
            **({"reader": settings.reader, "reader_model": settings.reader_model, "dtype": settings.dtype,
                "endpoint_id": settings.endpoint_id} if settings.reader else {})}


# --------------------------------------------------------------- planning
@dataclasses.dataclass(frozen=True)
class _Queries:
    """The seeded test queries of a run: positions in the test split, texts and gold labels."""

    index: list[int]
    texts: list[str]
    gold: list

    def __len__(self) -> int:
        return len(self.index)

    def subset(self, keep: Sequence[int]) -> _Queries:
        return _Queries([self.index[j] for j in keep], [self.texts[j] for j in keep], [self.gold[j] for j in keep])


@dataclasses.dataclass
class _Run:
    """What choosing examples and writing prompts needs: settings, template, selectors, the train pool (texts and
    labels, or texts and outputs for an :class:`OutputTask`) and the task."""

    settings: EvalSettings
    template: PromptTemplate
    specs: dict[str, SelectorSpec]
    pool: tuple[list, list]
    task: LabelTask | OutputTask
    retrievers: dict[str, Any] = dataclasses.field(default_factory=dict)
    build_s: dict[str, float] = dataclasses.field(default_factory=dict)  # retriever key -> seconds to build (the pool's features)
    load_s: dict[str, float] = dataclasses.field(default_factory=dict)  # retriever key -> seconds to load the model


def _template(settings: EvalSettings) -> PromptTemplate:
    template = get_template(settings.template or task_class(settings).templates[settings.mode])
    if template.kind != settings.mode:
        raise ValueError(f"template {template.name!r} is a {template.kind} template but --mode is {settings.mode}")
    return template


def _load_data(settings: EvalSettings) -> tuple[tuple[list, list], tuple[list, list], str]:
    """``(train texts, labels)``, ``(test texts, labels)`` and the label column, the test split checked; with
    ``output_column`` the outputs stand where the labels are (``--per-label`` then samples per output)."""
    tr_texts, tr_labels, te_texts, te_labels, label_column = load_splits(settings.data, settings.text_column,
                                                                         settings.output_column or settings.label_column)
    check_texts(te_texts)
    check_labels(te_labels, len(te_texts))
    if settings.per_label:
        tr_texts, tr_labels = sample_per_label(tr_texts, tr_labels, settings.per_label, seed=settings.pool_seed)
    return (tr_texts, tr_labels), (te_texts, te_labels), label_column


def _sample_queries(settings: EvalSettings, te_texts: list, te_labels: list) -> _Queries:
    """``--limit`` test queries drawn with ``--seed``, in test-split order."""
    q_index = sample_queries(len(te_texts), settings.limit, seed=settings.seed)
    return _Queries(q_index, [te_texts[i] for i in q_index], [te_labels[i] for i in q_index])


# --------------------------------------------------------------- choosing examples, writing prompts
def _build_retriever(run: _Run, spec: SelectorSpec) -> ICLRetriever:
    """The retriever behind a selector, its build time recorded without the model's loading (``run.load_s``);
    its progress bars say which one they build."""
    settings, key = run.settings, spec.retriever_key()
    base = {} if spec.base == "fungi" else {"features": ("embedding",), "center_blocks": False}  # the plain baseline
    config = FeatureConfig(**{**base, "seed": settings.seed, **spec.features})
    t0 = time.perf_counter()
    encoder = FungiEncoder(spec.model or DEFAULT_MODEL, config=config, show_progress_bar=settings.show_progress)
    encoder.progress_desc = f"{spec.name}: encoding"
    t1 = time.perf_counter()
    retriever = ICLRetriever(encoder, block_weights=spec.weights or None, fit_weights=spec.fit_weights)
    retriever = run.task.fit(retriever, *run.pool)
    run.load_s[key], run.build_s[key] = round(t1 - t0, 2), round(time.perf_counter() - t1, 2)
    return retriever


def _retriever_for(run: _Run, spec: SelectorSpec) -> Any:
    """The selector's retriever (a BM25 index for ``bm25``), built once per run."""
    key = spec.retriever_key()
    if key not in run.retrievers:
        if spec.base == "bm25":
            t0 = time.perf_counter()
            run.retrievers[key] = BM25Pool(run.pool[0])
            run.build_s[key] = round(time.perf_counter() - t0, 2)
        else:
            run.retrievers[key] = _build_retriever(run, spec)
    return run.retrievers[key]


def _load_saved_retriever(run: _Run) -> None:
    """A saved FUNGI retriever (``--retriever``) serves the plain 'fungi' selectors."""
    settings = run.settings
    if not settings.retriever:
        return
    saved = ICLRetriever.load(settings.retriever, show_progress_bar=settings.show_progress)
    if saved.texts != run.pool[0] or run.task.pool_values(saved) != run.pool[1]:
        raise ValueError(f"the retriever at {settings.retriever} was not built on this train split")
    run.retrievers[parse_selector("fungi").retriever_key()] = saved


def _choose(run: _Run, spec: SelectorSpec, queries: _Queries) -> Chosen:
    """Per query, the chosen pool examples ``(index, score)``, most similar first (building the retriever once)."""
    settings, texts = run.settings, run.pool[0]
    k = min(settings.k, len(texts))
    if spec.base == "random":
        return [[(int(i), 0.0) for i in np.random.default_rng([settings.seed, int(qi)]).choice(len(texts), k, replace=False)]
                for qi in queries.index]
    retriever = _retriever_for(run, spec)
    if spec.base == "bm25":
        return retriever.retrieve_batch(queries.texts, k)
    rows = retriever.retrieve_batch(queries.texts, k, selection=spec.selection)
    return [[(x.index, x.score) for x in row] for row in rows]


def _prompts(run: _Run, spec: SelectorSpec, chosen: Chosen, queries: _Queries) -> list:
    """The prompts of one selector; ``order="random"`` shuffles each query's examples with its own seed (from the
    run's seed and the query's position in the test split), so the nearest example lands anywhere."""
    (texts, values), task = run.pool, run.task
    return [compose_prompt(run.template, [task.example(texts[i], values[i], s, i) for i, s in rows], q, labels=task.labels,
                           order=spec.order, seed=int(np.random.SeedSequence([run.settings.seed, qi]).generate_state(1)[0]))
            for rows, q, qi in zip(chosen, queries.texts, queries.index, strict=True)]


def _choose_all(run: _Run, client: CachedReplies, queries: _Queries) -> tuple[dict[str, Chosen], dict[str, list]]:
    """Examples and prompts of every selector: the random ones first, then the run's size is announced, then
    the retrievers are built."""
    specs = run.specs
    chosen = {name: _choose(run, sp, queries) for name, sp in specs.items() if sp.base == "random"}
    prompts = {name: _prompts(run, specs[name], rows, queries) for name, rows in chosen.items()}
    if not run.settings.cached_only and not run.settings.export_prompts:
        announce_plan(client, list(specs), len(queries), prompts)
    _load_saved_retriever(run)
    for name, sp in specs.items():
        if name not in chosen:
            chosen[name] = _choose(run, sp, queries)
            prompts[name] = _prompts(run, sp, chosen[name], queries)
    return {name: chosen[name] for name in specs}, {name: prompts[name] for name in specs}


def _keep_cached(client: CachedReplies, queries: _Queries, chosen: dict[str, Chosen], prompts: dict[str, list]
                 ) -> tuple[_Queries, dict[str, Chosen], dict[str, list]]:
    """--cached-only: the queries every selector has a cached reply for."""
    n = len(queries)
    keep = [j for j in range(n) if all(client.is_cached(p[j]) for p in prompts.values())]
    if not keep:
        raise ValueError("--cached-only: the cache holds no query answered for every selector")
    logger.info("--cached-only: %d of %d queries have a cached reply for every selector", len(keep), n)
    return (queries.subset(keep), {name: [rows[j] for j in keep] for name, rows in chosen.items()},
            {name: [p[j] for j in keep] for name, p in prompts.items()})


# --------------------------------------------------------------- the run
def run_icl_eval(settings: EvalSettings, *, client: CachedReplies | None = None) -> dict:
    """Run the evaluation and write ``report.json``, ``report.md``, ``report.html`` and plots to ``settings.out``.

    ``settings.out`` must be new or hold the report of this same run (then the run resumes from its cache). The
    folder is created when there is something to write (the first reply cached, or the report): a run that fails
    before leaves no folder behind.
    """
    settings.validate()
    t_start = time.perf_counter()
    out = Path(settings.out)
    template = _template(settings)
    run_key = _run_key(settings, template.name)
    check_out_folder(out, run_key)
    pool, test, label_column = _load_data(settings)
    queries = _sample_queries(settings, *test)
    task = OutputTask() if settings.output_column else LabelTask(sorted_labels(pool[1]))
    run = _Run(settings, template, {sp.name: sp for sp in map(settings.spec, settings.selectors)}, pool, task)
    embedded = False
    with contextlib.ExitStack() as stack:
        if client is None:  # before the (long) retriever builds: an unreachable endpoint fails at once
            client, embedded = open_client(settings, stack, out, template.stop or ("\n",))
        chosen, prompts = _choose_all(run, client, queries)
        if settings.cached_only:
            queries, chosen, prompts = _keep_cached(client, queries, chosen, prompts)
        if settings.export_prompts:
            return _export_prompts(Path(settings.export_prompts), client, queries, prompts, run_key)
        responses = send_by_query(client, prompts, len(queries), seed=settings.seed, concurrency=settings.concurrency,
                                  show_progress=settings.show_progress, labels=task.labels, mode=settings.mode)
    records = make_records(list(run.specs), queries, chosen, responses, task)
    report = {
        **_header(settings, client, embedded, run_key),
        "data": {"source": redact_url(settings.data) if "://" in settings.data else settings.data,
                 task.column: label_column,
                 "n_train": len(pool[0]), "n_test": len(test[0]), "n_labels": len(set(pool[1])), "task": task.kind},
        **_results(run, client, records, chosen, queries),
        "wall_time_s": round(time.perf_counter() - t_start, 1),
        "records": records,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_report(report, out, pool=pool)
    return report


def _export_prompts(path: Path, client: CachedReplies, queries: _Queries, prompts: dict[str, list], run_key: dict) -> dict:
    """``--export-prompts``: one JSON line per selector and query (``selector``, ``query_index``, ``gold``, ``prompt``,
    and the cached ``reply`` and its ``prompt_tokens``, or ``null``), written atomically; returns ``{"exported": n, "path",
    "run_key"}``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as fh:
        for name, rows in prompts.items():
            for qi, gold, prompt in zip(queries.index, queries.gold, rows, strict=True):
                hit = client.cached(prompt)
                fh.write(json.dumps({"selector": name, "query_index": qi, "gold": gold, "prompt": prompt,
                                     "reply": None if hit is None else hit.text,
                                     "prompt_tokens": None if hit is None else hit.prompt_tokens}, ensure_ascii=False, default=str) + "\n")
                n += 1
    os.replace(tmp, path)
    logger.info("wrote %d prompts to %s", n, path)
    return {"exported": n, "path": str(path), "run_key": run_key}


# --------------------------------------------------------------- the report
def _header(settings: EvalSettings, client: CachedReplies, embedded: bool, run_key: dict) -> dict:
    """What ran: format, date, command, versions, endpoint and settings."""
    return {
        "format": "icl-fungi-eval-report/1",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "versions": eval_versions(),
        "run_key": run_key,
        "endpoint": {"host": getattr(client, "host", None) or ("embedded local server (127.0.0.1)" if embedded else client.endpoint_id),
                     "id": client.endpoint_id, "model": client.model, "params": client.params},
    }


def _selector_config(run: _Run, spec: SelectorSpec) -> dict | None:
    """What the report says of a selector's retriever, with the seconds its build took on this pool."""
    key = spec.retriever_key()
    if spec.base == "bm25":
        return {"bm25": {"k1": 1.5, "b": 0.75, "stopwords": "en"}, "build_s": run.build_s.get(key)}
    config = retriever_config(run.retrievers.get(key))
    return None if config is None else {**config, "model": run.retrievers[key].encoder.model_name, "build_s": run.build_s.get(key),
                                        "model_load_s": run.load_s.get(key)}


def _results(run: _Run, client: CachedReplies, records: list[dict], chosen: dict[str, Chosen], queries: _Queries) -> dict:
    """Settings, selectors, requests sent, metrics per selector and the paired comparisons."""
    settings, specs = run.settings, run.specs
    return {
        "settings": {"k": settings.k, "limit": settings.limit, "seed": settings.seed, "template": run.template.name,
                     "mode": settings.mode, "selectors": list(settings.selectors), "concurrency": settings.concurrency,
                     "timeout": settings.timeout, "retriever": settings.retriever, "per_label": settings.per_label,
                     "pool_seed": settings.pool_seed if settings.per_label else None, "pool_size": len(run.pool[0]),
                     "task": run.task.kind},
        "selector_specs": {name: sp.describe() for name, sp in specs.items()},
        "selector_configs": {name: _selector_config(run, sp) for name, sp in specs.items()},
        "requests_sent": client.requests_sent,
        "selectors": {name: selector_metrics([r for r in records if r["selector"] == name], chosen[name], run.pool[1],
                                             queries.gold, settings.k, run.task) for name in specs},
        "paired": paired(records, list(specs)),
    }
