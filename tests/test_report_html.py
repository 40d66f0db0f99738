"""The HTML evaluation report: its logic from hand-made predictions, and the page itself in a real
headless Chromium (what a person opening the file sees, with no network).

No model is needed: the report is built by the real metrics.report from gold and predicted lists
written out below, which is all render() ever receives.
"""

from __future__ import annotations

import errno
import html
import re

import pytest

from llmlocal.classify import metrics
from llmlocal.classify.report_html import CSP, TEXT_LIMIT, confident_mistakes, render, write_report
from llmlocal.classify.types import Item, Prediction
from llmlocal.errors import OutputWriteError
from tests.browser import output_dir

LABELS = ["cat", "dog", "bird"]
# Ten items; the last one was abstained on ('unknown') although its top label was 'cat'.
GOLD = ["cat", "cat", "cat", "cat", "dog", "dog", "dog", "bird", "bird", "bird"]
PRED = ["cat", "cat", "dog", "cat", "dog", "cat", "dog", "bird", "dog", "unknown"]
TOP = PRED[:-1] + ["cat"]
CONF = [0.95, 0.9, 0.85, 0.7, 0.65, 0.8, 0.55, 0.99, 0.6, 0.4]
PAYLOAD = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
TEXTS = [f"text number {i}" for i in range(10)]
TEXTS[5] = f"woof {PAYLOAD} & more"

META = {
    "llmlocal_version": "0.9.0", "llama_cpp_python_version": "0.3.36",
    "model": {"name": "smollm2-135m", "sha256": "ab" * 32}, "method": "prompt",
    "input": {"path": "labelled.csv", "sha256": "cd" * 32, "items": 10}, "k_fold": 5, "seed": 0,
}


def _items_and_predictions() -> tuple[list[Item], list[Prediction]]:
    items = [Item(id=f"r{i}", text=t, line=i + 2, label=g) for i, (t, g) in enumerate(zip(TEXTS, GOLD))]
    preds = [Prediction(id=f"r{i}", label=p, confidence=c, probabilities={}, top=t)
             for i, (p, c, t) in enumerate(zip(PRED, CONF, TOP))]
    return items, preds


def _report() -> dict:
    rep = metrics.report(GOLD, PRED, LABELS, confidence=CONF, top=TOP, abstain_label="unknown")
    items, preds = _items_and_predictions()
    rep["method"] = "prompt"
    rep["auto"] = {"chosen": "prompt", "scores": {"prompt": 0.6071, "embed": 0.55, "knn": None},
                   "rule": "the highest cross-validated macro-F1; embed only with 8+ examples per label"}
    rep["mistakes"] = confident_mistakes(items, preds)
    rep["compare"] = [
        {"method": "prompt", "accuracy": 0.6, "macro_f1": rep["macro_f1"], "ece": rep["ece"],
         "items_per_second": 41.25, "chosen": True},
        {"method": "embed", "accuracy": 0.5, "macro_f1": 0.55, "ece": None, "items_per_second": 310.0,
         "chosen": False},
    ]
    return rep


# ---------------------------------------------------------------- confident_mistakes


def test_mistakes_are_the_wrong_top_labels_surest_first():
    items, preds = _items_and_predictions()
    mistakes = confident_mistakes(items, preds)
    # Wrong by top label: r2 (0.85), r5 (0.80), r8 (0.60) and r9, abstained but with top 'cat' (0.40).
    assert [m["id"] for m in mistakes] == ["r2", "r5", "r8", "r9"]
    assert mistakes[1] == {"id": "r5", "line": 7, "text": TEXTS[5], "gold": "dog", "predicted": "cat",
                           "confidence": 0.8}
    assert mistakes[3]["predicted"] == "cat"  # the top label, not the abstention
    assert [m["id"] for m in confident_mistakes(items, preds, n=2)] == ["r2", "r5"]


