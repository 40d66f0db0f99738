"""Structured output speed (issue #15): constrained vs free generation, and llmlocal vs outlines, one run.

    python benchmarks/structured_bench.py                  # both parts, 50 prompts, 3 repetitions
    python benchmarks/structured_bench.py --quick          # a smoke run: 4 prompts, 1 repetition
    python benchmarks/structured_bench.py --threads 2 --no-outlines

Every prompt asks a model to extract a person record (name, age, city, occupation, languages)
from one of 50 sentences made deterministically below, with llmlocal's own extraction prompt
(``structured.extraction_prompt``: the system prompt and schema for a chat model, one raw text
ending in "JSON:" for a base model, as ``LocalModel.extract`` builds it). Decoding is greedy
with no penalties (temperature 0, repeat_penalty 1.0) everywhere, so every side follows one rule.

1. Constrained vs free, for SmolLM2-135M (49k vocabulary, chat) and Gemma 3 270M base (262k
   vocabulary): each prompt is generated under the JSON-schema grammar (the runtime's Sampler
   checks the chosen token and resamples under the grammar only on a rejection), then without
   it, driving ``generate.Generator`` on a ``runtime.Model``. Lengths are made equal rather than
   normalised away: the free run gets ``max_tokens`` = the constrained run's token count, so both
   decode the same prompt to about the same positions (a free run may stop earlier at its end of
   turn; both token counts are printed). The ratio is of generation speed, tokens over the time
   from the end of prompt evaluation to the last token, summed over all prompts. The constrained
   run goes first the first time (the free one needs its length); after that the order
   alternates prompt by prompt and flips every repetition, so drift on a shared machine lands
   on both. Also printed: the grammar's rejections per constrained token
   (``Sampler.rejections``: each one is a pass over the whole vocabulary). Targets: >= 0.90x on
   SmolLM2, >= 0.80x on Gemma 3 270M.

2. llmlocal vs outlines on SmolLM2 (outlines is a benchmark-only dependency, not one of
   llmlocal's: ``pip install "outlines[llamacpp]"``, whose extra brings numba for its numpy
   logits processor; written against outlines 1.3 with outlines-core 0.2, whose llama-cpp-python
   model is ``outlines.from_llamacpp(llama_cpp.Llama(...))``). One prompt
   string per sentence is rendered once with SmolLM2's chat template and given, as raw text, to
   both: ``LocalModel.complete(prompt, raw=True, schema=...)`` and outlines' generator with
   ``chat_mode=False``; the script checks that both tokenize it to the same tokens. Same GGUF,
   threads, context, batch and flash-attention setting; the same schema object; the same
   ``max_tokens``. Generation speed is counted the same way on both sides: completion tokens
   over the time from the end of prompt evaluation to the last token (for outlines, read by a
   ``llama_cpp.Llama`` subclass that timestamps its ``eval`` and ``generate``; its extra step
   that samples the end-of-turn token is in its time, llmlocal stops when the value closes).
   Validity is judged for both by one function: the text parses and ``jsonschema`` validates
   it. Seconds per item include prompt evaluation: llmlocal re-uses the KV cache of the prompt
   start the items share, outlines resets its Llama after every call, each by its own design.
   Outlines' default whitespace rule allows one space between tokens, llmlocal's grammar
   upstream llama.cpp's (newlines and indentation too), so the texts may differ in layout.
   The two sides alternate item by item.

Numbers from a busy machine mean little: the script warns when other processes took CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import native  # noqa: E402

import llmlocal  # noqa: E402
from llmlocal import catalog, generate, hardware, loader, runtime, store, structured  # noqa: E402
from llmlocal.generate import Generator  # noqa: E402
from llmlocal.sampling import SamplingParams  # noqa: E402

CTX = 2048
MODELS = {"smollm2-135m": 0.90, "gemma3-270m-base": 0.80}  # name: the target ratio

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer"},
        "city": {"type": "string", "maxLength": 40},
        "occupation": {"type": "string", "maxLength": 40},
        "languages": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 4},
    },
    "required": ["name", "age", "city", "occupation", "languages"],
    "additionalProperties": False,
}

_FIRST = ["Amara", "Bruno", "Chen", "Dalia", "Emeka", "Freya", "Goran", "Hana", "Ines", "Jonas", "Kiri", "Lars",
          "Mei", "Nadia", "Omar", "Priya", "Quentin", "Rosa", "Sven", "Tomoko", "Umar", "Vera", "Wiktor", "Ximena",
          "Yusuf"]
_LAST = ["Okafor", "Silva", "Wei", "Haddad", "Nwosu", "Lindqvist", "Petrovic", "Sato", "Moreau", "Becker", "Tane",
         "Jensen", "Tanaka", "Rahman", "Farouk", "Iyer", "Dubois", "Marin", "Holm", "Kato"]
_CITIES = ["Lisbon", "Nairobi", "Osaka", "Toronto", "Krakow", "Lima", "Cairo", "Oslo", "Melbourne", "Porto Alegre",
           "Dublin", "Hanoi", "Accra", "Seville", "Winnipeg"]
_JOBS = ["nurse", "civil engineer", "baker", "software developer", "primary school teacher", "pharmacist",
         "bus driver", "architect", "journalist", "electrician", "veterinarian", "librarian"]
_LANGS = ["English", "Spanish", "French", "Portuguese", "Arabic", "Japanese", "Polish", "Swahili", "German", "Hindi",
          "Vietnamese", "Norwegian"]
_TEMPLATES = [
    "{name} is a {age}-year-old {job} who lives in {city} and speaks {langs}.",
    "{name}, {age}, works as {a_job} in {city}. Languages spoken: {langs}.",
    "Meet {name}: {a_job} from {city}, aged {age}, fluent in {langs}.",
    "After moving to {city}, {name} found work as {a_job}. At {age}, {first} speaks {langs}.",
    "Our new {job} in {city} is {name} ({age}), who speaks {langs}.",
]


def sentences(n: int, *, seed: int = 15) -> list[str]:
    """``n`` short texts about made-up people, the same on every run."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        langs = rng.sample(_LANGS, rng.randint(1, 3))
        spoken = langs[0] if len(langs) == 1 else ", ".join(langs[:-1]) + " and " + langs[-1]
        job = rng.choice(_JOBS)
        out.append(_TEMPLATES[i % len(_TEMPLATES)].format(
            name=f"{first} {last}", first=first, age=rng.randint(19, 78), job=job,
            a_job=("an " if job[0] in "aeiou" else "a ") + job, city=rng.choice(_CITIES), langs=spoken))
    return out


