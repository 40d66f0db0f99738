"""The parallel decoding engine on the real SmolLM2 model.

The reference is generate.Generator, which `llmlocal complete` uses: one sequence at a time.
At --parallel 1 the engine must give exactly its output; with more sequences per decode
llama.cpp's batched matrix kernels round differently, so a near-tie between two tokens can
resolve the other way (benchmarks/batch_bench.py --agreement measures how often). Generation
stays short (max_tokens 8-16) so the suite is quick on a busy CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmlocal import generate
from llmlocal.engine import Engine, Finished, Request, TokenText
from llmlocal.errors import ContextOverflowError, DecodeError, UsageError
from llmlocal.runtime import LoadOptions, Model, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=12)
SYSTEM = ("You are a careful assistant. Answer briefly and precisely, in plain English, without lists or "
          "markdown. Keep answers short and prefer concrete facts to opinions.")
PROMPTS = [
    ("Write one sentence about the sea.", None),
    ("What colour is the sky?", SYSTEM),
    ("Name three fruits.", None),
    ("Why do cats purr?", SYSTEM),
    ("Say hello in French.", SYSTEM),
    ("What is 2 + 2?", None),
]


def chat_tokens(model: Model, text: str, system: str | None = None) -> list[int]:
    return generate.tokenize_prompt(model, generate.build_prompt(model, text, raw=False, system=system), raw=False)


@pytest.fixture(scope="module")
def single(smollm2: Path):
    """A one-sequence context, as `llmlocal complete` loads it."""
    with Model(smollm2, LoadOptions(n_ctx=1024)) as m:
        yield m


@pytest.fixture(scope="module")
def quad(smollm2: Path):
    """Four sequences of 512 tokens, one KV stream each (what `llmlocal batch -p 4` loads)."""
    with Model(smollm2, LoadOptions(n_ctx=2048, n_seq_max=4, kv_unified=False)) as m:
        yield m


def alone(model: Model, tokens: list[int], params: SamplingParams) -> generate.Completion:
    model.kv_clear()
    return generate.Generator(model).complete(tokens, params)


def run_all(engine: Engine, requests: list[Request]) -> dict:
    return {req.tag: res for req, res in engine.run(requests)}


@pytest.mark.slow
def test_one_slot_equals_generator_exactly(smollm2: Path, single: Model):
    with Model(smollm2, LoadOptions(n_ctx=1024, n_seq_max=1)) as m:
        got = run_all(Engine(m), [Request(chat_tokens(m, t, s), GREEDY, tag=i) for i, (t, s) in enumerate(PROMPTS)])
    for i, (text, system) in enumerate(PROMPTS):
        ref = alone(single, chat_tokens(single, text, system), GREEDY)
        assert (got[i].text, got[i].finish_reason, got[i].completion_tokens) == \
            (ref.text, ref.finish_reason, ref.completion_tokens), text


@pytest.mark.slow
def test_seeded_sampling_per_sequence_matches_generator(smollm2: Path, single: Model):
    """Each sequence has its own sampler: temperature 0.9 with a seed gives what it gives alone."""
    params = [SamplingParams(temperature=0.9, seed=s, max_tokens=10) for s in (1, 2, 3)]
    with Model(smollm2, LoadOptions(n_ctx=1024, n_seq_max=1)) as m:
        toks = chat_tokens(m, "Tell me a story.")
        got = run_all(Engine(m), [Request(toks, p, tag=p.seed) for p in params])
    for p in params:
        assert got[p.seed].text == alone(single, toks, p).text
    assert len({c.text for c in got.values()}) > 1  # different seeds, different stories


@pytest.mark.slow
def test_parallel_matches_generator_at_temperature_0(quad: Model, single: Model):
    """Four at a time: compare with one at a time, and record how many agree (most must)."""
    requests = [Request(chat_tokens(quad, t, s), GREEDY, tag=i) for i, (t, s) in enumerate(PROMPTS)]
    got = run_all(Engine(quad, share_prefix=False), requests)
    same = sum(got[i].text == alone(single, chat_tokens(single, t, s), GREEDY).text
               for i, (t, s) in enumerate(PROMPTS))
    # On this model and CPU all six agree; a batched near-tie may flip one elsewhere.
    assert same >= len(PROMPTS) - 1, same


def test_continuous_batching_refills_slots_and_finishes_everything(quad: Model):
    """Ten requests through four slots, with different lengths: all finish, in completion order."""
    requests = [Request(chat_tokens(quad, f"Count to {i}."), SamplingParams(temperature=0, max_tokens=2 + i), tag=i)
                for i in range(10)]
    engine = Engine(quad)
    order = [req.tag for req, _ in engine.run(requests)]
    assert sorted(order) == list(range(10))
    assert engine.stats.finished == 10 and engine.idle
    assert engine.stats.decodes < sum(2 + i for i in range(10))  # sequences shared decodes


def test_events_stream_text_and_report_completion(quad: Model):
    engine = Engine(quad)
    handles = [engine.submit(Request(chat_tokens(quad, t, s), GREEDY, tag=i)) for i, (t, s) in enumerate(PROMPTS[:3])]
    assert engine.queued == 3 and engine.active == 0
    texts = {h.number: "" for h in handles}
    finished = {}
    steps = 0
    while not engine.idle:
        events = engine.step()
        steps += 1
        if steps == 1:
            assert engine.active == 3  # admitted together, prompts evaluated in one decode
        for ev in events:
            if isinstance(ev, TokenText):
                texts[ev.handle.number] += ev.text
            elif isinstance(ev, Finished):
                finished[ev.handle.number] = ev.completion
            else:
                pytest.fail(f"unexpected {ev}")
    for h in handles:
        assert h.state == "finished" and h.completion is finished[h.number]
        assert texts[h.number] == h.completion.text
        assert h.prefilled_at is not None and h.finished_at >= h.prefilled_at


def test_stop_sequences_and_max_tokens_are_per_sequence(quad: Model):
    toks = chat_tokens(quad, "List the numbers from 1 to 20, separated by commas.")
    requests = [
        Request(toks, SamplingParams(temperature=0, max_tokens=30, stop=(",",)), tag="stop"),
        Request(toks, SamplingParams(temperature=0, max_tokens=3), tag="short"),
        Request(toks, SamplingParams(temperature=0, max_tokens=0), tag="none"),
        Request(toks, SamplingParams(temperature=0, max_tokens=12), tag="long"),
    ]
    got = run_all(Engine(quad), requests)
    assert got["stop"].finish_reason == "stop" and "," not in got["stop"].text
    assert got["short"].completion_tokens == 3 and got["short"].finish_reason == "length"
    assert got["none"].text == "" and got["none"].finish_reason == "length"
    assert got["long"].completion_tokens == 12
    # Same prompt, same greedy path: whichever stopped first is the start of the other.
    long, stopped = got["long"].text, got["stop"].text
    assert long.startswith(stopped) or stopped.startswith(long)


@pytest.mark.slow
def test_prefix_sharing_copies_the_common_start_and_changes_nothing(smollm2: Path, single: Model):
    """Prompts with one system prompt: later ones copy its KV cells instead of evaluating them."""
    prompts = [(t, SYSTEM) for t, _ in PROMPTS]
    with Model(smollm2, LoadOptions(n_ctx=2048, n_seq_max=2, kv_unified=False)) as m:
        requests = [Request(chat_tokens(m, t, s), GREEDY, tag=i) for i, (t, s) in enumerate(prompts)]
        shared = Engine(m, share_prefix=True)
        with_share = run_all(shared, requests)
        plain = Engine(m, share_prefix=False)
        without = run_all(plain, requests)
    # Every prompt after the first copies the whole common start (template + system prompt).
    common = len(os.path.commonprefix([r.tokens for r in requests]))
    assert common > 30
    assert shared.stats.shared_tokens == common * (len(prompts) - 1)
    assert shared.stats.prompt_tokens + shared.stats.shared_tokens == plain.stats.prompt_tokens
    assert all(with_share[i].cached_tokens > 0 for i in range(1, len(prompts)))
    assert [with_share[i].text for i in range(len(prompts))] == [without[i].text for i in range(len(prompts))]


def test_prefix_sharing_in_a_unified_kv_cache(smollm2: Path):
    with Model(smollm2, LoadOptions(n_ctx=2048, n_seq_max=4, kv_unified=True)) as m:
        requests = [Request(chat_tokens(m, t, SYSTEM), GREEDY, tag=i) for i, (t, _) in enumerate(PROMPTS)]
        engine = Engine(m)
        got = run_all(engine, requests)
    assert engine.stats.shared_tokens > 0
    assert all(got[i].finish_reason in ("stop", "length") and got[i].text for i in range(len(PROMPTS)))


@pytest.mark.slow
def test_a_sequence_stops_at_its_share_of_the_context(smollm2: Path):
    # llama.cpp pads each stream to 256 cells, so 4 sequences need n_ctx 1024 for 256 each.
    with Model(smollm2, LoadOptions(n_ctx=1024, n_seq_max=4, kv_unified=False)) as m:
        engine = Engine(m, ignore_eos=True)  # run to the end of the sequence's share, whatever it says
        assert engine.n_ctx_seq == 256
        toks = m.tokenize("Once upon a time", add_special=True)
        got = run_all(engine, [Request(toks, SamplingParams(temperature=0, max_tokens=500), tag=0)])
    assert got[0].finish_reason == "context"
    assert got[0].prompt_tokens + got[0].completion_tokens == 256


def test_submit_refuses_what_cannot_run(quad: Model):
    engine = Engine(quad)
    with pytest.raises(ContextOverflowError):
        engine.submit(Request(list(range(100, 100 + engine.n_ctx_seq)), GREEDY))
    with pytest.raises(UsageError):
        engine.submit(Request([], GREEDY))
    with pytest.raises(UsageError):
        engine.submit(Request([1, 2], SamplingParams(temperature=-1)))
    # run() reports them with the request instead, and carries on with the rest.
    results = dict((req.tag, res) for req, res in engine.run([
        Request(list(range(100, 100 + engine.n_ctx_seq)), GREEDY, tag="long"),
        Request(chat_tokens(quad, "Hi"), GREEDY, tag="ok"),
    ]))
    assert isinstance(results["long"], ContextOverflowError)
    assert results["ok"].completion_tokens > 0


def test_parallel_needs_the_sequences_in_the_context(single: Model):
    with pytest.raises(UsageError, match="n_seq_max"):
        Engine(single, 2)


def test_cancel_frees_the_slot_for_the_next_request(quad: Model):
    engine = Engine(quad, 1)
    first = engine.submit(Request(chat_tokens(quad, "Tell me a long story."),
                                  SamplingParams(temperature=0, max_tokens=200)))
    second = engine.submit(Request(chat_tokens(quad, "Hi"), SamplingParams(temperature=0, max_tokens=4)))
    engine.step()
    engine.step()
    assert first.state == "generating" and second.state == "queued"
    engine.cancel(first)
    assert first.state == "cancelled" and first.completion is None
    events = []
    while not engine.idle:
        events += engine.step()
    assert [type(e) for e in events if not isinstance(e, TokenText)] == [Finished]
    assert second.completion.completion_tokens == 4


def test_ignore_eos_runs_to_max_tokens(quad: Model):
    toks = chat_tokens(quad, "Say only the word yes.")
    normal = run_all(Engine(quad), [Request(toks, SamplingParams(temperature=0, max_tokens=40), tag=0)])[0]
    forced = run_all(Engine(quad, ignore_eos=True),
                     [Request(toks, SamplingParams(temperature=0, max_tokens=40), tag=0)])[0]
    assert normal.finish_reason == "stop" and normal.completion_tokens < 40
    assert forced.finish_reason == "length" and forced.completion_tokens == 40


def test_multibyte_text_is_never_split(quad: Model):
    toks = chat_tokens(quad, "Write the word 'coffee' in Japanese, Chinese and Greek, then three emoji.")
    engine = Engine(quad)
    handle = engine.submit(Request(toks, SamplingParams(temperature=0, max_tokens=40)))
    pieces = []
    while not engine.idle:
        pieces += [e.text for e in engine.step() if isinstance(e, TokenText)]
    assert "".join(pieces) == handle.completion.text
    assert any(ord(c) > 127 for c in handle.completion.text)
    # A replacement character may only end the text: max_tokens can cut a character's bytes
    # short, and that last fragment is flushed as U+FFFD rather than dropped.
    assert "\ufffd" not in handle.completion.text.rstrip("\ufffd")


def test_a_failed_decode_fails_only_its_sequences(quad: Model, monkeypatch):
    engine = Engine(quad)
    requests = [Request(chat_tokens(quad, t), GREEDY, tag=i) for i, (t, _) in enumerate(PROMPTS[:2])]
    real = quad.decode
    calls = {"n": 0}

    def flaky(*args, **kw):  # a fake is enough: llama_decode's own failure modes need a full KV cache
        calls["n"] += 1
        if calls["n"] == 3:
            raise DecodeError(1)  # what runtime raises for llama_decode's "KV cache full"
        return real(*args, **kw)

    monkeypatch.setattr(quad, "decode", flaky)
    results = [res for _, res in engine.run(requests)]
    assert [type(r) for r in results] == [DecodeError, DecodeError]
    assert results[0].code == 1 and isinstance(results[0], RuntimeError)
    assert engine.stats.failed == 2 and engine.idle
    # The engine is usable afterwards.
    monkeypatch.setattr(quad, "decode", real)
    assert run_all(engine, [Request(requests[0].tokens, GREEDY, tag=0)])[0].completion_tokens > 0
