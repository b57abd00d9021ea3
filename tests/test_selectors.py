from __future__ import annotations

import pytest

from icl_fungi.evaluation.harness import EvalSettings, load_splits, run_icl_eval
from icl_fungi.evaluation.selectors import parse_selector
from icl_fungi.selection import LabelCap

from .llm_fakes import FakeLLM
from .llm_fakes import eval_settings as _settings


def test_parse_selector_spells_every_option():
    plain = parse_selector("fungi")
    assert (plain.name, plain.base, plain.features, plain.weights, plain.order) == ("fungi", "fungi", {}, {}, "similar_last")
    assert plain.fit_weights == "auto"  # the library's default
    spec = parse_selector("nb=fungi; kl_head=neighbors; features=embedding+kl; w.kl=0.5; fit_weights=none;"
                          " selection=label_cap; max_per_label=2; allowed_labels=a|b; order=similar_first")
    assert spec.base == "fungi" and spec.features == {"kl_head": "neighbors", "features": ("embedding", "kl")}
    assert spec.weights == {"kl": 0.5} and spec.fit_weights is None and spec.order == "similar_first"
    assert spec.selection.strategy == LabelCap(max_per_label=2)
    assert spec.selection.allowed_labels == ("a", "b")
    # selectors that differ only in selection or order share one retriever
    assert spec.retriever_key() == parse_selector("x=fungi;kl_head=neighbors;features=embedding+kl;w.kl=0.5;"
                                                  "fit_weights=none").retriever_key()
    assert spec.retriever_key() != parse_selector("y=fungi;kl_head=labels;features=embedding+kl;w.kl=0.5").retriever_key()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty selector spec"),
        ("a b=fungi", "selector name 'a b'"),
        ("bm42", "base must be one of"),
        ("x=fungi;kl_head", "'kl_head' is not key=value"),
        ("x=fungi;nope=1", "unknown option 'nope'"),
        ("x=fungi;w.kl=much", "weight w.kl must be a number"),
        ("x=fungi;order=sideways", "order must be one of"),
        ("x=random;kl_head=labels", "the random selector takes only 'order'"),
        ("x=fungi;kl_head=nope", "selector 'x': .*kl_head"),
        ("x=fungi;selection=label_cap", "selector 'x': strategy 'label_cap' needs max_per_label"),
        ("x=embedding;selection=best", "unknown selection strategy"),
    ],
)
def test_parse_selector_rejects_bad_specs(text, message):
    with pytest.raises(ValueError, match=message):
        parse_selector(text)


def test_settings_refuse_duplicate_names_and_bad_specs(intent_data, tmp_path):
    with pytest.raises(ValueError, match="selector names must be unique"):
        EvalSettings(data=str(intent_data), out=str(tmp_path), selectors=("embedding", "embedding=embedding;order=random")).validate()
    with pytest.raises(ValueError, match="--selectors: selector 'x'"):
        EvalSettings(data=str(intent_data), out=str(tmp_path), selectors=("x=fungi;nope=1",)).validate()


def test_eval_runs_selector_specs(intent_data, tmp_path):
    specs = ("near=embedding", "far=embedding;order=similar_first", "cap=embedding;selection=label_cap;max_per_label=1")
    with FakeLLM() as llm:  # answers with the label of the last example before the query
        report = run_icl_eval(_settings(intent_data, tmp_path / "s", llm.base_url, selectors=specs))
    sel = report["selectors"]
    assert set(sel) == {"near", "far", "cap"} and set(report["selector_specs"]) == set(sel)
    rows = {name: [r for r in report["records"] if r["selector"] == name] for name in sel}
    # same examples, other order: the fake now answers with the least similar example's label
    for a, b in zip(rows["near"], rows["far"], strict=True):
        assert sorted(a["examples"]) == sorted(b["examples"])
    assert sel["near"]["accuracy"] > sel["far"]["accuracy"]
    configs = report["selector_configs"]
    assert configs["near"] == configs["far"] and configs["near"]["feature_config"]["features"] == ["embedding"]
    assert report["selector_specs"]["cap"]["selection"]["strategy"] == {"name": "label_cap", "max_per_label": 1}
    _, train_labels, *_ = load_splits(str(intent_data))
    for r in rows["cap"]:  # one example per label
        chosen = [train_labels[i] for i in r["examples"]]
        assert len(chosen) == 5 and len(set(chosen)) == 5
    assert set(report["paired"]) == {"near_vs_far", "near_vs_cap", "far_vs_cap"}


def test_a_selector_without_selection_uses_the_retrievers_default(intent_data, tmp_path):
    """``fungi`` alone shows what a user's ``retrieve`` call returns (the retriever's ``default_selection``, cover
    on a labelled pool), not top-k; a spec that names a selection keeps it."""
    assert parse_selector("fungi").selection is None and parse_selector("fungi").describe()["selection"] is None
    specs = ("dflt=fungi", "cov=fungi;selection=cover", "top=fungi;selection=topk")
    with FakeLLM() as llm:
        report = run_icl_eval(_settings(intent_data, tmp_path / "s", llm.base_url, selectors=specs))
    assert report["selector_configs"]["dflt"]["default_selection"]["strategy"]["name"] == "cover"
    rows = {name: [r["examples"] for r in report["records"] if r["selector"] == name] for name in ("dflt", "cov", "top")}
    assert rows["dflt"] == rows["cov"]
    assert rows["dflt"] != rows["top"]  # the fixture's pool is small enough that cover changes some rows

