"""Index, search and ask: the document jobs, with the models they need.

Embeddings come from a catalogue embedding model when one is installed (with its query and
document prefixes, e.g. nomic's ``search_query: ``), else from the chat model's pooled
embeddings, with a note that a dedicated embedding model retrieves better. The index records the
embedding model's name and SHA-256 and refuses other bytes: vectors from two models cannot be
compared.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import catalog, loader, store
from ..decoding import Stream
from ..errors import UsageError, option
from ..progress import ItemProgress
from .chunks import MAX_CHARS, OVERLAP, chunk_blocks
from .index import MIN_COVERAGE, Hit, Index, UpdateSummary
from .readers import KINDS, ReadError, kind_of, read_blocks

log = logging.getLogger(__name__)

# Query and document prefixes of embedding models trained with them, by GGUF architecture (the
# name a user imports a file under may be anything; the architecture says what it is).
PREFIXES = {"nomic-bert": ("search_query: ", "search_document: ")}
EMBED_BATCH = 32  # chunks per embedding call: progress moves, memory stays small


@dataclass
class Embedder:
    """An embeddings context of one model, with its prefixes; ``model_name``/``sha256`` go in the index."""

    loaded: Any  # loader.Loaded
    query_prefix: str = ""
    document_prefix: str = ""

    @property
    def model_name(self) -> str:
        return self.loaded.name

    @property
    def sha256(self) -> str | None:
        return self.loaded.sha256

    @property
    def pooling(self) -> str:
        """"model" for a dedicated embedding model's own pooling, else "mean" (see pooling_for)."""
        return self.loaded.model.options.pooling

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        from ..classify.embedding import embed_texts

        prefix = self.query_prefix if query else self.document_prefix
        vectors = embed_texts(self.loaded.model, [prefix + t for t in texts], normalize=True).vectors
        return np.asarray(vectors, dtype=np.float32)

    def close(self) -> None:
        self.loaded.close()


def default_embed_model() -> tuple[str, bool]:
    """(model reference, whether it is a dedicated embedding model): the first installed catalogue
    embedding model, else the default chat model."""
    installed = {m.name for m in store.installed_models()}
    for spec in catalog.load_catalog().values():
        if spec.purpose == "embedding" and spec.name in installed:
            return spec.name, True
    return loader.default_model(), False


def open_embedder(model: str | None = None, *, threads: int | None = None, verbose: bool = False) -> Embedder:
    ref = model
    if ref is None:
        ref, dedicated = default_embed_model()
        if not dedicated:
            log.info("embedding with %s's pooled states; a dedicated embedding model retrieves better "
                     "(`llmlocal pull nomic-embed`)", ref)
    loaded = loader.load(ref, embeddings=True, n_seq_max=16, threads=threads, verbose=verbose,
                         pooling=pooling_for(ref))
    query, document = PREFIXES.get(loaded.model.info.architecture, ("", ""))
    return Embedder(loaded, query, document)


def pooling_for(ref: str) -> str:
    """The GGUF's own pooling when the file declares one (embedding models do: CLS for bge, mean
    for nomic and MiniLM), else mean pooling (a chat model's states; see classify's embeddings)."""
    from .. import gguf

    info = gguf.read_gguf(store.model_file(catalog.resolve(ref)))
    declared = info.metadata.get(f"{info.architecture}.pooling_type")
    return "model" if isinstance(declared, int) and declared > 0 else "mean"


# ---------------------------------------------------------------- indexing


def discover(paths: Sequence[str], glob: str | None = None) -> tuple[list[Path], list[Path]]:
    """(files to index, the roots they were found under). A file named directly is taken whatever
    its extension (as text if unknown); under a directory, files of known kinds matching ``glob``,
    hidden files and directories skipped.

    Raises:
        UsageError: a path that does not exist, or nothing to index.
    """
    files: dict[Path, None] = {}
    roots: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise UsageError(f"no such file or directory: {raw}")
        path = path.resolve()
        roots.append(path)
        if path.is_file():
            files.setdefault(path, None)
            continue
        for found in sorted(path.rglob("*")):
            rel = found.relative_to(path)
            if any(part.startswith(".") for part in rel.parts) or not found.is_file():
                continue
            if glob is not None and not (fnmatch.fnmatch(str(rel), glob) or fnmatch.fnmatch(found.name, glob)):
                continue
            if glob is None and kind_of(found) is None:
                continue
            files.setdefault(found, None)
    if not files:
        kinds = ", ".join(sorted(KINDS))
        raise UsageError(f"no files to index under {', '.join(paths)}" + (f" matching {glob!r}" if glob else ""),
                         hint=f"llmlocal reads {kinds}; name files directly or change {option('glob')}")
    return list(files), roots