def valid(text: str, schema: dict[str, Any]) -> bool:
    """The one judgement both sides get: the text parses as JSON and jsonschema accepts it."""
    import jsonschema

    try:
        value = json.loads(text)
    except ValueError:
        return False
    return jsonschema.validators.validator_for(schema)(schema).is_valid(value)


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


# -- 1. constrained vs free generation


class _LastSampler:
    """Keeps the Sampler that ``model`` made last, so its rejection count can be read after the
    generation (the Generator makes and frees its own; the count outlives the free)."""

    def __init__(self, model: runtime.Model) -> None:
        self.sampler: runtime.Sampler | None = None
        make = model.sampler

        def sampler(params: SamplingParams) -> runtime.Sampler:
            self.sampler = make(params)
            return self.sampler

        model.sampler = sampler


def extraction_tokens(model: runtime.Model, text: str, constraint: structured.Constraint) -> list[int]:
    """The prompt ``LocalModel.extract`` would give ``model`` for ``text``."""
    raw = not model.chat_template()
    system, user = structured.extraction_prompt(text, constraint, raw=raw)
    return generate.prompt_tokens(model, user, raw=raw, system=system)[0]


def constrained_vs_free(name: str, texts: Sequence[str], *, threads: int, reps: int, max_tokens: int) -> dict:
    """Generation speed with and without the schema's grammar, at equal lengths (module docstring)."""
    loaded = loader.load(name, ctx=CTX, threads=threads)
    try:
        model = loaded.model
        last = _LastSampler(model)
        constraint = structured.from_schema(PERSON)
        prompts = [extraction_tokens(model, t, constraint) for t in texts]
        gen = Generator(model)
        held = SamplingParams(temperature=0, repeat_penalty=1.0, max_tokens=max_tokens, constraint=constraint)
        free = SamplingParams(temperature=0, repeat_penalty=1.0, max_tokens=max_tokens)
        for params in (held, free):  # warm-up: the first decodes of a context are slower
            gen.complete(prompts[0], params.with_changes(max_tokens=8))

        lengths: list[int | None] = [None] * len(prompts)
        seconds = {"held": 0.0, "free": 0.0}
        tokens = {"held": 0, "free": 0}
        rejections = n_valid = 0
        per_rep = []
        for rep in range(reps):
            rep_s = {"held": 0.0, "free": 0.0}
            rep_t = {"held": 0, "free": 0}
            for i, prompt in enumerate(prompts):
                # The free run needs the constrained one's length, so the first time it goes first.
                order = ("held", "free") if lengths[i] is None or (rep + i) % 2 == 0 else ("free", "held")
                for mode in order:
                    if mode == "held":
                        result = gen.complete(prompt, held)
                        assert last.sampler is not None
                        rejections += last.sampler.rejections
                        if lengths[i] is None:
                            lengths[i] = result.completion_tokens
                            n_valid += valid(result.text, PERSON)
                    else:
                        result = gen.complete(prompt, free.with_changes(max_tokens=lengths[i]))
                    rep_s[mode] += result.gen_seconds
                    rep_t[mode] += result.completion_tokens
            for mode in seconds:
                seconds[mode] += rep_s[mode]
                tokens[mode] += rep_t[mode]
            ratio = (rep_t["held"] / rep_s["held"]) / (rep_t["free"] / rep_s["free"])
            per_rep.append(ratio)
            print(f"  {name} repetition {rep + 1}/{reps}: constrained/free {ratio:.3f}  (load {_load()})",
                  file=sys.stderr, flush=True)
    finally:
        loaded.close()
    held_tps = tokens["held"] / seconds["held"]
    free_tps = tokens["free"] / seconds["free"]
    runs = reps * len(prompts)
    return {"model": name, "vocab": model.n_vocab, "prompts": len(prompts), "reps": reps,
            "held_tokens": tokens["held"] / runs, "free_tokens": tokens["free"] / runs,
            "held_tps": held_tps, "free_tps": free_tps, "ratio": held_tps / free_tps, "per_rep": per_rep,
            "rejections": rejections / tokens["held"], "valid": n_valid / len(prompts)}


