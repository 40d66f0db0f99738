"""Looking at a classifier's results: every method side by side (``eval --compare``), the items
it is least sure of (``classify --suggest``: what to label next), and the HTML report.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..errors import UsageError, option
from .fewshot import Progress
from .types import Item, Prediction

if TYPE_CHECKING:
    from ..runtime import Model
    from .job import ClassifyResult, Job

# What --compare runs, as (name, the settings that make it): auto's four candidates.
COMPARED: tuple[tuple[str, dict], ...] = (
    ("prompt", {"method": "prompt", "calibrate": False}),
    ("calibrated", {"method": "prompt", "calibrate": True}),
    ("embed", {"method": "embed", "calibrate": False, "template": None, "instructions": None}),
    ("combined", {"method": "combined", "calibrate": False}),
)


def compare(contexts: Callable[[str], Model], job: Job, *,
            progress: Progress | None = None) -> tuple[ClassifyResult, list[dict]]:
    """Evaluate every method on the job's split (the same folds: one seed), then auto.

    Returns auto's result (what the default command gives, with its report) and one row per
    method: accuracy, macro-F1, ECE, items/s, and ``chosen`` on the method auto chose (the one it
    chose most often, with folds).
    """
    from .job import run

    if not job.evaluate:
        raise UsageError(f"{option('compare')} compares evaluations: use it with `llmlocal eval FILE`")
    rows = []
    steps = len(COMPARED) + 1
    for step, (name, changes) in enumerate(COMPARED):
        settings = dataclasses.replace(job.settings, **changes)
        if name == "embed" and job.settings.template is not None:
            settings = dataclasses.replace(settings, template=None)
        rows.append(_row(name, run, contexts, dataclasses.replace(job, settings=settings), progress, step, steps))
    auto_job = dataclasses.replace(job, settings=dataclasses.replace(job.settings, method="auto", calibrate=False))
    started = time.perf_counter()
    result = run(contexts, auto_job, progress=_scaled(progress, steps - 1, steps))
    seconds = time.perf_counter() - started
    tally = Counter(c.method for c in result.choices)
    chosen = tally.most_common(1)[0][0] if tally else None
    for row in rows:
        row["chosen"] = row["method"] == chosen
    report = result.report or {}
    rows.append({"method": "auto" + (f" (chose {_tally(tally)})" if tally else ""),
                 "accuracy": report.get("accuracy"), "macro_f1": report.get("macro_f1"), "ece": report.get("ece"),
                 "items_per_second": len(result.predictions) / seconds if seconds else None,
                 "seconds": seconds, "chosen": False})
    return result, rows


def _row(name: str, run: Callable, contexts: Callable[[str], Model], job: Job, progress: Progress | None,
         step: int, steps: int) -> dict:
    started = time.perf_counter()
    result = run(contexts, job, progress=_scaled(progress, step, steps))
    seconds = time.perf_counter() - started
    report = result.report or {}
    return {"method": name, "accuracy": report.get("accuracy"), "macro_f1": report.get("macro_f1"),
            "ece": report.get("ece"), "items_per_second": len(result.predictions) / seconds if seconds else None,
            "seconds": seconds}


def _tally(tally: Counter) -> str:
    if len(tally) == 1:
        return next(iter(tally))
    return ", ".join(f"{m} {n}x" for m, n in tally.most_common())


def _scaled(progress: Progress | None, step: int, steps: int) -> Progress | None:
    """Progress of one of ``steps`` equal runs, as a share of the whole."""
    if progress is None:
        return None

    def report(done: int, total: int) -> None:
        progress(step * total + done, steps * total)

    return report


def format_compare(rows: Sequence[dict], baseline: dict) -> str:
    """The comparison as a text table, the majority baseline last."""
    table = [("method", "accuracy", "macro-F1", "ECE", "items/s", "")]

    def num(value: float | None, digits: int = 4) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    for r in rows:
        table.append((r["method"], num(r["accuracy"]), num(r["macro_f1"]), num(r["ece"]),
                      num(r["items_per_second"], 2), "<- auto's choice" if r.get("chosen") else ""))
    table.append((f"majority baseline ({baseline['label']})", num(baseline["accuracy"]), num(baseline["macro_f1"]),
                  "-", "-", ""))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:-1], widths[1:-1])]
                               + [row[-1]]).rstrip() for row in table)


# ---------------------------------------------------------------- what to label next


def least_sure(items: Sequence[Item], predictions: Sequence[Prediction], n: int) -> list[dict]:
    """The ``n`` items with the smallest margin between their two most probable labels, least sure
    first (ties: input order): labelling these teaches the classifier the most (uncertainty
    sampling). Each row has the model's guess as ``label``, for the user to correct."""
    if n < 1:
        raise UsageError(f"{option('suggest')} must be at least 1")
    rows = []
    for item, p in zip(items, predictions):
        if p.probabilities is None or p.top is None:
            continue  # not scored: its error row says why
        top2 = sorted(p.probabilities.values(), reverse=True)[:2]
        margin = top2[0] - (top2[1] if len(top2) > 1 else 0.0)
        rows.append({"text": item.text, "label": p.top, "id": item.id, "line": item.line,
                     "margin": round(margin, 6)})
    return sorted(rows, key=lambda r: r["margin"])[:n]


