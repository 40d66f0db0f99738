"""``llmlocal bench``: load time, prompt processing (pp) and generation (tg) speed, peak RSS.

Measured the way llama-bench measures pp512/tg128, so the two can be compared in one run:
pp is one 512-token batch evaluated from an empty cache; tg is 128 single-token decodes with the
sampler in the loop (greedy, end-of-generation ignored), as generation really runs.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from . import hardware
from .loader import Loaded
from .runtime import SamplingParams


@dataclass(frozen=True)
class BenchResult:
    model: str
    threads: int
    threads_reason: str  # why that many: "as asked", or how the default was found (hardware.default_threads)
    kv_type: str
    n_prompt: int
    n_gen: int
    reps: int
    load_seconds: float
    pp_tps: float
    tg_tps: float
    pp_sd: float
    tg_sd: float
    peak_rss_bytes: int


def _prompt_tokens(loaded: Loaded, n: int) -> list[int]:
    # Ordinary text tokens, like llama-bench's random ones; content does not change the cost.
    vocab = loaded.model.n_vocab
    return [(1000 + 7 * i) % vocab for i in range(n)]


def run(loaded: Loaded, *, n_prompt: int = 512, n_gen: int = 128, reps: int = 3) -> BenchResult:
    """Benchmark an already-loaded model (its context must hold n_prompt + n_gen tokens)."""
    model = loaded.model
    prompt = _prompt_tokens(loaded, n_prompt)
    pp, tg = [], []
    for rep in range(reps + 1):  # the first round warms caches and is not counted
        model.kv_clear()
        started = time.perf_counter()
        model.eval_prompt(prompt)
        pp_s = time.perf_counter() - started

        model.kv_clear()
        sampler = model.sampler(SamplingParams(temperature=0, repeat_penalty=1.0))
        token, pos = prompt[0], 0
        started = time.perf_counter()
        for _ in range(n_gen):
            model.decode_one(token, pos)
            token = sampler.sample()
            pos += 1
        tg_s = time.perf_counter() - started
        sampler.close()
        if rep:
            pp.append(n_prompt / pp_s)
            tg.append(n_gen / tg_s)
    model.kv_clear()
    sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0  # noqa: E731
    return BenchResult(
        model=loaded.name, threads=model.options.threads(),
        threads_reason="as asked" if model.options.n_threads else hardware.default_threads().reason,
        kv_type=model.options.kv_type, n_prompt=n_prompt, n_gen=n_gen, reps=reps,
        load_seconds=model.load_seconds, pp_tps=statistics.mean(pp), tg_tps=statistics.mean(tg),
        pp_sd=sd(pp), tg_sd=sd(tg), peak_rss_bytes=hardware.peak_rss(),
    )
