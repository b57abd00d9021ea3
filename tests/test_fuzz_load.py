"""Fuzzed load paths (hypothesis): damaged files of a saved retriever and of the service's add log give a clear
``ValueError`` or load what was saved (the add log: an exact prefix of its records), never another exception,
a hang or different answers.

A saved retriever: every file truncated, flipped or extended as it lies (the manifest's hashes catch it), the
same re-signed (the manifest rehashed, as an attacker or a buggy writer would: the parsers behind the hashes
must hold on their own; hnsw.bin included), and manifest lines duplicated or swapped. The add log: truncated at
any offset, a byte flipped, lines duplicated or swapped, and well-checksummed lines of any shape.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Any

import pytest

from icl_fungi import ICLRetriever, VectorIndex
from icl_fungi.manifest import open_directory
from icl_fungi.pool import ExamplePool
from icl_fungi.serve.wal import AddLog, log_dir, replay

from .helpers import rewrite_manifest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = settings(max_examples=40, deadline=None, database=None)
QUERIES = ("card arrival", "exchange rate")


# ----------------------------------------------------------------- a saved retriever
@pytest.fixture(scope="module")
def saved(fungi_retriever, st_model, tmp_path_factory) -> tuple[Path, Any]:
    """The session's retriever with an HNSW graph (so hnsw.bin is among the files), saved once; and its answers."""
    first = fungi_retriever.save(tmp_path_factory.mktemp("fuzz") / "exact.icl")
    r = ICLRetriever.load(first, model=st_model)
    n = len(r)
    r.index = VectorIndex(exact_threshold=10).build(r.index.get_vectors(range(n)), labels=[str(x) for x in r.labels])
    path = r.save(first.parent / "hnsw.icl")
    assert (path / "index" / "hnsw.bin").is_file()
    return path, _answers(ICLRetriever.load(path, model=st_model))


def _answers(r: ICLRetriever) -> list:
    return [len(r), r.texts, r.labels] + [[(x.index, round(x.score, 5)) for x in r.retrieve(q, 5)] for q in QUERIES]


def _files(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())


def _damage(data: bytes, how: str, where: float, mask: int, extra: bytes) -> bytes:
    """``data`` truncated at, flipped at (xor ``mask``), or extended past the relative offset ``where``."""
    at = min(int(where * len(data)), max(len(data) - 1, 0))
    if how == "truncate":
        return data[:at]
    if how == "extend":
        return data + extra
    return data[:at] + bytes([data[at] ^ mask]) + data[at + 1:]


damage = st.tuples(st.sampled_from(["truncate", "flip", "flip", "extend"]), st.floats(0, 1), st.integers(1, 255),
                   st.binary(min_size=1, max_size=8))


