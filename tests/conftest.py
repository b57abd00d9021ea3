"""Fixtures. The fast tier uses the hand-written intent set in tests/data/ and needs no data folder
and no LLM server; tests marked ``slow`` use the full banking-77 pool or the real llama.cpp server.

banking-77 is read from ``../shared/data/banking77`` (or ``ICL_FUNGI_BANKING77``). Without it the
slow data tests are skipped, unless ``ICL_FUNGI_REQUIRE_DATA=1`` (set by CI), which makes them fail.
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
BANKING77 = Path(os.environ.get("ICL_FUNGI_BANKING77", ROOT.parent / "shared" / "data" / "banking77"))

QUERIES = [
    "I still haven't received my card",
    "how do I top up with apple pay?",
    "my transfer did not arrive",
    "the exchange rate on my payment looks wrong",
    "why was I charged a fee for the cash withdrawal",
    "my pin is blocked",
    "I want to close my account",
    "I cannot log in",
]


def _read(path: Path) -> tuple[list[str], list[str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [r["text"] for r in rows], [r["intent"] for r in rows]


@pytest.fixture(scope="session")
def intent_pool() -> tuple[list[str], list[str]]:
    """120 hand-written texts, 12 intents x 10 (tests/data/intents-train.csv)."""
    return _read(DATA / "intents-train.csv")


@pytest.fixture(scope="session")
def intent_queries() -> tuple[list[str], list[str]]:
    """36 held-out queries, 3 per intent (tests/data/intents-test.csv)."""
    return _read(DATA / "intents-test.csv")


@pytest.fixture(scope="session")
def intent_data(tmp_path_factory) -> Path:
    """A data folder in the layout ``icl-fungi eval --data`` reads: train.csv and test.csv (label column ``intent``)."""
    d = tmp_path_factory.mktemp("intents")
    shutil.copy(DATA / "intents-train.csv", d / "train.csv")
    shutil.copy(DATA / "intents-test.csv", d / "test.csv")
    return d


@pytest.fixture(scope="session")
def st_model():
    from sentence_transformers import SentenceTransformer

    from icl_fungi.features import DEFAULT_MODEL, resolve_model

    return SentenceTransformer(resolve_model(DEFAULT_MODEL), device="cpu")


@pytest.fixture(scope="session")
def fungi_retriever(intent_pool, st_model):
    """The default retriever (embedding + KL, automatic KL weight) over the intent pool."""
    from icl_fungi import ICLRetriever

    return ICLRetriever.from_texts(*intent_pool, model=st_model, show_progress_bar=False)


@pytest.fixture(scope="session")
def banking_train() -> tuple[list[str], list[str]]:
    """The full banking-77 train split (slow tier)."""
    from icl_fungi import load_pool

    path = BANKING77 / "train.csv"
    if not path.is_file():
        message = f"banking-77 not found at {path} (set ICL_FUNGI_BANKING77)"
        if os.environ.get("ICL_FUNGI_REQUIRE_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return load_pool(path, text_column="text", label_column="category")
