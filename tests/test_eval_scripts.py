"""The ICL scripts' options: ``--eval-args`` (extra ``icl-fungi eval`` flags) and learning_curve's ``--k-rule``."""

from __future__ import annotations

import importlib.util
import json
import sys
from types import ModuleType

import pytest

from .conftest import ROOT


def load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("eval_script_" + path.replace("/", "_")[:-3], ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scripts() -> dict[str, ModuleType]:
    """eval/icl/learning_curve.py, icl_dev.py and round_table.py, with sys.path as it was afterwards (they put eval/ on it)."""
    saved = list(sys.path)
    try:
        yield {"curve": load("eval/icl/learning_curve.py"), "dev": load("eval/icl/icl_dev.py"),
               "table": load("eval/icl/round_table.py")}
    finally:
        sys.path[:] = saved


def k_of(options: list[str]) -> int:
    return int(options[options.index("-k") + 1])


def test_learning_curve_k_rule_and_eval_args(scripts):
    curve = scripts["curve"]
    extra = "--reader transformers --endpoint-id 'my reader' --template classification-completion"
    args = curve.parse_args(["-k", "10", "--eval-args", extra, "--cache", "c.jsonl"])
    assert args.k_rule == "min" and args.eval_extra == ["--reader", "transformers", "--endpoint-id", "my reader",
                                                        "--template", "classification-completion"]
    assert [k_of(curve.size_options(args, s)) for s in ("5", "20", "all")] == [5, 10, 10]  # k = min(k, N)
    options = curve.size_options(args, "5")
    assert options[-len(args.eval_extra):] == args.eval_extra and options.count("--reader") == 1
    fixed = curve.parse_args(["-k", "10", "--k-rule", "fixed", "--cache", "c.jsonl"])
    assert [k_of(curve.size_options(fixed, s)) for s in ("5", "20", "all")] == [10, 10, 10] and fixed.eval_extra == []
    assert "--eval-args" not in curve.size_options(fixed, "5")


def test_icl_dev_eval_args(scripts):
    dev = scripts["dev"]
    args = dev.parse_args(["--selectors", "embedding,fungi", "--eval-args=--cached-only", "--per-label", "5"])
    options = dev.eval_options(args)
    assert options[-1] == "--cached-only" and options[options.index("--per-label") + 1] == "5"
    assert dev.eval_options(dev.parse_args(["--selectors", "embedding"]))[-2:] == ["--cache", str(dev.CACHE)]
    assert dev.write_dev_folder.__module__ == "common"  # one dev-folder writer, eval/common.py's


@pytest.mark.parametrize("extra, says", [
    ("--no-such-flag", "icl-fungi eval rejects it"),
    ("--reader nonsense", "icl-fungi eval rejects it"),
    ("--template 'unclosed", "No closing quotation"),
    ("-k 5", "sets k, which this script sets itself"),
    ("--sel embedding", "sets selectors"),  # an abbreviation of a flag the script owns is caught too
    ("--cache other.jsonl", "sets cache"),
])
def test_eval_args_refused_with_the_reason(scripts, capsys, extra, says):
    for name, argv in (("curve", []), ("dev", ["--selectors", "embedding"])):
        with pytest.raises(SystemExit):
            scripts[name].parse_args([*argv, f"--eval-args={extra}"])  # with "=": a value may start with a dash
        assert says in capsys.readouterr().err, (name, extra)


def curve_row(size: str, selector: str, order: str, acc: float, nn: float, vote: float, gold: float,
              ci_low: float | None = None) -> dict:
    row = {"per label": size, "k": 20, "selector": selector, "order": order, "n": 1000, "accuracy": acc,
           "1-NN": nn, "k-NN vote": vote, "gold in top-k": gold}
    if ci_low is not None:
        row.update({"vs embedding": round(acc - 0.6, 4), "vs embedding ci95": [ci_low, 0.1]})
    return row


def test_round_table_states_each_bar(scripts, tmp_path):
    """Each of issue 34's bars is met or missed by the right margin: 1-NN lower, a CI touching 0, a lost vote."""
    table = scripts["table"]
    base = {"5": (0.60, 0.75, 0.70, 0.985), "all": (0.60, 0.90, 0.90, 0.984)}
    rows = [curve_row(size, "embedding", "similar_last", *base[size]) for size in base]
    rows += [curve_row("5", "fungi", "similar_last", 0.64, 0.749, 0.715, 0.975, ci_low=0.01),
             curve_row("all", "fungi", "similar_last", 0.59, 0.91, 0.80, 0.984, ci_low=-0.02),
             curve_row("5", "embedding+random", "random", 0.60, 0.75, 0.70, 0.985),
             curve_row("5", "fungi+random", "random", 0.63, 0.76, 0.80, 0.985, ci_low=0.0)]
    path = tmp_path / "curve.json"
    path.write_text(json.dumps({"provenance": {"commit": "0" * 40}, "rows": rows}))
    checked = {(b["per label"], b["order"], b["bar"]): b["met"]
               for b in table.bars(table.read_rows([path]), "fungi", "embedding")}
    assert checked == {("5", "similar_last", "gold in top-k"): True,  # -1.0 pt is allowed
                       ("5", "similar_last", "1-NN"): False, ("5", "similar_last", "k-NN vote"): False,
                       ("5", "similar_last", "LLM"): True, ("all", "similar_last", "gold in top-k"): True,
                       ("all", "similar_last", "1-NN"): True, ("all", "similar_last", "LLM"): False,
                       ("5", "random", "LLM"): False}  # +3 pt, but the CI starts at 0
    (tmp_path / "empty.json").write_text(json.dumps({"provenance": {"commit": "0" * 40}, "rows": []}))
    with pytest.raises(ValueError, match="no rows"):
        table.read_rows([tmp_path / "empty.json"])
