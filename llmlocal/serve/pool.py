"""Resident models for a long-running process (the server): load once, keep, evict when full.

A :class:`Resident` is one model with a generation context of ``parallel`` sequences driven by a
:class:`~llmlocal.worker.GenerationWorker` (concurrent requests batch together), plus, loaded on
first use, the contexts classification and embeddings need (their own kinds: an embeddings
context pools, a classification context has no repacked weights). Those two serve one request at
a time; each request is itself batched over its texts. The weights are memory-mapped, so the
extra contexts cost KV cache, not a second copy of the model.

:class:`ModelPool` keeps at most ``max_models`` residents; loading another evicts the least
recently used one that no request is using, and refuses (:class:`~llmlocal.errors.BusyError`)
when every one is in use.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from .. import catalog, chat, classify, engine, loader, store
from ..catalog import ModelSpec
from ..classify import embedding
from ..errors import BusyError, UnknownModelError, UsageError
from .engine_thread import GenerationWorker

T = TypeVar("T")


# Per-request context when none is given: Ollama's default. The catalogue's 8192 times 8 sequences
# would reserve a 64k-token KV cache per model for requests that are mostly short.
DEFAULT_CTX = 4096


@dataclass(frozen=True)
class PoolOptions:
    # Sequences decoded together per model. 8, as for batch: on 2 cores parallel decoding starts to
    # pay at 8 (1.7x the tokens/s of one; 4 gave 1.1x; benchmarks/batch_bench.py).
    parallel: int = 8
    ctx: int | None = None  # tokens per sequence; None: DEFAULT_CTX or less, fitted to RAM
    threads: int | None = None
    max_models: int = 2
    verbose: bool = False
    kv_type: str = "f16"  # every context's KV cache type (gguf.KV_TYPES)


class Resident:
    """One loaded model serving requests. Generation: through :attr:`worker` (any thread).
    Embeddings and classification: :meth:`embed` and :meth:`classify` (blocking; call them off
    the event loop)."""

    def __init__(self, ref: str, spec: ModelSpec, options: PoolOptions) -> None:
        self.ref, self.spec, self.options = ref, spec, options
        self.loaded = loader.load(ref, ctx=options.ctx, sequences=options.parallel, ctx_cap=DEFAULT_CTX,
                                  threads=options.threads, verbose=options.verbose, kv_type=options.kv_type)
        self.name = self.loaded.name
        self.model = self.loaded.model
        try:
            self.template: str | None = chat.choose_template(
                self.name, gguf_template=self.model.chat_template(), family=spec.template)
        except UsageError:
            self.template = None  # a base model: completions only
        self.worker = GenerationWorker(self.model, options.parallel, name=self.name)
        self.users = 0  # requests holding this resident (guarded by the pool's lock)
        self.last_used = time.monotonic()
        self._aux_lock = threading.Lock()
        self._aux: dict[str, loader.Loaded] = {}
        self._classifier: tuple[tuple, Any] | None = None  # the last one built, with its request key

    @property
    def n_ctx_seq(self) -> int:
        return self.worker.n_ctx_seq

    def _aux_model(self, kind: str):
        # Caller holds _aux_lock.
        if kind not in self._aux:
            self._aux[kind] = loader.load(self.ref, threads=self.options.threads, verbose=self.options.verbose,
                                          kv_type=self.options.kv_type, **classify.load_options(kind))
        return self._aux[kind].model

    def tokens_in(self, texts: list[str]) -> int:
        """How many tokens ``texts`` are (for the usage field)."""
        return sum(len(self.model.tokenize(t, add_special=True, parse_special=False)) for t in texts)

    def embed(self, texts: list[str]) -> np.ndarray:
        """L2-normalised mean-pooled embeddings, one row per text."""
        with self._aux_lock:
            return embedding.embed_texts(self._aux_model("embed"), texts).vectors

    def classify(self, texts: list[str], labels: list[str] | None, examples: list[tuple[str, str]], *,
                 settings: classify.Settings, key: tuple) -> tuple[list[str], list[classify.Prediction], dict]:
        """Labels and predictions, as ``llmlocal classify`` makes them. A request whose key equals
        the previous one's reuses its classifier (and the prompt prefix already in the cache)."""
        exs = [classify.Example(text=t, label=label, line=i + 1) for i, (t, label) in enumerate(examples)]
        with self._aux_lock:
            if self._classifier is not None and self._classifier[0] == key:
                clf = self._classifier[1]
            else:
                chosen_labels = classify.resolve_labels(labels, exs, name="examples", warn=lambda _m: None)
                settings.validate(chosen_labels)
                chosen = classify.select_examples(exs, chosen_labels, max_examples=settings.max_examples,
                                                  seed=settings.seed)
                self._classifier = None
                clf = classify.build_classifier(self._aux_model, chosen_labels, chosen, settings)
                self._classifier = (key, clf)
            items = [classify.Item(id=i, text=t) for i, t in enumerate(texts)]
            return list(clf.labels), classify.predict(clf, items, settings), classify.describe(clf)

    def close(self) -> None:
        self.worker.close()
        with self._aux_lock:
            for aux in self._aux.values():
                aux.close()
            self._aux.clear()
            self._classifier = None
        self.loaded.close()


