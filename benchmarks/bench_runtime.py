"""llmlocal vs native llama.cpp (llama-bench), pp512 and tg128, measured in one run.

    python benchmarks/bench_runtime.py [--threads 2] [--reps 5]

Runs, for SmolLM2-135M-Instruct Q4_1 and the Gemma 3 270M base model: native llama-bench built
from the llama.cpp source vendored in the installed llama-cpp-python (benchmarks/native.py),
then `llmlocal bench --json`, interleaved twice (native, llmlocal, native, llmlocal) so drift on
a shared machine hits both sides, and prints llmlocal/native ratios. Native runs with the same
extra-buffer (AMX/repack) setting llmlocal chose, so the comparison is like for like.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import native  # noqa: E402

from llmlocal import catalog, hardware, runtime, store  # noqa: E402


def llmlocal_bench(name: str, threads: int, reps: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "llmlocal", "bench", "-m", name, "-t", str(threads),
                          "-r", str(reps), "--json"], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=hardware.physical_cores())
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m-base")
    args = ap.parse_args()
    os.environ.setdefault("LLMLOCAL_HOME", tempfile.mkdtemp(prefix="bench-home-"))
    repack = not runtime._amx_enabled(runtime._llama())
    print(f"threads {args.threads}, reps {args.reps}, llama.cpp extra buffers (AMX/repack): "
          f"{'on' if repack else 'off (AMX CPU, see README)'}", file=sys.stderr)
    native.native_tools()
    rows = []
    for name in args.models.split(","):
        path = store.pull(catalog.resolve(name), progress=False).installed.path
        nat, ours = [], []
        with native.warn_if_contended():
            for _ in range(2):
                nat.append(native.run_llama_bench(path, threads=args.threads, reps=args.reps, repack=repack))
                ours.append(llmlocal_bench(name, args.threads, args.reps))
        n_pp = sum(r["pp"] for r in nat) / 2
        n_tg = sum(r["tg"] for r in nat) / 2
        o_pp = sum(r["pp_tps"] for r in ours) / 2
        o_tg = sum(r["tg_tps"] for r in ours) / 2
        rows.append((name, n_pp, o_pp, n_tg, o_tg))
    print(f"{'model':<18} {'native pp512':>12} {'llmlocal':>9} {'ratio':>6}   "
          f"{'native tg128':>12} {'llmlocal':>9} {'ratio':>6}")
    for name, n_pp, o_pp, n_tg, o_tg in rows:
        print(f"{name:<18} {n_pp:12.1f} {o_pp:9.1f} {o_pp / n_pp:6.3f}   {n_tg:12.1f} {o_tg:9.1f} {o_tg / n_tg:6.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
