"""The add log: every example the service adds is written here and fsynced before it is acknowledged.

The log lives beside the saved retriever (``RETRIEVER_DIR.wal/``, never inside it: a saved directory holds
exactly the files its manifest lists). One line per record, ``<crc32 hex> <json>\\n``: a header, then ``add``
records (``seq``, ``start`` = the pool position of the first text, ``texts``, ``labels``, and the client's
``key`` with the request's ``digest`` when it sent an ``Idempotency-Key``), ``abort`` records (an add that was
logged but failed before it was acknowledged) and ``key`` records (the idempotency keys of adds already folded
into the saved retriever, carried over when the log is emptied, so a retry is recognised after a compaction).
A torn last line (a crash mid-write) was never acknowledged and is cut off; a damaged line before the last is
an error.

Replay is exactly once: an add whose positions the saved pool already holds (folded in by a compaction that
crashed before it emptied the log) is checked against the pool and skipped; the next one must start where
the pool ends. :func:`compact` folds the log into the saved retriever (atomic save) and then empties it.

Example:
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()) / "pool.icl"
    >>> with AddLog.open(d) as log:
    ...     log.append(0, ["hello"], ["greet"]).start, len(log.pending())
    (0, 1)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:  # POSIX: one process at a time writes a log (a second server or a compaction is refused)
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock
    fcntl = None  # type: ignore[assignment]

__all__ = ["AddLog", "AddRecord", "KeyEntry", "compact", "log_dir", "replay", "request_digest"]

logger = logging.getLogger(__name__)

FORMAT = "icl-fungi-add-log"
VERSION = 2  # 2: idempotency keys (``key`` records, ``key``/``digest`` in adds); version 1 logs are read as well
READABLE_VERSIONS = (1, 2)
LOG_NAME = "adds.log"
KEEP_KEYS = 10_000  # the idempotency keys remembered (the newest): a retry must come within this many keyed adds


def log_dir(retriever_dir: str | os.PathLike) -> Path:
    """Where the add log of ``retriever_dir`` lives: a sibling folder named ``<dir>.wal``.

    >>> log_dir("runs/banking77.icl").name
    'banking77.icl.wal'
    """
    path = Path(retriever_dir).resolve()
    return path.with_name(path.name + ".wal")


@dataclass(frozen=True)
class AddRecord:
    """One logged add: the texts that went to pool positions ``start ...`` (``key``: the client's idempotency key)."""

    seq: int
    start: int
    texts: list[str]
    labels: list[Any] | None
    outputs: list[str] | None = None
    key: str | None = None
    digest: str | None = None

    @property
    def end(self) -> int:
        return self.start + len(self.texts)


@dataclass(frozen=True)
class KeyEntry:
    """What an idempotency key was used for: the request's digest, and the add's sequence number and positions."""

    digest: str
    seq: int
    start: int
    n: int

    @property
    def ids(self) -> list[int]:
        return list(range(self.start, self.start + self.n))


def request_digest(texts: Sequence[str], labels: Sequence[Any] | None, outputs: Sequence[str] | None) -> str:
    """The sha256 of an add request's content: a retry with the same key must send the same.

    >>> request_digest(["a"], ["x"], None) == request_digest(["a"], ["x"], None) != request_digest(["a"], [1], None)
    True
    """
    data = json.dumps([list(texts), _list_or_none(labels), _list_or_none(outputs)], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def _line(body: dict[str, Any]) -> bytes:
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return b"%08x " % zlib.crc32(data) + data + b"\n"


def _parse(raw: bytes) -> dict[str, Any] | None:
    """A line's record, or ``None`` when its checksum or JSON is damaged."""
    crc, _, data = raw.rstrip(b"\n").partition(b" ")
    try:
        if int(crc, 16) != zlib.crc32(data):
            return None
        body = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than json can parse
        return None
    return body if isinstance(body, dict) else None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AddLog:
    """The open, locked add log of one saved retriever (see the module docstring). Use :meth:`open`."""

    def __init__(self, folder: Path, lock_fd: int) -> None:
        self.folder = folder
        self.path = folder / LOG_NAME
        self._lock_fd = lock_fd
        self._records: dict[int, AddRecord] = {}
        self._keys: OrderedDict[str, KeyEntry] = OrderedDict()  # oldest first
        self._high_water: int | None = None  # the end of the furthest add ever logged here, aborted ones included
        self._next_seq = 0
        self._fh: Any = None

    @classmethod
    def open(cls, retriever_dir: str | os.PathLike) -> AddLog:
        """Lock and read the log of ``retriever_dir`` (created when absent); ValueError when another process
        holds it or a line before the last is damaged."""
        folder = log_dir(retriever_dir)
        created = not folder.exists()
        folder.mkdir(exist_ok=True)
        if created:
            _fsync_dir(folder.parent)
        fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise ValueError(f"{folder} is in use by another process (a running `icl-fungi serve` or `compact`)") from None
        log = cls(folder, fd)
        try:
            log._load()
        except BaseException:
            log.close()
            raise
        return log

    def _load(self) -> None:
        """Read every record; cut a torn last line; start a fresh log when there is none."""
        if not self.path.exists():
            self._rewrite(first_seq=0)
            return
        lines = self.path.read_bytes().splitlines(keepends=True)
        good, records, aborted, next_seq = 0, {}, set(), None
        self._keys.clear()
        for i, raw in enumerate(lines):
            body = _parse(raw) if raw.endswith(b"\n") else None
            if body is None:
                if i == len(lines) - 1:  # torn by a crash mid-write: never acknowledged
                    logger.warning("%s: cutting off a torn last record (%d bytes)", self.path, len(raw))
                    break
                raise ValueError(f"{self.path}: record {i + 1} of {len(lines)} is damaged (checksum); refusing to guess")
            good += len(raw)
            next_seq = self._take(body, i, records, aborted, next_seq)
        if next_seq is None:
            raise ValueError(f"{self.path} is not an icl-fungi add log (no header)")
        if good < sum(len(raw) for raw in lines):
            with self.path.open("r+b") as fh:
                fh.truncate(good)
                os.fsync(fh.fileno())
        self._records = {s: r for s, r in records.items() if s not in aborted}
        for key, entry in list(self._keys.items()):
            if entry.seq in aborted:
                del self._keys[key]
        self._next_seq = next_seq
        self._fh = self.path.open("ab", buffering=0)

    def _take(self, body: dict[str, Any], i: int, records: dict, aborted: set, next_seq: int | None) -> int:
        """Fold one parsed line into ``records`` / ``aborted``; returns the next sequence number."""
        op, where = body.get("op"), f"{self.path}: record {i + 1}"
        if i == 0:
            if op != "header" or body.get("format") != FORMAT or body.get("version") not in READABLE_VERSIONS:
                raise ValueError(f"{self.path} is not an icl-fungi add log "
                                 f"(format {body.get('format')!r}, version {body.get('version')!r})")
            return _count(body, "first_seq", where)
        if op == "add":
            rec = _add_record(body, where)
            records[rec.seq] = rec
            self._high_water = max(self._high_water or 0, rec.end)
            if rec.key is not None:
                self._remember(rec.key, KeyEntry(str(rec.digest), rec.seq, rec.start, len(rec.texts)))
            return max(next_seq or 0, rec.seq + 1)
        if op == "abort":
            aborted.add(_count(body, "of", where))
            return next_seq or 0
        if op == "key":
            key, digest = _optional_str(body, "key", where), _optional_str(body, "digest", where)
            if key is None or digest is None:
                raise ValueError(f"{where}: a key record needs 'key' and 'digest' strings")
            self._remember(key, KeyEntry(digest, _count(body, "seq", where), _count(body, "start", where), _count(body, "n", where)))
            return next_seq or 0
        raise ValueError(f"{self.path}: record {i + 1} has an unknown op {op!r}")

    def _rewrite(self, first_seq: int) -> None:
        """Replace the log by a header and the remembered idempotency keys (written aside, fsynced, renamed over,
        folder fsynced)."""
        if self._fh is not None:
            self._fh.close()
        tmp = self.path.with_name(LOG_NAME + ".tmp")
        with tmp.open("wb") as fh:
            fh.write(_line({"op": "header", "format": FORMAT, "version": VERSION, "first_seq": first_seq}))
            for key, e in self._keys.items():
                fh.write(_line({"op": "key", "key": key, "digest": e.digest, "seq": e.seq, "start": e.start, "n": e.n}))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.folder)
        self._records, self._next_seq, self._high_water = {}, first_seq, None
        self._fh = self.path.open("ab", buffering=0)

    def _write(self, body: dict[str, Any]) -> None:
        self._fh.write(_line(body))
        os.fsync(self._fh.fileno())

    def append(self, start: int, texts: Sequence[str], labels: Sequence[Any] | None,
               outputs: Sequence[str] | None = None, *, key: str | None = None) -> AddRecord:
        """Log an add of ``texts`` (with their labels and outputs, either ``None`` when the pool has none) at pool
        positions ``start ...`` and fsync; returns the record (its ``seq``). ``key``: the client's idempotency key
        (see :meth:`lookup`)."""
        digest = None if key is None else request_digest(texts, labels, outputs)
        rec = AddRecord(self._next_seq, start, list(texts), _list_or_none(labels), _list_or_none(outputs), key, digest)
        body = {"op": "add", "seq": rec.seq, "start": rec.start, "texts": rec.texts, "labels": rec.labels, "outputs": rec.outputs}
        self._write(body if key is None else {**body, "key": key, "digest": digest})
        self._records[rec.seq] = rec
        self._high_water = max(self._high_water or 0, rec.end)
        self._next_seq += 1
        if key is not None and digest is not None:
            self._remember(key, KeyEntry(digest, rec.seq, rec.start, len(rec.texts)))
        return rec

    def abort(self, rec: AddRecord) -> None:
        """Mark a logged add as not applied (it failed before it was acknowledged); its key is free again."""
        self._write({"op": "abort", "of": rec.seq})
        self._records.pop(rec.seq, None)
        if rec.key is not None and rec.key in self._keys and self._keys[rec.key].seq == rec.seq:
            del self._keys[rec.key]

    def high_water(self) -> int | None:
        """The end position of the furthest add in the log, aborted ones included (None when it holds no add): an
        external index may hold rows up to there that the replay rewrites."""
        return self._high_water

    def lookup(self, key: str) -> KeyEntry | None:
        """The add logged with idempotency key ``key`` (one of the newest ``KEEP_KEYS``), or None."""
        return self._keys.get(key)

    def _remember(self, key: str, entry: KeyEntry) -> None:
        self._keys[key] = entry
        self._keys.move_to_end(key)
        while len(self._keys) > KEEP_KEYS:
            self._keys.popitem(last=False)

    def pending(self) -> list[AddRecord]:
        """The adds in the log, in order (not yet folded into the saved retriever by a compaction)."""
        return [self._records[s] for s in sorted(self._records)]

    def reset(self) -> None:
        """Empty the log (after its adds were saved with the retriever); sequence numbers keep counting."""
        self._rewrite(first_seq=self._next_seq)

    def close(self) -> None:
        """Close the file and release the lock."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = -1

    def __enter__(self) -> AddLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _count(body: dict[str, Any], key: str, where: str) -> int:
    """``body[key]``, which must be an int >= 0 (a record's seq, start, ...)."""
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where}: {key!r} must be an int >= 0, got {value!r}")
    return value


def _add_record(body: dict[str, Any], where: str) -> AddRecord:
    """An ``add`` line's record, its fields checked (a line with a valid checksum may still be malformed)."""
    seq, start, texts = _count(body, "seq", where), _count(body, "start", where), body.get("texts")
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{where}: 'texts' must be a non-empty list of strings")
    labels, outputs = body.get("labels"), body.get("outputs")
    for key, values in (("labels", labels), ("outputs", outputs)):
        if values is not None and (not isinstance(values, list) or len(values) != len(texts)):
            raise ValueError(f"{where}: {key!r} must be null or a list of {len(texts)} values")
    if outputs is not None and not all(isinstance(o, str) for o in outputs):
        raise ValueError(f"{where}: 'outputs' must hold strings")
    return AddRecord(seq, start, texts, labels, outputs, _optional_str(body, "key", where), _optional_str(body, "digest", where))


def _optional_str(body: dict[str, Any], field: str, where: str) -> str | None:
    value = body.get(field)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{where}: {field!r} must be a string or absent")
    return value


def _list_or_none(values: Sequence[Any] | None) -> list[Any] | None:
    return None if values is None else list(values)


def _part(values: list[Any] | None, rec: AddRecord) -> list[Any] | None:
    return None if values is None else values[rec.start : rec.end]


def replay(retriever: Any, records: Sequence[AddRecord]) -> int:
    """Apply the logged adds the retriever's pool lacks, exactly once; returns how many examples were added.

    An add whose positions the pool already holds must hold the same texts, labels and outputs there (then it
    is skipped); the first add past the pool's end must start exactly there.
    """
    texts, labels, outputs = retriever.texts, retriever.labels, retriever.outputs
    added = 0
    for rec in records:
        n = len(retriever)
        if rec.end <= len(texts):
            if (texts[rec.start : rec.end] != rec.texts or _part(labels, rec) != rec.labels
                    or _part(outputs, rec) != rec.outputs):
                raise ValueError(f"add log record {rec.seq} does not match the saved pool at positions {rec.start}-{rec.end - 1}: "
                                 "the log belongs to another retriever")
            continue
        if rec.start != n:
            raise ValueError(f"add log record {rec.seq} starts at position {rec.start} but the pool holds {n} examples: "
                             "the log belongs to another retriever, or records are missing")
        ids = retriever.add_examples(rec.texts, rec.labels, rec.outputs)
        if ids != list(range(rec.start, rec.end)):
            raise RuntimeError(f"replaying add log record {rec.seq}: the index gave positions {ids[:3]}..., expected {rec.start}...")
        added += len(ids)
    return added


def compact(retriever_dir: str | os.PathLike, *, model: Any = None, device: str | None = None) -> tuple[int, int]:
    """Fold the add log of ``retriever_dir`` into it: load, replay, save atomically, then empty the log.

    Returns ``(records folded, examples added)``; ``(0, 0)`` when the retriever was never served (no log is
    created then). Refused while a server holds the log.
    """
    from ..manifest import MANIFEST, restore_interrupted_save
    from ..retriever import ICLRetriever

    restore_interrupted_save(retriever_dir)  # a compaction killed mid-save left the folder aside: put it back
    if not (Path(retriever_dir) / MANIFEST).is_file():
        raise ValueError(f"{retriever_dir} is not a saved retriever (no {MANIFEST})")
    if not (log_dir(retriever_dir) / LOG_NAME).is_file():
        return 0, 0
    from .remote import restore_saved_rows

    with AddLog.open(retriever_dir) as log:
        records = log.pending()
        if not records:
            return 0, 0
        restore_saved_rows(retriever_dir, log)
        retriever = ICLRetriever.load(retriever_dir, model=model, device=device, show_progress_bar=False)
        added = replay(retriever, records)
        if added:
            retriever.save(retriever_dir)
        log.reset()
        return len(records), added
