"""Read a GGUF file's header (architecture, quantisation, context length, chat template, tensor
sizes) without loading its weights, and estimate the memory a model needs at a given context.

Pure Python on purpose: ``llmlocal models``/``info`` must stay fast and must not need llama.cpp.
The format is the one llama.cpp's ``gguf.cpp`` reads: little-endian, versions 2 and 3.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any, BinaryIO

from llmlocal.errors import GGUFError, UsageError

__all__ = ["GGUFInfo", "MemoryEstimate", "estimate_memory", "quant_name", "read_gguf"]

_CHUNK = 1 << 20
_DEFAULT_ALIGNMENT = 32
_MAX_DIMS = 4  # GGML_MAX_DIMS
# Arrays this short are kept as lists (tags, rope sections, per-layer head counts); longer ones
# (vocabularies, merges, scores) are skipped and recorded only by length.
_SMALL_ARRAY = 256
# No header item of a real model comes near 4 GiB. A length past that is garbage (corruption);
# a smaller one running off the end of the file means the file was cut short.
_ABSURD = 1 << 32

# ggml_type id -> (name, elements per block, bytes per block). Ids from ggml.h `enum ggml_type`;
# sizes as ggml.c `type_traits` reports them (ggml_blck_size / ggml_type_size). Ids 4, 5, 31-33
# and 36-38 were removed from ggml and cannot appear in a file llama.cpp would load.
_GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4),
    27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18), 42: ("Q2_0", 64, 18),
}

# general.file_type, llama.h `enum llama_ftype` without the LLAMA_FTYPE_(MOSTLY_) prefix.
# 4 and 33-35 are retired but still name what old files contain.
_FTYPE_NAMES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 4: "Q4_1_SOME_F16", 7: "Q8_0", 8: "Q5_0",
    9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
    22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 33: "Q4_0_4_4",
    34: "Q4_0_4_8", 35: "Q4_0_8_8", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4",
    40: "Q1_0", 41: "Q2_0",
}

# GGUF value type id -> struct for the fixed-size ones; 8 is a string, 9 an array.
_SCALARS: dict[int, struct.Struct] = {
    t: struct.Struct("<" + c)
    for t, c in {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?",
                 10: "Q", 11: "q", 12: "d"}.items()
}
_STRING, _ARRAY = 8, 9
_U32, _U64 = _SCALARS[4], _SCALARS[10]
_DIMS = [struct.Struct(f"<{n}Q") for n in range(_MAX_DIMS + 1)]


def quant_name(file_type: int) -> str | None:
    """The llama.cpp name for a ``general.file_type`` id (15 -> "Q4_K_M"); None if unknown."""
    return _FTYPE_NAMES.get(file_type)


@dataclass(frozen=True)
class GGUFInfo:
    """What a GGUF header says about a model. Counts are None when the file does not say."""

    path: Path
    version: int
    architecture: str
    name: str | None
    file_type: int | None
    quantisation: str
    parameter_count: int
    tensor_count: int
    context_length: int | None
    block_count: int | None
    embedding_length: int | None
    head_count: int | None
    head_count_kv: int | None
    key_length: int | None
    value_length: int | None
    sliding_window: int | None
    vocab_size: int | None
    chat_template: str | None
    bos_token_id: int | None
    eos_token_id: int | None
    file_size: int
    data_offset: int
    tensor_data_size: int
    metadata: dict[str, Any]

    @property
    def has_chat_template(self) -> bool:
        return bool(self.chat_template)


class _Skipped:
    """A long array passed over without building its items; only its length is kept."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __repr__(self) -> str:
        return f"<array of {self.count}>"


