"""Completion and streaming on top of runtime: prompts, stop sequences, the context budget.

A Generator keeps the tokens of its sequence that are in the KV cache and, for the next prompt,
evaluates only what differs from them: a chat turn re-uses the whole conversation so far.
"""

from __future__ import annotations

import codecs
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

from .errors import ContextOverflowError, UsageError
from .runtime import Model, SamplingParams


@dataclass
class Completion:
    """The result of one generation, with what is needed to reproduce and account for it."""

    text: str
    finish_reason: str  # "stop" (end of turn or a stop sequence), "length" (max tokens), "context" (window full)
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens whose KV cache was re-used
    prompt_seconds: float = 0.0
    gen_seconds: float = 0.0
    truncated_tokens: int = 0  # prompt tokens dropped by --truncate
    params: dict = field(default_factory=dict)

    @property
    def prompt_tps(self) -> float:
        evaluated = self.prompt_tokens - self.cached_tokens
        return evaluated / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def gen_tps(self) -> float:
        return self.completion_tokens / self.gen_seconds if self.gen_seconds > 0 else 0.0

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens, "cached_tokens": self.cached_tokens}

    def timings(self) -> dict:
        return {"prompt_seconds": round(self.prompt_seconds, 4), "gen_seconds": round(self.gen_seconds, 4),
                "prompt_tokens_per_second": round(self.prompt_tps, 2), "gen_tokens_per_second": round(self.gen_tps, 2)}


class _StopFilter:
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


def common_prefix(a: list[int], b: list[int], limit: int) -> int:
    """Length of the common start of ``a`` and ``b``, at most ``limit``."""
    n = min(len(a), limit)
    if n <= 0:
        return 0
    return len(os.path.commonprefix([a[:n], b[:n]]))


class Generator:
    """Generates on one sequence of a Model, re-using the KV cache of the common prefix."""

    def __init__(self, model: Model, *, seq_id: int = 0) -> None:
        self.model = model
        self.seq_id = seq_id
        self.cached: list[int] = []  # tokens whose KV entries are valid, in order

    def reset(self) -> None:
        self.model.kv_remove(self.seq_id)
        self.cached = []

    def reusable(self, tokens: list[int]) -> int:
        """How many leading ``tokens`` are already in the cache (the last one is always evaluated)."""
        return common_prefix(tokens, self.cached, len(tokens) - 1)

    def _prepare(self, tokens: list[int]) -> int:
        """Keep the cached prefix shared with ``tokens`` (at least one token must be evaluated)."""
        n = self.reusable(tokens)
        # Anything after the shared prefix (including a token decoded just before a Ctrl-C) goes.
        # ``cached`` shrinks before the KV cache does and grows only after it, so a Ctrl-C between
        # any two steps leaves it a prefix of what the cache holds, never a claim beyond it.
        self.cached = self.cached[:n]
        self.model.kv_remove(self.seq_id, n, -1)
        return n

    def stream(self, tokens: list[int], params: SamplingParams) -> Iterator[str]:
        """Yield text as it is generated; the generator's return value is the Completion."""
        model = self.model
        params.validate()
        params = params.resolved()  # a random seed is drawn here and recorded in the Completion
        if len(tokens) >= model.n_ctx:
            raise ContextOverflowError(len(tokens), model.n_ctx, needed=len(tokens) + 1)
        started = time.perf_counter()
        reused = self._prepare(tokens)
        todo = tokens[reused:]
        model.eval_prompt(todo, start=reused, seq_id=self.seq_id)
        self.cached.extend(todo)
        prompt_done = time.perf_counter()

        sampler = model.sampler(params)
        for t in tokens[-params.repeat_last_n:] if params.repeat_last_n > 0 else []:
            sampler.accept(t)  # repeat penalties see the prompt, as in llama-cli
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = _StopFilter(params.stop)
        produced = 0
        finish = "length"
        try:
            while produced < params.max_tokens:
                if len(self.cached) >= model.n_ctx:
                    finish = "context"
                    break
                token = sampler.sample()
                if model.is_eog(token):
                    finish = "stop"
                    break
                produced += 1
                out = stops.feed(decoder.decode(model.piece(token)))
                if out:
                    yield out
                if stops.stopped:
                    finish = "stop"
                    break
                model.decode_one(token, len(self.cached), self.seq_id)
                self.cached.append(token)
            else:
                finish = "length"
            if not stops.stopped:
                tail = stops.feed(decoder.decode(b"", final=True)) + stops.flush()
                if tail:
                    yield tail
        finally:
            sampler.close()
        return Completion(
            text=stops.text, finish_reason=finish, prompt_tokens=len(tokens), completion_tokens=produced,
            cached_tokens=reused, prompt_seconds=prompt_done - started,
            gen_seconds=time.perf_counter() - prompt_done, params=asdict(params),
        )

    def complete(self, tokens: list[int], params: SamplingParams,
                 on_text: Callable[[str], None] | None = None) -> Completion:
        """Run :meth:`stream` to the end, calling ``on_text`` with each piece."""
        it = self.stream(tokens, params)
        while True:
            try:
                piece = next(it)
            except StopIteration as done:
                return done.value
            if on_text is not None:
                on_text(piece)


def build_prompt(model: Model, text: str, *, raw: bool, system: str | None = None,
                 template: str | None = None) -> str:
    """The text the model sees: ``text`` as-is (raw), or one user turn in the chat template."""
    if raw:
        if system:
            raise UsageError("--system needs a chat template; it cannot be used with --raw")
        return text
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return model.render_chat(messages, template=template)


def tokenize_prompt(model: Model, prompt: str, *, raw: bool) -> list[int]:
    # A raw prompt gets the model's BOS as llama-cli adds it; a rendered chat template already
    # carries whatever special tokens the template wants.
    return model.tokenize(prompt, add_special=raw)


def fit_prompt(model: Model, text: str, *, raw: bool, system: str | None, template: str | None,
               max_tokens: int, truncate: bool) -> tuple[list[int], int]:
    """Tokens for ``text``, refusing (or with ``truncate``, shortening) a prompt that cannot fit.

    Truncation drops the start of the user's text, never the template or system prompt, and
    leaves room for min(max_tokens, n_ctx/2) new tokens. Returns (tokens, tokens dropped).
    """
    tokens = tokenize_prompt(model, build_prompt(model, text, raw=raw, system=system, template=template), raw=raw)
    if len(tokens) < model.n_ctx:
        return tokens, 0
    if not truncate:
        raise ContextOverflowError(len(tokens), model.n_ctx, needed=len(tokens) + 1)
    budget = model.n_ctx - max(1, min(max_tokens, model.n_ctx // 2))
    body = model.tokenize(text, add_special=False, parse_special=False)
    overhead = len(tokens) - len(body)
    keep = budget - overhead
    if keep <= 0:
        raise ContextOverflowError(overhead, model.n_ctx)
    dropped = len(body) - keep
    shortened = model.detokenize(body[dropped:])
    tokens = tokenize_prompt(model, build_prompt(model, shortened, raw=raw, system=system, template=template), raw=raw)
    return tokens, dropped
