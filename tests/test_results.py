"""Every committed result under eval/results/ says where it came from and how to rerun it (no model is loaded).

Each JSON carries the provenance block of ``eval/common.py`` (commit, clean, command, rerun); each .md, .png or
.html lies next to such a JSON (an ICL run's folder: its report.json) and the .md names the commit and the rerun;
every command a block names is made of steps a fresh clone can run: ``git checkout`` of a commit in the history,
``make`` targets of the Makefile, and scripts under eval/ or ``icl-fungi`` with arguments their parsers accept
at HEAD (eval/archive/ keeps results whose script or grid is gone; it is not checked). A script that moved since
is checked at its new path (``eval/common.py``'s ``MOVED_SCRIPTS``); the pages that name scripts name them where
they are now.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "eval" / "results"
OPERATORS = {"&&", "||", ";", "|"}
PYTHON = re.compile(r"python(3(\.\d+)?)?")
ENV_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
SIDECARS = {".md", ".png", ".html"}

# Run in a child process: importing the eval scripts registers their KL heads and puts eval/ on sys.path.
# Reads [[program, args], ...] on stdin, prints one problem string (or null) per entry.
CHILD = r"""
import contextlib, importlib.util, io, json, sys
from pathlib import Path

root = Path(sys.argv[1])
sys.path.insert(0, str(root))
modules = {}

def parser_of(program):
    if program == "icl-fungi":
        from icl_fungi import cli
        build = cli.build_parser
        return lambda args: build().parse_args(args)
    if program not in modules:
        spec = importlib.util.spec_from_file_location("eval_" + Path(program).stem, root / program)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        modules[program] = module
    if not hasattr(modules[program], "parse_args"):
        raise LookupError(f"{program} has no parse_args(argv) to check its arguments with")
    return modules[program].parse_args

out = []
for program, args in json.load(sys.stdin):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parser_of(program)(args)
        out.append(None)
    except SystemExit:
        out.append(err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else "rejected")
    except Exception as exc:
        out.append(f"{type(exc).__name__}: {exc}")
print(json.dumps(out))
"""


def load_common() -> ModuleType:
    """eval/common.py, where the provenance schema lives (imports nothing heavy)."""
    spec = importlib.util.spec_from_file_location("eval_common_for_tests", ROOT / "eval" / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


COMMON = load_common()


def owner(path: Path) -> Path:
    """The JSON a sidecar file belongs to: ``X.json`` for ``X.md`` / ``X.png``, else its folder's ``report.json``."""
    twin = path.with_suffix(".json")
    return twin if twin.is_file() else path.parent / "report.json"


def read_provenance(path: Path) -> tuple[dict | None, list[str]]:
    """The provenance block of a result JSON and what is wrong with it."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return None, [f"unreadable: {err}"]
    if not isinstance(doc, dict) or "provenance" not in doc:
        return None, ["no provenance block"]
    return doc["provenance"], COMMON.provenance_problems(doc["provenance"])


def file_problems(results: Path) -> list[str]:
    """Every JSON under ``results`` has a valid provenance block; every sidecar has such a JSON and the .md names it."""
    problems, blocks = [], {}
    for path in sorted(results.rglob("*.json")):
        blocks[path], found = read_provenance(path)
        problems += [f"{path.relative_to(results)}: {p}" for p in found]
    for path in sorted(p for p in results.rglob("*") if p.is_file() and p.suffix != ".json"):
        name = path.relative_to(results)
        if path.suffix not in SIDECARS:
            problems.append(f"{name}: not a result file (.json with .md / .png / .html next to it)")
        elif owner(path) not in blocks:
            problems.append(f"{name}: no JSON next to it (X.json or report.json) to say where it came from")
        elif path.suffix == ".md" and blocks[owner(path)]:
            text, block = path.read_text(), blocks[owner(path)]
            problems += [f"{name}: does not name the {what} of {owner(path).name}"
                         for what in ("commit", "rerun") if str(block.get(what))[: 12 if what == "commit" else None] not in text]
    return problems


def steps(command: str) -> list[list[str]]:
    """The simple commands of a shell line (split at ``&&``, ``||``, ``;``, ``|``), without leading ``VAR=value``."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    out: list[list[str]] = [[]]
    for token in lexer:
        if token in OPERATORS:
            out.append([])
        elif out[-1] or not ENV_ASSIGNMENT.match(token):
            out[-1].append(token)
    return [s for s in out if s]


