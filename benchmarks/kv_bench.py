"""KV cache types (--kv-type f16, q8_0, q4_0): memory per 4,096-token slot, generation speed,
and how many --parallel slots fit in 2 GiB next to the weights. One run, every figure in it.

    python benchmarks/kv_bench.py [--threads 1] [--reps 3] [--models smollm2-135m,gemma3-270m-base]

For each model and type:
- KV per slot: what llama.cpp says it allocated for a 4,096-token context (its "llama_kv_cache:
  size = ..." lines, summed over Gemma 3's two caches), not our estimate; the estimate is printed
  beside it as a check.
- Generation tokens/s: a fixed 512-token prompt evaluated, then 128 greedy tokens decoded one at a
  time on top of it (so attention reads a cache that is filling, as in real use); the median of
  --reps runs, after one warm-up. Prompt tokens/s of the same runs comes along.
- Slots in 2 GiB: (2 GiB - weights - llama.cpp's compute buffer at one slot) // KV per slot:
  how many 4,096-token sequences `batch`/`serve --parallel N` could hold in 2 GiB of RAM.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import native  # noqa: E402

from llmlocal import catalog, gguf, runtime, store  # noqa: E402
from llmlocal.sampling import SamplingParams  # noqa: E402

SLOT = 4096
BUDGET = 2 * 2**30
PROMPT, GEN = 512, 128
_KV = re.compile(r"llama_kv_cache: size =\s+([\d.]+) MiB")
_COMPUTE = re.compile(r"CPU compute buffer size =\s+([\d.]+) MiB")


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def load(path: Path, kv_type: str, threads: int) -> tuple[runtime.Model, float, float]:
    """The model at one 4,096-token slot, with llama.cpp's KV and compute buffer sizes in MiB."""
    handler = _Lines()
    log = logging.getLogger(runtime.LLAMA_LOG)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    runtime.set_verbose(True)
    try:
        model = runtime.Model(path, runtime.LoadOptions(n_ctx=SLOT, n_threads=threads, kv_type=kv_type))
    finally:
        runtime.set_verbose(False)
        log.removeHandler(handler)
    kv = sum(float(m.group(1)) for line in handler.lines if (m := _KV.search(line)))
    compute = max(float(m.group(1)) for line in handler.lines if (m := _COMPUTE.search(line)))
    return model, kv, compute


def generation(model: runtime.Model, reps: int) -> tuple[float, float]:
    """Median (prompt tok/s, generation tok/s) over ``reps`` runs after a warm-up."""
    vocab = model.n_vocab
    prompt = [(1000 + 7 * i) % vocab for i in range(PROMPT)]  # as llmlocal bench: content does not change cost
    pp, tg = [], []
    for rep in range(reps + 1):
        model.kv_clear()
        started = time.perf_counter()
        model.eval_prompt(prompt)
        pp_s = time.perf_counter() - started
        sampler = model.sampler(SamplingParams(temperature=0, repeat_penalty=1.0))
        started = time.perf_counter()
        for i in range(GEN):
            token = sampler.sample()
            model.decode_one(token, PROMPT + i)
        tg_s = time.perf_counter() - started
        sampler.close()
        if rep:
            pp.append(PROMPT / pp_s)
            tg.append(GEN / tg_s)
    return statistics.median(pp), statistics.median(tg)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="1 by default: the build machine is shared")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m-base")
    args = ap.parse_args()
    os.environ.setdefault("LLMLOCAL_HOME", tempfile.mkdtemp(prefix="bench-home-"))
    print(f"threads {args.threads}, reps {args.reps}, prompt {PROMPT} + {GEN} generated, slot {SLOT} tokens",
          file=sys.stderr)
    rows = []
    for name in args.models.split(","):
        path = store.pull(catalog.resolve(name), progress=False).installed.path
        info = gguf.read_gguf(path)
        with native.warn_if_contended():
            for kv_type in gguf.KV_TYPES:
                model, kv_mib, compute_mib = load(path, kv_type, args.threads)
                with model:
                    pp, tg = generation(model, args.reps)
                estimate = gguf.estimate_memory(info, SLOT, kv_type=kv_type).kv_cache_bytes / 2**20
                slots = int((BUDGET - info.tensor_data_size - compute_mib * 2**20) // (kv_mib * 2**20))
                rows.append((name, kv_type, kv_mib, estimate, compute_mib, pp, tg, slots))
                print(f"  {name} {kv_type}: KV {kv_mib:.2f} MiB, tg {tg:.1f} tok/s", file=sys.stderr)
    print(f"{'model':<18} {'kv type':<7} {'KV/slot MiB':>11} {'(estimate)':>10} {'compute MiB':>11} "
          f"{'pp512 tok/s':>11} {'tg128 tok/s':>11} {'tg vs f16':>9} {'slots in 2 GiB':>14}")
    f16_tg = {r[0]: r[6] for r in rows if r[1] == "f16"}
    for name, kv_type, kv_mib, estimate, compute_mib, pp, tg, slots in rows:
        print(f"{name:<18} {kv_type:<7} {kv_mib:>11.2f} {estimate:>10.2f} {compute_mib:>11.2f} "
              f"{pp:>11.1f} {tg:>11.1f} {tg / f16_tg[name]:>8.2f}x {slots:>14}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
