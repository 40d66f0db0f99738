"""The Python API: load a model once, then complete, stream and chat with plain Python values.

    >>> import llmlocal
    >>> with llmlocal.load("smollm2-135m") as m:
    ...     m.complete("Write a haiku about autumn", temperature=0, max_tokens=32)

A LocalModel keeps one Generator, so consecutive calls whose prompts share a start (the same
system prompt, a growing conversation) evaluate only the new tokens; ``last.cached_tokens``
says how many were re-used. Like the model under it, a LocalModel serves one caller at a time.

Classification and embeddings, for notebooks (the classify command's methods, ``auto`` by default):

    >>> clf = m.classifier(examples=[{"text": "WIN a prize now", "label": "spam"}, ...])
    >>> clf.method, clf.scores            # what auto chose, and every candidate's score
    >>> clf.predict(["Lunch at 1?"])      # [{"text": ..., "label": "ham", "confidence": ...}]
    >>> m.classify(texts, labels=["positive", "negative"])   # zero-shot
    >>> m.embed(texts)                    # a numpy array, one row per text
    >>> m.cluster(texts, k="auto")        # {"items": [...], "clusters": [{"name": ..., "size": ...}], ...}
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from . import engine, generate, loader, structured
from .errors import InputFormatError, StructuredOutputError, UsageError
from .generate import Completion
from .sampling import FIELDS, Constraint, SamplingParams


def load(model: str | None = None, *, ctx: int | None = None, threads: int | None = None,
         sha256: str | None = None, verbose: bool = False, kv_type: str = "f16") -> LocalModel:
    """Load ``model`` (catalogue name, ``.gguf`` path or ``hf:`` reference; default: the
    configured default model) from the local store, without touching the network.

    Args:
        ctx: context size in tokens (default: the catalogue's, capped by training length and RAM).
        threads: CPU threads (default: physical cores).
        sha256: pin an ``hf:`` reference (or check a path) to these bytes.
        verbose: show llama.cpp's own log lines on stderr.
        kv_type: the KV cache's element type: "f16", "q8_0" (about half its memory) or "q4_0"
            (about a quarter); see the README's "KV cache types".

    Raises:
        UnknownModelError, NotInstalledError, GGUFError, ModelLoadError, InsufficientMemoryError,
        InvalidParameterError (an unknown ``kv_type``).
    """
    return LocalModel(loader.load(model, sha256=sha256, ctx=ctx, threads=threads, verbose=verbose, kv_type=kv_type),
                      ref=model, threads=threads)


def index(name: str, paths: Any = None, *, model: str | None = None, glob: str | None = None,
          text_column: str | None = None, threads: int | None = None, progress: bool = False) -> DocumentIndex:
    """Open document index ``name``; with ``paths`` (a path or a list of them), first create or
    update it from them, as ``llmlocal index NAME PATH...`` does (only changed files are redone).

    ``model``: the embedding model of a new index (default: an installed catalogue embedding
    model, else the default model). Raises IndexError_ for a missing index without ``paths``.
    """
    from . import documents

    documents.index.check_name(name)
    summary = None
    if paths is not None:
        given = [str(paths)] if isinstance(paths, (str, os.PathLike)) else [str(p) for p in paths]
        summary = documents.build(name, given, model=model, glob=glob, text_column=text_column, progress=progress,
                                  threads=threads)
    return DocumentIndex(name, threads=threads, last_update=summary)


class DocumentIndex:
    """A document index for search and :meth:`LocalModel.ask`; its embedding model is loaded on
    first use and kept until :meth:`close` (use it as a context manager)."""

    def __init__(self, name: str, *, threads: int | None = None, last_update: Any = None) -> None:
        from . import documents

        self.name = name
        self.last_update = last_update  # the UpdateSummary of index(name, paths), else None
        self._threads = threads
        self._index = documents.Index.open(name)
        self._embedder: Any = None

    def __repr__(self) -> str:
        return f"<DocumentIndex {self.name!r}>"

    def _query_vector(self, text: str):
        from . import documents

        if self._embedder is None:
            self._embedder = documents.open_embedder(self._index.meta.get("model"), threads=self._threads)
            self._index.check_model(self._embedder.model_name, self._embedder.sha256)
        return documents.job.question_vector(self._embedder, text)

    def search(self, query: str, *, k: int = 5, mode: str = "hybrid") -> list[dict]:
        """The ``k`` best chunks: dicts with rank, score, file, where (file:lines), heading, text."""
        if not isinstance(query, str) or not query.strip():
            raise UsageError("the query must be a non-empty string")
        vector = None if mode == "keyword" else self._query_vector(query)
        return [h.as_dict() for h in self._index.search(query, vector, k=k, mode=mode)]

    def context(self, question: str, *, k: int = 4):
        """What :meth:`LocalModel.ask` shows the model (a documents.Context: found, sources, prompt())."""
        from . import documents

        return documents.retrieve(self._index, question, self._query_vector(question), k=k)

    def info(self) -> dict:
        return self._index.info()

    def close(self) -> None:
        if self._embedder is not None:
            self._embedder.close()
            self._embedder = None
        self._index.close()

    def __enter__(self) -> DocumentIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sampling_params(sampling: dict[str, Any], constraint: Constraint | None = None) -> SamplingParams:
    """SamplingParams from keyword arguments, with a concrete seed; unknown names are a TypeError."""
    unknown = sorted(set(sampling) - set(FIELDS) | ({"constraint"} & set(sampling)))
    if unknown:
        raise TypeError(f"unknown sampling argument(s) {unknown}; expected some of "
                        f"{[f for f in FIELDS if f != 'constraint']} (and schema, grammar or format)")
    return SamplingParams.from_mapping({**sampling, "constraint": constraint}).resolved()


class LocalModel:
    """A loaded model. Use it as a context manager, or call :meth:`close` to free its memory."""

    def __init__(self, loaded: loader.Loaded, *, ref: str | None = None, threads: int | None = None) -> None:
        self._loaded: loader.Loaded | None = loaded
        self._ref, self._threads = ref if ref is not None else str(loaded.path), threads
        self._contexts: Any = None  # classification and embedding contexts, loaded on first use
        self._generator = generate.Generator(loaded.model)
        self._streaming = False
        self.name: str = loaded.name
        self.sha256: str | None = loaded.sha256
        self.path = loaded.path
        self.n_ctx: int = loaded.model.n_ctx
        self.threads: int = loaded.model.options.threads()
        self.kv_type: str = loaded.model.options.kv_type
        self.load_seconds: float = loaded.model.load_seconds
        self.last: Completion | None = None  # the most recent finished generation

    def __repr__(self) -> str:
        state = "closed" if self._loaded is None else f"n_ctx={self.n_ctx}"
        return f"<LocalModel {self.name} {state}>"

    # -- lifetime

    def close(self) -> None:
        """Free the model and its context. Safe to call twice."""
        if self._contexts is not None:
            self._contexts.close()
            self._contexts = None
        if self._loaded is not None:
            self._loaded.close()
            self._loaded = None

    @property
    def closed(self) -> bool:
        return self._loaded is None

    def __enter__(self) -> LocalModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _model(self):
        if self._loaded is None:
            raise UsageError(f"model '{self.name}' is closed; load it again with llmlocal.load()")
        return self._loaded.model

    # -- vocabulary

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` as a raw prompt is tokenized (with the model's BOS if it adds one)."""
        return self._model().tokenize(text, add_special=True, parse_special=False)

    def detokenize(self, tokens: list[int]) -> str:
        return self._model().detokenize(list(tokens))

    # -- classification and embeddings

    def _classify_contexts(self):
        from . import classify, runtime

        self._model()
        if self._contexts is None:
            runtime.prefer_batch_invariant_kernels()  # effective if nothing was evaluated yet in this process
            self._contexts = classify.open_contexts(self._ref, sha256=self.sha256, threads=self._threads,
                                                    kv_type=self.kv_type)
        return self._contexts

    def classifier(self, examples: Any = None, labels: Any = None, *, method: str = "auto",
                   **options: Any) -> Classifier:
        """A reusable classifier from labelled ``examples`` and/or ``labels``.

        ``examples``: dicts with ``text`` and ``label``, :class:`llmlocal.classify.Example`\\ s,
        ``(text, label)`` pairs, or the path of a CSV/TSV/JSONL file with text and label columns.
        ``labels``: a list (or ``"a,b"``); default: the examples' own. ``method``: auto (chosen by
        cross-validation over the examples), prompt, embed or combined. ``options``: max_examples,
        seed, calibrate (prompt), instructions, truncate, abstain_below, abstain_label, parallel.
        """
        from . import classify

        exs = _examples(examples)
        if isinstance(labels, str):
            wanted: list[str] | None = classify.parse_labels(labels)
        else:
            wanted = None if labels is None else [str(x) for x in labels]
        unknown = sorted(set(options) - _CLASSIFY_OPTIONS)
        if unknown:
            raise TypeError(f"unknown classify option(s) {unknown}; expected some of {sorted(_CLASSIFY_OPTIONS)}")
        settings = classify.Settings(method=method, **options)
        chosen_labels = classify.resolve_labels(wanted, exs, name="examples")
        settings.validate(chosen_labels)
        if method in ("embed", "combined") and not exs:
            raise UsageError(f"method '{method}' learns from labelled examples: pass examples=...")
        chosen = classify.select_examples(exs, chosen_labels, max_examples=settings.max_examples, seed=settings.seed)
        clf = classify.build_classifier(self._classify_contexts(), chosen_labels, chosen, settings)
        return Classifier(self, clf, settings)

    def classify(self, texts: Any, labels: Any = None, examples: Any = None, *, method: str = "auto",
                 **options: Any) -> list[dict]:
        """Classify ``texts`` (any iterable of str: a list, a pandas Series) in one call; records in
        input order (see :meth:`Classifier.predict`). Options as for :meth:`classifier`."""
        return self.classifier(examples=examples, labels=labels, method=method, **options).predict(texts)

    def embed(self, texts: Any, *, normalize: bool = True) -> Any:
        """Mean-pooled embeddings as a numpy array, one row per text (L2-normalised unless told not);
        a text longer than a batch is embedded in pieces, averaged."""
        from .classify import embedding

        items = _texts(texts)
        return embedding.embed_texts(self._classify_contexts()("embed"), items, normalize=normalize).vectors

    def cluster(self, texts: Any, k: int | str = "auto", *, seed: int = 0, names: bool = True,
                embed_model: str | None = None, max_k: int = 10) -> dict:
        """Group ``texts`` by k-means over their embeddings (``k`` clusters, or ``"auto"``: the best
        silhouette for k = 2 .. ``max_k``) and name each group with this model, as ``llmlocal
        cluster`` does. ``embed_model``: a catalogue embedding model to embed with (default: this
        model's pooled embeddings); ``names=False``: "cluster 1", "cluster 2", ...

        Returns plain values: ``items`` (one record per text, in order: id (its position), text,
        cluster, cluster_name, distance), ``clusters`` (cluster, name, size, representatives: the
        most central texts), ``k``, ``silhouette`` and ``silhouette_by_k``.
        """
        from . import cluster as clustering
        from .classify import embedding, job

        items = _texts(texts)
        self._model()
        self._check_idle()

        def embed(batch: list[str]) -> Any:
            if embed_model is None:
                return embedding.embed_texts(self._classify_contexts()("embed"), batch).vectors
            loaded = loader.load(embed_model, threads=self._threads, kv_type=self.kv_type, **job.load_options("embed"))
            try:
                return embedding.embed_texts(loaded.model, batch).vectors
            finally:
                loaded.close()

        result = clustering.cluster_texts(items, embed=embed, generator=(lambda: self._generator) if names else None,
                                          k=k, seed=seed, max_k=max_k, name="texts")
        return {"items": result.records(items, list(range(len(items)))), "clusters": result.summaries(items),
                "k": result.k, "silhouette": result.silhouette, "silhouette_by_k": dict(result.scores)}

    # -- generation

    def complete(self, prompt: str, *, raw: bool = False, system: str | None = None, schema: Any = None,
                 grammar: str | None = None, format: Any = None, **sampling: Any) -> str:
        """The model's reply to ``prompt`` (one user turn in the chat template, or as-is if ``raw``).

        ``sampling``: temperature, top_p, top_k, min_p, repeat_penalty, repeat_last_n, seed,
        max_tokens, stop (a string or a list of strings), presence_penalty, frequency_penalty,
        logit_bias ({token id: bias}), logprobs (N alternatives: in ``last.logprobs``); omitted
        ones take the CLI's defaults.

        Structured output (at most one): ``schema`` (a JSON Schema dict, a pydantic model class,
        or ``--schema``'s text forms), ``grammar`` (GBNF text), ``format="json"`` (any JSON
        object). The text is then the JSON; ``last.checked`` says whether it is valid and holds
        the parsed value (:meth:`extract` raises instead).
        """
        return "".join(self.stream(prompt, raw=raw, system=system, schema=schema, grammar=grammar, format=format,
                                   **sampling))

    def stream(self, prompt: str, *, raw: bool = False, system: str | None = None, schema: Any = None,
               grammar: str | None = None, format: Any = None, **sampling: Any) -> Iterator[str]:
        """Like :meth:`complete`, yielding text as it is generated.

        Bad arguments, a schema or grammar that cannot hold a generation, and a prompt too long
        for the context raise here, before the first piece.
        """
        model = self._model()
        params = sampling_params(sampling, structured.resolve(schema=schema, grammar=grammar, format=format))
        tokens, _ = generate.prompt_tokens(model, prompt, raw=raw, system=system, max_tokens=params.max_tokens)
        return self._run(tokens, params)

    def extract(self, text: str, schema: Any, *, instructions: str | None = None, **sampling: Any) -> Any:
        """The fields ``schema`` asks for, read from ``text``: a dict (or an instance of the
        pydantic model given as ``schema``). Greedy (temperature 0) unless told otherwise.

        The prompt shows the model the schema and the text (llmlocal.structured's extraction
        prompt); the output is held to the schema and validated.

        Raises:
            StructuredOutputError: no valid value within ``max_tokens`` (``err.completion`` has
                what was generated).
            InvalidSchemaError: a schema that cannot hold a generation.
        """
        model = self._model()
        constraint = structured.resolve(schema=schema)
        assert constraint is not None
        params = sampling_params({"temperature": 0, **sampling}, constraint)
        raw = not model.chat_template()
        system, user = structured.extraction_prompt(text, constraint, instructions=instructions, raw=raw)
        tokens, _ = generate.prompt_tokens(model, user, raw=raw, system=system, max_tokens=params.max_tokens)
        for _ in self._run(tokens, params):
            pass
        result = self.last
        assert result is not None and result.checked is not None
        if not result.checked.valid:
            hint = (f"raise max_tokens (it was {params.max_tokens})" if result.finish_reason == "length"
                    else "state the rule in instructions=, or relax the schema")
            raise StructuredOutputError(f"no valid value: {result.checked.error}", completion=result, hint=hint)
        value = result.checked.value
        validate = getattr(schema, "model_validate", None)  # a pydantic model: return an instance of it
        return validate(value) if isinstance(schema, type) and callable(validate) else value

    def ask(self, index: DocumentIndex | str, question: str, *, k: int = 4, **sampling: Any) -> dict:
        """Answer ``question`` from a document index: {"answer", "found", "sources"}, each source
        {"number", "where", "heading", "text"}. Greedy (temperature 0) unless told otherwise.
        When nothing in the index holds the question's key words, "found" is False and
        "answer" None: no answer from nowhere."""
        from . import documents

        own = isinstance(index, str)
        idx = DocumentIndex(index, threads=self._threads) if isinstance(index, str) else index
        try:
            ctx = idx.context(question, k=k)
        finally:
            if own:
                idx.close()
        if not ctx.found:
            return {"answer": None, "found": False, "sources": [], "question": question}
        model = self._model()
        self._check_idle()
        params = sampling_params({"temperature": 0, "max_tokens": 256, **sampling})
        stream = documents.job.ask_stream(model, ctx, params=params, generator=self._generator)
        self._streaming = True
        try:
            result = stream.result()
        finally:
            stream.close()
            self._streaming = False
        self.last = result
        return {"answer": result.text, "found": True, "question": question,
                "sources": [{k: v for k, v in s.as_dict().items() if k != "hit"} for s in ctx.sources]}

    def chat(self, messages: list[dict], *, schema: Any = None, grammar: str | None = None, format: Any = None,
             **sampling: Any) -> str:
        """The assistant's reply to OpenAI-style ``messages`` ({"role", "content"} dicts).

        Stateless: the whole list is rendered with the model's chat template each time; the
        KV cache still re-uses whatever start it shares with the previous call. ``schema``,
        ``grammar`` and ``format`` hold the reply as in :meth:`complete`.
        """
        model = self._model()
        params = sampling_params(sampling, structured.resolve(schema=schema, grammar=grammar, format=format))
        if not isinstance(messages, list) or not messages:
            raise UsageError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) \
                    or not isinstance(msg.get("content"), str):
                raise UsageError(f"messages[{i}] must be a dict with string 'role' and 'content'")
        tokens, _ = generate.prompt_tokens(model, messages)
        return "".join(self._run(tokens, params))

    def batch(self, prompts: list[str | list[dict]], *, parallel: int = 8, raw: bool = False,
              system: str | None = None, **sampling: Any) -> Iterator[Completion]:
        """Complete many prompts, decoding up to ``parallel`` of them together.

        Returns an iterator of Completions in prompt order, each as soon as it (and every
        earlier one) is done: ``for result in model.batch(prompts): ...``.

        A prompt is a string (one user turn, or as-is if ``raw``) or a list of chat messages.
        Faster than calling :meth:`complete` in a loop (about 1.8x at 8 on two cores); at
        temperature 0 the texts equal complete()'s but for a rare near-tie that batched
        arithmetic resolves the other way. Bad arguments and a prompt too long for the context
        raise before anything runs. Decoding uses a second context on the same weights.
        """
        from . import batch as _batch

        model = self._model()
        self._check_idle()
        if isinstance(prompts, str):
            raise UsageError("batch() takes a list of prompts; use complete() for one")
        engine.check_parallel(parallel)
        params = sampling_params(sampling)
        return _batch.complete_all(model, list(prompts), params=params, raw=raw, system=system, parallel=parallel)

    def _check_idle(self) -> None:
        # Two generations interleaved on one KV cache would corrupt each other.
        if self._streaming:
            raise UsageError(f"a stream from '{self.name}' is still running; "
                             "consume it to the end or close() it before the next call")

    def _run(self, tokens: list[int], params: SamplingParams) -> Iterator[str]:
        """Drive one generation, refusing to interleave it with another or to outlive close()."""
        self._check_idle()
        inner = self._generator.stream(tokens, params)  # lazy: nothing is evaluated before the first piece

        def drive() -> Iterator[str]:
            self._check_idle()  # again: two streams may be created before either starts
            self._streaming = True
            self.last = None
            try:
                self._model()  # after close() the context is freed; calling into it would crash
                for piece in inner:
                    yield piece
                    self._model()
                self.last = inner.completion
            finally:
                inner.close()
                self._streaming = False

        return drive()


