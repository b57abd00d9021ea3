"""Indexes that live outside the saved directory (Milvus): brought back to the saved retriever before the add log
is replayed into it.

``icl-fungi serve`` writes an add's vectors into the collection when it acknowledges the add, long before a
compaction saves the retriever with its new size. After a crash the collection holds rows past the saved count,
which ``ICLRetriever.load`` rightly refuses. Every such row came from an add logged first, so the server that holds
the log deletes them (:meth:`~icl_fungi.milvus.MilvusIndex.truncate`) and the replay writes them again, at the same
ids. Rows the log cannot account for (past the highest position it ever logged) are refused, not deleted: another
process wrote to the collection.

Example:
    >>> import tempfile
    >>> from icl_fungi.serve.wal import AddLog
    >>> d = Path(tempfile.mkdtemp()) / "pool.icl"
    >>> with AddLog.open(d) as log:       # no saved retriever here: nothing to do for an in-process index
    ...     restore_saved_rows(d, log, backend="hnswlib")
    0
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..manifest import open_directory
from ..parts import read_config

if TYPE_CHECKING:  # the log calls this module in its compaction: no import at run time
    from .wal import AddLog

__all__ = ["ADDABLE_INDEXES", "restore_saved_rows", "saved_backend"]

logger = logging.getLogger(__name__)

ADDABLE_INDEXES = ("hnswlib", "milvus")  # index backends the service can add to and replay into


def saved_backend(retriever_dir: str | os.PathLike) -> str:
    """The index backend a saved retriever names (after its manifest and files are verified)."""
    open_directory(retriever_dir)
    return str(read_config(Path(retriever_dir) / "index").get("backend", "hnswlib"))


def restore_saved_rows(retriever_dir: str | os.PathLike, log: AddLog, *, backend: str | None = None) -> int:
    """Delete the rows an external index holds past the saved retriever's count (see the module docstring); returns
    how many went (0 for an index saved whole with the retriever). ValueError when the log cannot account for them."""
    backend = backend or saved_backend(retriever_dir)
    if backend != "milvus":
        return 0
    from ..milvus import MilvusIndex

    config = read_config(Path(retriever_dir) / "index")
    index = MilvusIndex.from_state(config, {})
    try:
        saved, rows = len(index), _rows(index)
        if rows <= saved:
            return 0
        logged = log.high_water()
        if logged is None or rows > logged:
            raise ValueError(f"collection {index.collection!r} at {index.uri} holds {rows} rows, the retriever saved at "
                             f"{retriever_dir} {saved}, and its add log accounts for rows up to {logged or saved}: another "
                             "process wrote to the collection; rebuild the retriever, or serve it with --read-only after "
                             "removing those rows")
        gone = index.truncate(saved)
        logger.info("%s: removed %d row(s) past the saved %d from collection %r; the add log puts them back", retriever_dir,
                    gone, saved, index.collection)
        return gone
    finally:
        index.close()


def _rows(index: Any) -> int:
    index.client.load_collection(index.collection)
    return index.rows()
