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
START_DRAFT = 8
MAX_PAUSE = 32


@dataclass
class LookupStats:
    """What prompt lookup did in one generation (reported in Completion.timings)."""

    drafted: int = 0  # draft tokens decoded for verification
    accepted: int = 0  # of those, the ones the model's own sample agreed with
    drafts: int = 0  # verification decodes with a draft


class Drafter:
    """Finds drafts in a growing token history and adapts their length to how often they hold.

    A draft is what followed the most recent earlier occurrence of the history's last 3 tokens
    (else 2). Its length starts at START_DRAFT, doubles (to MAX_DRAFT) after a draft accepted
    whole and shrinks to one more than what was accepted otherwise. A draft rejected at its first
    token costs a wider decode for nothing, so after one the Drafter pauses for a number of steps
    that doubles with each further miss (to MAX_PAUSE): free text, where matches rarely hold,
    then runs at one-token speed nearly all the time.
    """

    def __init__(self, tokens: list[int]) -> None:
        self.history: list[int] = []
        # n-gram -> the index just after its most recent occurrence that has a continuation. The
        # n-gram ending the history is registered only when the next token arrives, so a lookup
        # never finds the suffix itself.
        self._index: dict[tuple[int, ...], int] = {}
        self.length = START_DRAFT
        self._pause = 0  # steps left without drafting
        self._misses = 0  # drafts in a row rejected at the first token
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
        """Up to ``limit`` tokens likely to follow the history (none while paused)."""
        limit = min(limit, self.length)
        if limit <= 0:
            return []
        if self._pause > 0:
            self._pause -= 1
            return []
        h = self.history
        for n in NGRAMS:
            if len(h) < n:
                continue
            at = self._index.get(tuple(h[-n:]))
            if at is not None:
                return h[at:at + limit]
        return []

    def record(self, drafted: int, accepted: int) -> None:
        """Adapt to the outcome of a draft of ``drafted`` tokens, ``accepted`` of them kept."""
        s = self.stats
        s.drafts += 1
        s.drafted += drafted
        s.accepted += accepted
        if accepted == drafted:
            self.length = min(MAX_DRAFT, 2 * self.length)
        else:
            self.length = max(1, accepted + 1)
        if accepted == 0:
            self._misses += 1
            self._pause = min(MAX_PAUSE, 2 ** (self._misses - 1))
        else:
            self._misses = 0
