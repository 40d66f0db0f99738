"""The embedding method of ``llmlocal classify``: pooled model embeddings, then logistic
regression (or nearest centroid when a label has a single example). Also ``llmlocal embed``'s vectors."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import UsageError
from .fewshot import Progress, even_spans, softmax

if TYPE_CHECKING:
    from ..runtime import Model
    from .types import Example

# Nearest-centroid probabilities: softmax(scale * cosine). Mean-pooled LM embeddings are all alike
# (cosines 0.7-0.9); between one spam and one ham example an SMS message's two cosines differ by
# a median 0.06 (SmolLM2) / 0.12 (Gemma 3 270M), so a scale of 1 would say "uniform" every time.
# 20 makes a typical gap 1-2.5 logits (probability 0.75-0.92), about the one-shot accuracy there.
CENTROID_SCALE = 20.0


@dataclass(frozen=True)
class Embeddings:
    """One vector per text, in order, and how many pieces each text was embedded in (1: whole)."""

    vectors: np.ndarray
    chunks: list[int]

    @property
    def chunked(self) -> int:
        """How many texts were longer than one batch, so embedded in pieces."""
        return sum(c > 1 for c in self.chunks)


def embed_texts(model: Model, texts: Sequence[str], *, normalize: bool = True,
                progress: Progress | None = None) -> Embeddings:
    """Pooled embeddings (the context's pooling, mean by default), L2-normalised unless told not.

    Several texts share one decode as separate sequences. llama.cpp pools a sequence within one
    micro-batch, so a text longer than a batch is cut into near-equal pieces (each led by BOS, as
    a whole text is), and its vector is the mean of theirs weighted by their lengths: for mean
    pooling, the mean over all its tokens but for the attention each piece cannot see across its
    cut. Never an error: a long comment in a column of short ones must not stop a job.

    Decodes hold about 128 tokens: an embeddings context still computes logits for every token,
    and a batch of 512 would need a 512 MB logits buffer with Gemma 3's 262k-token vocabulary.
    """
    pieces, owners, chunks = _pieces(model, texts)
    group_tokens = min(model.options.n_batch, 128)
    width = max(model.options.n_seq_max, 1)
    piece_vectors: list[np.ndarray] = []
    i = 0
    while i < len(pieces):
        batch: list[int] = []
        total = 0
        while i < len(pieces) and len(batch) < width and (not batch or total + len(pieces[i]) <= group_tokens):
            batch.append(i)
            total += len(pieces[i])
            i += 1
        toks: list[int] = []
        pos: list[int] = []
        seqs: list[int | Sequence[int]] = []
        for s, idx in enumerate(batch):
            toks += pieces[idx]
            pos += range(len(pieces[idx]))
            seqs += [s] * len(pieces[idx])
        model.decode(toks, pos, seqs, [True] * len(toks))
        piece_vectors += [np.asarray(model.embedding(s), dtype=np.float64) for s in range(len(batch))]
        model.kv_clear()
        if progress is not None:
            progress(owners[i - 1] + 1 if i < len(pieces) else len(texts), len(texts))
    dim = piece_vectors[0].shape[0] if piece_vectors else 0
    out = np.zeros((len(texts), dim), dtype=np.float64)
    weight = np.zeros(len(texts))
    for vec, owner, piece in zip(piece_vectors, owners, pieces):
        out[owner] += len(piece) * vec
        weight[owner] += len(piece)
    out /= np.where(weight > 0, weight, 1.0)[:, None]
    if normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = out / np.where(norms > 0, norms, 1.0)
    return Embeddings(out, chunks)


def _pieces(model: Model, texts: Sequence[str]) -> tuple[list[list[int]], list[int], list[int]]:
    """(token pieces of at most one batch each, the text each belongs to, pieces per text).

    An empty text is embedded as BOS alone (or, for a model without BOS, a single space), so it
    gets a vector like any other rather than an empty sequence llama.cpp would refuse.
    """
    limit = model.options.n_batch
    bos = [model.bos] if model.add_bos and model.bos >= 0 else []
    pieces: list[list[int]] = []
    owners: list[int] = []
    chunks: list[int] = []
    for n, text in enumerate(texts):
        body = model.tokenize(text, add_special=False, parse_special=False)
        if not body and not bos:
            body = model.tokenize(" ", add_special=False, parse_special=False)
        room = max(limit - len(bos), 1)
        spans = even_spans(len(body), room) or [(0, 0)]  # an empty text: one (BOS-only) piece
        for a, b in spans:
            pieces.append(bos + body[a:b])
            owners.append(n)
        chunks.append(len(spans))
    return pieces, owners, chunks


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


def centred(X: np.ndarray, center: np.ndarray) -> np.ndarray:
    """``X - center``, each row renormalised to length 1."""
    out = X - center
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)


class EmbeddingClassifier:
    """Embeddings of the examples and items; logistic regression (C=10), or nearest centroid when
    a label has a single example (too little to fit a boundary with any confidence)."""

    method = "embed"
    choice: Any = None  # auto.Choice when --method auto chose this classifier

    def __init__(self, model: Model, labels: Sequence[str], examples: Sequence[Example], *, C: float = 10.0,
                 cache: dict[str, tuple[np.ndarray, int]] | None = None) -> None:
        self.model, self.labels, self.C = model, list(labels), C
        self._cache = cache if cache is not None else {}
        counts = Counter(e.label for e in examples)
        missing = [label for label in self.labels if counts[label] == 0]
        if missing:
            raise UsageError(f"the embedding method needs examples of every label; none for: {', '.join(missing)}")
        X = self.embed([e.text for e in examples])
        y = [self.labels.index(e.label) for e in examples]
        self.n_examples = len(examples)
        self.center: np.ndarray | None = None
        if min(counts[label] for label in self.labels) < 2:
            self.kind = "nearest-centroid"
            centroids = np.stack([X[np.asarray(y) == j].mean(axis=0) for j in range(len(self.labels))])
            self.centroids = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
            self.lr = None
        else:
            # Centred on the examples' mean, then renormalised: mean-pooled LM vectors share a large
            # common direction (cosines 0.7-0.9), which the regression would otherwise spend its
            # few examples learning around. Measured on SMS with SmolLM2 (3 seeds): macro-F1
            # 0.835 -> 0.861 at k = 8, 0.873 -> 0.891 at k = 32. Not for nearest centroid, whose
            # scale was set on uncentred cosines (and two centred examples are only opposites).
            self.kind = "logistic-regression"
            self.center = X.mean(axis=0)
            self.lr = LogisticRegression(C).fit(centred(X, self.center), y, len(self.labels))

    def embed(self, texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            done = embed_texts(self.model, todo, progress=progress)
            for text, vec, chunks in zip(todo, done.vectors, done.chunks):
                self._cache[text] = (vec, chunks)
        return np.stack([self._cache[t][0] for t in texts]) if texts else np.zeros((0, 0))

    def chunks(self, texts: Sequence[str]) -> list[int]:
        """How many pieces each (already embedded) text took: more than 1 for a text longer than a batch."""
        return [self._cache[t][1] for t in texts]

    def predict_proba(self, texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
        X = self.embed(texts, progress=progress)
        if self.lr is not None:
            assert self.center is not None
            return self.lr.predict_proba(centred(X, self.center))
        return softmax(CENTROID_SCALE * (X @ self.centroids.T))

    def describe(self) -> dict:
        out = {"method": self.method, "classifier": self.kind, "pooling": self.model.options.pooling,
               "normalised": True, "examples": self.n_examples}
        if self.lr is not None:
            out.update(C=self.C, iterations=self.lr.iterations, centred=True)
        else:
            out["scale"] = CENTROID_SCALE
        return out
