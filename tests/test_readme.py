from __future__ import annotations

import json
import logging
import re
import shlex
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


SUBCOMMANDS = ("build", "query", "eval", "serve", "compact")


def _commands(text: str) -> list[list[str]]:
    """The ``icl-fungi`` commands a page shows, as argument lists: every command line of its bash blocks
    (continuations joined, ``VAR=...`` prefixes and comments dropped) and each inline span that names a
    subcommand with arguments (a bare ``icl-fungi eval`` in prose is a name, not a command)."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
                words = words[1:]
            if words[:1] == ["icl-fungi"]:
                found.append(words[1:])
    for span in re.findall(r"`(icl-fungi [^`\n]+)`", text):  # on one line: a flag named in prose may wrap
        words = shlex.split(span)[1:]
        if len(words) > 1 and words[0] in SUBCOMMANDS:
            found.append(words)
    return found


@pytest.mark.parametrize("page", ["README.md", "docs/pools.md", "docs/serve.md", "docs/scale-out.md"])
def test_every_command_shown_parses(page, capsys):
    """Each command line a page shows is accepted by the CLI's parser as written (a missing ``--out`` once
    made the README's pairs line fail)."""
    from icl_fungi.cli import build_parser

    commands = _commands((ROOT / page).read_text())
    assert commands, page
    for argv in commands:
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{page}: `icl-fungi {shlex.join(argv)}` does not parse: {capsys.readouterr().err}")


def test_the_readme_pairs_line_builds_as_written(tmp_path, monkeypatch, capsys):
    """The README's `icl-fungi build qa.jsonl ...` runs on a file of questions and answers."""
    from icl_fungi.cli import main

    argv = next(a for a in _commands((ROOT / "README.md").read_text()) if a[:2] == ["build", "qa.jsonl"])
    monkeypatch.chdir(tmp_path)
    rows = [("how do I reset my password?", "Tap 'Forgot password'."), ("my card was stolen", "Freeze the card."),
            ("close my account", "Settings > Close account.")]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows))
    assert main(["-q", *argv]) == 0, capsys.readouterr().err
    assert "saved a retriever over 3 examples with outputs" in capsys.readouterr().out


def test_no_tracked_file_holds_merge_markers():
    """A merge resolved by hand leaves no conflict markers in a tracked text file."""
    import subprocess

    files = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True, check=True).stdout.split()
    marker = re.compile(r"^(<{7} |={7}$|>{7} )", re.M)
    found = []
    for name in files:
        path = ROOT / name
        text_file = path.suffix in {".py", ".md", ".toml", ".json", ".txt", ".cfg", ".sh", ""} and path.is_file()
        if text_file and path.stat().st_size < 5_000_000 and marker.search(path.read_text(errors="replace")):
            found.append(name)
    assert found == []
