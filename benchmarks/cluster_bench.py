"""How well ``llmlocal cluster`` recovers known classes it is not told about, against TF-IDF, one run.

Each data set has true labels the clustering never sees; the table gives the adjusted Rand index
(ARI: 0 is chance, 1 the true partition) and purity (the share of texts in their cluster's
majority class) of:

- ``llmlocal``: the model's mean-pooled embeddings, centred and renormalised, then k-means
  (``cluster.group``: exactly what the command runs, without the naming);
- ``llmlocal, not centred``: the same vectors without the centring (the ablation);
- ``TF-IDF``: word counts (lower-cased words, in at least 2 texts and at most half of them,
  sublinear tf, smoothed idf, L2-normalised: scikit-learn's usual text-clustering set-up, in
  NumPy here), then the same k-means.

each with k = the true number of classes and with auto (the silhouette over k = 2..10).

Data sets (CC BY 4.0 / CC BY-SA 4.0, in /work/shared/data):

- ``sms``: the SMS Spam Collection, a seeded random sample (default 1,000 of 5,574; 13% spam);
  two classes, ham and spam.
- ``squad``: SQuAD v1.1 dev paragraphs labelled by their Wikipedia article: six articles with at
  least 50 paragraphs (Super Bowl 50, Nikola Tesla, Martin Luther, Apollo program, Genghis Khan,
  Victoria and Albert Museum), their first 50 paragraphs each (300).

    python benchmarks/cluster_bench.py                       # both data sets, smollm2-135m
    python benchmarks/cluster_bench.py --models smollm2-135m gemma3-270m-base --sms 500 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmlocal import cluster, loader  # noqa: E402
from llmlocal.classify import job as classify_job  # noqa: E402
from llmlocal.classify.embedding import embed_texts  # noqa: E402

SHARED = Path("/work/shared/data")
SMS = SHARED / "sms-spam-collection" / "SMSSpamCollection"
SQUAD = SHARED / "squad-v1.1" / "dev-articles-0-29.json"
SQUAD_ARTICLES = ("Super_Bowl_50", "Nikola_Tesla", "Martin_Luther", "Apollo_program", "Genghis_Khan",
                  "Victoria_and_Albert_Museum")


def read_sms(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rows = []
    with open(SMS, encoding="utf-8") as fh:
        for line in fh:
            label, text = line.rstrip("\n").split("\t", 1)
            rows.append((text, label))
    chosen = sorted(random.Random(seed).sample(range(len(rows)), min(n, len(rows))))
    return [rows[i][0] for i in chosen], [rows[i][1] for i in chosen]


def read_squad(per_article: int) -> tuple[list[str], list[str]]:
    data = json.loads(SQUAD.read_text(encoding="utf-8"))
    texts, labels = [], []
    for article in data["data"]:
        if article["title"] in SQUAD_ARTICLES:
            for p in article["paragraphs"][:per_article]:
                texts.append(p["context"])
                labels.append(article["title"])
    return texts, labels


# ---------------------------------------------------------------- TF-IDF and the scores


def tfidf(texts: list[str], *, min_df: int = 2, max_df: float = 0.5) -> np.ndarray:
    """Dense TF-IDF rows: sublinear tf (1 + ln count), smoothed idf (ln((1 + n) / (1 + df)) + 1), L2-normalised."""
    docs = [Counter(re.findall(r"[a-z0-9]+(?:'[a-z]+)?", t.lower())) for t in texts]
    df = Counter(w for d in docs for w in d)
    vocab = sorted(w for w, c in df.items() if c >= min_df and c <= max_df * len(texts))
    index = {w: j for j, w in enumerate(vocab)}
    X = np.zeros((len(texts), len(vocab)))
    for i, d in enumerate(docs):
        for w, c in d.items():
            if w in index:
                X[i, index[w]] = 1.0 + math.log(c)
    idf = np.log((1 + len(texts)) / (1 + np.array([df[w] for w in vocab]))) + 1.0
    X *= idf
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def contingency(truth: list[str], found: list[int]) -> np.ndarray:
    classes = {c: i for i, c in enumerate(sorted(set(truth)))}
    clusters = {c: i for i, c in enumerate(sorted(set(found)))}
    table = np.zeros((len(classes), len(clusters)), dtype=np.int64)
    for t, f in zip(truth, found):
        table[classes[t], clusters[f]] += 1
    return table


def adjusted_rand(truth: list[str], found: list[int]) -> float:
    """Hubert and Arabie's adjusted Rand index (scikit-learn's adjusted_rand_score)."""
    table = contingency(truth, found)

    def pairs(x: np.ndarray) -> float:
        return float((x * (x - 1) / 2).sum())

    n = table.sum()
    index, rows, cols = pairs(table), pairs(table.sum(axis=1)), pairs(table.sum(axis=0))
    expected = rows * cols / (n * (n - 1) / 2)
    top = (rows + cols) / 2
    return 1.0 if top == expected else (index - expected) / (top - expected)


def purity(truth: list[str], found: list[int]) -> float:
    table = contingency(truth, found)
    return float(table.max(axis=0).sum() / table.sum())


# ---------------------------------------------------------------- the run


def embed(model: str, texts: list[str], threads: int | None) -> tuple[np.ndarray, float, str]:
    loaded = loader.load(model, threads=threads, **classify_job.load_options("embed"))
    try:
        started = time.perf_counter()
        vectors = embed_texts(loaded.model, texts).vectors
        return vectors, time.perf_counter() - started, loaded.name
    finally:
        loaded.close()


def score(name: str, X: np.ndarray, truth: list[str], *, distinct: int, centre: bool, seed: int,
          embed_seconds: float) -> list[dict]:
    rows = []
    for mode, ks in (("true k", [len(set(truth))]), ("auto", cluster.candidate_ks("auto", len(truth), distinct))):
        started = time.perf_counter()
        result = cluster.group(X, ks, seed=seed, centre=centre)
        rows.append({"representation": name, "mode": mode, "k": result.k, "ari": round(adjusted_rand(truth,
                     result.assignments), 3), "purity": round(purity(truth, result.assignments), 3),
                     "silhouette": result.silhouette, "kmeans_seconds": round(time.perf_counter() - started, 2),
                     "embed_seconds": round(embed_seconds, 1)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", default=["sms", "squad"], choices=["sms", "squad"])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m"])
    ap.add_argument("--sms", type=int, default=1000, help="SMS messages sampled [1000]")
    ap.add_argument("--per-article", type=int, default=50, help="SQuAD paragraphs per article [50]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    results = []
    for data in args.data:
        texts, truth = read_sms(args.sms, args.seed) if data == "sms" else read_squad(args.per_article)
        counts = Counter(truth)
        print(f"# {data}: {len(texts)} texts, {len(counts)} classes "
              f"({', '.join(f'{c} {n}' for c, n in counts.most_common())})", file=sys.stderr)
        started = time.perf_counter()
        X = tfidf(texts)
        tf_seconds = time.perf_counter() - started
        distinct = len(set(texts))
        rows = score(f"TF-IDF ({X.shape[1]} words)", X, truth, distinct=distinct, centre=False, seed=args.seed,
                     embed_seconds=tf_seconds)
        for model in args.models:
            vectors, seconds, name = embed(model, texts, args.threads)
            rows += score(f"llmlocal {name}", vectors, truth, distinct=distinct, centre=True, seed=args.seed,
                          embed_seconds=seconds)
            rows += score(f"llmlocal {name}, not centred", vectors, truth, distinct=distinct, centre=False,
                          seed=args.seed, embed_seconds=seconds)
        for r in rows:
            r.update(data=data, n=len(texts), classes=len(counts))
        results += rows
    print("| data | texts | classes | vectors | k | ARI | purity | silhouette | embedding s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        k = f"{r['k']} (true)" if r["mode"] == "true k" else f"auto: {r['k']}"
        print(f"| {r['data']} | {r['n']} | {r['classes']} | {r['representation']} | {k} | {r['ari']:.3f} | "
              f"{r['purity']:.3f} | {r['silhouette']:.3f} | {r['embed_seconds']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