# -- 2. llmlocal vs outlines


def _timed_llama_class():
    """A llama_cpp.Llama that records when the prompt's evaluation ended, when the last token was
    sampled and the last completion's usage: outlines returns only the text."""
    import llama_cpp

    class TimedLlama(llama_cpp.Llama):
        prompt_done: float | None = None
        last_token_at: float | None = None
        usage: dict[str, int] | None = None

        def create_completion(self, *args: Any, **kwargs: Any) -> Any:
            out = super().create_completion(*args, **kwargs)
            self.usage = out["usage"]
            return out

        def generate(self, tokens: Sequence[int], *args: Any, **kwargs: Any):
            self.prompt_done = self.last_token_at = None
            for token in super().generate(tokens, *args, **kwargs):
                self.last_token_at = time.perf_counter()
                yield token

        def eval(self, tokens: Sequence[int]) -> None:
            super().eval(tokens)
            if self.prompt_done is None:  # generate's first eval is the whole prompt
                self.prompt_done = time.perf_counter()

    return TimedLlama


def against_outlines(texts: Sequence[str], *, threads: int, max_tokens: int) -> dict | None:
    """llmlocal and outlines (llama-cpp-python backend) on the same prompts, schema and model."""
    try:
        import outlines
        from outlines.types import JsonSchema
    except ImportError:
        print('outlines is not installed (pip install "outlines[llamacpp]"): part 2 skipped', file=sys.stderr)
        return None
    try:
        # What outlines' numpy logits processor imports on its first token. Missing, it raises
        # inside llama-cpp-python's ctypes sampler callback, which swallows the error: outlines
        # would then generate unconstrained and this comparison would be meaningless.
        import outlines_core.kernels.numpy  # noqa: F401
    except ImportError as exc:
        print(f"outlines cannot constrain a llama-cpp-python model here ({exc}; pip install "
              '"outlines[llamacpp]"): part 2 skipped', file=sys.stderr)
        return None
    path = store.model_file(catalog.resolve("smollm2-135m"))
    constraint = structured.from_schema(PERSON)
    with runtime.Model(path, runtime.LoadOptions(n_ctx=CTX, n_threads=threads)) as model:
        raw = not model.chat_template()
        prompts = []
        for text in texts:
            system, user = structured.extraction_prompt(text, constraint, raw=raw)
            prompts.append(generate.build_prompt(model, user, raw=raw, system=system))
        ours = [generate.tokenize_prompt(model, p, raw=True) for p in prompts]  # what complete(raw=True) sees
        repack = model.options.extra_buffers is not False and not runtime._amx_enabled(runtime._llama())

    llm = _timed_llama_class()(model_path=str(path), n_ctx=CTX, n_batch=512, n_ubatch=512, n_threads=threads,
                               n_threads_batch=threads, flash_attn=True, verbose=False)
    # llmlocal leaves flash attention to llama.cpp ("auto": on for these CPU models) and turns the
    # extra weight buffers off only on AMX CPUs; llama-cpp-python always has them on.
    theirs = [llm.tokenize(p.encode("utf-8"), add_bos=True, special=True) for p in prompts]
    same_tokens = sum(a == b for a, b in zip(ours, theirs))
    started = time.perf_counter()
    generator = outlines.Generator(outlines.from_llamacpp(llm, chat_mode=False), JsonSchema(PERSON))
    index_seconds = time.perf_counter() - started

    m = llmlocal.load("smollm2-135m", ctx=CTX, threads=threads)
    greedy = {"temperature": 0.0, "repeat_penalty": 1.0, "max_tokens": max_tokens}

    def run_ours(prompt: str) -> tuple[str, int, float]:
        text = m.complete(prompt, raw=True, schema=PERSON, **greedy)
        assert m.last is not None
        return text, m.last.completion_tokens, m.last.gen_seconds

    def run_theirs(prompt: str) -> tuple[str, int, float]:
        text = generator(prompt, **greedy)
        assert llm.prompt_done is not None and llm.last_token_at is not None and llm.usage is not None
        return text, llm.usage["completion_tokens"], llm.last_token_at - llm.prompt_done

    sides = {"llmlocal": run_ours, "outlines": run_theirs}
    stats = {s: {"tokens": 0, "gen": 0.0, "wall": 0.0, "valid": 0, "values": []} for s in sides}
    try:
        for run in sides.values():  # warm-up, not counted
            run(prompts[0])
        for i, prompt in enumerate(prompts):
            for side in (("llmlocal", "outlines") if i % 2 == 0 else ("outlines", "llmlocal")):
                t0 = time.perf_counter()
                text, n, gen_seconds = sides[side](prompt)
                st = stats[side]
                st["wall"] += time.perf_counter() - t0
                st["tokens"] += n
                st["gen"] += gen_seconds
                st["valid"] += valid(text, PERSON)
                st["values"].append(_parsed(text))
    finally:
        m.close()
        llm.close()
    same_value = sum(a is not None and a == b for a, b in zip(stats["llmlocal"]["values"], stats["outlines"]["values"]))
    n = len(prompts)
    rows = {side: {"tps": st["tokens"] / st["gen"], "tokens": st["tokens"] / n, "wall": st["wall"] / n,
                   "valid": st["valid"] / n} for side, st in stats.items()}
    return {"prompts": n, "rows": rows, "same_tokens": same_tokens, "same_value": same_value,
            "index_seconds": index_seconds, "repack": repack,
            "versions": {d: metadata.version(d) for d in ("outlines", "outlines-core", "llama_cpp_python")}}


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=hardware.physical_cores(), help="default: physical cores")
    parser.add_argument("--prompts", type=int, default=50, help="extraction prompts (default 50)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of part 1 (default 3)")
    parser.add_argument("--max-tokens", type=int, default=128, help="cap on every generation (default 128)")
    parser.add_argument("--models", default=",".join(MODELS), help="models for part 1 (comma-separated)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 4 prompts, 1 repetition")
    parser.add_argument("--no-outlines", action="store_true", help="skip part 2")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.reps = 4, 1
    texts = sentences(args.prompts)
    print(f"threads {args.threads}, {args.prompts} prompts, {args.reps} repetition(s) of part 1, "
          f"max_tokens {args.max_tokens}, greedy; llmlocal {llmlocal.__version__}, "
          f"llama-cpp-python {runtime.llama_cpp_version()}; load average {_load()}")

    rows = []
    with native.warn_if_contended():
        for name in args.models.split(","):
            rows.append(constrained_vs_free(name, texts, threads=args.threads, reps=args.reps,
                                            max_tokens=args.max_tokens))
    print("\n1. JSON-schema constrained vs free generation (free runs capped at the constrained length)")
    print(f"{'model':<18} {'vocab':>7} {'tokens/item':>16} {'constrained':>11} {'free':>7} {'ratio':>6} "
          f"{'target':>6} {'per rep':>16} {'rejections/token':>16} {'valid':>6}")
    for r in rows:
        target = MODELS.get(r["model"])
        spread = f"{min(r['per_rep']):.3f}-{max(r['per_rep']):.3f}"
        print(f"{r['model']:<18} {r['vocab']:7d} {r['held_tokens']:7.1f} / {r['free_tokens']:6.1f} "
              f"{r['held_tps']:11.1f} {r['free_tps']:7.1f} {r['ratio']:6.3f} "
              f"{f'>={target:.2f}' if target else '-':>6} {spread:>16} {r['rejections']:16.3f} {r['valid']:6.0%}")
    print("(tokens/item: constrained / free; speeds in generated tokens/s)")

    if not args.no_outlines:
        with native.warn_if_contended():
            out = against_outlines(texts, threads=args.threads, max_tokens=args.max_tokens)
        if out is not None:
            v = out["versions"]
            print(f"\n2. llmlocal vs outlines {v['outlines']} (outlines-core {v['outlines-core']}, "
                  f"llama-cpp-python {v['llama_cpp_python']}), smollm2-135m, {out['prompts']} extraction prompts")
            print(f"prompt tokens identical on both sides for {out['same_tokens']}/{out['prompts']} prompts; "
                  f"outlines built its JSON index in {out['index_seconds']:.1f} s (once per schema, not counted)"
                  + ("" if out["repack"] else "; note: llmlocal runs without extra weight buffers here"))
            print(f"{'side':<10} {'gen tok/s':>9} {'tokens/item':>11} {'s/item (e2e)':>12} {'valid':>6}")
            for side, r in out["rows"].items():
                print(f"{side:<10} {r['tps']:9.1f} {r['tokens']:11.1f} {r['wall']:12.3f} {r['valid']:6.0%}")
            ours, theirs = out["rows"]["llmlocal"], out["rows"]["outlines"]
            print(f"llmlocal/outlines: gen tok/s {ours['tps'] / theirs['tps']:.2f}x, "
                  f"s/item {ours['wall'] / theirs['wall']:.2f}x; "
                  f"same parsed value on {out['same_value']}/{out['prompts']} prompts")
    print(f"load average after: {_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
