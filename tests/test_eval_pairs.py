"""`icl-fungi eval --output-column`: a pair task scored on free-text outputs (exact match and token F1)."""

from __future__ import annotations

import csv
import re

import pytest

from icl_fungi.cli import build_parser
from icl_fungi.evaluation.harness import run_icl_eval
from icl_fungi.evaluation.tasks import OutputTask, normalize_answer, token_f1

from .conftest import DATA
from .llm_fakes import FakeLLM
from .llm_fakes import eval_settings as _settings


def _reply(intent: str) -> str:
    return f"Thanks for asking about {intent.replace('_', ' ')}: the team will help you today."


@pytest.fixture(scope="module")
def pair_data(tmp_path_factory):
    """The intents fixture as query -> reply pairs (one reply per intent), in train.csv / test.csv."""
    d = tmp_path_factory.mktemp("pairs")
    for split in ("train", "test"):
        with open(DATA / f"intents-{split}.csv") as f:
            rows = list(csv.DictReader(f))
        with open(d / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "reply"])
            w.writerows((r["text"], _reply(r["intent"])) for r in rows)
    return d


def _copy_nearest(prompt: str) -> str:
    return " " + re.findall(r"Output: (.*)", prompt)[-1]  # the output of the last (most similar) example


def test_scores_normalise_case_punctuation_and_articles():
    task = OutputTask()
    assert task.score("  The card arrives.\nsecond line", "card arrives")["correct"]
    assert task.score("", "card arrives") == {"prediction": "", "valid": False, "correct": False, "token_f1": 0.0}
    assert token_f1("card arrives", "card arrives today") == pytest.approx(0.8)
    assert token_f1("nothing alike", "card arrives") == 0.0 and normalize_answer("A  Card!") == "card"


def test_pair_task_end_to_end(pair_data, tmp_path):
    with FakeLLM(answer=_copy_nearest) as llm:
        report = run_icl_eval(_settings(pair_data, tmp_path / "pairs", llm.base_url, selectors=("fungi", "embedding"),
                                        output_column="reply", k=3, limit=12))
        wrong = run_icl_eval(_settings(pair_data, tmp_path / "wrong", llm.base_url, selectors=("embedding",),
                                       output_column="reply", k=3, limit=12, template="pairs-completion"))
    assert report["data"]["task"] == "outputs" and report["data"]["output_column"] == "reply"
    assert report["settings"]["template"] == "pairs-completion" and report["data"]["n_labels"] == 12
    assert report["endpoint"]["params"]["max_tokens"] == 128  # room for a sentence, not a label
    fungi = report["selector_configs"]["fungi"]["feature_config"]
    assert fungi["kl_head"] == "prototypes"  # the retriever saw no labels: the label-free KL head
    for name, m in report["selectors"].items():
        # the fake copies the most similar example's output: accuracy is the outputs' 1-NN, token F1 at least that
        assert m["accuracy"] == pytest.approx(m["retrieval"]["1nn_acc"]) and m["answers_nearest_label"] == 1.0, name
        assert m["token_f1"] >= m["accuracy"] and m["invalid_rate"] == 0.0
    rec = report["records"][0]
    assert rec["gold"].startswith("Thanks for asking about") and {"token_f1", "prediction"} <= set(rec)
    assert wrong["records"][0]["examples"] == next(r for r in report["records"] if r["selector"] == "embedding")["examples"]
    md = (tmp_path / "pairs" / "report.md").read_text()
    assert "Mean token F1: fungi" in md


def test_pair_task_bad_input(pair_data, tmp_path):
    with pytest.raises(ValueError, match="--max-tokens"):
        run_icl_eval(_settings(pair_data, tmp_path / "a", "http://127.0.0.1:9", output_column="reply", max_tokens=0))
    with pytest.raises(ValueError, match="--output-column and --label-column"):
        run_icl_eval(_settings(pair_data, tmp_path / "a", "http://127.0.0.1:9", output_column="reply", label_column="text"))
    with FakeLLM(answer=_copy_nearest) as llm, pytest.raises(ValueError, match="answer"):
        run_icl_eval(_settings(pair_data, tmp_path / "b", llm.base_url, output_column="answer"))
    assert not (tmp_path / "b").exists()


def test_cli_takes_output_column():
    args = build_parser().parse_args(["eval", "--data", "d", "--output-column", "reply", "--out", "o"])
    assert args.output_column == "reply"
