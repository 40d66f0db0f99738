"""Completion and streaming on top of runtime: prompts, stop sequences, the context budget.

A Generator keeps the tokens of its sequence that are in the KV cache and, for the next prompt,
evaluates only what differs from them: a chat turn re-uses the whole conversation so far.
"""

from __future__ import annotations

import collections.abc as cabc
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .decoding import Stream, TokenDecoder
from .errors import ContextOverflowError, UsageError, option
from .lookup import DecodeCosts, Drafter, LookupStats
from .runtime import Model, Sampler
from .sampling import SamplingParams
from .structured import Checked


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
    checked: Checked | None = None  # under a constraint: the parsed value and whether it is valid
    logprobs: list[dict[str, Any]] | None = None  # with params.logprobs: one entry per token (OpenAI's shape)
    lookup: LookupStats | None = None  # prompt lookup's drafts (None: it was off)

    @property
    def value(self) -> Any:
        """The parsed JSON value of a JSON-constrained generation (None otherwise)."""
        return self.checked.value if self.checked is not None else None

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
                "prompt_tokens_per_second": round(self.prompt_tps, 2), "gen_tokens_per_second": round(self.gen_tps, 2),
                **({"drafted": self.lookup.drafted, "accepted": self.lookup.accepted} if self.lookup else {})}


def common_prefix(a: list[int], b: list[int], limit: int) -> int:
    """Length of the common start of ``a`` and ``b``, at most ``limit``."""
    n = min(len(a), limit)
    if n <= 0:
        return 0
    return len(os.path.commonprefix([a[:n], b[:n]]))


class Generator:
    """Generates on one sequence of a Model, re-using the KV cache of the common prefix."""

    def __init__(self, model: Model, *, seq_id: int = 0, lookup: bool = False) -> None:
        self.model = model
        self.seq_id = seq_id
        # Prompt lookup decoding (llmlocal.lookup). Off by default: on this CPU it did not pay (the
        # README's "Prompt lookup"), and with the default kernels a wider decode can move logits
        # at near-ties, so greedy output would depend on which drafts the timings chose.
        self.lookup = lookup
        self.costs = DecodeCosts()  # what drafts are weighed against, measured across generations
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

    def stream(self, tokens: list[int], params: SamplingParams) -> Stream:
        """The text as it is generated; the Stream's ``completion`` holds the result afterwards.

        Bad parameters, a grammar llama.cpp cannot parse and a prompt that does not fit raise
        here, before the first piece.
        """
        params.validate()
        params = params.resolved()  # a random seed is drawn here and recorded in the Completion
        if len(tokens) >= self.model.n_ctx:
            raise ContextOverflowError(len(tokens), self.model.n_ctx, needed=len(tokens) + 1)
        sampler = self.model.sampler(params)  # freed by the generation (or its close)
        return Stream(self._generate(tokens, params, sampler))

    def _generate(self, tokens: list[int], params: SamplingParams,
                  sampler: Sampler) -> cabc.Generator[str, None, Completion]:
        model = self.model
        try:
            started = time.perf_counter()
            reused = self._prepare(tokens)
            todo = tokens[reused:]
            model.eval_prompt(todo, start=reused, seq_id=self.seq_id)
            self.cached.extend(todo)
            prompt_done = time.perf_counter()

            for t in tokens[-params.repeat_last_n:] if params.repeat_last_n > 0 else []:
                sampler.accept(t)  # repeat penalties see the prompt, as in llama-cli
            decoder = TokenDecoder(model, params, n_ctx=model.n_ctx)
            drafter = Drafter(tokens, self.costs) if self.lookup else None
            token = sampler.sample()
            if drafter is not None:
                drafter.extend([token])
            while True:
                out = decoder.push(token, len(self.cached) + 1, sampler.last)
                if out:
                    yield out
                if decoder.done:
                    break
                if drafter is None:
                    model.decode_one(token, len(self.cached), self.seq_id)
                    self.cached.append(token)
                    token = sampler.sample()
                    continue
                token, pieces = self._speculate(token, drafter, decoder, sampler)
                for out in pieces:
                    yield out
                if decoder.done:
                    break
        finally:
            sampler.close()
        return Completion(
            **decoder.result(), prompt_tokens=len(tokens), cached_tokens=reused,
            prompt_seconds=prompt_done - started, gen_seconds=time.perf_counter() - prompt_done,
            params=params.as_dict(), lookup=drafter.stats if drafter is not None else None,
        )

    def _speculate(self, token: int, drafter: Drafter, decoder: TokenDecoder,
                   sampler: Sampler) -> tuple[int, list[str]]:
        """Decode ``token`` (sampled, pushed, not yet in the cache) with a draft after it, and emit
        what the model samples as long as it agrees with the draft.

        Every emitted token is sampled from the model's distribution given exactly the tokens
        before it, once, as without a draft: the draft only decides which positions are computed
        ahead. So the output is the model's (greedy or seeded, token for token, wherever a wider
        decode gives the same logits; see the README's "Prompt lookup"), and the rejection
        sampling of draft-model speculation is not needed. Returns the last token sampled, which
        the cache does not hold yet, and the text pieces (yielded by the caller, after the
        sampling, so nothing can touch the decode's logits in between).
        """
        model, seq = self.model, self.seq_id
        pos = len(self.cached)
        # The draft's positions stay inside the context and the batch, and it is never longer
        # than the tokens still to produce.
        room = min(model.n_ctx - 2 - pos, model.options.n_batch - 1, decoder.remaining - 1)
        draft = drafter.draft(room)
        batch = [token, *draft]
        n = len(batch)
        started = time.perf_counter()
        if n == 1:
            model.decode_one(token, pos, seq)
        else:
            model.decode(batch, list(range(pos, pos + n)), [seq] * n, [True] * n)
        drafter.costs.observe(n, time.perf_counter() - started)
        self.cached.append(token)
        if n == 1:
            nxt = sampler.sample()
            drafter.extend([nxt])
            return nxt, []
        pieces: list[str] = []
        accepted = 0
        for i in range(n):
            nxt = sampler.sample(i)
            drafter.extend([nxt])
            if i + 1 < n and nxt == batch[i + 1]:
                # The model chose the drafted token: its KV entry is computed, and so is the next row.
                accepted += 1
                out = decoder.push(nxt, len(self.cached) + 1, sampler.last)
                if out:
                    pieces.append(out)
                if decoder.done:
                    break
                self.cached.append(nxt)
                continue
            break
        drafter.record(len(draft), accepted)
        if len(self.cached) < pos + n:  # the rejected rest of the draft (``cached`` never counted it)
            model.kv_remove(seq, len(self.cached), -1)
        return nxt, pieces

    def complete(self, tokens: list[int], params: SamplingParams,
                 on_text: Callable[[str], None] | None = None) -> Completion:
        """Run :meth:`stream` to the end, calling ``on_text`` with each piece."""
        stream = self.stream(tokens, params)
        for piece in stream:
            if on_text is not None:
                on_text(piece)
        return stream.result()


