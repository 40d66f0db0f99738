"""Parallel decoding throughput: llmlocal's engine against native llama-batched-bench, one run.

Each parallel count N decodes N sequences of 128 prompt + 128 generated tokens together
(random prompt tokens, end-of-generation ignored, greedy), the same shape as
``llama-batched-bench -npp 128 -ntg 128 -npl N``, so the two tables compare like for like:
same llama.cpp source, threads, flash-attention setting and weight buffers (no AMX/repack;
see runtime._amx_enabled and benchmarks/native.py).

    python benchmarks/batch_bench.py                     # SmolLM2-135M, 2 threads, N = 1 2 4 8 16
    python benchmarks/batch_bench.py --parallel 1 8 --no-native
    python benchmarks/batch_bench.py --kv unified        # one KV pool instead of a stream per sequence
    python benchmarks/batch_bench.py --agreement         # temperature-0 agreement with one-at-a-time

Generation speed is counted as llama-batched-bench counts it: tokens decoded during the
generation phase (N per step) over its time, from the first sampled token to the last.
"""

from __future__ import annotations

import argparse
import inspect
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmlocal.engine import Engine, Request  # noqa: E402
from llmlocal.runtime import LoadOptions, Model, SamplingParams  # noqa: E402

try:  # benchmarks/native.py builds llama.cpp's own tools from the installed binding's source
    from native import run_batched_bench, smollm2_path
except ImportError:  # pragma: no cover - native.py not there: the engine side still runs
    run_batched_bench = None
    from tests.models import smollm2_path


def bench_engine(model_path: Path, n_parallel: int, *, threads: int, npp: int, ntg: int,
                 kv_unified: bool, seed: int = 0) -> dict[str, float]:
    """Decode n_parallel sequences of npp + ntg tokens together; return speeds."""
    options = LoadOptions(n_ctx=n_parallel * (npp + ntg + 16), n_threads=threads, n_seq_max=n_parallel,
                          kv_unified=kv_unified, n_batch=512, check_memory=False)
    with Model(model_path, options) as model:
        rng = random.Random(seed)
        vocab = model.n_vocab
        # Random tokens, like batched-bench: no two prompts share a start, nothing is re-used.
        prompts = [[rng.randrange(vocab) for _ in range(npp)] for _ in range(n_parallel)]
        params = SamplingParams(temperature=0, repeat_penalty=1.0, max_tokens=ntg)
        engine = Engine(model, n_parallel, ignore_eos=True, share_prefix=False)
        handles = [engine.submit(Request(p, params)) for p in prompts]
        started = time.perf_counter()
        first = None
        produced = 0
        while not engine.idle:
            engine.step()
            if first is None and all(h.prefilled_at is not None for h in handles):
                first = max(h.prefilled_at for h in handles)
        ended = time.perf_counter()
        produced = sum(h.completion.completion_tokens for h in handles)
        assert produced == n_parallel * ntg, produced
    t_pp = first - started
    t_tg = ended - first
    return {
        "parallel": n_parallel,
        "prompt_tok_s": n_parallel * npp / t_pp,
        # After the first token, ntg - 1 steps decode n_parallel tokens each (the last sampled
        # token is not decoded); llama-batched-bench times ntg steps of n_parallel tokens.
        "gen_tok_s": n_parallel * (ntg - 1) / t_tg,
        "items_s": n_parallel / (t_pp + t_tg),
        "e2e_gen_tok_s": produced / (t_pp + t_tg),
        "prompt_s": t_pp,
        "gen_s": t_tg,
    }


_TOPICS = ["the sea", "autumn", "a lighthouse", "bread", "volcanoes", "chess", "rain", "the moon", "bees",
           "trains", "coffee", "glaciers", "libraries", "owls", "bridges", "deserts", "music", "clocks",
           "maps", "gardens", "snow", "rivers", "cats", "mountains", "paper"]
_SYSTEM = ("You are a careful assistant. Answer briefly and precisely, in plain English, without lists or "
           "markdown. Keep answers under three sentences and prefer concrete facts to opinions.")


def agreement_prompts() -> list[tuple[str, str | None]]:
    """50 chat prompts (half with a shared system prompt): (user text, system or None)."""
    out = []
    for i, topic in enumerate(_TOPICS):
        out.append((f"Write two sentences about {topic}.", None))
        out.append((f"Explain in a few words why people like {topic}.", _SYSTEM if i % 2 == 0 else None))
    return out


