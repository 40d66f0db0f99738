"""Issue #14: ``--method auto`` (the default), the combined method, long and odd texts, the Python
API, ``eval --compare``, ``--report`` (checked in a real browser) and ``--suggest``.

Scoring runs the real SmolLM2-135M-Instruct through llama.cpp. The rule that picks a method, the
fold layout, the product of distributions and the margin ranking are pure logic; their tests use
hand-made numbers, which is enough because nothing in them touches a model.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from llmlocal import classify
from llmlocal.classify import auto, fewshot, review
from tests.browser import output_dir
from tests.test_classify import run, sample_rows  # the same CLI runner and 40 SMS rows


@pytest.fixture
def files(tmp_path):
    rows = sample_rows()
    examples = tmp_path / "examples.tsv"
    examples.write_text("label\ttext\n" + "".join(f"{r['label']}\t{r['text']}\n" for r in rows[:16]),
                        encoding="utf-8")
    items = tmp_path / "items.csv"
    with open(items, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text"])
        for r in rows[24:30]:
            w.writerow([r["id"], r["text"]])
    labelled = tmp_path / "labelled.tsv"
    labelled.write_text("label\ttext\n" + "".join(f"{r['label']}\t{r['text']}\n" for r in rows), encoding="utf-8")
    return {"examples": examples, "items": items, "labelled": labelled, "dir": tmp_path}


# ---------------------------------------------------------------- pure logic


def test_pick_prefers_the_preferred_unless_another_wins_clearly():
    near = {"prompt": 0.80, "calibrated": 0.85, "embed": 0.88, "combined": 0.86}
    assert auto.pick(near) == "combined"  # 0.88 is within MARGIN of the preferred's 0.86
    clear = {"prompt": 0.95, "calibrated": 0.60, "embed": 0.70, "combined": 0.75}
    assert auto.pick(clear) == "prompt"
    assert auto.pick({"prompt": 0.7, "calibrated": 0.7, "embed": None, "combined": None}) == "calibrated"


def test_fold_order_is_contiguous_stratified_and_keeps_every_example():
    examples = [classify.Example(f"t{i}", "a" if i % 3 else "b") for i in range(24)]
    ordered, folds = auto.fold_order(examples, ["a", "b"], seed=3)
    assert sorted(e.text for e in ordered) == sorted(e.text for e in examples)
    assert [i for f in folds for i in f] == list(range(24)) and len(folds) == 4
    for f in folds:  # each fold holds a quarter of each label
        assert sum(ordered[i].label == "b" for i in f) == 2
    assert auto.fold_order(examples, ["a", "b"], seed=3) == (ordered, folds)


def test_combine_is_the_renormalised_product():
    p = np.array([[0.9, 0.1], [0.5, 0.5]])
    q = np.array([[0.4, 0.6], [0.2, 0.8]])
    want = p * q / (p * q).sum(axis=1, keepdims=True)
    assert np.allclose(auto.combine(p, q), want)
    assert np.isfinite(auto.combine(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]))).all()


def test_least_sure_ranks_by_margin_and_skips_failed_rows():
    items = [classify.Item(i, f"text {i}", line=i + 2) for i in range(4)]
    preds = [classify.Prediction(0, "a", 0.9, {"a": 0.9, "b": 0.1}, "a"),
             classify.Prediction(1, "b", 0.55, {"a": 0.45, "b": 0.55}, "b"),
             classify.Prediction(2, None, None, None, None, error={"type": "context_overflow", "message": "m"}),
             classify.Prediction(3, "a", 0.7, {"a": 0.7, "b": 0.3}, "a")]
    rows = review.least_sure(items, preds, 2)
    assert [r["id"] for r in rows] == [1, 3] and rows[0]["label"] == "b" and rows[0]["margin"] == pytest.approx(0.1)


# ---------------------------------------------------------------- with the real model


@pytest.mark.slow
def test_shared_fold_prefix_scores_equal_a_fresh_prompt(installed):
    """auto's folds reuse the whole prompt's cells up to where they differ; the numbers must be
    those of the same prompt evaluated from scratch."""
    rows = sample_rows()
    examples = [classify.Example(r["text"], r["label"]) for r in rows[:12]]
    texts = [r["text"] for r in rows[30:34]]
    contexts = classify.open_contexts("smollm2-135m")
    try:
        model = contexts("prompt")
        whole = fewshot.PromptClassifier(model, ["ham", "spam"], examples)
        whole.scorer.warm()
        fold = fewshot.PromptClassifier(model, ["ham", "spam"], examples[:6] + examples[9:], share=True)
        shared = fold.log_scores(texts)
        assert fold.scorer.base_seq == fold.scorer.shared_seq  # it did share
        assert fold.scorer.evaluated_tokens < len(fold.prompt.prefix)  # and evaluated only its own rest
        fold.scorer.release()
        fresh = fewshot.PromptClassifier(model, ["ham", "spam"], examples[:6] + examples[9:]).log_scores(texts)
    finally:
        contexts.close()
    assert np.abs(shared - fresh).max() < 1e-4


@pytest.mark.slow
def test_default_is_auto_and_says_what_it_chose(installed, files):
    out = files["dir"] / "pred.jsonl"
    result = run("classify", "-e", str(files["examples"]), str(files["items"]), "-o", str(out))
    assert result.exit_code == 0, result.output
    meta = json.loads((files["dir"] / "pred.jsonl.meta.json").read_text(encoding="utf-8"))
    chosen = meta["auto"]["chosen"]
    assert meta["method_requested"] == "auto" and meta["method"] == chosen
    assert chosen in auto.CANDIDATES and set(meta["auto"]["scores"]) == set(auto.CANDIDATES)
    assert all(0 <= s <= 1 for s in meta["auto"]["scores"].values())
    assert meta["auto"]["folds"] == 4 and meta["auto"]["seconds"] > 0
    line = [x for x in result.stderr.splitlines() if x.startswith("method auto chose")]
    assert len(line) == 1 and chosen in line[0] and "4-fold macro-F1 over 16 examples" in line[0]
    assert "choosing the method took" in result.stderr
    # Zero-shot: the calibrated prompt, no cross-validation.
    result = run("classify", "-l", "ham,spam", str(files["items"]), "--json-header")
    assert result.exit_code == 0, result.output
    header = json.loads(result.stdout.splitlines()[0])["manifest"]
    assert header["auto"]["chosen"] == "calibrated" and header["auto"]["folds"] == 0


@pytest.mark.slow
def test_prompt_items_too_long_get_error_rows_or_are_truncated(installed, files):
    long_csv = files["dir"] / "long.csv"
    long_csv.write_text("id,text\na,see you at noon\nb," + "word " * 300 + "\nc,\n", encoding="utf-8")
    out = files["dir"] / "out.csv"
    common = ["classify", "--method", "prompt", "-e", str(files["examples"]), "--max-examples", "6", "--ctx", "512",
              str(long_csv)]
    result = run(*common, "-o", str(out))
    assert result.exit_code == 0, result.output
    with open(out, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    assert rows[0]["label"] in ("ham", "spam") and rows[0]["error"] == ""
    assert rows[1]["label"] == "" and f'item "b" (line 3 of {long_csv})' in rows[1]["error"]
    assert rows[2]["label"] in ("ham", "spam")  # an empty text is classified, as such
    assert "(1 failed)" in result.stderr
    result = run(*common, "--truncate", "-o", str(files["dir"] / "t.jsonl"))
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in (files["dir"] / "t.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows[1]["truncated"] is True and rows[1]["label"] in ("ham", "spam") and "error" not in rows[1]
    # Every row failed: exit 1, one Error line whose hint is the flag that helps.
    only_long = files["dir"] / "only.csv"
    only_long.write_text("id,text\nb," + "word " * 300 + "\n", encoding="utf-8")
    result = run(*common[:-1], str(only_long))
    assert result.exit_code == 1
    assert result.stderr.count("Error:") == 1 and "hint: add --truncate" in result.stderr, result.stderr


@pytest.mark.slow
def test_eval_compare_and_the_html_report_in_a_browser(installed, files, browser_page):
    report = files["dir"] / "report.html"
    small = files["dir"] / "small.tsv"  # 20 rows, 2 folds: five evaluations of 20 items
    small.write_text("".join(files["labelled"].read_text(encoding="utf-8").splitlines(keepends=True)[:21]),
                     encoding="utf-8")
    result = run("eval", str(small), "--k-fold", "2", "--compare", "--report", str(report))
    assert result.exit_code == 0, result.output
    assert "methods compared on the same split" in result.stdout
    table = result.stdout.split("methods compared on the same split")[1]
    for name in ("prompt", "calibrated", "embed", "combined", "auto (chose", "majority baseline"):
        assert name in table
    assert table.count("<- auto's choice") == 1
    meta_accuracy = None
    for line in result.stdout.splitlines():
        if line.startswith("accuracy:"):
            meta_accuracy = line.split()[1]
    page = browser_page.page
    page.goto(report.as_uri())
    assert page.locator('#metrics [data-metric="accuracy"]').first.inner_text() == meta_accuracy
    assert page.locator("#confusion rect.cell").count() == 4
    assert page.locator("#reliability rect.bar").count() >= 1
    assert page.locator("#compare tr.chosen").count() == 1
    assert browser_page.network_requests() == []
    page.screenshot(path=str(output_dir() / "classify-report.png"), full_page=True)


@pytest.mark.slow
def test_suggest_writes_the_least_sure_items_as_an_examples_file(installed, files):
    sugg = files["dir"] / "next.csv"
    result = run("classify", "-e", str(files["examples"]), "--method", "embed", str(files["items"]),
                 "--suggest", "3", "--suggest-output", str(sugg), "-q")
    assert result.exit_code == 0, result.output
    again = classify.read_examples(sugg)  # what classify -e reads, once the labels are checked
    assert len(again) == 3 and all(e.label in ("ham", "spam") for e in again)
    with open(sugg, encoding="utf-8", newline="") as fh:
        margins = [float(r["margin"]) for r in csv.DictReader(fh)]
    assert margins == sorted(margins)
    result = run("classify", "-e", str(files["examples"]), "--method", "embed", str(files["items"]), "--suggest", "2")
    assert "2 item(s) the classifier is least sure of" in result.stderr


@pytest.mark.slow
def test_python_api_classifier_predict_evaluate_embed(installed):
    import llmlocal

    rows = sample_rows()
    examples = [{"text": r["text"], "label": r["label"]} for r in rows[:16]]
    texts = (r["text"] for r in rows[30:36])  # any iterable
    with llmlocal.load("smollm2-135m") as m:
        clf = m.classifier(examples=examples)
        assert clf.method in auto.CANDIDATES and set(clf.scores) == set(auto.CANDIDATES)
        out = clf.predict(texts)
        assert [o["text"] for o in out] == [r["text"] for r in rows[30:36]]
        assert all(o["label"] in ("ham", "spam") and abs(sum(o["probabilities"].values()) - 1) < 1e-5 for o in out)
        report = clf.evaluate([(r["text"], r["label"]) for r in rows[16:40]])
        assert report["n"] == 24 and 0 <= report["macro_f1"] <= 1 and report["method"] == clf.method
        zero = m.classify(["WIN a free prize now"], labels="ham,spam")
        assert zero[0]["label"] in ("ham", "spam")
        vectors = m.embed(["one", "two words"])
        assert vectors.shape == (2, 576) and np.allclose(np.linalg.norm(vectors, axis=1), 1)
        with pytest.raises(TypeError):
            m.classifier(examples=examples, temperature=0)


@pytest.mark.slow
def test_the_readme_python_example_runs(installed, capsys):
    """The README's "From Python" example, verbatim: documentation that does not run is a bug."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("### From Python", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    method, _, labels = lines[0].partition(" ")
    assert method in auto.CANDIDATES and "spam" in labels or "ham" in labels
    assert lines[2] in ("positive", "negative")
