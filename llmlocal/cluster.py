"""``llmlocal cluster``: organise texts nobody has labelled into named groups.

The texts are embedded (by a dedicated embedding model, or the chat model's pooled vectors),
centred on their mean and renormalised, then grouped by k-means: k-means++ seeding from a
recorded seed, several restarts, Lloyd iterations, in NumPy. ``k="auto"`` tries each k in a
range and keeps the one with the best silhouette. The chat model names each cluster from its
most central members, held by a JSON schema to a short string. The representatives can be
written as a labelled-examples file, so that correcting their names gives a classifier
(``llmlocal classify -e``).

The arithmetic (:func:`kmeans`, :func:`silhouette`, :func:`group`) takes arrays and knows
nothing of models; :func:`cluster_texts` runs the whole job with the embedding and naming
steps given by the caller, so the CLI (:func:`execute`) and the Python API share it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from .errors import InputFormatError, UsageError, option

if TYPE_CHECKING:
    from .classify.types import Item
    from .generate import Generator

log = logging.getLogger(__name__)

# auto tries k = 2 .. 10: the result is a summary a person reads and names, and past ten groups it
# stops being one; the silhouette of mean-pooled embeddings also changes by less than its own
# noise between neighbouring large k. Never more than n // 2 (a cluster should average two
# texts), nor more than the distinct texts less one (the silhouette needs a cluster with two).
AUTO_MAX_K = 10
RESTARTS = 10  # k-means++ runs, the lowest inertia kept (scikit-learn's n_init before 1.4)
MAX_ITER = 300  # Lloyd iterations per run; they stop sooner once no text changes cluster
# The silhouette needs every pairwise distance: above this many texts it is measured on a seeded
# sample of them (as scikit-learn's sample_size), so auto stays seconds, not minutes, at 100k.
SILHOUETTE_SAMPLE = 2000
REPRESENTATIVES = 3  # shown per cluster, and written by --examples-out
NAME_MEMBERS = 5  # central members the chat model sees when it names a cluster
NAME_CHARS = 300  # of each, so the naming prompt stays short on a small context
NAME_MAX_CHARS = 40
NAME_SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": NAME_MAX_CHARS}},
               "required": ["name"]}
NAME_QUESTION = "What topic do these texts share? Answer with a short name as JSON."
# Two worked examples come before the cluster's texts: asked alone (or with the schema shown, as
# structured.extraction_prompt does), SmolLM2-135M copies the first text as the name ("I baked a
# loaf of sourdough bread with a"); after these it answers "weather conditions", and Gemma 3 270M
# base "weather" (the food / weather / sport texts of tests/test_cluster.py).
NAME_DEMOS = (
    (("The flight to Rome was delayed by two hours.", "We booked a hotel near the beach for June.",
      "Remember to pack sunscreen and your passport."), "travel"),
    (("I was charged twice for my last order.", "My invoice shows the wrong amount.",
      "Please refund the extra payment."), "billing problems"),
)
OUTPUT_COLUMNS = ("id", "text", "cluster", "cluster_name", "distance")
EXAMPLE_COLUMNS = ("text", "label", "cluster", "id", "distance")

Progress = Callable[[str, int, int], None]  # (stage: "embedded" or "named", done, total)


# ---------------------------------------------------------------- k-means and the silhouette


@dataclass(frozen=True)
class KMeans:
    """One clustering of the rows of X: the cluster of each row (0-based), the centroids, the sum
    of squared distances to them (inertia), and the Lloyd iterations of the best run."""

    labels: np.ndarray
    centroids: np.ndarray
    inertia: float
    iterations: int


def squared_distances(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance of each row of X to each row of C (never negative)."""
    d = (X * X).sum(axis=1)[:, None] - 2.0 * (X @ C.T) + (C * C).sum(axis=1)[None, :]
    return np.maximum(d, 0.0)


