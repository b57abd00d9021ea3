"""Putting a new directory in place of an old one so that a crash at any moment leaves a complete copy at its path.

A save writes the new directory into a hidden sibling ``.NAME.tmp-XXXXXXXX``, fsyncs it, moves the live directory
aside to ``.NAME.old-XXXXXXXX``, renames the new one into place, fsyncs the parent and removes the old copy (its
completeness marker first). The only moment ``NAME`` is missing is between the two renames; a crash there leaves
the old copy complete, and :func:`recover` (run by every load of a missing ``NAME``) renames it back. Savers hold
an exclusive lock on the parent folder for the whole save (``flock``, POSIX), so recovery and the removal of
stale copies never touch a save in progress.

Crash points (:data:`STEPS`) can be observed by tests through :data:`crash_hook`; nothing else sets it.

Example:
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()) / "r"
    >>> with save_lock(d):
    ...     tmp = new_sibling(d, "tmp"); _ = (tmp / "done").write_text("1"); put_in_place(tmp, d, marker="done")
    >>> sorted(p.name for p in d.parent.iterdir())
    ['r']
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

try:  # POSIX: savers of one folder's children take turns
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock
    fcntl = None  # type: ignore[assignment]

__all__ = ["STEPS", "crash_hook", "fsync_tree", "new_sibling", "put_in_place", "recover", "remove_stale", "save_lock", "siblings",
           "step", "tidy"]

logger = logging.getLogger(__name__)

STEPS = ("parts_written", "manifest_written", "synced", "moved_aside", "switched", "removing_old")
crash_hook: Callable[[str], None] | None = None  # tests only: called with each step's name as the save passes it


def step(name: str) -> None:
    """Mark that a save passed ``name`` (one of :data:`STEPS`): calls :data:`crash_hook` when a test set it."""
    if crash_hook is not None:
        crash_hook(name)


def new_sibling(path: Path, kind: str) -> Path:
    """A new, empty hidden folder next to ``path``: ``.NAME.KIND-XXXXXXXX`` (``kind``: ``tmp`` or ``old``; ``old``
    is only named here, the live directory is renamed to it)."""
    p = path.parent / f".{path.name}.{kind}-{uuid.uuid4().hex[:8]}"
    if kind == "tmp":
        p.mkdir()
    return p


def siblings(path: Path, kind: str) -> list[Path]:
    """The ``.NAME.KIND-XXXXXXXX`` folders next to ``path`` (left by saves that crashed), newest first."""
    pattern = re.compile(re.escape(f".{path.name}.{kind}-") + r"[0-9a-f]{8}")
    try:
        found = [p for p in path.parent.iterdir() if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
    except OSError:
        return []
    def mtime(p: Path) -> int:
        try:
            return p.stat().st_mtime_ns
        except OSError:
            return 0

    return sorted(found, key=mtime, reverse=True)


@contextlib.contextmanager
def save_lock(path: Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold the exclusive save lock of ``path``'s parent folder; yields whether it is held (``wait=False``: only
    when free; never where the platform has no ``flock``: there saves proceed unlocked)."""
    fd = -1
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        pass
    try:
        held = fd >= 0 and fcntl is not None
        if held:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except OSError:
                held = False
        yield held
    finally:
        if fd >= 0:
            os.close(fd)  # releases the lock


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows cannot open a folder
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - a folder some file systems cannot fsync
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` (and ``root``) to disk."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync(Path(dirpath) / name)
        _fsync(Path(dirpath))


def _remove(folder: Path, marker: str) -> None:
    """Remove a copy: its completeness marker first, so a crash midway never leaves a copy that looks complete."""
    with contextlib.suppress(OSError):
        (folder / marker).unlink()
    step("removing_old")
    shutil.rmtree(folder, ignore_errors=True)


def put_in_place(tmp: Path, path: Path, *, marker: str) -> None:
    """Replace ``path`` (absent, or a directory) by the complete folder ``tmp``, crash-safely (see the module
    docstring). The caller holds :func:`save_lock`; ``marker`` is the file whose presence makes a copy complete."""
    fsync_tree(tmp)
    step("synced")
    old = None
    if path.exists():
        old = new_sibling(path, "old")
        path.rename(old)
        _fsync(path.parent)
        step("moved_aside")
    tmp.rename(path)
    _fsync(path.parent)
    step("switched")
    if old is not None:
        _remove(old, marker)


def remove_stale(path: Path, *, marker: str) -> None:
    """Remove the copies earlier crashed saves of ``path`` left (the caller holds :func:`save_lock`)."""
    for p in siblings(path, "tmp") + siblings(path, "old"):
        logger.info("removing %s, left by an interrupted save", p)
        _remove(p, marker)


def tidy(path: Path, *, marker: str) -> None:
    """Remove what crashed saves of the present ``path`` left, when no save holds the lock (else leave it)."""
    if not (siblings(path, "tmp") or siblings(path, "old")):
        return
    with save_lock(path, wait=False) as held:
        if held and path.is_dir():
            remove_stale(path, marker=marker)


def recover(path: Path, verify: Callable[[Path], object], *, marker: str, locked: bool = False) -> bool:
    """When ``path`` is missing because a save was interrupted between its two renames, rename the complete copy
    back into place: the old one (the last save that finished), else the new one. ``verify(copy)`` raises
    ``ValueError`` unless ``copy`` is complete; ``locked``: the caller holds :func:`save_lock`. Returns whether a
    copy was put back; ``ValueError`` when the copies left are all incomplete, or cannot be renamed."""
    if path.exists() or path.is_symlink() or not siblings(path, "old"):
        return False
    with contextlib.nullcontext() if locked else save_lock(path):
        if path.exists() or path.is_symlink():  # a save that held the lock finished meanwhile
            return False
        candidates = siblings(path, "old") + siblings(path, "tmp")
        for copy in candidates:
            try:
                verify(copy)
            except ValueError:
                continue
            try:
                copy.rename(path)
            except OSError as err:
                raise ValueError(f"{path} is missing: a save was interrupted; its complete copy is {copy}, which could not "
                                 f"be renamed back ({err}): rename it to {path.name}") from None
            _fsync(path.parent)
            logger.warning("%s: a save was interrupted; restored the complete copy %s", path, copy.name)
            remove_stale(path, marker=marker)
            return True
    raise ValueError(f"{path} is missing: a save was interrupted and left no complete copy "
                     f"({', '.join(p.name for p in candidates)})")
