"""Load a model and run it: tokenize, evaluate, sample. The only module that imports llama_cpp.

Built on llama-cpp-python's low-level bindings rather than its ``Llama`` class: ``Llama`` copies
the full logit row into NumPy for every generated token and samples in Python, which costs about
10% of generation speed on a 135M model (``../shared/perf-baseline.md``). Here sampling runs in
llama.cpp's own sampler chain and each token is three C calls. The same context can hold several
sequences (``n_seq_max``), which batch decoding and classification use.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from . import gguf, hardware
from .errors import (
    DecodeError,
    InsufficientMemoryError,
    InvalidParameterError,
    InvalidSchemaError,
    ModelClosedError,
    ModelLoadError,
    UsageError,
    option,
)
from .sampling import RANDOM_SEED, SamplingParams

if TYPE_CHECKING:
    import numpy as np

LLAMA_LOG = "llmlocal.llama_cpp"  # the logger llama.cpp's log lines go to with verbose on
_init_lock = threading.Lock()
_initialised = False
_verbose = False
_recent_errors: deque[str] = deque(maxlen=8)
_log_callback = None  # the ctypes callback must outlive every call into llama.cpp


def _llama():
    """Import llama_cpp once, with its log lines routed through our filter."""
    global _initialised, _log_callback
    import llama_cpp

    with _init_lock:
        if not _initialised:

            @llama_cpp.llama_log_callback
            def _on_log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
                message = text.decode("utf-8", "replace")
                if level == 3:  # GGML_LOG_LEVEL_ERROR: kept to explain a failed load
                    _recent_errors.append(message.strip())
                if _verbose:  # llama.cpp's own words, shown as they are (the CLI adds no prefix)
                    logging.getLogger(LLAMA_LOG).info("%s", message.rstrip("\n"))

            _log_callback = _on_log
            sys.unraisablehook = _redeliver_interrupts(sys.unraisablehook)
            llama_cpp.llama_log_set(_on_log, ctypes.c_void_p(0))
            llama_cpp.llama_backend_init()
            _initialised = True
    return llama_cpp


def _redeliver_interrupts(previous):
    """An unraisable hook that turns a Ctrl-C lost in a ctypes callback into a new one.

    llama.cpp calls our log callback during decodes (graph rebuilds log at debug level). A
    Ctrl-C, or SIGTERM mapped to it, that arrives then is raised inside the callback, where it
    cannot cross llama.cpp's C frames: ctypes reports it as unraisable and drops it, and the
    command would run on. This records it, and _llama_decode raises it when the decode returns.
    """

    def hook(unraisable) -> None:
        global _lost_interrupt
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            _lost_interrupt = True  # raised by _llama_decode when llama_decode returns
            return
        previous(unraisable)

    return hook


_lost_interrupt = False


def _llama_decode(lib, ctx, batch) -> int:
    """llama_decode, then raise any KeyboardInterrupt that arrived inside it (see above)."""
    global _lost_interrupt
    rc = lib.llama_decode(ctx, batch)
    if _lost_interrupt:
        _lost_interrupt = False
        raise KeyboardInterrupt
    return rc


def _amx_enabled(lib) -> bool:
    """Whether llama.cpp would put weights in its AMX buffer on this CPU.

    Its AMX matmul kernel segfaults on some Sapphire Rapids machines, this build machine among
    them (ggml-org/llama.cpp#20824, closed unfixed; dspy and ollama users hit it too). Where the
    CPU and the build both have AMX, we skip llama.cpp's extra weight buffers (AMX and the x86
    repack) unless LLMLOCAL_ALLOW_AMX=1. llama-bench's ``-nr 1`` is the same switch, which keeps
    the native comparison like for like.
    """
    info = lib.llama_print_system_info().decode("utf-8", "replace")
    return "AMX_INT8 = 1" in info and os.environ.get("LLMLOCAL_ALLOW_AMX", "") != "1"


def set_verbose(verbose: bool) -> None:
    """Show llama.cpp's own log lines on stderr (hidden by default)."""
    global _verbose
    _verbose = verbose


def llama_cpp_version() -> str:
    from importlib import metadata

    return metadata.version("llama-cpp-python")


