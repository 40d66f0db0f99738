"""``llmlocal classify``, ``eval`` and ``embed``: read labelled and unlabelled texts, build a
classifier (the few-shot prompt method of fewshot.py, or the embedding method of embedding.py),
predict, evaluate (k-fold, hold-out) and write predictions with a manifest.
"""

from __future__ import annotations

import json
import logging
import random
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from .. import tabular
from ..errors import InputFormatError, UsageError, option
from .auto import CombinedClassifier, choose, fold_order
from .embedding import EmbeddingClassifier, Embeddings
from .fewshot import Admission, FewShotPrompt, Progress, PromptClassifier, Template
from .types import Example, Item, Prediction

if TYPE_CHECKING:
    from ..runtime import Model

# auto: chosen per job by cross-validation over the examples (auto.py); combined: the calibrated
# prompt and the embeddings together (auto.CombinedClassifier).
METHODS = ("auto", "prompt", "embed", "combined")
PROMPT_METHODS = ("auto", "prompt", "combined")  # the methods --template, --instructions, --chat shape
FAILED = "(failed)"  # how a row that could not be classified appears in an evaluation

Warn = Callable[[str], None]


def _stderr_warning(message: str) -> None:
    logging.getLogger(__name__).warning("%s", message)  # the CLI shows it as a warning: line


# ---------------------------------------------------------------- reading


def parse_labels(spec: str) -> list[str]:
    """``"spam, not spam"`` -> ``["spam", "not spam"]``; empty or duplicate labels are refused."""
    labels = [part.strip() for part in spec.split(",")]
    if any(not label for label in labels):
        raise UsageError(f"{option('labels')} {spec!r} has an empty label",
                         hint=f'separate labels by commas: {option("labels")} "spam,ham"')
    return check_labels(labels)


def check_labels(labels: Sequence[str]) -> list[str]:
    dup = sorted(label for label, n in Counter(labels).items() if n > 1)
    if dup:
        raise UsageError(f"duplicate label(s): {', '.join(dup)}")
    if len(labels) < 2:
        raise UsageError("classification needs at least two labels")
    return list(labels)


def _column(table: tabular.Table, wanted: str | None, default: str, *, role: str) -> str | None:
    """The column to read: ``wanted`` (must exist), else ``default`` if present, else None."""
    if wanted is not None:
        if table.columns is not None and wanted not in table.columns:
            raise InputFormatError(table.name, f"no {role} column '{wanted}' (columns: {', '.join(table.columns)})")
        return wanted
    return default if table.has_column(default) else None


def _text_value(table: tabular.Table, row: tabular.Row, column: str, role: str) -> str:
    if column not in row.values:
        raise InputFormatError(table.name, f"no {role} column '{column}' in this record", line=row.line)
    value = row.values[column]
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise InputFormatError(table.name, f"the {role} column '{column}' holds {type(value).__name__}, not text",
                           line=row.line)


def read_texts(source: str | Path | IO[bytes] | None, *, format: str | None = None, header: bool = True,
               text_column: str | None = None, id_column: str | None = None,
               label_column: str | None = None, labelled: bool = False) -> tuple[list[Item], tabular.Table]:
    """Items to classify (with gold labels when ``labelled``), in input order.

    Text: ``text_column``, else the column ``text``, else the first column. Id: ``id_column``,
    else the column ``id``, else the line number. Gold label (``labelled``): ``label_column``,
    else ``label``.
    """
    table = tabular.read_table(source, format=format, header=header)
    if not table.rows:
        raise InputFormatError(table.name, "no rows to classify" if not labelled else "no labelled rows")
    assert table.columns is not None  # known once a row has been read
    text_col = _column(table, text_column, "text", role="text")
    if text_col is None:
        text_col = table.columns[0]
        if labelled and text_col == (label_column or "label") and len(table.columns) > 1:
            text_col = table.columns[1]
    id_col = _column(table, id_column, "id", role="id")
    label_col = None
    if labelled:
        label_col = _column(table, label_column, "label", role="label")
        if label_col is None:
            raise InputFormatError(table.name, "no label column 'label' (columns: " + ", ".join(table.columns or [])
                                   + "); name it with --label-column")
    items = []
    for row in table.rows:
        text = _text_value(table, row, text_col, "text")
        ident: Any = row.line
        if id_col is not None:
            if id_col not in row.values:
                raise InputFormatError(table.name, f"no id column '{id_col}' in this record", line=row.line)
            ident = row.values[id_col]
        gold = None
        if label_col is not None:
            gold = _text_value(table, row, label_col, "label").strip()
            if not gold:
                raise InputFormatError(table.name, "empty label", line=row.line)
        items.append(Item(id=ident, text=text, line=row.line, label=gold))
    return items, table


def read_examples(source: str | Path | IO[bytes], *, format: str | None = None, header: bool = True,
                  text_column: str | None = None, label_column: str | None = None) -> list[Example]:
    """Labelled examples (columns ``text`` and ``label`` unless named otherwise)."""
    try:
        items, table = read_texts(source, format=format, header=header, text_column=text_column,
                                  label_column=label_column, labelled=True)
    except InputFormatError as exc:
        if exc.problem == "no labelled rows":
            raise InputFormatError(exc.path, "no examples in the file") from None
        raise
    return [Example(text=i.text, label=i.label or "", line=i.line) for i in items]


