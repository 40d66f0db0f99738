"""Document indexing and retrieval: quality and speed, measured in one run (issue #16).

Data: SQuAD v1.1 dev, articles 0-29 (/work/shared/data/squad-v1.1, CC BY-SA 4.0). Every
paragraph becomes one Markdown file, ``<article>/<nnn>.md``: the article's title as a ``#``
heading (a document's title, as real files have one), then the paragraph on one line. A hit is
the gold paragraph exactly when its file is that paragraph's file, whatever chunking did to it.

1. Retrieval: for a fixed sample of questions, recall@1, recall@5 and MRR (over the 50 best
   hits: CANDIDATES) of the gold paragraph, for embedding alone, keyword (BM25) alone and
   hybrid (reciprocal rank fusion), with the index's own query vectors; and how often the
   "nothing relevant" rule (``found``) says nothing on these real questions.
2. Answers: on a sample of those questions, ``model.ask(index, q)`` against the same model with
   the question alone (``complete``), both greedy with the same token budget: SQuAD exact match
   and token F1 (the official normalisation), how often the gold answer appears in the reply,
   and the share of cited ``[n]`` that point at the gold paragraph. Negatives: the index is
   first built from all articles but a few held out (a fixed random choice), and ``ask`` is put
   questions about the held-out articles: ``found`` False there is the rule's true negative.
3. Index speed: adding the held-out articles to the index (only those files are embedded: the
   index is incremental), in chunks per second, against the embedder alone on the same chunk
   texts (what ``llmlocal embed`` runs: ``embed_texts`` in one call, same load options).
4. Search latency on synthetic indexes (random unit vectors of the model's dimension, text drawn
   from the SQuAD vocabulary at its word frequencies), written through ``Index.replace_file``:
   the one-time load of the vectors into one NumPy matrix, its memory, and per-query p50/p95.

    LLMLOCAL_HOME=/tmp/llhome python benchmarks/documents_bench.py --threads 1 --json out.json   # ~70 min, 2 cores
    LLMLOCAL_HOME=/tmp/llhome python benchmarks/documents_bench.py --quick    # smoke run, a few min
    python benchmarks/documents_bench.py --only latency --sizes 10000 100000 1000000
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import json
import os
import random
import re
import shutil
import string
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import llmlocal  # noqa: E402
from llmlocal import documents  # noqa: E402
from llmlocal.documents.chunks import Chunk  # noqa: E402
from llmlocal.documents.index import CANDIDATES  # noqa: E402

SQUAD = Path("/work/shared/data/squad-v1.1/dev-articles-0-29.json")
MODES = ("embedding", "keyword", "hybrid")
INDEX_NAME = "documents-bench-squad"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def percentile(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q)) if xs else float("nan")


# ---------------------------------------------------------------- data


def read_squad(path: Path, n_articles: int, n_paragraphs: int = 0) -> list[dict]:
    """Articles: {"title", "paragraphs": [{"context", "qas"}]} of the first ``n_articles`` (and of
    each, the first ``n_paragraphs`` if not 0)."""
    articles = json.loads(path.read_text(encoding="utf-8"))["data"][:n_articles]
    if n_paragraphs:
        articles = [{**a, "paragraphs": a["paragraphs"][:n_paragraphs]} for a in articles]
    return articles


def write_articles(articles: Sequence[dict], root: Path) -> list[dict]:
    """One Markdown file per paragraph under ``root``; the questions, each with its gold file."""
    questions = []
    for article in articles:
        folder = root / article["title"]
        folder.mkdir(parents=True, exist_ok=True)
        title = article["title"].replace("_", " ")
        for n, para in enumerate(article["paragraphs"]):
            path = (folder / f"{n:03d}.md").resolve()
            body = " ".join(para["context"].split())  # one line: no blank line, no heading inside
            path.write_text(f"# {title}\n\n{body}\n", encoding="utf-8")
            for qa in para["qas"]:
                questions.append({"id": qa["id"], "question": qa["question"], "article": article["title"],
                                  "gold": str(path), "answers": [a["text"] for a in qa["answers"]]})
    return questions


# ---------------------------------------------------------------- SQuAD's answer metrics


def normalize_answer(s: str) -> str:
    """SQuAD v1.1's evaluation script: lower-case, no punctuation, no articles, single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1_score(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = collections.Counter(pred) & collections.Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def answer_scores(prediction: str | None, golds: Sequence[str]) -> dict[str, float]:
    """Exact match and F1 (best over the gold answers, as SQuAD scores), and whether a gold answer
    appears whole in the normalised reply (a sentence-long reply can hold it and still score EM 0)."""
    text = re.sub(r"\[\d+\]", " ", prediction or "")  # citations are not part of the answer
    norm = normalize_answer(text)
    return {"em": max(float(norm == normalize_answer(g)) for g in golds),
            "f1": max(f1_score(text, g) for g in golds),
            "contains": max(float(bool(normalize_answer(g)) and f" {normalize_answer(g)} " in f" {norm} ")
                            for g in golds)}


