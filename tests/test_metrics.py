"""metrics.py against values worked out by hand (pure numpy: no model needed)."""

from __future__ import annotations

import math

import pytest

from llmlocal.classify import metrics

# Ten items, three labels. Gold and predicted, position by position:
GOLD = ["cat", "cat", "cat", "cat", "dog", "dog", "dog", "bird", "bird", "bird"]
PRED = ["cat", "cat", "dog", "cat", "dog", "cat", "dog", "bird", "dog", "unknown"]
LABELS = ["cat", "dog", "bird"]


def test_confusion_matrix_counts_and_abstain_column():
    matrix, columns = metrics.confusion_matrix(GOLD, PRED, LABELS)
    assert columns == ["cat", "dog", "bird", "unknown"]
    # rows gold cat/dog/bird; columns predicted cat/dog/bird/unknown
    assert matrix.tolist() == [[3, 1, 0, 0],
                               [1, 2, 0, 0],
                               [0, 1, 1, 1]]


def test_accuracy_per_label_and_macro_f1_by_hand():
    assert metrics.accuracy(GOLD, PRED) == pytest.approx(6 / 10)
    scores = metrics.per_label(GOLD, PRED, LABELS)
    # cat: tp 3, predicted 4, support 4 -> P 3/4, R 3/4, F1 3/4
    assert scores["cat"] == pytest.approx({"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4})
    # dog: tp 2, predicted 4, support 3 -> P 1/2, R 2/3, F1 = 2*(1/2)(2/3)/(1/2+2/3) = 4/7
    assert scores["dog"] == pytest.approx({"precision": 0.5, "recall": 2 / 3, "f1": 4 / 7, "support": 3})
    # bird: tp 1, predicted 1, support 3 -> P 1, R 1/3, F1 = 2*(1/3)/(4/3) = 1/2
    assert scores["bird"] == pytest.approx({"precision": 1.0, "recall": 1 / 3, "f1": 0.5, "support": 3})
    assert metrics.macro_f1(GOLD, PRED, LABELS) == pytest.approx((0.75 + 4 / 7 + 0.5) / 3)


def test_label_never_predicted_or_never_seen_scores_zero():
    scores = metrics.per_label(["a", "a"], ["a", "a"], ["a", "b"])
    assert scores["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert metrics.macro_f1(["a", "a"], ["a", "a"], ["a", "b"]) == pytest.approx(0.5)


def test_majority_baseline():
    base = metrics.majority_baseline(GOLD, LABELS)
    assert base["label"] == "cat"
    assert base["accuracy"] == pytest.approx(0.4)
    # always "cat": cat P 4/10, R 1, F1 = 2*0.4/1.4 = 4/7; dog and bird 0
    assert base["macro_f1"] == pytest.approx((4 / 7) / 3)
    tie = metrics.majority_baseline(["x", "y"], ["y", "x"])
    assert tie["label"] == "y"  # a tie goes to the first label of the label set


def test_expected_calibration_error_by_hand():
    conf = [0.95, 0.9, 0.85, 0.55, 0.6, 0.7, 0.3, 1.0]
    correct = [True, True, False, True, False, True, False, True]
    # bins (m-1)/10 < c <= m/10:
    #   (0.2,0.3]: 0.3 wrong        -> |0 - 0.3|            = 0.3  (1 item)
    #   (0.5,0.6]: 0.55 ok, 0.6 bad -> |0.5 - 0.575|        = 0.075 (2)
    #   (0.6,0.7]: 0.7 ok           -> |1 - 0.7|            = 0.3  (1)
    #   (0.8,0.9]: 0.85 bad, 0.9 ok -> |0.5 - 0.875|        = 0.375 (2)
    #   (0.9,1.0]: 0.95, 1.0 ok     -> |1 - 0.975|          = 0.025 (2)
    expected = (1 * 0.3 + 2 * 0.075 + 1 * 0.3 + 2 * 0.375 + 2 * 0.025) / 8
    assert metrics.expected_calibration_error(conf, correct) == pytest.approx(expected)
    bins = metrics.calibration_bins(conf, correct)
    assert [b["count"] for b in bins] == [0, 0, 1, 0, 0, 2, 1, 0, 2, 2]
    assert bins[6]["confidence"] == pytest.approx(0.7)  # 0.7 stays in (0.6, 0.7] despite 0.7*10 > 7


def test_perfectly_calibrated_and_empty():
    assert metrics.expected_calibration_error([1.0, 1.0], [True, True]) == 0.0
    assert metrics.expected_calibration_error([], []) == 0.0
    with pytest.raises(ValueError):
        metrics.expected_calibration_error([1.2], [True])


def test_report_with_abstention_and_text_format():
    conf = [0.9, 0.8, 0.6, 0.7, 0.9, 0.55, 0.8, 0.9, 0.6, 0.4]
    top = PRED[:-1] + ["bird"]  # the abstained item's most probable label was right
    rep = metrics.report(GOLD, PRED, LABELS, confidence=conf, top=top, abstain_label="unknown")
    assert rep["n"] == 10 and rep["abstained"] == 1
    assert rep["coverage"] == pytest.approx(0.9)
    assert rep["accuracy_answered"] == pytest.approx(6 / 9)
    correct_top = [g == t for g, t in zip(GOLD, top)]
    assert rep["ece"] == pytest.approx(metrics.expected_calibration_error(conf, correct_top))
    text = metrics.format_report(rep)
    assert "accuracy: 0.6000   macro-F1: 0.6071" in text
    assert "majority baseline (always 'cat'): accuracy 0.4000" in text
    lines = text.splitlines()
    i = lines.index("confusion matrix (rows: gold, columns: predicted)")
    assert lines[i + 1].split() == ["cat", "dog", "bird", "unknown"]
    assert lines[i + 4].split() == ["bird", "0", "1", "1", "1"]
    assert math.isclose(rep["macro_f1"], 0.6071, abs_tol=5e-5)


def test_mismatched_lengths_and_unknown_gold_are_refused():
    with pytest.raises(ValueError):
        metrics.accuracy(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="not in the label set"):
        metrics.confusion_matrix(["z"], ["a"], ["a", "b"])
