"""``--method auto``: choose the classifier from the labelled examples alone, by cross-validation.

Candidates: the few-shot prompt (``prompt``), the prompt with contextual calibration
(``calibrated``), the embedding method (``embed``) and both signals at once (``combined``, see
:class:`CombinedClassifier`). Each is scored by macro-F1 over the examples with the same
stratified folds: every example is predicted by a classifier built from the other folds' examples.
The items are never looked at, so the choice cannot overfit them.

Why a few folds and not leave-one-out: a prompt without example i must be evaluated again from
where i stood, so leave-one-out costs about k/2 prompts of tokens. With four folds laid out one
after the other (:func:`fold_order`), the prompt without fold j shares the whole prompt's cached
cells up to fold j and evaluates only the rest: 1.5 prompts of tokens in all (the whole prompt
itself is the final classifier's, kept in the cache). The embedding method's folds cost one
embedding per example (cached; only the logistic regression is refitted). Scoring the left-out
examples costs one item each, calibration one content-free item per fold.

The rule, and why (measured by benchmarks/sms_eval.py over three seeds, SMS and SQuAD topics):
the candidate with the best cross-validated macro-F1 wins, but over so few examples a difference
of one or two examples is noise, so a candidate must beat the preferred one (the first in
:data:`PREFERENCE` among those scored) by more than :data:`MARGIN` to be chosen instead. Fewer than
two examples of some label leave no folds to score: the preferred candidate is used. Zero-shot
(no examples) is the calibrated prompt, whose content-free input needs no example.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from . import metrics
from .embedding import EmbeddingClassifier
from .fewshot import CONTENT_FREE, Progress, PromptClassifier, softmax
from .types import Example

if TYPE_CHECKING:
    from ..runtime import Model

CANDIDATES = ("prompt", "calibrated", "embed", "combined")
# Tie order: the candidate that was best or within noise of the best on every benchmark setting.
PREFERENCE = ("combined", "calibrated", "embed", "prompt")
MARGIN = 0.05  # macro-F1 a candidate must win by over the preferred one (see the module docstring)
MAX_FOLDS = 4


class CombinedClassifier:
    """The calibrated prompt's and the embedding method's probabilities, multiplied and renormalised
    (the product of experts: a label wins where both agree, and a confident signal outweighs an
    unsure one). The two signals fail differently: the prompt knows what the labels mean but is
    biased towards one label with few examples; the embeddings know only the examples but not
    the labels' words."""

    method = "combined"
    choice: Any = None  # auto.Choice when --method auto chose this classifier

    def __init__(self, prompt: PromptClassifier, embed: EmbeddingClassifier) -> None:
        self.prompt, self.embed = prompt, embed
        self.labels = list(prompt.labels)

    def predict_proba(self, texts: Sequence[str], *, progress: Progress | None = None,
                      prompt_texts: Sequence[str] | None = None) -> np.ndarray:
        p = self.prompt.predict_proba(texts if prompt_texts is None else prompt_texts, progress=progress)
        q = self.embed.predict_proba(texts)
        return combine(p, q)

    def describe(self) -> dict:
        return {"method": self.method, "rule": "product of the two methods' probabilities, renormalised",
                "prompt": self.prompt.describe(), "embed": self.embed.describe()}


