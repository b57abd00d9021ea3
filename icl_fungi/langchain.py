"""LangChain drop-ins: a retriever and a few-shot example selector backed by ``ICLRetriever``.

Needs the ``langchain`` extra (``pip install "icl-fungi[langchain]"``).

Example:
    >>> from icl_fungi.langchain import ICLFungiRetriever, ICLFungiExampleSelector  # doctest: +SKIP
    >>> docs = ICLFungiRetriever(retriever=r, k=4).invoke("card not here")          # doctest: +SKIP
    >>> docs[0].metadata["label"]                                                    # doctest: +SKIP
    'card_arrival'
"""

from __future__ import annotations

from typing import Any

try:
    from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.example_selectors import BaseExampleSelector
    from langchain_core.retrievers import BaseRetriever
    from pydantic import BaseModel, ConfigDict
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "icl_fungi.langchain needs langchain-core: pip install 'icl-fungi[langchain]'"
    ) from err

from .prompt import ORDERS, order_examples
from .retriever import ICLRetriever, RetrievedExample
from .selection import Selection

__all__ = ["ICLFungiExampleSelector", "ICLFungiRetriever"]


def _check(retriever: Any, selection: Any) -> None:
    if not isinstance(retriever, ICLRetriever):
        raise TypeError(f"retriever must be an ICLRetriever, got {type(retriever).__name__}")
    Selection.coerce(selection)


class ICLFungiRetriever(BaseRetriever):
    """A LangChain retriever returning ``Document(page_content=text, metadata={label, score, index})``; in a pool
    with outputs (pairs) the metadata also holds ``output``, and in a pool without labels ``label`` is ``None``.

    Example:
        >>> ICLFungiRetriever(retriever=r, k=4).invoke("where is my card?")  # doctest: +SKIP
    """

    retriever: Any
    k: int = 4
    selection: Any = None

    model_config = ConfigDict(arbitrary_types_allowed=True)

    def model_post_init(self, __context: Any) -> None:
        _check(self.retriever, self.selection)

    @staticmethod
    def _to_documents(examples: list[RetrievedExample]) -> list[Document]:
        return [Document(page_content=x.text, metadata={"label": x.label, "score": x.score, "index": x.index,
                                                        **({"output": x.output} if x.output is not None else {})})
                for x in examples]

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return self._to_documents(self.retriever.retrieve(query, self.k, selection=self.selection))

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        """``ainvoke``: the retrieval runs in a worker thread (:meth:`ICLRetriever.aretrieve`); the loop keeps going."""
        return self._to_documents(await self.retriever.aretrieve(query, self.k, selection=self.selection))


class ICLFungiExampleSelector(BaseExampleSelector, BaseModel):
    """A LangChain example selector for ``FewShotPromptTemplate`` / ``FewShotChatMessagePromptTemplate``.

    Selected examples are dicts ``{text_key: text, label_key: label}`` (in a pool of pairs
    ``{text_key: input, output_key: output}``, with ``label_key`` too when the pool also has labels) in ``order`` (as in
    ``ICLRetriever.build_prompt``: ``"similar_last"``, the default, puts the most similar next to
    the query; ``"similar_first"``; ``"random"`` seeded by ``seed``). The query is
    ``input_variables[input_key]``, or the only input variable when ``input_key`` is ``None``.

    Example:
        >>> sel = ICLFungiExampleSelector(retriever=r, k=4)         # doctest: +SKIP
        >>> sel.select_examples({"query": "card not here"})[-1]     # doctest: +SKIP
        {'text': 'My card has not arrived yet.', 'label': 'card_arrival'}
    """

    retriever: Any
    k: int = 4
    input_key: str | None = None
    text_key: str = "text"
    label_key: str = "label"
    output_key: str = "output"
    selection: Any = None
    order: str = "similar_last"
    seed: int = 0

    model_config = ConfigDict(arbitrary_types_allowed=True)

    def model_post_init(self, __context: Any) -> None:
        _check(self.retriever, self.selection)
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")

    def _query(self, input_variables: dict[str, Any]) -> str:
        if self.input_key is not None:
            if self.input_key not in input_variables:
                raise ValueError(f"input variables lack {self.input_key!r} (got {sorted(input_variables)})")
            return input_variables[self.input_key]
        if len(input_variables) != 1:
            raise ValueError(f"several input variables {sorted(input_variables)}: set input_key to the query's")
        return next(iter(input_variables.values()))

    def _as_dicts(self, examples: list[RetrievedExample]) -> list[dict]:
        return [self._as_dict(x) for x in order_examples(examples, self.order, self.seed)]

    def select_examples(self, input_variables: dict[str, str]) -> list[dict]:
        """Examples for the query in ``input_variables``."""
        return self._as_dicts(self.retriever.retrieve(self._query(input_variables), self.k, selection=self.selection))

    async def aselect_examples(self, input_variables: dict[str, str]) -> list[dict]:
        """:meth:`select_examples` with the retrieval in a worker thread (``FewShotPromptTemplate.aformat``)."""
        return self._as_dicts(await self.retriever.aretrieve(self._query(input_variables), self.k, selection=self.selection))

    def _as_dict(self, x: Any) -> dict:
        """One example as the dict a LangChain prompt formats: its text, and its label and output when the pool has them."""
        out = {self.text_key: x.text}
        if x.label is not None:
            out[self.label_key] = x.label
        if x.output is not None:
            out[self.output_key] = x.output
        return out

    def _split(self, example: dict[str, str]) -> tuple[list[str], list[Any] | None, list[str] | None]:
        """``(texts, labels, outputs)`` of one example dict, checked against what the pool holds."""
        r = self.retriever
        keys = [self.text_key] + [self.label_key] * r.has_labels + [self.output_key] * r.has_outputs
        for key in keys:
            if key not in example:
                raise ValueError(f"example lacks {key!r} (got {sorted(example)})")
        labels = [example[self.label_key]] if self.label_key in example else None  # refused by a pool without labels
        outputs = [example[self.output_key]] if self.output_key in example else None
        return [example[self.text_key]], labels, outputs

    def add_example(self, example: dict[str, str]) -> Any:
        """Add one example (a dict with ``text_key``, and ``label_key`` / ``output_key`` when the pool has labels /
        outputs) to the pool; returns its pool position."""
        return self.retriever.add_examples(*self._split(example))[0]

    async def aadd_example(self, example: dict[str, str]) -> Any:
        """:meth:`add_example` with the encoding in a worker thread; queries meanwhile see the old or new pool."""
        return (await self.retriever.aadd_examples(*self._split(example)))[0]