def resolve_labels(labels: Sequence[str] | None, examples: Sequence[Example], *, name: str = "examples",
                   warn: Warn = _stderr_warning) -> list[str]:
    """The label set: ``labels`` if given (checked against the examples), else the examples' own."""
    if labels is None:
        if not examples:
            raise UsageError(f"give {option('labels')}, or {option('examples')} to take the labels from",
                             hint=f'zero-shot: {option("labels")} "spam,ham"')
        return check_labels(list(dict.fromkeys(e.label for e in examples)))
    labels = check_labels(labels)
    for e in examples:
        if e.label not in labels:
            raise InputFormatError(name, f"example label '{e.label}' is not one of {option('labels')} "
                                   f"({', '.join(labels)})", line=e.line)
    if examples:
        seen = {e.label for e in examples}
        for label in labels:
            if label not in seen:
                warn(f"label '{label}' has no examples in {name}")
    return labels


def select_examples(examples: Sequence[Example], labels: Sequence[str], *, max_examples: int | None,
                    seed: int = 0) -> list[Example]:
    """At most ``max_examples``, balanced across labels, drawn and ordered with a fixed seed.

    Each label's examples are shuffled, then taken in turn (label 1, label 2, ...) until the budget
    is spent, and the chosen set is shuffled again so the prompt does not alternate predictably
    (few-shot prompts copy such patterns). Without a budget every example is used, in file order.
    build_classifier then lays them out fold after fold (auto.fold_order), the order every method uses.
    """
    if max_examples is None:
        return list(examples)
    if max_examples < 0:
        raise UsageError(f"{option('max_examples')} must be >= 0")
    rng = random.Random(seed)
    pools = {label: [e for e in examples if e.label == label] for label in labels}
    for pool in pools.values():
        rng.shuffle(pool)
    chosen: list[Example] = []
    depth = 0
    budget = max_examples
    while len(chosen) < budget and any(depth < len(p) for p in pools.values()):
        for label in labels:
            if len(chosen) < budget and depth < len(pools[label]):
                chosen.append(pools[label][depth])
        depth += 1
    rng.shuffle(chosen)
    return chosen


Classifier = PromptClassifier | EmbeddingClassifier | CombinedClassifier


@dataclass
class Settings:
    """Everything that shapes a classifier besides the model and the examples."""

    method: str = "auto"
    template: Template | None = None
    instructions: str | None = None
    chat: bool | None = None  # None: see default_chat()
    calibrate: bool = False
    max_examples: int | None = None
    seed: int = 0
    abstain_below: float | None = None
    abstain_label: str = "unknown"
    parallel: int = 8
    C: float = 10.0
    truncate: bool = False  # prompt method: shorten an item that does not fit, instead of an error row

    def validate(self, labels: Sequence[str] | None = None) -> None:
        if self.method not in METHODS:
            raise UsageError(f"unknown method '{self.method}' (use one of {', '.join(METHODS)})")
        if self.calibrate and self.method != "prompt":
            raise UsageError(f"{option('calibrate')} applies to the prompt method, not {option('method')} "
                             f"{self.method} (auto and combined calibrate on their own)",
                             hint=f"use {option('method')} prompt {option('calibrate')}")
        if self.method == "embed":
            if self.template is not None or self.instructions is not None:
                raise UsageError(f"{option('template')} and {option('instructions')} apply to the prompt method, "
                                 f"not {option('method')} embed")
        if self.abstain_below is not None and not 0 <= self.abstain_below <= 1:
            raise UsageError(f"{option('abstain_below')} must be a probability in [0, 1]")
        if labels is not None and self.abstain_label in labels:
            raise UsageError(f"the abstain label '{self.abstain_label}' is also a class label",
                             hint=f"choose another with {option('abstain_label')}")
        if self.parallel < 1:
            raise UsageError(f"{option('parallel')} must be at least 1")
        if self.max_examples is not None and self.max_examples < 0:
            raise UsageError(f"{option('max_examples')} must be >= 0")


def default_chat(model: Model) -> bool:
    """Whether to wrap the prompt in the model's chat template when neither --raw nor --chat is given.

    Raw text, always: measured on SMS spam with SmolLM2-135M-Instruct (benchmarks/sms_eval.py,
    reported in the README), the raw few-shot prompt scored as well as or better than the same
    block in a user turn with the label as the assistant's reply. Base models have no template.
    """
    return False