def test_mistakes_tie_by_input_order_and_skip_items_without_gold():
    items = [Item(id=i, text="t", label=g) for i, g in enumerate(["a", "a", None, "a", "b"])]
    preds = [Prediction(id=i, label="b", confidence=c, probabilities={}, top="b")
             for i, c in enumerate([0.7, 0.9, 0.99, 0.7, 0.9])]
    assert [m["id"] for m in confident_mistakes(items, preds)] == [1, 0, 3]


def test_items_that_were_not_scored_are_not_mistakes():
    # A prediction with no top label (the item could not be scored) says nothing about confidence.
    items = [Item(id=0, text="t", label="a"), Item(id=1, text="u", label="a")]
    preds = [Prediction(id=0, label=None, confidence=None, probabilities=None, top=None),
             Prediction(id=1, label="b", confidence=0.6, probabilities={}, top="b")]
    assert [m["id"] for m in confident_mistakes(items, preds)] == [1]


def test_long_texts_are_cut_with_an_ellipsis():
    items = [Item(id=0, text="x" * 2000, label="a"), Item(id=1, text="y" * TEXT_LIMIT, label="a")]
    preds = [Prediction(id=i, label="b", confidence=0.5, probabilities={}, top="b") for i in range(2)]
    cut, whole = confident_mistakes(items, preds)
    assert cut["text"] == "x" * (TEXT_LIMIT - 1) + "…" and len(cut["text"]) == TEXT_LIMIT
    assert whole["text"] == "y" * TEXT_LIMIT


def test_mistakes_refuse_lists_of_different_lengths():
    items, preds = _items_and_predictions()
    with pytest.raises(ValueError, match="10 items but 9 predictions"):
        confident_mistakes(items, preds[:-1])


# ---------------------------------------------------------------- render


def test_page_is_self_contained_and_escapes_user_text():
    page = render(_report(), title="Eval <of> cats & dogs", meta=META)
    assert page.startswith("<!DOCTYPE html>")
    assert f'<meta http-equiv="Content-Security-Policy" content="{CSP}">' in page
    assert "<title>Eval &lt;of&gt; cats &amp; dogs</title>" in page
    # Nothing to fetch and nothing to run: no URL, no src or href, no script element.
    assert not re.search(r"(?i)https?:|//[a-z]|\bsrc=|\bhref=|<script|<link|@import|url\(", page.replace(
        html.escape(PAYLOAD), ""))
    assert PAYLOAD not in page and html.escape(PAYLOAD) in page


def test_header_names_the_model_its_hash_and_the_versions():
    page = render(_report(), title="t", meta=META)
    header = page[page.index('<header id="header">'):page.index("</header>")]
    for shown in ("smollm2-135m", "ab" * 32, "0.9.0", "0.3.36", "5-fold cross-validation", "labelled.csv",
                  '<span data-metric="n">10</span>', '<strong data-metric="auto_chosen">prompt</strong>'):
        assert shown in header


def test_labels_are_escaped_in_tables_and_svg_attributes():
    labels = ['a"b', "<i>x</i>"]
    rep = metrics.report(['a"b', "<i>x</i>"], ['a"b', 'a"b'], labels)
    page = render(rep, title="t")
    assert "<i>x</i>" not in page and 'a"b' not in page
    assert 'data-row="a&quot;b" data-col="a&quot;b" data-count="1"' in page
    assert 'data-row="&lt;i&gt;x&lt;/i&gt;" data-col="a&quot;b" data-count="1"' in page


def test_numbers_have_four_decimals_like_the_text_report():
    rep = _report()
    page = render(rep, title="t")
    assert '<td class="num" data-metric="accuracy">0.6000</td>' in page
    assert f'<td class="num" data-metric="macro_f1">{rep["macro_f1"]:.4f}</td>' in page
    assert f'data-metric="ece">{rep["ece"]:.4f}<' in page
    text = metrics.format_report(rep)
    assert f"macro-F1: {rep['macro_f1']:.4f}" in text  # the same rounding in both reports


