"""Time to first token of a chat turn after a ~1,000-token history: KV prefix reuse vs none.

A ChatSession keeps one Generator, so a new turn evaluates only the tokens after the part of
the conversation already in the KV cache. Without that (a fresh Generator per turn) every turn
re-evaluates the whole history before its first token. Both are measured in the same run, on
the same conversation state.

    python benchmarks/chat_ttft.py                  # SmolLM2-135M Q4_1, ~1,000-token history
    python benchmarks/chat_ttft.py --history 2000 --reps 7 --model other.gguf
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from native import smollm2_path, warn_if_contended  # noqa: E402

from llmlocal import chat, generate, runtime  # noqa: E402

_ANSWER = ("Rivers carry water from the hills to the sea, shaping valleys and feeding the towns and "
           "fields along their banks. ")


def build_history(session: chat.ChatSession, target_tokens: int) -> int:
    """Fill ``session.messages`` with exchanges until the conversation is ~``target_tokens``."""
    i = 0
    while session.context_used() < target_tokens:
        session.messages += [{"role": "user", "content": f"Tell me fact number {i} about rivers."},
                             {"role": "assistant", "content": _ANSWER * 3}]
        i += 1
    return session.context_used()


def ttft(session: chat.ChatSession, text: str) -> tuple[float, generate.Completion]:
    """Seconds from send() to the first streamed text, then drop the turn to keep the state fixed."""
    started = time.perf_counter()
    first: list[float] = []
    result = session.send(text, on_text=lambda _piece: first or first.append(time.perf_counter()))
    session.messages = session.messages[:-2]
    return (first[0] if first else time.perf_counter()) - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a .gguf with a chat template (default: SmolLM2-135M)")
    parser.add_argument("--history", type=int, default=1000, help="history length in tokens [1000]")
    parser.add_argument("--reps", type=int, default=5, help="turns timed per mode [5]")
    parser.add_argument("--threads", type=int, help="CPU threads (default: physical cores)")
    args = parser.parse_args()

    model = runtime.Model(args.model or smollm2_path(),
                          runtime.LoadOptions(n_ctx=4096, n_threads=args.threads))
    params = runtime.SamplingParams(temperature=0, seed=1, max_tokens=4)
    session = chat.ChatSession(model, template=chat.choose_template(model.path.name,
                               gguf_template=model.chat_template(), family="chatml"), params=params)
    history = build_history(session, args.history)
    session.send("Warm up: say hi.")  # puts the history in the KV cache (not timed)
    session.messages = session.messages[:-2]

    reuse, fresh = [], []
    evaluated = {}
    with warn_if_contended():
        for k in range(args.reps):  # interleaved, so drift in machine load hits both modes alike
            seconds, result = ttft(session, f"Question {k}: which river is longest?")
            reuse.append(seconds)
            evaluated["reuse"] = result.prompt_tokens - result.cached_tokens
            session.generator = generate.Generator(model)  # forgets the cache: the no-reuse case
            seconds, result = ttft(session, f"Question {k}: which river is longest?")
            fresh.append(seconds)
            evaluated["fresh"] = result.prompt_tokens - result.cached_tokens

    r, f = statistics.median(reuse), statistics.median(fresh)
    print(f"model {model.path.name}, {model.options.threads()} threads, history {history} tokens, "
          f"{args.reps} turns per mode (median)")
    print(f"  prefix reuse: TTFT {r * 1000:7.1f} ms  ({evaluated['reuse']} prompt tokens evaluated)")
    print(f"  no reuse:     TTFT {f * 1000:7.1f} ms  ({evaluated['fresh']} prompt tokens evaluated)")
    print(f"  speed-up:     {f / r:.1f}x")
    model.close()


if __name__ == "__main__":
    main()
