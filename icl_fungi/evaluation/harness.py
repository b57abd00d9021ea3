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
import logging
import platform
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..data import check_labels, check_texts, load_pool
from ..prompt import compose_prompt, get_template, sorted_labels
from ..retriever import ICLRetriever, RetrievedExample
from .llm import LLMClient, LocalServer, ResponseCache, redact_url
from .metrics import macro_f1, paired_comparison, parse_label, retrieval_metrics, wilson_interval
from .report import write_report

__all__ = ["SELECTORS", "EvalSettings", "load_splits", "run_icl_eval"]

logger = logging.getLogger(__name__)

SELECTORS = ("fungi", "embedding", "random")
LABEL_COLUMNS = ("label", "category", "intent")
_SPLIT_FILES = ("csv", "tsv", "jsonl", "json")
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

    def validate(self) -> None:
        unknown = [s for s in self.selectors if s not in SELECTORS]
        if unknown or not self.selectors:
            raise ValueError(f"unknown selector(s) {unknown}; choose from {SELECTORS}")
        if self.mode not in DEFAULT_TEMPLATES:
            raise ValueError(f"mode must be 'chat' or 'completion', got {self.mode!r}")
        for name in ("k", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError("--limit must be >= 1")
        if self.base_url and not self.model:
            raise ValueError("--model is required with --base-url")


# ------------------------------------------------------------------ data
def _split_file(folder: Path, split: str) -> Path:
    for ext in _SPLIT_FILES:
        if (folder / f"{split}.{ext}").is_file():
            return folder / f"{split}.{ext}"
    raise ValueError(f"{folder} has no {split} file ({', '.join(f'{split}.{e}' for e in _SPLIT_FILES)})")


def _columns(source: Any) -> list[str]:
    if isinstance(source, Path):
        from ..data import _read_file

        rows = _read_file(source)
        return list(rows[0]) if rows else []
    return list(source.column_names)


def load_splits(data: str, text_column: str = "text", label_column: str | None = None) -> tuple[list, list, list, list, str]:
    """``(train_texts, train_labels, test_texts, test_labels, label_column)`` from a folder, two files or a hub name.

    ``data`` is a folder with ``train.*`` and ``test.*``, ``"TRAIN_FILE,TEST_FILE"``, or a
    hub dataset with train and test splits. The label column defaults to the first of
    ``label``, ``category``, ``intent`` present.
    """
    path = Path(data)
    if path.is_dir():
        sources: list[Any] = [_split_file(path, "train"), _split_file(path, "test")]
    elif "," in data:
        sources = [Path(p.strip()) for p in data.split(",", 1)]
        for p in sources:
            if not p.is_file():
                raise ValueError(f"file not found: {p}")
    elif path.is_file():
        raise ValueError(f"--data needs train and test: a folder, 'TRAIN,TEST' files or a hub name (got one file {path})")
    else:
        import datasets

        try:
            dd = datasets.load_dataset(data)
        except Exception as err:
            raise ValueError(f"{data!r} is not a folder, 'TRAIN,TEST' files or a loadable hub dataset: {err}") from err
        if "train" not in dd or "test" not in dd:
            raise ValueError(f"hub dataset {data!r} needs train and test splits (has {sorted(dd)})")
        sources = [dd["train"], dd["test"]]
    if label_column is None:
        cols = _columns(sources[0])
        found = [c for c in LABEL_COLUMNS if c in cols]
        if not found:
            raise ValueError(f"no label column found (tried {LABEL_COLUMNS}; columns: {cols}); pass --label-column")
        label_column = found[0]
    train = load_pool(sources[0], text_column=text_column, label_column=label_column)
    test = load_pool(sources[1], text_column=text_column, label_column=label_column)
    return train[0], train[1], test[0], test[1], label_column


# --------------------------------------------------------------- running
def _versions() -> dict[str, str]:
    import openai
    import torch

    from .. import __version__

    return {"icl_fungi": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "openai": openai.__version__}


def _examples(settings: EvalSettings, name: str, pool: tuple[list, list], queries: list[str], q_index: Sequence[int],
              fungi: ICLRetriever | None) -> list[list[tuple[int, float]]]:
    """Per query, the chosen pool examples ``(index, score)``, most similar first."""
    texts, labels = pool
    k = min(settings.k, len(texts))
    if name == "random":
        return [[(int(i), 0.0) for i in np.random.default_rng([settings.seed, int(qi)]).choice(len(texts), k, replace=False)]
                for qi in q_index]
    if name == "fungi":
        r = fungi
    else:
        # the plain-embedding baseline: the encoder's own normalised embeddings, no block centring
        r = ICLRetriever.from_texts(texts, labels, features=("embedding",), center_blocks=False, seed=settings.seed,
                                    show_progress_bar=settings.show_progress)
    return [[(x.index, x.score) for x in row] for row in r.retrieve_batch(queries, k)]


def run_icl_eval(settings: EvalSettings, *, client: LLMClient | None = None) -> dict:
    """Run the evaluation and write ``report.json``, ``report.md`` and plots to ``settings.out``."""
    settings.validate()
    t_start = time.perf_counter()
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    template = get_template(settings.template or DEFAULT_TEMPLATES[settings.mode])
    if template.kind != settings.mode:
        raise ValueError(f"template {template.name!r} is a {template.kind} template but --mode is {settings.mode}")
    tr_texts, tr_labels, te_texts, te_labels, label_column = load_splits(settings.data, settings.text_column, settings.label_column)
    check_texts(te_texts)
    check_labels(te_labels, len(te_texts))
    rng = np.random.default_rng(settings.seed)
    n = len(te_texts) if settings.limit is None else min(settings.limit, len(te_texts))
    q_index = sorted(rng.choice(len(te_texts), size=n, replace=False).tolist())
    queries = [te_texts[i] for i in q_index]
    gold = [te_labels[i] for i in q_index]
    label_set = sorted_labels(tr_labels)

    fungi = None
    if "fungi" in settings.selectors:
        if settings.retriever:
            fungi = ICLRetriever.load(settings.retriever, show_progress_bar=settings.show_progress)
            if fungi.texts != tr_texts or fungi.labels != tr_labels:
                raise ValueError(f"the retriever at {settings.retriever} was not built on this train split")
        else:
            fungi = ICLRetriever.from_texts(tr_texts, tr_labels, seed=settings.seed, show_progress_bar=settings.show_progress)
    chosen = {name: _examples(settings, name, (tr_texts, tr_labels), queries, q_index, fungi) for name in settings.selectors}
    prompts = {
        name: [compose_prompt(template, [RetrievedExample(tr_texts[i], tr_labels[i], s, i) for i, s in rows], q, labels=label_set)
               for rows, q in zip(chosen[name], queries, strict=True)]
        for name in settings.selectors
    }

    server = None
    with contextlib.ExitStack() as stack:
        if client is None:
            cache = ResponseCache(settings.cache or out / "responses.jsonl")
            if settings.base_url:
                client = LLMClient(settings.base_url, model=settings.model, timeout=settings.timeout,
                                   max_retries=settings.max_retries, stop=template.stop or ("\n",), cache=cache)
            else:
                server = stack.enter_context(LocalServer())
                client = LLMClient(server.base_url, model=server.model, endpoint_id=server.endpoint_id, timeout=settings.timeout,
                                   max_retries=settings.max_retries, stop=template.stop or ("\n",), cache=cache)
        jobs = [(name, j) for name in settings.selectors for j in range(n)]
        responses: dict[tuple[str, int], Any] = {}
        bar = tqdm(total=len(jobs), desc="LLM requests", disable=not settings.show_progress, unit="req")
        with ThreadPoolExecutor(max_workers=settings.concurrency) as pool:
            futures = {pool.submit(client.complete, prompts[name][j]): (name, j) for name, j in jobs}
            try:
                for f in as_completed(futures):
                    responses[futures[f]] = f.result()
                    bar.update(1)
            except Exception as err:
                for p in futures:
                    p.cancel()
                bar.close()
                raise RuntimeError(f"an LLM request failed after retries ({type(err).__name__}: {err}); "
                                   "responses so far are cached: rerun to resume") from err
        bar.close()

    records = []
    for name in settings.selectors:
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
        "endpoint": {"host": client.endpoint_id if server is None else "embedded local server (127.0.0.1)",
                     "id": client.endpoint_id, "model": client.model, "params": client.params},
        "data": {"source": redact_url(settings.data) if "://" in settings.data else settings.data, "label_column": label_column,
                 "n_train": len(tr_texts), "n_test": len(te_texts), "n_labels": len(label_set)},
        "settings": {"k": settings.k, "limit": settings.limit, "seed": settings.seed, "template": template.name,
                     "mode": settings.mode, "selectors": list(settings.selectors), "concurrency": settings.concurrency,
                     "timeout": settings.timeout, "retriever": settings.retriever},
        "fungi_config": fungi.config.to_dict() if fungi is not None else None,
        "requests_sent": client.requests_sent,
        "selectors": {name: _selector_metrics(name, [r for r in records if r["selector"] == name], chosen[name], tr_labels,
                                              gold, settings.k) for name in settings.selectors},
        "paired": _paired(records, settings.selectors),
        "wall_time_s": round(time.perf_counter() - t_start, 1),
        "records": records,
    }
    write_report(report, out)
    return report


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