def _plus_plus(X: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur and Vassilvitskii 2007): each next centre drawn with probability
    proportional to its squared distance from the nearest centre already chosen."""
    n = X.shape[0]
    chosen = [int(rng.integers(n))]
    closest = squared_distances(X, X[chosen])[:, 0]
    for _ in range(1, k):
        total = closest.sum()
        if total > 0:
            nxt = int(rng.choice(n, p=closest / total))
        else:  # every text equals a centre already: any other row will do
            rest = np.setdiff1d(np.arange(n), chosen)
            nxt = int(rng.choice(rest)) if rest.size else chosen[-1]
        chosen.append(nxt)
        closest = np.minimum(closest, squared_distances(X, X[nxt:nxt + 1])[:, 0])
    return X[chosen].copy()


def _lloyd(X: np.ndarray, centroids: np.ndarray, max_iter: int) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Lloyd's iterations from ``centroids`` until no row changes cluster (or ``max_iter``)."""
    k = centroids.shape[0]
    labels = np.full(X.shape[0], -1)
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 (the count is kept)
        d = squared_distances(X, centroids)
        new = d.argmin(axis=1)
        counts = np.bincount(new, minlength=k)
        for empty in np.flatnonzero(counts == 0):
            # An empty cluster takes the row farthest from its centroid, from a cluster that can spare
            # one (scikit-learn relocates the same way), so k clusters stay k.
            own = d[np.arange(len(new)), new]
            own[counts[new] < 2] = -1.0
            far = int(own.argmax())
            if own[far] <= 0:
                break
            counts[new[far]] -= 1
            new[far] = empty
            counts[empty] = 1
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = X[labels == j]
            if len(members):
                centroids[j] = members.mean(axis=0)
    d = squared_distances(X, centroids)
    inertia = float(d[np.arange(len(labels)), labels].sum())
    return labels, centroids, inertia, iterations


def kmeans(X: np.ndarray, k: int, *, seed: int = 0, restarts: int = RESTARTS, max_iter: int = MAX_ITER) -> KMeans:
    """k-means of the rows of X: ``restarts`` runs of k-means++ seeding then Lloyd iterations, all
    drawn from one generator seeded with ``seed`` (so the same seed gives the same clusters); the
    run with the lowest inertia is kept."""
    X = np.asarray(X, dtype=np.float64)
    if not 1 <= k <= X.shape[0]:
        raise UsageError(f"k-means needs 1 <= k <= the number of rows ({X.shape[0]}); got {k}")
    rng = np.random.default_rng(seed)
    best: KMeans | None = None
    for _ in range(max(restarts, 1)):
        labels, centroids, inertia, iterations = _lloyd(X, _plus_plus(X, k, rng), max_iter)
        if best is None or inertia < best.inertia - 1e-12:
            best = KMeans(labels, centroids, inertia, iterations)
    assert best is not None
    return best


