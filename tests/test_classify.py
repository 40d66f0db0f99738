"""Classification: readers, prompt building, label scoring with the real models, the CLI, bad input.

The scoring tests use the real SmolLM2-135M-Instruct and Gemma 3 270M base models. Prompt building,
example selection, folds, logistic regression and the input readers are pure logic; those tests use
no model, which is enough because nothing in them touches llama.cpp.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from llmlocal import classify, tabular
from llmlocal.classify import embedding, fewshot
from llmlocal.cli import cli
from llmlocal.errors import ContextOverflowError, InputFormatError, UsageError

DATA = Path(__file__).resolve().parent / "data"
SAMPLE = DATA / "sms_sample.tsv"  # 40 SMS messages (26 ham, 14 spam): see data/SOURCE.md


def run(*args: str, input: str | bytes | None = None):
    return CliRunner().invoke(cli, list(args), input=input)


def sample_rows() -> list[dict]:
    with open(SAMPLE, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.fixture
def files(tmp_path):
    """Examples (first 24 rows) and items (the last 16) in several formats."""
    rows = sample_rows()
    examples, items = rows[:24], rows[24:]
    ex_tsv = tmp_path / "examples.tsv"
    ex_tsv.write_text("label\ttext\n" + "".join(f"{r['label']}\t{r['text']}\n" for r in examples), encoding="utf-8")
    items_csv = tmp_path / "items.csv"
    with open(items_csv, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text"])
        for r in items[:6]:
            w.writerow([r["id"], r["text"]])
    items_jsonl = tmp_path / "items.jsonl"
    items_jsonl.write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n" for r in items[:5]),
                           encoding="utf-8")
    test_tsv = tmp_path / "test.tsv"
    test_tsv.write_text("label\ttext\n" + "".join(f"{r['label']}\t{r['text']}\n" for r in items[:8]),
                        encoding="utf-8")
    return {"examples": ex_tsv, "items_csv": items_csv, "items_jsonl": items_jsonl, "test": test_tsv,
            "dir": tmp_path}


# ---------------------------------------------------------------- readers (pure)


def test_reads_csv_tsv_jsonl_and_lines_with_line_numbers(tmp_path):
    (tmp_path / "a.csv").write_text('id,text\n1,"hello, world"\n2,"two\nlines"\n3,plain\n', encoding="utf-8")
    t = tabular.read_table(tmp_path / "a.csv")
    assert t.columns == ["id", "text"]
    assert [(r.line, r.values["text"]) for r in t.rows] == [(2, "hello, world"), (3, "two\nlines"), (5, "plain")]
    (tmp_path / "b.tsv").write_text('label\ttext\nham\tsay "hi"\n\nspam\twin\n', encoding="utf-8")
    t = tabular.read_table(tmp_path / "b.tsv")
    assert [(r.line, r.values) for r in t.rows] == [(2, {"label": "ham", "text": 'say "hi"'}),
                                                    (4, {"label": "spam", "text": "win"})]
    (tmp_path / "c.jsonl").write_text('{"text": "a", "id": 7}\n\n{"text": "b", "id": 8}\n', encoding="utf-8")
    assert [r.line for r in tabular.read_table(tmp_path / "c.jsonl").rows] == [1, 3]
    (tmp_path / "d.txt").write_text("\ufefffirst\n\n  \nsecond\r\n", encoding="utf-8")
    t = tabular.read_table(tmp_path / "d.txt")
    assert [(r.line, r.values["text"]) for r in t.rows] == [(1, "first"), (4, "second")]
    t = tabular.read_table(io.BytesIO(b'{"text": "x"}\n'))  # a stream: sniffed as JSONL
    assert t.format == "jsonl"


def test_read_items_defaults_first_column_and_line_number_ids(tmp_path):
    (tmp_path / "x.csv").write_text("message,other\nhello,1\nbye,2\n", encoding="utf-8")
    items, _ = classify.read_texts(tmp_path / "x.csv")
    assert [(i.id, i.text) for i in items] == [(2, "hello"), (3, "bye")]
    items, _ = classify.read_texts(tmp_path / "x.csv", text_column="other", id_column="message")
    assert [(i.id, i.text) for i in items] == [("hello", "1"), ("bye", "2")]
    (tmp_path / "y.tsv").write_text("spam\tWIN now\nham\thi mum\n", encoding="utf-8")
    items, _ = classify.read_texts(tmp_path / "y.tsv", header=False, text_column="2", label_column="1",
                                   labelled=True)
    assert [(i.text, i.label) for i in items] == [("WIN now", "spam"), ("hi mum", "ham")]


def test_reader_errors_name_the_line(tmp_path):
    cases = {
        "bad.csv": (b'id,text\n1,ok\n2,"broken"quote\n', 3, "malformed CSV row"),
        "short.csv": (b"id,text\n1,ok\n2\n", 3, "expected 2 fields"),
        "bad.jsonl": (b'{"text": "ok"}\n{"text": oops}\n', 2, "not valid JSON"),
        "list.jsonl": (b'{"text": "ok"}\n["text"]\n', 2, "expected a JSON object"),
        "latin1.txt": (b"fine\ncaf\xe9 au lait\n", 2, "not valid UTF-8 (byte 0xe9 at column 4)"),
        "quote.csv": (b'id,text\n1,"never closed\n2,x\n', 2, "malformed CSV row"),
    }
    for name, (data, line, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InputFormatError) as err:
            tabular.read_table(tmp_path / name)
        assert err.value.line == line, name
        assert message in str(err.value) and f"{name}:{line}:" in str(err.value), name


def test_bad_item_and_example_files(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(InputFormatError, match="no rows to classify"):
        classify.read_texts(tmp_path / "empty.txt")
    (tmp_path / "nolabel.csv").write_text("text\nhello\n", encoding="utf-8")
    with pytest.raises(InputFormatError, match="no label column 'label'"):
        classify.read_examples(tmp_path / "nolabel.csv")
    (tmp_path / "header_only.csv").write_text("text,label\n", encoding="utf-8")
    with pytest.raises(InputFormatError, match="no examples"):
        classify.read_examples(tmp_path / "header_only.csv")
    with pytest.raises(InputFormatError, match="no text column 'body'"):
        classify.read_texts(tmp_path / "nolabel.csv", text_column="body")
    (tmp_path / "blank.csv").write_text("text,label\nhello,\n", encoding="utf-8")
    with pytest.raises(InputFormatError, match="empty label") as err:
        classify.read_examples(tmp_path / "blank.csv")
    assert err.value.line == 2
    (tmp_path / "mixed.jsonl").write_text('{"text": "a"}\n{"body": "b"}\n', encoding="utf-8")
    with pytest.raises(InputFormatError, match="no text column 'text' in this record") as err:
        classify.read_texts(tmp_path / "mixed.jsonl")
    assert err.value.line == 2


# ---------------------------------------------------------------- labels, examples, template (pure)


def test_labels_parsing_and_checks():
    assert classify.parse_labels(" spam , not spam ") == ["spam", "not spam"]
    with pytest.raises(UsageError, match="duplicate label"):
        classify.parse_labels("spam,ham,spam")
    with pytest.raises(UsageError, match="empty label"):
        classify.parse_labels("spam,,ham")
    with pytest.raises(UsageError, match="at least two"):
        classify.parse_labels("spam")
    ex = [classify.Example("a", "ham", 2), classify.Example("b", "spam", 3)]
    assert classify.resolve_labels(None, ex) == ["ham", "spam"]
    warnings: list[str] = []
    assert classify.resolve_labels(["ham", "spam", "eggs"], ex, warn=warnings.append) == ["ham", "spam", "eggs"]
    assert warnings == ["label 'eggs' has no examples in examples"]
    with pytest.raises(InputFormatError, match="example label 'spam' is not one of 'labels'") as err:
        classify.resolve_labels(["ham", "eggs"], ex, name="ex.csv")
    assert err.value.line == 3


def test_select_examples_balanced_deterministic_and_shuffled():
    ex = [classify.Example(f"h{i}", "ham") for i in range(20)] + [classify.Example(f"s{i}", "spam") for i in range(3)]
    chosen = classify.select_examples(ex, ["ham", "spam"], max_examples=6, seed=1)
    assert sorted(e.label for e in chosen) == ["ham", "ham", "ham", "spam", "spam", "spam"]
    assert chosen == classify.select_examples(ex, ["ham", "spam"], max_examples=6, seed=1)
    assert chosen != classify.select_examples(ex, ["ham", "spam"], max_examples=6, seed=2)
    # only 3 spam exist: the rest of the budget goes to ham
    assert sum(e.label == "spam" for e in classify.select_examples(ex, ["ham", "spam"], max_examples=10)) == 3
    assert classify.select_examples(ex, ["ham", "spam"], max_examples=None) == ex  # all, in file order


def test_template_parsing_and_rendering():
    t = fewshot.Template.parse(fewshot.DEFAULT_TEMPLATE)
    assert t.header_parts("Sort into {labels}.", ["a", "b"]) == ("Sort into a, b.", "\n\n")
    assert t.example("x {label} y", "b") == "Text: x {label} y\nLabel: b"  # inserted text is not re-scanned
    assert t.query("hello") == ("Text: hello\nLabel:", " ")
    custom = fewshot.Template.parse("Q: {text}\nA:{label}\n")  # no header, no space before the label
    assert custom.header_parts("ignored", ["a", "b"]) == ("", "")
    assert custom.query("hi") == ("Q: hi\nA:", "")
    for bad in ("no placeholders", "{text} then nothing", "Header {label}\n{text} {label}", "{text}\n{label} after"):
        with pytest.raises(UsageError):
            fewshot.Template.parse(bad)


def test_folds_and_holdout_are_stratified_and_fixed():
    gold = ["a"] * 10 + ["b"] * 5
    folds = classify.stratified_folds(gold, 5, seed=3)
    assert sorted(i for f in folds for i in f) == list(range(15))
    assert all(sum(gold[i] == "b" for i in f) == 1 for f in folds)
    assert folds == classify.stratified_folds(gold, 5, seed=3)
    train, test = classify.holdout_split(gold, 0.4, seed=0)
    assert sorted(train + test) == list(range(15))
    assert sum(gold[i] == "a" for i in test) == 4 and sum(gold[i] == "b" for i in test) == 2
    with pytest.raises(UsageError):
        classify.stratified_folds(gold, 1)
    with pytest.raises(UsageError):
        classify.holdout_split(gold, 1.5)


def test_logistic_regression_reaches_the_optimum():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (20, 5)) + 2, rng.normal(0, 1, (20, 5)) - 2, rng.normal(0, 1, (20, 5))])
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = [0] * 20 + [1] * 20 + [2] * 20
    lr = embedding.LogisticRegression(C=10.0).fit(X, y, 3)
    _, gW, gb = lr._objective(X, np.eye(3)[y], lr.W, lr.b)
    assert np.sqrt((gW ** 2).sum() + (gb ** 2).sum()) < 1e-4  # the gradient of the objective vanishes
    probs = lr.predict_proba(X)
    assert np.allclose(probs.sum(axis=1), 1)
    assert (probs.argmax(axis=1) == np.array(y)).mean() > 0.9
    again = embedding.LogisticRegression(C=10.0).fit(X, y, 3)
    assert np.array_equal(again.W, lr.W)  # deterministic


# ---------------------------------------------------------------- scoring with the real models

_EQUIVALENCE_SCRIPT = r"""
import json, os, sys
import numpy as np
from llmlocal import classify, loader
from llmlocal.classify import fewshot
items, _ = classify.read_texts(sys.argv[1], labelled=True)
examples = [classify.Example(i.text, i.label, i.line) for i in items[:20]]
texts = [i.text for i in items[20:26]]
out = {}
for name in ("smollm2-135m", "gemma3-270m-base"):
    loaded = loader.load(name, n_seq_max=64, extra_buffers=False)
    m = loaded.model
    for labels, exs in ((["ham", "spam"], examples), (["spam", "not spam"], []),
                        (["positive review", "positive outlook"], examples[:4])):
        if exs and labels != ["ham", "spam"]:
            exs = [classify.Example(e.text, labels[e.label == "spam"], e.line) for e in exs]
        clf = fewshot.PromptClassifier(m, labels, exs, parallel=8)
        tokens = [clf.prompt.item_tokens(t) for t in texts]
        cached = clf.scorer.score(tokens)
        naive = clf.scorer.score_naive(tokens)
        one = fewshot.PromptClassifier(m, labels, exs, parallel=1).scorer.score(tokens)
        out[f"{name} {labels}"] = {
            "cached": fewshot.softmax(cached).tolist(), "naive": fewshot.softmax(naive).tolist(),
            "parallel1": fewshot.softmax(one).tolist(),
            "label_tokens": clf.prompt.label_tokens, "prefix_tokens": len(clf.prompt.prefix)}
    loaded.close()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def equivalence(tmp_path_factory, _seed_blobs):
    """Cached, naive and one-at-a-time scores of 6 items, both models, from one subprocess (the naive
    way re-evaluates the 20-example prompt per item: 6 items, not 10, keep this to about 3 minutes).

    A subprocess because ggml reads GGML_CPU_TILED_MM once per process: batch-invariant kernels
    must be chosen before anything in the process evaluates a K-quant model (Gemma is Q4_K_M).
    """
    env = dict(os.environ, LLMLOCAL_HOME=str(_seed_blobs), GGML_CPU_TILED_MM="0")
    proc = subprocess.run([sys.executable, "-c", _EQUIVALENCE_SCRIPT, str(SAMPLE)], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["smollm2-135m", "gemma3-270m-base"])
