"""Prompt lookup decoding: the same output as without it, with the real SmolLM2 model.

The Drafter tests at the top are pure logic over token ids and need no model. The rest generate
with and without lookup on the same model (one thread: the machine is shared) and compare.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from llmlocal import lookup, structured
from llmlocal.cli import cli
from llmlocal.generate import Generator, prompt_tokens
from llmlocal.lookup import DecodeCosts, Drafter
from llmlocal.runtime import LoadOptions, Model
from llmlocal.sampling import SamplingParams

# Short paragraphs written for these tests, so the prompts need no data files.
PARAGRAPHS = [
    "The old lighthouse stands on a rock at the mouth of the harbour. It was built in 1854 from "
    "granite brought by boat, and its lamp could be seen thirty kilometres out to sea.",
    "Maria Lopez opened her bakery on Elm Street in 2011. She sells rye bread, almond cakes and "
    "coffee, and the shop is open every day except Monday from seven until three.",
    "The river Tavy rises on Dartmoor and flows south for about thirty-seven kilometres before it "
    "joins the Tamar. Salmon and sea trout swim up it every autumn to spawn.",
    "Our meeting is moved to Thursday at ten in room 4B. Please bring the budget report and the "
    "list of suppliers, and tell Daniel if you cannot come.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. It happens in the "
    "chloroplasts of plant cells, which hold the green pigment chlorophyll.",
    "The train to Leeds leaves platform two at 8:15 and arrives at 10:40. Tickets cost 34 pounds "
    "return, and bicycles must be booked a day ahead.",
    "Ada Lovelace wrote the first published program for Charles Babbage's Analytical Engine in "
    "1843. She saw that the machine could handle symbols as well as numbers.",
    "Honey bees visit about a hundred flowers on each trip out of the hive. A colony can make more "
    "than twenty kilograms of honey in a good summer.",
    "The library will close for repairs from the first of June to the end of August. Books can be "
    "returned at the town hall, and the mobile library visits on Saturdays.",
    "Mount Kenya is the second highest mountain in Africa. Its highest peak, Batian, is 5,199 "
    "metres tall, and glaciers still cover parts of the summit.",
]
TYPOS = [("the", "teh"), ("and", "adn"), ("from", "form"), ("which", "wich"), ("every", "evrey")]


def _misspelt(text: str) -> str:
    for right, wrong in TYPOS:
        text = text.replace(f" {right} ", f" {wrong} ", 1)
    return text


def _prompts() -> list[str]:
    out = []
    for p in PARAGRAPHS:
        first = p.split(". ")[0]
        out += [
            f"Fix the spelling of this paragraph and write it out again:\n\n{_misspelt(p)}",
            f"Quote, word for word, the sentence of this text that gives a number:\n\n{p}",
            f"Copy the names, places and dates in this text into a JSON object:\n\n{p}",
            f"Repeat this sentence exactly: {first}.",
        ]
    out += [
        "Write a haiku about autumn.", "What is the capital of France?", "Tell me a joke about cats.",
        "Give three tips for sleeping well.", "Explain what a prime number is.",
        "Write one sentence about the sea.", "What should I cook for dinner tonight?",
        "Name four planets.", "How do I boil an egg?", "Write a limerick about a teacher.",
    ]
    return out


PROMPTS = _prompts()


@pytest.fixture(scope="module")
def model(smollm2):
    # The default thread count: with and without lookup run on the same model, so identity holds
    # at any count, and one thread made this module the suite's slowest (4 min for 50 prompts).
    m = Model(smollm2, LoadOptions(n_ctx=1024))
    yield m
    m.close()


def _generator(model: Model, *, lookup: bool) -> Generator:
    gen = Generator(model, lookup=lookup)
    # Wide decodes declared free: every draft found is tried, whatever this busy machine's timings
    # say, so these tests exercise verification as much as possible and do not depend on timing.
    gen.costs = DecodeCosts(one=1.0, extra=0.0)
    return gen


def _run(model: Model, prompt: str, params: SamplingParams, *, lookup: bool, gen: Generator | None = None):
    tokens, _ = prompt_tokens(model, prompt)
    return (gen or _generator(model, lookup=lookup)).complete(tokens, params)


# -- the Drafter, pure logic


def _cheap() -> lookup.DecodeCosts:
    """Costs under which any likely draft pays: 20 ms a decode, 2 ms per extra token."""
    return lookup.DecodeCosts(one=0.020, extra=0.002)


def test_draft_is_what_followed_the_last_occurrence_of_the_suffix() -> None:
    d = Drafter([1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 8], _cheap())
    d.extend([1, 2, 3])
    assert d.draft(4) == [7, 8, 1, 2]  # the most recent "1 2 3", not the first
    assert d.draft(1) == [7]


def test_no_draft_without_an_earlier_occurrence() -> None:
    d = Drafter([5, 6, 7, 8], _cheap())
    assert d.draft(8) == []  # the suffix itself is never its own match
    d.extend([5])
    assert d.draft(8) == []  # one token is too little to go on


def test_draft_length_weighs_acceptance_against_measured_costs() -> None:
    costs = lookup.DecodeCosts(one=0.020, extra=0.010)  # each extra token half a decode, as on a CPU
    d = Drafter(list(range(40)) + list(range(20)), costs)
    assert 2 <= len(d.draft(100)) < 8  # likely (the prior) but not cheap: a few tokens
    for _ in range(5):
        d.record(8, 0)  # rejected at once, five times
    assert d.rate < 0.5 and d.draft(100) == []
    for _ in range(40):
        if d.draft(100):  # the evidence fades while no draft is tried, so one is tried again
            break
    else:
        raise AssertionError("never re-tried")
    costs.extra = 0.020  # each extra token as dear as a one-token decode: nothing pays
    assert d.length(16) == 0
    assert (d.stats.drafts, d.stats.drafted, d.stats.accepted) == (5, 40, 0)


# -- with the model


@pytest.mark.slow
def test_greedy_output_is_identical_with_and_without_lookup(model) -> None:
    params = SamplingParams(temperature=0, max_tokens=48)
    drafted = accepted = 0
    for prompt in PROMPTS:
        plain = _run(model, prompt, params, lookup=False)
        fast = _run(model, prompt, params, lookup=True)
        assert fast.text == plain.text, prompt
        assert (fast.finish_reason, fast.completion_tokens) == (plain.finish_reason, plain.completion_tokens)
        drafted += fast.timings()["drafted"]
        accepted += fast.timings()["accepted"]
    assert drafted >= accepted > 0


@pytest.mark.slow
def test_seeded_sampling_is_identical_with_and_without_lookup(model) -> None:
    # Each emitted token is drawn once, from the model's distribution given the emitted prefix,
    # with or without a draft: the same seed gives the same draws.
    params = SamplingParams(temperature=0.8, seed=1234, max_tokens=48)
    for prompt in PROMPTS[0:40:8] + PROMPTS[1:40:9]:
        assert _run(model, prompt, params, lookup=True).text == _run(model, prompt, params, lookup=False).text


def test_timings_report_drafts_and_a_copying_prompt_accepts_some(model) -> None:
    prompt = f"Repeat this text exactly:\n\n{PARAGRAPHS[1]}"
    result = _run(model, prompt, SamplingParams(temperature=0, max_tokens=40), lookup=True)
    t = result.timings()
    assert t["drafted"] >= t["accepted"] > 0
    off = _run(model, prompt, SamplingParams(temperature=0, max_tokens=40), lookup=False)
    assert "drafted" not in off.timings()


def test_schema_constrained_completion_with_lookup_validates(model) -> None:
    constraint = structured.from_schema(structured.concise("name, year int"))
    system, text = structured.extraction_prompt(PARAGRAPHS[6], constraint)
    tokens, _ = prompt_tokens(model, text, system=system)
    params = SamplingParams(temperature=0, max_tokens=60, constraint=constraint)
    fast = _generator(model, lookup=True).complete(tokens, params)
    plain = Generator(model, lookup=False).complete(tokens, params)
    assert fast.checked is not None and fast.checked.valid, fast.text
    assert fast.text == plain.text
    assert fast.timings()["drafted"] >= fast.timings()["accepted"]


@pytest.mark.parametrize("how", ["max_tokens", "stop"])
def test_a_generation_ended_inside_a_draft_leaves_the_cache_consistent(model, how) -> None:
    # Ending in the middle of an accepted draft leaves KV entries past the last emitted token.
    # The next completion, re-using the prefix, must behave as after a generation without lookup.
    # (Not as a fresh Generator: evaluating the generated tokens in the prompt's batch instead of
    # one by one moves logits a little, lookup or not; see runtime.BATCH_INVARIANT_MAX_TOKENS.)
    prompt = f"Repeat this text exactly:\n\n{PARAGRAPHS[3]}"
    first = SamplingParams(temperature=0, max_tokens=12 if how == "max_tokens" else 60,
                           stop=("budget",) if how == "stop" else ())
    params = SamplingParams(temperature=0, max_tokens=24)
    tokens, _ = prompt_tokens(model, prompt)
    results = []
    for lookup_on in (True, False):
        gen = _generator(model, lookup=lookup_on)
        ended = _run(model, prompt, first, lookup=lookup_on, gen=gen)
        if lookup_on:
            assert ended.timings()["accepted"] > 0
        cached = list(gen.cached)
        follow = tokens + model.tokenize(ended.text + " and then", add_special=False)
        reused = gen.complete(follow, params)
        assert reused.cached_tokens > len(tokens)
        results.append((ended.text, cached, reused.text))
    assert results[0] == results[1]


def test_complete_lookup_flag_reports_drafts_and_keeps_the_text(installed) -> None:
    args = ["complete", "--json", "--temperature", "0", "-t", "1", "-n", "24",
            f"Repeat this text exactly:\n\n{PARAGRAPHS[1]}"]
    plain = CliRunner().invoke(cli, args)
    fast = CliRunner().invoke(cli, [*args, "--lookup"])
    assert plain.exit_code == 0 and fast.exit_code == 0, (plain.output, fast.output)
    plain_out, fast_out = json.loads(plain.stdout), json.loads(fast.stdout)
    assert "drafted" not in plain_out["timings"]
    assert fast_out["timings"]["drafted"] >= fast_out["timings"]["accepted"] >= 0
    assert fast_out["text"] == plain_out["text"]