_CLASSIFY_OPTIONS = {"max_examples", "seed", "calibrate", "instructions", "truncate", "abstain_below", "abstain_label",
                     "parallel", "chat"}


class Classifier:
    """A classifier built by :meth:`LocalModel.classifier`: its prompt stays cached between calls.

    ``method``: what classifies (auto's choice when auto chose); ``scores``: auto's cross-validated
    macro-F1 of every candidate (empty when no choice was made); ``labels``; ``description``: the
    manifest's record of it.
    """

    def __init__(self, owner: LocalModel, clf: Any, settings: Any) -> None:
        from . import classify

        self._owner, self._clf, self._settings = owner, clf, settings
        self.labels: list[str] = list(clf.labels)
        self.description: dict = classify.describe(clf)
        self.method: str = self.description["method"]
        choice = getattr(clf, "choice", None)
        self.scores: dict[str, float | None] = dict(choice.scores) if choice is not None else {}
        self.choice: dict | None = choice.as_dict() if choice is not None else None

    def __repr__(self) -> str:
        return f"<Classifier {self.method} labels={self.labels}>"

    def _predictions(self, texts: Any) -> tuple[list[str], list[Any]]:
        from . import classify

        self._owner._model()
        items = [classify.Item(id=i, text=t) for i, t in enumerate(_texts(texts))]
        return [i.text for i in items], classify.predict(self._clf, items, self._settings)

    def predict(self, texts: Any) -> list[dict]:
        """One record per text, in input order: ``text``, ``label``, ``confidence``,
        ``probabilities`` (and ``truncated``, ``chunks`` or ``error`` when they apply). Plain
        dicts: ``pandas.DataFrame(clf.predict(texts))`` takes them as they are."""
        texts_, predictions = self._predictions(texts)
        out = []
        for text, p in zip(texts_, predictions):
            row = p.as_dict()
            del row["id"]
            out.append({"text": text, **row})
        return out

    def evaluate(self, labelled: Any) -> dict:
        """The report ``llmlocal eval`` prints, for labelled rows (as ``examples`` are given)."""
        from .classify import metrics
        from .classify.job import FAILED

        rows = _examples(labelled)
        if not rows:
            raise UsageError("evaluate() needs labelled rows")
        unknown = sorted({r.label for r in rows} - set(self.labels))
        if unknown:
            raise UsageError(f"gold label(s) not in the classifier's labels: {', '.join(unknown)}")
        _, predictions = self._predictions([r.text for r in rows])
        report = metrics.report([r.label for r in rows], [p.label or FAILED for p in predictions], self.labels,
                                confidence=[p.confidence or 0.0 for p in predictions],
                                top=[p.top or FAILED for p in predictions])
        report["method"] = self.method
        if self.choice is not None:
            report["auto"] = self.choice
        return report


