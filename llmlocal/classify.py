"""Classify texts into a fixed label set: a few-shot prompt scored by label log-probability, or
model embeddings with logistic regression; plus the evaluation around both.

Prompt method. The answer is never parsed from generated text: each label is scored by the
model's log-probability of its whole token sequence after the prompt (summed over its tokens, so
"not spam" vs "spam" and labels sharing a first token are compared fairly), and the label
distribution is the softmax of those sums. The prompt's shared part (instructions and examples)
is evaluated once and kept in the KV cache as sequence 0; each item gets copies of it, and its
own tokens and every label's tokens are decoded together with other items' (see LabelScorer), so
the cost per item approaches its own tokens plus the label tokens.

Tokenisation. The prompt is tokenised in pieces, and both the cached and the naive (whole-prompt)
paths use the same pieces concatenated: ``prefix`` (BOS, instructions, examples), ``item`` (the
separator before it, the item block up to the label, the chat template's tail) and each label's
continuation. The pieces meet where the separator's newlines begin, after a label or the
instructions, which is where the tokenisers of the bundled models also split the whole text (checked
for SmolLM2 and Gemma 3); user text is never parsed for special tokens.
"""

from __future__ import annotations

import random
import re
import sys
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from . import tabular
from .errors import ContextOverflowError, InputFormatError, UsageError
from .runtime import BATCH_INVARIANT_MAX_TOKENS  # runtime imports llama_cpp only when a model loads

if TYPE_CHECKING:
    from .runtime import Model

DEFAULT_TEMPLATE = "{instructions}\n\nText: {text}\nLabel: {label}\n"
DEFAULT_INSTRUCTIONS = "Classify each text as one of: {labels}."
CONTENT_FREE = "N/A"  # the content-free input of contextual calibration (Zhao et al. 2021)
BLOCK_SEPARATOR = "\n\n"
METHODS = ("prompt", "embed")
# Nearest-centroid probabilities: softmax(scale * cosine). Mean-pooled LM embeddings are all alike
# (cosines 0.7-0.9); between one spam and one ham example an SMS message's two cosines differ by
# a median 0.06 (SmolLM2) / 0.12 (Gemma 3 270M), so a scale of 1 would say "uniform" every time.
# 20 makes a typical gap 1-2.5 logits (probability 0.75-0.92), about the one-shot accuracy there.
CENTROID_SCALE = 20.0
_PLACEHOLDER = re.compile(r"\{(instructions|labels|text|label)\}")
_SENTINEL = "\uE000llmlocal-item\uE000"  # a private-use marker that no chat template rewrites

Warn = Callable[[str], None]
Progress = Callable[[int, int], None]

# Which scorer's prefix is in each model's KV cache (sequence 0), so that two classifiers sharing a
# model (k-fold, calibration experiments) never score against each other's examples.
_prefix_owner: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _stderr_warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class Example:
    """A labelled text (``line``: where it came from, for messages and the manifest)."""

    text: str
    label: str
    line: int | None = None


@dataclass(frozen=True)
class Item:
    """A text to classify; ``label`` is its gold label when it comes from a labelled file."""

    id: Any
    text: str
    line: int | None = None
    label: str | None = None


@dataclass
class Prediction:
    id: Any
    label: str  # the answer: a label, or the abstain label
    confidence: float  # probability of the most probable label
    probabilities: dict[str, float]
    top: str  # the most probable label, even when abstaining

    def as_dict(self) -> dict:
        return {"id": self.id, "label": self.label, "confidence": self.confidence,
                "probabilities": self.probabilities}


def parse_labels(spec: str) -> list[str]:
    """``"spam, not spam"`` -> ``["spam", "not spam"]``; empty or duplicate labels are refused."""
    labels = [part.strip() for part in spec.split(",")]
    if any(not label for label in labels):
        raise UsageError(f"--labels {spec!r} has an empty label", hint='separate labels by commas: --labels "spam,ham"')
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


