"""The ICL scripts' options: ``--eval-args`` (extra ``icl-fungi eval`` flags) and learning_curve's ``--k-rule``."""

from __future__ import annotations

import importlib.util
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
    """eval/icl/learning_curve.py and eval/icl/icl_dev.py, with sys.path as it was afterwards (they put eval/ on it)."""
    saved = list(sys.path)
    try:
        yield {"curve": load("eval/icl/learning_curve.py"), "dev": load("eval/icl/icl_dev.py")}
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