def sha256_bytes(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build(name: str, paths: Sequence[str], *, embedder: Embedder | None = None, model: str | None = None,
          glob: str | None = None, text_column: str | None = None, max_chars: int = MAX_CHARS,
          overlap: int = OVERLAP, progress: bool = True, threads: int | None = None) -> UpdateSummary:
    """Create or update index ``name`` from ``paths``: new and changed files (by SHA-256) are
    (re)indexed, files gone from under ``paths`` are removed, the rest is left alone.

    Raises:
        UsageError: bad paths; IndexError_: another model's index; model errors.
    """
    files, roots = discover(paths, glob)
    started = time.perf_counter()
    summary = UpdateSummary(seen=len(files))
    idx = Index.open(name, create=True)
    own = embedder is None
    try:
        indexed = idx.files()
        todo: list[tuple[Path, str]] = []
        for path in files:
            digest = sha256_bytes(path)
            if indexed.get(str(path), (None, None))[1] == digest:
                summary.unchanged += 1
            else:
                todo.append((path, digest))
        found = set(files)
        gone = [p for p in indexed if _under(Path(p), roots) and Path(p) not in found]
        for path_text in gone:
            idx.remove_file(path_text)
            summary.removed += 1
        if todo:
            if embedder is None:
                embedder = open_embedder(model, threads=threads)
            dim = int(embedder.embed(["dimension probe"]).shape[1])
            idx.bind_model(embedder.model_name, embedder.sha256, dim,
                           {"max_chars": max_chars, "overlap": overlap, "pooling": embedder.pooling,
                            "query_prefix": embedder.query_prefix, "document_prefix": embedder.document_prefix})
            bar = ItemProgress("index", len(todo), enabled=progress)
            try:
                for done, (path, digest) in enumerate(todo, 1):
                    _index_file(idx, embedder, path, digest, summary, text_column, max_chars, overlap)
                    summary.seconds = time.perf_counter() - started
                    bar.update(done, extra=(f"{summary.chunks} chunks", f"{summary.chunks_per_second:.1f} chunks/s"),
                               force=done == len(todo))
            finally:
                bar.close()
    finally:
        if own and embedder is not None:
            embedder.close()
        idx.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _under(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


def _index_file(idx: Index, embedder: Embedder, path: Path, digest: str, summary: UpdateSummary,
                text_column: str | None, max_chars: int, overlap: int) -> None:
    kind = kind_of(path) or "text"
    try:
        chunks = chunk_blocks(read_blocks(path, text_column=text_column), max_chars=max_chars, overlap=overlap)
    except ReadError as exc:
        summary.warnings.append(f"{path}: {exc}")
        idx.remove_file(str(path))  # what it held before no longer describes the file
        return
    vectors = np.zeros((0, 0), np.float32)
    if chunks:
        parts = [embedder.embed([c.embedding_text() for c in chunks[i:i + EMBED_BATCH]])
                 for i in range(0, len(chunks), EMBED_BATCH)]
        vectors = np.concatenate(parts)
    idx.replace_file(str(path), digest, path.stat().st_size, kind, chunks, vectors)
    summary.indexed += 1
    summary.chunks += len(chunks)


# ---------------------------------------------------------------- searching


def search(name: str, query: str, *, k: int = 5, mode: str = "hybrid", embedder: Embedder | None = None,
           model: str | None = None, threads: int | None = None) -> list[Hit]:
    """The ``k`` best chunks of index ``name`` for ``query``, with the index's own embedding model
    (or ``model``, refused if its bytes differ)."""
    if not query.strip():
        raise UsageError("the query is empty")
    with Index.open(name) as idx:
        own = embedder is None
        vector = None
        if mode != "keyword":
            if embedder is None:
                embedder = open_embedder(model or idx.meta.get("model"), threads=threads)
            try:
                idx.check_model(embedder.model_name, embedder.sha256)
                vector = embedder.embed([query], query=True)[0]
            finally:
                if own:
                    embedder.close()
        return idx.search(query, vector, k=k, mode=mode)


# ---------------------------------------------------------------- answering


ANSWER_INSTRUCTIONS = ("Answer the question in one or two sentences, using only the numbered sources. Cite the "
                       "source you use like [1]. If the sources do not say, answer that you do not know.")


@dataclass
class Source:
    """What the model was shown as ``[number]``: a chunk, or a whole short file."""

    number: int
    where: str
    heading: tuple[str, ...]
    text: str
    hit: Hit | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"number": self.number, "where": self.where, "heading": list(self.heading), "text": self.text,
                "hit": self.hit.as_dict() if self.hit else None}


@dataclass
class Context:
    """The retrieval for one question: whether anything relevant was found, and the sources."""

    question: str
    found: bool
    sources: list[Source] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)

    def prompt(self) -> str:
        """The user turn: numbered sources, then the question (prompt building's one home for ask)."""
        blocks = []
        for s in self.sources:
            title = f" {' > '.join(s.heading)}" if s.heading else ""
            blocks.append(f"[{s.number}] ({s.where}){title}\n{s.text}")
        return "Sources:\n\n" + "\n\n".join(blocks) + f"\n\nQuestion: {self.question}"