class Contexts:
    """The model contexts a job uses, each loaded on first use: ``prompt`` (logits and the cached
    prompt prefix) and ``embed`` (pooled embeddings). Two contexts of one model file: the weights
    are memory-mapped, so the second costs its KV cache, not another copy of the model.

    ``open_context(kind)`` loads one (see :func:`load_options`); ``close`` frees what was loaded.
    """

    def __init__(self, open_context: Callable[[str], Any], *, model_of: Callable[[Any], Model] | None = None,
                 close: Callable[[Any], None] | None = None) -> None:
        self._open, self._model_of, self._close = open_context, model_of or (lambda c: c), close
        self._loaded: dict[str, Any] = {}

    def __call__(self, kind: str) -> Model:
        if kind not in self._loaded:
            self._loaded[kind] = self._open(kind)
        return self._model_of(self._loaded[kind])

    def loaded(self) -> list[Any]:
        return list(self._loaded.values())

    def close(self) -> None:
        while self._loaded:
            _, handle = self._loaded.popitem()
            if self._close is not None:
                self._close(handle)


def build_classifier(contexts: Callable[[str], Model], labels: Sequence[str], examples: Sequence[Example],
                     settings: Settings, *, embedding_cache: dict | None = None) -> Classifier:
    """A classifier from (already selected) examples; ``auto`` is resolved here, by cross-validation
    over them (its Choice is kept as the classifier's ``choice``)."""
    if settings.method in ("embed", "combined") and not examples:
        raise UsageError(f"{option('method')} {settings.method} needs labelled examples ({option('examples')} FILE)")
    cache = embedding_cache if embedding_cache is not None else {}

    def make_prompt(model: Model, exs: Sequence[Example], calibrate: bool, share: bool = False) -> PromptClassifier:
        chat = default_chat(model) if settings.chat is None else settings.chat
        return PromptClassifier(model, labels, exs, template=settings.template, instructions=settings.instructions,
                                chat=chat, calibrate=calibrate, parallel=settings.parallel, share=share)

    # Every method sees the examples in auto's fold-after-fold order (each quarter of the prompt
    # balanced across labels), so --method prompt is exactly the prompt auto scores and may choose.
    examples, folds = fold_order(examples, labels, seed=settings.seed)
    method, choice, whole = settings.method, None, None
    if method == "auto":
        embed_ok = bool(examples) and all(any(e.label == label for e in examples) for label in labels)
        choice, whole = choose(contexts, labels, examples, folds, make_prompt=make_prompt, embedding_cache=cache,
                               C=settings.C, embed_ok=embed_ok)
        method = choice.method

    def prompt_classifier(calibrate: bool) -> PromptClassifier:
        if whole is not None:  # auto's prompt over the same examples, its prefix already evaluated
            whole.calibrate = calibrate
            return whole
        return make_prompt(contexts("prompt"), examples, calibrate)

    clf: Classifier
    if method == "embed":
        clf = EmbeddingClassifier(contexts("embed"), labels, examples, C=settings.C, cache=cache)
    elif method == "combined":
        clf = CombinedClassifier(prompt_classifier(True),
                                 EmbeddingClassifier(contexts("embed"), labels, examples, C=settings.C, cache=cache))
    else:
        clf = prompt_classifier(settings.calibrate or method == "calibrated")
    clf.choice = choice
    return clf


def describe(clf: Classifier) -> dict:
    """The classifier's own description, with auto's choice when auto made it."""
    out = clf.describe()
    choice = getattr(clf, "choice", None)
    if choice is not None:
        out["auto"] = choice.as_dict()
    return out


def item_name(item: Item, source: str | None = None) -> str:
    """How messages name an item: its id and the input line it came from (the list index means nothing to users)."""
    where = f"line {item.line}" + (f" of {source}" if source else "") if item.line is not None else ""
    return f"item {json.dumps(item.id, ensure_ascii=False, default=str)}" + (f" ({where})" if where else "")


def predict(classifier: Classifier, items: Sequence[Item], settings: Settings, *,
            progress: Progress | None = None, source: str | None = None) -> list[Prediction]:
    """Predictions for ``items``, in order, with abstention applied (``source``: their file, for messages).

    An item the prompt cannot hold after the examples gets an error row (or, with
    ``settings.truncate``, is scored on its start and flagged); the others go on.
    """
    if not items:
        return []
    texts = [i.text for i in items]
    prompt_part = classifier.prompt if isinstance(classifier, CombinedClassifier) else classifier
    if isinstance(prompt_part, PromptClassifier):
        admitted = prompt_part.admit(texts, truncate=settings.truncate)
    else:
        admitted = [Admission(t) for t in texts]  # embeddings take any length
    ok = [n for n, a in enumerate(admitted) if a.error is None]
    scored = [admitted[n].text or "" for n in ok]
    if isinstance(classifier, CombinedClassifier):
        probs = classifier.predict_proba([texts[n] for n in ok], progress=progress, prompt_texts=scored)
    else:
        probs = classifier.predict_proba(scored, progress=progress)
    embed_part = classifier.embed if isinstance(classifier, CombinedClassifier) else classifier
    chunks = embed_part.chunks([texts[n] for n in ok]) if isinstance(embed_part, EmbeddingClassifier) else [1] * len(ok)
    labels = classifier.labels
    out: list[Prediction | None] = [None] * len(items)
    for n, row, pieces in zip(ok, probs, chunks):
        best = int(np.argmax(row))
        confidence = float(row[best])
        answer = labels[best]
        if settings.abstain_below is not None and confidence < settings.abstain_below:
            answer = settings.abstain_label
        out[n] = Prediction(id=items[n].id, label=answer, confidence=round(confidence, 6),
                            probabilities={label: round(float(p), 6) for label, p in zip(labels, row)},
                            top=labels[best], truncated=admitted[n].truncated, chunks=pieces)
    for n, a in enumerate(admitted):
        if a.error is not None:
            err = a.error.about(item_name(items[n], source))
            out[n] = Prediction(id=items[n].id, label=None, confidence=None, probabilities=None, top=None,
                                error={"type": "context_overflow", "message": str(err), "hint": err.hint})
    return [p for p in out if p is not None]


