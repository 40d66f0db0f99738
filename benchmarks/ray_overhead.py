"""`llmlocal batch` locally against `llmlocal batch --ray` on a local 2-worker Ray instance, one run.

The same 200-line job (SmolLM2, temperature 0, --parallel 8) three ways, each a fresh process:
  local:  one process, --threads 2 (both cores);
  ray:    --ray (a local Ray instance started by the command), --workers 2 --threads 1;
  ray 1:  the same with --workers 1 --threads 2 (Ray's own overhead, with the local engine's shape).
On one 2-core machine Ray cannot add cores, so the ratio is its overhead: starting Ray and the
actors, each actor loading the model, shipping rows and records, and two 1-thread engines of
up to 8 sequences instead of one 2-thread engine. items/s is the command's own (from its first
result to its last); wall is the whole command, start-up included.

    python benchmarks/ray_overhead.py                   # 200 lines, 32 tokens each
    python benchmarks/ray_overhead.py --lines 200 --max-tokens 12
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(argv: list[str], env: dict) -> tuple[float, float, str]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "llmlocal", *argv], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(result.stderr[-2000:])
    m = re.search(r"([\d.]+) items/s", result.stderr.splitlines()[-1])
    return wall, float(m.group(1)) if m else float("nan"), result.stderr.splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.jsonl"
        with prompts.open("w") as fh:
            for i in range(args.lines):
                fh.write(json.dumps({"id": i, "prompt": f"Write one sentence about the number {i}."}) + "\n")
        common = ["batch", str(prompts), "--temperature", "0", "-n", str(args.max_tokens), "-m", args.model,
                  "-p", "8"]
        print(f"{args.lines} lines, max_tokens {args.max_tokens}, {args.model}, --parallel 8, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
        local = run([*common, "-o", f"{tmp}/local.jsonl", "--threads", "2"], env)
        ray = run([*common, "-o", f"{tmp}/ray.jsonl", "--ray", "--workers", "2", "--threads", "1"], env)
        ray1 = run([*common, "-o", f"{tmp}/ray1.jsonl", "--ray", "--workers", "1", "--threads", "2"], env)
        same = [json.loads(x)["text"] for x in Path(f"{tmp}/local.jsonl").read_text().splitlines()] == \
               [json.loads(x)["text"] for x in Path(f"{tmp}/ray.jsonl").read_text().splitlines()]
    print(f"\n{'run':<40} {'wall s':>8} {'items/s':>8}")
    print(f"{'local, --threads 2':<40} {local[0]:>8.1f} {local[1]:>8.2f}")
    print(f"{'--ray (local instance), 2 workers x 1':<40} {ray[0]:>8.1f} {ray[1]:>8.2f}")
    print(f"{'--ray (local instance), 1 worker x 2':<40} {ray1[0]:>8.1f} {ray1[1]:>8.2f}")
    print(f"\nRay / local: items/s {ray[1] / local[1]:.2f}x, wall {ray[0] / local[0]:.2f}x; "
          f"texts identical at temperature 0: {same}")


if __name__ == "__main__":
    main()
