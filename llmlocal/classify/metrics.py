"""Classification metrics in plain numpy: accuracy, per-label precision/recall/F1, macro-F1, the
confusion matrix, the majority-class baseline and expected calibration error.

Conventions (those of scikit-learn, so numbers can be compared):

- ``labels`` is the classifier's label set, in order. Macro-F1 averages F1 over exactly those
  labels, including one that never occurs in the gold data (its F1 is then 0).
- A predicted value outside ``labels`` (an abstention such as ``unknown``) is always wrong; it gets
  its own column in the confusion matrix but is not a class of its own.
- Precision of a label never predicted, recall of a label never seen, and F1 when both are 0 are 0.
- ECE (Guo et al. 2017): equal-width confidence bins ``((m-1)/M, m/M]``, ``sum_m |B_m|/n *
  |accuracy(B_m) - mean confidence(B_m)|``, with the top-label probability as confidence.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np


def accuracy(gold: Sequence[str], pred: Sequence[str]) -> float:
    _check(gold, pred)
    return float(np.mean([g == p for g, p in zip(gold, pred)])) if gold else 0.0


def confusion_matrix(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Counts with gold labels as rows and predictions as columns.

    Returns the matrix and the column names: ``labels`` followed by any predicted value outside
    them (in order of first appearance), so abstentions are visible.
    """
    _check(gold, pred)
    unknown_gold = sorted({g for g in gold if g not in labels})
    if unknown_gold:
        raise ValueError(f"gold label(s) not in the label set: {', '.join(unknown_gold)}")
    columns = list(labels) + [p for p in dict.fromkeys(pred) if p not in labels]
    row = {label: i for i, label in enumerate(labels)}
    col = {label: i for i, label in enumerate(columns)}
    matrix = np.zeros((len(labels), len(columns)), dtype=np.int64)
    for g, p in zip(gold, pred):
        matrix[row[g], col[p]] += 1
    return matrix, columns


def per_label(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support (gold count) of each label."""
    matrix, _ = confusion_matrix(gold, pred, labels)
    out = {}
    for i, label in enumerate(labels):
        tp = int(matrix[i, i])
        predicted = int(matrix[:, i].sum())
        support = int(matrix[i].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return out


def macro_f1(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> float:
    scores = per_label(gold, pred, labels)
    return float(np.mean([s["f1"] for s in scores.values()])) if scores else 0.0


def majority_baseline(gold: Sequence[str], labels: Sequence[str]) -> dict:
    """What always answering the most frequent gold label scores (ties: the first in ``labels``)."""
    counts = Counter(gold)
    best = max(labels, key=lambda label: (counts[label], -list(labels).index(label)))
    pred = [best] * len(gold)
    return {"label": best, "accuracy": accuracy(gold, pred), "macro_f1": macro_f1(gold, pred, labels)}


def calibration_bins(confidence: Sequence[float], correct: Sequence[bool], n_bins: int = 10) -> list[dict]:
    """Per equal-width bin ``((m-1)/M, m/M]``: count, mean confidence, accuracy (empty bins included)."""
    conf = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    if conf.shape != hit.shape:
        raise ValueError("confidence and correct differ in length")
    if conf.size and (conf.min() < 0 or conf.max() > 1):
        raise ValueError("confidences must be in [0, 1]")
    # ceil(c*M) - 1 puts c in ((m-1)/M, m/M]; the tolerance keeps 0.7 (0.7*10 = 7.000000000000001
    # in binary floating point) in the bin it names. A confidence of exactly 0 joins the first bin.
    index = np.clip(np.ceil(conf * n_bins - 1e-9).astype(np.int64) - 1, 0, n_bins - 1)
    bins = []
    for m in range(n_bins):
        mask = index == m
        n = int(mask.sum())
        bins.append({
            "lower": m / n_bins, "upper": (m + 1) / n_bins, "count": n,
            "confidence": float(conf[mask].mean()) if n else None,
            "accuracy": float(hit[mask].mean()) if n else None,
        })
    return bins


def expected_calibration_error(confidence: Sequence[float], correct: Sequence[bool], n_bins: int = 10) -> float:
    bins = calibration_bins(confidence, correct, n_bins)
    total = sum(b["count"] for b in bins)
    if not total:
        return 0.0
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]))


def report(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str], *,
           confidence: Sequence[float] | None = None, top: Sequence[str] | None = None,
           abstain_label: str | None = None, n_bins: int = 10) -> dict:
    """Every metric of an evaluation as one JSON-ready dict.

    ``pred`` is the final answer (possibly an abstention); ``top`` the most probable label before
    abstaining and ``confidence`` its probability, which is what ECE measures.
    """
    matrix, columns = confusion_matrix(gold, pred, labels)
    out = {
        "n": len(gold),
        "labels": list(labels),
        "accuracy": accuracy(gold, pred),
        "macro_f1": macro_f1(gold, pred, labels),
        "per_label": per_label(gold, pred, labels),
        "confusion_matrix": {"rows": list(labels), "columns": columns, "counts": matrix.tolist()},
        "majority_baseline": majority_baseline(gold, labels),
    }
    if abstain_label is not None:
        abstained = sum(p == abstain_label for p in pred)
        answered = [(g, p) for g, p in zip(gold, pred) if p != abstain_label]
        out["abstained"] = abstained
        out["coverage"] = 1 - abstained / len(gold) if gold else 0.0
        out["accuracy_answered"] = (sum(g == p for g, p in answered) / len(answered)) if answered else None
    if confidence is not None:
        top = pred if top is None else top
        correct = [g == t for g, t in zip(gold, top)]
        out["ece"] = expected_calibration_error(confidence, correct, n_bins)
        out["calibration_bins"] = calibration_bins(confidence, correct, n_bins)
    return out


def format_report(rep: dict) -> str:
    """The report as text: summary lines, a per-label table and the confusion matrix."""
    lines = [f"items: {rep['n']}"]
    base = rep["majority_baseline"]
    lines.append(f"accuracy: {rep['accuracy']:.4f}   macro-F1: {rep['macro_f1']:.4f}")
    lines.append(f"majority baseline (always '{base['label']}'): accuracy {base['accuracy']:.4f}, "
                 f"macro-F1 {base['macro_f1']:.4f}")
    if "ece" in rep:
        lines.append(f"expected calibration error (10 bins): {rep['ece']:.4f}")
    if "abstained" in rep:
        answered = rep["accuracy_answered"]
        lines.append(f"abstained: {rep['abstained']} (coverage {rep['coverage']:.4f}; accuracy on answered "
                     + (f"{answered:.4f})" if answered is not None else "n/a)"))
    lines.append("")
    table = [("label", "precision", "recall", "f1", "support")]
    for label, s in rep["per_label"].items():
        table.append((label, f"{s['precision']:.4f}", f"{s['recall']:.4f}", f"{s['f1']:.4f}", str(s["support"])))
    lines += _table(table)
    lines.append("")
    cm = rep["confusion_matrix"]
    lines.append("confusion matrix (rows: gold, columns: predicted)")
    grid = [("",) + tuple(cm["columns"])]
    grid += [(label,) + tuple(str(c) for c in counts) for label, counts in zip(cm["rows"], cm["counts"])]
    lines += _table(grid)
    return "\n".join(lines)


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    """First column left-aligned, the numbers right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]).rstrip()
            for r in rows]


def _check(gold: Sequence[str], pred: Sequence[str]) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold labels but {len(pred)} predictions")
