"""report.html: one self-contained page (no network) for an ICL evaluation.

The paired differences and their 95 % intervals come first (an accuracy bar from 0 to 1 hides a
one-point difference), then accuracy per selector, per-class results, and a query browser: each
query's gold label, every selector's answer and the examples it showed, side by side, filterable
("only FUNGI right", "only embedding right", "both wrong", or any text). The filter is also read from
the page address (``report.html#only-first-right``), so a link can open a filtered view.

Data enter the page as JSON read by the page's script and shown with ``textContent``: no text from
a report is ever parsed as HTML.

Example:
    >>> write_html(report, Path("out/report.html"), pool=(train_texts, train_labels))   # doctest: +SKIP
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

__all__ = ["write_html"]


def _payload(report: dict, pool: tuple[list, list] | None, example_texts: bool) -> dict[str, Any]:
    selectors = list(report["selectors"])
    by_query: dict[int, dict[str, Any]] = {}
    used: set[int] = set()
    for r in report["records"]:
        q = by_query.setdefault(r["query_index"], {"query": r["query"], "gold": r["gold"], "answers": {}})
        q["answers"][r["selector"]] = {"reply": r["reply"], "prediction": r["prediction"], "correct": bool(r["correct"]),
                                       "examples": r["examples"]}
        used.update(r["examples"])
    examples: dict[str, list] = {}
    if pool is not None:
        texts, labels = pool
        examples = {str(i): [texts[i] if example_texts else None, labels[i]] for i in sorted(used) if 0 <= i < len(texts)}
    per_class = {s: report["selectors"][s]["per_class_accuracy"] for s in selectors}
    return {"selectors": selectors, "queries": [by_query[i] for i in sorted(by_query)], "examples": examples,
            "per_class": per_class, "paired": report.get("paired", {}), "metrics": {
                s: {k: report["selectors"][s].get(k) for k in ("n", "accuracy", "accuracy_ci95", "macro_f1", "invalid_rate")}
                for s in selectors}}


def _axis_end(lo: float, hi: float) -> float:
    """The axis end in points: 15 % past the interval's farther end, rounded up to a label that is exact (whole
    points from 10 on, else tenths), at least 5.8 and at most 100 (an accuracy difference cannot be larger)."""
    pts = 115 * max(0.05, abs(lo), abs(hi))
    return min(100.0, math.ceil(pts) if pts >= 10 else math.ceil(pts * 10) / 10)


def _interval_svg(diff: float, lo: float, hi: float) -> str:
    """A small forest-plot row: the paired difference (points) and its 95 % interval on an axis symmetric
    around zero (:func:`_axis_end`); what lies past the axis is drawn at its end, the end labels sit inside the plot."""
    end = _axis_end(lo, hi)
    span = end / 100
    x = lambda v: 10 + 280 * (min(max(v, -span), span) + span) / (2 * span)  # noqa: E731 - local scale, clipped to the axis
    color = "#2a7b39" if lo > 0 else "#b03a2e" if hi < 0 else "#555"
    label = "{:+.0f}" if end >= 10 else "{:+.1f}"
    return (f'<svg class="ci" width="300" height="34" viewBox="0 0 300 34" role="img" '
            f'aria-label="difference {100 * diff:+.2f} points, 95% CI {100 * lo:+.2f} to {100 * hi:+.2f}">'
            f'<line x1="{x(0):.1f}" y1="2" x2="{x(0):.1f}" y2="32" stroke="#999" stroke-dasharray="3,3"/>'
            f'<line x1="{x(lo):.1f}" y1="17" x2="{x(hi):.1f}" y2="17" stroke="{color}" stroke-width="3"/>'
            f'<circle cx="{x(diff):.1f}" cy="17" r="6" fill="{color}"/>'
            f'<text x="2" y="32" font-size="9" fill="#777" text-anchor="start">{label.format(-end)}</text>'
            f'<text x="298" y="32" font-size="9" fill="#777" text-anchor="end">{label.format(end)}</text></svg>')


def write_html(report: dict, path: Path, *, pool: tuple[list, list] | None = None, example_texts: bool = True) -> None:
    """Write the page for ``report`` (an ``icl-fungi eval`` report dict) to ``path``.

    ``pool`` (train texts, labels) shows what each example said; ``example_texts=False`` keeps only the
    examples' labels (for a page published without its data set's texts).
    """
    e = html.escape
    sel = report["selectors"]
    settings, endpoint, data = report["settings"], report["endpoint"], report["data"]
    paired_rows = []
    for key, c in report.get("paired", {}).items():
        a, b = key.split("_vs_")
        lo, hi = c["ci95"]
        paired_rows.append(
            f"<tr><td>{e(a)} − {e(b)}</td><td class=num><b>{100 * c['difference']:+.2f} pt</b></td>"
            f"<td class=num>{100 * lo:+.2f} to {100 * hi:+.2f}</td><td>{_interval_svg(c['difference'], lo, hi)}</td>"
            f"<td class=num>{c['only_first_correct']} / {c['only_second_correct']}</td><td class=num>{c['mcnemar_p']:.3g}</td></tr>")
    sel_rows = [f"<tr><td>{e(name)}</td><td class=num>{m['n']}</td><td class=num><b>{m['accuracy']:.4f}</b></td>"
                f"<td class=num>{m['accuracy_ci95'][0]:.4f} – {m['accuracy_ci95'][1]:.4f}</td><td class=num>{m['macro_f1']:.4f}</td>"
                f"<td class=num>{m['invalid_rate']:.4f}</td></tr>" for name, m in sel.items()]
    payload = json.dumps(_payload(report, pool, example_texts), ensure_ascii=False).replace("</", "<\\/")
    title = f"ICL evaluation: {endpoint.get('model', '')}, k = {settings.get('k')}, n = {next(iter(sel.values()))['n']}"
    note = "" if example_texts or pool is None else (
        "<p class=note>Example texts are left out of this page (their data set is not redistributed here); "
        "each example shows its label and pool position.</p>")
    pool_note = "" if not settings.get("per_label") else e(  # the few-shot pool, as report.md says it
        f" · pool: {settings['per_label']} examples per label (seed {settings.get('pool_seed')}), {settings.get('pool_size')} examples")
    page = _TEMPLATE.format(
        title=e(title), model=e(str(endpoint.get("model", ""))), host=e(str(endpoint.get("host", ""))),
        data=e(str(data.get("source", ""))), n_train=data.get("n_train"), n_labels=data.get("n_labels"), pool=pool_note,
        date=e(str(report.get("date", ""))), command=e(str(report.get("command", ""))), template=e(str(settings.get("template", ""))),
        paired="\n".join(paired_rows) or "<tr><td colspan=6>one selector: no paired comparison</td></tr>",
        selectors="\n".join(sel_rows), note=note, payload=payload, css=_CSS, js=_JS)
    Path(path).write_text(page, encoding="utf-8")


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.meta{color:#555;font-size:12px} table{border-collapse:collapse;width:100%} td,th{padding:4px 8px;border-bottom:1px solid #eee;
text-align:left;vertical-align:top} th{background:#f6f6f6;cursor:default} .num{text-align:right;font-variant-numeric:tabular-nums}
.bar button{margin:0 6px 6px 0;padding:4px 10px;border:1px solid #bbb;background:#fafafa;border-radius:4px;cursor:pointer}
.bar button.on{background:#1d4e89;color:#fff;border-color:#1d4e89} .bar input{padding:4px 8px;width:260px}
.q{border:1px solid #e3e3e3;border-radius:6px;margin:8px 0;padding:8px} .qt{font-weight:600} .gold{color:#555;font-size:12px}
.cols{display:grid;gap:8px;margin-top:6px} .ans{background:#fafafa;border-radius:4px;padding:6px}
.ok{color:#1e7b34;font-weight:600} .bad{color:#b03a2e;font-weight:600} .ex{font-size:12px;margin:2px 0}
.lab{display:inline-block;min-width:0;padding:0 4px;border-radius:3px;background:#eef} .lab.same{background:#d7f0dc}
.note{color:#7a5a00;background:#fff7db;padding:6px 10px;border-radius:4px} #count{color:#555;margin-left:8px}
.pos{color:#1e7b34} .neg{color:#b03a2e}
"""