def bench_agreement(model_path: Path, parallels: Sequence[int], *, threads: int, max_tokens: int) -> None:
    """How often a sequence decoded among others gives the text it gives alone (temperature 0)."""
    from llmlocal import generate

    prompts = agreement_prompts()
    params = SamplingParams(temperature=0, max_tokens=max_tokens)

    def tokens(model: Model, text: str, system: str | None) -> list[int]:
        return generate.tokenize_prompt(model, generate.build_prompt(model, text, raw=False, system=system),
                                        raw=False)

    with Model(model_path, LoadOptions(n_ctx=1024, n_threads=threads)) as model:
        alone = [generate.Generator(model).complete(tokens(model, *p), params) for p in prompts]
    print(f"temperature-0 agreement with one sequence at a time ({len(prompts)} prompts, "
          f"{max_tokens} tokens max; `llmlocal complete` decodes the same way):")
    for n in parallels:
        for share in (False, True):
            options = LoadOptions(n_ctx=1024 * n, n_threads=threads, n_seq_max=n, kv_unified=False)
            with Model(model_path, options) as model:
                engine = Engine(model, n, share_prefix=share)
                got = {}
                for req, res in engine.run(Request(tokens(model, *p), params, tag=i) for i, p in enumerate(prompts)):
                    got[req.tag] = res
                shared = engine.stats.shared_tokens
            same = sum(got[i].text == alone[i].text for i in range(len(prompts)))
            # Tokens generated before the first difference, over all generated tokens.
            agree_chars = sum(len(os.path.commonprefix([got[i].text, alone[i].text])) for i in range(len(prompts)))
            total_chars = sum(len(a.text) for a in alone)
            print(f"  N={n:2d} share_prefix={str(share):5s}: {same}/{len(prompts)} identical texts, "
                  f"{100 * agree_chars / max(total_chars, 1):.1f}% of characters before the first difference"
                  f" ({shared} prompt tokens shared)", flush=True)


def _load() -> str:
    try:
        one, five, fifteen = os.getloadavg()
        return f"{one:.2f} {five:.2f} {fifteen:.2f}"
    except OSError:
        return "?"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="GGUF file (default: SmolLM2-135M Q4_1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--npp", type=int, default=128)
    parser.add_argument("--ntg", type=int, default=128)
    parser.add_argument("--kv", choices=["streams", "unified"], default="streams",
                        help="KV cache layout for the engine (batch uses streams)")
    parser.add_argument("--no-native", action="store_true", help="skip llama-batched-bench")
    parser.add_argument("--reps", type=int, default=2, help="repetitions per N (best kept)")
    parser.add_argument("--agreement", action="store_true",
                        help="measure temperature-0 agreement with one-at-a-time decoding instead")
    parser.add_argument("--max-tokens", type=int, default=64, help="for --agreement")
    args = parser.parse_args(argv)
    model = args.model or smollm2_path()
    if args.agreement:
        bench_agreement(model, sorted(set(args.parallel)), threads=args.threads, max_tokens=args.max_tokens)
        return 0
    npl = sorted(set(args.parallel))

    print(f"model: {model.name}, threads {args.threads}, {args.npp} prompt + {args.ntg} generated tokens "
          f"per sequence, engine KV: {args.kv}, best of {args.reps}")
    print(f"load average before: {_load()}")
    native_ok = not args.no_native and run_batched_bench is not None
    if not args.no_native and run_batched_bench is None:
        print("native: benchmarks/native.py not found; skipping llama-batched-bench")
    extra = {}
    if native_ok and args.kv == "unified":
        if "kv_unified" in inspect.signature(run_batched_bench).parameters:
            extra["kv_unified"] = True
        else:
            print("note: native.run_batched_bench has no kv_unified; native runs with one stream per sequence")
    ours, native = [], {}
    # Engine and native alternate per N and per repetition, so a change in the machine's load
    # affects both sides of each ratio alike; the best of the repetitions is kept for each.
    for n in npl:
        best = None
        for _ in range(args.reps):
            row = bench_engine(model, n, threads=args.threads, npp=args.npp, ntg=args.ntg,
                               kv_unified=args.kv == "unified")
            best = row if best is None or row["gen_tok_s"] > best["gen_tok_s"] else best
            if native_ok:
                (rec,) = run_batched_bench(model, threads=args.threads, npp=args.npp, ntg=args.ntg, npl=[n], **extra)
                if n not in native or rec["gen_tok_s"] > native[n]["gen_tok_s"]:
                    native[n] = rec
        ours.append(best)
        nat = f"  native gen {native[n]['gen_tok_s']:6.1f} tok/s" if n in native else ""
        print(f"  N={n:2d}: engine gen {best['gen_tok_s']:6.1f} tok/s  prompt {best['prompt_tok_s']:6.1f} tok/s  "
              f"{best['items_s']:.2f} items/s{nat}  (load {_load()})", flush=True)
    print(f"load average after: {_load()}")

    base = ours[0]["gen_tok_s"] if ours and ours[0]["parallel"] == 1 else None
    print()
    print("   N   engine gen tok/s   vs N=1   items/s   e2e tok/s   native gen tok/s   vs N=1   engine/native")
    nbase = native[1]["gen_tok_s"] if native and 1 in native else None
    for row in ours:
        n = row["parallel"]
        rel = f"{row['gen_tok_s'] / base:5.2f}x" if base else "    -"
        line = (f"  {n:2d}   {row['gen_tok_s']:16.1f}   {rel}   {row['items_s']:7.2f}   "
                f"{row['e2e_gen_tok_s']:9.1f}")
        if native and n in native:
            g = native[n]["gen_tok_s"]
            nrel = f"{g / nbase:5.2f}x" if nbase else "    -"
            line += f"   {g:16.1f}   {nrel}   {row['gen_tok_s'] / g:12.2f}x"
        print(line)
    by_n = {r["parallel"]: r for r in ours}
    if base and 8 in by_n:
        print(f"\nengine N=8 vs N=1: {by_n[8]['gen_tok_s'] / base:.2f}x (target >= 1.7x)")
        if native and 8 in native:
            print(f"engine N=8 vs native N=8: {by_n[8]['gen_tok_s'] / native[8]['gen_tok_s']:.2f}x (target >= 0.9x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
