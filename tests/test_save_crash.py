"""A save killed at any moment loses nothing: a forked process saving a retriever gets SIGKILL at each crash point of
:mod:`icl_fungi.switch`; then a load gives the complete old retriever (killed before the switch) or the new one
(after it), never an error on a path that held a saved retriever, and the next save leaves no copies behind."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from icl_fungi import ICLRetriever, switch
from icl_fungi.cli import main
from icl_fungi.manifest import restore_interrupted_save

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="kills a forked child")

BEFORE_SWITCH = ("parts_written", "manifest_written", "synced", "moved_aside")


@pytest.fixture(scope="module")
def old_and_new(fungi_retriever, st_model, tmp_path_factory):
    """The session's retriever (120 examples) and a copy with one example more, told apart by their size."""
    base = fungi_retriever.save(tmp_path_factory.mktemp("base") / "r.icl")
    new = ICLRetriever.load(base, model=st_model)
    new.add_examples(["my card got swallowed by the cash machine"], [fungi_retriever.labels[0]])
    return fungi_retriever, new


def _save_killed_at(retriever: ICLRetriever, path: Path, point: str) -> None:
    """Save ``retriever`` to ``path`` in a forked child that SIGKILLs itself when the save reaches ``point``."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 3
        try:
            def hook(step: str) -> None:
                if step == point:
                    os.kill(os.getpid(), signal.SIGKILL)

            switch.crash_hook = hook
            retriever.save(path)
            code = 0  # the save finished without reaching the point
        finally:
            os._exit(code)
    deadline = time.monotonic() + 120
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"the saving child hung before {point}")
        time.sleep(0.01)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"the save never reached {point} ({status})"


def _same_answers(a: ICLRetriever, b: ICLRetriever) -> None:
    assert len(a) == len(b) and a.texts == b.texts and a.labels == b.labels
    for q in ("card arrival", "exchange rate"):
        assert [x.index for x in a.retrieve(q, 5)] == [x.index for x in b.retrieve(q, 5)]


@pytest.mark.parametrize("point", switch.STEPS)
def test_a_save_over_a_retriever_killed_at_each_step_leaves_the_old_or_the_new(point, old_and_new, st_model, tmp_path):
    old, new = old_and_new
    path = old.save(tmp_path / "r.icl")
    _save_killed_at(new, path, point)
    if point == "moved_aside":  # the hole: the folder is aside, its name free
        assert not path.exists() and switch.siblings(path, "old")
    loaded = ICLRetriever.load(path, model=st_model)
    _same_answers(loaded, old if point in BEFORE_SWITCH else new)
    new.save(path)  # the next save removes whatever the killed one left
    assert [p.name for p in tmp_path.iterdir()] == ["r.icl"]
    _same_answers(ICLRetriever.load(path, model=st_model), new)


@pytest.mark.parametrize("point", ["manifest_written", "synced", "switched"])
def test_a_first_save_killed_is_absent_or_complete(point, old_and_new, st_model, tmp_path):
    _, new = old_and_new
    path = tmp_path / "r.icl"
    _save_killed_at(new, path, point)
    if point == "switched":
        _same_answers(ICLRetriever.load(path, model=st_model), new)
    else:  # never saved: a clear error, and the next save succeeds
        with pytest.raises(ValueError, match="not a saved retriever"):
            ICLRetriever.load(path, model=st_model)
        new.save(path)
        assert [p.name for p in tmp_path.iterdir()] == ["r.icl"]


def test_serve_and_compact_put_back_a_folder_left_aside(old_and_new, tmp_path, capsys):
    old, new = old_and_new
    path = old.save(tmp_path / "r.icl")
    _save_killed_at(new, path, "moved_aside")
    assert main(["-q", "compact", str(path)]) == 0  # never served: nothing to fold, but the folder is back
    assert (path / "manifest.json").is_file() and "folded 0" in capsys.readouterr().out
    assert restore_interrupted_save(path) is False  # nothing left to restore


def test_only_incomplete_copies_left_is_a_clear_error(old_and_new, tmp_path):
    old, new = old_and_new
    path = old.save(tmp_path / "r.icl")
    _save_killed_at(new, path, "moved_aside")
    for copy in switch.siblings(path, "old") + switch.siblings(path, "tmp"):
        (copy / "pool.json").write_text("{}")  # both copies damaged (not by us)
    with pytest.raises(ValueError, match="a save was interrupted and left no complete copy"):
        ICLRetriever.load(path)
    old.save(path)  # a save still succeeds, and cleans up
    assert [p.name for p in tmp_path.iterdir()] == ["r.icl"]


def test_a_load_during_a_live_saves_switch_waits_for_it(old_and_new, tmp_path):
    """A load that finds the folder aside while a save holds the lock waits for that save; it never restores the
    old copy under a save that is still running."""
    import threading

    from icl_fungi.manifest import open_directory

    old, _ = old_and_new
    path = old.save(tmp_path / "r.icl")
    aside = tmp_path / ".r.icl.old-0123abcd"
    got: list = []
    with switch.save_lock(path):
        path.rename(aside)  # the save's first rename
        reader = threading.Thread(target=lambda: got.append(open_directory(path)))
        reader.start()
        time.sleep(0.5)
        assert reader.is_alive() and not path.exists()  # waiting on the lock, not restoring
        aside.rename(path)  # the save puts its folder in place and lets go
    reader.join(30)
    assert got and got[0]["n_examples"] == len(old) and not aside.exists()
