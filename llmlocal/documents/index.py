"""A document index: chunks, their vectors and a full-text index in one SQLite file.

``<home>/indexes/NAME.sqlite`` holds the files (path, SHA-256 of their bytes), their chunks
(text, line or page range, heading path, a float32 vector) and an FTS5 table over the chunk
text. Each file is replaced in one transaction (its old chunks out, its new chunks and hash in),
in WAL mode: a Ctrl-C or kill -9 leaves every file either as it was or as it is now, and the
next run redoes the rest because the hashes say so.

Search is hybrid: cosine similarity of the vectors fused with BM25 over FTS5 by reciprocal rank
fusion, because small embedding models miss the exact names and numbers that keywords catch.
This module embeds nothing: callers pass vectors (llmlocal.documents.job owns the model).
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__, paths
from ..errors import LlmlocalError, UsageError
from .chunks import Chunk

FORMAT = "llmlocal-index/1"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
CANDIDATES = 50  # from each retriever, before fusion
# Reciprocal rank fusion (Cormack et al. 2009) fuses ranks, not raw scores: a chunk scores
# weight / (k + rank) from each retriever. How much the embedding may move BM25's order depends
# on what made the vectors:
# - a dedicated embedding model (its GGUF declares a pooling): the usual k = 60, equal weights;
# - a chat model's mean-pooled states (the bundled default): they retrieve the gold SQuAD
#   paragraph first for 12-18% of questions where BM25 does for 80-85%, and at k = 60 even a
#   tenth of BM25's weight outvotes BM25's near-equal top ranks (recall@1 0.85 -> 0.70, measured
#   on 600 questions). At k = 5 and weight 0.1 they only break BM25's near-ties and rank the
#   chunks of a query with no keyword in the index at all; on the held-out half of those
#   questions that equalled BM25 (recall@1 0.802, @5 0.973), where k = 60 with equal weights
#   gave 0.40.
FUSION = {"dedicated": (60, 1.0), "pooled": (5, 0.1)}  # embedding kind -> (k, embedding weight)
# A question is answerable from the index when some retrieved chunk holds at least this share of
# its content words, weighted by how rare each word is in the index (IDF). Mean-pooled vectors
# of small models give similarities that are not calibrated, so "nothing relevant" cannot be a
# similarity threshold; a missing rare word (a name, a number) is what really says so.
MIN_COVERAGE = 0.5
# A query word found nowhere in the index counts at this share of its (maximal) IDF weight: it may
# be the missing subject ("mercury"), or only the question's phrasing ("how long"), and a word
# that no chunk has cannot tell the two apart.
ABSENT_WEIGHT = 0.5
STOPWORDS = frozenset("""a an and are as at be been but by can could did do does for from had has have how i if in
into is it its me my no not of on or our so than that the their them then there these they this to was we were
what when where which who whom whose why will with would you your about after all also any because before being
between both during each few more most other over same should some such through under until up very while
""".split())


class IndexError_(LlmlocalError, ValueError):
    """An index that does not exist, is not an index, or was built with other model bytes."""


@dataclass(frozen=True)
class Hit:
    """One search result: the chunk, where it is, and how it ranked."""

    rank: int
    score: float  # fused (reciprocal rank) score
    chunk_id: int
    path: str
    text: str
    heading: tuple[str, ...]
    start_line: int
    end_line: int
    page_start: int | None
    page_end: int | None
    similarity: float | None  # cosine of query and chunk vectors, if it was an embedding candidate
    bm25: float | None  # FTS5's bm25 (lower is better), if it was a keyword candidate
    coverage: float = 0.0  # IDF-weighted share of the query's content words the chunk holds

    @property
    def where(self) -> str:
        """``file:lines`` (``file#page=N`` for a PDF), as sources are cited."""
        if self.page_start is not None:
            pages = (f"{self.page_start}" if self.page_start == self.page_end
                     else f"{self.page_start}-{self.page_end}")
            return f"{display_path(self.path)}#page={pages}"
        lines = f"{self.start_line}" if self.start_line == self.end_line else f"{self.start_line}-{self.end_line}"
        return f"{display_path(self.path)}:{lines}"

    def as_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "score": round(self.score, 6), "file": self.path, "where": self.where,
                "start_line": self.start_line, "end_line": self.end_line, "page_start": self.page_start,
                "page_end": self.page_end, "heading": list(self.heading), "text": self.text,
                "similarity": None if self.similarity is None else round(self.similarity, 6),
                "bm25": None if self.bm25 is None else round(self.bm25, 6), "coverage": round(self.coverage, 4)}


