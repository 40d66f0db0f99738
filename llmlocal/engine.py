"""Parallel decoding: many sequences in one llama.cpp context, advanced together.

One ``llama_decode`` evaluates a token for every generating sequence at once; on a CPU the
weights are read once per step instead of once per sequence, which is where the gain comes
from (``../shared/perf-baseline.md``: about 1.8x at 8 sequences on a 135M model).

Continuous batching: a sequence that finishes frees its slot, and the next queued request takes
it in the same step. A newly admitted prompt is evaluated in chunks that share each decode with
the other sequences' generation tokens (at most ``n_batch`` tokens per decode), so generation
never stalls behind a long prompt. Prompts that start alike (a common system prompt) evaluate
the shared start once: the new sequence gets a copy of another sequence's KV cells for it.

The engine has no threads: the caller drives it with :meth:`Engine.step` (a server interleaves
steps with its I/O) or lets :meth:`Engine.run` drive it for a whole job. It owns the model's
KV cache while in use: sequences ``0 .. n_parallel-1`` are its slots.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .decoding import TokenDecoder
from .errors import ContextOverflowError, DecodeError, InvalidSchemaError, UsageError, option
from .generate import Completion, common_prefix
from .runtime import Model, Sampler, SamplingParams

# Wait for another sequence to evaluate a shared prompt start only if it saves this many tokens:
# waiting idles the slot for a step or two, which a few tokens do not pay for.
_MIN_WAIT_SHARE = 32
# With one KV stream per sequence, sharing copies a whole stream (a memcpy of the sequence's
# context share): worth it from about this many tokens, not for a chat template's first line.
_MIN_STREAM_COPY = 16


@dataclass
class Request:
    """One generation: prompt tokens and how to sample. ``tag`` is the caller's own reference."""

    tokens: list[int]
    params: SamplingParams
    tag: Any = None


class Handle:
    """A submitted request as it moves through the engine; read-only for callers.

    ``state`` is one of queued, waiting (for a shared prompt start), prefill, generating,
    finished, failed, cancelled. When done, ``completion`` or ``error`` is set.
    """

    def __init__(self, request: Request, number: int) -> None:
        self.request = request
        self.number = number  # submission order, unique per engine
        self.state = "queued"
        self.completion: Completion | None = None
        self.error: BaseException | None = None
        self.submitted_at = time.perf_counter()
        self.admitted_at: float | None = None
        self.prefilled_at: float | None = None
        self.finished_at: float | None = None

    @property
    def done(self) -> bool:
        return self.state in ("finished", "failed", "cancelled")

    def __repr__(self) -> str:
        return f"<Handle #{self.number} {self.state} tag={self.request.tag!r}>"


@dataclass(frozen=True)
class TokenText:
    """New text of a sequence (stop sequences already held back or cut).

    ``logprobs``: with logprobs requested, the entries of the tokens sampled since the last event
    (OpenAI's shape; a token whose text is held back by a stop sequence is reported with it).
    """

    handle: Handle
    text: str
    logprobs: list[dict] | None = None


@dataclass(frozen=True)
class Finished:
    handle: Handle
    completion: Completion


@dataclass(frozen=True)
class Failed:
    """A request that could not run to the end (the decode failed). Others go on."""

    handle: Handle
    error: BaseException


Event = TokenText | Finished | Failed


@dataclass
class EngineStats:
    """Counters since the engine was created (for progress lines and benchmarks)."""

    decodes: int = 0
    decode_seconds: float = 0.0
    prompt_tokens: int = 0  # prompt tokens evaluated (shared ones excluded)
    shared_tokens: int = 0  # prompt tokens copied from another sequence instead
    gen_tokens: int = 0  # tokens sampled
    finished: int = 0
    failed: int = 0
    peak_active: int = 0  # the most requests that held slots at once


@dataclass
class _Slot:
    seq: int
    handle: Handle | None = None
    tokens: list[int] = field(default_factory=list)  # prompt, then accepted generated tokens
    n_past: int = 0  # tokens[:n_past] are in the KV cache
    n_prompt: int = 0
    shared: int = 0
    admitted_order: int = 0
    sampler: Sampler | None = None
    decoder: TokenDecoder | None = None
    waiting_on: _Slot | None = None  # another slot evaluating a prompt start this one will copy
    wait_until: int = 0  # ... once that slot has this many tokens in the cache
    batch_index: int = -1  # where this slot's logits are in the current batch (-1: none)
    logprobs_sent: int = 0  # logprob entries already reported in TokenText events

    @property
    def free(self) -> bool:
        return self.handle is None

    # The fields a busy slot always has (set together when a request is admitted).
    @property
    def busy(self) -> Handle:
        assert self.handle is not None
        return self.handle

    @property
    def out(self) -> TokenDecoder:
        assert self.decoder is not None
        return self.decoder