def read_items(source: str | Path | IO[bytes] | None, *, format: str | None = None, header: bool = True,
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
        items, table = read_items(source, format=format, header=header, text_column=text_column,
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
            raise UsageError("give --labels, or --examples to take the labels from",
                             hint='zero-shot: --labels "spam,ham"')
        return check_labels(list(dict.fromkeys(e.label for e in examples)))
    labels = check_labels(labels)
    for e in examples:
        if e.label not in labels:
            raise InputFormatError(name, f"example label '{e.label}' is not one of --labels ({', '.join(labels)})",
                                   line=e.line)
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
    """
    if max_examples is None:
        return list(examples)
    if max_examples < 0:
        raise UsageError("--max-examples must be >= 0")
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


# ---------------------------------------------------------------- the prompt


def _substitute(text: str, values: dict[str, str]) -> str:
    """Replace known placeholders in one pass (inserted text is never re-scanned; other braces stay)."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


@dataclass(frozen=True)
class Template:
    """A few-shot prompt template: a header written once, then one block per example and item.

    Everything before the first line containing ``{text}`` is the header (``{instructions}`` and
    ``{labels}`` may appear in it); the rest is the block, which must contain ``{text}`` and end with
    ``{label}``. Blocks are separated by a blank line; the header's own trailing newlines separate
    it from the first block. For the item being classified the block is cut before the whitespace
    that precedes ``{label}``, and that whitespace starts each scored label (``Label: {label}``
    scores `` spam``).
    """

    header: str
    block: str
    source: str

    @classmethod
    def parse(cls, text: str, *, name: str = "template") -> Template:
        lines = text.splitlines(keepends=True)
        first = next((i for i, line in enumerate(lines) if "{text}" in line), None)
        if first is None:
            raise UsageError(f"{name}: no {{text}} placeholder", hint="see `llmlocal classify --help` for the format")
        header, block = "".join(lines[:first]), "".join(lines[first:]).rstrip()
        if "{label}" in header or "{text}" in header:
            raise UsageError(f"{name}: {{label}} and {{text}} belong in the example block, after the header")
        if block.count("{text}") != 1 or block.count("{label}") != 1 or not block.endswith("{label}"):
            raise UsageError(f"{name}: the example block must contain {{text}} once and end with {{label}}")
        return cls(header=header, block=block, source=text)

    def header_parts(self, instructions: str, labels: Sequence[str]) -> tuple[str, str]:
        """(header text without trailing whitespace, the separator before the first block)."""
        lab = ", ".join(labels)
        text = _substitute(self.header, {"instructions": _substitute(instructions, {"labels": lab}), "labels": lab})
        stripped = text.rstrip()
        if not stripped:
            return "", ""
        return stripped, text[len(stripped):].lstrip(" \t") or "\n"

    def example(self, text: str, label: str) -> str:
        return _substitute(self.block, {"text": text, "label": label})

    def query(self, text: str) -> tuple[str, str]:
        """(the block for an item up to its label, the whitespace that leads each label)."""
        stem = self.block[: -len("{label}")]
        cut = len(stem.rstrip())
        return _substitute(stem[:cut], {"text": text}), stem[cut:]


class FewShotPrompt:
    """The prompt for one label set and example set, as text and as token pieces.

    ``chat``: put the whole few-shot block in one user turn of the model's chat template and score
    each label as the start of the assistant's reply; otherwise the text is used raw.
    """

    def __init__(self, model: Model, labels: Sequence[str], examples: Sequence[Example], *,
                 template: Template | None = None, instructions: str | None = None, chat: bool = False) -> None:
        self.model = model
        self.labels = list(labels)
        self.examples = list(examples)
        self.template = template or Template.parse(DEFAULT_TEMPLATE, name="default template")
        self.instructions = DEFAULT_INSTRUCTIONS if instructions is None else instructions
        self.chat = chat
        header, self._first_sep = self.template.header_parts(self.instructions, self.labels)
        parts = [header] if header else []
        for i, e in enumerate(self.examples):
            parts.append((self._first_sep if i == 0 else BLOCK_SEPARATOR) if parts else "")
            parts.append(self.template.example(e.text, e.label))
        self.prefix_text = "".join(parts)
        self._item_sep = "" if not self.prefix_text else (BLOCK_SEPARATOR if self.examples else self._first_sep)
        lead = self.template.query("")[1]
        self.label_texts = [label if chat else lead + label for label in self.labels]
        if chat:
            rendered = model.render_chat([{"role": "user", "content": _SENTINEL}])
            if rendered.count(_SENTINEL) != 1:
                raise UsageError("the model's chat template does not keep the message text as-is; use --raw")
            self.chat_head, self.chat_tail = rendered.split(_SENTINEL)
            self.prefix = model.tokenize(self.chat_head, add_special=False, parse_special=True)
        else:
            self.chat_head = self.chat_tail = ""
            self.prefix = [model.bos] if model.add_bos and model.bos >= 0 else []
        self.header_tokens = len(self.prefix) + len(self._plain(header))  # before the examples (about)
        self.prefix = self.prefix + self._plain(self.prefix_text)
        self.label_tokens = [self._plain(t) for t in self.label_texts]
        self._tail = model.tokenize(self.chat_tail, add_special=False, parse_special=True) if chat else []

    def _plain(self, text: str) -> list[int]:
        return self.model.tokenize(text, add_special=False, parse_special=False) if text else []

    def item_text(self, text: str) -> str:
        return self._item_sep + self.template.query(text)[0]

    def item_tokens(self, text: str) -> list[int]:
        return self._plain(self.item_text(text)) + self._tail

    def render(self, text: str) -> str:
        """The exact prompt text for ``text``, up to where the label is scored."""
        return self.chat_head + self.prefix_text + self.item_text(text) + self.chat_tail

    def check_fits(self, item_tokens: Sequence[list[int]]) -> None:
        """Refuse, with the token counts, a prompt + item + labels that the context cannot hold."""
        n_ctx = self.model.n_ctx
        longest = max((len(t) for t in item_tokens), default=0)
        extra = sum(len(t) - 1 for t in self.label_tokens)  # cells for the label branches
        need = len(self.prefix) + longest + extra
        if need <= n_ctx:
            return
        header = self.header_tokens
        per_example = (len(self.prefix) - header) / len(self.examples) if self.examples else 0
        fit = int((n_ctx - header - longest - extra) // per_example) if per_example else 0
        err = ContextOverflowError(need, n_ctx)
        err.args = (f"the prompt does not fit the context: instructions {header} tokens + {len(self.examples)} "
                    f"examples {len(self.prefix) - header} tokens + the longest item {longest} + labels "
                    f"{extra} = {need} tokens, but the context holds {n_ctx}",)
        err.hint = (f"use --max-examples {max(fit, 0)} (about that many fit) or a larger --ctx" if self.examples
                    else "use a larger --ctx or shorter items")
        raise err

    def describe(self) -> dict:
        return {"mode": "chat" if self.chat else "raw", "template": self.template.source,
                "instructions": self.instructions, "label_continuations": self.label_texts,
                "label_tokens": self.label_tokens, "prefix_tokens": len(self.prefix),
                "examples": len(self.examples)}


# ---------------------------------------------------------------- scoring


def _chunks(n: int, limit: int) -> list[tuple[int, int]]:
    """[start, end) spans of near-equal size, at most ``limit`` each."""
    k = -(-n // limit)
    bounds = [round(i * n / k) for i in range(k + 1)] if n else [0]
    return list(zip(bounds[:-1], bounds[1:]))


class LabelScorer:
    """Log-probabilities of label continuations after ``prefix`` + item, with the prefix cached.

    Sequence 0 holds the prefix. Each item in a group gets its own sequences, copies of sequence 0
    (no recomputation): one, or one per label of several tokens (a branch). The item's tokens
    belong to all its sequences and are computed once; each branch then decodes its label's
    tokens but the last. The first label token's log-probability comes from the item's last
    token; label token k+1's from label token k. A group of items, their tokens and their
    branches go through ``llama_decode`` together.

    Batch invariance: every ``llama_decode`` here (and in :meth:`score_naive`) carries 2 to
    :data:`~llmlocal.runtime.BATCH_INVARIANT_MAX_TOKENS` tokens, split evenly; a lone token gets a throwaway
    ballast token in a spare sequence. In that range llama.cpp's attention is computed the same way
    whatever else is in the batch or in the cache, so an item's probabilities do not depend on its
    neighbours, on ``parallel`` or on caching (with K-quant models, also call
    :func:`~llmlocal.runtime.prefer_batch_invariant_kernels` before loading). Groups start where the prefix
    ends and are freed before the next one, so cells stay in position order.
    """

    def __init__(self, model: Model, prefix: list[int], labels: Sequence[list[int]], *, parallel: int = 8) -> None:
        if any(not t for t in labels):
            raise UsageError("a label tokenises to nothing")
        self.model = model
        self.prefix = list(prefix)
        self.labels = [list(t) for t in labels]
        self.branches = [j for j, t in enumerate(self.labels) if len(t) > 1]
        self.seqs_per_item = max(1, len(self.branches))
        room = max(model.options.n_seq_max, 1) - 2  # sequence 0 is the prefix, the last one ballast
        self.ballast_seq = max(model.options.n_seq_max, 1) - 1
        self.parallel = max(1, min(parallel, room // self.seqs_per_item)) if room > 0 else 0
        if room < self.seqs_per_item:
            raise UsageError(f"scoring these labels needs a context with at least {self.seqs_per_item + 2} "
                             f"sequences (n_seq_max is {model.options.n_seq_max})")
        self.max_tokens = min(BATCH_INVARIANT_MAX_TOKENS, model.options.n_batch)
        self.evaluated_tokens = 0  # tokens sent through llama_decode, for throughput reports

    def _extra(self) -> int:
        return sum(len(t) - 1 for t in self.labels)

    def reset(self) -> None:
        """Forget the cached prefix (the next score() evaluates it again)."""
        self.model.kv_clear()
        _prefix_owner.pop(self.model, None)

    def _check(self, tokens: list[int]) -> None:
        need = len(self.prefix) + len(tokens) + self._extra()
        if need > self.model.n_ctx:
            err = ContextOverflowError(need, self.model.n_ctx)
            err.hint = "use fewer examples (--max-examples), a larger --ctx, or shorter items"
            raise err

    def score(self, items: Sequence[list[int]], *, progress: Progress | None = None) -> np.ndarray:
        """An (items x labels) array of summed label log-probabilities, reusing the prefix's cache."""
        model = self.model
        out = np.zeros((len(items), len(self.labels)), dtype=np.float64)
        for tokens in items:
            self._check(tokens)
        if _prefix_owner.get(model) is not self:
            model.kv_clear()
            _prefix_owner.pop(model, None)
            self._decode([(t, p, 0, None) for p, t in enumerate(self.prefix)], out)
            _prefix_owner[model] = self
        room = model.n_ctx - len(self.prefix) - 1  # one cell spare for a ballast token
        i = 0
        while i < len(items):
            group: list[int] = []
            cells = 0
            while i < len(items) and len(group) < self.parallel:
                need = len(items[i]) + self._extra()
                if group and cells + need > room:
                    break
                group.append(i)
                cells += need
                i += 1
            self._score_group(group, items, out)
            if progress is not None:
                progress(i, len(items))
        return out

    def _score_group(self, group: list[int], items: Sequence[list[int]], out: np.ndarray) -> None:
        model, start = self.model, len(self.prefix)
        entries: list[tuple[int, int, Any, list[tuple[int, int, int]] | None]] = []
        used: list[int] = []
        for g, a in enumerate(group):
            ids = tuple(range(1 + g * self.seqs_per_item, 1 + (g + 1) * self.seqs_per_item))
            used.extend(ids)
            if self.prefix:
                for s in ids:
                    model.kv_copy(0, s)
            owner: Any = ids if len(ids) > 1 else ids[0]
            tokens = items[a]
            for t, token in enumerate(tokens):
                entries.append((token, start + t, owner, None))
            token, pos, _, _ = entries[-1]
            entries[-1] = (token, pos, owner, [(label[0], a, j) for j, label in enumerate(self.labels)])
            for b, j in enumerate(self.branches):
                label = self.labels[j]
                for k in range(len(label) - 1):
                    entries.append((label[k], start + len(tokens) + k, ids[b], [(label[k + 1], a, j)]))
        try:
            self._decode(entries, out)
        finally:
            for s in used:
                model.kv_remove(s)

    def _decode(self, entries: list, out: np.ndarray) -> None:
        """Evaluate (token, pos, seq ids, targets) entries; add each target's log-probability to ``out``."""
        model = self.model
        for a, b in _chunks(len(entries), self.max_tokens):
            chunk = entries[a:b]
            tokens, positions = [e[0] for e in chunk], [e[1] for e in chunk]
            seqs, wanted = [e[2] for e in chunk], [e[3] is not None for e in chunk]
            if len(chunk) == 1:  # a one-token batch takes another attention kernel: add ballast
                tokens, positions = tokens + [tokens[0]], positions + [0]
                seqs, wanted = seqs + [self.ballast_seq], wanted + [False]
            model.decode(tokens, positions, seqs, wanted)
            if len(chunk) == 1:
                model.kv_remove(self.ballast_seq)
            self.evaluated_tokens += len(chunk)
            for k, e in enumerate(chunk):
                if e[3] is not None:
                    row = self.model.logits(k)
                    top = float(row.max())
                    lse = top + float(np.log(np.exp(row - top).sum(dtype=np.float64)))
                    for token, a, j in e[3]:
                        out[a, j] += float(row[token]) - lse

    def score_naive(self, items: Sequence[list[int]]) -> np.ndarray:
        """The same numbers without any cache: for every item, clear the KV cache and evaluate
        prefix + item + label tokens from scratch (labels needing the same tokens share one pass).
        The reference for tests and the benchmark."""
        model = self.model
        out = np.zeros((len(items), len(self.labels)), dtype=np.float64)
        contexts: dict[tuple[int, ...], list[int]] = {}
        for j, label in enumerate(self.labels):
            contexts.setdefault(tuple(label[:-1]), []).append(j)
        _prefix_owner.pop(model, None)
        for a, tokens in enumerate(items):
            self._check(tokens)
            for context, js in contexts.items():
                model.kv_clear()
                seq = self.prefix + list(tokens) + list(context)
                last_item = len(self.prefix) + len(tokens) - 1
                entries = []
                for p, token in enumerate(seq):
                    targets = None
                    if p >= last_item:
                        k = p - last_item  # predicts label token k
                        targets = [(self.labels[j][k], a, j) for j in js]
                    entries.append((token, p, 0, targets))
                self._decode(entries, out)
        model.kv_clear()
        return out


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------- classifiers


class PromptClassifier:
    """Few-shot (or zero-shot) prompting, labels scored by log-probability, optional calibration."""

    method = "prompt"

    def __init__(self, model: Model, labels: Sequence[str], examples: Sequence[Example], *,
                 template: Template | None = None, instructions: str | None = None, chat: bool = False,
                 calibrate: bool = False, parallel: int = 8) -> None:
        self.labels = list(labels)
        self.prompt = FewShotPrompt(model, labels, examples, template=template, instructions=instructions, chat=chat)
        self.prompt.check_fits([])
        self.scorer = LabelScorer(model, self.prompt.prefix, self.prompt.label_tokens, parallel=parallel)
        self.calibrate = calibrate
        self.prior: np.ndarray | None = None  # label distribution for the content-free input

    def log_scores(self, texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
        tokens = [self.prompt.item_tokens(t) for t in texts]
        self.prompt.check_fits(tokens)
        return self.scorer.score(tokens, progress=progress)

    def predict_proba(self, texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
        scores = self.log_scores(texts, progress=progress)
        if not self.calibrate:
            return softmax(scores)
        if self.prior is None:
            self.prior = softmax(self.log_scores([CONTENT_FREE]))[0]
        # p / prior, renormalised: the same as a softmax of log p - log prior.
        return softmax(scores - np.log(self.prior))

    def describe(self) -> dict:
        out = {"method": self.method, "prompt": self.prompt.describe(), "calibrate": self.calibrate}
        if self.calibrate and self.prior is not None:
            out["content_free_input"] = CONTENT_FREE
            out["prior"] = dict(zip(self.labels, (round(float(p), 6) for p in self.prior)))
        return out


def embed_texts(model: Model, texts: Sequence[str], *, normalize: bool = True,
                progress: Progress | None = None) -> np.ndarray:
    """Pooled embeddings (the context's pooling, mean by default), L2-normalised unless told not.

    Several texts share one decode as separate sequences; each text must fit in one batch, as
    llama.cpp pools a sequence within one micro-batch. Decodes hold about 128 tokens: an embeddings
    context still computes logits for every token, and a batch of 512 would need a 512 MB logits
    buffer with Gemma 3's 262k-token vocabulary.
    """
    n_batch = model.options.n_batch
    group_tokens = min(n_batch, 128)
    width = max(model.options.n_seq_max, 1)
    vectors: list[np.ndarray] = []
    tokenized = [model.tokenize(t, add_special=True, parse_special=False) for t in texts]
    for i, tokens in enumerate(tokenized):
        if len(tokens) > n_batch:
            err = ContextOverflowError(len(tokens), n_batch)
            err.args = (f"text {i + 1} is {len(tokens)} tokens; embeddings take at most {n_batch} per text",)
            err.hint = "shorten it, or raise --ctx (the batch follows the context, up to 4096)"
            raise err
    i = 0
    while i < len(tokenized):
        batch: list[int] = []
        total = 0
        while i < len(tokenized) and len(batch) < width and (not batch or total + len(tokenized[i]) <= group_tokens):
            batch.append(i)
            total += len(tokenized[i])
            i += 1
        toks, pos, seqs = [], [], []
        for s, idx in enumerate(batch):
            toks += tokenized[idx]
            pos += range(len(tokenized[idx]))
            seqs += [s] * len(tokenized[idx])
        model.decode(toks, pos, seqs, [True] * len(toks))
        vectors += [np.asarray(model.embedding(s), dtype=np.float64) for s in range(len(batch))]
        model.kv_clear()
        if progress is not None:
            progress(i, len(tokenized))
    out = np.array(vectors, dtype=np.float64).reshape(len(texts), -1)
    if normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = out / np.where(norms > 0, norms, 1.0)
    return out


class LogisticRegression:
    """Multinomial logistic regression with an L2 penalty, fitted by accelerated gradient descent.

    Minimises ``sum_i cross-entropy_i + ||W||^2 / (2C)`` (the intercept is not penalised), the
    objective of scikit-learn's ``LogisticRegression(C=C)``. Deterministic: zero start, fixed step
    ``1/L`` from a bound on the curvature, Nesterov momentum with restarts.
    """

    def __init__(self, C: float = 10.0, *, max_iter: int = 20000, tol: float = 1e-6) -> None:
        self.C, self.max_iter, self.tol = C, max_iter, tol
        self.W: np.ndarray | None = None
        self.b: np.ndarray | None = None
        self.iterations = 0

    def _objective(self, X: np.ndarray, Y: np.ndarray, W: np.ndarray,
                   b: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """The objective and its gradients with respect to W and b."""
        logits = X @ W + b
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        loss = -(Y * logp).sum() + (W * W).sum() / (2 * self.C)
        diff = np.exp(logp) - Y
        return float(loss), X.T @ diff + W / self.C, diff.sum(axis=0)

    def fit(self, X: np.ndarray, y: Sequence[int], n_classes: int) -> LogisticRegression:
        X = np.asarray(X, dtype=np.float64)
        Y = np.eye(n_classes)[np.asarray(y)]
        n, d = X.shape
        # The softmax Hessian is at most 1/2 per sample: L <= ||[X 1]||^2 / 2 + 1/C.
        step = 1.0 / (0.5 * np.linalg.norm(np.hstack([X, np.ones((n, 1))]), 2) ** 2 + 1.0 / self.C)
        W, b = np.zeros((d, n_classes)), np.zeros(n_classes)
        W_prev, b_prev = W, b
        loss_prev = np.inf
        momentum = 1.0
        scale = max(1.0, float(n))
        for it in range(1, self.max_iter + 1):
            m_next = (1 + np.sqrt(1 + 4 * momentum * momentum)) / 2
            beta = (momentum - 1) / m_next
            VW, Vb = W + beta * (W - W_prev), b + beta * (b - b_prev)
            _, gW, gb = self._objective(X, Y, VW, Vb)
            W_prev, b_prev = W, b
            W, b = VW - step * gW, Vb - step * gb
            momentum = m_next
            loss, gW_new, gb_new = self._objective(X, Y, W, b)
            if loss > loss_prev:  # restart the momentum when it overshoots (O'Donoghue & Candes 2015)
                momentum = 1.0
            loss_prev = loss
            if np.sqrt((gW_new ** 2).sum() + (gb_new ** 2).sum()) < self.tol * scale:
                break
        self.W, self.b, self.iterations = W, b, it
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        if self.W is None:
            raise RuntimeError("fit() first")
        return softmax(np.asarray(X, dtype=np.float64) @ self.W + self.b)


class EmbeddingClassifier:
    """Embeddings of the examples and items; logistic regression (C=10), or nearest centroid when
    a label has a single example (too little to fit a boundary with any confidence)."""

    method = "embed"

    def __init__(self, model: Model, labels: Sequence[str], examples: Sequence[Example], *, C: float = 10.0,
                 cache: dict[str, np.ndarray] | None = None) -> None:
        self.model, self.labels, self.C = model, list(labels), C
        self._cache = cache if cache is not None else {}
        counts = Counter(e.label for e in examples)
        missing = [label for label in self.labels if counts[label] == 0]
        if missing:
            raise UsageError(f"the embedding method needs examples of every label; none for: {', '.join(missing)}")
        X = self.embed([e.text for e in examples])
        y = [self.labels.index(e.label) for e in examples]
        self.n_examples = len(examples)
        if min(counts[label] for label in self.labels) < 2:
            self.kind = "nearest-centroid"
            centroids = np.stack([X[np.asarray(y) == j].mean(axis=0) for j in range(len(self.labels))])
            self.centroids = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
            self.lr = None
        else:
            self.kind = "logistic-regression"
            self.lr = LogisticRegression(C).fit(X, y, len(self.labels))

    def embed(self, texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            for text, vec in zip(todo, embed_texts(self.model, todo, progress=progress)):
                self._cache[text] = vec
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 0))

    def predict_proba(self, texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
        X = self.embed(texts, progress=progress)
        if self.lr is not None:
            return self.lr.predict_proba(X)
        return softmax(CENTROID_SCALE * (X @ self.centroids.T))

    def describe(self) -> dict:
        out = {"method": self.method, "classifier": self.kind, "pooling": self.model.options.pooling,
               "normalised": True, "examples": self.n_examples}
        if self.lr is not None:
            out.update(C=self.C, iterations=self.lr.iterations)
        else:
            out["scale"] = CENTROID_SCALE
        return out


Classifier = PromptClassifier | EmbeddingClassifier


@dataclass
class Settings:
    """Everything that shapes a classifier besides the model and the examples."""

    method: str = "prompt"
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

    def validate(self, labels: Sequence[str] | None = None) -> None:
        if self.method not in METHODS:
            raise UsageError(f"unknown method '{self.method}' (use one of {', '.join(METHODS)})")
        if self.method == "embed":
            if self.calibrate:
                raise UsageError("--calibrate applies to the prompt method, not --method embed")
            if self.template is not None or self.instructions is not None:
                raise UsageError("--template and --instructions apply to the prompt method, not --method embed")
        if self.abstain_below is not None and not 0 <= self.abstain_below <= 1:
            raise UsageError("--abstain-below must be a probability in [0, 1]")
        if labels is not None and self.abstain_label in labels:
            raise UsageError(f"the abstain label '{self.abstain_label}' is also a class label",
                             hint="choose another with --abstain-label")
        if self.parallel < 1:
            raise UsageError("--parallel must be at least 1")
        if self.max_examples is not None and self.max_examples < 0:
            raise UsageError("--max-examples must be >= 0")


def default_chat(model: Model) -> bool:
    """Whether to wrap the prompt in the model's chat template when neither --raw nor --chat is given.

    Raw text, always: measured on SMS spam with SmolLM2-135M-Instruct (benchmarks/sms_eval.py,
    reported in the README), the raw few-shot prompt scored as well as or better than the same
    block in a user turn with the label as the assistant's reply. Base models have no template.
    """
    return False


def build_classifier(model: Model, labels: Sequence[str], examples: Sequence[Example], settings: Settings, *,
                     embedding_cache: dict[str, np.ndarray] | None = None) -> Classifier:
    """A classifier from (already selected) examples."""
    if settings.method == "embed":
        if not examples:
            raise UsageError("--method embed needs labelled examples (--examples FILE)")
        return EmbeddingClassifier(model, labels, examples, C=settings.C, cache=embedding_cache)
    chat = default_chat(model) if settings.chat is None else settings.chat
    return PromptClassifier(model, labels, examples, template=settings.template, instructions=settings.instructions,
                            chat=chat, calibrate=settings.calibrate, parallel=settings.parallel)


def predict(classifier: Classifier, items: Sequence[Item], settings: Settings, *,
            progress: Progress | None = None) -> list[Prediction]:
    """Predictions for ``items``, in order, with abstention applied."""
    if not items:
        return []
    probs = classifier.predict_proba([i.text for i in items], progress=progress)
    labels = classifier.labels
    out = []
    for item, row in zip(items, probs):
        best = int(np.argmax(row))
        confidence = float(row[best])
        answer = labels[best]
        if settings.abstain_below is not None and confidence < settings.abstain_below:
            answer = settings.abstain_label
        out.append(Prediction(id=item.id, label=answer, confidence=round(confidence, 6),
                              probabilities={label: round(float(p), 6) for label, p in zip(labels, row)},
                              top=labels[best]))
    return out


# ---------------------------------------------------------------- evaluation


def stratified_folds(gold: Sequence[str], k: int, *, seed: int = 0) -> list[list[int]]:
    """``k`` folds of row indices with each label spread evenly over them (fixed seed)."""
    if k < 2:
        raise UsageError("--k-fold needs K >= 2")
    if k > len(gold):
        raise UsageError(f"--k-fold {k} is more folds than the {len(gold)} labelled rows")
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
        raise UsageError("--holdout must be a fraction between 0 and 1")
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
        raise UsageError(f"--holdout {fraction} leaves no rows to test on")
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

    def load_options(self) -> dict:
        """Keyword arguments for ``loader.load``: the context this job's method needs."""
        if self.settings.method == "embed":
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
        raise UsageError("choose one of --k-fold and --holdout")
    if (k_fold is not None or holdout is not None) and not evaluate:
        raise UsageError("--k-fold and --holdout evaluate: use them with --evaluate FILE (or `llmlocal eval FILE`)")
    if (k_fold is not None or holdout is not None) and examples_path:
        raise UsageError("--k-fold and --holdout draw the examples from the evaluation file; drop --examples")
    if labels is not None:
        labels = check_labels(list(labels))
    if template_path is not None:
        if settings.method == "embed":
            raise UsageError("--template applies to the prompt method, not --method embed")
        try:
            raw = Path(template_path).read_bytes()
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise InputFormatError(template_path, "not valid UTF-8", line=line) from None
        except OSError as exc:
            raise InputFormatError(template_path, exc.strerror or "cannot be read") from None
        settings.template = Template.parse(text, name=template_path)
    columns = {"format": format, "header": header, "text_column": text_column}
    examples: list[Example] = []
    if examples_path is not None:
        examples = read_examples(examples_path, label_column=label_column, **columns)
    path = None if input_path in (None, "-") else str(input_path)
    items, table = read_items(path, id_column=id_column, label_column=label_column, labelled=evaluate, **columns)
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
    if settings.method == "embed" and not examples and k_fold is None and holdout is None:
        raise UsageError("--method embed learns from labelled examples: give --examples FILE")
    return Job(items=items, labels=labels, examples=examples, settings=settings, evaluate=evaluate, k_fold=k_fold,
               holdout=holdout, input_path=path, examples_path=examples_path, template_path=template_path)


@dataclass
class Run:
    """The outcome of classifying (and maybe evaluating): predictions in input order and provenance."""

    labels: list[str]
    predictions: list[Prediction]
    items: list[Item]  # the items predicted (with --holdout: the held-out rows only)
    classifiers: list[dict] = field(default_factory=list)  # describe() of each (one per fold)
    examples_used: list[list[int | None]] = field(default_factory=list)  # example line numbers, per classifier
    report: dict | None = None
    evaluated_tokens: int = 0


def run(model: Model, job: Job, *, progress: Progress | None = None) -> Run:
    """Classify the job's items and, if it evaluates, score the predictions against their gold labels.

    With ``k_fold`` or ``holdout`` the examples come from the items themselves (the other folds,
    or the part not held out), so no prediction is made with its own row among the examples.
    """
    items, labels, settings = job.items, job.labels, job.settings
    result = Run(labels=list(labels), predictions=[], items=[])
    if job.k_fold is not None or job.holdout is not None:
        pool = [Example(text=i.text, label=i.label or "", line=i.line) for i in items]
        gold = [e.label for e in pool]
        if job.k_fold is not None:
            folds = stratified_folds(gold, job.k_fold, seed=settings.seed)
            splits = [(sorted(set(range(len(items))) - set(f)), f) for f in folds]
        else:
            splits = [holdout_split(gold, job.holdout, seed=settings.seed)]
        pairs = [([pool[i] for i in train], test) for train, test in splits]
    else:
        pairs = [(list(job.examples), list(range(len(items))))]
    cache: dict[str, np.ndarray] = {}  # embeddings, shared by the folds
    predictions: dict[int, Prediction] = {}
    total = sum(len(test) for _, test in pairs)
    done = 0
    for candidates, test in pairs:
        chosen = select_examples(candidates, labels, max_examples=settings.max_examples, seed=settings.seed)
        if job.k_fold is not None or job.holdout is not None:
            missing = [label for label in labels if not any(e.label == label for e in chosen)]
            if missing and settings.method == "embed":
                raise UsageError(f"a fold has no examples of {', '.join(missing)}; use fewer folds")
        clf = build_classifier(model, labels, chosen, settings, embedding_cache=cache)

        def fold_progress(n: int, _total: int, base: int = done) -> None:
            if progress is not None:
                progress(base + n, total)

        for i, p in zip(test, predict(clf, [items[i] for i in test], settings, progress=fold_progress)):
            predictions[i] = p
        done += len(test)
        result.classifiers.append(clf.describe())
        result.examples_used.append([e.line for e in chosen])
        scorer = getattr(clf, "scorer", None)
        result.evaluated_tokens += scorer.evaluated_tokens if scorer is not None else 0
    order = sorted(predictions)
    result.items = [items[i] for i in order]
    result.predictions = [predictions[i] for i in order]
    if job.evaluate:
        from . import metrics

        result.report = metrics.report(
            [i.label or "" for i in result.items], [p.label for p in result.predictions], result.labels,
            confidence=[p.confidence for p in result.predictions], top=[p.top for p in result.predictions],
            abstain_label=settings.abstain_label if settings.abstain_below is not None else None)
        result.report["method"] = settings.method
        if job.k_fold is not None:
            result.report["k_fold"] = job.k_fold
        if job.holdout is not None:
            result.report["holdout"] = job.holdout
    return result


def show_prompt(model: Model, job: Job, text: str | None = None) -> str:
    """The exact prompt for ``text`` (default: the first item), and what is scored after it."""
    if job.settings.method != "prompt":
        raise UsageError("--show-prompt applies to the prompt method")
    examples = list(job.examples)
    if job.k_fold is not None or job.holdout is not None:
        raise UsageError("--show-prompt shows one prompt; with --k-fold or --holdout each fold has its own")
    chosen = select_examples(examples, job.labels, max_examples=job.settings.max_examples, seed=job.settings.seed)
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
    from .atomic import sha256_file

    return sha256_file(path)


def manifest(job: Job, result: Run, *, model_name: str, model_sha256: str | None) -> dict:
    """Provenance of a run: enough to reproduce it and to know what produced each number."""
    from . import __version__
    from .runtime import llama_cpp_version

    settings = job.settings
    out = {
        "llmlocal_version": __version__,
        "llama_cpp_python_version": llama_cpp_version(),
        "model": {"name": model_name, "sha256": model_sha256},
        "method": settings.method,
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
        "classifiers": result.classifiers,
    }
    if result.report is not None:
        out["evaluation"] = {k: result.report[k] for k in ("n", "accuracy", "macro_f1")}
    return out


def check_output(path: str | None) -> None:
    """Refuse, before any work, an output file that could not be written."""
    if path is None or path == "-":
        return
    import os

    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise UsageError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write {path}: directory {parent} is not writable")


def write_outputs(job: Job, result: Run, meta: dict, *, output: str | None, fmt: str,
                  json_header: bool = False, stdout: IO[str] | None = None) -> None:
    """Predictions to ``output`` (atomically, with ``<output>.meta.json``) or to ``stdout``."""
    import json

    from .atomic import atomic_writer, write_text

    header = meta if json_header else None
    if output is None or output == "-":
        write_predictions(stdout or sys.stdout, result, fmt, header=header, with_gold=job.evaluate)
        return
    with atomic_writer(output) as fh:
        write_predictions(fh, result, fmt, header=header, with_gold=job.evaluate)
    write_text(f"{output}.meta.json", json.dumps(meta, indent=2, ensure_ascii=False) + "\n")


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
                     hint="add --format csv or --format jsonl")


def write_predictions(fh: IO[str], result: Run, fmt: str, *, header: dict | None = None,
                      with_gold: bool = False) -> None:
    """CSV (id, label, confidence, p_<label>...) or JSONL (probabilities as an object), input order.

    ``header``: a manifest written as the first JSONL line, ``{"manifest": {...}}``.
    """
    import csv
    import json

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
        raise UsageError("--json-header needs JSONL output; with CSV the manifest goes to <output>.meta.json")
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(["id", "label", "confidence"] + [f"p_{label}" for label in result.labels]
                    + (["gold"] if with_gold else []))
    for item, p in zip(result.items, result.predictions):
        writer.writerow([p.id, p.label, p.confidence] + [p.probabilities[label] for label in result.labels]
                        + ([item.label] if with_gold else []))



def write_embeddings(items: Sequence[Item], vectors: np.ndarray, *, output: str | None,
                     stdout: IO[str] | None = None) -> None:
    """``.npy``: a float32 matrix, one row per item in input order; else JSONL ``{"id", "embedding"}``."""
    import json

    from .atomic import atomic_writer

    if output is not None and output.endswith(".npy"):
        with atomic_writer(output, "wb") as fh:
            np.save(fh, vectors.astype(np.float32))
        return

    def lines(fh: IO[str]) -> None:
        for item, vec in zip(items, vectors):
            fh.write(json.dumps({"id": item.id, "embedding": [round(float(x), 7) for x in vec]}) + "\n")

    if output is None or output == "-":
        lines(stdout or sys.stdout)
    else:
        with atomic_writer(output) as fh:
            lines(fh)
