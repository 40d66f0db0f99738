"""Label scoring with the shared prompt cached, against the naive way, measured in one run.

The prompt has 20 labelled SMS examples (balanced, fixed seed). Cached (llmlocal): the prefix
(instructions + examples) is evaluated once; per item only the item's tokens and the label
tokens are evaluated, several items per decode. Naive: for every item the KV cache is cleared and
the whole prompt (prefix + item + label tokens) is evaluated again. Both use the same token
sequences and llama.cpp kernels, so the probabilities must agree (checked here, and to 1e-4 in
tests/test_classify.py). Target: cached >= 5x the naive items/s.

    llmlocal pull smollm2-135m gemma3-270m-base
    python benchmarks/classify_bench.py                        # SmolLM2-135M, 40 items
    python benchmarks/classify_bench.py --models smollm2-135m gemma3-270m-base --items 80 --naive-items 16
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("GGML_CPU_TILED_MM", "0")  # as `llmlocal classify` does: batch-invariant kernels

from llmlocal import classify, loader  # noqa: E402
from llmlocal.classify import fewshot  # noqa: E402

CORPUS = Path("/work/shared/data/sms-spam-collection/SMSSpamCollection")
SAMPLE = Path(__file__).resolve().parent.parent / "tests" / "data" / "sms_sample.tsv"


def messages() -> list[classify.Example]:
    """The SMS corpus if present, else the 40-message test sample."""
    if CORPUS.exists():
        out = []
        with open(CORPUS, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                label, text = line.rstrip("\n").split("\t", 1)
                out.append(classify.Example(text, label, n))
        return out
    items, _ = classify.read_texts(SAMPLE, labelled=True)
    return [classify.Example(i.text, i.label or "", i.line) for i in items]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2-135m"])
    ap.add_argument("--examples", type=int, default=20)
    ap.add_argument("--items", type=int, default=40, help="items scored the cached way")
    ap.add_argument("--naive-items", type=int, default=10, help="the first N of them also scored naively")
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    rows = messages()
    examples = classify.select_examples(rows[: len(rows) // 2], ["ham", "spam"], max_examples=args.examples,
                                        seed=args.seed)
    items = [r.text for r in rows[len(rows) // 2:][: args.items]]
    for name in args.models:
        loaded = loader.load(name, threads=args.threads, n_seq_max=64, extra_buffers=False)
        try:
            clf = fewshot.PromptClassifier(loaded.model, ["ham", "spam"], examples, parallel=args.parallel)
            tokens = [clf.prompt.item_tokens(t) for t in items]
            scorer = clf.scorer
            scorer.reset()
            started = time.perf_counter()
            cached = scorer.score(tokens)  # includes evaluating the prefix once
            cached_s = time.perf_counter() - started
            cached_tokens = scorer.evaluated_tokens
            scorer.evaluated_tokens = 0
            started = time.perf_counter()
            naive = scorer.score_naive(tokens[: args.naive_items])
            naive_s = time.perf_counter() - started
            naive_tokens = scorer.evaluated_tokens
            # The naive way as a plain llama.cpp loop would run it: whole prompt per decode (up
            # to n_batch tokens), not the batch-invariant 63-token chunks. Faster, so a fairer
            # (harder) baseline; its probabilities differ slightly, which is why llmlocal does not do it.
            scorer.max_tokens = loaded.model.options.n_batch
            started = time.perf_counter()
            naive_big = scorer.score_naive(tokens[: args.naive_items])
            naive_big_s = time.perf_counter() - started
        finally:
            loaded.close()
        n_naive = min(args.naive_items, len(items))
        cached_rate, naive_rate = len(items) / cached_s, n_naive / naive_s
        diff = np.abs(fewshot.softmax(cached[:n_naive]) - fewshot.softmax(naive)).max()
        item_tokens = sum(len(t) for t in tokens) / len(tokens)
        print(f"{name}: {args.examples}-example prompt, prefix {len(clf.prompt.prefix)} tokens, "
              f"items {item_tokens:.1f} tokens on average, labels ' ham' / ' spam' (1 token each)")
        print(f"  cached: {len(items)} items in {cached_s:.1f} s = {cached_rate:.2f} items/s "
              f"({cached_tokens / len(items):.1f} tokens evaluated per item, prefix included once)")
        print(f"  naive:  {n_naive} items in {naive_s:.1f} s = {naive_rate:.2f} items/s "
              f"({naive_tokens / n_naive:.1f} tokens evaluated per item)")
        big_rate = n_naive / naive_big_s
        big_diff = np.abs(fewshot.softmax(cached[:n_naive]) - fewshot.softmax(naive_big)).max()
        print(f"  naive, whole prompt per decode: {n_naive} items in {naive_big_s:.1f} s = {big_rate:.2f} items/s")
        print(f"  speed-up: {cached_rate / naive_rate:.1f}x over the same-kernel naive way (target >= 5x), "
              f"{cached_rate / big_rate:.1f}x over whole-prompt decodes")
        print(f"  largest probability difference over {n_naive} items: {diff:.2e} (same kernels), "
              f"{big_diff:.2e} (whole-prompt decodes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
