"""report.html in a real headless browser (Debian's chromium): rendered rows, filters, escaping."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess

import pytest

from icl_fungi.evaluation.harness import run_icl_eval

from .conftest import DATA
from .llm_fakes import FakeLLM
from .llm_fakes import eval_settings as _settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    if os.environ.get("CI"):
        pytest.fail("CI needs Debian's chromium for the report.html tests (.ci/run installs it)")
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)

HOSTILE = '<img src=x onerror="document.title=\'pwned\'"> where is my card'


def dump_dom(url: str, tmp_path) -> str:
    """The page's DOM after its scripts ran, from chromium --headless --dump-dom."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    proc = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
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
def test_filters_show_the_right_queries(report_dir, tmp_path, view):
    report = json.loads((report_dir / "report.json").read_text())
    right = {}
    for r in report["records"]:
        right.setdefault(r["query_index"], {})[r["selector"]] = r["correct"]
    want = {"all": lambda f, e: True, "only-first-right": lambda f, e: f and not e,
            "only-second-right": lambda f, e: e and not f, "both-wrong": lambda f, e: not f and not e}[view]
    n = sum(want(v["fungi"], v["embedding"]) for v in right.values())
    dom = dump_dom(f"file://{report_dir / 'report.html'}#{view}", tmp_path)
    assert dom.count('class="q"') == min(n, 50)
    assert f"{n} of {len(right)} queries" in dom
    assert f'data-f="{view}" class="on"' in dom  # the active filter is marked


def test_page_shows_paired_difference_first_and_escapes_text(report_dir, tmp_path):
    dom = dump_dom(f"file://{report_dir / 'report.html'}", tmp_path)
    assert dom.index("Paired difference") < dom.index("Accuracy") < dom.index("Queries") < dom.index("Per class")
    assert "fungi − embedding" in dom and "<svg" in dom
    rendered = re.sub(r"<script.*?</script>", "", dom, flags=re.S)  # the page without its data and code
    assert "&lt;img src=x" in rendered and "<img" not in rendered  # shown as text, never as markup
    assert "<title>ICL evaluation" in dom  # the payload did not run
    assert re.search(r'data-selector="fungi".*?examples shown', dom, re.S)
    assert not re.search(r"""(src|href)=["']?https?:""", rendered)  # self-contained: nothing fetched
