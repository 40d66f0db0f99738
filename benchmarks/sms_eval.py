"""Few-shot classification quality of the default command (``--method auto``) and of every single
method on the same split, both bundled models, one run: the README's classification table.

Data sets:

- ``sms``: the SMS Spam Collection (binary, 13% spam). 500 held-out messages per seed (a fixed
  random sample); the k labelled examples, balanced, come from the other messages.
- ``squad``: SQuAD v1.1 dev questions labelled by the Wikipedia article they were asked about
  (six articles: super bowl, tesla, oxygen, black death, amazon rainforest, packet switching;
  100 questions each, CC BY-SA 4.0): a six-class topic task nothing here was tuned on. 300
  held-out questions per seed; k = 12 and 36 (2 and 6 per label: auto needs 2 of each to fold).

For each model, seed and k it reports macro-F1 (and accuracy, ECE) of the prompt method, the
calibrated prompt, the embedding method, the combined method, and auto, whose result is the
result of the method it chose (the same classifier, built from the same examples in the same
order: ``classify.build_classifier``), with the seconds auto spent choosing next to the seconds
classifying. The single methods share one scoring pass: the prompt's label log-probabilities
give the prompt and calibrated results, and the combined result multiplies the calibrated and
embedding probabilities, exactly as the classifiers do.

``--suggest`` also measures uncertainty sampling (``classify --suggest``): from k = 8 SMS examples,
add the 8 pool messages the classifier is least sure of (with their true labels) or 8 random pool
messages, same seed, and compare macro-F1 at k = 16.

    llmlocal pull smollm2-135m gemma3-270m-base
    python benchmarks/sms_eval.py                        # both models, both data sets, 3 seeds
    python benchmarks/sms_eval.py --models smollm2-135m --data sms --seeds 0 --json out.json
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

from llmlocal import classify  # noqa: E402
from llmlocal.classify import auto, embedding, fewshot, metrics, review  # noqa: E402

SHARED = Path("/work/shared/data")
SMS = SHARED / "sms-spam-collection" / "SMSSpamCollection"
SQUAD = SHARED / "squad-v1.1" / "dev-articles-0-29.json"
SQUAD_TOPICS = {"Super_Bowl_50": "super bowl", "Nikola_Tesla": "tesla", "Oxygen": "oxygen",
                "Black_Death": "black death", "Amazon_rainforest": "amazon rainforest",
                "Packet_switching": "packet switching"}
METHODS = ("prompt", "calibrated", "embed", "combined")


def read_sms(path: Path = SMS) -> tuple[list[classify.Example], list[str], int, tuple[int, ...]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            label, text = line.rstrip("\n").split("\t", 1)
            rows.append(classify.Example(text=text, label=label, line=number))
    return rows, ["ham", "spam"], 500, (8, 32)


def read_squad(path: Path = SQUAD, per_topic: int = 100) -> tuple[list[classify.Example], list[str], int,
                                                                   tuple[int, ...]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    rows = []
    for article in data["data"]:
        label = SQUAD_TOPICS.get(article["title"])
        if label is None:
            continue
        questions = [q["question"] for p in article["paragraphs"] for q in p["qas"]]
        random.Random(1).shuffle(questions)
        rows += [classify.Example(text=q, label=label, line=None) for q in questions[:per_topic]]
    return rows, list(SQUAD_TOPICS.values()), 300, (12, 36)


def split(rows: list[classify.Example], n_test: int, seed: int) -> tuple[list[classify.Example],
                                                                          list[classify.Example]]:
    """(example pool, test set): a fixed random ``n_test`` rows held out."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_test])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


def scores(gold: list[str], probs: np.ndarray, labels: list[str]) -> dict:
    pred = [labels[int(i)] for i in probs.argmax(axis=1)]
    rep = metrics.report(gold, pred, labels, confidence=probs.max(axis=1).tolist())
    return {"accuracy": round(rep["accuracy"], 4), "macro_f1": round(rep["macro_f1"], 4), "ece": round(rep["ece"], 4)}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def evaluate(contexts, labels: list[str], examples: list[classify.Example], test: list[classify.Example],
             seed: int) -> dict:
    """Every method's probabilities on ``test`` and auto's choice, timed."""
    settings = classify.Settings(seed=seed)
    ordered, folds = auto.fold_order(examples, labels, seed=seed)
    model = contexts("prompt")

    def make_prompt(m, exs, calibrate, share=False):
        return fewshot.PromptClassifier(m, labels, exs, calibrate=calibrate, parallel=settings.parallel, share=share)

    cache: dict = {}
    choice, whole = auto.choose(contexts, labels, ordered, folds, make_prompt=make_prompt, embedding_cache=cache)
    texts = [t.text for t in test]
    if whole is None:
        whole = make_prompt(model, ordered, False)
    started = time.perf_counter()
    raw = whole.log_scores(texts)
    prior = fewshot.softmax(whole.log_scores([fewshot.CONTENT_FREE]))[0]
    prompt_seconds = time.perf_counter() - started
    started = time.perf_counter()
    emb = embedding.EmbeddingClassifier(contexts("embed"), labels, ordered, cache=cache).predict_proba(texts)
    embed_seconds = time.perf_counter() - started
    probs = {"prompt": fewshot.softmax(raw), "calibrated": fewshot.softmax(raw - np.log(prior)), "embed": emb}
    probs["combined"] = auto.combine(probs["calibrated"], emb)
    seconds = {"prompt": prompt_seconds, "calibrated": prompt_seconds, "embed": embed_seconds,
               "combined": prompt_seconds + embed_seconds}
    return {"choice": choice, "probs": probs, "seconds": seconds}


