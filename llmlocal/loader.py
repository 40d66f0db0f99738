"""From a model reference to a loaded model: catalogue -> verified file in the store -> runtime.

Also decides the context size: the catalogue's default, never more than the model was trained
for, and shrunk to what fits in RAM (with a note) rather than silently taking a 128k window.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from . import catalog, config, gguf, hardware, runtime, store
from .catalog import ModelSpec
from .errors import UsageError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
_SHRINK_FLOOR = 512  # the default context is never shrunk below this to fit RAM


def default_model() -> str:
    """``$LLMLOCAL_MODEL``, else ``default_model`` in the home's config.toml, else smollm2-135m.

    Raises:
        ConfigError: config.toml exists but is not valid (even when the variable is set, so a
            broken file is found now, not on the day the variable is unset).
    """
    configured = config.load_config().default_model
    env = os.environ.get("LLMLOCAL_MODEL", "").strip()
    return env or configured or DEFAULT_MODEL


@dataclass
class Loaded:
    """A loaded model and where its bytes came from (for provenance in results)."""

    spec: ModelSpec
    path: Path
    sha256: str | None
    model: runtime.Model
    sequences: int = 1

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def n_ctx_seq(self) -> int:
        """Tokens each of the ``sequences`` may hold (the whole context when there is one)."""
        model = self.model
        return model.n_ctx // self.sequences if model.kv_unified else model.n_ctx_seq

    def close(self) -> None:
        self.model.close()


MIN_CTX = 16  # below this not even a chat template's own tokens fit


def check_context(ctx: int | None) -> None:
    """Refuse a context size too small to hold anything (None: the default, sized later)."""
    if ctx is not None and ctx < MIN_CTX:
        raise UsageError(f"a context of {ctx} tokens is too small (at least {MIN_CTX})")


def choose_context(spec: ModelSpec, info: gguf.GGUFInfo, requested: int | None, *, sequences: int = 1,
                   cap: int | None = None, kv_type: str = gguf.DEFAULT_KV_TYPE) -> int:
    """The context of each sequence: ``requested``, or the default capped by ``cap``, training
    length and RAM (halved until all ``sequences`` fit in available RAM together)."""
    check_context(requested)
    if requested is not None:
        return requested  # runtime.check_fits refuses it if it cannot fit
    trained = info.context_length or 4096
    ctx = min(spec.context if spec.source else 4096, trained, cap or trained)
    avail = hardware.available_memory()
    if avail is None:
        return ctx
    wanted = ctx
    while ctx > _SHRINK_FLOOR and gguf.estimate_memory(info, ctx * sequences, kv_type=kv_type).total_bytes > avail:
        ctx //= 2
    if ctx != wanted:
        what = f"tokens per sequence so {sequences} sequences fit" if sequences > 1 else "tokens to fit"
        log.info("context reduced from %d to %d %s in available RAM (choose it with --ctx, or ctx= in Python)",
                 wanted, ctx, what)
    return ctx


def load(ref: str | None = None, *, sha256: str | None = None, ctx: int | None = None, sequences: int = 1,
         ctx_cap: int | None = None, threads: int | None = None, n_seq_max: int = 1, n_batch: int = 512,
         embeddings: bool = False, verbose: bool = False, kv_unified: bool | None = None,
         extra_buffers: bool | None = None, pooling: str = "mean", kv_type: str = gguf.DEFAULT_KV_TYPE) -> Loaded:
    """Resolve ``ref`` (default: :func:`default_model`), find its verified bytes, load it.

    ``sequences`` > 1 is a context for parallel decoding: each of that many sequences gets ``ctx``
    tokens (default: see :func:`choose_context`, at most ``ctx_cap``) in a stream of its own;
    ``Loaded.n_ctx_seq`` says how many it got. ``n_seq_max`` is for contexts whose sequences
    share one pool of cells instead (classification's label branches). ``kv_type`` is the KV
    cache's element type (``gguf.KV_TYPES``): q8_0 and q4_0 fit more context in the same RAM.
    """
    hardware.check_threads(threads)
    check_context(ctx)
    gguf.check_kv_type(kv_type)
    spec = catalog.resolve(ref or default_model(), sha256=sha256)
    path = store.model_file(spec)
    info = gguf.read_gguf(path)
    runtime.set_verbose(verbose)
    per_seq = choose_context(spec, info, ctx, sequences=sequences, cap=ctx_cap, kv_type=kv_type)
    n_ctx = per_seq * sequences
    if sequences > 1 and kv_unified is None:
        kv_unified = False  # a stream per sequence: each attends over its own cells only
    options = runtime.LoadOptions(n_ctx=n_ctx, n_threads=threads, n_seq_max=max(n_seq_max, sequences),
                                  n_batch=min(n_batch, n_ctx), embeddings=embeddings, kv_unified=kv_unified,
                                  extra_buffers=extra_buffers, pooling=pooling, kv_type=kv_type)
    model = runtime.Model(path, options)
    if model.n_ctx != n_ctx:  # otherwise an overflow error would name a size nobody asked for
        log.info("context rounded up from %d to %d tokens (llama.cpp allocates it in steps of 256)",
                 n_ctx, model.n_ctx)
    installed = store.find_installed(spec) if not spec.is_reference or spec.repo else None
    return Loaded(spec=spec, path=path, sha256=installed.sha256 if installed else spec.sha256, model=model,
                  sequences=sequences)