def write_suggestions(rows: Sequence[dict], path: str) -> None:
    """``path`` as an examples file (text, label: the guess to correct; then id, line, margin): CSV,
    TSV or JSONL by its extension, written atomically. ``classify -e`` reads it once corrected."""
    write_examples(rows, path, columns=("text", "label", "id", "line", "margin"))


def write_examples(rows: Sequence[dict], path: str, *, columns: Sequence[str]) -> None:
    """``rows`` as a labelled-examples file ``classify -e`` reads (``columns`` starting with text
    and label): CSV, TSV or JSONL by the extension of ``path``, written atomically."""
    from ..atomic import write_failure, write_text

    try:
        write_text(path, examples_text(rows, examples_format(path), columns=columns))
    except OSError as exc:
        raise write_failure(path, exc, next_step=f"run it again: {path} is as it was") from None


def examples_text(rows: Sequence[dict], fmt: str, *, columns: Sequence[str]) -> str:
    """The text of an examples file in ``fmt`` (csv, tsv or jsonl): a header of ``columns``, a row each."""
    import csv
    import io
    import json

    if fmt == "jsonl":
        return "".join(json.dumps({c: r[c] for c in columns}, ensure_ascii=False) + "\n" for r in rows)
    if fmt == "tsv":  # TSV has no quoting (tabular reads a quote as text): a tab or newline becomes a space
        def field(value: object) -> str:
            text = str("" if value is None else value)
            return text.replace("\t", " ").replace("\r\n", " ").replace("\n", " ").replace("\r", " ")

        return "".join("\t".join(field(v) for v in values) + "\n"
                       for values in [list(columns), *([r[c] for c in columns] for r in rows)])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([r[c] for c in columns])
    return buf.getvalue()


def examples_format(path: str) -> str:
    """csv, tsv or jsonl, from the extension of an examples file to write (checked before any work)."""
    lower = path.lower()
    if lower.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if lower.endswith((".csv", ".tsv")):
        return lower[-3:]
    raise UsageError(f"cannot tell the format of '{path}' from its extension", hint="name it .csv, .tsv or .jsonl")


def format_suggestions(rows: Sequence[dict]) -> str:
    """The suggestions for stderr: margin, the guess, id and the start of the text."""
    lines = [f"{len(rows)} item(s) the classifier is least sure of (label these next):"]
    for r in rows:
        text = " ".join(r["text"].split())
        lines.append(f"  margin {r['margin']:.3f}  guess {r['label']!r}  id {r['id']}: "
                     f"{text[:80] + '…' if len(text) > 80 else text}")
    return "\n".join(lines)


# ---------------------------------------------------------------- the HTML report


def html_report(result: ClassifyResult, meta: dict, *, compared: Sequence[dict] | None = None,
                title: str = "Classification report") -> str:
    """The evaluation of ``result`` as one self-contained HTML page (see report_html)."""
    from .report_html import confident_mistakes, render

    if result.report is None:
        raise UsageError(f"{option('report')} needs an evaluation (`llmlocal eval FILE` or "
                         f"{option('evaluate')} FILE)")
    report = dict(result.report)
    report["mistakes"] = confident_mistakes(result.items, result.predictions)
    if compared:
        report["compare"] = list(compared)
    return render(report, title=title, meta=meta)


def check_report_path(path: str | None) -> None:
    if path is not None and not path.lower().endswith((".html", ".htm")):
        raise UsageError(f"{option('report')} writes HTML: name the file .html", hint=f"{option('report')} report.html")


__all__ = ["COMPARED", "check_report_path", "compare", "examples_format", "examples_text", "format_compare",
           "format_suggestions", "html_report", "least_sure", "write_examples", "write_suggestions"]
