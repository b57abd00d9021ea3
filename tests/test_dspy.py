"""DSPy: ``FungiKNNFewShot`` compiles a program whose every call shows the FUNGI-retrieved trainset examples as demos,
saved and loaded with its retriever. Fast tests use ``dspy.utils.DummyLM`` and the fake OpenAI-compatible server
(tests/llm_fakes.py); the slow one runs a real DSPy program against the embedded llama.cpp server (Gemma 3 270M) as
an ``openai/...`` model at its base URL."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm must not fetch its price list from the web
if os.environ.get("CI"):
    import dspy  # the Makefile installs the dspy extra: in CI a missing DSPy fails, never skips
else:
    dspy = pytest.importorskip("dspy", reason="the DSPy tests need the dspy extra")

from dspy.utils import DummyLM

from icl_fungi import Selection
from icl_fungi.dspy import FungiFewShot, FungiKNNFewShot, retriever_path

from .conftest import QUERIES

QA = [("What is the capital of France?", "Paris"), ("What is the capital of Italy?", "Rome"),
      ("Who wrote Hamlet?", "Shakespeare"), ("Who wrote Faust?", "Goethe"), ("How many legs has a spider?", "eight"),
      ("How many legs has an ant?", "six"), ("What colour is the sky?", "blue"), ("What colour is grass?", "green")]


def examples(pairs, inputs=("text",), outputs=("label",)) -> list:
    return [dspy.Example(**dict(zip((*inputs, *outputs), row, strict=True))).with_inputs(*inputs) for row in pairs]


def shown(messages: list[dict]) -> tuple[list[str], str]:
    """The demo texts a ChatAdapter request shows (the user turns between the system message and the query), and
    the query's text."""
    field = "[[ ## text ## ]]\n"
    demos = [m["content"].removeprefix(field) for m in messages[1:-1] if m["role"] == "user"]
    return demos, messages[-1]["content"].removeprefix(field).split("\n\n")[0]


@pytest.fixture(scope="module")
def trainset(intent_pool) -> list:
    return examples(zip(*intent_pool, strict=True))


@pytest.fixture(scope="module")
def compiled(trainset, st_model) -> FungiFewShot:
    student = dspy.Predict(dspy.Signature("text -> label", "Name the banking intent of the text."))
    return FungiKNNFewShot(k=4, model=st_model, show_progress_bar=False).compile(student, trainset=trainset)


def test_compile_keys_on_the_inputs_and_labels_with_the_repeating_output(compiled, trainset):
    assert compiled.label_field == "label" and compiled.retriever.config.features == ("embedding", "kl")
    assert compiled.retriever.texts == [ex.text for ex in trainset] and compiled.retriever.labels == [ex.label for ex in trainset]
    demos = compiled.demos_for(text=QUERIES[0])
    hits = compiled.retriever.retrieve(QUERIES[0], k=4)
    assert demos == [trainset[x.index] for x in reversed(hits)]  # similar_last: the nearest next to the query
    assert all(any(d is ex for ex in trainset) for d in demos) and demos[-1].label == "card_arrival"


def test_every_call_shows_its_own_demos_also_from_threads(compiled):
    """dspy.Evaluate calls the program from 4 threads: each request carries its own query's demos, and the
    student's predictors keep no demos between calls."""
    devset = [dspy.Example(text=q).with_inputs("text") for q in QUERIES]
    lm = DummyLM({q: {"label": f"answer {i}"} for i, q in enumerate(QUERIES)})
    with dspy.context(lm=lm):
        result = dspy.Evaluate(devset=devset, metric=lambda ex, pred, trace=None: pred.label == f"answer {QUERIES.index(ex.text)}",
                               num_threads=4, display_progress=False)(compiled)
    assert result.score == 100.0 and len(lm.history) == len(QUERIES)
    for entry in lm.history:
        demos, query = shown(entry["messages"])
        assert demos == [d.text for d in compiled.demos_for(text=query)]
    assert [p.demos for p in compiled.program.predictors()] == [[]]