@pytest.mark.parametrize("labels", [["ham", "spam"], ["spam", "not spam"], ["positive review", "positive outlook"]])
def test_cached_scoring_equals_naive_within_1e4(equivalence, model, labels):
    r = equivalence[f"{model} {labels}"]
    cached, naive, one = np.array(r["cached"]), np.array(r["naive"]), np.array(r["parallel1"])
    assert cached.shape == (6, len(labels))
    assert np.abs(cached - naive).max() < 1e-4
    assert np.abs(cached - one).max() < 1e-4  # batch-mates do not change an item's numbers
    assert np.allclose(cached.sum(axis=1), 1.0)


@pytest.mark.slow  # shares the equivalence fixture's subprocess (minutes)
def test_multi_token_labels_are_scored_whole(equivalence):
    r = equivalence["smollm2-135m ['spam', 'not spam']"]
    spam, not_spam = r["label_tokens"]
    assert len(spam) == 1 and len(not_spam) == 2 and not_spam[1] == spam[0]  # " not" " spam" vs " spam"
    r = equivalence["gemma3-270m-base ['positive review', 'positive outlook']"]
    a, b = r["label_tokens"]
    assert len(a) == len(b) == 2 and a[0] == b[0] and a[1] != b[1]  # shared first token " positive"
    probs = np.array(r["cached"])
    assert not np.allclose(probs[:, 0], 0.5)  # the second token decides, not a coin flip


