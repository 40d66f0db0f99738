"""The embedding method of ``llmlocal classify``: pooled model embeddings, then logistic
regression (or nearest centroid when a label has a single example). Also ``llmlocal embed``'s vectors."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ContextOverflowError, UsageError, option
from .fewshot import Progress, softmax

if TYPE_CHECKING:
    from ..runtime import Model
    from .types import Example

# Nearest-centroid probabilities: softmax(scale * cosine). Mean-pooled LM embeddings are all alike
# (cosines 0.7-0.9); between one spam and one ham example an SMS message's two cosines differ by
# a median 0.06 (SmolLM2) / 0.12 (Gemma 3 270M), so a scale of 1 would say "uniform" every time.
# 20 makes a typical gap 1-2.5 logits (probability 0.75-0.92), about the one-shot accuracy there.
CENTROID_SCALE = 20.0
# Tokens per text at most: the batch size the loader gives a context of 512 tokens or more.
EMBED_BATCH = 512


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
    tokenized = check_lengths(model, texts)
    i = 0
    while i < len(tokenized):
        batch: list[int] = []
        total = 0
        while i < len(tokenized) and len(batch) < width and (not batch or total + len(tokenized[i]) <= group_tokens):
            batch.append(i)
            total += len(tokenized[i])
            i += 1
        toks: list[int] = []
        pos: list[int] = []
        seqs: list[int | Sequence[int]] = []
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


def check_lengths(model: Model, texts: Sequence[str]) -> list[list[int]]:
    """The tokens of each text, refusing a text longer than one batch: llama.cpp pools a
    sequence's embedding within one micro-batch.

    Raises:
        ContextOverflowError: with ``index``, the position in ``texts`` of the first text too long
            (callers that know ids and line numbers name them in the message).
    """
    limit = model.options.n_batch
    tokenized = [model.tokenize(t, add_special=True, parse_special=False) for t in texts]
    for i, tokens in enumerate(tokenized):
        if len(tokens) > limit:
            detail = f"is {len(tokens)} tokens; an embedding takes at most {limit}"
            # The batch is min(512, context): a context above 512 does not raise it. The logits of
            # every token of a batch are kept (an embeddings context still computes them), and a
            # larger batch would need n_vocab x tokens floats: 4 GB for Gemma 3 at 4096.
            raise ContextOverflowError(
                len(tokens), limit, message=f"text {i + 1} {detail}", detail=detail, index=i,
                hint="shorten the text or split it into parts" if limit >= EMBED_BATCH else
                f"shorten the text, or raise {option('ctx')} to {EMBED_BATCH} (the most a text can take)")
    return tokenized


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
        for it in range(1, self.max_iter + 1):  # noqa: B007 (the count is kept: iterations)
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
            try:
                vectors = embed_texts(self.model, todo, progress=progress)
            except ContextOverflowError as exc:
                if exc.index is None:
                    raise
                raise exc.at(list(texts).index(todo[exc.index])) from None  # the caller knows texts, not todo
            for text, vec in zip(todo, vectors):
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
