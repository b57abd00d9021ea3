from __future__ import annotations

import re

from .conftest import ROOT


def test_readme_prompt_and_langchain_examples_run(capsys):
    """The README's build_prompt and LangChain examples run as pasted (the first block builds the full pool)."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) >= 3
    ns: dict = {}
    for block in blocks[1:]:
        if "gguf_file" in block:  # the Gemma-encoder example needs the optional GGUF model (tested in test_encoder)
            continue
        exec(compile(block, "README.md", "exec"), ns)
    out = capsys.readouterr().out
    assert out.count("Query: where is my card?\nIntent:") == 2
    assert isinstance(ns["messages"], list) and ns["messages"][0]["role"] == "system"
    assert len({x.label for x in ns["picked"]}) == 3