def test_acall_equals_call(compiled):
    lm = DummyLM({QUERIES[1]: {"label": "top_up"}})
    with dspy.context(lm=lm):
        sync = compiled(text=QUERIES[1])
        got = asyncio.run(compiled.acall(text=QUERIES[1]))
    assert got.label == sync.label == "top_up"
    assert shown(lm.history[0]["messages"]) == shown(lm.history[1]["messages"])


def test_save_and_load_restore_program_selector_and_retriever(compiled, st_model, tmp_path):
    student = dspy.Predict(dspy.Signature("text -> label", "Name the banking intent."))
    program = FungiFewShot(student, retriever=compiled.retriever, trainset=compiled.trainset, k=5, order="similar_first",
                           selection="label_cap;max_per_label=2", label_field="label")
    program.save(tmp_path / "intents.json")
    assert (tmp_path / "intents.icl" / "manifest.json").is_file()
    state = json.loads((tmp_path / "intents.json").read_text())
    assert state["icl_fungi"]["selection"] == "label_cap;max_per_label=2" and len(state["icl_fungi"]["trainset"]) == 120

    loaded = FungiFewShot(dspy.Predict("text -> label")).load(tmp_path / "intents.json", model=st_model)
    assert (loaded.k, loaded.order, loaded.selection, loaded.label_field) == (5, "similar_first", "label_cap;max_per_label=2", "label")
    assert loaded.program.predictors()[0].signature.instructions == "Name the banking intent."
    assert loaded.retriever is not compiled.retriever and loaded.retriever.block_weights == compiled.retriever.block_weights
    for q in QUERIES[:4]:
        demos = loaded.demos_for(text=q)
        assert [d.toDict() for d in demos] == [d.toDict() for d in program.demos_for(text=q)]
        assert len(demos) == 5 and max(sum(d.label == lab for d in demos) for lab in {d.label for d in demos}) <= 2
    assert list(loaded.demos_for(text=QUERIES[0])[0].inputs().keys()) == ["text"]


def test_save_and_load_refuse_pickle_and_a_foreign_retriever(compiled, trainset, st_model, tmp_path):
    other = FungiKNNFewShot(k=2, model=st_model, features=("embedding",), show_progress_bar=False).compile(
        dspy.Predict("text -> label"), trainset=trainset[:12])
    with pytest.raises(ValueError, match="never as a pickle"):
        compiled.save(tmp_path / "prog", save_program=True)
    with pytest.raises(ValueError, match=r"must end with \.json"):
        compiled.save(tmp_path / "prog.pkl")
    compiled.save(tmp_path / "a.json")
    other.save(tmp_path / "b.json")
    with pytest.raises(ValueError, match="no pickle"):
        FungiFewShot(dspy.Predict("text -> label")).load(tmp_path / "a.json", allow_pickle=True)
    shutil.rmtree(retriever_path(tmp_path / "a.json"))
    shutil.copytree(retriever_path(tmp_path / "b.json"), retriever_path(tmp_path / "a.json"))
    with pytest.raises(ValueError, match="not the retriever saved with"):
        FungiFewShot(dspy.Predict("text -> label")).load(tmp_path / "a.json", model=st_model)
    with_object = FungiFewShot(dspy.Predict("text -> label"), retriever=compiled.retriever, trainset=compiled.trainset,
                               selection=Selection("mmr"))
    with pytest.raises(ValueError, match="spec string"):
        with_object.save(tmp_path / "object.json")
    assert not retriever_path(tmp_path / "object.json").exists()
    dspy.Predict("text -> label").save(tmp_path / "plain.json")
    with pytest.raises(ValueError, match="not saved by a FungiFewShot"):
        FungiFewShot(dspy.Predict("text -> label")).load(tmp_path / "plain.json")


