"""Few-shot classification quality on the SMS Spam Collection, both bundled models, one run.

A fixed random sample of messages (default 500, seed 0) is the test set; the k labelled examples
(balanced, drawn with the same seed) come from the other messages. For each model and k it
reports accuracy and macro-F1 of

- the few-shot prompt, labels scored by log-probability (llmlocal's prompt method),
- the same scores with contextual calibration (one extra "N/A" item; no re-scoring needed),
- the embedding method (mean-pooled embeddings, logistic regression, C = 10),

against the majority baseline (always "ham"). Chat models can also be run with the prompt inside
their chat template (--modes raw chat), which is how the prompt method's default was chosen.

    llmlocal pull smollm2-135m gemma3-270m-base
    python benchmarks/sms_eval.py                                  # both models, k = 8 32
    python benchmarks/sms_eval.py --models smollm2-135m --k 8 --n-test 200
    python benchmarks/sms_eval.py --models smollm2-135m --modes raw chat --json results.json

The prompt is the one from ../shared/classification-notes.md: the instruction line
"Classify each SMS message as ham (legitimate) or spam.", then "Message: <text>\\nLabel: <label>"
blocks; --prompt default uses llmlocal's default template and instructions instead.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("GGML_CPU_TILED_MM", "0")  # as `llmlocal classify` does: batch-invariant kernels

from llmlocal import classify, loader  # noqa: E402
from llmlocal.classify import embedding, fewshot, metrics  # noqa: E402

DATA = Path("/work/shared/data/sms-spam-collection/SMSSpamCollection")
NOTES_INSTRUCTIONS = "Classify each SMS message as ham (legitimate) or spam."
NOTES_TEMPLATE = "{instructions}\n\nMessage: {text}\nLabel: {label}\n"
LABELS = ["ham", "spam"]


def read_corpus(path: Path) -> list[classify.Example]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            label, text = line.rstrip("\n").split("\t", 1)
            rows.append(classify.Example(text=text, label=label, line=number))
    return rows


def split(rows: list[classify.Example], n_test: int,
          seed: int) -> tuple[list[classify.Example], list[classify.Example]]:
    """(example pool, test set): a fixed random ``n_test`` messages held out."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    test = sorted(order[:n_test])
    held = set(test)
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in test]


def scores(gold: list[str], probs, labels: list[str]) -> dict:
    pred = [labels[int(i)] for i in probs.argmax(axis=1)]
    conf = probs.max(axis=1).tolist()
    rep = metrics.report(gold, pred, labels, confidence=conf)
    return {"accuracy": round(rep["accuracy"], 4), "macro_f1": round(rep["macro_f1"], 4), "ece": round(rep["ece"], 4),
            "predicted_spam": sum(p == "spam" for p in pred)}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _progress(what: str):
    started = time.perf_counter()
    shown = [0]

    def report(done: int, total: int) -> None:
        if done - shown[0] >= 100 or done == total:
            shown[0] = done
            log(f"  {what}: {done}/{total} items, {done / (time.perf_counter() - started):.2f} items/s")

    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m-base"])
    ap.add_argument("--k", type=int, nargs="+", default=[8, 32], help="examples per prompt (balanced)")
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modes", nargs="+", default=["raw"], choices=["raw", "chat"],
                    help="prompt as raw text and/or inside the chat template (chat models only)")
    ap.add_argument("--prompt", choices=["notes", "default"], default="notes")
    ap.add_argument("--no-embed", action="store_true", help="skip the embedding method")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--json", type=Path, help="also write every number here")
    args = ap.parse_args(argv)

    rows = read_corpus(args.data)
    pool, test = split(rows, args.n_test, args.seed)
    gold = [t.label for t in test]
    texts = [t.text for t in test]
    base = metrics.majority_baseline(gold, LABELS)
    log(f"{len(rows)} messages; test set {len(test)} (seed {args.seed}), {gold.count('spam')} spam; "
        f"majority baseline accuracy {base['accuracy']:.4f}, macro-F1 {base['macro_f1']:.4f}")
    template = fewshot.Template.parse(NOTES_TEMPLATE) if args.prompt == "notes" else None
    instructions = NOTES_INSTRUCTIONS if args.prompt == "notes" else None
    results = []
    for name in args.models:
        loaded = loader.load(name, threads=args.threads, n_seq_max=64)
        try:
            chat_ok = loaded.model.chat_template() is not None
            for k in args.k:
                examples = classify.select_examples(pool, LABELS, max_examples=k, seed=args.seed)
                for mode in args.modes:
                    if mode == "chat" and not chat_ok:
                        continue
                    clf = fewshot.PromptClassifier(loaded.model, LABELS, examples, template=template,
                                                    instructions=instructions, chat=mode == "chat")
                    started = time.perf_counter()
                    raw = clf.log_scores(texts, progress=_progress(f"{name} k={k} {mode}"))
                    seconds = time.perf_counter() - started
                    prior = fewshot.softmax(clf.log_scores([fewshot.CONTENT_FREE]))[0]
                    common = {"model": name, "k": k, "mode": mode, "n_test": len(test),
                              "prefix_tokens": len(clf.prompt.prefix), "seconds": round(seconds, 1),
                              "items_per_second": round(len(test) / seconds, 2)}
                    results.append({**common, "method": "prompt", **scores(gold, fewshot.softmax(raw), LABELS)})
                    results.append({**common, "method": "prompt+calibration", "prior_spam": round(float(prior[1]), 4),
                                    **scores(gold, fewshot.softmax(raw - np.log(prior)), LABELS)})
                    for r in results[-2:]:
                        log(json.dumps(r))
        finally:
            loaded.close()
        if args.no_embed:
            continue
        loaded = loader.load(name, threads=args.threads, embeddings=True, n_seq_max=16)
        try:
            cache: dict = {}
            for k in args.k:
                examples = classify.select_examples(pool, LABELS, max_examples=k, seed=args.seed)
                started = time.perf_counter()
                clf = embedding.EmbeddingClassifier(loaded.model, LABELS, examples, cache=cache)
                probs = clf.predict_proba(texts, progress=_progress(f"{name} k={k} embed"))
                r = {"model": name, "k": k, "mode": "-", "n_test": len(test), "method": f"embed ({clf.kind})",
                     "seconds": round(time.perf_counter() - started, 1), **scores(gold, probs, LABELS)}
                results.append(r)
                log(json.dumps(r))
        finally:
            loaded.close()

    print(f"SMS Spam Collection, {len(test)} held-out messages (seed {args.seed}); examples balanced, seed {args.seed}")
    print(f"majority baseline: accuracy {base['accuracy']:.4f}, macro-F1 {base['macro_f1']:.4f}")
    print()
    header = ("model", "k", "mode", "method", "accuracy", "macro-F1", "ECE", "spam predicted", "items/s")
    table = [header] + [(r["model"], str(r["k"]), r["mode"], r["method"], f"{r['accuracy']:.4f}",
                         f"{r['macro_f1']:.4f}", f"{r['ece']:.4f}", str(r["predicted_spam"]),
                         str(r.get("items_per_second", ""))) for r in results]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    if args.json:
        args.json.write_text(json.dumps({"seed": args.seed, "n_test": len(test), "baseline": base,
                                         "prompt": args.prompt, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
