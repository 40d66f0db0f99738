"""llama-cpp-python's high-level `Llama` against native llama-bench, measured in one run.

The gap between the two is the per-token cost of the Python path that llmlocal wants to beat.

    python benchmarks/baseline_binding.py                      # SmolLM2-135M Q4_1, 2 threads
    python benchmarks/baseline_binding.py --model A.gguf --model B.gguf
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from native import run_llama_bench, smollm2_path, warn_if_contended

# Long enough to tokenize past 512 tokens; the content does not change the speed.
_FILLER = "The quick brown fox jumps over the lazy dog while the cat watches from the window. "
# A base or instruct model continues this story well past 128 tokens at temperature 0.
_STORY = "Once upon a time"


@contextlib.contextmanager
def _no_extra_bufts() -> Iterator[None]:
    """Make `Llama()` load weights without ggml's extra buffers (AMX, CPU_REPACK).

    The installed wheel segfaults in its AMX kernels on this machine (see the note in
    native.py), and `Llama()` has no parameter for `use_extra_bufts`, so wrap the defaults it
    reads. llama-bench runs with `--repack 0`, the same setting.
    """
    import llama_cpp.llama_cpp as lc

    original = lc.llama_model_default_params

    def patched() -> Any:
        params = original()
        params.use_extra_bufts = False
        return params

    lc.llama_model_default_params = patched
    try:
        yield
    finally:
        lc.llama_model_default_params = original


def load(model: Path, *, threads: int) -> Any:
    """`Llama(model, n_ctx=1024, n_threads=threads, verbose=False)`, as a user would write it."""
    from llama_cpp import Llama

    with _no_extra_bufts():
        return Llama(str(model), n_ctx=1024, n_threads=threads, verbose=False)


def prompt_speed(llm: Any, *, n_prompt: int = 512, reps: int = 3) -> float:
    """Tokens/s of `llm.eval()` on an `n_prompt`-token prompt (one warm-up, then the mean)."""
    tokens = llm.tokenize((_FILLER * (n_prompt // 8)).encode())[:n_prompt]
    assert len(tokens) == n_prompt
    times = []
    for _ in range(reps + 1):
        llm.reset()
        started = time.perf_counter()
        llm.eval(tokens)
        times.append(time.perf_counter() - started)
    return n_prompt / (sum(times[1:]) / reps)


def generation_speed(llm: Any, *, n_gen: int = 128, reps: int = 3,
                     bias_eog: bool = False) -> dict[str, float]:
    """Generation tokens/s of `create_completion(max_tokens=n_gen, temperature=0)`.

    Prompt processing is excluded by subtracting llama.cpp's own prompt-decode time from the
    wall time of the call. Returns `wall` (tokens/s as the caller sees it, including sampling
    and Python) and `decode` (llama.cpp's decode time alone).

    bias_eog passes `logit_bias={eog: -inf}` so no end-of-generation token can stop early.
    create_completion implements logit_bias as a Python logits processor that copies the
    whole vocabulary's logits every token, so that variant measures its cost too; the plain
    variant relies on a prompt that runs to the length limit and checks that it did.
    """
    import llama_cpp.llama_cpp as lc

    kwargs: dict[str, Any] = {"max_tokens": n_gen, "temperature": 0}
    if bias_eog:
        vocab = llm._model.vocab
        kwargs["logit_bias"] = {t: -math.inf for t in range(llm.n_vocab())
                                if lc.llama_vocab_is_eog(vocab, t)}
    wall = decode = 0.0
    for rep in range(reps + 1):
        llm.reset()  # no prompt-cache hit: the whole prompt is decoded (and timed) each time
        lc.llama_perf_context_reset(llm._ctx.ctx)
        started = time.perf_counter()
        out = llm.create_completion(_STORY, **kwargs)
        elapsed = time.perf_counter() - started
        perf = lc.llama_perf_context(llm._ctx.ctx)
        if out["usage"]["completion_tokens"] != n_gen:
            raise RuntimeError(f"stopped after {out['usage']['completion_tokens']} tokens")
        # n_gen tokens take n_gen - 1 single-token decodes after the prompt decode
        # (the last token is sampled, never decoded); rates are per decode step.
        assert perf.n_eval == n_gen - 1, perf.n_eval
        if rep:  # the first call is a warm-up
            wall += elapsed - perf.t_p_eval_ms / 1000
            decode += perf.t_eval_ms / 1000
    return {"wall": (n_gen - 1) * reps / wall, "decode": (n_gen - 1) * reps / decode}


def compare(model: Path, *, threads: int) -> None:
    """Print native and binding speeds for one model, measured back to back."""
    # flash attention and repacking off on both sides: Llama() defaults to flash_attn=False,
    # and repacking must stay off for the binding (see _no_extra_bufts).
    native = run_llama_bench(model, threads=threads, flash_attn="off", repack=False)
    llm = load(model, threads=threads)
    pp = prompt_speed(llm)
    tg = generation_speed(llm)
    tg_bias = generation_speed(llm, bias_eog=True)
    llm.close()
    rows = [("pp512 eval()", native["pp"], pp),
            ("tg128 completion", native["tg"], tg["wall"]),
            ("  + logit_bias", native["tg"], tg_bias["wall"]),
            ("  decode only", native["tg"], tg["decode"])]
    for name, ref, got in rows:
        print(f"{model.name[:34]:34} {name:16} {ref:8.1f} {got:8.1f} {got / ref:5.2f}x",
              flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, action="append",
                        help="GGUF file, repeatable (default: SmolLM2-135M Q4_1)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    print(f"threads {args.threads}, flash attention off, weight repacking off (tok/s)")
    print(f"{'model':34} {'test':16} {'native':>8} {'binding':>8} {'ratio':>6}")
    for model in args.model or [smollm2_path()]:
        with warn_if_contended():
            compare(model, threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
