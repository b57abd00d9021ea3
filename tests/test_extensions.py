"""Extension points: a view kind and a selection strategy added from test code only, with no edit of the
library, used through the Python API, save/load and the command line."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from icl_fungi import ICLRetriever, Selection
from icl_fungi.cli import main
from icl_fungi.features import FeatureConfig, Views, register_view_kind, registered_view_kinds
from icl_fungi.selection import SelectionStrategy, register_selection_strategy, registered_selection_strategies

from .conftest import DATA


class SwapViews(Views):
    """Views as other token sequences: view v rotates the words by v places."""

    kind = "test-rotate"
    same_tokens = False
    made: int = 0

    def texts(self, texts, view_ids):
        SwapViews.made += len(texts) * len(view_ids)
        out = []
        for v in view_ids:
            for t in texts:
                words = t.split()
                r = (v if isinstance(v, int) else 1) % len(words)  # view ids are ints, or tags such as "neg"
                out.append(" ".join(words[r:] + words[:r]))
        return out


class OnePerLabelReversed(SelectionStrategy):
    """The best example of each label, least similar first (a strategy no built-in gives)."""

    name = "test-one-per-label-reversed"

    def __init__(self, limit: int = 100) -> None:
        self.limit = limit

    def options(self):
        return {"limit": self.limit}

    def choose(self, candidates, k, context):
        seen, out = set(), []
        for i, s in candidates:
            if context.labels[i] not in seen:
                seen.add(context.labels[i])
                out.append((i, s))
        return out[: min(k, self.limit)][::-1]


@pytest.fixture(scope="module", autouse=True)
def registered():
    register_view_kind(SwapViews)
    register_selection_strategy(OnePerLabelReversed)
    module = types.ModuleType("icl_fungi_test_plugins")  # what `icl-fungi --import MODULE` imports
    module.SwapViews, module.OnePerLabelReversed = SwapViews, OnePerLabelReversed
    sys.modules[module.__name__] = module
    yield
    sys.modules.pop(module.__name__, None)


def test_registering_twice_under_one_name_is_refused():
    class Other(Views):
        kind = "test-rotate"

    with pytest.raises(ValueError, match="already registered"):
        register_view_kind(Other)
    with pytest.raises(TypeError, match="Views subclass"):
        register_view_kind(dict)
    with pytest.raises(ValueError, match="registered view kind"):
        FeatureConfig(simclr_view_mode="nope")
    assert {"dropout", "word_deletion", "test-rotate"} <= set(registered_view_kinds())
    assert {"topk", "mmr", "label_cap", "label_coverage", OnePerLabelReversed.name} <= set(registered_selection_strategies())


def test_a_view_kind_of_your_own_builds_saves_and_loads(intent_pool, st_model, tmp_path):
    texts, labels = intent_pool
    before = SwapViews.made
    r = ICLRetriever.from_texts(texts, labels, model=st_model, features=("embedding", "kl", "simclr"),
                                simclr_view_mode="test-rotate", show_progress_bar=False)
    assert SwapViews.made > before and isinstance(r.encoder.views, SwapViews)
    # its SimCLR block differs from the one dropout views give
    dropout = ICLRetriever.from_texts(texts, labels, model=st_model, features=("embedding", "kl", "simclr"), show_progress_bar=False)
    q = ["where is my card?"]
    assert not np.allclose(r.encoder.encode(q)["simclr"], dropout.encoder.encode(q)["simclr"], atol=1e-3)
    back = ICLRetriever.load(r.save(tmp_path / "views"), model=st_model)
    assert back.config.simclr_view_mode == "test-rotate" and isinstance(back.encoder.views, SwapViews)
    np.testing.assert_array_equal(back.vectors(q), r.vectors(q))


def test_a_selection_strategy_of_your_own(fungi_retriever):
    picked = fungi_retriever.retrieve("my card has not arrived", k=4, selection=Selection(OnePerLabelReversed.name))
    assert len({x.label for x in picked}) == 4
    with pytest.raises(ValueError, match="unknown option 'bogus'"):
        Selection(OnePerLabelReversed.name, bogus=1)
    assert Selection(OnePerLabelReversed.name, limit=2) == Selection(OnePerLabelReversed(limit=2))
    assert len(fungi_retriever.retrieve("my card has not arrived", k=4, selection=Selection(OnePerLabelReversed(limit=2)))) == 2


def test_your_parts_through_the_command_line(tmp_path, capsys):
    out = tmp_path / "cli.icl"
    assert main(["-q", "--import", "icl_fungi_test_plugins", "build", str(DATA / "intents-train.csv"), "--label-column", "intent",
                 "--features", "embedding,kl,simclr", "--feature-option", "simclr_view_mode=test-rotate", "--out", str(out)]) == 0
    assert json.loads((out / "encoder" / "config.json").read_text())["feature_config"]["simclr_view_mode"] == "test-rotate"
    capsys.readouterr()
    spec = f"{OnePerLabelReversed.name};limit=3"
    assert main(["-q", "query", str(out), "my card has not arrived", "-k", "5", "--selection", spec, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["examples"]
    assert len(shown) == 3 and len({x["label"] for x in shown}) == 3
    assert main(["-q", "query", str(out), "card", "--selection", "nope"]) == 2
    assert "unknown selection strategy 'nope'" in capsys.readouterr().err
    assert main(["-q", "--import", "no_such_module_xyz", "query", str(out), "card"]) == 2
    assert "--import no_such_module_xyz" in capsys.readouterr().err