@pytest.mark.slow
def test_classifier_in_process_smollm2(installed):
    """The library API: predictions in the label set, probabilities summing to 1, calibration."""

    rows = sample_rows()
    examples = [classify.Example(r["text"], r["label"]) for r in rows[:8]]
    items = [classify.Item(r["id"], r["text"]) for r in rows[30:36]]
    contexts = classify.open_contexts("smollm2-135m")
    try:
        settings = classify.Settings(method="prompt", calibrate=True, abstain_below=0.999)
        clf = classify.build_classifier(contexts, ["ham", "spam"], examples, settings)
        preds = classify.predict(clf, items, settings)
    finally:
        contexts.close()
    assert [p.id for p in preds] == [r["id"] for r in rows[30:36]]
    for p in preds:
        assert p.top in ("ham", "spam") and p.label in ("ham", "spam", "unknown")
        assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert p.confidence == max(p.probabilities.values())
        assert (p.label == "unknown") == (p.confidence < 0.999)
    assert set(clf.describe()["prior"]) == {"ham", "spam"}


def test_examples_that_do_not_fit_the_context_fail_with_counts(installed):
    from llmlocal import loader

    rows = sample_rows()
    examples = [classify.Example(r["text"], r["label"]) for r in rows]
    loaded = loader.load("smollm2-135m", n_seq_max=64, ctx=256)
    try:
        with pytest.raises(ContextOverflowError) as err:
            fewshot.PromptClassifier(loaded.model, ["ham", "spam"], examples)
    finally:
        loaded.close()
    message = str(err.value)
    assert "40 examples" in message and "the context holds 256" in message
    assert "'max_examples'" in err.value.hint  # the Python spelling: this is the core, not the CLI