# Batch invariance: what a token's logits depend on besides the tokens it attends to. Measured
# on llama-cpp-python 0.3.36 (CPU, AVX-512), where a different batching moved logits by up to
# ~1.0 on SmolLM2-135M Q4_1 and Gemma 3 270M Q4_K_M (activations are re-quantised to 8 bits per
# matmul, so any change in rounding order is amplified):
# - flash attention takes a tiled kernel for micro-batches of 64+ tokens (GGML_FA_TILE_Q) whose
#   sums depend on where cells sit in the KV cache, and a split-KV kernel for one-token
#   micro-batches over 512+ cells; from 2 to 63 tokens it runs over the cells in order, skipping
#   masked ones, so the result does not depend on the batch;
# - the tiled K-quant matmul (Q4_K, Q6_K, ...; 8+ rows) rounds by tile, see below;
# - repacked weights (llama.cpp's extra buffers, e.g. Q4_K 8x8 on AVX2/AVX-512) take a gemm
#   kernel for groups of rows and a gemv kernel for the rest, which round differently: measured
#   up to 0.057 in a label probability on Gemma 3 270M Q4_K_M. LoadOptions(extra_buffers=False).
BATCH_INVARIANT_MAX_TOKENS = 63


def prefer_batch_invariant_kernels() -> None:
    """Ask ggml for matmul kernels whose result for a token does not depend on its batch-mates.

    ggml's tiled K-quant matmul (8+ rows) gives a row different rounding depending on the rows
    tiled with it; ``GGML_CPU_TILED_MM=0`` selects the per-row kernel (about 13% slower prompt
    processing for Gemma 3 270M Q4_K_M here; Q4_0/Q4_1/Q8_0 models are unaffected). ggml reads the
    variable once per process, at the first evaluation, so call this before loading a model. A
    value the user set wins.
    """
    os.environ.setdefault("GGML_CPU_TILED_MM", "0")


@dataclass
class LoadOptions:
    n_ctx: int = 4096
    n_threads: int | None = None  # None: physical cores
    n_batch: int = 512
    n_seq_max: int = 1
    # None: one KV pool shared by all sequences when n_seq_max > 1 (kv_copy of any range, tokens
    # in several sequences). False: one stream per sequence, each attending over its own cells
    # only: cheaper attention with many sequences, results equal to a one-sequence context, but
    # kv_copy can only copy a whole sequence (the parallel engine's choice).
    kv_unified: bool | None = None
    embeddings: bool = False
    pooling: str = "mean"  # for embeddings: "mean", "cls", "last", "none", "model" (the GGUF's own)
    check_memory: bool = True
    # llama.cpp's extra weight buffers (repacked layouts for the CPU's SIMD, AMX). None: on, but
    # off on AMX CPUs (see _amx_enabled). False for batch-invariant results: a repacked K-quant
    # matmul rounds a token's row differently depending on its batch-mates.
    extra_buffers: bool | None = None
    # The K and V cache's element type, one of gguf.KV_TYPES: "f16" (llama.cpp's default),
    # "q8_0" (about half the memory) or "q4_0" (about a quarter).
    kv_type: str = gguf.DEFAULT_KV_TYPE

    def threads(self) -> int:
        return self.n_threads or hardware.physical_cores()


# "model": the GGUF's own pooling (LLAMA_POOLING_TYPE_UNSPECIFIED), what a dedicated embedding
# model was trained with (CLS for bge, mean for nomic and MiniLM).
_POOLING = {"model": -1, "none": 0, "mean": 1, "cls": 2, "last": 3}


def check_fits(info: gguf.GGUFInfo, n_ctx: int, *, kv_type: str = gguf.DEFAULT_KV_TYPE) -> gguf.MemoryEstimate:
    """Refuse, before loading, a model + KV cache that cannot fit in available RAM."""
    est = gguf.estimate_memory(info, n_ctx, kv_type=kv_type)
    avail = hardware.available_memory()
    if avail is not None and est.total_bytes > avail:
        gib = 1024**3
        raise InsufficientMemoryError(
            f"{info.path.name} needs about {est.total_bytes / gib:.1f} GiB at context {n_ctx} "
            f"(weights {est.weights_bytes / gib:.1f} GiB + {kv_type} KV cache {est.kv_cache_bytes / gib:.1f} GiB), "
            f"but only {avail / gib:.1f} GiB is available",
            hint=(f"use a smaller {option('ctx')}, a smaller model or {option('kv_type')} q8_0"
                  if kv_type == gguf.DEFAULT_KV_TYPE else f"use a smaller {option('ctx')} or a smaller model"),
        )
    return est


