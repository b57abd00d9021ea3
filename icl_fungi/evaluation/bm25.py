"""BM25 over the pool's texts: the lexical baseline long-context ICL studies use on intent sets (``bm25s``).

Example:
    >>> bm = BM25Pool(["my card never arrived", "top up failed", "card delivery time"])   # doctest: +SKIP
    >>> [i for i, _ in bm.retrieve_batch(["where is my card"], k=2)[0]]                  # doctest: +SKIP
    [0, 2]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["BM25Pool"]


class BM25Pool:
    """A BM25 index (Lucene variant, k1 1.5, b 0.75, English stop words) over ``texts``; ids are pool positions.

    Queries with no term in the pool's vocabulary get the first ``k`` pool examples with score 0, so every
    query gets ``k`` examples as with the other selectors.
    """

    def __init__(self, texts: Sequence[str], *, k1: float = 1.5, b: float = 0.75) -> None:
        try:
            import bm25s
        except ImportError as err:
            raise ImportError("the bm25 selector needs bm25s: pip install 'icl-fungi[eval]'") from err
        self._bm25s = bm25s
        self.n = len(texts)
        self.index = bm25s.BM25(k1=k1, b=b)
        self.index.index(bm25s.tokenize(list(texts), stopwords="en", show_progress=False), show_progress=False)

    def retrieve_batch(self, queries: Sequence[str], k: int) -> list[list[tuple[int, float]]]:
        """Per query, ``k`` pool examples ``(index, score)``, best first (ties by index)."""
        k = min(k, self.n)
        tokens = self._bm25s.tokenize(list(queries), stopwords="en", show_progress=False)
        ids, scores = self.index.retrieve(tokens, k=self.n if k else 1, show_progress=False, n_threads=1)
        out = []
        for row_ids, row_scores in zip(np.asarray(ids), np.asarray(scores), strict=True):
            order = np.lexsort((row_ids, -row_scores))[:k]  # by score, then by pool position
            out.append([(int(row_ids[j]), float(row_scores[j])) for j in order])
        return out