def suggest_experiment(contexts, rows, labels, seed: int, n_test: int) -> dict:
    """macro-F1 at k = 16 after adding 8 least-sure vs 8 random pool messages to 8 examples."""
    pool, test = split(rows, n_test, seed)
    gold = [t.label for t in test]
    start = classify.select_examples(pool, labels, max_examples=8, seed=seed)
    used = {id(e) for e in start}
    rest = [e for e in pool if id(e) not in used]
    candidates = random.Random(seed).sample(rest, 500)  # the unlabelled pool a user would classify
    out = {}
    base = evaluate(contexts, labels, start, candidates, seed)
    method = base["choice"].method
    p = base["probs"][method]
    items = [classify.Item(id=i, text=e.text) for i, e in enumerate(candidates)]
    preds = [classify.Prediction(i, labels[int(r.argmax())], float(r.max()), dict(zip(labels, map(float, r))),
                                 labels[int(r.argmax())]) for i, r in enumerate(p)]
    picked = [candidates[r["id"]] for r in review.least_sure(items, preds, 8)]
    randomly = random.Random(seed + 1000).sample(candidates, 8)
    for name, extra in (("least sure", picked), ("random", randomly)):
        result = evaluate(contexts, labels, start + extra, test, seed)
        chosen = result["choice"].method
        out[name] = {"method": chosen, **scores(gold, result["probs"][chosen], labels),
                     "spam_added": sum(e.label == "spam" for e in extra)}
    return out


def cost(row: dict, k: int) -> float:
    """What choosing cost, against classifying 2k items with the chosen method (the issue's budget)."""
    return row["choose_seconds"] / (2 * k * row["classify_seconds"] / row["n_test"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m-base"])
    ap.add_argument("--data", nargs="+", default=["sms", "squad"], choices=["sms", "squad"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--k", type=int, nargs="+", help="examples (balanced) [sms: 8 32; squad: 12 36]")
    ap.add_argument("--n-test", type=int, help="held-out rows [sms: 500; squad: 300]")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--suggest", action="store_true", help="also the --suggest experiment (SMS, k = 8 + 8)")
    ap.add_argument("--only-suggest", action="store_true", help="the --suggest experiment alone")
    ap.add_argument("--json", type=Path, help="also write every number here")
    args = ap.parse_args(argv)

    classify_rows = []
    suggest_rows = []
    for name in args.models:
        contexts = classify.open_contexts(name, threads=args.threads)
        try:
            for data in [] if args.only_suggest else args.data:
                rows, labels, n_test, ks = read_sms() if data == "sms" else read_squad()
                n_test = args.n_test or n_test
                for k in args.k or ks:
                    for seed in args.seeds:
                        pool, test = split(rows, n_test, seed)
                        gold = [t.label for t in test]
                        examples = classify.select_examples(pool, labels, max_examples=k, seed=seed)
                        result = evaluate(contexts, labels, examples, test, seed)
                        choice = result["choice"]
                        row = {"model": name, "data": data, "k": k, "seed": seed, "n_test": len(test),
                               "chosen": choice.method, "cv": choice.scores, "choose_seconds": round(choice.seconds, 2),
                               "classify_seconds": round(result["seconds"][choice.method], 2)}
                        for m in METHODS:
                            row[m] = scores(gold, result["probs"][m], labels)
                        row["auto"] = row[choice.method]
                        classify_rows.append(row)
                        log(json.dumps(row))
            if args.suggest or args.only_suggest:
                rows, labels, n_test, _ = read_sms()
                for seed in args.seeds:
                    r = {"model": name, "seed": seed, **suggest_experiment(contexts, rows, labels, seed, n_test)}
                    suggest_rows.append(r)
                    log(json.dumps(r))
        finally:
            contexts.close()

    print("macro-F1, mean over seeds " + " ".join(map(str, args.seeds)) + " (auto: the default command)")
    header = ("model", "data", "k", "auto", "prompt", "calibrated", "embed", "combined", "best single",
              "auto - best", "auto chose", "choose s", "classify s", "choose / 2k items")
    table = [header]
    groups: dict[tuple, list[dict]] = {}
    for r in classify_rows:
        groups.setdefault((r["model"], r["data"], r["k"]), []).append(r)
    for (model, data, k), rs in groups.items():
        mean = {m: float(np.mean([r[m]["macro_f1"] for r in rs])) for m in (*METHODS, "auto")}
        best = max(METHODS, key=lambda m: mean[m])
        chose = ", ".join(r["chosen"] for r in rs)
        table.append((model, data, str(k), f"{mean['auto']:.3f}", *(f"{mean[m]:.3f}" for m in METHODS),
                      best, f"{mean['auto'] - mean[best]:+.3f}", chose,
                      f"{np.mean([r['choose_seconds'] for r in rs]):.1f}",
                      f"{np.mean([r['classify_seconds'] for r in rs]):.1f}",
                      f"{np.mean([cost(r, k) for r in rs]):.2f}"))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    if suggest_rows:
        print()
        print("--suggest: macro-F1 at k = 16 (8 examples + 8 added), SMS, mean over seeds")
        for model in dict.fromkeys(r["model"] for r in suggest_rows):
            rs = [r for r in suggest_rows if r["model"] == model]
            print(f"{model}: least sure {np.mean([r['least sure']['macro_f1'] for r in rs]):.3f}, "
                  f"random {np.mean([r['random']['macro_f1'] for r in rs]):.3f}")
    if args.json:
        def plain(o):
            return o.__dict__ if hasattr(o, "__dict__") else str(o)

        args.json.write_text(json.dumps({"classify": classify_rows, "suggest": suggest_rows}, indent=1,
                                        default=plain) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