def cited(answer: str | None) -> list[int]:
    return [int(n) for n in re.findall(r"\[(\d+)\]", answer or "")]


def source_file(where: str) -> str:
    """The file of a source's ``file:lines`` (``display_path`` may have made it relative)."""
    return str(Path(where.rsplit(":", 1)[0]).resolve())


# ---------------------------------------------------------------- 1. retrieval


def retrieval(name: str, questions: Sequence[dict], *, threads: int | None) -> dict:
    """recall@1, recall@5, MRR per mode, and the rule's ``found`` on these (answerable) questions."""
    idx, embedder = documents.open_for_query(name, threads=threads)
    ranks: dict[str, list[int | None]] = {m: [] for m in MODES}
    found: list[dict] = []
    embed_seconds = []
    try:
        for n, q in enumerate(questions, 1):
            started = time.perf_counter()
            vector = documents.job.question_vector(embedder, q["question"])
            embed_seconds.append(time.perf_counter() - started)
            for mode in MODES:
                hits = idx.search(q["question"], vector, k=CANDIDATES, mode=mode)
                ranks[mode].append(next((h.rank for h in hits if h.path == q["gold"]), None))
            ctx = documents.retrieve(idx, q["question"], vector, k=4)
            found.append({"id": q["id"], "question": q["question"], "found": ctx.found,
                          "coverage": max((h.coverage for h in ctx.hits), default=0.0)})
            if n % 100 == 0:
                log(f"  retrieval {n}/{len(questions)} (load {load_average()})")
    finally:
        embedder.close()
        idx.close()
    table = {}
    for mode, rs in ranks.items():
        table[mode] = {"recall@1": float(np.mean([r is not None and r <= 1 for r in rs])),
                       "recall@5": float(np.mean([r is not None and r <= 5 for r in rs])),
                       "mrr": float(np.mean([1.0 / r if r else 0.0 for r in rs])),
                       "recall@50": float(np.mean([r is not None for r in rs]))}
    return {"n": len(questions), "modes": table, "ranks": ranks, "found": float(np.mean([f["found"] for f in found])),
            "per_question": found,
            "query_embed_ms_p50": 1000 * percentile(embed_seconds, 50)}


# ---------------------------------------------------------------- 2. answers


def answers(model, index, questions: Sequence[dict], *, max_tokens: int, k: int) -> dict:
    """ask (retrieval) against complete (the question alone), on the same questions."""
    rows = []
    for n, q in enumerate(questions, 1):
        started = time.perf_counter()
        got = model.ask(index, q["question"], k=k, max_tokens=max_tokens)
        ask_s = time.perf_counter() - started
        started = time.perf_counter()
        alone = model.complete(q["question"], temperature=0, max_tokens=max_tokens)
        alone_s = time.perf_counter() - started
        files = {s["number"]: source_file(s["where"]) for s in got["sources"]}
        numbers = cited(got["answer"])
        rows.append({"id": q["id"], "question": q["question"], "answers": q["answers"], "found": got["found"],
                     "ask": got["answer"], "alone": alone, "ask_scores": answer_scores(got["answer"], q["answers"]),
                     "alone_scores": answer_scores(alone, q["answers"]), "cited": numbers,
                     "cites_gold": bool(numbers) and files.get(numbers[0]) == q["gold"],
                     "gold_shown": q["gold"] in files.values(), "ask_s": ask_s, "alone_s": alone_s})
        if n % 20 == 0:
            log(f"  answers {n}/{len(questions)} (load {load_average()})")
    return {"n": len(rows), "rows": rows}


