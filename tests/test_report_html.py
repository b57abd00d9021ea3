"""report.html: the interval plot's axis, and in a real headless browser (Debian's chromium) rendered rows, filters,
escaping and labels that fit."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess

import pytest

from icl_fungi.evaluation.harness import run_icl_eval
from icl_fungi.evaluation.report_html import write_html
from icl_fungi.evaluation.scoring import paired

from .conftest import DATA
from .llm_fakes import FakeLLM
from .llm_fakes import eval_settings as _settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

HOSTILE = '<img src=x onerror="document.title=\'pwned\'"> where is my card'


@pytest.fixture(scope="module")
def chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs Debian's chromium for the report.html tests (.ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return CHROMIUM


def dump_dom(chromium: str, url: str, tmp_path) -> str:
    """The page's DOM after its scripts ran, from chromium --headless --dump-dom."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    proc = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _report(first: list[bool], second: list[bool]) -> dict:
    """A minimal report of two selectors ('fungi', 'embedding') right or wrong on the same queries."""
    records = [{"selector": s, "query_index": i, "query": f"query {i}", "gold": "card_arrival", "reply": "x", "prediction": None,
                "correct": c, "examples": []} for s, right in (("fungi", first), ("embedding", second)) for i, c in enumerate(right)]
    metrics = {s: {"n": len(right), "accuracy": sum(right) / len(right), "accuracy_ci95": [0.0, 1.0], "macro_f1": 0.0,
                   "invalid_rate": 0.0, "per_class_accuracy": {"card_arrival": sum(right) / len(right)}}
               for s, right in (("fungi", first), ("embedding", second))}
    return {"selectors": metrics, "settings": {"k": 1}, "endpoint": {"model": "m"}, "data": {}, "records": records,
            "paired": paired(records, ["fungi", "embedding"])}


def _axis(page: str) -> tuple[list[float], list[float]]:
    """The interval plot's end labels (points) and the x of its line ends and dot."""
    svg = re.search(r'<svg class="ci".*?</svg>', page, re.S).group(0)
    labels = [float(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)]
    line = re.findall(r'<line x1="([\d.]+)" y1="17" x2="([\d.]+)"', svg)[0]
    return labels, [float(v) for v in (*line, re.search(r'<circle cx="([\d.]+)"', svg).group(1))]


@pytest.mark.parametrize(("first", "second", "end"), [
    ([True] * 10, [False] * 10, 100.0),             # difference +100 points, interval of width 0
    ([True] * 9 + [False], [False] * 10, 100.0),    # the normal interval runs past +100 (to +108.6)
    ([False] * 10, [True] * 10, 100.0),
    ([True, False] * 10, [False, True] * 10, 51.0),  # difference 0, interval +-43.8: the axis stays tight around it
    ([True] + [False] * 199, [False] * 200, 5.8),     # +0.5 points, interval -0.5 to +1.5: the narrowest axis
])
def test_interval_axis_never_passes_100_points(tmp_path, first, second, end):
    report = _report(first, second)
    write_html(report, tmp_path / "r.html")
    labels, xs = _axis((tmp_path / "r.html").read_text())
    assert labels == [-end, end]
    lo, hi = report["paired"]["fungi_vs_embedding"]["ci95"]
    assert 100 * min(1.0, max(abs(lo), abs(hi))) <= labels[1]  # the whole interval (up to +-100) is on the axis
    assert all(0 <= x <= 300 for x in xs)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory, chromium):
    d = tmp_path_factory.mktemp("html")
    data = d / "data"
    data.mkdir()
    shutil.copy(DATA / "intents-train.csv", data / "train.csv")
    rows = list(csv.DictReader((DATA / "intents-test.csv").open(newline="")))
    rows.append({"text": HOSTILE, "intent": "card_arrival"})
    with (data / "test.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["text", "intent"])
        w.writeheader()
        w.writerows(rows)
    with FakeLLM() as llm:
        run_icl_eval(_settings(data, d / "out", llm.base_url, selectors=("fungi", "embedding"), limit=None, k=3))
    return d / "out"


@pytest.mark.parametrize("view", ["all", "only-first-right", "only-second-right", "both-wrong"])
def test_filters_show_the_right_queries(report_dir, tmp_path, view, chromium):
    report = json.loads((report_dir / "report.json").read_text())
    right = {}
    for r in report["records"]:
        right.setdefault(r["query_index"], {})[r["selector"]] = r["correct"]
    want = {"all": lambda f, e: True, "only-first-right": lambda f, e: f and not e,
            "only-second-right": lambda f, e: e and not f, "both-wrong": lambda f, e: not f and not e}[view]
    n = sum(want(v["fungi"], v["embedding"]) for v in right.values())
    dom = dump_dom(chromium, f"file://{report_dir / 'report.html'}#{view}", tmp_path)
    assert dom.count('class="q"') == min(n, 50)
    assert f"{n} of {len(right)} queries" in dom
    assert f'data-f="{view}" class="on"' in dom  # the active filter is marked


def test_page_shows_paired_difference_first_and_escapes_text(report_dir, tmp_path, chromium):
    dom = dump_dom(chromium, f"file://{report_dir / 'report.html'}", tmp_path)
    assert dom.index("Paired difference") < dom.index("Accuracy") < dom.index("Queries") < dom.index("Per class")
    assert "fungi − embedding" in dom and "<svg" in dom
    rendered = re.sub(r"<script.*?</script>", "", dom, flags=re.S)  # the page without its data and code
    assert "&lt;img src=x" in rendered and "<img" not in rendered  # shown as text, never as markup
    assert "<title>ICL evaluation" in dom  # the payload did not run
    assert re.search(r'data-selector="fungi".*?examples shown', dom, re.S)
    assert not re.search(r"""(src|href)=["']?https?:""", rendered)  # self-contained: nothing fetched


def test_interval_axis_labels_fit_in_the_plot(tmp_path, chromium):
    """Measured in the browser: every end label of every interval plot lies inside its plot."""
    report = _report([True] * 9 + [False], [False] * 10)
    report["selectors"]["random"] = report["selectors"]["embedding"]
    report["records"] += [{**r, "selector": "random"} for r in report["records"] if r["selector"] == "embedding"]
    report["paired"] = paired(report["records"], ["fungi", "embedding", "random"])
    write_html(report, tmp_path / "r.html")
    measure = ("<script>for (const svg of document.querySelectorAll('svg.ci')) for (const t of svg.querySelectorAll('text')) {"
               " const b = t.getBBox(); t.dataset.fits = String(b.x >= 0 && b.x + b.width <= svg.viewBox.baseVal.width); }</script>")
    page = (tmp_path / "r.html").read_text().replace("</body>", measure + "</body>")
    (tmp_path / "measured.html").write_text(page)
    fits = re.findall(r'data-fits="(\w+)"', dump_dom(chromium, f"file://{tmp_path / 'measured.html'}", tmp_path))
    assert fits == ["true"] * 6  # three comparisons, two labels each