class _Reader:
    """Sequential reads over one unbuffered file through a 1 MiB window of our own.

    Every length is checked against the bytes left in the file before anything is allocated,
    so a corrupt length becomes a GGUFError, never a MemoryError.
    """

    def __init__(self, fh: BinaryIO, path: str, size: int) -> None:
        self._fh, self.path, self.size = fh, path, size
        self._buf, self._off, self._base = b"", 0, 0  # _base: file offset of _buf[0]

    @property
    def pos(self) -> int:
        return self._base + self._off

    def fail(self, problem: str) -> GGUFError:
        return GGUFError(self.path, problem)

    def _fill(self, n: int) -> None:
        if self._off + n <= len(self._buf):
            return
        if self.pos + n > self.size:
            raise self.fail(f"truncated: header ends at byte {self.size}")
        rest = self._buf[self._off:]
        self._base = self.pos
        self._fh.seek(self._base + len(rest))
        self._buf = rest + self._fh.read(max(n - len(rest), _CHUNK))
        self._off = 0
        if len(self._buf) < n:  # the file shrank while we read it
            raise self.fail(f"truncated: header ends at byte {self._base + len(self._buf)}")

    def unpack(self, st: struct.Struct) -> tuple[Any, ...]:
        self._fill(st.size)
        value = st.unpack_from(self._buf, self._off)
        self._off += st.size
        return value

    def u32(self) -> int:
        return self.unpack(_U32)[0]

    def u64(self) -> int:
        return self.unpack(_U64)[0]

    def claim(self, n: int, what: str) -> None:
        """Refuse, before allocating anything, a length the rest of the file cannot hold."""
        left = self.size - self.pos
        if n <= left:
            return
        if n < _ABSURD:
            raise self.fail(f"truncated: header ends at byte {self.size}")
        raise self.fail(f"corrupt: {what} at byte {self.pos} claims {n} bytes, {left} remain")

    def skip(self, n: int) -> None:
        self.claim(n, "skipped data")
        if self._off + n <= len(self._buf):
            self._off += n
        else:
            self._base, self._buf, self._off = self.pos + n, b"", 0

    def string(self) -> str:
        n = self.u64()
        self.claim(n, "string")
        self._fill(n)
        raw = self._buf[self._off : self._off + n]
        self._off += n
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        # A 150k-token vocabulary: walk the length prefixes inside the window with locals, build
        # no str objects, and fall back to the checked path only at the window's edge.
        unpack, buf, off = _U64.unpack_from, self._buf, self._off
        for _ in range(count):
            if off + 8 <= len(buf):
                end = off + 8 + unpack(buf, off)[0]
                if end <= len(buf):
                    off = end
                    continue
            self._off = off
            n = self.u64()
            self.claim(n, "string")
            self.skip(n)
            buf, off = self._buf, self._off
        self._off = off


def _read_value(r: _Reader, vtype: int, key: str) -> Any:
    if vtype in _SCALARS:
        return r.unpack(_SCALARS[vtype])[0]
    if vtype == _STRING:
        return r.string()
    if vtype != _ARRAY:
        raise r.fail(f"corrupt: unknown value type {vtype} for key '{key}' at byte {r.pos - 4}")
    itype, count = r.u32(), r.u64()
    if itype in _SCALARS:
        size = _SCALARS[itype].size
        r.claim(count * size, f"array '{key}'")
        if count > _SMALL_ARRAY:
            r.skip(count * size)
            return _Skipped(count)
        return list(r.unpack(struct.Struct(f"<{count}{_SCALARS[itype].format[1:]}")))
    if itype == _STRING:
        r.claim(count * 8, f"array '{key}'")  # at least a length prefix per item
        if count > _SMALL_ARRAY:
            r.skip_strings(count)
            return _Skipped(count)
        return [r.string() for _ in range(count)]
    # llama.cpp's gguf.cpp refuses nested arrays too.
    raise r.fail(f"corrupt: array '{key}' has unsupported item type {itype}")


def _version(r: _Reader) -> int:
    magic = r.unpack(struct.Struct("4s"))[0]
    if magic != b"GGUF":
        raise r.fail(f"not a GGUF file (starts with {magic!r})")
    version = r.u32()
    if version not in (2, 3):
        hint = " (a big-endian GGUF?)" if version > 0xFFFF else ""
        raise r.fail(f"unsupported GGUF version {version}{hint}; llmlocal reads versions 2 and 3")
    return version