class ModelPool:
    """Residents by model name, at most ``options.max_models`` of them. Thread-safe."""

    def __init__(self, options: PoolOptions, *, on_note: Callable[[str], None] | None = None) -> None:
        engine.check_parallel(options.parallel)
        if options.max_models < 1:
            raise UsageError("--max-models must be at least 1")
        self.options = options
        self._on_note = on_note or (lambda _text: None)
        self._residents: OrderedDict[str, Resident] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()
        self._loading = threading.Lock()  # one load at a time: two would race for the same RAM

    def acquire(self, name: str, *, references: bool = False) -> Resident:
        """The resident for ``name``, loaded if need be; :meth:`release` it when the request ends.

        ``name`` is a resident's name or a catalogue name; a path or ``hf:`` reference only with
        ``references`` (the operator's ``-m``: a network client must not make the server open
        arbitrary files).

        Raises:
            UnknownModelError, NotInstalledError, BusyError, and the loader's errors.
        """
        with self._lock:
            resident = self._residents.get(name)
            if resident is not None:
                return self._hold(resident)
        spec = catalog.resolve(name, files=references)
        if spec.is_reference and not references:
            raise UnknownModelError(name)
        store.model_file(spec)  # not installed: say so before unloading anything to make room
        with self._loading:  # a request for a model already resident does not wait for this
            with self._lock:
                resident = self._residents.get(spec.name)
                if resident is not None:
                    return self._hold(resident)
                evict = self._evictable()
            if evict is not None:
                self._on_note(f"unloading {evict.name} to make room for {spec.name} (--max-models "
                              f"{self.options.max_models})")
                evict.close()
            resident = Resident(name, spec, self.options)
            with self._lock:
                self._residents[resident.name] = resident
                return self._hold(resident)

    def _hold(self, resident: Resident) -> Resident:
        # Caller holds _lock.
        resident.users += 1
        resident.last_used = time.monotonic()
        self._residents.move_to_end(resident.name)
        return resident

    def _evictable(self) -> Resident | None:
        # Caller holds _lock. Full: take out the least recently used idle resident, or refuse.
        if len(self._residents) < self.options.max_models:
            return None
        for name, resident in self._residents.items():
            if resident.users == 0:
                del self._residents[name]
                return resident
        raise BusyError(f"all {self.options.max_models} loaded models are in use",
                        hint="retry shortly, or start the server with a larger --max-models")

    def release(self, resident: Resident) -> None:
        with self._lock:
            resident.users -= 1
            resident.last_used = time.monotonic()

    def loaded(self) -> list[Resident]:
        with self._lock:
            return list(self._residents.values())

    def run(self, name: str, fn: Callable[[Resident], T]) -> T:
        """``fn(resident)`` with the resident held for its duration."""
        resident = self.acquire(name)
        try:
            return fn(resident)
        finally:
            self.release(resident)

    def close(self) -> None:
        with self._loading, self._lock:
            residents = list(self._residents.values())
            self._residents.clear()
        for resident in residents:
            resident.close()
