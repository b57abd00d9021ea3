"""Re-render an ICL run's report.html from its report.json, and take a screenshot of it in headless chromium.

Reports written before report.html existed, or a page to publish without its data set's texts
(``--no-example-texts`` keeps only the examples' labels), are made from the run's report.json and the
train split it was built on.

    python eval/icl/render_report.py eval/results/banking77-gemma3-270m-n1000-labels --no-example-texts \\
        --screenshot eval/results/banking77-gemma3-270m-n1000-labels/report.png

``--no-query-texts`` also replaces the queries' texts by their indices, in the page and in
REPORT_DIR/report.json (run it on a copy of the run's folder). ``--provenance`` gives a run that is to be
committed under eval/results/ the provenance block every result there carries (this checkout's commit and
clean flag, the run's command, a rerun from a fresh clone), in report.json and report.md.

Writes REPORT_DIR/report.html (and the screenshot).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # eval/: common.py
from common import DEFAULT_DATA, load_split, provenance, provenance_markdown

from icl_fungi.evaluation.report_html import write_html


def screenshot(page: Path, png: Path, *, width: int = 1280, height: int = 1800) -> None:
    """A PNG of ``page`` from Debian's chromium, headless, with no network."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
               f"--user-data-dir={profile}", f"--window-size={width},{height}", "--virtual-time-budget=5000",
               f"--screenshot={png.resolve()}", page.resolve().as_uri()]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)


def add_provenance(report_dir: Path, report: dict) -> dict:
    """``report`` with a ``provenance`` block for the run in ``report_dir``, also written to its report.json and report.md.

    The command is the run's own (``icl-fungi eval ...``); commit and clean flag are this checkout's, so run it from the
    checkout that made the run.
    """
    if "provenance" in report:
        return report
    command = shlex.join(["icl-fungi", *shlex.split(report["command"])[1:]])
    report = {"provenance": provenance(command), **report}
    (report_dir / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    md = report_dir / "report.md"
    if md.is_file():
        title, *rest = md.read_text().split("\n")
        lines = [x for x in provenance_markdown(report["provenance"]) if not x.startswith("- command:")]
        md.write_text("\n".join([title, "", *lines, *rest]))
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: the arguments after the script, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report_dir", type=Path)
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="the data folder the run used (its train split is the pool)")
    ap.add_argument("--no-example-texts", action="store_true", help="show the examples' labels only")
    ap.add_argument("--no-query-texts", action="store_true",
                    help="replace each query's text by its test-split index, in the page and in REPORT_DIR/report.json "
                         "(for a copy of a run published without its data set's texts)")
    ap.add_argument("--screenshot", type=Path, default=None, help="also write a PNG of the page")
    ap.add_argument("--provenance", action="store_true",
                    help="add a provenance block (this checkout's commit, the run's command, a rerun) to report.json and report.md")
    return ap.parse_args(argv)


def main() -> None:
    args = parse_args()
    report = json.loads((args.report_dir / "report.json").read_text())
    if args.no_query_texts:
        for r in report["records"]:
            r["query"] = f"test query #{r['query_index']} (text not redistributed)"
        (args.report_dir / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    if args.provenance:
        report = add_provenance(args.report_dir, report)
    texts, labels = load_split(args.data, "train")
    if len(texts) != report["data"]["n_train"]:
        sys.exit(f"{args.data} has {len(texts)} train texts, the run had {report['data']['n_train']}")
    page = args.report_dir / "report.html"
    write_html(report, page, pool=(texts, labels), example_texts=not args.no_example_texts)
    print(f"wrote {page}")
    if args.screenshot:
        screenshot(page, args.screenshot)
        print(f"wrote {args.screenshot}")


if __name__ == "__main__":
    main()
