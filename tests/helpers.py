"""Helpers shared by several test files: unit vectors, rewriting a saved retriever's manifest, running
readers alongside a writer, and starting ``icl-fungi eval`` in a subprocess until it has cached replies."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


# ----------------------------------------------------------------- vectors
def unit_rows(x: Any) -> np.ndarray:
    """``x`` (rows, or one vector) as float32 scaled to unit length along the last axis.

    >>> bool(np.allclose(unit_rows([[3, 4], [0, 2]]), [[0.6, 0.8], [0, 1]]))
    True
    """
    v = np.asarray(x, dtype=np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def random_unit(n: int, d: int, seed: int) -> np.ndarray:
    """``n`` seeded random unit vectors of dimension ``d`` (float32)."""
    return unit_rows(np.random.default_rng(seed).standard_normal((n, d)))


# ----------------------------------------------------------------- saved retrievers
def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def rewrite_manifest(path: Path, edit: Callable[[dict], Any] | None = None, *, rehash: bool = False) -> dict:
    """Edit a saved retriever's manifest.json and make its checksum match again (the attacker's view, or a
    way to reach the checks behind the checksum); returns the manifest written.

    The checksum is the sha256 of the manifest without its ``checksum`` key, as JSON with sorted keys (the
    saved format). ``rehash`` lists every plain file under ``path`` with its true sha256, keeping entries that
    name no plain file (links, paths outside) as they are.
    """
    m = read_manifest(path)
    if edit is not None:
        edit(m)
    if rehash:
        planted = {p.relative_to(path).as_posix(): file_sha256(p) for p in sorted(path.rglob("*"))
                   if p.is_file() and not p.is_symlink() and p.name != "manifest.json"}
        m["files"] = planted | {k: v for k, v in m["files"].items() if not (path / k).is_file() or (path / k).is_symlink()}
    body = {k: v for k, v in m.items() if k != "checksum"}
    m["checksum"] = hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(m))
    return m


# ----------------------------------------------------------------- threads
def run_alongside(reader: Callable[[], Any], writer: Callable[[], Any], n_readers: int = 4) -> tuple[Any, list[BaseException]]:
    """Call ``reader`` in ``n_readers`` threads again and again (at least once each) while ``writer`` runs in
    this thread; returns what ``writer`` returned and the exceptions the readers raised (a reader stops at its
    first)."""
    stop = threading.Event()
    errors: list[BaseException] = []
    calls = [0] * n_readers

    def loop(i: int) -> None:
        try:
            while not stop.is_set() or calls[i] == 0:
                reader()
                calls[i] += 1
        except BaseException as err:  # noqa: BLE001 - handed to the test
            errors.append(err)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(n_readers)]
    for t in threads:
        t.start()
    try:
        result = writer()
    finally:
        stop.set()
        for t in threads:
            t.join()
    return result, errors


# ----------------------------------------------------------------- the eval command line
def eval_command(data: Path, out: Path, base_url: str, *extra: str) -> list[str]:
    """``icl-fungi eval`` (as ``python -m icl_fungi.cli``) against a fake endpoint: embedding and random, k = 5, -q."""
    return [sys.executable, "-m", "icl_fungi.cli", "eval", "-q", "--data", str(data), "--selectors", "embedding,random",
            "-k", "5", "--base-url", base_url, "--model", "fake", "--out", str(out), *extra]


def start_until_cached(cmd: list[str], cache: Path, n_replies: int, timeout: float = 240) -> subprocess.Popen:
    """Start ``cmd`` and return once its response cache holds ``n_replies`` lines (the process still running).

    The child gets the default SIGINT action, as from a terminal: a shell's background job (e.g. `make test &`)
    starts with SIGINT ignored, which its children would inherit.
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + timeout
    while not cache.exists() or len(cache.read_text().splitlines()) < n_replies:
        if proc.poll() is not None:
            raise AssertionError(f"the command exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            raise AssertionError(f"no {n_replies} cached replies within {timeout} s")
        time.sleep(0.05)
    return proc
