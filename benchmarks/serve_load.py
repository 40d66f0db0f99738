"""Load test for `llmlocal serve`: concurrent streaming clients through the official openai client.

Starts the server in a subprocess on a free loopback port (the installed model, default SmolLM2),
then in one run:
  1. sequential: one client, its requests one after another (the baseline);
  2. concurrent: C clients at once, each sending R streamed chat requests one after another;
  3. the same concurrent load against a server started with --parallel 1, which is what a
     server that serialises requests behind a global lock gives (llama-cpp-python's own server).

Reports requests, failures, aggregate completion tokens/s (tokens over the wall time of the
whole phase) and time to first token (first text chunk; p50/p95) for each, and the ratios.

    python benchmarks/serve_load.py                        # 16 clients x 4 requests, 128 tokens each
    python benchmarks/serve_load.py --clients 16 --requests 4 --max-tokens 64 --parallel 8
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

PROMPTS = ["Write a short poem about the sea.", "Give me three tips for learning to cook.",
           "What is a good name for a cat, and why?", "Describe a sunset over the mountains.",
           "Explain what a rainbow is to a child.", "Write a haiku about autumn leaves.",
           "List some fun things to do on a rainy day.", "Why do we need sleep?"]


def start_server(model: str, parallel: int, ctx: int, threads: int | None) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "llmlocal", "serve", "--port", "0", "-m", model, "--parallel", str(parallel),
           "--ctx", str(ctx)] + (["--threads", str(threads)] if threads else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    if " serving on " not in line:
        raise SystemExit(f"server did not start: {line}{proc.stderr.read()}")
    return proc, line.split(" serving on ")[1].split()[0]


async def run_load(url: str, model: str, *, clients: int, requests: int, max_tokens: int) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="bench", max_retries=0, timeout=3600)

    async def one(c: int, k: int) -> dict:
        start = time.perf_counter()
        out = {"error": None, "tokens": 0, "ttft": None}
        try:
            stream = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": PROMPTS[(c * requests + k) % len(PROMPTS)]}],
                max_tokens=max_tokens, temperature=0.7, seed=c * 1000 + k, stream=True,
                stream_options={"include_usage": True})
            async for chunk in stream:
                if chunk.usage is not None:
                    out["tokens"] = chunk.usage.completion_tokens
                if out["ttft"] is None and any(ch.delta.content for ch in chunk.choices):
                    out["ttft"] = time.perf_counter() - start
            if out["tokens"] == 0:
                out["error"] = "no usage chunk"
        except Exception as exc:
            out["error"] = f"{exc.__class__.__name__}: {exc}"
        return out

    async def client_loop(c: int) -> list[dict]:
        return [await one(c, k) for k in range(requests)]

    started = time.perf_counter()
    try:
        per_client = await asyncio.gather(*(client_loop(c) for c in range(clients)))
    finally:
        await client.close()
    wall = time.perf_counter() - started
    results = [r for rs in per_client for r in rs]
    ttfts = sorted(r["ttft"] for r in results if r["ttft"] is not None)
    tokens = sum(r["tokens"] for r in results)
    return {"requests": len(results), "failures": sum(r["error"] is not None for r in results),
            "errors": sorted({r["error"] for r in results if r["error"]}), "tokens": tokens, "wall": wall,
            "tok_s": tokens / wall, "ttft_p50": percentile(ttfts, 50), "ttft_p95": percentile(ttfts, 95)}


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


def show(name: str, r: dict) -> None:
    print(f"{name:<34} {r['requests']:>5} {r['failures']:>5} {r['tokens']:>7} {r['wall']:>8.1f} "
          f"{r['tok_s']:>8.1f} {r['ttft_p50'] * 1000:>9.0f} {r['ttft_p95'] * 1000:>9.0f}")
    for e in r["errors"][:3]:
        print(f"    error: {e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=4, help="requests per client, one after another")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--parallel", type=int, default=8, help="the server's --parallel for the concurrent run")
    ap.add_argument("--ctx", type=int, default=1024, help="the server's --ctx (per request)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--no-serial-server", action="store_true", help="skip the --parallel 1 comparison")
    args = ap.parse_args()
    print(f"load: {args.clients} clients x {args.requests} streamed chat requests, max_tokens {args.max_tokens}, "
          f"model {args.model}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    runs: dict[str, dict] = {}
    proc, url = start_server(args.model, args.parallel, args.ctx, args.threads)
    try:
        asyncio.run(run_load(url, args.model, clients=1, requests=2, max_tokens=8))  # warm-up
        runs["sequential"] = asyncio.run(run_load(url, args.model, clients=1, requests=args.requests,
                                                  max_tokens=args.max_tokens))
        runs["concurrent"] = asyncio.run(run_load(url, args.model, clients=args.clients, requests=args.requests,
                                                  max_tokens=args.max_tokens))
    finally:
        proc.terminate()
        proc.wait()
    if not args.no_serial_server:
        proc, url = start_server(args.model, 1, args.ctx, args.threads)
        try:
            asyncio.run(run_load(url, args.model, clients=1, requests=2, max_tokens=8))
            runs["serialised"] = asyncio.run(run_load(url, args.model, clients=args.clients,
                                                      requests=args.requests, max_tokens=args.max_tokens))
        finally:
            proc.terminate()
            proc.wait()
    print(f"\n{'run':<34} {'reqs':>5} {'fail':>5} {'tokens':>7} {'wall s':>8} {'tok/s':>8} "
          f"{'TTFT p50':>9} {'TTFT p95':>9}")
    show(f"1 client, --parallel {args.parallel}", runs["sequential"])
    show(f"{args.clients} clients, --parallel {args.parallel}", runs["concurrent"])
    if "serialised" in runs:
        show(f"{args.clients} clients, --parallel 1", runs["serialised"])
    seq, conc = runs["sequential"], runs["concurrent"]
    print(f"\naggregate tokens/s, {args.clients} concurrent clients vs one at a time: "
          f"{conc['tok_s'] / seq['tok_s']:.2f}x")
    if "serialised" in runs:
        print(f"aggregate tokens/s, --parallel {args.parallel} vs --parallel 1 (a global lock), same load: "
              f"{conc['tok_s'] / runs['serialised']['tok_s']:.2f}x; TTFT p50 "
              f"{conc['ttft_p50'] * 1000:.0f} ms vs {runs['serialised']['ttft_p50'] * 1000:.0f} ms")
    failures = sum(r["failures"] for r in runs.values())
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