def test_question_answer_pairs_are_a_pool_without_labels(st_model, tmp_path):
    qa = examples(QA, inputs=("question",), outputs=("answer",))
    program = FungiKNNFewShot(k=2, model=st_model, show_progress_bar=False).compile(dspy.ChainOfThought("question -> answer"),
                                                                                  trainset=qa)
    assert program.label_field is None and program.retriever.labels is None
    assert program.retriever.config.features == ("embedding", "kl") and program.retriever.config.kl_head == "prototypes"
    assert {d.answer for d in program.demos_for(question="Who wrote Macbeth?")} == {"Shakespeare", "Goethe"}
    with pytest.raises(ValueError, match="needs labels"):
        FungiKNNFewShot(k=2, model=st_model, kl_head="labels").compile(dspy.Predict("question -> answer"), trainset=qa)
    # added examples are retrieved, shown and saved
    ids = program.add_examples(examples([("What is the capital of Spain?", "Madrid")], inputs=("question",), outputs=("answer",)))
    assert ids == [len(QA)] and program.demos_for(question="capital of Spain")[-1].answer == "Madrid"
    program.save(tmp_path / "qa.json")
    loaded = FungiFewShot(dspy.ChainOfThought("question -> answer")).load(tmp_path / "qa.json", model=st_model)
    assert len(loaded.trainset) == len(loaded.retriever) == len(QA) + 1
    assert loaded.demos_for(question="capital of Spain")[-1].answer == "Madrid"


def test_several_input_fields_key_the_retrieval_on_all_of_them(st_model):
    rows = [("card", "it never arrived", "card_arrival"), ("card", "still not here", "card_arrival"),
            ("top up", "it failed", "top_up_failed"), ("top up", "was declined", "top_up_failed")]
    trainset = examples(rows, inputs=("topic", "text"))
    program = FungiKNNFewShot(k=1, model=st_model, show_progress_bar=False).compile(dspy.Predict("topic, text -> label"),
                                                                                  trainset=trainset)
    assert program.retriever.texts[0] == "topic: card | text: it never arrived"
    assert program.demos_for(topic="top up", text="it did not work")[0].label == "top_up_failed"
    with pytest.raises(ValueError, match=r"the inputs lack \['topic'\]"):
        program.demos_for(text="it did not work")


def test_bad_settings_and_trainsets_are_named(trainset, st_model):
    for kwargs, err, match in [({"k": 0}, ValueError, "k must be an int >= 1"), ({"order": "best"}, ValueError, "order must be one of"),
                               ({"selection": "nope"}, ValueError, "nope"), ({"label_field": 3}, TypeError, "label_field"),
                               ({"labels": ["a"]}, TypeError, "comes from the trainset")]:
        with pytest.raises(err, match=match):
            FungiKNNFewShot(**kwargs)
    build = FungiKNNFewShot(k=2, model=st_model, show_progress_bar=False)
    student = dspy.Predict("text -> label")
    with pytest.raises(ValueError, match="non-empty list"):
        build.compile(student, trainset=[])
    with pytest.raises(ValueError, match="no input fields"):
        build.compile(student, trainset=[dspy.Example(text="hi", label="greet")])
    with pytest.raises(TypeError, match=r"trainset #1 must be a dspy.Example"):
        build.compile(student, trainset=[trainset[0], {"text": "hi"}])
    with pytest.raises(ValueError, match="does not bootstrap"):
        build.compile(student, trainset=trainset, teacher=student)
    with pytest.raises(RuntimeError, match="no retriever yet"):
        FungiFewShot(student)(text="hi")
    with pytest.raises(TypeError, match=r"program must be a dspy\.Module"):
        FungiFewShot("text -> label")


def test_copies_share_the_pool_and_nothing_else(compiled):
    copy = compiled.deepcopy()
    assert copy.retriever is compiled.retriever and copy.trainset is compiled.trainset
    assert copy.program is not compiled.program and copy.program.predictors()[0] is not compiled.program.predictors()[0]
    # what optimizers do with candidate programs: a state round trip in memory keeps the retriever ...
    state = compiled.dump_state()
    copy.load_state(state)
    assert copy.retriever is compiled.retriever and copy.demos_for(text=QUERIES[0]) == compiled.demos_for(text=QUERIES[0])
    # ... unless the state's trainset is not the retriever's pool
    state["icl_fungi"]["trainset"] = state["icl_fungi"]["trainset"][1:]
    copy.load_state(state)
    with pytest.raises(RuntimeError, match="no retriever yet"):
        copy.demos_for(text=QUERIES[0])
    assert compiled.retriever is not None and len(compiled.trainset) == len(compiled.retriever)