# ---------------------------------------------------------------- the command line, end to end


@pytest.mark.slow
def test_cli_csv_in_csv_out_with_manifest(installed, files):
    out = files["dir"] / "pred.csv"
    result = run("classify", "-m", "smollm2-135m", "--method", "prompt", "-e", str(files["examples"]),
                 "--max-examples", "8", str(files["items_csv"]), "-o", str(out))
    assert result.exit_code == 0, result.output
    with open(out, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["id", "label", "confidence", "p_spam", "p_ham", "error"]  # labels in order of appearance
    assert [r["id"] for r in rows] == [r["id"] for r in sample_rows()[24:30]]  # input order
    for r in rows:
        assert r["label"] in ("ham", "spam")
        assert float(r["p_ham"]) + float(r["p_spam"]) == pytest.approx(1.0, abs=1e-5)
        assert float(r["confidence"]) == max(float(r["p_ham"]), float(r["p_spam"]))
    meta = json.loads((files["dir"] / "pred.csv.meta.json").read_text())
    assert meta["model"] == {"name": "smollm2-135m",
                             "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"}
    assert meta["labels"] == ["spam", "ham"]
    assert meta["examples"]["sha256"] == classify.sha256_text_source(files["examples"])
    assert len(meta["examples"]["lines_used"][0]) == 8
    prompt = meta["classifiers"][0]["prompt"]
    assert prompt["template"] == fewshot.DEFAULT_TEMPLATE and prompt["mode"] == "raw"
    assert meta["llmlocal_version"] and meta["llama_cpp_python_version"]


@pytest.mark.slow
def test_cli_jsonl_with_json_header_gemma_base(installed, files):
    result = run("classify", "-m", "gemma3-270m-base", "-l", "spam,not spam", "--json-header",
                 str(files["items_jsonl"]))
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0]["manifest"]["model"]["name"] == "gemma3-270m-base"
    assert lines[0]["manifest"]["labels"] == ["spam", "not spam"]
    preds = lines[1:]
    assert [p["id"] for p in preds] == [r["id"] for r in sample_rows()[24:29]]
    for p in preds:
        assert p["label"] in ("spam", "not spam")
        assert set(p["probabilities"]) == {"spam", "not spam"}
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_cli_stdin_plain_lines_and_show_prompt(installed, files):
    result = run("classify", "-l", "ham,spam", "--calibrate", "--abstain-below", "0.99",
                 input="WIN a FREE phone! Call 09061221061 now\nsee you at lunch\n")
    assert result.exit_code == 0, result.output
    preds = [json.loads(line) for line in result.stdout.splitlines()]
    assert [p["id"] for p in preds] == [1, 2]
    assert all(p["label"] in ("ham", "spam", "unknown") for p in preds)
    shown = run("classify", "-e", str(files["examples"]), "--max-examples", "2", "--show-prompt",
                str(files["items_csv"]))
    assert shown.exit_code == 0, shown.output
    first = sample_rows()[24]["text"]
    assert shown.stdout.startswith("Classify each text as one of: ")
    assert f"\n\nText: {first}\nLabel:\n--- end of prompt (its last character is ':', no newline)" in shown.stdout
    assert "label 'spam': scores ' spam' (1 token" in shown.stdout
    chat = run("classify", "-e", str(files["examples"]), "--max-examples", "2", "--show-prompt", "--chat",
               str(files["items_csv"]))
    assert chat.exit_code == 0, chat.output
    assert "<|im_start|>user\nClassify each text" in chat.stdout
    assert "Label:<|im_end|>\n<|im_start|>assistant\n--- end of prompt (its last character is a newline)" in chat.stdout
    assert "label 'spam': scores 'spam'" in chat.stdout
    base = run("classify", "-m", "gemma3-270m-base", "-l", "a,b", "--chat", "--show-prompt", input="x\n")
    assert base.exit_code == 2 and "no chat template" in base.output