# llama.cpp keeps per-sequence state up to LLAMA_MAX_SEQ (256); past a few dozen sequences a
# 2-8 core CPU gains nothing and each one costs its own share of the context.
MAX_PARALLEL = 64


def check_parallel(n: int) -> None:
    """Refuse a parallel sequence count outside 1..MAX_PARALLEL, before anything is loaded."""
    if not 1 <= n <= MAX_PARALLEL:
        raise UsageError(f"{option('parallel')} must be between 1 and {MAX_PARALLEL}; got {n}")


class Engine:
    """Decode up to ``n_parallel`` requests together on ``model`` (loaded with n_seq_max >= it).

    Args:
        n_parallel: slots; default the model context's n_seq_max. The KV cache is split evenly:
            each sequence may hold ``model.n_ctx // n_parallel`` tokens (prompt + generated).
        ignore_eos: keep generating past end-of-generation tokens until max_tokens (benchmarks).
        share_prefix: evaluate a prompt start shared with another active sequence only once.
    """

    def __init__(self, model: Model, n_parallel: int | None = None, *, ignore_eos: bool = False,
                 share_prefix: bool = True) -> None:
        n_seq_max = model.options.n_seq_max
        n_parallel = n_parallel or n_seq_max
        if not 1 <= n_parallel <= n_seq_max:
            raise UsageError(f"parallel {n_parallel} needs a context loaded with n_seq_max >= {n_parallel} "
                             f"(this one has {n_seq_max})")
        if n_parallel > model.options.n_batch:
            raise UsageError(f"parallel {n_parallel} exceeds the batch size {model.options.n_batch}")
        self.model = model
        self.n_parallel = n_parallel
        # A unified KV pool is split evenly so no sequence can starve another; separate streams
        # are split by llama.cpp already.
        self.n_ctx_seq = model.n_ctx // n_parallel if model.kv_unified else model.n_ctx_seq
        self.n_batch = model.options.n_batch
        self.ignore_eos = ignore_eos
        self.share_prefix = share_prefix and model.kv_shareable
        self.stats = EngineStats()
        self._slots = [_Slot(seq=i) for i in range(n_parallel)]
        self._queue: deque[Handle] = deque()
        self._submitted = 0
        self._admitted = 0
        model.kv_clear()  # a Generator may have used sequence 0

    # -- the caller's side

    def submit(self, request: Request) -> Handle:
        """Queue a request; it starts when a slot is free.

        Raises (before queueing): UsageError for bad sampling parameters or an empty prompt,
        ContextOverflowError for a prompt that does not fit one sequence's share of the context,
        InvalidSchemaError for a grammar llama.cpp cannot parse.
        """
        request.params.validate()
        # A random seed becomes a concrete one here, so the result records the seed really used.
        request.params = request.params.resolved()
        if not request.tokens:
            raise UsageError("empty prompt: nothing to evaluate")
        if len(request.tokens) >= self.n_ctx_seq:
            raise ContextOverflowError(len(request.tokens), self.n_ctx_seq, needed=len(request.tokens) + 1)
        self.model.check_sampling(request.params)  # a grammar llama.cpp cannot parse fails here, not in a step
        handle = Handle(request, self._submitted)
        self._submitted += 1
        self._queue.append(handle)
        return handle

    def cancel(self, handle: Handle) -> None:
        """Stop a request (a server's client went away); no event is reported for it."""
        if handle.done:
            return
        if handle.state == "queued":
            self._queue.remove(handle)
        else:
            self._release(self._slot_of(handle))
        handle.state = "cancelled"
        handle.finished_at = time.perf_counter()

    @property
    def active(self) -> int:
        """Requests holding a slot."""
        return sum(not s.free for s in self._slots)

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def idle(self) -> bool:
        return not self._queue and self.active == 0

    def close(self) -> None:
        """Cancel everything and free the KV cache (the engine may be used again afterwards)."""
        for h in list(self._queue):
            self.cancel(h)
        for slot in self._slots:
            if slot.handle is not None:
                self.cancel(slot.handle)
        self.model.kv_clear()

    def step(self) -> list[Event]:
        """Admit queued requests to free slots, run one decode, sample; return what happened."""
        events: list[Event] = []
        self._admit(events)
        self.stats.peak_active = max(self.stats.peak_active, self.active)
        self._resolve_sharing()
        # How many tokens each slot evaluates: one generation token for every generating slot
        # (no sequence stalls), then prompt chunks in admission order filling the rest of n_batch.
        busy = [s for s in self._slots if not s.free and s.waiting_on is None]
        todo: dict[int, int] = {}
        for slot in busy:
            if slot.n_past >= slot.n_prompt:
                todo[slot.seq] = 1
        room = self.n_batch - len(todo)
        for slot in sorted((s for s in busy if s.n_past < s.n_prompt), key=lambda s: s.admitted_order):
            if room <= 0:
                break
            todo[slot.seq] = n = min(room, slot.n_prompt - slot.n_past)
            room -= n
        if not todo:
            return events

        # Tokens go in slot order: with one KV stream per sequence, llama.cpp splits a batch into
        # one compute per run of consecutive sequence ids, so this keeps it to as few as possible.
        tokens: list[int] = []
        positions: list[int] = []
        seqs: list[int | Sequence[int]] = []
        logits: list[bool] = []
        scheduled: list[tuple[_Slot, int]] = []
        for slot in self._slots:
            n = todo.get(slot.seq, 0)
            if not n:
                continue
            end = slot.n_past + n
            tokens.extend(slot.tokens[slot.n_past:end])
            positions.extend(range(slot.n_past, end))
            seqs.extend([slot.seq] * n)
            wants_logits = end == len(slot.tokens)
            logits.extend([False] * (n - 1) + [wants_logits])
            slot.batch_index = len(tokens) - 1 if wants_logits else -1
            scheduled.append((slot, n))

        started = time.perf_counter()
        try:
            self.model.decode(tokens, positions, seqs, logits)
        except DecodeError as exc:
            for slot, _ in scheduled:
                events.append(self._fail(slot, exc))
            return events
        now = time.perf_counter()
        self.stats.decodes += 1
        self.stats.decode_seconds += now - started

        for slot, n in scheduled:
            if slot.n_past < slot.n_prompt:
                self.stats.prompt_tokens += min(n, slot.n_prompt - slot.n_past)
            slot.n_past += n
            if slot.batch_index >= 0:
                if slot.busy.prefilled_at is None:
                    slot.busy.prefilled_at = now
                    slot.busy.state = "generating"
                self._sample(slot, events)
        return events

    def run(self, requests: Iterable[Request]) -> Generator[tuple[Request, Completion | BaseException], None, None]:
        """Run every request; yield (request, Completion or the error) in completion order.

        ``requests`` is read lazily, a little ahead of the free slots, so it may be a generator
        that tokenizes as it goes. A request refused by :meth:`submit` is yielded with its error.
        """
        pending = iter(requests)
        try:
            yield from self._drive(pending)
        finally:
            self.close()  # the consumer stopped early (or an error escaped): free every slot

    def _drive(self, pending: Iterator[Request]) -> Iterator[tuple[Request, Completion | BaseException]]:
        exhausted = False
        while True:
            while not exhausted and len(self._queue) < self.n_parallel:
                try:
                    request = next(pending)
                except StopIteration:
                    exhausted = True
                    break
                try:
                    self.submit(request)
                except (UsageError, ContextOverflowError, InvalidSchemaError) as exc:
                    yield request, exc
            if self.idle:
                if exhausted:
                    return
                continue
            for event in self.step():
                if isinstance(event, Finished):
                    yield event.handle.request, event.completion
                elif isinstance(event, Failed):
                    yield event.handle.request, event.error

    # -- inside

    def _slot_of(self, handle: Handle) -> _Slot:
        return next(s for s in self._slots if s.handle is handle)

    def _admit(self, events: list[Event]) -> None:
        for slot in self._slots:
            if not self._queue:
                return
            if not slot.free:
                continue
            handle = self._queue.popleft()
            req = handle.request
            handle.admitted_at = time.perf_counter()
            slot.handle = handle
            slot.tokens = list(req.tokens)
            slot.n_prompt = len(req.tokens)
            slot.n_past = slot.shared = 0
            slot.admitted_order = self._admitted
            self._admitted += 1
            slot.sampler = self.model.sampler(req.params)
            keep = req.params.repeat_last_n
            for t in req.tokens[-keep:] if keep > 0 else []:
                slot.sampler.accept(t)  # repeat penalties see the prompt, as in Generator.stream
            slot.decoder = TokenDecoder(self.model, req.params, n_ctx=self.n_ctx_seq, ignore_eos=self.ignore_eos)
            handle.state = "prefill"
            if slot.out.done:  # max_tokens 0: nothing to generate, "length", as Generator
                events.append(self._finish(slot))
                continue
            slot.waiting_on = None
            if self.share_prefix:
                self._plan_share(slot)

    def _plan_share(self, slot: _Slot) -> None:
        """Copy the longest evaluated prompt start another slot has; or wait for a longer one."""
        want = slot.tokens[: slot.n_prompt - 1]  # the last prompt token is evaluated for its logits
        best_now, src_now = 0, None
        best_later, src_later = 0, None
        for other in self._slots:
            if other is slot or other.free or other.waiting_on is not None:
                continue
            ready = common_prefix(want, other.tokens, other.n_past)
            if ready > best_now:
                best_now, src_now = ready, other
            if other.admitted_order < slot.admitted_order and other.n_past < other.n_prompt:
                later = common_prefix(want, other.tokens, other.n_prompt)
                if later > best_later:
                    best_later, src_later = later, other
        if src_later is not None and best_later - best_now >= _MIN_WAIT_SHARE:
            slot.waiting_on, slot.wait_until = src_later, best_later
            slot.busy.state = "waiting"
            return
        slot.waiting_on = None
        slot.busy.state = "prefill"
        if src_now is None:
            return
        if self.model.kv_unified:
            self.model.kv_copy(src_now.seq, slot.seq, 0, best_now)  # the cells are shared, not copied
        elif best_now >= _MIN_STREAM_COPY:
            # Streams copy whole (llama.cpp applies it at the next decode); drop what is not shared.
            self.model.kv_copy(src_now.seq, slot.seq)
            self.model.kv_remove(slot.seq, best_now, -1)
        else:
            return
        slot.n_past = slot.shared = best_now
        self.stats.shared_tokens += best_now

    def _resolve_sharing(self) -> None:
        for slot in self._slots:
            src = slot.waiting_on
            if src is None:
                continue
            if src.n_past >= slot.wait_until:
                self._plan_share(slot)  # the shared start is in the cache now: copy it

    def _sample(self, slot: _Slot, events: list[Event]) -> None:
        assert slot.sampler is not None
        token = slot.sampler.sample(slot.batch_index)
        self.stats.gen_tokens += 1
        decoder = slot.out
        out = decoder.push(token, len(slot.tokens) + 1, slot.sampler.last)
        if out:
            new = None
            if decoder.logprobs is not None:
                new, slot.logprobs_sent = decoder.logprobs[slot.logprobs_sent:], len(decoder.logprobs)
            events.append(TokenText(slot.busy, out, new))
        if decoder.done:
            events.append(self._finish(slot))
        else:
            slot.tokens.append(token)

    def _finish(self, slot: _Slot) -> Finished:
        handle = slot.busy
        now = time.perf_counter()
        prefilled = handle.prefilled_at if handle.prefilled_at is not None else now
        admitted = handle.admitted_at if handle.admitted_at is not None else now
        handle.completion = Completion(
            **slot.out.result(), prompt_tokens=slot.n_prompt, cached_tokens=slot.shared,
            prompt_seconds=prefilled - admitted, gen_seconds=now - prefilled,
            params=handle.request.params.as_dict(),
        )
        handle.state = "finished"
        handle.finished_at = now
        self.stats.finished += 1
        self._release(slot)
        return Finished(handle, handle.completion)

    def _fail(self, slot: _Slot, error: BaseException) -> Failed:
        handle = slot.busy
        handle.error = error
        handle.state = "failed"
        handle.finished_at = time.perf_counter()
        self.stats.failed += 1
        self._release(slot)
        return Failed(handle, error)

    def _release(self, slot: _Slot) -> None:
        self.model.kv_remove(slot.seq)  # cells shared with other sequences stay theirs
        if slot.sampler is not None:
            slot.sampler.close()
        slot.handle = slot.sampler = slot.decoder = slot.waiting_on = None
        slot.tokens = []
        slot.n_past = slot.n_prompt = slot.logprobs_sent = 0
        slot.batch_index = -1
        for other in self._slots:
            if other.waiting_on is slot:  # what it waited for is gone: take the best there is now
                other.waiting_on = None
                self._plan_share(other)
