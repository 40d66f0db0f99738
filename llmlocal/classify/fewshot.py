"""The few-shot prompt and its label scorer: the prompt method of ``llmlocal classify``.

The answer is never parsed from generated text: each label is scored by the model's
log-probability of its whole token sequence after the prompt (summed over its tokens, so
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

import re
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ContextOverflowError, UsageError, option
from ..runtime import BATCH_INVARIANT_MAX_TOKENS  # runtime imports llama_cpp only when a model loads

if TYPE_CHECKING:
    from ..runtime import Model
    from .types import Example

DEFAULT_TEMPLATE = "{instructions}\n\nText: {text}\nLabel: {label}\n"
DEFAULT_INSTRUCTIONS = "Classify each text as one of: {labels}."
CONTENT_FREE = "N/A"  # the content-free input of contextual calibration (Zhao et al. 2021)
BLOCK_SEPARATOR = "\n\n"
_PLACEHOLDER = re.compile(r"\{(instructions|labels|text|label)\}")
_SENTINEL = "\uE000llmlocal-item\uE000"  # a private-use marker that no chat template rewrites

Progress = Callable[[int, int], None]

# Which scorer's prefix is in each model's KV cache (sequence 0), so that two classifiers sharing a
# model (k-fold, calibration experiments) never score against each other's examples.
_prefix_owner: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Which scorer's prefix is in the shared sequence (LabelScorer(share=True)), built on sequence 0's.
_shared_owner: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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
                raise UsageError(f"the model's chat template does not keep the message text as-is; use {option('raw')}")
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
        longest_index = max(range(len(item_tokens)), key=lambda i: len(item_tokens[i]), default=None)
        extra = sum(len(t) - 1 for t in self.label_tokens)  # cells for the label branches
        need = len(self.prefix) + longest + extra
        if need <= n_ctx:
            return
        header = self.header_tokens
        per_example = (len(self.prefix) - header) / len(self.examples) if self.examples else 0
        fit = int((n_ctx - header - longest - extra) // per_example) if per_example else 0
        raise ContextOverflowError(
            need, n_ctx, index=longest_index,  # the longest item, for callers that know its id and line
            message=f"the prompt does not fit the context: instructions {header} tokens + {len(self.examples)} "
            f"examples {len(self.prefix) - header} tokens + the longest item {longest} + labels "
            f"{extra} = {need} tokens, but the context holds {n_ctx}",
            hint=(f"use {option('max_examples')} {max(fit, 0)} (about that many fit) or a larger {option('ctx')}"
                  if self.examples else f"use a larger {option('ctx')} or shorter items"))

    def describe(self) -> dict:
        return {"mode": "chat" if self.chat else "raw", "template": self.template.source,
                "instructions": self.instructions, "label_continuations": self.label_texts,
                "label_tokens": self.label_tokens, "prefix_tokens": len(self.prefix),
                "examples": len(self.examples)}


# ---------------------------------------------------------------- scoring


def even_spans(n: int, limit: int) -> list[tuple[int, int]]:
    """[start, end) spans of near-equal size, at most ``limit`` each (none for n = 0)."""
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

    def __init__(self, model: Model, prefix: list[int], labels: Sequence[list[int]], *, parallel: int = 8,
                 share: bool = False) -> None:
        if any(not t for t in labels):
            raise UsageError("a label tokenises to nothing")
        self.model = model
        self.prefix = list(prefix)
        self.labels = [list(t) for t in labels]
        self.branches = [j for j, t in enumerate(self.labels) if len(t) > 1]
        self.seqs_per_item = max(1, len(self.branches))
        # Sequence 0 is the prefix, the last one ballast, the one before it a shared prefix (below).
        room = max(model.options.n_seq_max, 1) - 3
        self.ballast_seq = max(model.options.n_seq_max, 1) - 1
        self.shared_seq = max(model.options.n_seq_max, 1) - 2
        # share: instead of replacing the prefix in sequence 0, build this one in shared_seq from
        # the part it has in common with sequence 0's (copied, not recomputed) plus its own rest.
        # For auto's folds: a prompt without one fold of the examples begins as the whole prompt does.
        self.share = share
        self.base_seq = 0  # the sequence items copy their prefix from
        self.cells = len(self.prefix)  # cells the prefix occupies in the cache (with a shared one: both)
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
        _shared_owner.pop(self.model, None)

    def warm(self) -> None:
        """Evaluate the prefix now (it is kept in the cache for the items to come)."""
        self._prepare_prefix(0, np.zeros((0, len(self.labels))))

    def release(self) -> None:
        """Free a shared prefix (sequence 0's, another scorer's, stays)."""
        if _shared_owner.get(self.model) is self:
            self.model.kv_remove(self.shared_seq)
            _shared_owner.pop(self.model, None)

    def _check(self, tokens: list[int]) -> None:
        need = len(self.prefix) + len(tokens) + self._extra()
        if need > self.model.n_ctx:
            raise ContextOverflowError(need, self.model.n_ctx, hint=f"use fewer examples ({option('max_examples')}), "
                                       f"a larger {option('ctx')}, or shorter items")

    def _prepare_prefix(self, longest: int, out: np.ndarray) -> None:
        """Make the prefix's cells ready: already there, shared with sequence 0's, or evaluated anew."""
        model = self.model
        if _shared_owner.get(model) is self:
            return
        if _prefix_owner.get(model) is self:
            previous = _shared_owner.pop(model, None)  # another's shared prefix would take cells we count on
            if previous is not None:
                model.kv_remove(previous.shared_seq)
            return
        owner = _prefix_owner.get(model)
        if self.share and owner is not None:
            common = 0
            for a, b in zip(owner.prefix, self.prefix):
                if a != b:
                    break
                common += 1
            rest = len(self.prefix) - common
            if common > 0 and len(owner.prefix) + rest + longest + self._extra() + 1 <= model.n_ctx:
                previous = _shared_owner.pop(model, None)
                if previous is not None:
                    model.kv_remove(previous.shared_seq)
                model.kv_remove(self.shared_seq)
                model.kv_copy(0, self.shared_seq, 0, common)
                self._decode([(t, common + q, self.shared_seq, None) for q, t in enumerate(self.prefix[common:])], out)
                _shared_owner[model] = self
                self.base_seq, self.cells = self.shared_seq, len(owner.prefix) + rest
                return
        model.kv_clear()
        _prefix_owner.pop(model, None)
        _shared_owner.pop(model, None)
        self._decode([(t, p, 0, None) for p, t in enumerate(self.prefix)], out)
        _prefix_owner[model] = self
        self.base_seq, self.cells = 0, len(self.prefix)

    def score(self, items: Sequence[list[int]], *, progress: Progress | None = None) -> np.ndarray:
        """An (items x labels) array of summed label log-probabilities, reusing the prefix's cache."""
        model = self.model
        out = np.zeros((len(items), len(self.labels)), dtype=np.float64)
        for tokens in items:
            self._check(tokens)
        self._prepare_prefix(max((len(t) for t in items), default=0), out)
        room = model.n_ctx - self.cells - 1  # one cell spare for a ballast token
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
                    model.kv_copy(self.base_seq, s)
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
        for a, b in even_spans(len(entries), self.max_tokens):
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
        _shared_owner.pop(model, None)
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