def build_prompt(model: Model, text: str, *, raw: bool, system: str | None = None,
                 template: str | None = None) -> str:
    """The text the model sees: ``text`` as-is (raw), or one user turn in the chat template."""
    if raw:
        if system:
            raise UsageError(f"{option('system')} needs a chat template; it cannot be used with {option('raw')}")
        return text
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return model.render_chat(messages, template=template)


def tokenize_prompt(model: Model, prompt: str, *, raw: bool) -> list[int]:
    # A raw prompt gets the model's BOS as llama-cli adds it; a rendered chat template already
    # carries whatever special tokens the template wants.
    return model.tokenize(prompt, add_special=raw)


def prompt_tokens(model: Model, prompt: str | Sequence[dict], *, raw: bool = False, system: str | None = None,
                  template: str | None = None, max_tokens: int = 0, truncate: bool = False,
                  n_ctx: int | None = None, overflow_hint: str | None = None) -> tuple[list[int], int]:
    """The tokens the model sees for ``prompt``, checked against the context: the one way every
    surface builds a prompt.

    ``prompt`` is a text (as-is with ``raw``, else one user turn in the chat template) or a list of
    chat messages; ``system`` goes first unless the messages have their own. A prompt that does
    not fit ``n_ctx`` (default: the model's context) raises ContextOverflowError, or, for a text
    with ``truncate``, loses the start of the text (never the template or the system prompt),
    leaving room for min(max_tokens, n_ctx/2) new tokens. ``overflow_hint`` is the overflow's
    next step, from a caller that knows which options its user has. Returns (tokens, tokens dropped).
    """
    n_ctx = n_ctx or model.n_ctx
    if not isinstance(prompt, str):
        messages = list(prompt)
        if system is not None and not any(m.get("role") == "system" for m in messages):
            messages = [{"role": "system", "content": system}, *messages]
        tokens = tokenize_prompt(model, model.render_chat(messages, template=template), raw=False)
        if len(tokens) >= n_ctx:
            raise ContextOverflowError(len(tokens), n_ctx, needed=len(tokens) + 1, hint=overflow_hint)
        return tokens, 0
    tokens = tokenize_prompt(model, build_prompt(model, prompt, raw=raw, system=system, template=template), raw=raw)
    if len(tokens) < n_ctx:
        return tokens, 0
    if not truncate:
        raise ContextOverflowError(len(tokens), n_ctx, needed=len(tokens) + 1, hint=overflow_hint)
    budget = n_ctx - max(1, min(max_tokens, n_ctx // 2))
    body = model.tokenize(prompt, add_special=False, parse_special=False)
    overhead = len(tokens) - len(body)
    keep = budget - overhead
    if keep <= 0:
        raise ContextOverflowError(overhead, n_ctx, hint=overflow_hint)
    dropped = len(body) - keep
    shortened = model.detokenize(body[dropped:])
    tokens = tokenize_prompt(model, build_prompt(model, shortened, raw=raw, system=system, template=template), raw=raw)
    return tokens, dropped
