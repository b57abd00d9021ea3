"""DSPy drop-in: FUNGI-selected few-shot demos for any DSPy program, saved and loaded with the program.

:class:`FungiKNNFewShot` is a teleprompter shaped like ``dspy.KNNFewShot``: ``compile(student, trainset=...)``
builds an :class:`~icl_fungi.ICLRetriever` over the trainset's input fields and returns a
:class:`FungiFewShot` program that, on every call, retrieves the ``k`` trainset examples nearest to the call's
inputs and runs the student with them as its predictors' demos (labelled demos, as ``dspy.LabeledFewShot``
sets them; nothing is bootstrapped). ``program.save("prog.json")`` writes the DSPy state and the retriever
beside it (``prog.icl/``); ``FungiFewShot(student).load("prog.json")`` restores both, with no pickle.

Retrieval is keyed on the input fields' text: the value itself for one input field, ``"key: value | ..."``
(as ``dspy.KNN`` writes it) for several. An output field whose values repeat (classification: on average at
least twice per value) labels the pool for the KL head; otherwise (question → answer pairs) the pool has no
labels and the retriever uses the label-free KL head. ``label_field=`` chooses explicitly.

Needs the ``dspy`` extra (``pip install "icl-fungi[dspy]"``).

Example:
    >>> import dspy                                                                              # doctest: +SKIP
    >>> trainset = [dspy.Example(text=t, label=y).with_inputs("text") for t, y in zip(texts, labels)]  # doctest: +SKIP
    >>> program = FungiKNNFewShot(k=8).compile(dspy.Predict("text -> label"), trainset=trainset)  # doctest: +SKIP
    >>> program(text="where is my card?").label                                                  # doctest: +SKIP
    'card_arrival'
    >>> program.save("intents.json")                      # also writes intents.icl/             # doctest: +SKIP
    >>> FungiFewShot(dspy.Predict("text -> label")).load("intents.json")                         # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

try:
    import dspy
    from dspy.teleprompt import Teleprompter
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("icl_fungi.dspy needs DSPy: pip install 'icl-fungi[dspy]'") from err

from .features import DEFAULT_FEATURES
from .features.heads import kl_head_class
from .manifest import MANIFEST
from .prompt import ORDERS, order_examples
from .retriever import ICLRetriever, RetrievedExample
from .selection import Selection

__all__ = ["FungiFewShot", "FungiKNNFewShot", "input_keys_of", "query_text", "retriever_path"]

AUTO = "auto"
STATE_KEY = "icl_fungi"  # the program state's entry for the selector (beside the predictors' entries)
_SHARED = ("retriever", "trainset", "_add_lock")  # what copies of a FungiFewShot share (see __deepcopy__)


# ------------------------------------------------------------------ trainset
def input_keys_of(trainset: Sequence[Any]) -> tuple[str, ...]:
    """The input fields every trainset example shares, in the first example's field order.

    >>> input_keys_of([dspy.Example(question="2+2?", answer="4").with_inputs("question")])
    ('question',)
    """
    if isinstance(trainset, str | bytes) or not isinstance(trainset, Sequence) or not trainset:
        raise ValueError("trainset must be a non-empty list of dspy.Example")
    keys: tuple[str, ...] | None = None
    for i, ex in enumerate(trainset):
        if not isinstance(ex, dspy.Example):
            raise TypeError(f"trainset #{i} must be a dspy.Example, got {type(ex).__name__}")
        if not ex._input_keys:
            raise ValueError(f"trainset #{i} has no input fields: build it with dspy.Example(...).with_inputs('field', ...)")
        if keys is None:
            keys = tuple(k for k in ex.keys() if k in ex._input_keys)
        elif set(ex._input_keys) != set(keys):
            raise ValueError(f"trainset #{i} has input fields {sorted(ex._input_keys)}, the first example {sorted(keys)}")
    assert keys is not None
    return keys


def query_text(values: Mapping[str, Any], input_keys: Sequence[str]) -> str:
    """The text retrieval is keyed on: the value of the one input field, or ``"key: value | ..."`` for several.

    >>> query_text({"question": "2+2?", "context": "math"}, ("question", "context"))
    'question: 2+2? | context: math'
    """
    missing = [k for k in input_keys if k not in values]
    if missing:
        raise ValueError(f"the inputs lack {missing} (the trainset's input fields are {list(input_keys)})")
    if len(input_keys) == 1:
        return str(values[input_keys[0]])
    return " | ".join(f"{k}: {values[k]}" for k in input_keys)


def _repeating_field(trainset: Sequence[Any], input_keys: Sequence[str]) -> str | None:
    """The one output field whose values are str/int labels that repeat (at least twice per value on average)."""
    outputs = {k for ex in trainset for k in ex.keys() if k not in input_keys}
    if len(outputs) != 1:
        return None
    field = outputs.pop()
    values = [ex.get(field) for ex in trainset]
    if not all(isinstance(v, str | int) and not isinstance(v, bool) and str(v).strip() for v in values):
        return None
    return field if 2 * len(set(values)) <= len(values) else None


def _labels(trainset: Sequence[Any], label_field: str | None) -> list[Any] | None:
    """One label per example (the ``label_field`` value), or ``None``: a pool without labels."""
    if label_field is None:
        return None
    missing = [i for i, ex in enumerate(trainset) if label_field not in ex]
    if missing:
        raise ValueError(f"trainset #{missing[0]} lacks the label field {label_field!r}")
    return [ex[label_field] for ex in trainset]


def retriever_path(path: str | Path) -> Path:
    """Where a program saved at ``path`` keeps its retriever: the same name with ``.icl``.

    >>> retriever_path("runs/intents.json").as_posix()
    'runs/intents.icl'
    """
    return Path(path).with_suffix(".icl")


def _pool_matches(retriever: ICLRetriever, trainset: Sequence[Any], input_keys: Sequence[str]) -> bool:
    """True when the retriever's pool is the trainset's input texts, in order (pool position = trainset index)."""
    return retriever.texts == [query_text(ex, input_keys) for ex in trainset]


def _check_settings(k: object, order: object, selection: object, seed: object) -> None:
    """Validate the per-call settings shared by :class:`FungiFewShot` and :class:`FungiKNNFewShot`."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if isinstance(selection, str):
        Selection.from_spec(selection)  # a bad spec fails now, not on the first call
    elif selection is not None and not isinstance(selection, Selection):
        raise TypeError(f"selection must be a Selection spec string, a Selection or None, got {type(selection).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")