def retrieve(idx: Index, question: str, vector: np.ndarray | None, *, k: int = 4,
             budget_chars: int = 4000) -> Context:
    """Sources for ``question``: the ``k`` best chunks, or a whole file in place of its chunks
    when the file is short enough to fit (LM Studio's choice: a short document read whole loses
    nothing to chunking); at most ``budget_chars`` of source text in all."""
    hits = idx.search(question, vector, k=k)
    found = any(h.coverage >= MIN_COVERAGE for h in hits)
    ctx = Context(question, found, hits=hits)
    if not found:
        return ctx
    used = 0
    whole_files: set[str] = set()
    for hit in hits:
        if hit.path in whole_files:
            continue
        parts = idx.file_text(hit.path)
        whole = "\n\n".join(p[1] for p in parts)
        number = len(ctx.sources) + 1
        if len(parts) > 1 and used + len(whole) <= budget_chars // 2:
            first, last = parts[0][3], parts[-1][4]
            ctx.sources.append(Source(number, f"{_display(hit.path)}:{first}-{last}", (), whole, hit))
            whole_files.add(hit.path)
            used += len(whole)
        elif used + len(hit.text) <= budget_chars or not ctx.sources:
            ctx.sources.append(Source(number, hit.where, hit.heading, hit.text, hit))
            used += len(hit.text)
    return ctx


def _display(path: str) -> str:
    from .index import display_path

    return display_path(path)


def ask_stream(model: Any, ctx: Context, *, params: Any, system: str | None = None,
               generator: Any = None) -> Stream:
    """The answer's text as it is generated (a Stream: its ``completion`` afterwards).

    ``generator``: the caller's Generator on ``model``, if it has one: two Generators on one
    sequence would each believe the KV cache holds its own tokens.
    """
    from ..generate import Generator, prompt_tokens

    hint = f"ask for fewer sources ({option('k')}) or raise {option('ctx')}"
    instructions = system or ANSWER_INSTRUCTIONS
    if model.chat_template():
        tokens, _ = prompt_tokens(model, ctx.prompt(), system=instructions, max_tokens=params.max_tokens,
                                  overflow_hint=hint)
    else:  # a base model: one text that ends where the answer begins
        tokens, _ = prompt_tokens(model, f"{instructions}\n\n{ctx.prompt()}\nAnswer:", raw=True,
                                  max_tokens=params.max_tokens, overflow_hint=hint)
    return (generator or Generator(model)).stream(tokens, params)


def open_for_query(name: str, model: str | None = None, *, threads: int | None = None,
                   threads_share: bool = False) -> tuple[Index, Embedder]:
    """The index and its embedding model, checked to match (the caller closes both)."""
    idx = Index.open(name, threads_share=threads_share)
    try:
        embedder = open_embedder(model or idx.meta.get("model"), threads=threads)
    except BaseException:
        idx.close()
        raise
    try:
        idx.check_model(embedder.model_name, embedder.sha256)
    except BaseException:
        embedder.close()
        idx.close()
        raise
    return idx, embedder


def question_vector(embedder: Embedder, question: str) -> np.ndarray:
    return embedder.embed([question], query=True)[0]



# The same shape as ask's prompt (which small models follow best), inside the user turn: the
# system prompt stays the user's own.
CHAT_INSTRUCTIONS = "Answer in one or two sentences using the numbered sources, and cite the one you use like [1]."


class Retriever:
    """chat --index: turns each message into sources + the message, for ChatSession.retriever."""

    K = 3  # sources per turn: a chat turn's prompt also holds the conversation

    def __init__(self, name: str, *, k: int = K, threads: int | None = None) -> None:
        self.name, self.k = name, k
        self.index, self.embedder = open_for_query(name, threads=threads)

    @classmethod
    def over(cls, index: Index, embedder: Embedder, *, k: int = K) -> Retriever:
        """A retriever on an index and embedder opened already (the server's, shared with its
        /v1/search); closing stays with their owner."""
        retriever = cls.__new__(cls)
        retriever.name, retriever.k, retriever.index, retriever.embedder = index.name, k, index, embedder
        return retriever

    def __call__(self, text: str) -> tuple[str, list[Source]]:
        ctx = retrieve(self.index, text, question_vector(self.embedder, text), k=self.k, budget_chars=2500)
        if not ctx.found:
            return text, []
        return f"{CHAT_INSTRUCTIONS}\n\n{ctx.prompt()}", ctx.sources

    def close(self) -> None:
        self.embedder.close()
        self.index.close()