@dataclass(frozen=True)
class Admission:
    """Whether an item fits the prompt's context: the text to score (shortened when ``truncated``),
    or None and the ``error`` that says why it cannot be scored."""

    text: str | None
    truncated: bool = False
    error: ContextOverflowError | None = None


class PromptClassifier:
    """Few-shot (or zero-shot) prompting, labels scored by log-probability, optional calibration."""

    method = "prompt"
    choice: Any = None  # auto.Choice when --method auto chose this classifier

    def __init__(self, model: Model, labels: Sequence[str], examples: Sequence[Example], *,
                 template: Template | None = None, instructions: str | None = None, chat: bool = False,
                 calibrate: bool = False, parallel: int = 8, share: bool = False) -> None:
        self.labels = list(labels)
        self.prompt = FewShotPrompt(model, labels, examples, template=template, instructions=instructions, chat=chat)
        self.prompt.check_fits([])
        self.scorer = LabelScorer(model, self.prompt.prefix, self.prompt.label_tokens, parallel=parallel, share=share)
        self.calibrate = calibrate
        self.prior: np.ndarray | None = None  # label distribution for the content-free input

    def admit(self, texts: Sequence[str], *, truncate: bool = False) -> list[Admission]:
        """Which texts fit the context after the prompt; with ``truncate``, the others are cut
        (from the end, keeping their start) until they do."""
        prompt = self.prompt
        extra = sum(len(t) - 1 for t in prompt.label_tokens)
        room = self.model.n_ctx - len(prompt.prefix) - extra
        out = []
        for text in texts:
            n = len(prompt.item_tokens(text))
            if n <= room:
                out.append(Admission(text))
                continue
            if truncate:
                cut, shorter = len(text), text
                while n > room and cut > 0:
                    # Proportional to the excess, and a little under, so a few rounds suffice.
                    cut = min(cut - 1, int(cut * room / n * 0.95))
                    shorter = text[:max(cut, 0)]
                    n = len(prompt.item_tokens(shorter))
                if n <= room:
                    out.append(Admission(shorter, truncated=True))
                    continue
            need = len(prompt.prefix) + n + extra
            detail = (f"does not fit the context after the prompt: {len(prompt.prefix)} prompt tokens + {n} for "
                      f"the item + {extra} for the labels = {need}, but the context holds {self.model.n_ctx}")
            out.append(Admission(None, error=ContextOverflowError(
                need, self.model.n_ctx, message=detail, detail=detail,
                hint=f"add {option('truncate')} to shorten such items, or use a larger {option('ctx')} or fewer "
                f"examples ({option('max_examples')})")))
        return out

    @property
    def model(self) -> Model:
        return self.prompt.model

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