def _check_json_path(path: str | Path, what: str) -> Path:
    path = Path(path)
    if path.suffix != ".json":
        raise ValueError(f"{what} a FungiFewShot program as JSON (no pickle): the path must end with .json, got {path}")
    return path


# ------------------------------------------------------------------ program
class FungiFewShot(dspy.Module):
    """A DSPy program that runs ``program`` with the ``k`` trainset examples FUNGI retrieves for each call as demos.

    Made by :meth:`FungiKNNFewShot.compile`, or empty (``FungiFewShot(student)``) and then filled by :meth:`load`.
    Every predictor of ``program`` gets the same demos, in ``order`` (``"similar_last"``: the nearest example
    next to the query). Calls run on a copy of ``program`` (safe from several threads, as ``dspy.Evaluate``
    calls it); ``acall`` retrieves in a worker thread.

    Args:
        program: the student program.
        retriever: an :class:`~icl_fungi.ICLRetriever` whose pool is ``trainset``'s input texts, in order.
        trainset: the ``dspy.Example`` list the demos come from.
        k: demos per call; ``selection``: a :class:`~icl_fungi.Selection` spec such as ``"mmr;mmr_lambda=0.3"``
            or ``"topk;exclude_query=true"`` (a ``Selection`` object works too but is not saved); ``seed`` for
            ``order="random"``; ``label_field``: the output field used as the retriever's labels, or ``None``.
    """

    def __init__(self, program: dspy.Module, *, retriever: ICLRetriever | None = None, trainset: Sequence[Any] = (),
                 k: int = 4, order: str = "similar_last", selection: Selection | str | None = None, seed: int = 0,
                 label_field: str | None = None) -> None:
        super().__init__()
        if not isinstance(program, dspy.Module):
            raise TypeError(f"program must be a dspy.Module, got {type(program).__name__}")
        self.program = program
        self.retriever: ICLRetriever | None = None
        self.trainset: list[Any] = []  # extended in place: copies of this program share it with the retriever
        self.input_keys: tuple[str, ...] = ()
        self._retriever_checksum: str | None = None
        self._add_lock = threading.Lock()
        self._configure(k=k, order=order, selection=selection, seed=seed, label_field=label_field)
        if retriever is not None:
            self._attach(retriever, list(trainset))
        elif trainset:
            raise ValueError("a trainset needs its retriever: build both with FungiKNNFewShot(...).compile(student, trainset=...)")

    def _configure(self, *, k: object, order: object, selection: object, seed: object, label_field: object) -> None:
        _check_settings(k, order, selection, seed)
        if label_field is not None and not isinstance(label_field, str):
            raise TypeError(f"label_field must be a field name or None, got {type(label_field).__name__}")
        self.k, self.order, self.selection, self.seed, self.label_field = k, order, selection, seed, label_field

    def _attach(self, retriever: ICLRetriever, trainset: list[Any]) -> None:
        """Use ``retriever`` over ``trainset``, checking that its pool is the trainset's input texts in order."""
        if not isinstance(retriever, ICLRetriever):
            raise TypeError(f"retriever must be an ICLRetriever, got {type(retriever).__name__}")
        keys = input_keys_of(trainset)
        if not _pool_matches(retriever, trainset, keys):
            raise ValueError(f"the retriever's pool ({len(retriever)} texts) is not this trainset's input texts "
                             f"({len(trainset)} examples, in order)")
        with self._add_lock:
            self.retriever, self.trainset, self.input_keys = retriever, trainset, keys

    def _selection(self) -> Selection:
        return Selection.from_spec(self.selection) if isinstance(self.selection, str) else Selection.coerce(self.selection)

    def _pool(self) -> ICLRetriever:
        if self.retriever is None:
            raise RuntimeError("this FungiFewShot has no retriever yet: compile it with FungiKNNFewShot or load() a saved one")
        return self.retriever

    def _query(self, inputs: Mapping[str, Any]) -> str:
        self._pool()
        return query_text(inputs, self.input_keys)

    def _demos(self, hits: list[RetrievedExample]) -> list[Any]:
        return [self.trainset[x.index] for x in order_examples(hits, self.order, self.seed)]

    def _with_demos(self, demos: list[Any]) -> dspy.Module:
        program = self.program.deepcopy()  # per call: concurrent calls never see each other's demos
        for predictor in program.predictors():
            predictor.demos = list(demos)
        return program

    # ------------------------------------------------------------ calls
    def demos_for(self, **inputs: Any) -> list[Any]:
        """The trainset examples a call with ``inputs`` shows as demos, in prompt order."""
        query = self._query(inputs)
        return self._demos(self._pool().retrieve(query, self.k, selection=self._selection()))

    def forward(self, **inputs: Any) -> Any:
        return self._with_demos(self.demos_for(**inputs))(**inputs)

    async def aforward(self, **inputs: Any) -> Any:
        query = self._query(inputs)
        hits = await self._pool().aretrieve(query, self.k, selection=self._selection())
        return await self._with_demos(self._demos(hits)).acall(**inputs)

    def add_examples(self, examples: Sequence[Any]) -> list[int]:
        """Add ``dspy.Example`` items (the trainset's input fields, and its label field if it has one) to the
        trainset and the retriever; returns their positions. Safe while other threads call the program."""
        retriever = self._pool()
        examples = list(examples)
        if not examples:
            return []
        keys = input_keys_of(examples)
        if set(keys) != set(self.input_keys):
            raise ValueError(f"the examples' input fields {sorted(keys)} differ from the trainset's {sorted(self.input_keys)}")
        texts = [query_text(ex, self.input_keys) for ex in examples]
        labels = _labels(examples, self.label_field)
        with self._add_lock:
            self.trainset.extend(examples)  # before the retriever can return their positions
            return retriever.add_examples(texts, labels)

    # ------------------------------------------------------------ persistence
    def __deepcopy__(self, memo: dict[int, Any]) -> FungiFewShot:
        """A copy sharing the example pool (retriever, trainset and their lock: data, not parameters; DSPy
        optimizers copy programs often) and copying everything else."""
        new = self.__class__.__new__(self.__class__)
        for name, value in self.__dict__.items():
            new.__dict__[name] = value if name in _SHARED else copy.deepcopy(value, memo)
        return new

    def _check_savable(self) -> None:
        if isinstance(self.selection, Selection):
            raise ValueError(f"selection {self.selection!r} is an object: pass it as a spec string (e.g. "
                             "'label_cap;max_per_label=2') to save the program")

    def dump_state(self, json_mode: bool = True) -> dict[str, Any]:
        """The predictors' state (DSPy's) plus the selector's settings and trainset under ``"icl_fungi"``."""
        self._check_savable()
        state = super().dump_state(json_mode=json_mode)
        state[STATE_KEY] = {"k": self.k, "order": self.order, "selection": self.selection, "seed": self.seed,
                            "label_field": self.label_field, "input_keys": list(self.input_keys),
                            "trainset": [ex.toDict() for ex in self.trainset],
                            "retriever_checksum": self._retriever_checksum}
        return state

    def load_state(self, state: dict[str, Any], **kwargs: Any) -> FungiFewShot:
        """Restore the predictors (DSPy) and the selector's settings and trainset. The retriever is :meth:`load`'s
        part: one already attached is kept only if its pool is the restored trainset's."""
        fungi = state.get(STATE_KEY)
        if not isinstance(fungi, dict):
            raise ValueError(f"the state has no {STATE_KEY!r} entry: it was not saved by a FungiFewShot program")
        keys = fungi.get("input_keys")
        rows = fungi.get("trainset")
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            raise ValueError(f"the state's input_keys must be a non-empty list of field names, got {keys!r}")
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError("the state's trainset must be a list of objects")
        super().load_state(state, **kwargs)
        self._configure(**{name: fungi.get(name) for name in ("k", "order", "selection", "seed", "label_field")})
        trainset = [dspy.Example(**r).with_inputs(*keys) for r in rows]
        with self._add_lock:
            if self.retriever is not None and not _pool_matches(self.retriever, trainset, keys):
                self.retriever = None  # load() attaches the retriever saved with this trainset
            self.trainset, self.input_keys = trainset, tuple(keys)
        self._retriever_checksum = fungi.get("retriever_checksum")
        return self

    def save(self, path: str | Path, save_program: bool = False, modules_to_serialize: Any = None) -> None:
        """Save the program's state to ``path`` (``.json``) and its retriever to :func:`retriever_path` beside it.

        ``save_program=True`` (DSPy's cloudpickle of the whole program) is refused: load paths here take no pickle.
        """
        if save_program:
            raise ValueError("FungiFewShot saves as JSON plus a verified retriever folder, never as a pickle: "
                             "call save('program.json') without save_program")
        path = _check_json_path(path, "save")
        if self.retriever is None:
            raise RuntimeError("nothing to save: this FungiFewShot has no retriever (compile or load it first)")
        self._check_savable()  # before anything is written
        target = self.retriever.save(retriever_path(path))
        self._retriever_checksum = json.loads((target / MANIFEST).read_text(encoding="utf-8"))["checksum"]
        super().save(path)

    def load(self, path: str | Path, allow_pickle: bool = False, allow_unsafe_lm_state: bool = False, *,
             model: Any = None) -> FungiFewShot:
        """Load a program saved by :meth:`save`: the state from ``path``, the retriever from :func:`retriever_path`.

        ``model`` is passed to :meth:`ICLRetriever.load` (needed when the retriever was built with a local model).
        The retriever must be the one saved with this state (its manifest checksum is compared).
        """
        if allow_pickle:
            raise ValueError("FungiFewShot loads JSON only (no pickle); drop allow_pickle")
        path = _check_json_path(path, "load")
        super().load(path, allow_unsafe_lm_state=allow_unsafe_lm_state)
        folder = retriever_path(path)
        retriever = ICLRetriever.load(folder, model=model)
        checksum = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["checksum"]
        if checksum != self._retriever_checksum:
            raise ValueError(f"{folder} is not the retriever saved with {path} (its manifest checksum differs)")
        self._attach(retriever, self.trainset)
        return self


