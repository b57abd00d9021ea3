"""Reports of an in-context-learning evaluation: report.json, report.md and PNG plots."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

__all__ = ["RUN_FILES", "check_out_folder", "eval_versions", "write_report"]

logger = logging.getLogger(__name__)


def eval_versions() -> dict[str, str]:
    """Versions of the library, Python, torch and openai, for a report's header."""
    import platform

    import openai
    import torch

    from ..version import __version__

    return {"icl_fungi": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "openai": openai.__version__}


RUN_FILES = ("report.json", "report.md", "report.html", "responses.jsonl", "accuracy.png", "per_class_difference.png")


def check_out_folder(out: Path, key: dict) -> None:
    """Refuse an output folder that is a file, holds files a run does not write (:data:`RUN_FILES`: a user's own
    files are never written among) or holds the report of another run (``key``: the run key of this one): results
    are never overwritten."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a folder (new, empty, or holding this same run)")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in RUN_FILES)
        if foreign:
            raise ValueError(f"{out} holds files an icl-fungi eval run does not write ({', '.join(foreign[:3])}"
                             f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty --out")
    old = out / "report.json"
    if not old.is_file():
        return
    try:
        prior = json.loads(old.read_text()).get("run_key")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        prior = None
    if prior != key:
        raise ValueError(f"{out} holds the report of another run ({old}); choose another --out (a rerun of the same "
                         "command may reuse its folder and resumes from its cache)")


def write_report(report: dict, out: Path, *, pool: tuple[list, list] | None = None) -> None:
    """Write report.json, report.md, report.html and the PNG plots.

    The HTML and the plots never fail a run: a problem with them is logged and the rest is written.
    ``pool`` (texts, labels) lets report.html show the examples' texts.
    """
    (out / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False, default=str))
    sel = report["selectors"]
    lines = [
        "# In-context-learning evaluation", "",
        f"- date: {report['date']}", f"- command: `{report['command']}`",
        f"- model: {report['endpoint']['model']} at {report['endpoint']['host']}, temperature 0",
        f"- data: {report['data']['source']} ({report['data']['n_train']} train examples, "
        f"{report['data']['n_test']} test queries, {report['data']['n_labels']} labels)",
        *_pool_line(report["settings"]),
        f"- k = {report['settings']['k']}, {next(iter(sel.values()))['n']} seeded test queries (seed {report['settings']['seed']}), "
        f"template {report['settings']['template']}",
        f"- wall time: {report['wall_time_s']} s; requests sent this run: {report['requests_sent']}", "",
        "The reader in the loop: 1-NN is what a reader that copies the most similar example gets right, k-NN vote what a "
        "voter gets, P@k and gold in top-k what a reader of all k examples can use; 'copies nearest' is the share of the "
        "LLM's answers equal to the most similar example's label.", "",
        "| selector | n | accuracy | 95 % CI | macro-F1 | invalid | 1-NN | k-NN vote | P@k | gold in top-k | copies nearest "
        "| build s | latency p50 / p95 s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in sel.items():
        r = m["retrieval"]
        pk = next(v for key, v in r.items() if key.startswith("p@"))
        gk = next(v for key, v in r.items() if key.startswith("gold_in_top"))
        vk = next(v for key, v in r.items() if key.endswith("_vote_acc"))
        build = (report.get("selector_configs", {}).get(name) or {}).get("build_s")
        lines.append(f"| {name} | {m['n']} | {m['accuracy']:.4f} | {m['accuracy_ci95'][0]:.4f}-{m['accuracy_ci95'][1]:.4f} | "
                     f"{m['macro_f1']:.4f} | {m['invalid_rate']:.4f} | {r['1nn_acc']:.4f} | {vk:.4f} | {pk:.4f} | {gk:.4f} | "
                     f"{m.get('answers_nearest_label', float('nan')):.4f} | {'' if build is None else build} | "
                     f"{m['latency_s_p50']:.2f} / {m['latency_s_p95']:.2f} |")
    if any("token_f1" in m for m in sel.values()):
        lines += ["", "A pair task: accuracy is exact match after normalisation (case, punctuation, articles, spacing); "
                  "1-NN, P@k and 'copies nearest' compare outputs. Mean token F1: "
                  + ", ".join(f"{name} {m['token_f1']:.4f}" for name, m in sel.items()) + "."]
    if report["paired"]:
        lines += ["", "## Paired comparisons (same queries)", "",
                  "| comparison | difference | 95 % CI | only first right | only second right | McNemar p |", "|---|---|---|---|---|---|"]
        for key, c in report["paired"].items():
            lines.append(f"| {key.replace('_vs_', ' vs ')} | {c['difference']:+.4f} | {c['ci95'][0]:+.4f} to {c['ci95'][1]:+.4f} | "
                         f"{c['only_first_correct']} | {c['only_second_correct']} | {c['mcnemar_p']:.3g} |")
    for name, m in sel.items():
        if m["top_confusions"]:
            lines += ["", f"### Most frequent confusions: {name}", ""]
            lines += [f"- {c['gold']} -> {c['predicted']}: {c['count']}" for c in m["top_confusions"][:5]]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    from .report_html import write_html

    for what, fn in (("report.html", lambda: write_html(report, out / "report.html", pool=pool)), ("plots", lambda: _plots(report, out))):
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - reports must not fail a finished run
            logger.warning("%s not written: %s: %s", what, type(err).__name__, err)


def _pool_line(settings: dict) -> list[str]:
    """The few-shot pool, when the run drew one (``--per-label``)."""
    if not settings.get("per_label"):
        return []
    return [f"- pool: {settings['per_label']} examples per label (seed {settings['pool_seed']}), {settings['pool_size']} examples"]


def _plots(report: dict, out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plots (pip install 'icl-fungi[eval]')")
        return
    sel = report["selectors"]
    names = list(sel)
    acc = [sel[s]["accuracy"] for s in names]
    err = np.clip(np.array([[a - sel[s]["accuracy_ci95"][0] for s, a in zip(names, acc, strict=True)],
                            [sel[s]["accuracy_ci95"][1] - a for s, a in zip(names, acc, strict=True)]]), 0.0, None)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(names, acc, yerr=err, capsize=6, color=["#4c72b0", "#dd8452", "#8c8c8c"][: len(names)])
    ax.set_ylabel("accuracy (95 % CI)")
    ax.set_ylim(0, 1)
    ax.set_title(f"{report['endpoint']['model']}, k = {report['settings']['k']}, n = {sel[names[0]]['n']}")
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)
    plt.close(fig)
    if "fungi" in sel and "embedding" in sel:
        fa, ea = sel["fungi"]["per_class_accuracy"], sel["embedding"]["per_class_accuracy"]
        diffs = sorted(((c, fa[c] - ea.get(c, 0.0)) for c in fa if fa[c] != ea.get(c, 0.0)), key=lambda kv: kv[1])
        fig, ax = plt.subplots(figsize=(6, max(2.5, 0.22 * len(diffs) + 1)))
        if diffs:
            ax.barh([c for c, _ in diffs], [d for _, d in diffs], color=["#c44e52" if d < 0 else "#55a868" for _, d in diffs])
            ax.tick_params(axis="y", labelsize=7)
        else:
            ax.text(0.5, 0.5, "no per-class difference", ha="center", va="center", transform=ax.transAxes)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel("per-class accuracy: FUNGI - embedding")
        fig.tight_layout()
        fig.savefig(out / "per_class_difference.png", dpi=120)
        plt.close(fig)