def _set_kv_type(lib, cparams, kv_type: str) -> None:
    """Store K and V as ``kv_type`` (a gguf.KV_TYPES name, which is also ggml's type name).

    llama.cpp refuses a quantised V cache without flash attention (without it, V is stored
    transposed, each cell's values scattered one per row, which blocks of 32 cannot hold), so it
    is switched on outright for one. Left on auto (as for f16, where auto resolves to on with
    this CPU build), it could resolve to off on another device and the context would fail.
    """
    ggml_type = getattr(lib, f"GGML_TYPE_{kv_type.upper()}")
    cparams.type_k = cparams.type_v = ggml_type
    if kv_type != gguf.DEFAULT_KV_TYPE:
        cparams.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED


class Model:
    """A loaded model with one llama.cpp context. Not thread-safe: one caller at a time."""

    def __init__(self, path: str | os.PathLike[str], options: LoadOptions | None = None) -> None:
        self.path = Path(path)
        self.options = options = options or LoadOptions()
        gguf.check_kv_type(options.kv_type)
        self.info = gguf.read_gguf(self.path)  # a truncated or foreign file fails here, cleanly
        if options.check_memory:
            check_fits(self.info, options.n_ctx, kv_type=options.kv_type)
        lib = self._lib = _llama()
        started = time.perf_counter()
        self._model = self._ctx = self._batch = None
        _recent_errors.clear()
        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = 0
        extra = options.extra_buffers
        mparams.use_extra_bufts = (not _amx_enabled(lib)) if extra is None else extra
        self._model = lib.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not self._model:
            raise ModelLoadError(
                f"llama.cpp could not load {self.path.name} ({self.info.architecture}): "
                + (_recent_errors[-1] if _recent_errors else "unknown error"),
                hint="the file may be corrupt (`llmlocal verify`) or its architecture unsupported by "
                f"llama-cpp-python {llama_cpp_version()}",
            )
        self.vocab = lib.llama_model_get_vocab(self._model)
        self.n_vocab = lib.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = lib.llama_model_n_ctx_train(self._model)
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = options.n_ctx
        cparams.n_batch = cparams.n_ubatch = options.n_batch
        cparams.n_seq_max = options.n_seq_max
        cparams.n_threads = cparams.n_threads_batch = options.threads()
        cparams.embeddings = options.embeddings
        cparams.pooling_type = _POOLING[options.pooling] if options.embeddings else -1
        # One KV pool for all sequences, so a shared prompt prefix can be copied between them.
        cparams.kv_unified = options.n_seq_max > 1 if options.kv_unified is None else options.kv_unified
        cparams.no_perf = True
        _set_kv_type(lib, cparams, options.kv_type)
        self._ctx = lib.llama_init_from_model(self._model, cparams)
        if not self._ctx and options.kv_type != gguf.DEFAULT_KV_TYPE:
            self.close()
            raise ModelLoadError(
                f"llama.cpp could not create a context with a {options.kv_type} KV cache for {self.path.name} "
                f"({self.info.architecture}): " + (_recent_errors[-1] if _recent_errors else "unknown error"),
                hint=f"leave out {option('kv_type')} (f16), or try {option('kv_type')} q8_0",
            )
        if not self._ctx:
            self.close()
            raise ModelLoadError(
                f"llama.cpp could not create a context of {options.n_ctx} tokens for {self.path.name}: "
                + (_recent_errors[-1] if _recent_errors else "unknown error"),
                hint=f"try a smaller {option('ctx')}",
            )
        self.n_ctx = lib.llama_n_ctx(self._ctx)
        self.n_ctx_seq = lib.llama_n_ctx_seq(self._ctx)  # n_ctx, or its share per stream if not unified
        self.kv_unified = bool(cparams.kv_unified)
        self._mem = lib.llama_get_memory(self._ctx)
        self._batch = lib.llama_batch_init(options.n_batch, 0, max(options.n_seq_max, 1))
        self.load_seconds = time.perf_counter() - started

    # -- lifetime

    def close(self) -> None:
        """Free the batch, the context, then the weights. Safe to call twice.

        Whatever still holds this Model afterwards (an engine or a generator finalised later by
        the garbage collector, a sampler) gets a ModelClosedError for work and a no-op for
        clean-up, never a call into freed memory: the KV cache lives in the context, so its
        pointer is dropped with it.
        """
        lib = self._lib
        self._mem = None
        if self._batch is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            lib.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            lib.llama_model_free(self._model)
            self._model = None
        self.vocab = None

    @property
    def closed(self) -> bool:
        return self._ctx is None

    def _live(self) -> None:
        if self._ctx is None:
            raise self._closed()

    def _closed(self) -> ModelClosedError:
        return ModelClosedError(f"{self.path.name} was closed; load it again to use it",
                                hint="keep the model open until every job using it has finished")

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:
            pass

    # -- vocabulary

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        self._live()
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (self._lib.llama_token * cap)()
        n = self._lib.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            buf = (self._lib.llama_token * -n)()
            n = self._lib.llama_tokenize(self.vocab, data, len(data), buf, -n, add_special, parse_special)
        return buf[:n]

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes of one token (may be part of a UTF-8 character)."""
        # A buffer per call, not per model: the server renders chat templates (which ask for the
        # BOS/EOS text) on other threads while the engine thread turns tokens into text.
        if self.vocab is None:
            self._live()
        buf = ctypes.create_string_buffer(64)
        n = self._lib.llama_token_to_piece(self.vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def detokenize(self, tokens: list[int], *, special: bool = False) -> str:
        return b"".join(self.piece(t, special=special) for t in tokens).decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        self._live()
        return bool(self._lib.llama_vocab_is_eog(self.vocab, token))

    @property
    def bos(self) -> int:
        self._live()
        return self._lib.llama_vocab_bos(self.vocab)

    @property
    def eos(self) -> int:
        self._live()
        return self._lib.llama_vocab_eos(self.vocab)

    @property
    def add_bos(self) -> bool:
        self._live()
        return bool(self._lib.llama_vocab_get_add_bos(self.vocab))

    def token_text(self, token: int) -> str:
        return self.piece(token, special=True).decode("utf-8", "replace")

    # -- chat template

    def chat_template(self) -> str | None:
        self._live()
        raw = self._lib.llama_model_chat_template(self._model, None)
        return raw.decode("utf-8") if raw else None

    def render_chat(self, messages: list[dict], *, template: str | None = None,
                    add_generation_prompt: bool = True) -> str:
        """Apply a Jinja chat template in llama-cpp-python's sandbox (as its server does)."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = template or self.chat_template()
        if not template:
            # A model without a template (a base model) is used with raw text: say that.
            raise UsageError(f"{self.info.name or self.path.name} has no chat template (a base model?)",
                             hint=f"send the prompt as-is ({option('raw')})")
        bos = self.token_text(self.bos) if self.bos >= 0 else ""
        eos = self.token_text(self.eos) if self.eos >= 0 else ""
        fmt = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos,
                                  add_generation_prompt=add_generation_prompt)
        # llama-cpp-python types messages as its own TypedDicts; ours have the same shape.
        return fmt(messages=cast(Any, messages)).prompt

    # -- evaluation

    def decode(self, tokens: list[int], positions: list[int], seq_ids: list[int | Sequence[int]],
               logits: list[bool]) -> None:
        """Evaluate up to n_batch tokens in one llama_decode call (any mix of sequences).

        A ``seq_ids`` entry may be a sequence of ids: that token then belongs to all of them and
        is computed once (classification evaluates an item once for all its label branches).
        """
        self._live()
        b = self._batch
        assert b is not None, "the model is closed"
        n = len(tokens)
        if n > self.options.n_batch:
            raise UsageError(f"batch of {n} tokens exceeds the context's batch size {self.options.n_batch}")
        for i in range(n):
            b.token[i] = tokens[i]
            b.pos[i] = positions[i]
            ids = seq_ids[i]
            if isinstance(ids, int):
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = ids
            else:
                if len(ids) > max(self.options.n_seq_max, 1):
                    raise UsageError(f"a token in {len(ids)} sequences exceeds the context's "
                                     f"{self.options.n_seq_max} sequences")
                b.n_seq_id[i] = len(ids)
                for k, sid in enumerate(ids):
                    b.seq_id[i][k] = sid
            b.logits[i] = logits[i]
        b.n_tokens = n
        rc = _llama_decode(self._lib, self._ctx, b)
        if rc != 0:
            raise DecodeError(rc)

    def decode_one(self, token: int, pos: int, seq_id: int = 0) -> None:
        """The per-token hot path of generation: one token, logits on."""
        b = self._batch
        if b is None:
            raise self._closed()
        b.token[0] = token
        b.pos[0] = pos
        b.n_seq_id[0] = 1
        b.seq_id[0][0] = seq_id
        b.logits[0] = 1
        b.n_tokens = 1
        rc = _llama_decode(self._lib, self._ctx, b)
        if rc != 0:
            raise DecodeError(rc)

    def eval_prompt(self, tokens: list[int], *, start: int = 0, seq_id: int = 0, logits_last: bool = True) -> None:
        """Evaluate ``tokens`` at positions ``start...`` for one sequence, in n_batch chunks."""
        step = self.options.n_batch
        for i in range(0, len(tokens), step):
            chunk = tokens[i : i + step]
            last = i + len(chunk) == len(tokens)
            self.decode(chunk, list(range(start + i, start + i + len(chunk))), [seq_id] * len(chunk),
                        [False] * (len(chunk) - 1) + [logits_last and last])

    def logits(self, idx: int = -1) -> np.ndarray:
        """The logit row of output ``idx`` of the last decode (a copy, as float32)."""
        import numpy as np

        self._live()
        ptr = self._lib.llama_get_logits_ith(self._ctx, idx)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def embedding(self, seq_id: int = 0) -> list[float]:
        """The pooled embedding of a sequence after decode (embeddings contexts only)."""
        self._live()
        n = self._lib.llama_model_n_embd(self._model)
        ptr = self._lib.llama_get_embeddings_seq(self._ctx, seq_id)
        if not ptr:
            ptr = self._lib.llama_get_embeddings_ith(self._ctx, -1)
        return ptr[:n]

    # -- KV cache

    def kv_remove(self, seq_id: int, start: int = 0, end: int = -1) -> None:
        """Forget positions [start, end) of a sequence (-1: to the end; seq -1: every sequence)."""
        if self._mem is None:  # closed: the cache went with the context
            return
        self._lib.llama_memory_seq_rm(self._mem, seq_id, start, end)

    def kv_copy(self, src: int, dst: int, start: int = 0, end: int = -1) -> None:
        """Share positions [start, end) of ``src`` with ``dst`` (no recomputation)."""
        self._live()
        self._lib.llama_memory_seq_cp(self._mem, src, dst, start, end)

    def kv_clear(self) -> None:
        if self._mem is None:  # closed: the cache went with the context
            return
        self._lib.llama_memory_clear(self._mem, True)

    @property
    def kv_shareable(self) -> bool:
        """Whether kv_copy can share part of a sequence (attention KV, not a recurrent state)."""
        self._live()
        lib = self._lib
        return not (lib.llama_model_is_recurrent(self._model) or lib.llama_model_is_hybrid(self._model))

    # -- sampling

    def sampler(self, params: SamplingParams) -> Sampler:
        self._live()
        return Sampler(self, params)

    def check_sampling(self, params: SamplingParams) -> None:
        """Raise now what making a sampler for ``params`` would: a grammar llama.cpp cannot parse,
        a logit bias for a token outside the vocabulary. Free when neither is used."""
        if params.constraint is not None or params.logit_bias:
            self.sampler(params).close()


