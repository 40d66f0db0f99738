"""Prompt lookup: draft tokens for speculative decoding from the text itself, no second model.

When the output copies its input (fixing the spelling of a paragraph, quoting a sentence,
extracting fields), the tokens that followed the last few generated tokens the previous time they
appeared are a good guess at what comes next. The Generator decodes such a draft together with
the token just sampled, in one decode, and keeps the part the model itself samples (see
``Generator._generate``); this module only finds drafts and decides how long they should be.

Pure Python over token ids, so it is tested without a model.
"""

from __future__ import annotations

from dataclasses import dataclass

NGRAMS = (3, 2)  # suffix lengths tried, longest first; a 1-token match drafts mostly noise
MAX_DRAFT = 16
# Until measured: a wide decode's cost per extra token, as a fraction of a one-token decode's.
PRIOR_EXTRA_COST = 0.5
# The prior acceptance rate, as pseudo-counts (accepted tokens, rejections): optimistic, so a
# first draft is tried and the costs get measured.
PRIOR = (9.0, 1.0)
FADE = 0.9  # how much of the acceptance evidence a step without a draft keeps (so it is re-tried)
KEEP = 0.8  # how much of the evidence a new draft's outcome keeps (recent text counts most)
GAIN = 1.05  # the expected speed-up a draft must promise (timings are noisy)


@dataclass
class DecodeCosts:
    """Measured decode costs of one model's context, kept by its Generator across generations."""

    one: float | None = None  # seconds of a one-token decode (moving average)
    extra: float | None = None  # seconds per extra token of a wide decode

    def observe(self, n_tokens: int, seconds: float) -> None:
        """A decode of ``n_tokens`` took ``seconds`` (the first of a kind sets the average)."""
        if n_tokens == 1:
            self.one = seconds if self.one is None else 0.8 * self.one + 0.2 * seconds
        elif self.one is not None:
            per = max(0.0, seconds - self.one) / (n_tokens - 1)
            self.extra = per if self.extra is None else 0.8 * self.extra + 0.2 * per


@dataclass
class LookupStats:
    """What prompt lookup did in one generation (reported in Completion.timings)."""

    drafted: int = 0  # draft tokens decoded for verification
    accepted: int = 0  # of those, the ones the model's own sample agreed with
    drafts: int = 0  # verification decodes with a draft


class Drafter:
    """Finds drafts in a growing token history and sizes them by what they are expected to save.

    A draft is what followed the most recent earlier occurrence of the history's last 3 tokens
    (else 2). Whether to use it, and how much of it, is a cost model: with a per-token acceptance
    rate ``a`` a draft of ``k`` tokens yields on average ``1 + a + ... + a**k`` tokens for one
    decode of ``k + 1`` tokens, whose cost is measured as generation goes (DecodeCosts: a one-token
    decode, and the extra cost of each further token in a wide one). The length that
    maximises tokens per second is taken if it promises at least GAIN times the one-token speed,
    else none. On a CPU a wide decode costs a good part of a one-token decode per extra token, so
    free text, where drafts rarely hold, runs almost only one-token decodes; the acceptance
    evidence fades while no draft is tried (FADE), so a later stretch of copying is noticed.
    """

    def __init__(self, tokens: list[int], costs: DecodeCosts | None = None) -> None:
        self.history: list[int] = []
        # n-gram -> the index just after its most recent occurrence that has a continuation. The
        # n-gram ending the history is registered only when the next token arrives, so a lookup
        # never finds the suffix itself.
        self._index: dict[tuple[int, ...], int] = {}
        self._accepted, self._rejected = PRIOR
        self.costs = costs if costs is not None else DecodeCosts()
        self.stats = LookupStats()
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        h = self.history
        for t in tokens:
            end = len(h)
            for n in NGRAMS:
                if end >= n:
                    self._index[tuple(h[end - n:end])] = end
            h.append(t)

    def draft(self, limit: int) -> list[int]:
        """Up to ``limit`` tokens likely to follow the history, as many as pay for themselves."""
        found = self._find(min(limit, MAX_DRAFT))
        k = self.length(len(found)) if found else 0
        if k == 0:
            self._fade()
        return found[:k]

    def _find(self, limit: int) -> list[int]:
        if limit <= 0:
            return []
        h = self.history
        for n in NGRAMS:
            if len(h) >= n:
                at = self._index.get(tuple(h[-n:]))
                if at is not None:
                    return h[at:at + limit]
        return []

    @property
    def rate(self) -> float:
        """The estimated chance that the model agrees with the next draft token."""
        return self._accepted / (self._accepted + self._rejected)

    def length(self, available: int) -> int:
        """The draft length (at most ``available``) with the best expected speed, 0 if none beats GAIN."""
        a, one = self.rate, self.costs.one or 1.0
        extra = self.costs.extra if self.costs.extra is not None else PRIOR_EXTRA_COST * one
        best, best_k = GAIN / one, 0
        expected = 1.0
        for k in range(1, available + 1):
            expected += a ** k
            speed = expected / (one + extra * k)
            if speed > best:
                best, best_k = speed, k
        return best_k

    def _fade(self) -> None:
        pa, pr = PRIOR
        self._accepted = pa + FADE * (self._accepted - pa)
        self._rejected = pr + FADE * (self._rejected - pr)

    def record(self, drafted: int, accepted: int) -> None:
        """The outcome of a draft of ``drafted`` tokens, ``accepted`` of them kept."""
        s = self.stats
        s.drafts += 1
        s.drafted += drafted
        s.accepted += accepted
        self._accepted = KEEP * self._accepted + accepted
        self._rejected = KEEP * self._rejected + (accepted < drafted)