@pytest.mark.slow
def test_cli_eval_k_fold_report_and_json(installed, files):
    result = run("eval", str(SAMPLE), "--k-fold", "2", "--max-examples", "4", "--json")
    assert result.exit_code == 0, result.output
    rep = json.loads(result.stdout)
    assert rep["n"] == 40 and rep["k_fold"] == 2 and rep["labels"] == ["spam", "ham"]
    assert rep["majority_baseline"] == pytest.approx({"label": "ham", "accuracy": 26 / 40,
                                                      "macro_f1": (2 * (26 / 40) / (1 + 26 / 40)) / 2})
    assert set(rep["per_label"]) == {"spam", "ham"} and 0 <= rep["ece"] <= 1
    assert sum(map(sum, rep["confusion_matrix"]["counts"])) == 40
    assert len(rep["manifest"]["examples"]["lines_used"]) == 2
    text = run("classify", "-e", str(files["examples"]), "--max-examples", "4", "--evaluate", str(files["test"]))
    assert text.exit_code == 0, text.output
    assert "accuracy: " in text.stdout and "confusion matrix (rows: gold, columns: predicted)" in text.stdout
    assert "majority baseline (always 'ham')" in text.stdout


@pytest.mark.slow
def test_cli_embed_method_and_embed_command(installed, files):
    result = run("eval", str(SAMPLE), "--method", "embed", "--holdout", "0.5", "--json")
    assert result.exit_code == 0, result.output
    rep = json.loads(result.stdout)
    assert rep["n"] == 20 and rep["method"] == "embed"
    assert rep["manifest"]["classifiers"][0]["classifier"] == "logistic-regression"
    one = files["dir"] / "one_each.tsv"
    one.write_text("label\ttext\nspam\tWIN cash now, call 0800\nham\tsee you at home\n", encoding="utf-8")
    result = run("classify", "-m", "gemma3-270m-base", "--method", "embed", "-e", str(one), str(files["items_jsonl"]))
    assert result.exit_code == 0, result.output
    preds = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(preds) == 5 and all(sum(p["probabilities"].values()) == pytest.approx(1, abs=1e-5) for p in preds)
    npy = files["dir"] / "vectors.npy"
    assert run("embed", str(files["items_csv"]), "-o", str(npy)).exit_code == 0
    vectors = np.load(npy)
    assert vectors.shape == (6, 576) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    out = run("embed", "-m", "gemma3-270m-base", str(files["items_jsonl"]))
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in sample_rows()[24:29]] and len(rows[0]["embedding"]) == 640