def _texts(texts: Any) -> list[str]:
    """A list of str from any iterable of str (a single string is one text, not its characters)."""
    if isinstance(texts, str):
        return [texts]
    try:
        out = list(texts)
    except TypeError:
        raise UsageError(f"texts must be a string or an iterable of strings, not {type(texts).__name__}") from None
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise UsageError(f"text {i} is {type(t).__name__}, not str")
    return out


def _examples(examples: Any) -> list:
    """Labelled examples from dicts, Example objects, (text, label) pairs, or a file's path."""
    import os

    from . import classify

    if examples is None:
        return []
    if isinstance(examples, (str, os.PathLike)):
        return classify.read_examples(os.fspath(examples))
    out = []
    for i, e in enumerate(examples):
        if isinstance(e, classify.Example):
            out.append(e)
        elif isinstance(e, dict) and isinstance(e.get("text"), str) and isinstance(e.get("label"), str):
            out.append(classify.Example(text=e["text"], label=e["label"].strip(), line=i + 1))
        elif isinstance(e, (tuple, list)) and len(e) == 2 and all(isinstance(x, str) for x in e):
            out.append(classify.Example(text=e[0], label=e[1].strip(), line=i + 1))
        else:
            raise InputFormatError("examples", "an example must be a {'text', 'label'} dict, an Example or a "
                                   "(text, label) pair of strings", line=i + 1)
    return out