def _load_in_copy(path: Path, st_model: Any, edit: Any) -> tuple[list | None, ValueError | None]:
    """Copy the saved retriever, ``edit(copy)``, load it: ``(answers, None)`` or ``(None, the ValueError)``."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / path.name
        shutil.copytree(path, copy)
        edit(copy)
        try:
            return _answers(ICLRetriever.load(copy, model=st_model)), None
        except ValueError as err:  # anything else fails the test
            return None, err


@FUZZ
@given(data=st.data(), change=damage)
def test_a_damaged_file_is_named_in_a_clear_error(saved, st_model, data, change):
    path, answers = saved
    name = data.draw(st.sampled_from(_files(path)))

    def edit(copy: Path) -> None:
        (copy / name).write_bytes(_damage((copy / name).read_bytes(), *change))

    got, err = _load_in_copy(path, st_model, edit)
    if err is None:  # only a change JSON ignores (whitespace in the manifest) may load, and then as saved
        assert name == "manifest.json" and got == answers
    else:
        assert name in str(err) or "manifest.json" in str(err), err


def _rehashed_damage(saved: tuple, st_model: Any, name: str, change: tuple) -> None:
    path, _ = saved

    def edit(copy: Path) -> None:
        (copy / name).write_bytes(_damage((copy / name).read_bytes(), *change))
        rewrite_manifest(copy, rehash=True)

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / path.name
        shutil.copytree(path, copy)
        edit(copy)
        try:
            r = ICLRetriever.load(copy, model=st_model)
        except ValueError:  # anything else fails the test
            return
        # a consistent edit (a text, a number, a link to another node): it loads and answers with pool positions
        assert all(0 <= x.index < len(r) for x in r.retrieve(QUERIES[0], 5))


def _parts(saved: tuple) -> list[str]:
    return [f for f in _files(saved[0]) if f != "manifest.json"]


@settings(FUZZ, max_examples=12)
@given(data=st.data(), change=damage)
def test_a_damaged_file_rehashed_into_the_manifest_is_refused_or_answers(saved, st_model, data, change):
    _rehashed_damage(saved, st_model, data.draw(st.sampled_from(_parts(saved))), change)


@pytest.mark.slow  # the same, 300 cases (about a second each on 2 loaded cores)
@settings(FUZZ, max_examples=300)
@given(data=st.data(), change=damage)
def test_many_damaged_files_rehashed_are_refused_or_answer(saved, st_model, data, change):
    _rehashed_damage(saved, st_model, data.draw(st.sampled_from(_parts(saved))), change)


@FUZZ
@given(data=st.data(), op=st.sampled_from(["duplicate", "swap", "drop"]))
def test_manifest_lines_duplicated_swapped_or_dropped(saved, data, op):
    path, _ = saved
    lines = (path / "manifest.json").read_text().splitlines(keepends=True)
    i, j = data.draw(st.integers(0, len(lines) - 1)), data.draw(st.integers(0, len(lines) - 1))
    new = list(lines)
    if op == "duplicate":
        new.insert(j, lines[i])
    elif op == "swap":
        new[i], new[j] = new[j], new[i]
    else:
        del new[i]
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / path.name
        shutil.copytree(path, copy)
        (copy / "manifest.json").write_text("".join(new))
        try:  # the manifest decides which files load: verified, it must be the saved one (same files and hashes)
            got = open_directory(copy)
        except ValueError as err:  # every refusal names the retriever's folder
            assert str(copy) in str(err), err
            return
    assert got == json.loads((path / "manifest.json").read_text())  # only a reordering of entries loads


def test_a_rehashed_graph_with_an_id_past_the_end_is_refused_not_a_crash(saved, st_model, tmp_path):
    """Found by the fuzzing above: hnswlib trusts its file, and one flipped byte in a neighbour id made a query
    read outside the graph (segmentation fault). The graph is now checked before hnswlib reads it."""
    path, _ = saved
    copy = Path(shutil.copytree(path, tmp_path / "r"))
    graph = copy / "index" / "hnsw.bin"
    raw = bytearray(graph.read_bytes())
    raw[96 + 4: 96 + 8] = (0xFFFFFF).to_bytes(4, "little")  # element 0's first neighbour
    graph.write_bytes(bytes(raw))
    rewrite_manifest(copy, rehash=True)
    with pytest.raises(ValueError, match=r"hnsw\.bin: a level-0 neighbour list names an element past"):
        ICLRetriever.load(copy, model=st_model)
    graph.write_bytes(bytes(raw[:5000]))  # hnswlib's own RuntimeError on a short file is a ValueError too
    rewrite_manifest(copy, rehash=True)
    with pytest.raises(ValueError, match=r"hnsw\.bin: hnswlib cannot read it|hnsw\.bin: the file ends"):
        ICLRetriever.load(copy, model=st_model)


# ----------------------------------------------------------------- the add log
class Pool:
    """Stands in for an ICLRetriever in replay: the same pool checks as ``add_examples``, no encoding."""

    def __init__(self, texts: list[str]) -> None:
        self.pool = ExamplePool.checked(texts, ["base"] * len(texts))

    def __len__(self) -> int:
        return len(self.pool)

    texts = property(lambda self: self.pool.texts)
    labels = property(lambda self: self.pool.labels)
    outputs = property(lambda self: self.pool.outputs)

    def add_examples(self, texts: list[str], labels: list | None, outputs: list[str] | None = None) -> list[int]:
        new = ExamplePool.checked(texts, labels, outputs)
        self.pool.check_same_kind(new)
        start, self.pool = len(self.pool), self.pool.extended(new)
        return list(range(start, len(self.pool)))


BASE = ["a saved text", "another saved text"]
adds = st.lists(st.tuples(st.lists(st.text(min_size=1, max_size=12).filter(str.strip), min_size=1, max_size=3),
                          st.one_of(st.text(min_size=1, max_size=5).filter(str.strip), st.integers(-5, 5)),
                          st.booleans()),
                min_size=1, max_size=5)


def _write_log(folder: Path, plan: list) -> tuple[Path, list[list[str]]]:
    """Log ``plan`` (texts, label, aborted) after the base pool; returns the log's path and, per line, the texts
    the pool would end with if the log ended after that line."""
    states, pool, start = [list(BASE)], list(BASE), len(BASE)
    with AddLog.open(folder / "r.icl") as log:
        for texts, label, aborted in plan:
            rec = log.append(start, texts, [label] * len(texts))
            states.append(pool + texts)
            if aborted:
                log.abort(rec)
                states.append(list(pool))
            else:
                pool, start = pool + texts, start + len(texts)
    return log_dir(folder / "r.icl") / "adds.log", states


def _replayed(folder: Path) -> tuple[list[str] | None, ValueError | None]:
    """The pool after opening the log and replaying it onto the base: ``(texts, None)`` or ``(None, ValueError)``."""
    try:
        with AddLog.open(folder / "r.icl") as log:
            pool = Pool(BASE)
            replay(pool, log.pending())
            return pool.texts, None
    except ValueError as err:
        return None, err


@FUZZ
@given(plan=adds, where=st.floats(0, 1))
def test_a_log_cut_anywhere_replays_exactly_the_lines_before_the_cut(plan, where):
    with tempfile.TemporaryDirectory() as tmp:
        path, states = _write_log(Path(tmp), plan)
        raw = path.read_bytes()
        cut = int(where * len(raw))
        path.write_bytes(raw[:cut])
        got, err = _replayed(Path(tmp))
        whole = raw[:cut].count(b"\n")  # complete lines kept
        if whole == 0:
            assert err is not None and "not an icl-fungi add log" in str(err)
        else:
            assert err is None and got == states[whole - 1]


@FUZZ
@given(plan=adds, where=st.floats(0, 1), mask=st.integers(1, 255))
def test_a_flipped_byte_is_an_error_or_cuts_the_log_before_it(plan, where, mask):
    with tempfile.TemporaryDirectory() as tmp:
        path, states = _write_log(Path(tmp), plan)
        raw = bytearray(path.read_bytes())
        at = min(int(where * len(raw)), len(raw) - 1)
        raw[at] ^= mask
        path.write_bytes(bytes(raw))
        got, err = _replayed(Path(tmp))
        damaged_line = bytes(raw[:at]).count(b"\n")
        if err is None:  # only a damaged last line is cut (a torn write); what came before replays exactly
            assert got in states[:damaged_line], (got, damaged_line)
        else:
            assert "add log" in str(err) or "adds.log" in str(err), err


@FUZZ
@given(plan=adds, data=st.data(), op=st.sampled_from(["duplicate", "swap"]))
def test_duplicated_or_reordered_lines_replay_the_same_adds_or_are_refused(plan, data, op):
    with tempfile.TemporaryDirectory() as tmp:
        path, states = _write_log(Path(tmp), plan)
        lines = path.read_bytes().splitlines(keepends=True)
        i, j = data.draw(st.integers(0, len(lines) - 1)), data.draw(st.integers(0, len(lines)))
        if op == "duplicate":
            lines.insert(j, lines[i])
        else:
            j = min(j, len(lines) - 1)
            lines[i], lines[j] = lines[j], lines[i]
        path.write_bytes(b"".join(lines))
        got, err = _replayed(Path(tmp))
        if err is None:
            assert got == states[-1]  # records are keyed by seq: a copy or a new order changes nothing
        else:
            assert "not an icl-fungi add log" in str(err) or "unknown op" in str(err), err


def _line(body: Any) -> bytes:
    data = json.dumps(body).encode()
    return b"%08x " % zlib.crc32(data) + data + b"\n"


json_values = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False) | st.text(max_size=4),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                           max_leaves=8)
record_fields = st.fixed_dictionaries({"op": st.sampled_from(["add", "abort", "header", "other"])},
                                      optional={"seq": json_values | st.integers(0, 6), "start": json_values | st.integers(0, 6),
                                                "texts": json_values, "labels": json_values, "outputs": json_values,
                                                "of": json_values, "first_seq": json_values})


@FUZZ
@given(plan=adds, body=record_fields, where=st.integers(1, 12))
def test_a_well_checksummed_line_of_any_shape_is_refused_or_replays_a_valid_add(plan, body, where):
    with tempfile.TemporaryDirectory() as tmp:
        path, _ = _write_log(Path(tmp), plan)
        lines = path.read_bytes().splitlines(keepends=True)
        lines.insert(min(where, len(lines)), _line(body))
        path.write_bytes(b"".join(lines))
        got, err = _replayed(Path(tmp))
        if err is None:
            assert got[: len(BASE)] == BASE and all(isinstance(t, str) and t.strip() for t in got)