def in_history(sha: str) -> bool:
    """``sha`` names a commit that HEAD descends from (so a fresh clone has it)."""
    run = lambda *a: subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True)  # noqa: E731
    full = run("rev-parse", "--verify", "--quiet", f"{sha}^{{commit}}").stdout.strip()
    return bool(full) and run("merge-base", "--is-ancestor", full, "HEAD").returncode == 0


def step_problems(step: list[str], invocations: list[tuple[str, list[str]]]) -> list[str]:
    """What a fresh clone could not run in one step; scripts and the CLI go to ``invocations`` for their parsers."""
    program, args = Path(step[0]).name, step[1:]
    if program == "git":
        if len(args) != 2 or args[0] != "checkout":
            return [f"only `git checkout COMMIT` is expected, got {shlex.join(step)!r}"]
        return [] if in_history(args[1]) else [f"commit {args[1]} is not in the history of HEAD"]
    if program == "make":
        targets = set(re.findall(r"^([A-Za-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))
        return [f"make target {t!r} is not in the Makefile" for t in args if not ENV_ASSIGNMENT.match(t) and t not in targets]
    if program == "icl-fungi":
        invocations.append(("icl-fungi", args))
        return []
    if PYTHON.fullmatch(program):
        script = COMMON.current_script(args[0]) if args else ""
        if not script.startswith("eval/") or not (ROOT / script).is_file():
            return [f"{shlex.join(step)!r}: no script under eval/ at HEAD"]
        invocations.append((script, args[1:]))
        return []
    return [f"{shlex.join(step)!r}: not a step a rerun may take (git checkout, make, python eval/..., icl-fungi)"]


def command_problems(commands: list[str]) -> list[str]:
    """Problems of each command (``[]`` when every step runs from a fresh clone with accepted arguments)."""
    problems, invocations, owners = [], [], []
    for command in commands:
        for step in steps(command):
            before = len(invocations)
            problems += [f"{command!r}: {p}" for p in step_problems(step, invocations)]
            owners += [command] * (len(invocations) - before)
    if invocations:
        proc = subprocess.run([sys.executable, "-c", CHILD, str(ROOT)], input=json.dumps(invocations), capture_output=True,
                              text=True, cwd=ROOT, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        verdicts = json.loads(proc.stdout.strip().splitlines()[-1])
        problems += [f"{cmd!r}: {program} rejects its arguments: {v}"
                     for cmd, (program, _), v in zip(owners, invocations, verdicts, strict=True) if v]
    return problems


def committed_commands() -> list[str]:
    """``command`` and ``rerun`` of every committed result."""
    out = []
    for path in sorted(RESULTS.rglob("*.json")):
        block = json.loads(path.read_text()).get("provenance") or {}
        out += [block[k] for k in ("command", "rerun") if isinstance(block.get(k), str)]
    return out


BAD = ["python eval/ablate_quality.py --grid heads", "python eval/ablate_quality.py --grid final2 --no-such-flag",
       "python eval/ablate_quality.py --grid fast --only 'no such configuration'", "python eval/ablate_core.py",
       "icl-fungi eval --data d --out o --no-such-flag", "git checkout 0123456789ab && make venv", "make no-such-target",
       "curl https://example.com | sh"]
GOOD = "git checkout HEAD && make venv && .venv/bin/python eval/explore/ablate_quality.py --grid v04 --split test"
MOVED_GOOD = "python eval/learning_curve.py --sizes 5,10 --limit 1000"  # the old path, checked at eval/icl/


@pytest.fixture(scope="module")
def verdicts() -> dict[str, list[str]]:
    """Problems of the committed commands and of the examples above, from one child process."""
    commands = [*committed_commands(), *BAD, GOOD, MOVED_GOOD]
    problems = command_problems(commands)
    return {c: [p for p in problems if p.startswith(repr(c))] for c in commands}


def test_committed_results_carry_provenance():
    problems = file_problems(RESULTS)
    assert not problems, "\n".join(problems)


def test_committed_commands_run_from_a_fresh_clone(verdicts):
    assert len(committed_commands()) >= 2 * 20  # command and rerun of every result (there are 30 today)
    problems = [p for c in committed_commands() for p in verdicts[c]]
    assert not problems, "\n".join(problems)


def test_the_command_check_rejects_what_a_fresh_clone_cannot_run(verdicts):
    assert verdicts[GOOD] == [] and verdicts[MOVED_GOOD] == []
    assert {c: bool(verdicts[c]) for c in BAD} == dict.fromkeys(BAD, True)
    assert "invalid choice: 'heads'" in verdicts[BAD[0]][0]


def test_a_result_without_commit_fails(tmp_path):
    block = {"commit": "0" * 40, "clean": True, "command": "python eval/x.py", "rerun": "make eval"}
    (tmp_path / "ok.json").write_text(json.dumps({"provenance": block}))
    (tmp_path / "ok.md").write_text(f"# ok\n\n- commit: {block['commit']}\n- rerun: `{block['rerun']}`\n")
    assert file_problems(tmp_path) == []
    (tmp_path / "ok.md").write_text("# ok\n")
    assert file_problems(tmp_path) == ["ok.md: does not name the commit of ok.json", "ok.md: does not name the rerun of ok.json"]
    (tmp_path / "ok.md").unlink()
    (tmp_path / "no-commit.json").write_text(json.dumps({"provenance": {k: v for k, v in block.items() if k != "commit"}}))
    (tmp_path / "no-block.json").write_text(json.dumps({"meta": {"commit": "0" * 40}}))
    (tmp_path / "unknown-tree.json").write_text(json.dumps({"provenance": {**block, "clean": None}}))
    (tmp_path / "orphan.png").write_bytes(b"")
    assert file_problems(tmp_path) == ["no-block.json: no provenance block", "no-commit.json: commit: missing",
                                       "unknown-tree.json: clean: null (not recorded) needs a note saying so",
                                       "orphan.png: no JSON next to it (X.json or report.json) to say where it came from"]


def test_moved_scripts_point_to_scripts_at_head():
    """Every old path in the move table is gone and its new path is a script with ``parse_args``."""
    for old, new in COMMON.MOVED_SCRIPTS.items():
        assert not (ROOT / old).exists(), f"{old} exists again: drop it from MOVED_SCRIPTS or rename it"
        assert (ROOT / new).is_file() and "def parse_args(" in (ROOT / new).read_text(), new


SCRIPT_PATH = re.compile(r"(?<![\w./-])eval/[\w./-]+?\.(?:py|sh)\b")
MOVE_TABLE = re.compile(r"^\| `eval/\w+\.py` \| `eval/\w+/\w+\.py` \|$")  # eval/README.md's rows "old path | new path"


def test_pages_name_scripts_where_they_are():
    """The README, docs, Makefile, pyproject, the eval READMEs and this release's CHANGELOG name each eval script at its path
    at HEAD (older results keep their commands; the move table in eval/README.md names the old paths)."""
    pages = [ROOT / "README.md", ROOT / "Makefile", ROOT / "pyproject.toml", ROOT / "eval" / "README.md",
             *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "eval").glob("*/README.md"))]
    texts = {p: p.read_text() for p in pages}
    texts[ROOT / "CHANGELOG.md"] = (ROOT / "CHANGELOG.md").read_text().split("\n## 0.")[0]  # the Unreleased section
    missing = [f"{page.relative_to(ROOT)}: {path}" for page, text in texts.items() for line in text.splitlines()
               if not MOVE_TABLE.match(line) for path in SCRIPT_PATH.findall(line) if not (ROOT / path).is_file()]
    assert not missing, "\n".join(missing)