def test_minimal_report_renders_without_optional_sections():
    rep = metrics.report(["a", "b"], ["a", "a"], ["a", "b"])
    page = render(rep, title="t")
    for present in ('id="metrics"', 'id="confusion"', 'id="reliability"', "No confidences"):
        assert present in page
    for absent in ('id="compare"', 'id="mistakes"', 'id="auto"', 'data-metric="ece"'):
        assert absent not in page


def test_write_report_replaces_the_file_whole(tmp_path):
    target = tmp_path / "report.html"
    write_report(target, "old")
    write_report(target, render(_report(), title="t"))
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary file left behind


def test_write_report_failure_is_a_typed_error(tmp_path):
    target = tmp_path / "missing-dir" / "report.html"
    with pytest.raises(OutputWriteError) as info:
        write_report(target, "x")
    assert info.value.path == str(target) and info.value.errno == errno.ENOENT
    assert "is as it was" in info.value.hint


# ---------------------------------------------------------------- in a real browser


def test_the_report_in_headless_chromium(browser_page, tmp_path):
    rep = _report()
    target = tmp_path / "report.html"
    write_report(target, render(rep, title="Evaluation: cats, dogs and birds", meta=META))
    page = browser_page.page
    page.goto(target.as_uri())

    metric = page.locator("#metrics")
    assert metric.locator('[data-metric="accuracy"]').inner_text() == "0.6000"
    assert metric.locator('[data-metric="macro_f1"]').inner_text() == f"{rep['macro_f1']:.4f}"
    assert metric.locator('tr[data-label="dog"] [data-metric="recall"]').inner_text() == "0.6667"
    assert page.locator('#header [data-metric="n"]').inner_text() == "10"

    cm = rep["confusion_matrix"]
    cells = page.locator("#confusion svg rect.cell")
    assert cells.count() == len(cm["rows"]) * len(cm["columns"]) == 12
    counts = page.locator("#confusion svg text.count").all_text_contents()
    assert counts == [str(c) for row in cm["counts"] for c in row]
    assert cells.nth(3).get_attribute("data-col") == "unknown"  # the abstention column is drawn

    bars = page.locator("#reliability svg rect.bar")
    assert bars.count() == sum(1 for b in rep["calibration_bins"] if b["count"]) > 0
    assert all(float(h) >= 0 for h in bars.evaluate_all("els => els.map(e => e.getAttribute('height'))"))

    chosen = page.locator("#compare tr.chosen")
    assert chosen.get_attribute("data-method") == "prompt" and "chosen" in chosen.inner_text()
    assert "majority baseline" in page.locator("#compare tbody tr").last.inner_text()

    rows = page.locator("#mistakes tbody tr")
    assert rows.count() == 4
    assert rows.nth(1).locator("td.text").inner_text() == TEXTS[5]  # shown literally, tags and all
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#mistakes img, #mistakes script").count() == 0

    assert browser_page.requests == [target.as_uri()]  # the page itself, and nothing else
    assert browser_page.network_requests() == []
    page.screenshot(path=str(output_dir() / "report.png"), full_page=True)

    # The CSP is in force: even script that does run (Playwright's own) cannot make the page fetch;
    # the page's policy refuses the image before this fixture's routing ever sees it.
    page.evaluate("() => { const i = document.createElement('img'); i.src = 'http://127.0.0.1:9/x.png';"
                  " document.body.append(i); }")
    page.wait_for_function("() => document.querySelector('img').complete")
    assert browser_page.failed == {"http://127.0.0.1:9/x.png": "csp"}


def test_the_browser_fixture_records_and_refuses_network_requests(browser_page, tmp_path):
    # Without it, "no request was made" above could mean "none was recorded".
    target = tmp_path / "leaky.html"
    target.write_text('<img src="http://127.0.0.1:9/pixel.png"><p>hi</p>', encoding="utf-8")
    browser_page.page.goto(target.as_uri())
    browser_page.page.wait_for_load_state("load")
    assert browser_page.network_requests() == ["http://127.0.0.1:9/pixel.png"]
    assert browser_page.failed == {"http://127.0.0.1:9/pixel.png": "net::ERR_BLOCKED_BY_CLIENT.Inspector"}
