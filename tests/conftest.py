from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
BANKING77 = Path(os.environ.get("ICL_FUNGI_BANKING77", ROOT.parent / "shared" / "data" / "banking77"))


@pytest.fixture(scope="session")
def banking_train() -> tuple[list[str], list[str]]:
    from icl_fungi import load_pool

    path = BANKING77 / "train.csv"
    if not path.is_file():
        pytest.fail(f"banking-77 not found at {path} (set ICL_FUNGI_BANKING77)")
    return load_pool(path, text_column="text", label_column="category")


@pytest.fixture(scope="session")
def small_pool(banking_train) -> tuple[list[str], list[str]]:
    """300 seeded examples, 4 per label for the first 75 labels (stratified)."""
    texts, labels = banking_train
    rng = np.random.default_rng(0)
    by_label: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by_label.setdefault(lab, []).append(i)
    chosen = []
    for lab in sorted(by_label)[:75]:
        chosen.extend(rng.choice(by_label[lab], size=4, replace=False).tolist())
    return [texts[i] for i in chosen], [labels[i] for i in chosen]


@pytest.fixture(scope="session")
def st_model():
    from sentence_transformers import SentenceTransformer

    from icl_fungi import DEFAULT_MODEL, resolve_model

    return SentenceTransformer(resolve_model(DEFAULT_MODEL), device="cpu")


@pytest.fixture(scope="session")
def fungi_retriever(small_pool, st_model):
    from icl_fungi import ICLRetriever

    texts, labels = small_pool
    records = [{"text": t, "label": lab} for t, lab in zip(texts, labels, strict=True)]
    return ICLRetriever.from_dataset(records, model=st_model, show_progress_bar=False)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory, small_pool):
    """A banking-77 folder in miniature: 300 train examples, 40 test queries."""
    import csv

    from icl_fungi import load_pool


    d = tmp_path_factory.mktemp("b77")
    texts, labels = small_pool
    with (d / "train.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "category"])
        w.writerows(zip(texts, labels, strict=True))
    te_texts, te_labels = load_pool(BANKING77 / "test.csv", label_column="category")
    keep = set(labels)
    rows = [(t, lab) for t, lab in zip(te_texts, te_labels, strict=True) if lab in keep][::25][:40]
    with (d / "test.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "category"])
        w.writerows(rows)
    return d