_JS = """
const D = JSON.parse(document.getElementById('data').textContent);
const S = D.selectors, A = S[0], B = S.includes('embedding') && A !== 'embedding' ? 'embedding' : S[1];
const FILTERS = {'all': q => true};
if (B) {
  FILTERS['only-first-right'] = q => q.answers[A].correct && !q.answers[B].correct;
  FILTERS['only-second-right'] = q => !q.answers[A].correct && q.answers[B].correct;
  FILTERS['both-wrong'] = q => !q.answers[A].correct && !q.answers[B].correct;
}
const NAMES = {'all': 'all queries', 'only-first-right': 'only ' + A + ' right', 'only-second-right': 'only ' + B + ' right',
               'both-wrong': 'both wrong'};
let shown = 50;
function el(tag, cls, text) { const n = document.createElement(tag); if (cls) n.className = cls;
  if (text !== undefined && text !== null) n.textContent = String(text); return n; }
function state() { const h = decodeURIComponent(location.hash.slice(1)); return FILTERS[h] ? h : 'all'; }
function render() {
  const f = state(), needle = document.getElementById('search').value.toLowerCase();
  document.querySelectorAll('.bar button[data-f]').forEach(b => b.classList.toggle('on', b.dataset.f === f));
  const rows = D.queries.filter(FILTERS[f]).filter(q => !needle || q.query.toLowerCase().includes(needle) ||
    String(q.gold).toLowerCase().includes(needle));
  document.getElementById('count').textContent = rows.length + ' of ' + D.queries.length + ' queries';
  const box = document.getElementById('queries'); box.replaceChildren();
  for (const q of rows.slice(0, shown)) {
    const card = el('div', 'q'); card.dataset.gold = q.gold;
    card.append(el('div', 'qt', q.query), el('div', 'gold', 'gold label: ' + q.gold));
    const cols = el('div', 'cols'); cols.style.gridTemplateColumns = 'repeat(' + S.length + ', 1fr)';
    for (const s of S) {
      const a = q.answers[s], box2 = el('div', 'ans'); box2.dataset.selector = s;
      const said = a.prediction === null ? 'invalid (' + a.reply.trim() + ')' : a.prediction;
      box2.append(el('div', a.correct ? 'ok' : 'bad', s + ': ' + said));
      const det = el('details'); det.append(el('summary', null, a.examples.length + ' examples shown (most similar first)'));
      for (const i of a.examples) {
        const ex = D.examples[String(i)], line = el('div', 'ex');
        const lab = el('span', 'lab' + (ex && ex[1] === q.gold ? ' same' : ''), ex ? ex[1] : '#' + i);
        line.append(lab, document.createTextNode(' ' + (ex && ex[0] !== null ? ex[0] : '(pool #' + i + ')')));
        det.append(line);
      }
      box2.append(det); cols.append(box2);
    }
    card.append(cols); box.append(card);
  }
  document.getElementById('more').style.display = rows.length > shown ? '' : 'none';
}
function perClass() {
  const t = document.getElementById('perclass'), classes = Object.keys(D.per_class[A]);
  const head = el('tr'); head.append(el('th', null, 'class'));
  for (const s of S) head.append(el('th', 'num', s));
  if (B) head.append(el('th', 'num', A + ' − ' + B));
  t.append(head);
  const diff = c => B ? D.per_class[A][c] - (D.per_class[B][c] ?? 0) : 0;
  for (const c of classes.sort((x, y) => diff(x) - diff(y) || x.localeCompare(y))) {
    const tr = el('tr'); tr.append(el('td', null, c));
    for (const s of S) tr.append(el('td', 'num', (D.per_class[s][c] ?? 0).toFixed(3)));
    if (B) { const d = diff(c); tr.append(el('td', 'num ' + (d > 0 ? 'pos' : d < 0 ? 'neg' : ''), (d > 0 ? '+' : '') + d.toFixed(3))); }
    t.append(tr);
  }
}
const bar = document.getElementById('filters');
for (const f of Object.keys(FILTERS)) { const b = el('button', null, NAMES[f]); b.dataset.f = f;
  b.onclick = () => { location.hash = f; }; bar.append(b); }
document.getElementById('search').oninput = () => { shown = 50; render(); };
document.getElementById('more').onclick = () => { shown += 100; render(); };
window.onhashchange = () => { shown = 50; render(); };
perClass(); render();
"""

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<title>{title}</title><style>{css}</style></head><body>
<h1>{title}</h1>
<div class="meta">{model} at {host} · data {data} ({n_train} train examples, {n_labels} labels){pool} · template {template} ·
{date}<br><code>{command}</code></div>
<h2>Paired difference (same queries)</h2>
<table><tr><th>comparison</th><th class=num>difference</th><th class=num>95 % CI</th><th>interval (points)</th>
<th class=num>only first / only second right</th><th class=num>McNemar p</th></tr>
{paired}
</table>
<h2>Accuracy</h2>
<table><tr><th>selector</th><th class=num>n</th><th class=num>accuracy</th><th class=num>95 % CI</th><th class=num>macro-F1</th>
<th class=num>invalid</th></tr>
{selectors}
</table>
<h2>Queries</h2>
{note}
<div class="bar" id="filters"></div>
<div class="bar"><input id="search" type="search" placeholder="filter by query text or gold label"><span id="count"></span></div>
<div id="queries"></div>
<div class="bar"><button id="more">show more</button></div>
<h2>Per class</h2>
<table id="perclass"></table>
<script type="application/json" id="data">{payload}</script>
<script>{js}</script>
</body></html>
"""