# ------------------------------------------------------------------ over HTTP
LABEL_TURN = re.compile(r"\[\[ ## label ## \]\]\n(\S+)")  # a demo's answer in the ChatAdapter's format


def one_query_per_intent(intent_queries) -> dict[str, str]:
    picked: dict[str, str] = {}
    for text, label in zip(*intent_queries, strict=True):
        picked.setdefault(label, text)
    return picked


def run_over_http(program: FungiFewShot, base_url: str, model: str, picked: dict[str, str]) -> int:
    """Call ``program`` for each query through ``dspy.LM("openai/<model>")`` at ``base_url``; check that every request
    carried its query's FUNGI demos; returns how many intents came back right (an unreadable answer is wrong)."""
    from dspy.utils.exceptions import AdapterParseError

    lm = dspy.LM(f"openai/{model}", api_base=base_url, api_key="local", temperature=0.0, max_tokens=48, cache=False,
                 num_retries=0)
    # no JSON fallback: its second request asks for a JSON schema, which llama.cpp turns into a grammar over Gemma's
    # 262k-token vocabulary; under load that one request ran for over 30 minutes (the ChatAdapter's path is the one
    # under test, the parse failure is caught below)
    adapter = dspy.ChatAdapter(use_json_adapter_fallback=False)
    correct = 0
    with dspy.context(lm=lm, adapter=adapter):
        for label, text in picked.items():
            try:
                correct += program(text=text).label.strip() == label
            except AdapterParseError:
                pass
    asked = {shown(h["messages"])[1]: shown(h["messages"])[0] for h in lm.history}
    assert set(picked.values()) <= set(asked)
    for text in picked.values():
        assert asked[text] == [d.text for d in program.demos_for(text=text)]
    return correct


def test_program_over_an_openai_compatible_endpoint(compiled, intent_queries):
    """The slow test's path (litellm, HTTP, the ChatAdapter's parsing) against the fake server, which answers with the
    label of the last demo: the nearest example, as order="similar_last" places it."""
    from .llm_fakes import FakeLLM

    def answer(prompt: str) -> str:
        last = LABEL_TURN.findall(prompt)[-1]
        return f"[[ ## label ## ]]\n{last}\n\n[[ ## completed ## ]]"

    picked = one_query_per_intent(intent_queries)
    with FakeLLM(answer=answer) as server:
        correct = run_over_http(compiled, server.base_url, "fake", picked)
    assert correct >= len(picked) - 2


# ------------------------------------------------------------------ the real LLM
@pytest.mark.slow
def test_real_dspy_program_against_the_embedded_llm(trainset, intent_queries, st_model, tmp_path):
    """A DSPy program compiled with FungiKNNFewShot, saved, loaded and run against Gemma 3 270M served by llama.cpp
    (an ``openai/...`` model at the server's base URL): every query reaches the server, and every request carries its
    query's FUNGI demos (checked in ``run_over_http``).

    No accuracy bar: the 270M base model does not follow DSPy's output format. Measured here: 0 of 12 answers
    readable; under the ChatAdapter it replies ``[[ ## completed ## ]]`` without the label field, and the JSON
    fallback (off here) failed too. The fake-server test above checks the parsing path with well-formed replies."""
    if os.environ.get("CI"):
        import llama_cpp  # noqa: F401 - in CI the embedded LLM must be installed: fail, never skip
    else:
        pytest.importorskip("llama_cpp", reason="the embedded LLM needs the llm extra")
    from icl_fungi.evaluation.llm import LocalServer

    student = dspy.Predict(dspy.Signature("text -> label", "Name the banking intent of the text."))
    FungiKNNFewShot(k=8, model=st_model, show_progress_bar=False).compile(student, trainset=trainset).save(tmp_path / "intents.json")
    program = FungiFewShot(dspy.Predict("text -> label")).load(tmp_path / "intents.json", model=st_model)
    picked = one_query_per_intent(intent_queries)
    with LocalServer() as server:
        run_over_http(program, server.base_url, server.model, picked)  # asserts every query's request and demos