# ---------------------------------------------------------------- bad input through the command line


def test_cli_bad_input_errors(installed, files):
    d = files["dir"]
    (d / "nolabel.csv").write_text("text\nhello\n", encoding="utf-8")
    (d / "empty.tsv").write_text("label\ttext\n", encoding="utf-8")
    (d / "latin1.txt").write_bytes(b"ok line\ncaf\xe9\n")
    (d / "bad.csv").write_text('id,text\n1,fine\n2,"bad"row\n', encoding="utf-8")
    (d / "bad.jsonl").write_text('{"text": "fine"}\n{"text": \n', encoding="utf-8")
    (d / "notext.csv").write_text("id,body\n1,hello\n", encoding="utf-8")
    (d / "blank.txt").write_text("\n", encoding="utf-8")
    items = str(files["items_csv"])
    cases = [
        (["-e", str(d / "nolabel.csv"), items], 1, "nolabel.csv: no label column 'label'"),
        (["-e", str(d / "empty.tsv"), items], 1, "empty.tsv: no examples in the file"),
        (["-e", str(files["examples"]), "-l", "ham,eggs", items], 1,
         "example label 'spam' is not one of --labels (ham, eggs)"),
        (["-l", "spam,ham,spam", items], 2, "duplicate label(s): spam"),
        (["-l", "spam,ham", str(d / "latin1.txt")], 1, "latin1.txt:2: not valid UTF-8"),
        (["-l", "spam,ham", str(d / "bad.csv")], 1, "bad.csv:3: malformed CSV row"),
        (["-l", "spam,ham", str(d / "bad.jsonl")], 1, "bad.jsonl:2: not valid JSON"),
        (["-l", "spam,ham", "--text-column", "text", str(d / "notext.csv")], 1, "no text column 'text'"),
        (["-l", "spam,ham", str(d / "blank.txt")], 1, "blank.txt: no rows to classify"),
        (["-l", "spam,ham"], 1, "<stdin>: no rows to classify"),
        ([items], 2, "give --labels, or --examples"),
        (["-l", "a,b", "--k-fold", "3", items], 2, "use them with --evaluate FILE"),
        (["-l", "a,b", "--method", "embed", items], 2, "--method embed learns from labelled examples"),
        (["-l", "a,unknown", "--abstain-below", "0.5", items], 2, "is also a class label"),
        (["-l", "a,b", "-o", str(d / "out.tsv"), items], 2, "cannot tell the output format"),
    ]
    for args, code, message in cases:
        result = run("classify", *args, input="")
        assert result.exit_code == code, (args, result.output)
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output


