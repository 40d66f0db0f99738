"""From sampled tokens to text, in one place for the one-sequence Generator and the parallel Engine.

A token's bytes may end inside a UTF-8 character, a stop sequence may arrive split over several
tokens, and generation ends for one of four reasons; :class:`TokenDecoder` holds those rules.
:class:`Stream` is what a streamed generation returns: iterate it for the text, then read its
``completion`` (the way simonw/llm's Response works), instead of catching StopIteration.
"""

from __future__ import annotations

import codecs
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

from . import structured

if TYPE_CHECKING:
    from .generate import Completion
    from .runtime import Model, TokenLogprob
    from .sampling import SamplingParams


class StopFilter:
    """Holds back text that might be the start of a stop sequence; cuts at a full match."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def feed(self, chunk: str) -> str:
        self.text += chunk
        if not self.stops:
            out, self.emitted = self.text[self.emitted:], len(self.text)
            return out
        window = max(len(s) for s in self.stops)
        start = max(0, self.emitted - window)
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            cut = min(hits)
            self.text = self.text[:cut]
            self.stopped = True
            out, self.emitted = self.text[self.emitted:], len(self.text)
            return out
        hold = 0
        for s in self.stops:  # the longest tail of text that begins some stop sequence
            for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                if self.text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        safe = len(self.text) - hold
        out = self.text[self.emitted:safe] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        return out

    def flush(self) -> str:
        out, self.emitted = self.text[self.emitted:], len(self.text)
        return out



class TokenDecoder:
    """One sequence's sampled tokens as the text a user sees, and whether (and why) it has ended.

    ``finish_reason`` becomes "stop" (an end-of-generation token or a stop sequence), "length"
    (``max_tokens`` produced) or "context" (the sequence fills ``n_ctx``); a token that ends the
    generation needs no decode. Under a JSON constraint, generation stops as soon as the value is
    complete (the grammar would allow only a space and the end then). With logprobs on, each
    produced token's log-probability is kept in OpenAI's shape.
    """

    def __init__(self, model: Model, params: SamplingParams, *, n_ctx: int, ignore_eos: bool = False) -> None:
        self._model = model
        self._max_tokens = params.max_tokens
        self._n_ctx = n_ctx
        self.constraint = params.constraint
        # A grammar allows an end-of-generation token only where it is complete: never ignore it then.
        self._ignore_eos = ignore_eos and self.constraint is None
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stops = StopFilter(params.stop)
        self.produced = 0
        self.finish_reason: str | None = "length" if params.max_tokens == 0 else None
        self.completed = False  # the constraint's grammar reached its end
        self.logprobs: list[dict[str, Any]] | None = [] if params.logprobs is not None else None

    @property
    def text(self) -> str:
        return self.stops.text

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def remaining(self) -> int:
        """Tokens still allowed by ``max_tokens``."""
        return self._max_tokens - self.produced

    def push(self, token: int, length: int, logprob: TokenLogprob | None = None) -> str:
        """The new text that ``token`` adds; ``length`` is the sequence's length counting it."""
        if self._model.is_eog(token) and not self._ignore_eos:
            self.completed = self.constraint is not None  # the grammar allowed the end here
            return self._end("stop")
        self.produced += 1
        piece = self._model.piece(token)
        if self.logprobs is not None and logprob is not None:
            self.logprobs.append(self._logprob_entry(piece, logprob))
        text = self._utf8.decode(piece)
        out = self.stops.feed(text)
        if self.stops.stopped:
            self.finish_reason = "stop"  # the text is cut at the stop sequence: nothing held back
            return out
        if self.constraint is not None and self.constraint.is_json and text and structured.closes(self.text):
            self.completed = True
            return out + self._end("stop")
        if self.produced >= self._max_tokens:
            return out + self._end("length")
        if length >= self._n_ctx:
            return out + self._end("context")
        return out

    def _logprob_entry(self, piece: bytes, lp: TokenLogprob) -> dict[str, Any]:
        def entry(raw: bytes, value: float) -> dict[str, Any]:
            return {"token": raw.decode("utf-8", "replace"), "logprob": value, "bytes": list(raw)}

        return {**entry(piece, lp.logprob), "top_logprobs": [entry(self._model.piece(t), v) for t, v in lp.top]}

    def result(self) -> dict[str, Any]:
        """The Completion fields that come from the decoder (the one place that judges a constraint)."""
        reason = self.finish_reason or "length"
        checked = None
        if self.constraint is not None:
            checked = structured.check(self.constraint, self.text, reason, ended_by_grammar=self.completed)
        return {"text": self.text, "finish_reason": reason, "completion_tokens": self.produced,
                "checked": checked, "logprobs": self.logprobs}

    def _end(self, reason: str) -> str:
        self.finish_reason = reason
        tail = self.stops.feed(self._utf8.decode(b"", final=True))
        if not self.stops.stopped:
            tail += self.stops.flush()
        return tail


class Stream:
    """Text pieces of one generation as they come; afterwards ``completion`` holds the result."""

    def __init__(self, pieces: Generator[str, None, Completion]) -> None:
        self._pieces = pieces
        self.completion: Completion | None = None

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        if self.completion is not None:
            raise StopIteration
        try:
            return next(self._pieces)
        except StopIteration as done:
            self.completion = done.value
            raise StopIteration from None

    def result(self) -> Completion:
        """Run to the end (if not there yet) and return the completion."""
        for _ in self:
            pass
        assert self.completion is not None
        return self.completion

    def close(self) -> None:
        """Stop early; the generation's resources are freed now."""
        self._pieces.close()