def negatives(model, index, questions: Sequence[dict], *, max_tokens: int, k: int) -> dict:
    """ask on questions whose article is not in the index: found False is the right answer."""
    rows = []
    for q in questions:
        coverage = max((h.coverage for h in index.context(q["question"], k=k).hits), default=0.0)
        got = model.ask(index, q["question"], k=k, max_tokens=max_tokens)
        rows.append({"id": q["id"], "question": q["question"], "article": q["article"], "found": got["found"],
                     "coverage": coverage, "answer": got["answer"]})
    return {"n": len(rows), "rows": rows}


def says_unknown(answer: str | None) -> bool:
    return bool(re.search(r"(do not|don't|does not|doesn't|cannot|can't) (know|say|mention|provide)|not mentioned"
                          r"|no information", answer or "", re.I))


# ---------------------------------------------------------------- 3. index speed


def embed_same_texts(name: str, files: Sequence[str], *, threads: int | None) -> dict:
    """The embedder alone on the chunk texts the index embedded for ``files``, in one call."""
    with documents.Index.open(name) as idx:
        texts = [Chunk(text, a, b, heading).embedding_text()
                 for f in files for _, text, heading, a, b in idx.file_text(f)]
        model = idx.meta["model"]
    started = time.perf_counter()
    embedder = documents.open_embedder(model, threads=threads)
    load_s = time.perf_counter() - started
    try:
        started = time.perf_counter()
        vectors = embedder.embed(texts)
        seconds = time.perf_counter() - started
    finally:
        embedder.close()
    return {"chunks": len(texts), "seconds": seconds, "load_seconds": load_s, "dim": int(vectors.shape[1]),
            "chars": sum(map(len, texts))}


# ---------------------------------------------------------------- 4. search latency (synthetic)