@pytest.mark.slow
def test_cli_label_without_examples_warns(installed, files):
    result = run("classify", "-e", str(files["examples"]), "-l", "ham,spam,eggs", "--max-examples", "3",
                 str(files["items_jsonl"]))
    assert result.exit_code == 0, result.output
    assert "warning: label 'eggs' has no examples in" in result.stderr
    assert all(json.loads(line)["label"] in ("ham", "spam", "eggs") for line in result.stdout.splitlines())


def test_failed_run_leaves_no_partial_output(installed, files):
    """A job that cannot run (its prompt alone overflows the context) leaves the old output alone.
    (One item too long no longer fails the job: it gets an error row, see test_classify_auto.py.)"""
    out = files["dir"] / "pred.jsonl"
    out.write_text("previous results\n", encoding="utf-8")
    result = run("classify", "--method", "prompt", "--ctx", "256", "-e", str(files["examples"]),
                 str(files["items_csv"]), "-o", str(out))
    assert result.exit_code == 1, result.output
    assert "the context holds 256" in result.output and "the prompt does not fit" in result.output
    assert out.read_text(encoding="utf-8") == "previous results\n"  # untouched
    assert not (files["dir"] / "pred.jsonl.meta.json").exists()
    assert [p.name for p in files["dir"].iterdir() if p.name.startswith(".pred")] == []  # no temp file left