def read_gguf(path: str | os.PathLike[str]) -> GGUFInfo:
    """Read the metadata and tensor table of a GGUF file, touching none of the weights.

    Raises:
        GGUFError: not a GGUF file, an unsupported version, corrupt or truncated.
        FileNotFoundError: ``path`` does not exist.
    """
    p = Path(path)
    if p.is_dir():
        raise GGUFError(str(p), "is a directory, not a GGUF file")
    with open(p, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise GGUFError(str(p), "empty file (0 bytes), not a GGUF file")
        if size < 4:
            raise GGUFError(str(p), f"not a GGUF file (starts with {fh.read(4)!r})")
        r = _Reader(fh, str(p), size)
        version = _version(r)
        tensor_count, kv_count = r.u64(), r.u64()
        # Smallest possible entries: a KV pair is 13 bytes, a tensor info 24.
        r.claim(kv_count * 13 + tensor_count * 24,
                f"a table of {kv_count} key/value pairs and {tensor_count} tensors")
        kv: dict[str, Any] = {}
        for _ in range(kv_count):
            key = r.string()
            kv[key] = _read_value(r, r.u32(), key)
        raw_alignment = kv.get("general.alignment", _DEFAULT_ALIGNMENT)
        alignment = _int(raw_alignment) or 0
        if alignment <= 0 or alignment & (alignment - 1):
            raise r.fail(f"corrupt: general.alignment is {raw_alignment!r}, not a power of two")
        params, data_end, by_type = _tensor_infos(r, tensor_count, alignment)
    data_offset = -(-r.pos // alignment) * alignment
    have = max(size - data_offset, 0)
    if data_end > have:
        raise GGUFError(str(p), f"truncated: tensor data needs {data_end} bytes, file has {have}")
    return _info(p, version, kv, params, tensor_count, size, data_offset, by_type)


def _tensor_infos(r: _Reader, count: int, alignment: int) -> tuple[int, int, Counter[int]]:
    """Sum parameters and bytes per ggml type; return where the last tensor's data ends."""
    params, data_end, by_type = 0, 0, Counter[int]()
    for _ in range(count):
        name = r.string()
        n_dims = r.u32()
        if n_dims > _MAX_DIMS:
            raise r.fail(f"corrupt: tensor '{name}' has {n_dims} dimensions (ggml allows {_MAX_DIMS})")
        dims = r.unpack(_DIMS[n_dims])
        ttype, offset = r.u32(), r.u64()
        if ttype not in _GGML_TYPES:
            raise r.fail(f"corrupt: tensor '{name}' has unknown ggml type {ttype}")
        _, block, type_size = _GGML_TYPES[ttype]
        n = prod(dims)
        if dims and dims[0] % block:
            raise r.fail(f"corrupt: tensor '{name}' row of {dims[0]} is not a multiple of {block}")
        if offset % alignment:
            raise r.fail(f"corrupt: tensor '{name}' offset {offset} is not {alignment}-aligned")
        nbytes = n // block * type_size
        params += n
        by_type[ttype] += nbytes
        data_end = max(data_end, offset + nbytes)
    return params, data_end, by_type


def _int(value: Any) -> int | None:
    # Some architectures store per-layer lists (e.g. head_count_kv); the largest is a safe bound.
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return max(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _info(p: Path, version: int, kv: dict[str, Any], params: int, tensor_count: int,
          size: int, data_offset: int, by_type: Counter[int]) -> GGUFInfo:
    arch = kv.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise GGUFError(str(p), "corrupt: no general.architecture in the header")

    def field(key: str) -> int | None:
        return _int(kv.get(f"{arch}.{key}"))

    file_type = _int(kv.get("general.file_type"))
    quant = quant_name(file_type) if file_type is not None else None
    if quant is None:  # no or unknown file_type: name the type holding most of the bytes
        quant = _GGML_TYPES[by_type.most_common(1)[0][0]][0] if by_type else "unknown"
    embd, heads = field("embedding_length"), field("attention.head_count")
    head_dim = embd // heads if embd and heads else None
    tokens = kv.get("tokenizer.ggml.tokens")
    vocab = field("vocab_size") or (tokens.count if isinstance(tokens, _Skipped)
                                    else len(tokens) if isinstance(tokens, list) else None)
    template = kv.get("tokenizer.chat_template")
    name = kv.get("general.name")
    return GGUFInfo(
        path=p, version=version, architecture=arch,
        name=name if isinstance(name, str) else None,
        file_type=file_type, quantisation=quant, parameter_count=params,
        tensor_count=tensor_count, context_length=field("context_length"),
        block_count=field("block_count"), embedding_length=embd, head_count=heads,
        # llama.cpp defaults the KV head count to the head count (no grouped-query attention).
        head_count_kv=field("attention.head_count_kv") or heads,
        key_length=field("attention.key_length") or head_dim,
        value_length=field("attention.value_length") or head_dim,
        sliding_window=field("attention.sliding_window"), vocab_size=vocab,
        chat_template=template if isinstance(template, str) else None,
        bos_token_id=_int(kv.get("tokenizer.ggml.bos_token_id")),
        eos_token_id=_int(kv.get("tokenizer.ggml.eos_token_id")),
        file_size=size, data_offset=data_offset, tensor_data_size=sum(by_type.values()),
        metadata={k: repr(v) if isinstance(v, _Skipped) else v for k, v in kv.items()},
    )


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of RAM a model needs at ``n_ctx`` tokens of context, by what uses them."""

    n_ctx: int
    weights_bytes: int
    kv_cache_bytes: int
    compute_bytes: int
    total_bytes: int


def estimate_memory(info: GGUFInfo, n_ctx: int, *, kv_bytes_per_elem: int = 2) -> MemoryEstimate:
    """A deliberately generous estimate of the RAM llama.cpp uses for ``info`` at ``n_ctx``.

    ``kv_bytes_per_elem`` is 2 for llama.cpp's default F16 KV cache (1 for q8_0).
    """
    if n_ctx <= 0:
        raise UsageError(f"context size must be positive, got {n_ctx}")
    layers, kv_heads, k_len, v_len = (info.block_count, info.head_count_kv, info.key_length,
                                      info.value_length)
    if not (layers and kv_heads and k_len and v_len):
        raise GGUFError(str(info.path), "header lacks the layer and head counts needed to "
                        "size the KV cache")
    # Weights are mmapped: they count against RAM once paged in, which they all are after the
    # first token. (CPU backends that repack weights, e.g. AMX, hold a second, anonymous copy
    # of the repacked tensors; the mapped originals then become reclaimable page cache.)
    weights = info.tensor_data_size
    # One K and one V row per layer per context cell. On sliding-window layers (gemma3)
    # llama.cpp may keep only window + batch cells, but llama-cpp-python asks for the full-size
    # SWA cache, so this is what it allocates; for any other setting it is an upper bound.
    kv = layers * n_ctx * kv_heads * (k_len + v_len) * kv_bytes_per_elem
    compute = _compute_allowance(info, n_ctx)
    return MemoryEstimate(n_ctx=n_ctx, weights_bytes=weights, kv_cache_bytes=kv,
                          compute_bytes=compute, total_bytes=weights + kv + compute)


def _compute_allowance(info: GGUFInfo, n_ctx: int) -> int:
    """Scratch memory for one forward pass: a rough bound, not a measurement.

    llama.cpp reserves its CPU compute buffer for a full micro-batch (up to 512 tokens) in
    float32, and its allocator reuses memory between steps, so the buffer is about the larger
    of two peaks: the logits of every token in the batch (vocab x batch) and the attention
    scores plus mask(s) (n_ctx x batch x (heads + masks), no flash attention). A few
    hidden-state-sized tensors and the one-row output buffer come on top. Checked against
    llama.cpp's logged "compute buffer size" for SmolLM2-135M and Gemma 3 270M from 512 to
    16384 tokens: this overestimates by 1-7%.
    """
    batch = min(n_ctx, 512)  # llama-cpp-python caps n_batch (default 512) at n_ctx
    embd, heads, vocab = info.embedding_length or 0, info.head_count or 1, info.vocab_size or 0
    masks = 2 if info.sliding_window else 1  # interleaved SWA builds a second mask
    attention = n_ctx * batch * (heads + masks) * 4
    logits = vocab * batch * 4
    return max(attention, logits) + 8 * batch * embd * 4 + vocab * 4