@contextlib.contextmanager
def home_at(path: Path) -> Iterator[None]:
    """LLMLOCAL_HOME pointed at ``path`` for a while (paths are read at call time)."""
    old = os.environ.get("LLMLOCAL_HOME")
    os.environ["LLMLOCAL_HOME"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LLMLOCAL_HOME", None)
        else:
            os.environ["LLMLOCAL_HOME"] = old


class SyntheticText:
    """Texts of the SQuAD paragraphs' lengths (in words) drawn from their vocabulary at its
    frequencies, so the FTS index has a natural Zipf shape and real questions match in it."""

    def __init__(self, articles: Sequence[dict], seed: int) -> None:
        counts: collections.Counter[str] = collections.Counter()
        self.lengths = []
        for a in articles:
            for p in a["paragraphs"]:
                words = re.findall(r"\w+", p["context"].lower())
                counts.update(words)
                self.lengths.append(len(words))
        self.words = np.array(list(counts))
        freq = np.array(list(counts.values()), dtype=np.float64)
        self.cum = np.cumsum(freq / freq.sum())
        self.rng = np.random.default_rng(seed)

    def texts(self, n: int) -> list[str]:
        lengths = self.rng.choice(self.lengths, size=n)
        draws = np.searchsorted(self.cum, self.rng.random(int(lengths.sum())), side="right")
        draws = np.minimum(draws, len(self.words) - 1)
        tokens = self.words[draws]
        out, at = [], 0
        for length in lengths:
            out.append(" ".join(tokens[at:at + length]))
            at += length
        return out


def rss_bytes(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS (Linux 4.0+)
        return True
    except OSError:
        return False


def measure_search(name: str, dim: int, queries: Sequence[str], seed: int) -> dict:
    """First search (loads the matrix) and per-query latency by mode, on a freshly opened index."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((len(queries), dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    gc.collect()
    peak_ok = reset_peak_rss()
    before = rss_bytes("VmRSS")
    with documents.Index.open(name) as idx:
        chunks = idx.info()["chunks"]
        started = time.perf_counter()
        idx.search(queries[0], vectors[0], k=5, mode="embedding")
        first = time.perf_counter() - started
        after, peak = rss_bytes("VmRSS"), rss_bytes("VmHWM")
        out = {"chunks": chunks, "first_search_s": first, "matrix_bytes": chunks * dim * 4,
               "rss_after_load": after - before, "rss_peak_during_load": (peak - before) if peak_ok else None,
               "disk_bytes": idx.info()["disk_bytes"]}
        for mode in MODES:
            times = []
            for q, v in zip(queries, vectors):
                started = time.perf_counter()
                idx.search(q, v, k=5, mode=mode)
                times.append(time.perf_counter() - started)
            out[mode] = {"p50_ms": 1000 * percentile(times, 50), "p95_ms": 1000 * percentile(times, 95)}
        out["load_s"] = max(first - out["embedding"]["p50_ms"] / 1000, 0.0)
        # Where embedding-mode time goes, on the same matrix (the same two operations search does).
        ids, matrix = idx._vectors()  # noqa: SLF001 - the matrix the searches above used
        mm, sort, part = [], [], []
        for v in vectors[:20]:
            t0 = time.perf_counter()
            scores = matrix @ v
            t1 = time.perf_counter()
            np.argsort(-scores, kind="stable")[:CANDIDATES]
            t2 = time.perf_counter()
            top = np.argpartition(-scores, min(CANDIDATES, len(scores) - 1))[:CANDIDATES]
            top[np.argsort(-scores[top], kind="stable")]
            t3 = time.perf_counter()
            mm.append(t1 - t0)
            sort.append(t2 - t1)
            part.append(t3 - t2)
        out["matmul_ms_p50"] = 1000 * percentile(mm, 50)
        out["argsort_ms_p50"] = 1000 * percentile(sort, 50)
        out["argpartition_ms_p50"] = 1000 * percentile(part, 50)
        del ids, matrix
    gc.collect()
    return out


def latency(articles: Sequence[dict], queries: Sequence[str], sizes: Sequence[int], *, dim: int, seed: int,
            workdir: Path, budget_s: float, batch: int = 5000) -> dict:
    """Grow one synthetic index through ``sizes``, measuring at each; a size whose build would
    pass ``budget_s`` (projected from the rate so far) is skipped and extrapolated instead."""
    text = SyntheticText(articles, seed)
    rng = np.random.default_rng(seed + 1)
    rows, skipped = [], []
    home = Path(tempfile.mkdtemp(prefix="documents-bench-home-", dir=workdir))
    name = "synthetic"
    try:
        with home_at(home):
            writer = documents.Index.open(name, create=True)
            writer.bind_model("synthetic", None, dim, {})
            written, build_s, files = 0, 0.0, 0
            try:
                for size in sorted(sizes):
                    need = size - written
                    if written and build_s / written * size > budget_s:
                        skipped.append(size)
                        continue
                    log(f"  synthetic: writing {need:,} chunks to reach {size:,} (load {load_average()})")
                    started = time.perf_counter()
                    while written < size:
                        n = min(batch, size - written)
                        texts = text.texts(n)
                        vecs = rng.standard_normal((n, dim)).astype(np.float32)
                        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
                        chunks = [Chunk(t, 1, 1) for t in texts]
                        writer.replace_file(f"/synthetic/{files:06d}.txt", f"{files:064x}", sum(map(len, texts)),
                                            "text", chunks, vecs)
                        files += 1
                        written += n
                        if time.perf_counter() - started + build_s > budget_s and written < size:
                            break
                    build_s += time.perf_counter() - started
                    if written < size:
                        skipped.append(size)
                        log(f"  synthetic: build budget ({budget_s:.0f} s) spent at {written:,} chunks")
                        break
                    row = measure_search(name, dim, queries, seed)
                    row["build_s"] = build_s
                    rows.append(row)
                    log("  " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))
            finally:
                writer.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return {"rows": rows, "skipped": skipped, "dim": dim, "queries": len(queries)}


def extrapolate(rows: Sequence[dict], size: int) -> dict:
    """A size not built, from the largest one that was: everything scaled linearly in chunks
    (the matrix product, the sort and the loads are linear; FTS doclists grow with the corpus)."""
    base = rows[-1]
    f = size / base["chunks"]
    out = {"chunks": size, "extrapolated_from": base["chunks"], "matrix_bytes": size * base["matrix_bytes"]
           // base["chunks"], "load_s": base["load_s"] * f, "build_s": base["build_s"] * f}
    for mode in MODES:
        out[mode] = {k: v * f for k, v in base[mode].items()}
    return out


# ---------------------------------------------------------------- tables


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    table = [tuple(header), *[tuple(r) for r in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f} MiB"


def report(result: dict) -> None:
    s = result["settings"]
    print(f"documents_bench: {s['articles']} SQuAD articles ({s['paragraphs']} paragraphs, one Markdown file each), "
          f"embedding model {s['embed_model']}, threads {s['threads'] or 'default'}, seed {s['seed']}")
    print(f"load average: before {s['load_before']}, after {result.get('load_after', '?')}")
    if "retrieval" in result:
        r = result["retrieval"]
        print()
        print(f"1. Retrieval of the gold paragraph, {r['n']} questions (MRR over the {CANDIDATES} best hits)")
        print_table(("mode", "recall@1", "recall@5", "MRR", f"recall@{CANDIDATES}"),
                    [(m, f"{v['recall@1']:.3f}", f"{v['recall@5']:.3f}", f"{v['mrr']:.3f}", f"{v['recall@50']:.3f}")
                     for m, v in r["modes"].items()])
        h, e, kw = (r["modes"][m] for m in ("hybrid", "embedding", "keyword"))
        beats = {key: h[key] > max(e[key], kw[key]) for key in ("recall@1", "recall@5", "mrr")}
        print("hybrid beats both alone: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in beats.items()))
        print(f"'nothing relevant' rule on these answerable questions (hybrid, k=4): found {r['found']:.1%}, "
              f"so {1 - r['found']:.1%} false negatives; query embedding p50 {r['query_embed_ms_p50']:.0f} ms")
    if "answers" in result:
        rows = result["answers"]["rows"]
        n = len(rows)
        print()
        print(f"2. Answers, {n} of those questions, {s['model']}, greedy, max_tokens {s['max_tokens']}, ask k={s['k']}")

        def mean(key: str, which: str) -> str:
            return f"{np.mean([r[which][key] for r in rows]):.3f}"

        print_table(("", "EM", "F1", "contains gold", "s/question"),
                    [("ask (retrieval)", mean("em", "ask_scores"), mean("f1", "ask_scores"),
                      mean("contains", "ask_scores"), f"{np.mean([r['ask_s'] for r in rows]):.1f}"),
                     ("question alone", mean("em", "alone_scores"), mean("f1", "alone_scores"),
                      mean("contains", "alone_scores"), f"{np.mean([r['alone_s'] for r in rows]):.1f}")])
        found = [r for r in rows if r["found"]]
        citing = [r for r in found if r["cited"]]
        print(f"found: {len(found)}/{n} ({len(found) / n:.0%}); gold paragraph among the sources shown: "
              f"{sum(r['gold_shown'] for r in found)}/{len(found)}")
        print(f"answers citing a source: {len(citing)}/{len(found)}; first citation is the gold paragraph: "
              f"{sum(r['cites_gold'] for r in citing)}/{len(citing)} of those "
              f"({sum(r['cites_gold'] for r in rows) / n:.0%} of all {n} answers)")
    if "negatives" in result:
        neg = result["negatives"]
        rows = neg["rows"]
        off = sum(not r["found"] for r in rows)
        answered = [r for r in rows if r["found"]]
        print()
        print(f"'nothing relevant' rule, {neg['n']} questions about articles not in the index "
              f"({', '.join(s['held_out'])}; index of the other {s['articles'] - len(s['held_out'])} articles):")
        print(f"found False (true negative): {off}/{neg['n']} ({off / neg['n']:.0%}); of the {len(answered)} "
              f"answered anyway, {sum(says_unknown(r['answer']) for r in answered)} say they do not know")
    if "speed" in result:
        sp = result["speed"]
        first, update, emb = sp["first_build"], sp["update"], sp["embed"]
        print()
        print("3. Index speed against the embedder alone (llmlocal embed's path) on the same chunk texts")
        print_table(("", "chunks", "seconds", "chunks/s"),
                    [("index: first build (model load included)", str(first["chunks"]), f"{first['seconds']:.1f}",
                      f"{first['chunks'] / first['seconds']:.2f}"),
                     (f"index: update adding {len(s['held_out'])} articles", str(update["chunks"]),
                      f"{update['seconds']:.1f}", f"{update['chunks'] / update['seconds']:.2f}"),
                     ("embed the update's chunk texts (load excluded)", str(emb["chunks"]), f"{emb['seconds']:.1f}",
                      f"{emb['chunks'] / emb['seconds']:.2f}")])
        ratio = (update["chunks"] / update["seconds"]) / (emb["chunks"] / emb["seconds"])
        print(f"index / embed throughput: {ratio:.2f}"
              f" (update: {update['unchanged']} files unchanged and skipped, {update['indexed']} indexed)")
    if "latency" in result:
        lat = result["latency"]
        print()
        print(f"4. Search latency, synthetic index ({lat['dim']}-dim float32 unit vectors, one BLOB a chunk in SQLite, "
              f"loaded into one NumPy matrix on first search; FTS5 over SQuAD-vocabulary text), "
              f"{lat['queries']} queries, k=5")
        rows = [*lat["rows"], *lat.get("extrapolated", [])]
        table = []
        for r in rows:
            mark = " (extrapolated)" if "extrapolated_from" in r else ""
            table.append((f"{r['chunks']:,}{mark}", f"{r['build_s']:.0f}", mib(r["matrix_bytes"]),
                          mib(r.get("rss_peak_during_load")), f"{r['load_s']:.2f}",
                          *(f"{r[m]['p50_ms']:.1f} / {r[m]['p95_ms']:.1f}" for m in MODES)))
        print_table(("chunks", "build s", "matrix", "peak RSS in load", "load s",
                     *(f"{m} p50/p95 ms" for m in MODES)), table)
        for r in lat["rows"]:
            print(f"  {r['chunks']:,}: embedding search = matrix@vector {r['matmul_ms_p50']:.1f} ms + full argsort "
                  f"{r['argsort_ms_p50']:.1f} ms (argpartition would take {r['argpartition_ms_p50']:.1f} ms); "
                  f"file on disk {mib(r['disk_bytes'])}")
        if lat["skipped"]:
            sizes = ", ".join(f"{x:,}" for x in lat["skipped"])
            print(f"  not built (build budget {s['build_budget_s']:.0f} s): {sizes}"
                  + ("; extrapolated linearly from the largest built, marked above" if lat.get("extrapolated") else ""))


# ---------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="answering model (and embedding model by default)")
    ap.add_argument("--embed-model", help="embedding model, e.g. an imported MiniLM GGUF [--model's pooled states]")
    ap.add_argument("--threads", type=int, help="CPU threads (default: llmlocal's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--articles", type=int, default=30, help="SQuAD articles to use (of 30)")
    ap.add_argument("--paragraphs", type=int, default=0, help="the first N paragraphs of each article (0: all)")
    ap.add_argument("--held-out", type=int, default=5, help="articles left out of the first build")
    ap.add_argument("--retrieval", type=int, default=500, help="questions for retrieval (0: all)")
    ap.add_argument("--answers", type=int, default=100, help="questions for ask vs alone")
    ap.add_argument("--negatives", type=int, default=50, help="questions about held-out articles")
    ap.add_argument("--k", type=int, default=4, help="ask's sources")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
                    help="synthetic index sizes for latency")
    ap.add_argument("--latency-queries", type=int, default=100)
    ap.add_argument("--build-budget", type=float, default=600, help="seconds for building the synthetic index")
    ap.add_argument("--dim", type=int, default=576, help="synthetic vector dimension (SmolLM2-135M: 576)")
    ap.add_argument("--only", choices=["quality", "latency"], help="one half of the benchmark")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--quick", action="store_true", help="a smoke run: 10 paragraphs of 6 articles, small samples")
    ap.add_argument("--json", type=Path, help="also write every number (and every answer) here")
    args = ap.parse_args(argv)
    if args.quick:
        args.articles, args.paragraphs, args.held_out = 6, 10, 1
        args.retrieval, args.answers, args.negatives = 40, 8, 8
        args.sizes, args.latency_queries = [2_000, 10_000], 20

    articles = read_squad(SQUAD, args.articles, args.paragraphs)
    rnd = random.Random(args.seed)
    held = set(rnd.sample(range(len(articles)), args.held_out))
    embed_model = args.embed_model or args.model
    settings = {"model": args.model, "embed_model": embed_model, "threads": args.threads, "seed": args.seed,
                "articles": len(articles),
                "paragraphs": sum(len(a["paragraphs"]) for a in articles), "k": args.k, "max_tokens": args.max_tokens,
                "held_out": [articles[i]["title"] for i in sorted(held)], "build_budget_s": args.build_budget,
                "load_before": load_average()}
    result: dict = {"settings": settings}
    log(f"documents_bench: load average {settings['load_before']}")

    if args.only != "latency":
        docs = Path(tempfile.mkdtemp(prefix="documents-bench-", dir=args.workdir)).resolve()
        with contextlib.suppress(documents.IndexError_):
            documents.remove(INDEX_NAME)
        try:
            inside = [a for i, a in enumerate(articles) if i not in held]
            outside = [a for i, a in enumerate(articles) if i in held]
            questions_in = write_articles(inside, docs)
            log(f"index: first build, {len(inside)} articles (load {load_average()})")
            started = time.perf_counter()
            with llmlocal.index(INDEX_NAME, docs, model=embed_model, threads=args.threads) as idx:
                first = idx.last_update
                first_s = time.perf_counter() - started
            questions_out = write_articles(outside, docs)
            out_files = sorted({q["gold"] for q in questions_out})

            with llmlocal.load(args.model, threads=args.threads) as m:
                with llmlocal.index(INDEX_NAME) as idx:
                    neg = rnd.sample(questions_out, min(args.negatives, len(questions_out)))
                    log(f"negatives: {len(neg)} questions about {', '.join(settings['held_out'])}")
                    result["negatives"] = negatives(m, idx, neg, max_tokens=args.max_tokens, k=args.k)

                log(f"index: update adding {len(outside)} articles (load {load_average()})")
                with llmlocal.index(INDEX_NAME, docs, model=embed_model, threads=args.threads) as idx:
                    update = idx.last_update
                emb = embed_same_texts(INDEX_NAME, out_files, threads=args.threads)
                result["speed"] = {
                    "first_build": {"chunks": first.chunks, "seconds": first_s, "files": first.indexed},
                    "update": {"chunks": update.chunks, "seconds": update.seconds, "indexed": update.indexed,
                               "unchanged": update.unchanged},
                    "embed": emb}

                questions = questions_in + questions_out
                sample = (random.Random(args.seed).sample(questions, args.retrieval)
                          if 0 < args.retrieval < len(questions) else questions)
                log(f"retrieval: {len(sample)} questions x {len(MODES)} modes (load {load_average()})")
                result["retrieval"] = retrieval(INDEX_NAME, sample, threads=args.threads)
                with llmlocal.index(INDEX_NAME) as idx:
                    log(f"answers: {min(args.answers, len(sample))} questions, ask and alone")
                    result["answers"] = answers(m, idx, sample[:args.answers], max_tokens=args.max_tokens, k=args.k)
        finally:
            shutil.rmtree(docs, ignore_errors=True)
            with contextlib.suppress(documents.IndexError_):
                documents.remove(INDEX_NAME)

    if args.only != "quality":
        questions = [qa["question"] for a in articles for p in a["paragraphs"] for qa in p["qas"]]
        queries = random.Random(args.seed + 1).sample(questions, min(args.latency_queries, len(questions)))
        lat = latency(articles, queries, args.sizes, dim=args.dim, seed=args.seed, workdir=args.workdir,
                      budget_s=args.build_budget)
        if lat["rows"] and lat["skipped"]:
            lat["extrapolated"] = [extrapolate(lat["rows"], size) for size in lat["skipped"]]
        result["latency"] = lat

    result["load_after"] = load_average()
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