def _limit_file_size(limit: int):
    """For subprocess's preexec_fn: a write past ``limit`` bytes fails (EFBIG), as on a full disk."""
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_predictions_and_manifest_are_replaced_together(installed, files):
    """Issue #12: predictions were replaced, then the manifest; a disk filling in between left new
    predictions beside the old manifest. A file-size limit that the small predictions pass and the
    larger manifest does not fails the same way, for real, without root."""
    import hashlib

    out = files["dir"] / "pred.csv"
    base = ["classify", "-m", "smollm2-135m", "-e", str(files["examples"]), "--max-examples", "4", "-o", str(out)]
    first = run(*base, str(files["items_csv"]))
    assert first.exit_code == 0, first.output
    meta_path = files["dir"] / "pred.csv.meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta["output"] == {"path": str(out), "format": "csv", "sha256": hashlib.sha256(out.read_bytes()).hexdigest()}
    before = (out.read_bytes(), meta_path.read_bytes())
    assert len(before[0]) < 1000 < len(before[1])

    fewer = files["dir"] / "fewer.csv"
    fewer.write_text("".join(files["items_csv"].read_text(encoding="utf-8").splitlines(True)[:3]), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "llmlocal", *base, str(fewer)], capture_output=True, text=True,
                          preexec_fn=_limit_file_size(1000), env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 1, proc.stderr
    assert "Error: cannot write" in proc.stderr and "File too large" in proc.stderr, proc.stderr
    assert "hint: raise the file size limit" in proc.stderr and "Traceback" not in proc.stderr
    assert (out.read_bytes(), meta_path.read_bytes()) == before  # the old pair, both
    assert [p.name for p in files["dir"].iterdir() if p.name.startswith(".pred")] == []


def test_a_text_too_long_for_one_batch_is_embedded_in_pieces_and_the_job_goes_on(installed, files):
    """Issue #14: one 700-token comment stopped a whole --method embed job ("text 222 is 696 tokens").
    Now it is embedded in pieces whose vectors are averaged; its row says so, and so does the summary."""
    long_csv = files["dir"] / "long.csv"
    long_csv.write_text("id,text\na,short text\nb," + "word " * 700 + "\nc,\n", encoding="utf-8")
    out = files["dir"] / "long.jsonl"
    result = run("classify", "--method", "embed", "-e", str(files["examples"]), str(long_csv), "-o", str(out))
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    assert rows[1]["chunks"] == 2 and "chunks" not in rows[0] and rows[2]["label"] in ("ham", "spam")  # c: empty
    assert "(1 chunked)" in result.stderr
    meta = json.loads((files["dir"] / "long.jsonl.meta.json").read_text(encoding="utf-8"))
    assert meta["rows"] == {"failed": 0, "truncated": 0, "chunked": 1}
    vectors = files["dir"] / "long.npy"
    result = run("embed", str(long_csv), "-o", str(vectors))
    assert result.exit_code == 0, result.output
    assert "1 text(s) longer than a batch embedded in pieces" in result.stderr
    assert json.loads((files["dir"] / "long.npy.meta.json").read_text(encoding="utf-8"))["chunked"] == ["b"]


def test_embed_writes_ids_model_and_hash_beside_the_vectors(installed, files):
    """A .npy matrix cannot hold ids or say which model made it: FILE.meta.json does, with its hash."""
    import hashlib

    npy = files["dir"] / "vectors.npy"
    result = run("embed", str(files["items_csv"]), "-o", str(npy))
    assert result.exit_code == 0, result.output
    meta = json.loads((files["dir"] / "vectors.npy.meta.json").read_text())
    assert meta["ids"] == [r["id"] for r in sample_rows()[24:30]]
    assert meta["model"]["sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert meta["dimensions"] == 576 and meta["normalised"] is True
    assert meta["output"]["sha256"] == hashlib.sha256(npy.read_bytes()).hexdigest()


def test_an_output_that_is_an_input_is_refused(files):
    """`-o` naming the input (or the examples) would replace the user's data with predictions."""
    items, examples, texts = files["items_csv"], files["examples"], files["items_jsonl"]
    before = [f.read_bytes() for f in (items, examples, texts)]
    for args in (["classify", "-l", "spam,ham", str(items), "-o", str(items)],
                 ["classify", "-e", str(examples), str(items), "-o", str(examples), "--format", "csv"],
                 ["embed", str(texts), "-o", str(texts.parent / ".." / texts.parent.name / texts.name)]):
        result = run(*args)
        assert result.exit_code == 2, result.output
        assert "is also an input" in result.stderr and "hint: choose another output file" in result.stderr
    assert [f.read_bytes() for f in (items, examples, texts)] == before
