"""An evaluation report as one self-contained HTML page: metrics, confusion heat map, reliability
diagram, a method comparison and the most confident mistakes.

The page is meant to be mailed, attached to a ticket or opened from a laptop with no network, so
it carries everything inline: CSS in a ``<style>`` element, charts as server-rendered SVG, no
script, no font, no URL. Texts and labels are user data and are escaped everywhere; a strict
Content-Security-Policy is the second line of defence, so even a mis-escaped text could neither
run script nor fetch anything.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from html import escape

from .types import Item, Prediction

# The most confident mistakes are shown with their text; a pasted document should not turn the
# table into a wall, and the start of a text is usually what tells why it was misread.
TEXT_LIMIT = 500
# The SVG is laid out here, with no browser to measure text: a label's width is estimated as
# 7.2 px a character (12 px sans-serif), and labels past AXIS_LABEL_LIMIT characters are cut (the
# whole label is in the tooltip), so one long label cannot push the matrix off the page.
_CHAR_PX = 7.2
AXIS_LABEL_LIMIT = 24

# Content-Security-Policy: the inline <style> is the only thing the page may use. No script of any
# kind runs (an escaped-wrongly <script> or onerror= is refused by the browser), and nothing loads.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def confident_mistakes(items: Sequence[Item], predictions: Sequence[Prediction], *, n: int = 20) -> list[dict]:
    """The ``n`` wrong predictions the classifier was surest of, surest first (ties: input order).

    A prediction is wrong when its most probable label (``top``, even if the answer was an
    abstention) is not the item's gold label; items without a gold label, and items that were not
    scored at all (no top label: the text could not be classified), are skipped. Texts are
    cut to :data:`TEXT_LIMIT` characters, the last of which is then an ellipsis.

    Raises:
        ValueError: ``items`` and ``predictions`` differ in length.
    """
    if len(items) != len(predictions):
        raise ValueError(f"{len(items)} items but {len(predictions)} predictions")
    wrong = [
        {"id": item.id, "line": item.line, "text": _cut(item.text), "gold": item.label,
         "predicted": pred.top, "confidence": pred.confidence}
        for item, pred in zip(items, predictions)
        if item.label is not None and pred.top is not None and pred.top != item.label
    ]
    # sorted() is stable, so equal confidences keep their input order.
    return sorted(wrong, key=lambda m: -m["confidence"])[:n]


def render(report: dict, *, title: str, meta: dict | None = None) -> str:
    """The report of :func:`llmlocal.classify.metrics.report` as one HTML document.

    ``report`` may also hold ``method``, ``auto`` (``{"chosen", "scores", "rule"}``), ``mistakes``
    (as :func:`confident_mistakes` returns) and ``compare`` (rows of ``method``, ``accuracy``,
    ``macro_f1``, ``ece``, ``items_per_second``, ``chosen``; a row with ``"baseline": True`` is
    styled as a reference, and the majority baseline is always added as the last row). ``meta`` is
    the classify manifest, for the model and version in the header.
    """
    body = [_header(report, title=title, meta=meta), _metrics(report)]
    body.append('<div class="charts">' + _confusion(report["confusion_matrix"]) + _reliability(report) + "</div>")
    if report.get("compare"):
        body.append(_compare(report["compare"], report["majority_baseline"]))
    if "mistakes" in report:
        body.append(_mistakes(report["mistakes"]))
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n'
        '<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n"
        f"<style>{_STYLE}</style>\n"
        "</head>\n<body>\n<main>\n" + "\n".join(body) + "\n</main>\n</body>\n</html>\n"
    )


def write_report(path: str | os.PathLike[str], html: str) -> None:
    """Write the page atomically: ``path`` holds the old report or the new one, never half of one.

    Raises:
        DiskSpaceError, OutputWriteError: it could not be written; ``path`` is as it was.
    """
    from ..atomic import write_failure, write_text

    try:
        write_text(path, html)
    except OSError as exc:
        raise write_failure(path, exc, next_step=f"run it again: {path} is as it was") from None


# ---------------------------------------------------------------- sections


def _header(report: dict, *, title: str, meta: dict | None) -> str:
    meta = meta or {}
    model = meta.get("model") or {}
    facts: list[tuple[str, str]] = []
    if model.get("name"):
        facts.append(("model", f"<code>{_e(model['name'])}</code>"))
    if model.get("sha256"):
        facts.append(("sha256", f'<code class="hash">{_e(model["sha256"])}</code>'))
    method = report.get("method") or meta.get("method")
    if method:
        facts.append(("method", _e(method)))
    facts.append(("items", f'<span data-metric="n">{int(report["n"])}</span>'))
    if meta.get("k_fold"):
        facts.append(("evaluation", f"{int(meta['k_fold'])}-fold cross-validation"))
    elif meta.get("holdout"):
        facts.append(("evaluation", f"holdout of {float(meta['holdout']):.0%} of the rows"))
    for key in ("examples", "input"):
        path = (meta.get(key) or {}).get("path")
        if path:
            facts.append((key, f"<code>{_e(path)}</code>"))
    for key, name in (("llmlocal_version", "llmlocal"), ("llama_cpp_python_version", "llama-cpp-python")):
        if meta.get(key):
            facts.append((name, _e(meta[key])))
    rows = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    out = f'<header id="header">\n<h1>{_e(title)}</h1>\n<dl class="facts">{rows}</dl>\n'
    if report.get("auto"):
        out += _auto(report["auto"])
    return out + "</header>"


def _auto(auto: dict) -> str:
    chosen = auto.get("chosen")
    cells = []
    for method, score in (auto.get("scores") or {}).items():
        mark = ' class="chosen"' if method == chosen else ""
        cells.append(f'<tr{mark}><th scope="row">{_e(method)}</th>'
                     f'<td class="num" data-metric="cv_macro_f1" data-method="{_e(method)}">{_num(score)}</td></tr>')
    rule = f'<p class="rule">{_e(auto["rule"])}</p>' if auto.get("rule") else ""
    table = ('<table class="auto"><thead><tr><th>method</th><th class="num">cross-validated macro-F1</th></tr></thead>'
             f'<tbody>{"".join(cells)}</tbody></table>') if cells else ""
    return (f'<div id="auto"><p>The method was chosen automatically: <strong data-metric="auto_chosen">'
            f"{_e(chosen)}</strong>.</p>{rule}{table}</div>\n")


def _metrics(report: dict) -> str:
    base = report["majority_baseline"]
    summary = [
        ("accuracy", "accuracy", _num(report["accuracy"])),
        ("macro_f1", "macro-F1", _num(report["macro_f1"])),
    ]
    if "ece" in report:
        summary.append(("ece", "expected calibration error (10 bins)", _num(report["ece"])))
    if "abstained" in report:
        summary += [
            ("abstained", "abstained", str(int(report["abstained"]))),
            ("coverage", "coverage", _num(report["coverage"])),
            ("accuracy_answered", "accuracy on answered", _num(report["accuracy_answered"])),
        ]
    rows = "".join(f'<tr><th scope="row">{name}</th><td class="num" data-metric="{key}">{value}</td></tr>'
                   for key, name, value in summary)
    rows += (f'<tr class="baseline"><th scope="row">majority baseline (always '
             f'<q data-metric="baseline_label">{_e(base["label"])}</q>)</th>'
             f'<td class="num">accuracy <span data-metric="baseline_accuracy">{_num(base["accuracy"])}</span>, '
             f'macro-F1 <span data-metric="baseline_macro_f1">{_num(base["macro_f1"])}</span></td></tr>')
    per = []
    for label, s in report["per_label"].items():
        scores = "".join(f'<td class="num" data-metric="{k}">{_num(s[k])}</td>' for k in ("precision", "recall", "f1"))
        per.append(f'<tr data-label="{_e(label)}"><th scope="row">{_e(label)}</th>{scores}'
                   f'<td class="num" data-metric="support">{int(s["support"])}</td></tr>')
    return (
        '<section id="metrics">\n<h2>Metrics</h2>\n<div class="metrics">'
        f'<table class="summary"><tbody>{rows}</tbody></table>\n'
        '<table class="per-label"><thead><tr><th>label</th><th class="num">precision</th><th class="num">recall</th>'
        f'<th class="num">F1</th><th class="num">support</th></tr></thead><tbody>{"".join(per)}</tbody></table>'
        "</div>\n</section>"
    )


def _confusion(cm: dict) -> str:
    """Gold rows, predicted columns; each cell's colour is its share of the gold row, so a small
    class's errors show as clearly as a large one's."""
    rows, columns, counts = cm["rows"], cm["columns"], cm["counts"]
    extra = set(columns) - set(rows)  # predictions outside the label set: abstentions
    cell = 52
    left = 16 + _text_px([*rows, "gold ↓"])
    # Column labels are turned 45 degrees: they reach up and to the right by 0.71 of their length,
    # plus about a glyph's height.
    top = 28 + int(_text_px(columns) * 0.71) + 10
    right = max(left + cell * j + cell / 2 + _text_px([col]) * 0.71 + 10 for j, col in enumerate(columns))
    width = int(max(left + cell * len(columns) + 8, right))
    height = top + cell * len(rows) + 8
    # Inline SVG in HTML needs no xmlns; without it the page holds no URL at all.
    parts = [f'<svg class="confusion" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="confusion matrix">']
    parts.append(f'<text class="axis-title" x="{left}" y="14">predicted →</text>')
    parts.append(f'<text class="axis-title row-label" x="{left - 8}" y="{top - 8}">gold ↓</text>')
    for j, col in enumerate(columns):
        x, y = left + cell * j + cell / 2, top - 8
        cls = "col-label abstain" if col in extra else "col-label"
        parts.append(f'<text class="{cls}" x="{x:.1f}" y="{y}" transform="rotate(-45 {x:.1f} {y})">'
                     f"<title>{_e(col)}</title>{_e(_short(col))}</text>")
    for i, (gold, row) in enumerate(zip(rows, counts)):
        total = sum(row)
        y = top + cell * i
        parts.append(f'<text class="row-label" x="{left - 8}" y="{y + cell / 2 + 4:.1f}">'
                     f"<title>{_e(gold)}</title>{_e(_short(gold))}</text>")
        for j, (col, count) in enumerate(zip(columns, row)):
            share = count / total if total else 0.0
            x = left + cell * j
            kind = "hit" if col == gold else ("abstain" if col in extra else "miss")
            tip = f"gold {gold}, predicted {col}: {count} ({share:.1%} of the row)"
            parts.append(
                f'<rect class="cell {kind}" x="{x}" y="{y}" width="{cell - 2}" height="{cell - 2}" rx="3" '
                f'fill="{_blue(share)}" data-row="{_e(gold)}" data-col="{_e(col)}" data-count="{count}">'
                f"<title>{_e(tip)}</title></rect>")
            ink = "#fff" if share > 0.45 else "#1f2937"
            parts.append(f'<text class="count" x="{x + (cell - 2) / 2:.1f}" y="{y + cell / 2 + 3:.1f}" fill="{ink}" '
                         f'data-row="{_e(gold)}" data-col="{_e(col)}">{count}</text>')
    if extra:  # a rule between the label set and the abstentions
        x = left + cell * len(rows) - 1
        parts.append(f'<line class="abstain-rule" x1="{x}" y1="{top - 4}" x2="{x}" y2="{top + cell * len(rows)}"/>')
    parts.append("</svg>")
    note = " Columns in italics are answers outside the label set (abstentions)." if extra else ""
    return ('<section id="confusion">\n<h2>Confusion matrix</h2>\n'
            f'<p class="note">Rows: gold label. Columns: prediction. Shade: share of the row.{note}</p>\n'
            f'<div class="scroll">{"".join(parts)}</div>\n</section>')


def _reliability(report: dict) -> str:
    """Accuracy per confidence bin against the diagonal of perfect calibration (Guo et al. 2017)."""
    head = '<section id="reliability">\n<h2>Reliability</h2>\n'
    bins = report.get("calibration_bins")
    if not bins:
        return head + '<p class="note">No confidences in this report, so no reliability diagram.</p>\n</section>'
    side, left, top, bottom = 280, 44, 14, 62
    width, height = left + side + 14, top + side + bottom

    def px(x: float) -> float:
        return left + x * side

    def py(y: float) -> float:
        return top + (1 - y) * side

    parts = [f'<svg class="reliability" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="reliability diagram">']
    for t in (0, 0.2, 0.4, 0.6, 0.8, 1.0):
        parts.append(f'<line class="grid" x1="{px(0)}" y1="{py(t):.1f}" x2="{px(1)}" y2="{py(t):.1f}"/>')
        parts.append(f'<text class="tick" x="{px(0) - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{t:.1f}</text>')
        parts.append(f'<text class="tick" x="{px(t):.1f}" y="{py(0) + 16}" text-anchor="middle">{t:.1f}</text>')
    for b in bins:
        if not b["count"]:
            continue
        x0, x1 = px(b["lower"]) + 1, px(b["upper"]) - 1
        acc, conf = b["accuracy"], b["confidence"]
        tip = (f"confidence {b['lower']:.1f}–{b['upper']:.1f}: {b['count']} item(s), "
               f"accuracy {acc:.4f}, mean confidence {conf:.4f}")
        parts.append(f'<rect class="bar" x="{x0:.1f}" y="{py(acc):.1f}" width="{x1 - x0:.1f}" '
                     f'height="{py(0) - py(acc):.1f}" data-count="{b["count"]}" data-accuracy="{acc:.4f}" '
                     f'data-confidence="{conf:.4f}"><title>{_e(tip)}</title></rect>')
        parts.append(f'<line class="mean-confidence" x1="{x0:.1f}" y1="{py(conf):.1f}" x2="{x1:.1f}" '
                     f'y2="{py(conf):.1f}"/>')
        # Counts in a row of their own under the axis: above the bars they collide with the
        # mean-confidence marks.
        parts.append(f'<text class="bin-count" x="{(x0 + x1) / 2:.1f}" y="{py(0) + 32}" '
                     f'text-anchor="middle">{b["count"]}</text>')
    parts.append(f'<text class="bin-count" x="{px(0) - 6}" y="{py(0) + 32}" text-anchor="end">n</text>')
    parts.append(f'<line class="diagonal" x1="{px(0)}" y1="{py(0)}" x2="{px(1)}" y2="{py(1)}"/>')
    parts.append(f'<line class="axis" x1="{px(0)}" y1="{py(0)}" x2="{px(1)}" y2="{py(0)}"/>')
    parts.append(f'<line class="axis" x1="{px(0)}" y1="{py(0)}" x2="{px(0)}" y2="{py(1)}"/>')
    parts.append(f'<text class="axis-title" x="{px(0.5)}" y="{height - 8}" text-anchor="middle">'
                 "confidence (top-label probability)</text>")
    parts.append(f'<text class="axis-title" x="12" y="{py(0.5)}" text-anchor="middle" '
                 f'transform="rotate(-90 12 {py(0.5)})">accuracy</text>')
    parts.append("</svg>")
    ece = f" ECE {_num(report['ece'])}." if "ece" in report else ""
    return (head + '<p class="note">Bars: accuracy per confidence bin (n: its items); red line: the bin\'s '
            f'mean confidence; dashed: perfect calibration.{ece}</p>\n'
            f'<div class="scroll">{"".join(parts)}</div>\n</section>')


def _compare(rows: list[dict], baseline: dict) -> str:
    body = []
    for r in [*rows, {"method": f"majority baseline ({baseline['label']})", "accuracy": baseline["accuracy"],
                      "macro_f1": baseline["macro_f1"], "baseline": True}]:
        cls = "chosen" if r.get("chosen") else ("baseline" if r.get("baseline") else "")
        mark = ' <span class="badge">chosen</span>' if r.get("chosen") else ""
        speed = r.get("items_per_second")
        body.append(
            f'<tr class="{cls}" data-method="{_e(r["method"])}"><th scope="row">{_e(r["method"])}{mark}</th>'
            f'<td class="num" data-metric="accuracy">{_num(r.get("accuracy"))}</td>'
            f'<td class="num" data-metric="macro_f1">{_num(r.get("macro_f1"))}</td>'
            f'<td class="num" data-metric="ece">{_num(r.get("ece"))}</td>'
            f'<td class="num" data-metric="items_per_second">{"—" if speed is None else f"{speed:.1f}"}</td></tr>')
    return ('<section id="compare">\n<h2>Methods compared</h2>\n'
            '<table class="compare"><thead><tr><th>method</th><th class="num">accuracy</th>'
            '<th class="num">macro-F1</th><th class="num">ECE</th><th class="num">items/s</th></tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>\n</section>')


def _mistakes(mistakes: list[dict]) -> str:
    head = '<section id="mistakes">\n<h2>Most confident mistakes</h2>\n'
    if not mistakes:
        return head + '<p class="note">No mistakes.</p>\n</section>'
    body = []
    for rank, m in enumerate(mistakes, 1):
        line = "" if m.get("line") is None else str(m["line"])
        body.append(
            f'<tr><td class="num">{rank}</td><td class="id">{_e(m.get("id"))}</td><td class="num">{line}</td>'
            f'<td class="gold">{_e(m["gold"])}</td><td class="predicted">{_e(m["predicted"])}</td>'
            f'<td class="num" data-metric="confidence">{_num(m["confidence"])}</td>'
            f'<td class="text">{_e(m["text"])}</td></tr>')
    return (head + f'<p class="note">The {len(mistakes)} wrong predictions the model was surest of.</p>\n'
            '<table class="mistakes"><thead><tr><th class="num">#</th><th>id</th><th class="num">line</th>'
            '<th>gold</th><th>predicted</th><th class="num">confidence</th><th>text</th></tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>\n</section>')


# ---------------------------------------------------------------- helpers


def _e(value: object) -> str:
    """Escaped for text and for a double-quoted attribute alike."""
    return escape("" if value is None else str(value), quote=True)


def _num(value: float | None) -> str:
    """Four decimals, as metrics.format_report prints; a dash for a number that does not exist."""
    return "—" if value is None else f"{value:.4f}"


def _cut(text: str) -> str:
    return text if len(text) <= TEXT_LIMIT else text[: TEXT_LIMIT - 1] + "…"


def _short(label: str) -> str:
    return label if len(label) <= AXIS_LABEL_LIMIT else label[: AXIS_LABEL_LIMIT - 1] + "…"


def _text_px(labels: Sequence[str]) -> int:
    return int(max((len(_short(label)) for label in labels), default=1) * _CHAR_PX)


# Near-white to deep blue through a middle blue (ColorBrewer's "Blues" ends and middle), so a
# share of 0.1 already shows and 0.5 is clearly apart from 1.
_SCALE = ((0.0, (247, 251, 255)), (0.5, (107, 174, 214)), (1.0, (8, 48, 107)))


def _blue(share: float) -> str:
    share = min(max(share, 0.0), 1.0)
    (x0, c0), (x1, c1) = next(pair for pair in zip(_SCALE, _SCALE[1:]) if share <= pair[1][0])
    t = (share - x0) / (x1 - x0)
    return "#" + "".join(f"{round(a + (b - a) * t):02x}" for a, b in zip(c0, c1))


_STYLE = """
:root { color-scheme: light; --ink: #1f2937; --muted: #6b7280; --line: #e5e7eb; --accent: #17468c; }
* { box-sizing: border-box; }
body { margin: 0; background: #f3f4f6; color: var(--ink);
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 24px; }
header, section { background: #fff; border: 1px solid var(--line); border-radius: 8px;
                  padding: 16px 20px; margin-bottom: 16px; }
h1 { font-size: 22px; margin: 0 0 10px; }
h2 { font-size: 16px; margin: 0 0 10px; }
.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0; }
.facts dt { color: var(--muted); }
.facts dd { margin: 0; overflow-wrap: anywhere; }
code { font: 12px/1.4 "DejaVu Sans Mono", ui-monospace, monospace; }
.hash { color: var(--muted); }
#auto { margin-top: 12px; padding-top: 10px; border-top: 1px solid var(--line); }
#auto p { margin: 0 0 6px; }
.rule { color: var(--muted); }
table { border-collapse: collapse; }
th, td { padding: 4px 10px; text-align: left; border-bottom: 1px solid var(--line); vertical-align: top; }
thead th { color: var(--muted); font-weight: 600; border-bottom: 2px solid var(--line); }
tbody th { font-weight: 500; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.metrics { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.summary td { font-weight: 600; }
tr.baseline th, tr.baseline td { color: var(--muted); font-weight: 400; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; align-items: stretch; }
/* Each chart's card starts at its own width (an SVG's, or its note's) and the two share a row
   when they fit; a matrix wider than the page scrolls inside its card. */
.charts section { flex: 1 1 auto; margin-bottom: 16px; min-width: 0; }
.charts .note { max-width: 360px; }
.scroll { overflow-x: auto; }
.note { color: var(--muted); margin: 0 0 8px; font-size: 13px; }
svg text { font-size: 12px; fill: var(--ink); }
svg .count { text-anchor: middle; font-variant-numeric: tabular-nums; }
svg .row-label { text-anchor: end; }
svg .col-label { text-anchor: start; }
svg text.abstain { font-style: italic; fill: var(--muted); }
svg rect.cell { stroke: var(--line); }
svg rect.hit { stroke: var(--accent); stroke-width: 1.5; }
svg .axis-title { fill: var(--muted); }
svg .tick { fill: var(--muted); font-size: 11px; }
svg .bin-count { fill: var(--ink); font-size: 11px; }
svg .grid { stroke: var(--line); }
svg .axis { stroke: #9ca3af; }
svg .abstain-rule { stroke: #9ca3af; stroke-dasharray: 3 3; }
svg .bar { fill: #5b8fd6; }
svg .mean-confidence { stroke: #c0392b; stroke-width: 2; }
svg .diagonal { stroke: var(--ink); stroke-dasharray: 5 4; stroke-width: 1; }
tr.chosen { background: #eef4fc; }
.badge { display: inline-block; margin-left: 6px; padding: 0 6px; border-radius: 9px; font-size: 11px;
         background: var(--accent); color: #fff; vertical-align: 1px; }
.mistakes { width: 100%; table-layout: auto; }
.mistakes .text { white-space: pre-wrap; overflow-wrap: anywhere; max-width: 560px; }
.mistakes .gold { color: #166534; }
.mistakes .predicted { color: #b91c1c; }
.mistakes .id { overflow-wrap: anywhere; }
""".strip()
