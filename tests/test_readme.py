from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import pytest

import icl_fungi

from .conftest import ROOT

LIBRARY = str(Path(icl_fungi.__file__).parent)


def test_readme_examples_run(capsys, caplog, tmp_path, monkeypatch):
    """The README's API, pairs, LangChain and DSPy examples run as pasted (the DSPy one up to the LLM call), and the
    library warns about nothing in them (the quick start needs banking-77: slow tier)."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) == 5 and "banking77/train.csv" in blocks[0]
    monkeypatch.chdir(tmp_path)  # the DSPy example saves a program
    ns: dict = {}
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for block in blocks[1:]:
            exec(compile(block, "README.md", "exec"), ns)
    out = capsys.readouterr().out
    assert out.count("Query: where is my card?\nIntent:") == 2
    assert isinstance(ns["messages"], list) and ns["messages"][0]["role"] == "system"
    assert len({x.label for x in ns["picked"]}) == 3
    assert ns["docs"][0].metadata["label"] == "card_arrival"
    assert ns["demos"][-1].label == "card_arrival" and (tmp_path / "intents.icl" / "manifest.json").is_file()
    assert "Output: Tap 'Forgot password'.\n\nInput: I forgot my password\nOutput:" in out  # the pairs example
    assert [r.getMessage() for r in caplog.records if r.name.startswith("icl_fungi")] == []
    assert [str(w.message) for w in caught if w.filename.startswith(LIBRARY)] == []


def test_readme_names_what_make_venv_installs():
    """The contributor set-up states the extras the Makefile installs, and the README stays short."""
    extras = re.search(r'pip install -e "(\.\[[^]]*\])"', (ROOT / "Makefile").read_text())
    text = (ROOT / "README.md").read_text()
    assert extras and f'pip install -e "{extras.group(1)}"' in text
    assert len(text.split()) < 1500


@pytest.mark.slow
def test_readme_quick_start_runs(banking_train, capsys, tmp_path, monkeypatch):
    """The quick start as pasted, on the full banking-77 train split."""
    from .conftest import BANKING77

    block = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(block.replace("../shared/data/banking77", str(BANKING77)), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "card_arrival" in out and out.rstrip().endswith("Query: I still haven't received my card\nIntent:")
    assert (tmp_path / "banking77.icl" / "manifest.json").is_file()