def display_path(path: str) -> str:
    """A path relative to the working directory when it is under it (shorter sources)."""
    try:
        return os.path.relpath(path) if Path(path).is_relative_to(Path.cwd()) else path
    except ValueError:
        return path


def indexes_dir() -> Path:
    return paths.home() / "indexes"


RESERVED = ("ls", "rm", "info")  # `llmlocal index ls|rm|info` are commands, not index names


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UsageError(f"'{name}' is not an index name: use letters, digits, '.', '_' and '-' (up to 64)")
    if name in RESERVED:
        raise UsageError(f"'{name}' cannot name an index (`llmlocal index {name}` is a command)")
    return name


def index_path(name: str) -> Path:
    return indexes_dir() / f"{check_name(name)}.sqlite"


def list_indexes() -> list[str]:
    folder = indexes_dir()
    return sorted(p.stem for p in folder.glob("*.sqlite")) if folder.is_dir() else []


def remove(name: str) -> Path:
    path = index_path(name)
    if not path.exists():
        raise IndexError_(f"no index named '{name}'", hint=_known_hint())
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return path


def _known_hint() -> str:
    known = list_indexes()
    return (f"indexes here: {', '.join(known)}" if known
            else "build one with `llmlocal index NAME PATH...`")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    kind TEXT NOT NULL, chunks INTEGER NOT NULL, indexed_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    ordinal INTEGER NOT NULL, heading TEXT NOT NULL, start_line INTEGER NOT NULL, end_line INTEGER NOT NULL,
    page_start INTEGER, page_end INTEGER, text TEXT NOT NULL, vector BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_file ON chunks(file_id);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(body, tokenize = 'porter unicode61');