def schema_to_gbnf(schema_json: str) -> str:
    """llama-cpp-python's port of llama.cpp's JSON Schema to GBNF converter (see llmlocal.structured),
    with two of its rules replaced by upstream llama.cpp's current ones:

    - ``space``: the port allows one optional space only, which forbids the newline-and-indent
      tokens small models write JSON with: the grammar then rejects their first choice at every
      line break (slower: each rejection is a pass over the vocabulary) and pushes them off their
      distribution. Upstream's rule allows up to two newlines and 20 spaces or tabs: still
      bounded, so whitespace can never run away.
    - ``char`` (inside strings): the port admits raw control characters, so a string could hold a
      raw newline and the output would not be valid JSON; upstream's excludes them.

    It raises AssertionError for a schema it cannot express.
    """
    _llama()
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    lines = []
    for line in json_schema_to_gbnf(schema_json).splitlines():
        name = line.split(" ::= ", 1)[0]
        if name == "space":
            line = r'space ::= | " " | "\n"{1,2} [ \t]{0,20}'
        elif name == "char":
            line = r'char ::= [^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'
        lines.append(line)
    return "\n".join(lines)


@dataclass(frozen=True)
class TokenLogprob:
    """A sampled token's log-probability under the model, and the most likely alternatives."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


class _Candidates:
    """A reusable llama_token_data_array over the whole vocabulary, filled from a logit row.

    Only the grammar's slow path and logprobs need the row on the Python side; a NumPy record
    array with llama_token_data's layout (int32 id, float logit, float p) is filled with two
    vectorised copies instead of n_vocab ctypes writes.
    """

    def __init__(self, model: Model) -> None:
        import numpy as np

        lib = model._lib
        self._n = n = model.n_vocab
        dtype = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
        assert dtype.itemsize == ctypes.sizeof(lib.llama_token_data)
        self._ids = np.arange(n, dtype=np.int32)
        self.data = np.zeros(n, dtype=dtype)
        self.array = lib.llama_token_data_array(
            ctypes.cast(self.data.ctypes.data, ctypes.POINTER(lib.llama_token_data)), n, -1, False)
        self._pointer = ctypes.byref(self.array)
        self._one = (lib.llama_token_data * 1)()
        self.one = lib.llama_token_data_array(self._one, 1, -1, False)
        self._one_pointer = ctypes.byref(self.one)

    def fill(self, logits) -> Any:
        """The array (by reference) holding ``logits`` for every token, unsorted, nothing selected."""
        # Field by field: a whole-record copy is ~20x slower in NumPy (1.4 ms for 262k entries).
        self.data["id"] = self._ids  # samplers reorder the entries: restore ids in order
        self.data["logit"] = logits
        self.data["p"] = 0.0
        self.array.data = ctypes.cast(self.data.ctypes.data, type(self.array.data))
        self.array.size, self.array.selected, self.array.sorted = self._n, -1, False
        return self._pointer

    def selected(self) -> int:
        # Read through the pointer: llama.cpp lets a sampler point ``data`` at its own buffer.
        return int(self.array.data[self.array.selected].id)

    def fill_top(self, logits, n: int) -> tuple[Any, float]:
        """An array of the ``n`` highest-logit tokens only, and the highest logit left out of it."""
        import numpy as np

        top = np.argpartition(-logits, n)[: n + 1]
        cut = top[np.argmin(logits[top])]  # the (n+1)-th best: the ceiling of everything left out
        top = top[top != cut][:n]
        sub = self.data[:n]
        sub["id"] = top
        sub["logit"] = logits[top]
        sub["p"] = 0.0
        self.array.data = ctypes.cast(self.data.ctypes.data, type(self.array.data))
        self.array.size, self.array.selected, self.array.sorted = n, -1, False
        return self._pointer, float(logits[cut])

    def allowed(self) -> int:
        """How many entries of the array the grammar left possible."""
        import numpy as np

        n = self.array.size
        view = np.ctypeslib.as_array(ctypes.cast(self.array.data, ctypes.POINTER(ctypes.c_float)), shape=(n * 3,))
        return int(np.isfinite(view[1::3]).sum())

    def selected_logit(self) -> float:
        return float(self.array.data[self.array.selected].logit)

    def single(self, token: int) -> Any:
        """A one-entry array holding ``token``: the grammar's cheap check of one sampled token."""
        self._one[0].id, self._one[0].logit, self._one[0].p = token, 0.0, 0.0
        self.one.size, self.one.selected, self.one.sorted = 1, -1, False
        return self._one_pointer

    def single_allowed(self) -> bool:
        return self._one[0].logit != float("-inf")