# ---------------------------------------------------------------- evaluation


def stratified_folds(gold: Sequence[str], k: int, *, seed: int = 0) -> list[list[int]]:
    """``k`` folds of row indices with each label spread evenly over them (fixed seed)."""
    if k < 2:
        raise UsageError(f"{option('k_fold')} needs K >= 2")
    if k > len(gold):
        raise UsageError(f"{option('k_fold')} {k} is more folds than the {len(gold)} labelled rows")
    rng = random.Random(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    offset = 0
    for label in dict.fromkeys(gold):
        idx = [i for i, g in enumerate(gold) if g == label]
        rng.shuffle(idx)
        for n, i in enumerate(idx):
            folds[(offset + n) % k].append(i)
        offset += len(idx)  # the next label starts where this one stopped, so folds stay even in size
    return [sorted(f) for f in folds]


def holdout_split(gold: Sequence[str], fraction: float, *, seed: int = 0) -> tuple[list[int], list[int]]:
    """(example rows, test rows): ``fraction`` of each label held out for testing (fixed seed)."""
    if not 0 < fraction < 1:
        raise UsageError(f"{option('holdout')} must be a fraction between 0 and 1")
    rng = random.Random(seed)
    train, test = [], []
    for label in dict.fromkeys(gold):
        idx = [i for i, g in enumerate(gold) if g == label]
        rng.shuffle(idx)
        n_test = int(round(fraction * len(idx)))
        if len(idx) > 1:
            n_test = min(max(n_test, 1), len(idx) - 1)  # both sides see every label that has two rows
        test += idx[:n_test]
        train += idx[n_test:]
    if not test:
        raise UsageError(f"{option('holdout')} {fraction} leaves no rows to test on")
    return sorted(train), sorted(test)


@dataclass
class Job:
    """A classification or evaluation request with its inputs read and checked; no model yet.

    ``labels`` is final (from --labels or the examples). With ``evaluate`` the items carry gold
    labels; with ``k_fold`` or ``holdout`` they are also the pool the examples are drawn from.
    """

    items: list[Item]
    labels: list[str]
    examples: list[Example] = field(default_factory=list)
    settings: Settings = field(default_factory=Settings)
    evaluate: bool = False
    k_fold: int | None = None
    holdout: float | None = None
    input_path: str | None = None  # None: stdin
    examples_path: str | None = None
    template_path: str | None = None

def load_options(kind: str) -> dict:
    """Keyword arguments for ``loader.load``: the context of ``kind`` (``"embed"``, or ``"prompt"``)."""
    if kind == "embed":
        return {"embeddings": True, "n_seq_max": 16}
    # Sequence 0 holds the prompt prefix, the last one ballast; the rest are per-item copies.
    # No repacked weights: their kernels would make an item's numbers depend on its batch.
    return {"n_seq_max": 64, "extra_buffers": False}


def prepare(input_path: str | None, *, labels: Sequence[str] | None = None, examples_path: str | None = None,
            template_path: str | None = None, settings: Settings | None = None, evaluate: bool = False,
            k_fold: int | None = None, holdout: float | None = None, format: str | None = None,
            header: bool = True, text_column: str | None = None, id_column: str | None = None,
            label_column: str | None = None, warn: Warn = _stderr_warning) -> Job:
    """Read and check everything a run needs before the (slow) model load, so bad input fails fast.

    ``input_path`` None or ``"-"`` reads stdin. ``labels`` as given by the user (already split).
    """
    settings = settings or Settings()
    if k_fold is not None and holdout is not None:
        raise UsageError(f"choose one of {option('k_fold')} and {option('holdout')}")
    if (k_fold is not None or holdout is not None) and not evaluate:
        raise UsageError(f"{option('k_fold')} and {option('holdout')} evaluate: use them with {option('evaluate')} "
                         "FILE (or `llmlocal eval FILE`)")
    if (k_fold is not None or holdout is not None) and examples_path:
        raise UsageError(f"{option('k_fold')} and {option('holdout')} draw the examples from the evaluation file; "
                         f"drop {option('examples')}")
    if labels is not None:
        labels = check_labels(list(labels))
    if template_path is not None:
        if settings.method == "embed":
            raise UsageError(f"{option('template')} applies to the prompt method, not {option('method')} embed")
        try:
            raw = Path(template_path).read_bytes()
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise InputFormatError(template_path, "not valid UTF-8", line=line) from None
        except OSError as exc:
            raise InputFormatError(template_path, exc.strerror or "cannot be read") from None
        settings.template = Template.parse(text, name=template_path)
    columns: dict[str, Any] = {"format": format, "header": header, "text_column": text_column}
    examples: list[Example] = []
    if examples_path is not None:
        examples = read_examples(examples_path, label_column=label_column, **columns)
    path = None if input_path in (None, "-") else str(input_path)
    items, table = read_texts(path, id_column=id_column, label_column=label_column, labelled=evaluate, **columns)
    if k_fold is not None or holdout is not None:
        pool = [Example(text=i.text, label=i.label or "", line=i.line) for i in items]
        labels = resolve_labels(labels, pool, name=table.name, warn=warn)
    else:
        labels = resolve_labels(labels, examples, name=examples_path or "examples", warn=warn)
        if evaluate:
            for i in items:
                if i.label not in labels:
                    raise InputFormatError(table.name, f"gold label '{i.label}' is not one of the labels "
                                           f"({', '.join(labels)})", line=i.line)
    settings.validate(labels)
    if settings.method in ("embed", "combined") and not examples and k_fold is None and holdout is None:
        raise UsageError(f"{option('method')} {settings.method} learns from labelled examples: give "
                         f"{option('examples')} FILE")
    return Job(items=items, labels=labels, examples=examples, settings=settings, evaluate=evaluate, k_fold=k_fold,
               holdout=holdout, input_path=path, examples_path=examples_path, template_path=template_path)


@dataclass
class ClassifyResult:
    """The outcome of classifying (and maybe evaluating): predictions in input order and provenance."""

    labels: list[str]
    predictions: list[Prediction]
    items: list[Item]  # the items predicted (with --holdout: the held-out rows only)
    classifiers: list[dict] = field(default_factory=list)  # describe() of each (one per fold)
    examples_used: list[list[int | None]] = field(default_factory=list)  # example line numbers, per classifier
    report: dict | None = None
    evaluated_tokens: int = 0
    choices: list = field(default_factory=list)  # auto.Choice of each classifier that auto chose

    @property
    def method(self) -> str:
        """The method that classified: auto's choice when it chose (folds may differ: "mixed")."""
        methods = {str(c.get("method")) for c in self.classifiers}
        return methods.pop() if len(methods) == 1 else "mixed"

    def counts(self) -> dict[str, int]:
        """Rows that failed, were truncated, or were embedded in pieces."""
        return {"failed": sum(p.error is not None for p in self.predictions),
                "truncated": sum(p.truncated for p in self.predictions),
                "chunked": sum(p.chunks > 1 for p in self.predictions)}


def run(contexts: Callable[[str], Model], job: Job, *, progress: Progress | None = None) -> ClassifyResult:
    """Classify the job's items and, if it evaluates, score the predictions against their gold labels.

    ``contexts(kind)``: the model context for ``"prompt"`` or ``"embed"`` (a :class:`Contexts`).

    With ``k_fold`` or ``holdout`` the examples come from the items themselves (the other folds,
    or the part not held out), so no prediction is made with its own row among the examples.
    """
    items, labels, settings = job.items, job.labels, job.settings
    result = ClassifyResult(labels=list(labels), predictions=[], items=[])
    if job.k_fold is not None or job.holdout is not None:
        pool = [Example(text=i.text, label=i.label or "", line=i.line) for i in items]
        gold = [e.label for e in pool]
        if job.k_fold is not None:
            folds = stratified_folds(gold, job.k_fold, seed=settings.seed)
            splits = [(sorted(set(range(len(items))) - set(f)), f) for f in folds]
        else:
            assert job.holdout is not None  # prepare() allows one of k_fold and holdout
            splits = [holdout_split(gold, job.holdout, seed=settings.seed)]
        pairs = [([pool[i] for i in train], test) for train, test in splits]
    else:
        pairs = [(list(job.examples), list(range(len(items))))]
    cache: dict = {}  # embeddings, shared by the folds and by auto's cross-validation
    predictions: dict[int, Prediction] = {}
    total = sum(len(test) for _, test in pairs)
    done = 0
    for candidates, test in pairs:
        chosen = select_examples(candidates, labels, max_examples=settings.max_examples, seed=settings.seed)
        if job.k_fold is not None or job.holdout is not None:
            missing = [label for label in labels if not any(e.label == label for e in chosen)]
            if missing and settings.method in ("embed", "combined"):
                raise UsageError(f"a fold has no examples of {', '.join(missing)}; use fewer folds")
        clf = build_classifier(contexts, labels, chosen, settings, embedding_cache=cache)

        def fold_progress(n: int, _total: int, base: int = done) -> None:
            if progress is not None:
                progress(base + n, total)

        for i, p in zip(test, predict(clf, [items[i] for i in test], settings, progress=fold_progress,
                                      source=job.input_path or tabular.STDIN_NAME)):
            predictions[i] = p
        done += len(test)
        result.classifiers.append(describe(clf))
        result.examples_used.append([e.line for e in chosen])
        prompt_part = clf.prompt if isinstance(clf, CombinedClassifier) else clf
        scorer = getattr(prompt_part, "scorer", None)
        result.evaluated_tokens += scorer.evaluated_tokens if scorer is not None else 0
        if clf.choice is not None:
            result.choices.append(clf.choice)
    order = sorted(predictions)
    result.items = [items[i] for i in order]
    result.predictions = [predictions[i] for i in order]
    if job.evaluate:
        result.report = evaluation_report(job, result)
    return result


@dataclass
class Outcome:
    """A finished classification job: the result, the model that made it, and its manifest."""

    result: ClassifyResult
    model_name: str
    model_sha256: str | None
    seconds: float  # classifying (on a cluster: the whole job)
    meta: dict
    compared: list[dict] | None = None  # with compare: one row per method (review.compare)


def execute(job: Job, *, model: str | None = None, sha256: str | None = None, ctx: int | None = None,
            threads: int | None = None, verbose: bool = False, ray_address: str | None = None, workers: int = 2,
            model_dir: str | None = None, progress: Progress | None = None, compare: bool = False,
            kv_type: str = "f16") -> Outcome:
    """Run a prepared job here, or with ``ray_address`` on a Ray cluster (as batch.run_job does batch).

    ``compare``: evaluate every method on the same split too (the result is auto's).

    Raises:
        model errors, UsageError, ContextOverflowError (naming the item), RayNotInstalled errors.
    """
    import time

    from .. import runtime

    compared: list[dict] | None = None
    if ray_address is not None:
        from .. import distributed

        if ctx is not None:
            raise UsageError(f"{option('ctx')} is not used with Ray (each worker sizes its context)")
        if kv_type != "f16":
            raise UsageError(f"{option('kv_type')} is not used with Ray yet (workers keep an f16 KV cache)")
        if compare:
            raise UsageError(f"{option('compare')} runs on one machine; drop {option('ray')}")
        started = time.perf_counter()
        digest: str | None
        result, name, digest = distributed.run_classify(
            job, model=model, sha256=sha256, address=distributed.check_address(ray_address), workers=workers,
            threads=threads or 1, model_dir=model_dir)
        seconds = time.perf_counter() - started
    else:
        runtime.prefer_batch_invariant_kernels()  # an item's probabilities must not depend on its batch-mates
        contexts = open_contexts(model, sha256=sha256, ctx=ctx, threads=threads, verbose=verbose, kv_type=kv_type)
        try:
            # The context the method needs first is loaded before the clock starts, as before auto.
            contexts("embed" if job.settings.method == "embed" else "prompt")
            started = time.perf_counter()
            if compare:
                from .review import compare as compare_methods

                result, compared = compare_methods(contexts, job, progress=progress)
            else:
                result = run(contexts, job, progress=progress)
            seconds = time.perf_counter() - started
            first = contexts.loaded()[0]
            name, digest = first.name, first.sha256
        finally:
            contexts.close()
    meta = manifest(job, result, model_name=name, model_sha256=digest, kv_type=kv_type)
    if compared is not None:
        meta["compare"] = compared
    return Outcome(result, name, digest, seconds, meta, compared)


def preview(job: Job, *, model: str | None = None, sha256: str | None = None, ctx: int | None = None,
            threads: int | None = None, verbose: bool = False, kv_type: str = "f16") -> str:
    """The exact prompt the first item would be scored with (``--show-prompt``)."""
    from .. import loader, runtime

    runtime.prefer_batch_invariant_kernels()
    loaded = loader.load(model, sha256=sha256, ctx=ctx, threads=threads, verbose=verbose, kv_type=kv_type,
                         **load_options("prompt"))
    try:
        return show_prompt(loaded.model, job)
    finally:
        loaded.close()


def open_contexts(model: str | None, *, sha256: str | None = None, ctx: int | None = None,
                  threads: int | None = None, verbose: bool = False, kv_type: str = "f16") -> Contexts:
    """The job's contexts of one model, loaded by ``loader.load`` when first asked for."""
    from .. import loader

    return Contexts(lambda kind: loader.load(model, sha256=sha256, ctx=ctx, threads=threads, verbose=verbose,
                                             kv_type=kv_type, **load_options(kind)),
                    model_of=lambda loaded: loaded.model, close=lambda loaded: loaded.close())


def embed_items(model: Model, items: Sequence[Item], *, normalize: bool = True) -> Embeddings:
    """``llmlocal embed``: one vector per item, in order (a text longer than a batch is embedded in
    pieces and averaged: see embedding.embed_texts)."""
    from .embedding import embed_texts

    return embed_texts(model, [i.text for i in items], normalize=normalize)


def evaluation_report(job: Job, result: ClassifyResult) -> dict:
    """Accuracy, macro-F1, confusion and calibration of ``result``'s predictions against gold labels."""
    from . import metrics

    settings = job.settings
    # A row that failed counts as wrong, in a column of its own (as an abstention does), and at
    # confidence 0 in the calibration bins.
    report = metrics.report(
        [i.label or "" for i in result.items], [p.label or FAILED for p in result.predictions], result.labels,
        confidence=[p.confidence or 0.0 for p in result.predictions], top=[p.top or FAILED for p in result.predictions],
        abstain_label=settings.abstain_label if settings.abstain_below is not None else None)
    report["method"] = result.method
    report["rows"] = result.counts()
    if len(result.choices) == 1:
        report["auto"] = result.choices[0].as_dict()
    if job.k_fold is not None:
        report["k_fold"] = job.k_fold
    if job.holdout is not None:
        report["holdout"] = job.holdout
    return report


def show_prompt(model: Model, job: Job, text: str | None = None) -> str:
    """The exact prompt for ``text`` (default: the first item), and what is scored after it."""
    if job.settings.method not in PROMPT_METHODS:
        raise UsageError(f"{option('show_prompt')} applies to the prompt method")
    examples = list(job.examples)
    if job.k_fold is not None or job.holdout is not None:
        raise UsageError(f"{option('show_prompt')} shows one prompt; with {option('k_fold')} or {option('holdout')} "
                         "each fold has its own")
    chosen = select_examples(examples, job.labels, max_examples=job.settings.max_examples, seed=job.settings.seed)
    chosen = fold_order(chosen, job.labels, seed=job.settings.seed)[0]  # as build_classifier lays them out
    chat = default_chat(model) if job.settings.chat is None else job.settings.chat
    prompt = FewShotPrompt(model, job.labels, chosen, template=job.settings.template,
                           instructions=job.settings.instructions, chat=chat)
    if text is None:
        text = job.items[0].text if job.items else "{text}"
    item = prompt.item_tokens(text)
    rendered = prompt.render(text)
    ends = "a newline" if rendered.endswith("\n") else f"{rendered[-1:]!r}, no newline"
    lines = [rendered.removesuffix("\n"),
             f"--- end of prompt (its last character is {ends}); the label is scored right after it"]
    lines.append(f"mode: {'chat template' if chat else 'raw text'}; prompt tokens: {len(prompt.prefix)} shared "
                 f"(instructions and {len(chosen)} examples, evaluated once) + {len(item)} for this item")
    for label, cont, toks in zip(job.labels, prompt.label_texts, prompt.label_tokens):
        lines.append(f"label {label!r}: scores {cont!r} ({len(toks)} token{'s' if len(toks) != 1 else ''}: {toks})")
    return "\n".join(lines)


# ---------------------------------------------------------------- output


def sha256_text_source(path: str | Path | None) -> str | None:
    """SHA-256 of an input file (None for stdin)."""
    if path is None or str(path) == "-":
        return None
    from ..atomic import sha256_file

    return sha256_file(path)


def manifest(job: Job, result: ClassifyResult, *, model_name: str, model_sha256: str | None,
             kv_type: str = "f16") -> dict:
    """Provenance of a run: enough to reproduce it and to know what produced each number."""
    from .. import __version__
    from ..runtime import llama_cpp_version

    settings = job.settings
    out = {
        "llmlocal_version": __version__,
        "llama_cpp_python_version": llama_cpp_version(),
        "model": {"name": model_name, "sha256": model_sha256},
        "method": result.method,  # what classified (auto's choice; per fold in "classifiers")
        "method_requested": settings.method,
        "labels": result.labels,
        "examples": {"path": job.examples_path, "sha256": sha256_text_source(job.examples_path),
                     "lines_used": result.examples_used},
        "input": {"path": job.input_path, "sha256": sha256_text_source(job.input_path),
                  "items": len(result.predictions)},
        "template_file": job.template_path,
        "seed": settings.seed,
        "max_examples": settings.max_examples,
        "abstain_below": settings.abstain_below,
        "abstain_label": settings.abstain_label if settings.abstain_below is not None else None,
        "k_fold": job.k_fold,
        "holdout": job.holdout,
        "truncate": settings.truncate,
        "kv_type": kv_type,
        "classifiers": result.classifiers,
        "rows": result.counts(),
    }
    if len(result.choices) == 1:
        out["auto"] = result.choices[0].as_dict()
    if result.report is not None:
        out["evaluation"] = {k: result.report[k] for k in ("n", "accuracy", "macro_f1")}
    return out


def check_output(path: str | None, *, inputs: Sequence[str | None] = ()) -> None:
    """Refuse, before any work, an output file that could not be written or that is one of
    ``inputs`` (stdout is always fine)."""
    if path is not None and path != "-":
        from ..atomic import check_not_an_input, check_writable

        check_writable(path)
        check_not_an_input(path, inputs)


def write_outputs(job: Job, result: ClassifyResult, meta: dict, *, output: str | None, fmt: str,
                  json_header: bool = False, stdout: IO[str] | None = None) -> None:
    """Predictions to ``output`` (atomically, with ``<output>.meta.json``) or to ``stdout``."""
    from ..atomic import replace_together, write_failure

    header = meta if json_header else None
    if output is None or output == "-":
        write_predictions(stdout or sys.stdout, result, fmt, header=header, with_gold=job.evaluate)
        return
    # Both files are written in full before either replaces its old version, so a disk that
    # fills part-way leaves the old pair; the manifest's hash of the predictions tells a pair
    # that a crash between the two renames left mismatched.
    try:
        with replace_together() as files:
            with files.open(output) as fh:
                write_predictions(fh, result, fmt, header=header, with_gold=job.evaluate)
            meta = {**meta, "output": {"path": str(output), "format": fmt,
                                       "sha256": files.sha256[Path(output)]}}
            files.write_text(f"{output}.meta.json", json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise write_failure(output, exc, next_step=f"run it again: {output} and its manifest are as they were") \
            from None


def output_format(path: str | None, explicit: str | None) -> str:
    """csv or jsonl: ``explicit``, else by the output file's extension, else jsonl (stdout)."""
    if explicit is not None:
        if explicit not in ("csv", "jsonl"):
            raise UsageError(f"unknown output format '{explicit}' (use csv or jsonl)")
        return explicit
    if path is None or path == "-":
        return "jsonl"
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    raise UsageError(f"cannot tell the output format of '{path}' from its extension",
                     hint=f"add {option('format')} csv or {option('format')} jsonl")


def write_predictions(fh: IO[str], result: ClassifyResult, fmt: str, *, header: dict | None = None,
                      with_gold: bool = False) -> None:
    """CSV (id, label, confidence, p_<label>...) or JSONL (probabilities as an object), input order.

    ``header``: a manifest written as the first JSONL line, ``{"manifest": {...}}``.
    """
    import csv

    if fmt == "jsonl":
        if header is not None:
            fh.write(json.dumps({"manifest": header}, ensure_ascii=False) + "\n")
        for item, p in zip(result.items, result.predictions):
            row = p.as_dict()
            if with_gold:
                row["gold"] = item.label
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        return
    if header is not None:
        raise UsageError(f"{option('json_header')} needs JSONL output; with CSV the manifest goes to "
                         "<output>.meta.json")
    counts = result.counts()
    flags = [name for name in ("truncated", "chunks") if counts["truncated" if name == "truncated" else "chunked"]]
    writer = csv.writer(fh, lineterminator="\n")
    # The error column is always there, so a file's columns do not depend on whether a row failed.
    writer.writerow(["id", "label", "confidence"] + [f"p_{label}" for label in result.labels] + flags + ["error"]
                    + (["gold"] if with_gold else []))
    for item, p in zip(result.items, result.predictions):
        probs = p.probabilities or {}
        extra = [{"truncated": int(p.truncated), "chunks": p.chunks}[name] for name in flags]
        writer.writerow([p.id, "" if p.label is None else p.label, "" if p.confidence is None else p.confidence]
                        + [probs.get(label, "") for label in result.labels] + extra
                        + [p.error["message"] if p.error else ""] + ([item.label] if with_gold else []))



def embed_manifest(items: Sequence[Item], embedded: Embeddings, *, model_name: str, model_sha256: str | None,
                   input_path: str | None, normalized: bool, pooling: str, kv_type: str = "f16") -> dict:
    """Provenance of ``llmlocal embed``: the model (vectors of two models are not comparable) and
    the item ids, which a ``.npy`` matrix cannot hold (row i is ``ids[i]``)."""
    from .. import __version__
    from ..runtime import llama_cpp_version

    path = None if input_path in (None, "-") else input_path
    return {"llmlocal_version": __version__, "llama_cpp_python_version": llama_cpp_version(),
            "model": {"name": model_name, "sha256": model_sha256},
            "input": {"path": path, "sha256": sha256_text_source(path), "items": len(items)},
            "pooling": pooling, "normalised": normalized, "kv_type": kv_type,
            "dimensions": int(embedded.vectors.shape[1]) if embedded.vectors.ndim == 2 else 0,
            # Texts longer than one batch: embedded in pieces, their vectors averaged by length.
            "chunked": [i.id for i, c in zip(items, embedded.chunks) if c > 1],
            "ids": [i.id for i in items]}


def write_embeddings(items: Sequence[Item], vectors: np.ndarray, *, output: str | None,
                     stdout: IO[str] | None = None, meta: dict | None = None) -> None:
    """``.npy``: a float32 matrix, one row per item in input order; else JSONL ``{"id", "embedding"}``.

    With ``output`` and ``meta``, ``<output>.meta.json`` is written beside it, with the output's
    SHA-256; the two are published together, as classify's predictions and manifest are.
    """
    from ..atomic import replace_together, write_failure

    def lines(fh: IO[str]) -> None:
        for item, vec in zip(items, vectors):
            fh.write(json.dumps({"id": item.id, "embedding": [round(float(x), 7) for x in vec]}) + "\n")

    if output is None or output == "-":
        lines(stdout or sys.stdout)
        return
    npy = output.endswith(".npy")
    try:
        with replace_together() as files:
            with files.open(output, "wb" if npy else "w") as fh:
                if npy:
                    np.save(fh, vectors.astype(np.float32))
                else:
                    lines(fh)
            if meta is not None:
                meta = {**meta, "output": {"path": str(output), "format": "npy" if npy else "jsonl",
                                           "sha256": files.sha256[Path(output)]}}
                files.write_text(f"{output}.meta.json", json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise write_failure(output, exc, next_step=f"run it again: {output} is as it was") from None