"""


class Index:
    """An open index. Not thread-safe; one writer at a time (SQLite serialises writers anyway)."""

    def __init__(self, path: Path, conn: sqlite3.Connection, name: str) -> None:
        self.path, self.name, self._conn = path, name, conn
        self._matrix: np.ndarray | None = None
        self._ids: np.ndarray | None = None

    # -- opening

    @classmethod
    def open(cls, name: str, *, create: bool = False, threads_share: bool = False) -> Index:
        """Open index ``name`` (``create``: make it if missing). ``threads_share``: the connection may
        be used from other threads than this one (the server's, one at a time under its lock).

        Raises:
            IndexError_: it does not exist (and not ``create``), or the file is not an index.
        """
        path = index_path(name)
        if not path.exists() and not create:
            raise IndexError_(f"no index named '{name}'", hint=_known_hint())
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(path, timeout=30, check_same_thread=not threads_share)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.executescript(_SCHEMA)
            fmt = conn.execute("SELECT value FROM meta WHERE key='format'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise IndexError_(f"{path} is not a usable index ({exc})",
                              hint=f"remove it (`llmlocal index rm {name}`) and build it again") from None
        if fmt is not None and json.loads(fmt[0]) != FORMAT:
            conn.close()
            raise IndexError_(f"{path} is an index of another format ({json.loads(fmt[0])})",
                              hint=f"remove it (`llmlocal index rm {name}`) and build it again")
        return cls(path, conn, name)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- metadata

    @property
    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self._conn.execute("SELECT key, value FROM meta")}

    def bind_model(self, model_name: str, sha256: str | None, dim: int, settings: dict[str, Any]) -> None:
        """Record the embedding model of a new index, or refuse other model bytes for an old one.

        Raises:
            IndexError_: the index was built with another model's embeddings (not comparable).
        """
        meta = self.meta
        if "sha256" in meta:
            self.check_model(model_name, sha256)
            return
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        with self._conn:
            for key, value in {"format": FORMAT, "model": model_name, "sha256": sha256, "dim": dim,
                               "settings": settings, "created": now, "llmlocal": __version__}.items():
                self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    @property
    def embedding_kind(self) -> str:
        """"dedicated" (an embedding model's own pooling) or "pooled" (a chat model's mean-pooled
        states; also an index from before this was recorded, when the default was the only kind)."""
        return "dedicated" if self.meta.get("settings", {}).get("pooling") == "model" else "pooled"

    def check_model(self, model_name: str, sha256: str | None) -> None:
        meta = self.meta
        if meta.get("sha256") not in (None, sha256):
            raise IndexError_(
                f"index '{self.name}' was built with {meta.get('model')} (sha256 {str(meta.get('sha256'))[:12]}…); "
                f"{model_name} ({str(sha256)[:12]}…) makes embeddings that cannot be compared with them",
                hint=f"use -m {meta.get('model')}, or build a new index with this model")

    # -- files

    def files(self) -> dict[str, tuple[int, str]]:
        """path -> (file id, sha256) of every indexed file."""
        return {p: (i, h) for i, p, h in self._conn.execute("SELECT id, path, sha256 FROM files")}

    def replace_file(self, path: str, sha256: str, size: int, kind: str, chunks: Sequence[Chunk],
                     vectors: np.ndarray) -> None:
        """The file's chunks, all at once: in one transaction, so never half of them."""
        assert len(chunks) == len(vectors)
        with self._conn:
            self._delete(path)
            cur = self._conn.execute("INSERT INTO files (path, sha256, size, kind, chunks, indexed_at) "
                                     "VALUES (?, ?, ?, ?, ?, ?)", (path, sha256, size, kind, len(chunks), time.time()))
            file_id = cur.lastrowid
            for i, (chunk, vec) in enumerate(zip(chunks, vectors, strict=True)):
                row = self._conn.execute(
                    "INSERT INTO chunks (file_id, ordinal, heading, start_line, end_line, page_start, page_end, "
                    "text, vector) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (file_id, i, json.dumps(list(chunk.heading), ensure_ascii=False), chunk.start_line,
                     chunk.end_line, chunk.page_start, chunk.page_end, chunk.text,
                     np.asarray(vec, dtype=np.float32).tobytes()))
                self._conn.execute("INSERT INTO fts (rowid, body) VALUES (?, ?)",
                                   (row.lastrowid, chunk.embedding_text()))
        self._matrix = None

    def remove_file(self, path: str) -> None:
        with self._conn:
            self._delete(path)
        self._matrix = None

    def _delete(self, path: str) -> None:
        row = self._conn.execute("SELECT id FROM files WHERE path = ?", (path,)).fetchone()
        if row is None:
            return
        self._conn.execute("DELETE FROM fts WHERE rowid IN (SELECT id FROM chunks WHERE file_id = ?)", (row[0],))
        self._conn.execute("DELETE FROM chunks WHERE file_id = ?", (row[0],))
        self._conn.execute("DELETE FROM files WHERE id = ?", (row[0],))

    # -- reading

    def info(self) -> dict[str, Any]:
        meta = self.meta
        files, chunks = self._conn.execute("SELECT count(*), coalesce(sum(chunks), 0) FROM files").fetchone()
        kinds = dict(self._conn.execute("SELECT kind, count(*) FROM files GROUP BY kind"))
        disk = sum(Path(f"{self.path}{s}").stat().st_size for s in ("", "-wal") if Path(f"{self.path}{s}").exists())
        return {"name": self.name, "path": str(self.path), "model": meta.get("model"), "sha256": meta.get("sha256"),
                "dim": meta.get("dim"), "files": files, "chunks": chunks, "kinds": kinds, "disk_bytes": disk,
                "created": meta.get("created"), "settings": meta.get("settings", {})}

    def file_text(self, path: str) -> list[tuple[int, str, tuple[str, ...], int, int]]:
        """Every chunk of one file in order: (chunk id, text, heading, start line, end line)."""
        rows = self._conn.execute(
            "SELECT c.id, c.text, c.heading, c.start_line, c.end_line FROM chunks c JOIN files f ON f.id = c.file_id "
            "WHERE f.path = ? ORDER BY c.ordinal", (path,))
        return [(i, t, tuple(json.loads(h)), a, b) for i, t, h, a, b in rows]

    def _vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """All chunk vectors as one float32 matrix (rows in chunk id order), loaded once per change."""
        if self._matrix is None:
            ids, blobs = [], []
            for cid, blob in self._conn.execute("SELECT id, vector FROM chunks ORDER BY id"):
                ids.append(cid)
                blobs.append(blob)
            dim = int(self.meta.get("dim") or 0)
            matrix = np.frombuffer(b"".join(blobs), dtype=np.float32)
            self._matrix = matrix.reshape(len(ids), dim) if ids else np.zeros((0, dim), np.float32)
            self._ids = np.asarray(ids, dtype=np.int64)
        assert self._ids is not None
        return self._ids, self._matrix

    def search(self, query: str, vector: np.ndarray | None, *, k: int = 5, mode: str = "hybrid") -> list[Hit]:
        """The ``k`` best chunks for ``query`` (text, for BM25) and ``vector`` (its embedding).

        ``mode``: "hybrid" (both, fused by reciprocal rank: see FUSION), "embedding" or "keyword".
        """
        if k < 1:
            raise UsageError(f"k must be at least 1, got {k}")
        if mode not in ("hybrid", "embedding", "keyword"):
            raise UsageError(f"unknown search mode '{mode}' (hybrid, embedding, keyword)")
        ranked: dict[int, float] = {}
        sims: dict[int, float] = {}
        bm25: dict[int, float] = {}
        rrf_k, weight = FUSION[self.embedding_kind]
        if mode != "keyword" and vector is not None:
            ids, matrix = self._vectors()
            if len(ids):
                scores = matrix @ np.asarray(vector, dtype=np.float32)
                top = _best_rows(scores, CANDIDATES)
                for rank, row in enumerate(top):
                    cid = int(ids[row])
                    sims[cid] = float(scores[row])
                    ranked[cid] = ranked.get(cid, 0.0) + (weight if mode == "hybrid" else 1.0) / (rrf_k + rank + 1)
        if mode != "embedding":
            match = fts_query(query)
            if match:
                rows = self._conn.execute("SELECT rowid, bm25(fts) FROM fts WHERE fts MATCH ? ORDER BY bm25(fts) "
                                          "LIMIT ?", (match, CANDIDATES)).fetchall()
                for rank, (cid, score) in enumerate(rows):
                    bm25[cid] = float(score)
                    ranked[cid] = ranked.get(cid, 0.0) + 1.0 / (rrf_k + rank + 1)
        best = sorted(ranked.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        coverage = self._coverage(query, [cid for cid, _ in best])
        hits = []
        for rank, (cid, score) in enumerate(best, 1):
            row = self._conn.execute(
                "SELECT f.path, c.text, c.heading, c.start_line, c.end_line, c.page_start, c.page_end "
                "FROM chunks c JOIN files f ON f.id = c.file_id WHERE c.id = ?", (cid,)).fetchone()
            hits.append(Hit(rank, score, cid, row[0], row[1], tuple(json.loads(row[2])), row[3], row[4], row[5],
                            row[6], sims.get(cid), bm25.get(cid), coverage.get(cid, 0.0)))
        return hits

    def _coverage(self, query: str, chunk_ids: Iterable[int]) -> dict[int, float]:
        """IDF-weighted share of the query's content words that each chunk holds (see MIN_COVERAGE)."""
        ids = list(chunk_ids)
        terms = content_terms(query)
        if not ids or not terms:
            return {}
        total = self._conn.execute("SELECT count(*) FROM fts").fetchone()[0]
        marks = ",".join("?" * len(ids))
        weight: dict[str, float] = {}
        holds: dict[int, float] = dict.fromkeys(ids, 0.0)
        for term in terms:
            q = f'"{term}"'
            df = self._conn.execute("SELECT count(*) FROM fts WHERE fts MATCH ?", (q,)).fetchone()[0]
            weight[term] = math.log((total - df + 0.5) / (df + 0.5) + 1.0) * (ABSENT_WEIGHT if df == 0 else 1.0)
            for (cid,) in self._conn.execute(f"SELECT rowid FROM fts WHERE fts MATCH ? AND rowid IN ({marks})",
                                             (q, *ids)):
                holds[cid] += weight[term]
        whole = sum(weight.values()) or 1.0
        return {cid: got / whole for cid, got in holds.items()}


def _best_rows(scores: np.ndarray, n: int) -> np.ndarray:
    """Rows of the ``n`` highest scores, best first (ties by row): a partial sort, since a full
    one of a million scores costs more than the similarity product itself."""
    if len(scores) > n:
        part = np.argpartition(-scores, n - 1)[:n]
        return part[np.lexsort((part, -scores[part]))]
    return np.argsort(-scores, kind="stable")[:n]


def content_terms(text: str) -> list[str]:
    """The words a keyword search looks for: lower-cased, stopwords out, each once, in order."""
    seen: dict[str, None] = {}
    for word in re.findall(r"\w+", text.lower()):
        if word not in STOPWORDS and (len(word) > 1 or word.isdigit()):
            seen.setdefault(word, None)
    return list(seen)


def fts_query(text: str) -> str:
    """An FTS5 MATCH expression: any of the content words (quoted, so no word is an operator)."""
    return " OR ".join(f'"{t}"' for t in content_terms(text))


@dataclass
class UpdateSummary:
    """What one ``llmlocal index`` run did."""

    seen: int = 0  # files found under the paths
    indexed: int = 0  # new or changed, (re)indexed now
    unchanged: int = 0
    removed: int = 0  # in the index, gone from disk
    chunks: int = 0  # chunks written now
    warnings: list[str] = field(default_factory=list)  # files that could not be read
    seconds: float = 0.0

    @property
    def chunks_per_second(self) -> float:
        return self.chunks / self.seconds if self.seconds > 0 else 0.0
