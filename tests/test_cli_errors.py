"""Mistakes a new user made on the command line get a clear message at once, before any model loads."""

from __future__ import annotations

import time

import pytest

from icl_fungi.cli import main


@pytest.mark.parametrize(("extra", "message"), [
    (["-k", "0"], "-k must be >= 1, got 0"),
    (["--prompt", "--template", "no-such-template"], "no-such-template"),
])
def test_query_checks_its_arguments_before_loading_anything(tmp_path, capsys, extra, message):
    # the retriever folder does not even exist: the argument is refused first (it once failed after a 26 s model load)
    t0 = time.perf_counter()
    assert main(["-q", "query", str(tmp_path / "missing.icl"), "where is my card?", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "not a saved retriever" not in err and time.perf_counter() - t0 < 5


def test_query_refuses_an_empty_query(tmp_path, capsys):
    assert main(["-q", "query", str(tmp_path / "missing.icl"), "  "]) == 2
    assert "the query is empty" in capsys.readouterr().err


@pytest.mark.parametrize("data", ["./nosuchdir", "runs/no/such", "/no/such/dir"])
def test_eval_data_that_is_no_folder_says_so_without_the_hubs_id_rules(tmp_path, capsys, data):
    assert main(["-q", "eval", "--data", data, "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"--data {data}: no such folder" in err and "Repo id" not in err and "hub" in err and len(err) < 300
    assert not (tmp_path / "o").exists()