SUBSET = 1024  # tokens the grammar's second pass tries first (see Sampler)


class Sampler:
    """A llama.cpp sampler chain (logit bias, penalties, top-k, top-p, min-p, temperature, seeded
    draw), with an optional grammar the output must match and optional log-probabilities.

    A grammar is applied as llama.cpp's common/sampling.cpp does: sample from the chain, check only
    the chosen token against the grammar, and only when it is rejected apply the grammar to the
    whole vocabulary and sample again. Checking every token of a 262k vocabulary each step is the
    known slow path (llama.cpp #7554). The grammar only ever accepts tokens it allowed, so its
    stack can never run empty under a non-final token (llama.cpp aborts the process then).
    """

    def __init__(self, model: Model, params: SamplingParams) -> None:
        lib = self._lib = model._lib
        self._model = model
        self._chain = self._grammar = None
        self._candidates: _Candidates | None = None
        self.logprobs = params.logprobs
        self.last: TokenLogprob | None = None  # the last sampled token's, with logprobs on
        self.rejections = 0  # chosen tokens the grammar refused (each needs a second pass)
        self.full_passes = 0  # of those, the ones whose second pass covered the whole vocabulary
        chain_params = lib.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        self._chain = lib.llama_sampler_chain_init(chain_params)
        add = lambda s: lib.llama_sampler_chain_add(self._chain, s)  # noqa: E731
        if params.logit_bias:
            bad = [t for t, _ in params.logit_bias if t >= model.n_vocab]
            if bad:
                self.close()
                raise InvalidParameterError(f"{option('logit_bias')}: token {bad[0]} is not in the vocabulary "
                                            f"(0..{model.n_vocab - 1})", field="logit_bias")
            biases = (lib.llama_logit_bias * len(params.logit_bias))(*params.logit_bias)
            add(lib.llama_sampler_init_logit_bias(model.n_vocab, len(params.logit_bias), biases))
        penalised = (params.repeat_penalty != 1.0 or params.frequency_penalty != 0.0
                     or params.presence_penalty != 0.0)
        if penalised and params.repeat_last_n != 0:
            add(lib.llama_sampler_init_penalties(model.n_vocab, params.repeat_last_n, params.repeat_penalty,
                                                 params.frequency_penalty, params.presence_penalty))
        if params.temperature <= 0:
            add(lib.llama_sampler_init_greedy())
        else:
            if params.top_k > 0:
                add(lib.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                add(lib.llama_sampler_init_top_p(params.top_p, 1))
            if params.min_p > 0.0:
                add(lib.llama_sampler_init_min_p(params.min_p, 1))
            add(lib.llama_sampler_init_temp(params.temperature))
            seed = params.seed if params.seed not in (None, RANDOM_SEED) else random.randrange(2**31)
            add(lib.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        constraint = params.constraint
        if constraint is not None:
            grammar = constraint.grammar.encode("utf-8")
            with _stderr_captured() as said:
                self._grammar = lib.llama_sampler_init_grammar(model.vocab, grammar, b"root")
            if not self._grammar:  # NULL: llama.cpp could not parse it
                reason = _grammar_reason(said())
                self.close()
                raise InvalidSchemaError("llama.cpp cannot parse the grammar" + (f": {reason}" if reason else ""),
                                         hint="check it against llama.cpp's GBNF guide (grammars/README.md)")
        if self._grammar is not None or self.logprobs is not None:
            self._candidates = _Candidates(model)
        # When the grammar rejects the chain's choice, the grammar is first tried on the SUBSET
        # likeliest tokens only (a full pass costs 21 ms on Gemma 3's 262k vocabulary, 3.6 ms on
        # SmolLM2's 49k), with a check that the result is the one a full pass would give:
        # greedy takes the best allowed token, and no token left out (none has a higher raw
        # logit than the ceiling, and penalties here only lower logits) can beat the one found;
        # top-k sampling needs top_k allowed tokens in the subset, and no penalties or bias, so
        # the same k tokens reach top-p, min-p, temperature and the draw. Otherwise: a full pass.
        lowers_only = params.repeat_penalty >= 1.0 and params.frequency_penalty >= 0 and params.presence_penalty >= 0
        self._greedy = params.temperature <= 0
        plain = not params.logit_bias and not penalised
        self._subset_k = (1 if self._greedy else params.top_k) if (
            (self._greedy and lowers_only and not params.logit_bias) or (params.top_k > 0 and plain)) else 0

    def sample(self, idx: int = -1) -> int:
        """Choose (and accept) the next token from output ``idx`` of the last decode."""
        ctx = self._model._ctx
        if ctx is None:
            self._model._live()
        if self._candidates is None:  # the hot path: one C call
            return self._lib.llama_sampler_sample(self._chain, ctx, idx)
        lib, cand = self._lib, self._candidates
        logits = self._row(idx)
        lib.llama_sampler_apply(self._chain, cand.fill(logits))
        token = cand.selected()
        if self._grammar is not None:
            lib.llama_sampler_apply(self._grammar, cand.single(token))
            if not cand.single_allowed():
                self.rejections += 1
                token = self._resample(logits)
            if not lib.llama_vocab_is_eog(self._model.vocab, token):
                # An end-of-generation token is never fed to the grammar: generation ends with it,
                # and llama.cpp aborts if its stacks are not complete at that point.
                lib.llama_sampler_accept(self._grammar, token)
        lib.llama_sampler_accept(self._chain, token)
        if self.logprobs is not None:
            self.last = _logprob(logits, token, self.logprobs)
        return token

    def _resample(self, logits) -> int:
        """The token the chain picks under the grammar (see SUBSET in __init__)."""
        lib, cand = self._lib, self._candidates
        assert cand is not None
        if self._subset_k and SUBSET < self._model.n_vocab:
            pointer, ceiling = cand.fill_top(logits, SUBSET)
            lib.llama_sampler_apply(self._grammar, pointer)
            if cand.allowed() >= self._subset_k:
                lib.llama_sampler_apply(self._chain, pointer)
                if not self._greedy or cand.selected_logit() >= ceiling:
                    return cand.selected()
        self.full_passes += 1
        pointer = cand.fill(logits)
        lib.llama_sampler_apply(self._grammar, pointer)
        lib.llama_sampler_apply(self._chain, pointer)
        return cand.selected()

    def _row(self, idx: int):
        import numpy as np

        ptr = self._lib.llama_get_logits_ith(self._model._ctx, idx)
        return np.ctypeslib.as_array(ptr, shape=(self._model.n_vocab,))

    def accept(self, token: int) -> None:
        """Feed history the sampler did not choose (the prompt, for repeat penalties); never the grammar."""
        self._lib.llama_sampler_accept(self._chain, token)

    def close(self) -> None:
        if self._chain:
            self._lib.llama_sampler_free(self._chain)
            self._chain = None
        if self._grammar:
            self._lib.llama_sampler_free(self._grammar)
            self._grammar = None

    def __del__(self) -> None:  # pragma: no cover
        try:
            self.close()
        except Exception:
            pass


def _logprob(logits, token: int, top: int) -> TokenLogprob:
    """log-softmax of the raw logit row (the model's distribution, before sampling's reshaping)."""
    import numpy as np

    row = logits.astype(np.float64)
    peak = row.max()
    log_z = peak + np.log(np.exp(row - peak).sum())
    alternatives: tuple[tuple[int, float], ...] = ()
    if top > 0:
        best = np.argpartition(-row, top - 1)[:top]
        best = best[np.argsort(-row[best], kind="stable")]
        alternatives = tuple((int(t), float(row[t] - log_z)) for t in best)
    return TokenLogprob(token, float(row[token] - log_z), alternatives)


def _grammar_reason(said: str) -> str:
    # llama.cpp's parser writes "parse: error parsing grammar: <reason>", a blank line and the
    # whole grammar; the reason is the part a person needs.
    if "error parsing grammar:" not in said:
        return ""
    text = said.split("error parsing grammar:", 1)[1].strip()
    return text.splitlines()[0].strip() if text else ""


_stderr_lock = threading.Lock()


@contextlib.contextmanager
def _stderr_captured():
    """Collect what C code writes to file descriptor 2 meanwhile; yields a function returning it.

    llama.cpp's grammar parser reports errors with fprintf(stderr), outside its log callback, so
    without this a bad grammar would print raw parser output above our one Error line. Anything
    captured that is not the parser's (another thread may have written in the window) goes to the
    llama.cpp logger, where the CLI decides whether a person sees it.
    """
    import tempfile

    sys.stderr.flush()
    with _stderr_lock, tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield lambda: text
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        text = sink.read().decode("utf-8", "replace")
        if text.strip() and "error parsing grammar" not in text:
            logging.getLogger(LLAMA_LOG).warning("%s", text.rstrip("\n"))