def combine(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The product of two label distributions, renormalised (computed in log space)."""
    tiny = np.finfo(np.float64).tiny
    return softmax(np.log(np.maximum(p, tiny)) + np.log(np.maximum(q, tiny)))


@dataclass
class Choice:
    """What auto chose, and the cross-validated score of every candidate (None: not scored)."""

    method: str
    scores: dict[str, float | None]
    folds: int
    examples: int
    rule: str
    seconds: float = 0.0
    prompt_tokens: int = 0  # tokens evaluated to score the prompt folds (the cost of choosing)
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"chosen": self.method, "metric": "macro_f1", "folds": self.folds, "examples": self.examples,
                "scores": {m: None if s is None else round(s, 4) for m, s in self.scores.items()},
                "rule": self.rule, "seconds": round(self.seconds, 3), "prompt_tokens": self.prompt_tokens}

    def summary(self) -> str:
        """The one stderr line: what was chosen and every candidate's score."""
        scored = ", ".join(f"{m} {s:.3f}" if s is not None else f"{m} -" for m, s in self.scores.items())
        how = f"{self.folds}-fold macro-F1 over {self.examples} examples: {scored}" if self.folds else self.rule
        return f"method auto chose {self.method} ({how}; {self.seconds:.1f} s)"


def auto_summary(choices: Sequence[Choice]) -> str:
    """One line for stderr: the choice (or, with one per fold, how often each method was chosen)."""
    if len(choices) == 1:
        return choices[0].summary()
    tally = Counter(c.method for c in choices)
    seconds = sum(c.seconds for c in choices)
    return ("method auto chose, per fold: " + ", ".join(f"{m} in {n}" for m, n in tally.most_common())
            + f" ({seconds:.1f} s; each fold's scores are in the report)")


def pick(scores: dict[str, float | None]) -> str:
    """The preferred candidate, unless another beats it by more than MARGIN (then the best)."""
    scored = {m: s for m, s in scores.items() if s is not None}
    preferred = next(m for m in PREFERENCE if m in scored)
    best = max(scored, key=lambda m: (scored[m], -PREFERENCE.index(m)))
    return best if scored[best] > scored[preferred] + MARGIN else preferred


def fold_order(examples: Sequence[Example], labels: Sequence[str], *, seed: int = 0
               ) -> tuple[list[Example], list[list[int]]]:
    """The examples reordered fold after fold, and the folds as index ranges of that order.

    Each fold is stratified (its labels in the proportions of the whole); within a fold the
    examples keep their relative order. Laid out so, the prompt without the last fold is a prefix
    of the whole prompt, and the prompt without fold j shares the whole prompt's cells up to fold
    j: cross-validating the prompt costs 1.5 prompts of tokens for four folds instead of three.
    The whole prompt uses the same order, so every fold's quarter of it is balanced too.
    """
    from .job import stratified_folds

    counts = Counter(e.label for e in examples)
    n_folds = min(MAX_FOLDS, min(counts.get(label, 0) for label in labels))
    if n_folds < 2:  # too few of some label to fold: as given
        return list(examples), []
    folds = stratified_folds([e.label for e in examples], n_folds, seed=seed)
    ordered = [examples[i] for fold in folds for i in fold]
    bounds = np.cumsum([0] + [len(f) for f in folds])
    return ordered, [list(range(bounds[j], bounds[j + 1])) for j in range(len(folds))]


MakePrompt = Callable[..., PromptClassifier]  # (model, examples, calibrate, share=False)


def choose(contexts: Callable[[str], Model], labels: Sequence[str], examples: Sequence[Example],
           folds: Sequence[Sequence[int]], *, make_prompt: MakePrompt, embedding_cache: dict | None = None,
           C: float = 10.0, embed_ok: bool = True) -> tuple[Choice, PromptClassifier | None]:
    """Score every candidate on ``examples`` by cross-validation over ``folds`` and pick one.

    ``examples`` and ``folds`` as :func:`fold_order` lays them out (no folds: too few examples
    of some label to score). ``contexts("prompt"|"embed")`` gives the model context each kind
    needs (loaded on first use); ``make_prompt(model, examples, calibrate, share=...)`` builds the
    prompt classifier as the job's settings say (template, instructions, chat). ``embed_ok``:
    False when the embedding candidates cannot be used (a label without examples).

    Returns the choice and the prompt classifier over all the examples when one was built (its
    prefix is in the cache: the final classifier reuses it).
    """
    started = time.perf_counter()
    unscored: dict[str, float | None] = {m: None for m in CANDIDATES}
    if not examples:
        return Choice("calibrated", unscored, 0, 0,
                      "zero-shot: the calibrated prompt (its content-free input needs no examples)",
                      seconds=time.perf_counter() - started), None
    if not folds:
        method = PREFERENCE[0] if embed_ok else "calibrated"
        return Choice(method, unscored, 0, len(examples),
                      f"fewer than 2 examples of some label: no folds to score, so {method}",
                      seconds=time.perf_counter() - started), None
    ordered = list(examples)
    raw = np.zeros((len(ordered), len(labels)))
    prior = np.zeros((len(ordered), len(labels)))
    emb = np.zeros((len(ordered), len(labels)))
    model = contexts("prompt")
    whole = make_prompt(model, ordered, False)
    warm = time.perf_counter()
    whole.scorer.warm()  # the folds' prompts share its cells
    warm = time.perf_counter() - warm
    tokens = 0
    for test in folds:
        held = set(test)
        clf = make_prompt(model, [e for i, e in enumerate(ordered) if i not in held], False, share=True)
        admitted = clf.admit([ordered[i].text for i in test], truncate=True)
        raw[test] = clf.log_scores([a.text or "" for a in admitted])
        prior[test] = softmax(clf.log_scores([CONTENT_FREE]))[0]
        tokens += clf.scorer.evaluated_tokens
        clf.scorer.release()
    if embed_ok:
        econtext = contexts("embed")
        cache = embedding_cache if embedding_cache is not None else {}
        for test in folds:
            held = set(test)
            eclf = EmbeddingClassifier(econtext, labels, [e for i, e in enumerate(ordered) if i not in held],
                                       C=C, cache=cache)
            emb[test] = eclf.predict_proba([ordered[i].text for i in test])
    probs = {"prompt": softmax(raw), "calibrated": softmax(raw - np.log(prior))}
    if embed_ok:
        probs["embed"] = emb
        probs["combined"] = combine(probs["calibrated"], emb)
    scores = dict(unscored)
    gold = [e.label for e in ordered]
    for m, p in probs.items():
        scores[m] = metrics.macro_f1(gold, [labels[int(i)] for i in p.argmax(axis=1)], labels)
    method = pick(scores)
    # The whole prompt's evaluation is the chosen classifier's own cost when it uses the prompt
    # (it is kept and used); it is a cost of choosing only when the embeddings win.
    seconds = time.perf_counter() - started - (warm if method != "embed" else 0.0)
    choice = Choice(method, scores, len(folds), len(ordered),
                    f"the best cross-validated macro-F1, unless within {MARGIN} of the preferred "
                    f"({' > '.join(PREFERENCE)})", seconds=seconds, prompt_tokens=tokens)
    return choice, whole