def silhouette(X: np.ndarray, labels: np.ndarray, *, sample: int = SILHOUETTE_SAMPLE, seed: int = 0) -> float:
    """Mean silhouette (Rousseeuw 1987) of a clustering, by Euclidean distance: for each row, (b - a)
    / max(a, b), a its mean distance to its own cluster, b to the nearest other; 0 for a row alone
    in its cluster. Above ``sample`` rows it is measured on a seeded sample of that many.

    Between -1 and 1; higher is better separated. Needs two clusters or more.
    """
    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(labels)
    if len(X) > sample:
        keep = np.sort(np.random.default_rng(seed).choice(len(X), size=sample, replace=False))
        X, labels = X[keep], labels[keep]
    ids, labels = np.unique(labels, return_inverse=True)
    if len(ids) < 2:
        raise UsageError("the silhouette needs at least two clusters")
    D = np.sqrt(squared_distances(X, X))
    onehot = np.eye(len(ids))[labels]
    sizes = onehot.sum(axis=0)
    mean_to = (D @ onehot)  # row i, cluster j: the sum of distances to j's rows
    own = sizes[labels]
    a = mean_to[np.arange(len(X)), labels] / np.maximum(own - 1, 1)  # the row's own 0 is in the sum
    mean_to = mean_to / sizes[None, :]
    mean_to[np.arange(len(X)), labels] = np.inf
    b = mean_to.min(axis=1)
    s = np.where(own > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(s.mean())


def prepare_vectors(vectors: np.ndarray) -> np.ndarray:
    """The vectors k-means sees: centred on their mean, each renormalised to length 1.

    Mean-pooled vectors of a language model share one large direction (cosines 0.7-0.9 between
    unrelated texts); centring removes it, as the embedding classifier does (classify.embedding).
    Measured by benchmarks/cluster_bench.py (ARI, k = the true number of classes): six SQuAD
    articles 0.968 -> 0.992 with SmolLM2-135M, 0.925 -> 0.933 with Gemma 3 270M base; SMS spam
    and ham 0.142 -> 0.140 and 0.678 -> 0.609. It helps topics, and a two-class split less surely.
    """
    from .classify.embedding import centred

    X = np.asarray(vectors, dtype=np.float64)
    return centred(X, X.mean(axis=0))


# ---------------------------------------------------------------- clusters


@dataclass
class Cluster:
    """One cluster: ``index`` from 1 (largest first), its name, and its members' positions in the
    input, the most central first (``representatives``: the first few with distinct texts)."""

    index: int
    name: str
    members: list[int]
    representatives: list[int]

    @property
    def size(self) -> int:
        return len(self.members)


@dataclass
class Clustering:
    """The result: per text its cluster's index and distance to the centroid, and the clusters.

    ``distances`` are Euclidean, in the centred unit-vector space k-means ran in (0: at the
    centroid; the largest possible is 2). ``scores``: the silhouette of each k tried (auto), or of
    the k given; ``sampled``: the silhouette's sample size when it was measured on a sample.
    """

    k: int
    k_requested: int | str
    assignments: list[int]
    distances: list[float]
    clusters: list[Cluster]
    seed: int
    scores: dict[int, float] = field(default_factory=dict)
    sampled: int | None = None
    inertia: float = 0.0
    named: bool = False

    @property
    def silhouette(self) -> float | None:
        return self.scores.get(self.k)

    def summaries(self, texts: Sequence[str], ids: Sequence[Any] | None = None) -> list[dict]:
        """One record per cluster: index, name, size, representative texts (and their ids)."""
        out = []
        for c in self.clusters:
            row: dict[str, Any] = {"cluster": c.index, "name": c.name, "size": c.size,
                                   "representatives": [texts[i] for i in c.representatives]}
            if ids is not None:
                row["representative_ids"] = [ids[i] for i in c.representatives]
            out.append(row)
        return out

    def records(self, texts: Sequence[str], ids: Sequence[Any]) -> list[dict]:
        """One record per text, in input order: id, text, cluster, cluster_name, distance."""
        names = {c.index: c.name for c in self.clusters}
        return [{"id": ident, "text": text, "cluster": c, "cluster_name": names[c], "distance": round(d, 6)}
                for ident, text, c, d in zip(ids, texts, self.assignments, self.distances)]

    def example_rows(self, texts: Sequence[str], ids: Sequence[Any]) -> list[dict]:
        """The representatives as labelled examples: their cluster's name is the label to correct."""
        return [{"text": texts[i], "label": c.name, "cluster": c.index, "id": ids[i],
                 "distance": round(self.distances[i], 6)} for c in self.clusters for i in c.representatives]


def parse_k(value: str | int) -> int | str:
    """``-k``'s value: a whole number, or ``auto``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{option('k')} takes a number of clusters or 'auto', not {value!r}") from None


def candidate_ks(k: int | str, n: int, distinct: int, *, max_k: int = AUTO_MAX_K, name: str = "the input") -> list[int]:
    """The k values to try for ``k`` (a number, or ``auto``) with ``n`` texts, ``distinct`` of them
    different, checked before any model is loaded.

    Raises:
        InputFormatError: no texts, or a single distinct text (nothing to group).
        UsageError: k below 2, more clusters than distinct texts, or too few texts for auto.
    """
    if n == 0:
        raise InputFormatError(name, "no texts to cluster")
    if distinct < 2:
        raise InputFormatError(name, f"all {n} texts are the same: there is nothing to cluster",
                               hint="cluster at least two different texts")
    k = parse_k(k)
    if k == "auto":
        if max_k < 2:
            raise UsageError(f"{option('max_k')} must be at least 2; got {max_k}")
        top = min(max_k, distinct - 1, max(2, n // 2))
        if top < 2:
            raise UsageError(f"auto chooses k by the silhouette, which needs at least 3 different texts "
                             f"({name} has {distinct})", hint=f"give {option('k')} 2")
        return list(range(2, top + 1))
    assert isinstance(k, int)
    if k < 2:
        raise UsageError(f"{option('k')} must be at least 2 (one cluster groups nothing); got {k}",
                         hint=f"give {option('k')} N with N >= 2, or {option('k')} auto")
    if k > distinct:
        what = f"{n} texts" if distinct == n else f"{distinct} different texts (of {n})"
        raise UsageError(f"{option('k')} {k} asks for more clusters than there are texts: {name} has {what}",
                         hint=f"give {option('k')} {distinct} or fewer, or {option('k')} auto")
    return [k]


def distinct_count(texts: Sequence[str]) -> int:
    return len(set(texts))


def group(vectors: np.ndarray, ks: Sequence[int], *, seed: int = 0, k_requested: int | str | None = None,
          sample: int = SILHOUETTE_SAMPLE, centre: bool = True) -> Clustering:
    """Cluster ``vectors`` (one row per text) with each k in ``ks`` and keep the best silhouette
    (ties: the smaller k); the clusters come largest first, named ``cluster 1``, ``cluster 2``...

    Pure arithmetic: no model. The vectors are centred and renormalised here (prepare_vectors);
    ``centre=False`` takes them as they are (the benchmark's TF-IDF baseline and ablation).
    """
    X = prepare_vectors(vectors) if centre else np.asarray(vectors, dtype=np.float64)
    n = X.shape[0]
    sampled = sample if n > sample else None
    if sampled is not None:
        log.info("silhouette measured on a seeded sample of %d of the %d texts (it compares every pair)",
                 sample, n)
    scores: dict[int, float] = {}
    best: tuple[float, int, KMeans] | None = None
    for k in ks:
        result = kmeans(X, k, seed=seed)
        score = silhouette(X, result.labels, sample=sample, seed=seed) if len(np.unique(result.labels)) > 1 else -1.0
        scores[k] = round(score, 6)
        if best is None or score > best[0] + 1e-12:
            best = (score, k, result)
    assert best is not None
    _, k, result = best
    d = np.sqrt(squared_distances(X, result.centroids)[np.arange(n), result.labels])
    used = [j for j in range(k) if np.any(result.labels == j)]
    # Largest first; ties by where their first member is in the input, so the order is stable.
    used.sort(key=lambda j: (-int((result.labels == j).sum()), int(np.flatnonzero(result.labels == j)[0])))
    index = {j: pos + 1 for pos, j in enumerate(used)}
    clusters = []
    for j in used:
        members = sorted(np.flatnonzero(result.labels == j).tolist(), key=lambda i: (d[i], i))
        clusters.append(Cluster(index=index[j], name=f"cluster {index[j]}", members=members, representatives=[]))
    return Clustering(k=len(used), k_requested=k_requested if k_requested is not None else k,
                      assignments=[index[int(j)] for j in result.labels], distances=[float(x) for x in d],
                      clusters=clusters, seed=seed, scores=scores, sampled=sampled, inertia=result.inertia)


def choose_representatives(clustering: Clustering, texts: Sequence[str], *, n: int = REPRESENTATIVES) -> None:
    """Each cluster's ``n`` most central members with different texts (a repeated message shows once)."""
    for c in clustering.clusters:
        seen: set[str] = set()
        reps = []
        for i in c.members:
            key = " ".join(texts[i].split()).lower()
            if key not in seen:
                seen.add(key)
                reps.append(i)
            if len(reps) == n:
                break
        c.representatives = reps


# ---------------------------------------------------------------- names


def naming_prompt(model: Any, members: Sequence[str]) -> tuple[list[int], Any]:
    """(prompt tokens, sampling parameters) for naming a cluster from its central ``members``.

    A chat model gets the worked examples (NAME_DEMOS) as earlier turns; a base model (no chat
    template) the same as one text, each answer after ``JSON:``. The sampling is greedy under
    NAME_SCHEMA, so the name is a JSON string of at most 40 characters; no repeat penalty, as the
    best name often repeats a word of the texts.
    """
    from . import generate, structured
    from .sampling import SamplingParams

    def ask(texts: Sequence[str]) -> str:
        return "Texts:\n" + "\n".join("- " + _shorten(t, NAME_CHARS) for t in texts) + "\n\n" + NAME_QUESTION

    constraint = structured.from_schema(NAME_SCHEMA)
    params = SamplingParams(constraint=constraint, temperature=0, seed=0, repeat_penalty=1.0, max_tokens=48)
    turns: list[dict] = []
    for texts, name in NAME_DEMOS:
        turns += [{"role": "user", "content": ask(texts)},
                  {"role": "assistant", "content": json.dumps({"name": name})}]
    turns.append({"role": "user", "content": ask(members)})
    hint = f"raise {option('ctx')}, or skip naming ({option('no_names')})"
    if model.chat_template():
        tokens, _ = generate.prompt_tokens(model, turns, max_tokens=params.max_tokens, overflow_hint=hint)
    else:
        text = "\n\n".join(t["content"] if t["role"] == "user" else "JSON: " + t["content"] for t in turns)
        tokens, _ = generate.prompt_tokens(model, text + "\nJSON: ", raw=True, max_tokens=params.max_tokens,
                                           overflow_hint=hint)
    return tokens, params


def clean_name(value: Any) -> str:
    """A proposed name as a label: one line, no surrounding quotes or final full stop ('' if none)."""
    if not isinstance(value, str):
        return ""
    name = " ".join(value.split()).strip(" \"'`.,;:-")
    return name[:NAME_MAX_CHARS].strip()


def unique_names(names: Sequence[str]) -> list[str]:
    """The names, a clash (ignoring case) getting a number: ``weather``, ``weather 2``."""
    out: list[str] = []
    taken: set[str] = set()
    for name in names:
        candidate, n = name, 1
        while candidate.lower() in taken:
            n += 1
            candidate = f"{name} {n}"
        taken.add(candidate.lower())
        out.append(candidate)
    return out


def name_clusters(generator: Generator, clustering: Clustering, texts: Sequence[str], *,
                  progress: Progress | None = None) -> None:
    """Name each cluster with the chat model behind ``generator``, from its most central members
    (those with distinct texts); a cluster the model gives no usable name keeps ``cluster N``."""
    names = []
    for done, c in enumerate(clustering.clusters, 1):
        seen: dict[str, int] = {}
        for i in c.members:
            seen.setdefault(" ".join(texts[i].split()).lower(), i)
            if len(seen) == NAME_MEMBERS:
                break
        tokens, params = naming_prompt(generator.model, [texts[i] for i in seen.values()])
        result = generator.complete(tokens, params)
        value = result.checked.value if result.checked is not None and result.checked.valid else None
        name = clean_name(value.get("name") if isinstance(value, dict) else None)
        if not name:
            log.info("cluster %d: the model proposed no usable name (%r); it stays 'cluster %d'",
                     c.index, result.text[:60], c.index)
        names.append(name or c.name)
        if progress is not None:
            progress("named", done, len(clustering.clusters))
    for c, name in zip(clustering.clusters, unique_names(names)):
        c.name = name
    clustering.named = True


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------- the job


def cluster_texts(texts: Sequence[str], *, embed: Callable[[list[str]], np.ndarray],
                  generator: Callable[[], Generator] | None, k: int | str = "auto", seed: int = 0,
                  max_k: int = AUTO_MAX_K, name: str = "the input", progress: Progress | None = None) -> Clustering:
    """The whole job on ``texts``: ``embed`` them (a callable from texts to one vector per text),
    group them (k given, or ``auto``), choose representatives, and, with ``generator`` (a callable
    returning the Generator of a chat model, called once after embedding), name the clusters.

    Raises:
        InputFormatError, UsageError: see :func:`candidate_ks` (checked before ``embed`` is called).
    """
    texts = list(texts)
    if seed < 0:  # NumPy's generators take none
        raise UsageError(f"{option('seed')} must be 0 or more; got {seed}")
    ks = candidate_ks(k, len(texts), distinct_count(texts), max_k=max_k, name=name)
    vectors = np.asarray(embed(texts), dtype=np.float64)
    clustering = group(vectors, ks, seed=seed, k_requested=parse_k(k))
    choose_representatives(clustering, texts)
    if generator is not None:
        name_clusters(generator(), clustering, texts, progress=progress)
    return clustering


@dataclass
class Outcome:
    """A finished ``llmlocal cluster`` job: the clustering, the models behind it, and the time."""

    clustering: Clustering
    items: list[Item]
    embed_model: dict  # name, sha256, purpose, pooling
    naming_model: dict | None  # name, sha256 (None: --no-names)
    seconds: float
    input_path: str | None = None


def read_items(source: str | None, **columns: Any) -> list[Item]:
    """The texts to cluster, read as ``classify`` reads its input (CSV/TSV/JSONL/lines, ``-``: stdin)."""
    from . import classify

    path = None if source in (None, "-") else source
    try:
        items, _ = classify.read_texts(path, **columns)
    except InputFormatError as exc:
        if exc.problem == "no rows to classify":
            raise InputFormatError(exc.path, "no texts to cluster") from None
        raise
    return items


def execute(items: Sequence[Item], *, k: int | str = "auto", model: str | None = None, embed_model: str | None = None,
            names: bool = True, seed: int = 0, max_k: int = AUTO_MAX_K, sha256: str | None = None,
            ctx: int | None = None, threads: int | None = None, verbose: bool = False, name: str = "the input",
            input_path: str | None = None, progress: Progress | None = None, kv_type: str = "f16") -> Outcome:
    """Load the embedding context (``embed_model``, else ``model``'s own pooled vectors), embed and
    group the items, free it, then load ``model`` to name the clusters (unless ``names`` is False).

    ``sha256`` pins ``model``; ``kv_type`` is both contexts' KV cache type. Input, ``k`` and
    ``seed`` are checked before any model is loaded.
    """
    from . import loader
    from .classify import job as classify_job
    from .classify.embedding import embed_texts
    from .generate import Generator

    items = list(items)
    texts = [i.text for i in items]
    used: dict[str, Any] = {}
    open_models: list[Any] = []

    def embed(batch: list[str]) -> np.ndarray:
        ref = embed_model if embed_model is not None else model
        loaded = loader.load(ref, sha256=None if embed_model is not None else sha256, ctx=ctx, threads=threads,
                             verbose=verbose, kv_type=kv_type, **classify_job.load_options("embed"))
        try:
            used["embed"] = {"name": loaded.name, "sha256": loaded.sha256, "purpose": loaded.spec.purpose,
                             "pooling": loaded.model.options.pooling, "kv_type": kv_type}
            if loaded.spec.purpose != "embedding":
                log.info("clustering the pooled embeddings of %s, a %s model; a dedicated embedding model "
                         "usually clusters better (--embed-model, e.g. bge-small: `llmlocal models` lists them)",
                         loaded.name, loaded.spec.purpose)
            track = (lambda done, total: progress("embedded", done, total)) if progress is not None else None
            return embed_texts(loaded.model, batch, progress=track).vectors
        finally:
            loaded.close()

    def generator() -> Generator:
        loaded = loader.load(model, sha256=sha256, ctx=ctx, threads=threads, verbose=verbose, kv_type=kv_type)
        open_models.append(loaded)
        used["naming"] = {"name": loaded.name, "sha256": loaded.sha256, "kv_type": kv_type}
        return Generator(loaded.model)

    started = time.perf_counter()
    try:
        clustering = cluster_texts(texts, embed=embed, generator=generator if names else None, k=k, seed=seed,
                                   max_k=max_k, name=name, progress=progress)
    finally:
        for loaded in open_models:
            loaded.close()
    return Outcome(clustering, items, used["embed"], used.get("naming"), time.perf_counter() - started,
                   input_path=input_path)


# ---------------------------------------------------------------- output


def output_format(path: str | None, explicit: str | None = None) -> str:
    """csv or jsonl, as classify decides it (``explicit``, else the extension, else jsonl on stdout)."""
    from .classify import output_format as classify_output_format

    return classify_output_format(path, explicit)


def manifest(outcome: Outcome) -> dict:
    """Provenance of a clustering: the models and their SHA-256, the input's hash, k (asked and
    chosen, with the silhouette of each k tried), the seed and the versions."""
    from . import __version__
    from .classify import sha256_text_source
    from .runtime import llama_cpp_version

    c = outcome.clustering
    ids = [i.id for i in outcome.items]
    return {
        "llmlocal_version": __version__,
        "llama_cpp_python_version": llama_cpp_version(),
        "embedding_model": outcome.embed_model,
        "naming_model": outcome.naming_model,
        "input": {"path": outcome.input_path, "sha256": sha256_text_source(outcome.input_path),
                  "items": len(outcome.items)},
        "k": c.k,
        "k_requested": c.k_requested,
        "silhouette": c.silhouette,
        "silhouette_by_k": {str(k): s for k, s in c.scores.items()},
        "silhouette_sample": c.sampled,
        "seed": c.seed,
        "kmeans": {"init": "k-means++", "restarts": RESTARTS, "max_iter": MAX_ITER, "inertia": round(c.inertia, 6)},
        "vectors": "mean-pooled, centred on their mean, L2-normalised",
        "distance": "euclidean, to the cluster's centroid in that space",
        "names": "chat model" if c.named else "none",
        "clusters": [{"cluster": s["cluster"], "name": s["name"], "size": s["size"],
                      "representative_ids": s["representative_ids"]}
                     for s in c.summaries([i.text for i in outcome.items], ids)],
    }


def write_rows(fh: IO[str], records: Sequence[dict], fmt: str) -> None:
    """The per-text records as CSV (OUTPUT_COLUMNS) or JSONL, in input order."""
    import csv

    if fmt == "jsonl":
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        return
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(OUTPUT_COLUMNS)
    for r in records:
        writer.writerow([r[c] for c in OUTPUT_COLUMNS])


def write_outputs(outcome: Outcome, meta: dict, *, output: str | None, fmt: str, examples_out: str | None = None,
                  stdout: IO[str] | None = None) -> None:
    """The records to ``output`` (with ``<output>.meta.json``) or ``stdout``, and the representatives
    to ``examples_out``: all the files written in full before any replaces its old version."""
    from .atomic import replace_together, write_failure
    from .classify import review

    texts = [i.text for i in outcome.items]
    ids = [i.id for i in outcome.items]
    c = outcome.clustering
    records = c.records(texts, ids)
    to_stdout = output is None or output == "-"
    if to_stdout:
        write_rows(stdout or sys.stdout, records, fmt)
        if examples_out is None:
            return
    target = str(examples_out if to_stdout else output)
    try:
        with replace_together() as files:
            if not to_stdout:
                assert output is not None
                with files.open(output) as fh:
                    write_rows(fh, records, fmt)
                meta = {**meta, "output": {"path": str(output), "format": fmt, "sha256": files.sha256[Path(output)]}}
            if examples_out is not None:
                files.write_text(examples_out, review.examples_text(c.example_rows(texts, ids),
                                                                    review.examples_format(examples_out),
                                                                    columns=EXAMPLE_COLUMNS))
                meta = {**meta, "examples_out": {"path": str(examples_out),
                                                 "sha256": files.sha256[Path(examples_out)]}}
            if not to_stdout:
                files.write_text(f"{output}.meta.json", json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise write_failure(target, exc, next_step="run it again: the files are as they were") from None


def format_summary(clustering: Clustering, texts: Sequence[str], *, width: int = 60) -> list[tuple[str, ...]]:
    """Rows of the summary table: cluster, size, name, the most central representative."""
    rows: list[tuple[str, ...]] = [("CLUSTER", "SIZE", "NAME", "REPRESENTATIVE")]
    for c in clustering.clusters:
        rep = _shorten(texts[c.representatives[0]], width) if c.representatives else ""
        rows.append((str(c.index), str(c.size), c.name, rep))
    return rows


def describe_choice(clustering: Clustering) -> str:
    """One line on how k was chosen (auto) or how well the given k separates (the silhouette)."""
    c = clustering
    sample = f", measured on a sample of {c.sampled}" if c.sampled else ""
    if c.k_requested == "auto" and len(c.scores) > 1:
        ks = sorted(c.scores)
        others = ", ".join(f"k={k}: {c.scores[k]:.3f}" for k in ks if k != c.k)
        return (f"k = {c.k} chosen by silhouette over k = {ks[0]}..{ks[-1]} ({c.silhouette:.3f}; {others}{sample})")
    return f"k = {c.k}, silhouette {c.silhouette:.3f}{sample}" if c.silhouette is not None else f"k = {c.k}"