# ------------------------------------------------------------------ teleprompter
class FungiKNNFewShot(Teleprompter):
    """``dspy.KNNFewShot`` with FUNGI features: ``compile(student, trainset=...)`` returns a :class:`FungiFewShot`.

    Args:
        k: demos per call.
        label_field: the output field whose values label the pool for the KL block; ``"auto"`` (default) takes
            the one output field whose values repeat, else none (the plain embedding is used); ``None``: none.
        order, selection: as in :class:`FungiFewShot`; ``seed`` seeds the retriever's build and ``order="random"``.
        retriever_options: :meth:`ICLRetriever.from_texts` keywords (``model=``, ``features=``, ...).
    """

    def __init__(self, k: int = 4, *, label_field: str | None = AUTO, order: str = "similar_last",
                 selection: Selection | str | None = None, seed: int = 0, **retriever_options: Any) -> None:
        super().__init__()
        for bad in ("labels", "texts"):
            if bad in retriever_options:
                raise TypeError(f"{bad}= comes from the trainset given to compile(), not from the teleprompter")
        _check_settings(k, order, selection, seed)
        if label_field is not None and not isinstance(label_field, str):
            raise TypeError(f"label_field must be 'auto', a field name or None, got {type(label_field).__name__}")
        self.k, self.label_field, self.order, self.selection, self.seed = k, label_field, order, selection, seed
        self.retriever_options = retriever_options

    def compile(self, student: dspy.Module, *, trainset: Sequence[Any], teacher: dspy.Module | None = None,
                valset: Sequence[Any] | None = None) -> FungiFewShot:
        """Build the retriever over ``trainset`` and return the student wrapped with per-call FUNGI demos.

        ``valset`` is not used (choosing demos needs no validation); a ``teacher`` is refused: the demos are the
        trainset's own examples, not bootstrapped.
        """
        if teacher is not None:
            raise ValueError("FungiKNNFewShot shows the trainset's examples as labelled demos; it does not bootstrap with a teacher")
        trainset = list(trainset)
        keys = input_keys_of(trainset)
        field = _repeating_field(trainset, keys) if self.label_field == AUTO else self.label_field
        options = dict(self.retriever_options)
        if field is None and "kl_head" in options and self._needs_labels(options):
            raise ValueError(f"kl_head={options['kl_head']!r} needs labels: set label_field= to an output field, or leave "
                             "kl_head unset (a pool without labels uses the label-free KL head)")
        options["seed"] = self.seed
        retriever = ICLRetriever.from_texts([query_text(ex, keys) for ex in trainset], _labels(trainset, field), **options)
        return FungiFewShot(student.reset_copy(), retriever=retriever, trainset=trainset, k=self.k, order=self.order,
                            selection=self.selection, seed=self.seed, label_field=field)

    @staticmethod
    def _needs_labels(options: Mapping[str, Any]) -> bool:
        features = options.get("features", DEFAULT_FEATURES)
        return "kl" in features and kl_head_class(options.get("kl_head", "labels")).needs_labels
